package planner_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/poll"
	"github.com/ccatobs/ccat-staging/services/planner/planner"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
)

func TestPlansRoutesAndRequests(t *testing.T) {
	h := start(t, testTopology, nil)
	// Queue discovery: every site of the topology has its work consumers
	// before any stager ran.
	for _, site := range []string{"cologne", "us", "chile"} {
		for _, p := range subject.Priorities {
			if _, err := h.js.Consumer(t.Context(), subject.RequestsStream, subject.StagerDurable(site, p)); err != nil {
				t.Errorf("consumer %s: %v", subject.StagerDurable(site, p), err)
			}
		}
	}
	h.archived("p-both", "cologne-lta")
	h.archived("p-both", "us-lta")
	h.archived("p-us", "us-lta")
	h.archived("p-inactive", "chile-lta")
	h.archived("p-mixed", "chile-lta")
	h.archived("p-mixed", "us-lta")
	h.archived("p-unknownloc", "moon-lta")

	type pkg struct{ id, source, reason string } // source "" = failed with reason
	tests := []struct {
		name     string
		sub      event.Submit
		wantDest event.Target
		wantSubj string
		pkgs     []pkg
	}{
		{
			name:     "site destination, high priority, same-site source preferred",
			sub:      event.Submit{JobID: "j-site", Packages: []string{"p-both", "p-us", "p-inactive", "p-mixed", "p-unknownloc"}, Destination: event.Destination{Site: "cologne"}, RequestedBy: "alice", Priority: "high", Note: "n"},
			wantDest: event.Target{Site: "cologne", Location: "cologne-proc"},
			wantSubj: "staging.request.cologne.high",
			pkgs:     []pkg{{"p-both", "cologne-lta", ""}, {"p-us", "us-lta", ""}, {"p-inactive", "", event.ReasonNoSource}, {"p-mixed", "us-lta", ""}, {"p-unknownloc", "", event.ReasonNoSource}},
		},
		{
			name:     "location destination, default priority",
			sub:      event.Submit{JobID: "j-loc", Packages: []string{"p-both"}, Destination: event.Destination{Location: "us-proc"}, RequestedBy: "bob"},
			wantDest: event.Target{Site: "us", Location: "us-proc"},
			wantSubj: "staging.request.us.normal",
			pkgs:     []pkg{{"p-both", "us-lta", ""}},
		},
		{
			name:     "second-choice processing location by name",
			sub:      event.Submit{JobID: "j-spare", Packages: []string{"p-us"}, Destination: event.Destination{Location: "cologne-spare"}, RequestedBy: "bob", Priority: "low"},
			wantDest: event.Target{Site: "cologne", Location: "cologne-spare"},
			wantSubj: "staging.request.cologne.low",
			pkgs:     []pkg{{"p-us", "us-lta", ""}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.t = t
			h.submit("submit-"+tt.sub.JobID, tt.sub)
			env := h.event(subject.Planned, "planned:"+tt.sub.JobID)
			p := dataOf[event.Planned](t, env)
			wantPrio := tt.sub.Priority
			if wantPrio == "" {
				wantPrio = "normal"
			}
			if p.JobID != tt.sub.JobID || p.Destination != tt.wantDest || p.Priority != wantPrio || p.RequestedBy != tt.sub.RequestedBy || p.Note != tt.sub.Note || env.Source != planner.Source {
				t.Errorf("plan header = %+v (source %s)", p, env.Source)
			}
			if p.Part != 0 || p.Parts != 0 {
				t.Errorf("a small plan is split: part %d of %d", p.Part, p.Parts)
			}
			if len(p.Packages) != len(tt.pkgs) {
				t.Fatalf("plan has %d packages, want %d", len(p.Packages), len(tt.pkgs))
			}
			var wantReqs []string
			for i, w := range tt.pkgs {
				got := p.Packages[i]
				if got.PackageID != w.id {
					t.Errorf("package %d = %s, want %s (plan keeps the submit's order)", i, got.PackageID, w.id)
				}
				if w.source == "" {
					if got.Status != event.StatusFailed || got.Reason != w.reason || got.Message == "" || got.RequestID != "" {
						t.Errorf("%s: %+v, want failed %s", w.id, got, w.reason)
					}
					continue
				}
				reqID := planner.RequestID(tt.sub.JobID, w.id, 1)
				wantReqs = append(wantReqs, reqID)
				if got.Status != event.StatusScheduled || got.Source == nil || got.Source.Location != w.source || got.RequestID != reqID || got.Checksum != sum || got.SizeBytes != 10240 {
					t.Errorf("%s: %+v source %+v, want scheduled from %s as %s", w.id, got, got.Source, w.source, reqID)
				}
			}
			var gotReqs []string
			for _, m := range h.messages(subject.RequestsStream, "staging.request."+tt.wantDest.Site+".>") {
				r := dataOf[event.Request](t, m.Env)
				if r.JobID != tt.sub.JobID {
					continue
				}
				gotReqs = append(gotReqs, m.Env.ID)
				if m.Subject != tt.wantSubj {
					t.Errorf("request %s on %s, want %s", m.Env.ID, m.Subject, tt.wantSubj)
				}
				i := slices.IndexFunc(p.Packages, func(pp event.PlannedPackage) bool { return pp.PackageID == r.PackageID })
				pp := p.Packages[i]
				if r.Generation != 1 || r.Priority != wantPrio || r.Destination != tt.wantDest || r.Source != *pp.Source ||
					r.Checksum != sum || r.Format != "tar" || len(r.Files) != 1 || r.Source.Key != "obs/"+r.PackageID+".tar" {
					t.Errorf("request %s = %+v", m.Env.ID, r)
				}
				if want := map[string]string{"cologne-lta": "s3", "us-lta": "disk"}[r.Source.Location]; r.Source.Storage != want {
					t.Errorf("request %s storage %s, want %s", m.Env.ID, r.Source.Storage, want)
				}
			}
			if !slices.Equal(gotReqs, wantReqs) {
				t.Errorf("requests = %v, want %v (in plan order)", gotReqs, wantReqs)
			}
		})
	}
	h.t = t
	if n := h.settled(subject.EventsStream, subject.PlannerSubmit); n != 0 {
		t.Errorf("%d submits redelivered", n)
	}
}

func TestRejections(t *testing.T) {
	h := start(t, testTopology, func(c *planner.Config) { c.MaxPackages = 3 })
	h.archived("p1", "us-lta")
	h.archived("p2", "us-lta")
	h.archived("p3", "us-lta")
	h.archived("p4", "us-lta")
	h.settled("ARCHIVE", subject.PlannerCatalog)

	ok := func(f func(*event.Submit)) event.Submit {
		s := event.Submit{JobID: "j", Packages: []string{"p1"}, Destination: event.Destination{Site: "us"}, RequestedBy: "me"}
		f(&s)
		return s
	}
	envelope := func(typ, data string) []byte {
		return []byte(`{"specversion":"1.0","id":"ID","source":"x","type":"` + typ + `","traceparent":"00-1","data":` + data + `}`)
	}
	tests := []struct {
		name   string
		sub    *event.Submit // nil: raw is published
		raw    []byte
		reason string
		jobID  string
	}{
		{"not JSON", nil, []byte(`{"specversion":`), event.ReasonInvalidRequest, ""},
		{"not a CloudEvent", nil, []byte(`{"job_id":"j"}`), event.ReasonInvalidRequest, ""},
		{"data fails the schema", nil, envelope(event.TypeSubmit, `{"job_id":"j-schema","packages":["p1"],"destination":{"site":"us"}}`), event.ReasonInvalidRequest, "j-schema"},
		{"bad package id", nil, envelope(event.TypeSubmit, `{"job_id":"j-id","packages":["../etc"],"destination":{"site":"us"},"requested_by":"me"}`), event.ReasonInvalidRequest, "j-id"},
		{"wrong event type", nil, envelope(event.TypeDone, `{"job_id":"j-type"}`), event.ReasonInvalidRequest, "j-type"},
		{"unknown site", new(ok(func(s *event.Submit) { s.JobID = "j-site"; s.Destination = event.Destination{Site: "mars"} })), nil, event.ReasonUnknownSite, "j-site"},
		{"unknown location", new(ok(func(s *event.Submit) { s.JobID = "j-loc"; s.Destination = event.Destination{Location: "mars-proc"} })), nil, event.ReasonUnknownLocation, "j-loc"},
		{"archive as destination", new(ok(func(s *event.Submit) { s.JobID = "j-np"; s.Destination = event.Destination{Location: "us-lta"} })), nil, event.ReasonNotProcessing, "j-np"},
		{"inactive location", new(ok(func(s *event.Submit) { s.JobID = "j-inact"; s.Destination = event.Destination{Location: "cologne-old"} })), nil, event.ReasonInactiveLocation, "j-inact"},
		{"site without active processing", new(ok(func(s *event.Submit) { s.JobID = "j-noproc"; s.Destination = event.Destination{Site: "chile"} })), nil, event.ReasonNoProcessing, "j-noproc"},
		{"too many packages", new(ok(func(s *event.Submit) { s.JobID = "j-many"; s.Packages = []string{"p1", "p2", "p3", "p4"} })), nil, event.ReasonTooManyPackages, "j-many"},
		{"duplicate package", new(ok(func(s *event.Submit) { s.JobID = "j-dup"; s.Packages = []string{"p1", "p2", "p1"} })), nil, event.ReasonDuplicatePackage, "j-dup"},
		{"unknown package", new(ok(func(s *event.Submit) { s.JobID = "j-unknown"; s.Packages = []string{"p1", "never"} })), nil, event.ReasonUnknownPackage, "j-unknown"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.t = t
			id := fmt.Sprintf("submit-%d", i)
			if tt.sub != nil {
				h.submit(id, *tt.sub)
			} else {
				h.submitRaw(id, []byte(strings.Replace(string(tt.raw), `"id":"ID"`, `"id":"`+id+`"`, 1)))
			}
			env := h.event(subject.Rejected, "rejected:"+id)
			r := dataOf[event.Rejected](t, env)
			if r.Reason != tt.reason || r.SubmitID != id || r.JobID != tt.jobID || r.Message == "" {
				t.Errorf("rejected = %+v, want reason %s, job %q", r, tt.reason, tt.jobID)
			}
		})
	}
	h.t = t
	// Every refused submit was terminated: nothing waits, nothing came back,
	// each rejection exists once, and nothing was planned or requested.
	if n := h.settled(subject.EventsStream, subject.PlannerSubmit); n != 0 {
		t.Errorf("%d submits redelivered", n)
	}
	if n := len(h.messages(subject.EventsStream, subject.Rejected)); n != len(tests) {
		t.Errorf("%d rejections stored, want %d", n, len(tests))
	}
	if n := len(h.messages(subject.EventsStream, subject.Planned)); n != 0 {
		t.Errorf("%d plans stored, want 0", n)
	}
	if n := len(h.messages(subject.RequestsStream, subject.RequestsAll)); n != 0 {
		t.Errorf("%d requests stored, want 0", n)
	}
}

func TestJobIDIsTheIdempotencyKey(t *testing.T) {
	h := start(t, testTopology, nil)
	h.archived("p1", "us-lta")
	h.archived("p2", "us-lta")
	job := event.Submit{JobID: "j1", Packages: []string{"p1", "p2"}, Destination: event.Destination{Site: "us"}, RequestedBy: "me"}
	h.submit("s1", job)
	h.event(subject.Planned, "planned:j1")

	// The same content again, packages reordered, priority spelt out: a no-op.
	same := job
	same.Packages = []string{"p2", "p1"}
	same.Priority = "normal"
	h.submit("s2", same)
	// Different content under the same id: refused.
	other := job
	other.Packages = []string{"p1"}
	h.submit("s3", other)
	r := dataOf[event.Rejected](t, h.event(subject.Rejected, "rejected:s3"))
	if r.Reason != event.ReasonJobIDConflict || r.JobID != "j1" || !strings.Contains(r.Message, "s1") {
		t.Errorf("rejected = %+v, want job_id_conflict naming s1", r)
	}
	h.settled(subject.EventsStream, subject.PlannerSubmit)
	if n := len(h.messages(subject.EventsStream, subject.Planned)); n != 1 {
		t.Errorf("%d plans, want 1", n)
	}
	if n := len(h.messages(subject.RequestsStream, subject.RequestsAll)); n != 2 {
		t.Errorf("%d requests, want 2", n)
	}
	if n := len(h.messages(subject.EventsStream, subject.Rejected)); n != 1 {
		t.Errorf("%d rejections, want only the conflict", n)
	}

	// A rejected job is not remembered: fixing it under the same id works.
	bad := event.Submit{JobID: "j2", Packages: []string{"p1"}, Destination: event.Destination{Site: "mars"}, RequestedBy: "me"}
	h.submit("s4", bad)
	h.event(subject.Rejected, "rejected:s4")
	bad.Destination = event.Destination{Site: "us"}
	h.submit("s5", bad)
	h.event(subject.Planned, "planned:j2")
}

// A submit that names a package whose announcement is still on its way
// through the ARCHIVE stream waits for the catalog instead of failing.
func TestUnknownPackageWaitsForTheCatalog(t *testing.T) {
	h := start(t, testTopology, func(c *planner.Config) { c.UnknownPackageRetries = 500 })
	var ids []string
	for i := range 300 {
		ids = append(ids, fmt.Sprintf("late-%03d", i))
	}
	// Publish the announcements without waiting for the catalog, then at
	// once a job that needs the last of them.
	for _, id := range ids {
		h.archived(id, "us-lta")
	}
	h.submit("s-late", event.Submit{JobID: "j-late", Packages: ids[len(ids)-3:], Destination: event.Destination{Site: "us"}, RequestedBy: "me"})
	p := dataOf[event.Planned](t, h.event(subject.Planned, "planned:j-late"))
	for _, pp := range p.Packages {
		if pp.Status != event.StatusScheduled {
			t.Errorf("%s: %s %s", pp.PackageID, pp.Status, pp.Reason)
		}
	}
	if n := len(h.messages(subject.EventsStream, subject.Rejected)); n != 0 {
		t.Errorf("%d rejections, want 0", n)
	}
}

// Bad archive announcements are terminated once, never redelivered, and
// do not disturb the catalog.
func TestArchiveEventsThatCannotBeRecorded(t *testing.T) {
	h := start(t, testTopology, nil)
	raw := func(data string) {
		h.t.Helper()
		h.submitRawTo(subject.Archived, "bad-"+fmt.Sprint(len(data)), []byte(data))
	}
	raw(`garbage`)
	raw(`{"specversion":"1.0","id":"x1","source":"x","type":"` + event.TypePackageArchived + `","data":{"package_id":"p","location":"us-lta"}}`)
	h.archived("p1", "us-lta")
	// Same package at another location with other content: a conflict.
	conflict, _ := event.New("test", "archived:conflict", "", event.PackageArchived{PackageID: "p1", Location: "cologne-lta", Key: "k.tar", SizeBytes: 1, Checksum: "sha256:" + strings.Repeat("0", 64), Format: "tar"})
	h.publish(subject.Archived, conflict)
	// Some other archive.* event type is not the catalog's business.
	h.submitRawTo("archive.package.verified", "other-type", []byte(`{"specversion":"1.0","id":"o1","source":"x","type":"ccat.archive.package.verified.v1","data":{}}`))
	if n := h.settled("ARCHIVE", subject.PlannerCatalog); n != 0 {
		t.Errorf("%d archive events redelivered", n)
	}
	m := h.metrics()
	for _, want := range []string{
		`planner_catalog_events_total{outcome="invalid"} 2`,
		`planner_catalog_events_total{outcome="conflict"} 1`,
		`planner_catalog_events_total{outcome="added"} 1`,
		`planner_catalog_events_total{outcome="ignored"} 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	// The first content stays: a job is routed to the recorded copy only.
	h.submit("s", event.Submit{JobID: "j", Packages: []string{"p1"}, Destination: event.Destination{Site: "cologne"}, RequestedBy: "me"})
	p := dataOf[event.Planned](t, h.event(subject.Planned, "planned:j"))
	if src := p.Packages[0].Source; src == nil || src.Location != "us-lta" || p.Packages[0].Checksum != sum {
		t.Errorf("plan = %+v, want the us-lta copy", p.Packages[0])
	}
}

func TestConfigFromEnv(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		wantErr bool
		check   func(planner.Config) bool
	}{
		{"defaults", map[string]string{"TOPOLOGY_FILE": "/t.yaml"}, false, func(c planner.Config) bool {
			return c.NATSURL == "nats://127.0.0.1:4222" && c.HTTPAddr == "127.0.0.1:9101" && c.MaxPackages == 10000 && c.TopologyFile == "/t.yaml"
		}},
		{"http off", map[string]string{"TOPOLOGY_FILE": "/t", "PLANNER_HTTP_ADDR": "off"}, false, func(c planner.Config) bool { return c.HTTPAddr == "" }},
		{"dedup on by default", map[string]string{"TOPOLOGY_FILE": "/t"}, false, func(c planner.Config) bool { return c.Dedup }},
		{"dedup off", map[string]string{"TOPOLOGY_FILE": "/t", "PLANNER_DEDUP": "false"}, false, func(c planner.Config) bool { return !c.Dedup }},
		{"overrides", map[string]string{"TOPOLOGY_FILE": "/t", "NATS_URL": "nats://x:1", "PLANNER_MAX_PACKAGES": "5", "STREAM_REPLICAS": "3", "EVENTS_MAX_AGE": "48h", "PLANNER_TOPOLOGY_POLL": "1s"}, false, func(c planner.Config) bool {
			return c.NATSURL == "nats://x:1" && c.MaxPackages == 5 && c.Streams.Replicas == 3 && c.Streams.EventsMaxAge == 48*time.Hour && c.TopologyPoll == time.Second
		}},
		{"topology required", map[string]string{}, true, nil},
		{"malformed number", map[string]string{"TOPOLOGY_FILE": "/t", "PLANNER_MAX_PACKAGES": "many"}, true, nil},
		{"negative", map[string]string{"TOPOLOGY_FILE": "/t", "PLANNER_MAX_PACKAGES": "-1"}, true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := planner.ConfigFromEnv(func(k string) string { return tt.env[k] })
			if (err != nil) != tt.wantErr {
				t.Fatalf("ConfigFromEnv = %v, want error %v", err, tt.wantErr)
			}
			if tt.check != nil && !tt.check(c) {
				t.Errorf("ConfigFromEnv = %+v", c)
			}
		})
	}
}

// archive.package.removed takes a copy out of routing: the next job is
// served from the remaining copy, and once none is left the package is
// known but has no source.
func TestRemovedCopiesAreNotChosen(t *testing.T) {
	h := start(t, testTopology, nil)
	h.archived("p", "cologne-lta")
	h.archived("p", "us-lta")
	remove := func(loc string) {
		ev, err := event.New("test", "removed:"+loc+":p", "p", event.PackageRemoved{PackageID: "p", Location: loc, Reason: "disk retired"})
		if err != nil {
			t.Fatal(err)
		}
		h.publish(subject.Removed, ev)
		h.settled("ARCHIVE", subject.PlannerCatalog)
	}
	plan := func(job string) event.PlannedPackage {
		h.submit("s-"+job, event.Submit{JobID: job, Packages: []string{"p"}, Destination: event.Destination{Site: "cologne"}, RequestedBy: "me"})
		return dataOf[event.Planned](t, h.event(subject.Planned, "planned:"+job)).Packages[0]
	}
	if pp := plan("j1"); pp.Source.Location != "cologne-lta" {
		t.Fatalf("j1 from %s, want cologne-lta", pp.Source.Location)
	}
	remove("cologne-lta")
	if pp := plan("j2"); pp.Source.Location != "us-lta" {
		t.Fatalf("j2 from %s, want us-lta", pp.Source.Location)
	}
	remove("us-lta")
	remove("us-lta") // again: harmless
	if pp := plan("j3"); pp.Status != event.StatusFailed || pp.Reason != event.ReasonNoSource {
		t.Fatalf("j3 = %+v, want failed no_source", pp)
	}
	if n := h.settled("ARCHIVE", subject.PlannerCatalog); n != 0 {
		t.Errorf("%d archive events redelivered", n)
	}
}

// Two planners on one server share the work: every job is planned exactly
// once, also when the same job arrives twice under different submit ids.
func TestTwoPlannersAtOnce(t *testing.T) {
	h := start(t, testTopology, nil)
	h.run(func(c *planner.Config) { c.HTTPAddr = "" })
	for i := range 5 {
		h.archived(fmt.Sprintf("p%d", i), "us-lta")
	}
	const jobs = 20
	for i := range jobs {
		s := event.Submit{JobID: fmt.Sprintf("j%02d", i), Packages: []string{"p0", "p1", "p2", "p3", "p4"}, Destination: event.Destination{Site: "us"}, RequestedBy: "me"}
		h.submit(fmt.Sprintf("a-%d", i), s)
		h.submit(fmt.Sprintf("b-%d", i), s) // a client retrying with a fresh id
	}
	poll.Until(t, 20*time.Second, "every job planned", func() error {
		if n := len(h.messages(subject.EventsStream, subject.Planned)); n != jobs {
			return fmt.Errorf("%d plans", n)
		}
		return nil
	})
	if n := h.settled(subject.EventsStream, subject.PlannerSubmit); n != 0 {
		t.Logf("%d submits redelivered (allowed: only the catalog wait retries)", n)
	}
	if n := len(h.messages(subject.RequestsStream, subject.RequestsAll)); n != jobs*5 {
		t.Errorf("%d requests, want %d", n, jobs*5)
	}
	if n := len(h.messages(subject.EventsStream, subject.Rejected)); n != 0 {
		t.Errorf("%d rejections, want 0", n)
	}
}

// Priority under a backlog, the planner's half: a high-priority job's
// requests land on the site's high subject, so the stager's high consumer
// hands them out first however many normal requests are queued before.
func TestHighPriorityDoesNotQueueBehindABacklog(t *testing.T) {
	h := start(t, testTopology, nil)
	var backlog []string
	for i := range 50 {
		id := fmt.Sprintf("bulk-%02d", i)
		backlog = append(backlog, id)
		h.archived(id, "us-lta")
	}
	h.archived("urgent", "us-lta")
	h.submit("s-bulk", event.Submit{JobID: "bulk", Packages: backlog, Destination: event.Destination{Site: "us"}, RequestedBy: "survey"})
	h.event(subject.Planned, "planned:bulk")
	h.submit("s-urgent", event.Submit{JobID: "urgent", Packages: []string{"urgent"}, Destination: event.Destination{Site: "us"}, RequestedBy: "pi", Priority: "high"})
	h.event(subject.Planned, "planned:urgent")

	pending := func(p string) uint64 {
		c, err := h.js.Consumer(t.Context(), subject.RequestsStream, subject.StagerDurable("us", p))
		if err != nil {
			t.Fatal(err)
		}
		info, err := c.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		return info.NumPending
	}
	// The requests follow the plan's event, and the server counts a
	// consumer's pending messages after acknowledging them: wait.
	poll.Until(t, 5*time.Second, "the high and normal requests pending", func() error {
		if hi, no := pending("high"), pending("normal"); hi != 1 || no != 50 {
			return fmt.Errorf("pending high %d, normal %d; want 1 and 50", hi, no)
		}
		return nil
	})
	// A stager asks high first: it gets the urgent request at once.
	c, _ := h.js.Consumer(t.Context(), subject.RequestsStream, subject.StagerDurable("us", "high"))
	m, err := c.Next(jetstream.FetchMaxWait(2 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if id := m.Headers().Get(jetstream.MsgIDHeader); id != planner.RequestID("urgent", "urgent", 1) {
		t.Errorf("first high request = %s", id)
	}
}

// A submit from another SDK: no time, no datacontenttype or dataschema,
// extension attributes present. It is planned like any other.
func TestAcceptsAnyValidCloudEvent(t *testing.T) {
	h := start(t, testTopology, nil)
	h.archived("p1", "us-lta")
	h.submitRaw("ext-1", []byte(`{"specversion":"1.0","id":"ext-1","source":"urn:pipeline:7","type":"ccat.staging.submit.v1",`+
		`"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","partitionkey":7,`+
		`"data":{"job_id":"j-ext","packages":["p1"],"destination":{"location":"us-proc"},"requested_by":"pipeline"}}`))
	p := dataOf[event.Planned](t, h.event(subject.Planned, "planned:j-ext"))
	if p.Priority != "normal" || len(p.Packages) != 1 || p.Packages[0].Status != event.StatusScheduled {
		t.Errorf("plan = %+v", p)
	}
}
