package ledger_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/bustest"
	"github.com/ccatobs/ccat-staging/devkit/dbtest"
	"github.com/ccatobs/ccat-staging/devkit/poll"
	"github.com/ccatobs/ccat-staging/services/ledger/internal/scenario"
	"github.com/ccatobs/ccat-staging/services/ledger/ledger"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/db"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// env is one test's world: a JetStream server, a database and a running ledger.
type env struct {
	t    *testing.T
	bus  *bustest.Server
	cfg  ledger.Config
	base string // http://host:port
	stop func() // stops the ledger and waits for Run to return
}

func start(t *testing.T, tweak func(*ledger.Config)) *env {
	t.Helper()
	e := &env{t: t, bus: bustest.New(t)}
	topo := filepath.Join(t.TempDir(), "topology.yaml")
	if err := os.WriteFile(topo, []byte(`sites:
  - name: cologne
    locations:
      - {name: cologne-lta, type: long_term_archive, storage: disk, priority: 1, path: /archive}
      - {name: cologne-proc, type: processing, storage: disk, priority: 1, path: /proc-fs}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := ledger.ConfigFromEnv(func(k string) string {
		return map[string]string{"NATS_URL": e.bus.URL, "DATABASE_URL": dbtest.New(t), "LEDGER_HTTP_ADDR": "127.0.0.1:0",
			"TOPOLOGY_FILE": topo, "LEDGER_FETCH_MAX_WAIT": "200ms"}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	if tweak != nil {
		tweak(&cfg)
	}
	e.cfg = cfg
	e.run()
	return e
}

func (e *env) run() {
	t := e.t
	addr := make(chan net.Addr, 1)
	cfg := e.cfg
	cfg.Listening = func(a net.Addr) { addr <- a }
	ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
	done := make(chan error, 1)
	go func() { done <- ledger.Run(ctx, cfg, zerolog.New(io.Discard)) }()
	select {
	case a := <-addr:
		e.base = "http://" + a.String()
	case err := <-done:
		cancel()
		t.Fatalf("Run returned at start-up: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("ledger did not start listening")
	}
	stopped := false
	e.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run = %v after cancel, want nil", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("Run did not return after cancel")
		}
	}
	t.Cleanup(e.stop)
}

// publish sends scenario messages, checking each against its schema first.
func (e *env) publish(msgs ...scenario.Msg) {
	e.t.Helper()
	for _, m := range msgs {
		raw, err := json.Marshal(m.Env)
		if err != nil {
			e.t.Fatal(err)
		}
		if _, err := event.Validate(raw); err != nil {
			e.t.Fatalf("test event %s does not validate: %v", m.Env.ID, err)
		}
		if _, err := bus.Publish(e.t.Context(), e.bus.JS, m.Subject, m.Env); err != nil {
			e.t.Fatal(err)
		}
	}
}

func (e *env) publishRaw(subj string, raw []byte) {
	e.t.Helper()
	if _, err := e.bus.JS.Publish(e.t.Context(), subj, raw); err != nil {
		e.t.Fatal(err)
	}
}

// get fetches path and decodes the JSON answer into out (when not nil).
func (e *env) get(path string, out any, hdr ...string) (int, http.Header) {
	e.t.Helper()
	req, _ := http.NewRequestWithContext(e.t.Context(), "GET", e.base+path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			e.t.Fatalf("GET %s: %d %s: %v", path, resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode, resp.Header
}

func (e *env) waitJob(id, status string) map[string]any {
	e.t.Helper()
	var job map[string]any
	poll.Until(e.t, 20*time.Second, "job "+id+" "+status, func() error {
		job = nil
		code, _ := e.get("/v1/jobs/"+id, &job)
		if code != 200 || job["status"] != status {
			return fmt.Errorf("GET job = %d %v", code, job["status"])
		}
		return nil
	})
	return job
}

// drained waits until both ledger consumers have applied and acked
// everything published so far.
func (e *env) drained() {
	e.t.Helper()
	poll.Until(e.t, 20*time.Second, "consumers drained", func() error {
		for _, c := range []struct{ stream, durable string }{
			{subject.EventsStream, subject.LedgerEvents}, {subject.ArchiveStream, subject.LedgerArchive},
		} {
			cons, err := e.bus.JS.Consumer(e.t.Context(), c.stream, c.durable)
			if err != nil {
				return err
			}
			info, err := cons.Info(e.t.Context())
			if err != nil {
				return err
			}
			if info.NumPending != 0 || info.NumAckPending != 0 {
				return fmt.Errorf("%s: pending %d, ack pending %d", c.durable, info.NumPending, info.NumAckPending)
			}
		}
		return nil
	})
}

func jobEvents(t *testing.T, j scenario.Job) []scenario.Msg {
	t.Helper()
	msgs, err := scenario.Events(j)
	if err != nil {
		t.Fatal(err)
	}
	return msgs
}

func hasKeys(t *testing.T, what string, m map[string]any, keys ...string) {
	t.Helper()
	for _, k := range keys {
		if _, ok := m[k]; !ok {
			t.Errorf("%s has no field %q: %v", what, k, m)
		}
	}
}

func TestWholeJobThroughJetStream(t *testing.T) {
	t.Parallel()
	e := start(t, nil)
	e.publish(jobEvents(t, scenario.Job{ID: "job-1", Packages: 2, NoSource: true, Progress: 2})...)
	job := e.waitJob("job-1", "failed")
	hasKeys(t, "job", job, "job_id", "status", "reason", "message", "requested_by", "priority", "note", "destination",
		"created_at", "updated_at", "completed_at", "counts", "bytes_total", "bytes_done", "packages")
	hasKeys(t, "destination", job["destination"].(map[string]any), "site", "location")
	hasKeys(t, "counts", job["counts"].(map[string]any), "total", "pending", "scheduled", "in_progress", "completed", "failed")
	want := map[string]any{"total": 3.0, "pending": 0.0, "scheduled": 0.0, "in_progress": 0.0, "completed": 2.0, "failed": 1.0, "cancelled": 0.0}
	if !reflect.DeepEqual(job["counts"], want) {
		t.Errorf("counts = %v, want %v", job["counts"], want)
	}
	pkgs := job["packages"].([]any)
	if len(pkgs) != 3 {
		t.Fatalf("packages = %v", pkgs)
	}
	for _, p := range pkgs {
		pm := p.(map[string]any)
		hasKeys(t, "package", pm, "package_id", "status", "reason", "message", "attempts", "source", "destination", "path",
			"size_bytes", "files", "already_present", "planned_at", "started_at", "completed_at", "duration_seconds", "progress")
		hasKeys(t, "source", pm["source"].(map[string]any), "location", "site", "storage", "key")
		hasKeys(t, "progress", pm["progress"].(map[string]any), "bytes_done", "bytes_total", "rate_bytes_per_second", "updated_at")
	}
	if p := pkgs[2].(map[string]any); p["status"] != "failed" || p["reason"] != event.ReasonNoSource {
		t.Errorf("package without source = %v", p)
	}
	if _, err := time.Parse(time.RFC3339, job["created_at"].(string)); err != nil {
		t.Errorf("created_at not RFC 3339: %v", err)
	}

	// The list, the timeline and the explanation.
	e.drained()
	var list struct {
		Jobs       []map[string]any `json:"jobs"`
		NextCursor string           `json:"next_cursor"`
	}
	if code, _ := e.get("/v1/jobs?status=failed&site=cologne", &list); code != 200 || len(list.Jobs) != 1 || list.NextCursor != "" {
		t.Errorf("list = %d %+v", code, list)
	}
	var evs struct {
		Events []map[string]any `json:"events"`
	}
	e.get("/v1/jobs/job-1/events", &evs)
	if n := len(evs.Events); n != len(jobEvents(t, scenario.Job{ID: "job-1", Packages: 2, NoSource: true, Progress: 2}))-2 {
		t.Errorf("timeline has %d events", n) // the archive events carry no job
	}
	var pkg map[string]any
	if code, _ := e.get("/v1/packages/"+scenario.PackageID("job-1", 0), &pkg); code != 200 ||
		len(pkg["archive_copies"].([]any)) != 1 || len(pkg["staged_copies"].([]any)) != 1 {
		t.Errorf("package = %d %v", code, pkg)
	}
	var sites struct {
		Sites []map[string]any `json:"sites"`
	}
	if code, _ := e.get("/v1/sites", &sites); code != 200 || len(sites.Sites) != 1 || sites.Sites[0]["name"] != "cologne" {
		t.Errorf("sites = %d %v", code, sites)
	}
	var ready map[string]string
	if code, _ := e.get("/readyz", &ready); code != 200 {
		t.Errorf("readyz = %d %v", code, ready)
	}
}

func TestPoisonIsRecordedAndTheConsumerGoesOn(t *testing.T) {
	t.Parallel()
	e := start(t, nil)
	good := jobEvents(t, scenario.Job{ID: "after-poison", Packages: 1})
	e.publishRaw(subject.Done, []byte("this is not json"))
	e.publishRaw(subject.Started, []byte(`{"specversion":"1.0","id":"x1","source":"s","type":"ccat.staging.started.v1","data":{"job_id":"j"}}`))
	e.publishRaw(subject.Failed, []byte(`{"specversion":"1.0","id":"x2","source":"s","type":"ccat.staging.exploded.v1","data":{}}`))
	e.publishRaw(subject.Archived, []byte(`{"specversion":"1.0"}`))
	nul, _ := event.New("ccat-staging/stager/cologne/h1", "failed:nul", "", event.Failed{Outcome: event.Outcome{JobID: "j", PackageID: "p",
		Site: "cologne", Location: "cologne-proc", Attempt: 1, RequestID: "r"}, Reason: event.ReasonIOError, Message: "bad\x00byte"})
	rawNul, _ := json.Marshal(nul)
	if _, err := event.Validate(rawNul); err != nil {
		t.Fatalf("the NUL event should be schema-valid: %v", err)
	}
	e.publishRaw(subject.Failed, rawNul)
	// A stager outcome on staging.submit, where any client may publish, is
	// forged: poison, and the job it names stays unknown.
	forged, _ := event.New("someone", "done:request:forged:p:1", "", event.Done{Outcome: event.Outcome{JobID: "forged", PackageID: "p",
		Site: "cologne", Location: "cologne-proc", Attempt: 1, RequestID: "request:forged:p:1"}, Path: "/etc", SizeBytes: 1, Files: 1})
	e.publish(scenario.Msg{Subject: subject.Submit, Env: forged})
	// A plan without packages is odd but valid: it must not stall anything.
	empty, _ := event.New("ccat-staging/planner", "planned:empty-plan", "", event.Planned{JobID: "empty-plan", RequestedBy: "x",
		Priority: event.PriorityNormal, Destination: event.Target{Site: "cologne", Location: "cologne-proc"}, Packages: []event.PlannedPackage{}})
	e.publish(scenario.Msg{Subject: subject.Planned, Env: empty})
	e.publish(good...)
	e.waitJob("after-poison", "completed")
	var p struct {
		Poison []map[string]any `json:"poison"`
	}
	poll.Until(t, 20*time.Second, "poison recorded", func() error {
		e.get("/v1/poison", &p)
		if len(p.Poison) != 6 {
			return fmt.Errorf("poison = %v", p.Poison)
		}
		return nil
	})
	var reasons []string
	for _, x := range p.Poison {
		reasons = append(reasons, x["reason"].(string))
	}
	slices.Sort(reasons)
	if want := []string{"invalid_data", "invalid_data", "invalid_envelope", "invalid_envelope", "unknown_type", "wrong_subject"}; !reflect.DeepEqual(reasons, want) {
		t.Errorf("poison reasons = %v, want %v", reasons, want)
	}
	// Nothing is left for redelivery.
	e.drained()
	if code, _ := e.get("/v1/jobs/forged", nil); code != 404 {
		t.Errorf("forged job = %d, want 404", code)
	}
	if code, _ := e.get("/v1/jobs/empty-plan", nil); code != 200 {
		t.Errorf("job with an empty plan = %d, want 200", code)
	}
}

func TestLateStartedAfterDoneThroughJetStream(t *testing.T) {
	t.Parallel()
	e := start(t, nil)
	msgs := jobEvents(t, scenario.Job{ID: "late", Packages: 1})
	e.publish(msgs...)
	e.waitJob("late", "completed")
	late, _ := event.New("ccat-staging/stager/cologne/h2", "started:request:late:late-pkg-0:1:3", "", event.Started{
		Outcome: event.Outcome{JobID: "late", PackageID: "late-pkg-0", Site: "cologne", Location: "cologne-proc", Attempt: 3,
			RequestID: "request:late:late-pkg-0:1", Instance: "h2"}})
	e.publish(scenario.Msg{Subject: subject.Started, Env: late})
	var evs struct {
		Events []map[string]any `json:"events"`
	}
	poll.Until(t, 20*time.Second, "late event logged", func() error {
		e.get("/v1/jobs/late/events", &evs)
		for _, x := range evs.Events {
			if x["id"] == late.ID {
				return nil
			}
		}
		return errors.New("not yet")
	})
	job := e.waitJob("late", "completed")
	if p := job["packages"].([]any)[0].(map[string]any); p["status"] != "completed" {
		t.Errorf("package moved back to %v", p["status"])
	}
}

func TestAPIErrorsPaginationAndAuth(t *testing.T) {
	t.Parallel()
	e := start(t, func(c *ledger.Config) { c.Tokens = []string{"s3cret"} })
	auth := []string{"Authorization", "Bearer s3cret"}
	var all []scenario.Msg
	for i := range 5 {
		all = append(all, jobEvents(t, scenario.Job{ID: fmt.Sprintf("page-%d", i), Packages: 1,
			Base: time.Date(2026, 11, 26, 10+i, 0, 0, 0, time.UTC)})...)
	}
	e.publish(all...)
	poll.Until(t, 20*time.Second, "5 jobs completed", func() error {
		var l struct{ Jobs []map[string]any }
		e.get("/v1/jobs?status=completed", &l, auth...)
		if len(l.Jobs) != 5 {
			return fmt.Errorf("%d jobs", len(l.Jobs))
		}
		return nil
	})
	// Keyset pages, newest first, no overlap.
	var seen []string
	cursor := ""
	for range 10 {
		var l struct {
			Jobs       []map[string]any `json:"jobs"`
			NextCursor string           `json:"next_cursor"`
		}
		if code, _ := e.get("/v1/jobs?limit=2&cursor="+cursor, &l, auth...); code != 200 {
			t.Fatalf("page = %d", code)
		}
		for _, j := range l.Jobs {
			seen = append(seen, j["job_id"].(string))
		}
		if cursor = l.NextCursor; cursor == "" {
			break
		}
	}
	if want := []string{"page-4", "page-3", "page-2", "page-1", "page-0"}; !reflect.DeepEqual(seen, want) {
		t.Errorf("pages = %v, want %v", seen, want)
	}
	tests := []struct {
		name, path string
		hdr        []string
		code       int
		count      int // jobs expected in a 200 list, -1 = not a list
	}{
		{"no token", "/v1/jobs", nil, 401, -1},
		{"wrong token", "/v1/jobs", []string{"Authorization", "Bearer nope"}, 401, -1},
		{"unknown job", "/v1/jobs/nope", auth, 404, -1},
		{"bad job id", "/v1/jobs/a:b", auth, 400, -1},
		{"bad status", "/v1/jobs?status=weird", auth, 400, -1},
		{"limit too big", "/v1/jobs?limit=100000", auth, 400, -1},
		{"bad cursor", "/v1/jobs?cursor=zzz", auth, 400, -1},
		{"bad since", "/v1/jobs?since=yesterday", auth, 400, -1},
		{"unknown endpoint", "/v1/nothing", auth, 404, -1},
		{"unknown package", "/v1/packages/nope", auth, 404, -1},
		{"unknown site", "/v1/sites/nowhere", auth, 404, -1},
		{"free text", "/v1/jobs?q=page-3", auth, 200, 1},
		{"requested_by", "/v1/jobs?requested_by=alice", auth, 200, 5},
		{"since", "/v1/jobs?since=2026-11-26T12:00:00Z", auth, 200, 3},
		{"until", "/v1/jobs?until=2026-11-26T12:00:00Z", auth, 200, 2},
		{"location", "/v1/jobs?location=cologne-proc&sort=updated", auth, 200, 5},
		{"other site", "/v1/jobs?site=us", auth, 200, 0},
		{"healthz needs no token", "/healthz", nil, 200, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body map[string]any
			code, h := e.get(tt.path, &body, tt.hdr...)
			if code != tt.code {
				t.Fatalf("GET %s = %d %v, want %d", tt.path, code, body, tt.code)
			}
			if code >= 400 {
				if ct := h.Get("Content-Type"); ct != "application/problem+json" {
					t.Errorf("Content-Type = %q", ct)
				}
				hasKeys(t, "problem", body, "type", "title", "status", "detail")
				if body["status"] != float64(code) {
					t.Errorf("problem status = %v", body["status"])
				}
			}
			if tt.count >= 0 {
				if n := len(body["jobs"].([]any)); n != tt.count {
					t.Errorf("GET %s: %d jobs, want %d", tt.path, n, tt.count)
				}
			}
		})
	}
}

func TestExplainAndStatusPage(t *testing.T) {
	t.Parallel()
	e := start(t, nil)
	msgs := jobEvents(t, scenario.Job{ID: "slow", Packages: 3, Progress: 1})
	// Stop in the middle: package 0 running, package 1 waiting for a retry,
	// package 2 queued.
	var part []scenario.Msg
	for _, m := range msgs {
		if m.Env.Type == event.TypeDone {
			continue
		}
		part = append(part, m)
		if m.Env.Type == event.TypeFailed {
			break
		}
	}
	e.publish(part...)
	e.waitJob("slow", "in_progress")
	var ex struct {
		Summary  string `json:"summary"`
		Packages []struct {
			PackageID, Status, Why string
		} `json:"packages"`
	}
	wants := []string{"in progress at site cologne at 50%", "attempt 1 failed at site cologne with io_error", "waiting in the queue at site cologne"}
	// The events may still be on their way: wait for the explanation to
	// settle on what they say.
	poll.Until(t, 20*time.Second, "explain three packages", func() error {
		e.get("/v1/jobs/slow/explain", &ex)
		if len(ex.Packages) != 3 {
			return fmt.Errorf("explain = %+v", ex)
		}
		for i, w := range wants {
			if !strings.Contains(ex.Packages[i].Why, w) || !strings.Contains(ex.Packages[i].Why, "no stager heartbeat") {
				return fmt.Errorf("explain package %d = %q, want it to say %q and that no stager is alive", i, ex.Packages[i].Why, w)
			}
		}
		return nil
	})
	resp, err := http.Get(e.base + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, w := range []string{`data-job="slow"`, `data-status="in_progress"`, "<td>cologne</td>", "Recent failures"} {
		if !strings.Contains(string(b), w) {
			t.Errorf("status page lacks %q", w)
		}
	}
	var m string
	{
		resp, err := http.Get(e.base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		mb, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		m = string(mb)
	}
	for _, w := range []string{`ledger_events_applied_total{type="ccat.staging.planned.v1"} 1`, "ledger_batch_apply_seconds_bucket", "ledger_batch_size_bucket"} {
		if !strings.Contains(m, w) {
			t.Errorf("metrics lack %q", w)
		}
	}
}

func TestRebuildEndsIdenticalToTheLiveProjection(t *testing.T) {
	t.Parallel()
	e := start(t, nil)
	e.publish(jobEvents(t, scenario.Job{ID: "r1", Packages: 3, Progress: 2, NoSource: true})...)
	e.publish(jobEvents(t, scenario.Job{ID: "r2", Packages: 2, Permanent: true, Progress: 1})...)
	e.publishRaw(subject.Done, []byte("garbage"))
	e.waitJob("r1", "failed")
	e.waitJob("r2", "failed")
	poll.Until(t, 20*time.Second, "poison recorded", func() error {
		var p struct{ Poison []any }
		e.get("/v1/poison", &p)
		if len(p.Poison) != 1 {
			return fmt.Errorf("%d poison", len(p.Poison))
		}
		return nil
	})
	e.drained()
	e.stop()
	bdb, err := db.Open(t.Context(), e.cfg.DatabaseURL, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer bdb.Close()
	live, err := scenario.Snapshot(t.Context(), bdb)
	if err != nil {
		t.Fatal(err)
	}
	st, err := ledger.Rebuild(t.Context(), e.cfg, zerolog.New(io.Discard))
	if err != nil {
		t.Fatalf("Rebuild: %v", err)
	}
	if st.Messages == 0 {
		t.Fatal("rebuild replayed nothing")
	}
	rebuilt, err := scenario.Snapshot(t.Context(), bdb)
	if err != nil {
		t.Fatal(err)
	}
	for name := range live {
		if !reflect.DeepEqual(live[name], rebuilt[name]) {
			t.Errorf("table %s differs after rebuild:\nlive    %v\nrebuilt %v", name, live[name], rebuilt[name])
		}
	}
	// The ledger starts again on the rebuilt projection and keeps going.
	e.run()
	e.publish(jobEvents(t, scenario.Job{ID: "r3", Packages: 1})...)
	e.waitJob("r3", "completed")
}

func TestConfigFromEnv(t *testing.T) {
	tokens := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(tokens, []byte("# comment\nfile-token\n\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		env     map[string]string
		check   func(ledger.Config) bool
		wantErr bool
	}{
		{"defaults", nil, func(c ledger.Config) bool {
			return c.NATSURL == nats.DefaultURL && c.DatabaseURL == db.DefaultURL && c.HTTPAddr == "127.0.0.1:8080" && c.BatchSize == 1000 && len(c.Tokens) == 0
		}, false},
		{"tokens from env and file", map[string]string{"LEDGER_TOKENS": "a,b", "LEDGER_TOKEN_FILE": tokens},
			func(c ledger.Config) bool { return reflect.DeepEqual(c.Tokens, []string{"a", "b", "file-token"}) }, false},
		{"no http", map[string]string{"LEDGER_HTTP_ADDR": "-"}, func(c ledger.Config) bool { return c.HTTPAddr == "" }, false},
		{"bad batch", map[string]string{"LEDGER_BATCH_SIZE": "0"}, nil, true},
		{"bad duration", map[string]string{"EVENTS_MAX_AGE": "forever"}, nil, true},
		{"missing token file", map[string]string{"LEDGER_TOKEN_FILE": "/nonexistent"}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ledger.ConfigFromEnv(func(k string) string { return tt.env[k] })
			if (err != nil) != tt.wantErr {
				t.Fatalf("ConfigFromEnv = %v, wantErr %v", err, tt.wantErr)
			}
			if tt.check != nil && !tt.check(c) {
				t.Errorf("config = %+v", c)
			}
		})
	}
}

// Two ledgers share the durables and the database; what they build together
// equals a single replay of the same streams into a fresh database.
func TestTwoLedgersShareTheWork(t *testing.T) {
	t.Parallel()
	e := start(t, func(c *ledger.Config) { c.BatchSize = 7 })
	e.run() // a second instance on the same consumers and database
	var all []scenario.Msg
	for i := range 6 {
		all = append(all, jobEvents(t, scenario.Job{ID: fmt.Sprintf("shared-%d", i), Packages: 3, Progress: 2,
			NoSource: i%2 == 0, Cancel: i == 3, Release: i == 4, Remove: i == 5})...)
	}
	e.publish(all...)
	e.drained()
	shared, err := db.Open(t.Context(), e.cfg.DatabaseURL, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer shared.Close()
	got, err := scenario.Snapshot(t.Context(), shared)
	if err != nil {
		t.Fatal(err)
	}
	fresh := e.cfg
	fresh.DatabaseURL = dbtest.New(t)
	if _, err := ledger.Rebuild(t.Context(), fresh, zerolog.New(io.Discard)); err != nil {
		t.Fatalf("Rebuild: %v", err)
	}
	single, err := db.Open(t.Context(), fresh.DatabaseURL, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer single.Close()
	want, err := scenario.Snapshot(t.Context(), single)
	if err != nil {
		t.Fatal(err)
	}
	for name := range got {
		if !reflect.DeepEqual(got[name], want[name]) {
			t.Errorf("table %s differs between two live ledgers and one replay:\nlive   %v\nreplay %v", name, got[name], want[name])
		}
	}
}

// A backlog of large events is applied in batches of at most
// LEDGER_BATCH_BYTES, not LEDGER_BATCH_SIZE messages each: memory stays
// bounded when plans list many packages.
func TestBatchesAreCappedByBytes(t *testing.T) {
	t.Parallel()
	const capBytes = 64 << 10
	e := start(t, func(c *ledger.Config) { c.BatchBytes = capBytes; c.BatchSize = 500 })
	e.stop() // queue everything first, so batches could be as large as allowed
	var msgs []scenario.Msg
	for j := range 12 {
		msgs = append(msgs, jobEvents(t, scenario.Job{ID: fmt.Sprintf("big-%02d", j), Packages: 60})...)
	}
	total := 0
	for _, m := range msgs {
		raw, err := json.Marshal(m.Env)
		if err != nil {
			t.Fatal(err)
		}
		total += len(raw)
	}
	e.publish(msgs...)
	e.run()
	e.drained()
	e.waitJob("big-11", "completed")

	resp, err := http.Get(e.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var batches float64
	for _, l := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(l, "ledger_batch_size_count "); ok {
			batches, _ = strconv.ParseFloat(v, 64)
		}
	}
	// By count alone the backlog would fit in a few batches of 500.
	if min := float64(total) / capBytes; batches < min {
		t.Errorf("%d messages (%d bytes) applied in %.0f batches, want at least %.0f (%d bytes each at most)",
			len(msgs), total, batches, min, capBytes)
	}
	t.Logf("%d messages, %d bytes, %.0f batches", len(msgs), total, batches)
}
