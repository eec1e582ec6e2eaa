package planner_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/poll"
	"github.com/ccatobs/ccat-staging/services/planner/planner"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
)

// fakeLedger serves the two read endpoints the reconciler uses, in the
// shared ledgerapi shapes, from a job map the test edits.
type fakeLedger struct {
	mu   sync.Mutex
	jobs map[string]ledgerapi.Job
}

func (f *fakeLedger) set(j ledgerapi.Job) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.jobs[j.JobID] = j
}

func (f *fakeLedger) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if id, ok := cutPrefix(r.URL.Path, "/v1/jobs/"); ok {
		j, found := f.jobs[id]
		if !found {
			w.WriteHeader(http.StatusNotFound)
			_ = json.NewEncoder(w).Encode(ledgerapi.Problem{Title: "no such job", Status: 404})
			return
		}
		_ = json.NewEncoder(w).Encode(j)
		return
	}
	var l ledgerapi.JobList
	for _, j := range f.jobs {
		if j.Status == r.URL.Query().Get("status") {
			l.Jobs = append(l.Jobs, j.JobSummary)
		}
	}
	_ = json.NewEncoder(w).Encode(l)
}

func cutPrefix(s, p string) (string, bool) {
	if len(s) > len(p) && s[:len(p)] == p {
		return s[len(p):], true
	}
	return "", false
}

// ledgerDurable stands in for the ledger's projection on the bus: the
// ledger-events durable, acknowledging every event as it arrives, so the
// reconciler finds the record caught up. Stopping the returned func stops
// acknowledging (a stalled projection behind a live API).
func ledgerDurable(t *testing.T, h *harness) (stop func()) {
	t.Helper()
	cons, err := h.js.CreateOrUpdateConsumer(t.Context(), subject.EventsStream, jetstream.ConsumerConfig{
		Durable: subject.LedgerEvents, FilterSubject: subject.EventsAll, AckPolicy: jetstream.AckExplicitPolicy,
	})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) { _ = m.Ack() })
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop = func() { once.Do(cc.Stop) }
	t.Cleanup(stop)
	return stop
}

func counter(t *testing.T, metrics, name string) float64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` ([0-9.e+]+)$`).FindStringSubmatch(metrics)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// The reconciler, run by two planners at once, re-issues a request deleted
// from the work queue by hand and one a stager took and never finished
// (acknowledged, no outcome), each exactly once per generation, and gives
// up with staging.stalled after MaxReissues.
func TestReconcilerRecoversLostRequests(t *testing.T) {
	ledger := &fakeLedger{jobs: map[string]ledgerapi.Job{}}
	api := httptest.NewServer(ledger)
	t.Cleanup(api.Close)
	const stallAfter = 300 * time.Millisecond
	cfg := func(c *planner.Config) {
		c.LedgerURL = api.URL
		c.ReconcileInterval = 30 * time.Millisecond
		c.StallAfter = stallAfter
		c.MaxReissues = 2
	}
	h := start(t, testTopology, cfg)
	ledgerDurable(t, h)
	second := h.run(cfg)
	h.archived("p1", "us-lta")
	h.archived("p2", "us-lta")
	h.submit("s-r", event.Submit{JobID: "R", Packages: []string{"p1", "p2"}, Destination: event.Destination{Site: "us"}, RequestedBy: "me"})
	h.event(subject.Planned, "planned:R")

	dest := ledgerapi.Place{Site: "us", Location: "us-proc"}
	long := time.Now().Add(-time.Hour)
	pkg := func(id, status string, attempts int) ledgerapi.Package {
		p := ledgerapi.Package{PackageID: id, Status: status, Attempts: attempts, Destination: dest, PlannedAt: &long}
		if status == event.StatusInProgress {
			p.StartedAt = &long
		}
		return p
	}
	setJob := func(pkgs ...ledgerapi.Package) {
		ledger.set(ledgerapi.Job{JobSummary: ledgerapi.JobSummary{JobID: "R", Status: event.StatusScheduled, Priority: "normal", Destination: dest}, Packages: pkgs})
	}
	setJob(pkg("p1", event.StatusScheduled, 0), pkg("p2", event.StatusScheduled, 0))

	reqs, err := h.js.Stream(t.Context(), subject.RequestsStream)
	if err != nil {
		t.Fatal(err)
	}
	queued := func() map[string]uint64 {
		out := map[string]uint64{}
		for seq := uint64(1); ; {
			m, err := reqs.GetMsg(t.Context(), seq, jetstream.WithGetMsgSubject(subject.RequestsAll))
			if err != nil {
				return out
			}
			if _, err := event.Validate(m.Data); err != nil {
				t.Errorf("request %d: %v", m.Sequence, err)
			}
			out[m.Header.Get(jetstream.MsgIDHeader)] = m.Sequence
			seq = m.Sequence + 1
		}
	}
	reissued := func() float64 {
		return counter(t, h.metrics(), "planner_requests_reissued_total") + counter(t, h.metricsOf(second), "planner_requests_reissued_total")
	}
	// Quiet for an hour but both requests wait in the queue: left alone.
	poll.Until(t, 5*time.Second, "five reconcile rounds", func() error {
		if n := counter(t, h.metrics(), `planner_reconcile_rounds_total{outcome="ok"}`); n < 5 {
			return fmt.Errorf("%v rounds", n)
		}
		return nil
	})
	if q := queued(); len(q) != 2 || reissued() != 0 {
		t.Fatalf("queue %v, %v re-issued; want the two first requests only", q, reissued())
	}

	// An operator deletes p1's request from the stream.
	if err := reqs.DeleteMsg(t.Context(), queued()[planner.RequestID("R", "p1", 1)]); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 5*time.Second, "R/p1 re-issued as generation 2", func() error {
		if _, ok := queued()[planner.RequestID("R", "p1", 2)]; !ok {
			return fmt.Errorf("queue %v", queued())
		}
		return nil
	})

	// A stager takes p2's request, acknowledges it and dies before any
	// outcome: the ledger shows it in progress, silent.
	cons, err := h.js.Consumer(t.Context(), subject.RequestsStream, subject.StagerDurable("us", "normal"))
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range batch.Messages() {
		if id := m.Headers().Get(jetstream.MsgIDHeader); id != planner.RequestID("R", "p2", 1) {
			t.Fatalf("stager got %s, want p2's first request", id)
		}
		if err := m.DoubleAck(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	setJob(pkg("p1", event.StatusScheduled, 0), pkg("p2", event.StatusInProgress, 1))
	poll.Until(t, 5*time.Second, "R/p2 re-issued as generation 2", func() error {
		if _, ok := queued()[planner.RequestID("R", "p2", 2)]; !ok {
			return fmt.Errorf("queue %v", queued())
		}
		return nil
	})
	if got := reissued(); got != 2 {
		t.Errorf("%v re-issues published by the two planners, want 2", got)
	}
	q := queued()
	raw, err := reqs.GetMsg(t.Context(), q[planner.RequestID("R", "p2", 2)])
	if err != nil {
		t.Fatal(err)
	}
	env, _ := event.Validate(raw.Data)
	if r := dataOf[event.Request](t, env); r.Generation != 2 || raw.Subject != "staging.request.us.normal" || r.Source.Location != "us-lta" || len(r.Files) != 1 {
		t.Errorf("re-issued request on %s = %+v", raw.Subject, r)
	}

	// p1 keeps getting lost: generation 3, then the planner gives up.
	for gen := 2; gen <= 3; gen++ {
		id := planner.RequestID("R", "p1", gen)
		poll.Until(t, 5*time.Second, "the request queued", func() error {
			if _, ok := queued()[id]; !ok {
				return fmt.Errorf("%s not queued: %v", id, queued())
			}
			return nil
		})
		if err := reqs.DeleteMsg(t.Context(), queued()[id]); err != nil {
			t.Fatal(err)
		}
	}
	f := dataOf[event.Stalled](t, h.event(subject.Stalled, "stalled:"+planner.RequestID("R", "p1", 3)+":stalled"))
	if f.Reason != event.ReasonStalled || f.Reissues != 2 || f.Site != "us" || f.Location != "us-proc" || f.JobID != "R" || f.PackageID != "p1" || f.RequestID != planner.RequestID("R", "p1", 3) {
		t.Errorf("stalled = %+v", f)
	}
	if got := reissued(); got != 3 {
		t.Errorf("%v re-issues in all, want 3 (p1 twice, p2 once)", got)
	}
	// Given up once, whatever the ledger still says: later rounds publish
	// nothing more for p1.
	rounds := counter(t, h.metrics(), `planner_reconcile_rounds_total{outcome="ok"}`)
	poll.Until(t, 5*time.Second, "five more reconcile rounds", func() error {
		if n := counter(t, h.metrics(), `planner_reconcile_rounds_total{outcome="ok"}`); n < rounds+5 {
			return fmt.Errorf("%v rounds", n)
		}
		return nil
	})
	if n := counter(t, h.metrics(), `planner_packages_given_up_total{reason="stalled"}`) + counter(t, h.metricsOf(second), `planner_packages_given_up_total{reason="stalled"}`); n != 1 {
		t.Errorf("gave up %v times, want 1", n)
	}
	if n := len(h.messages(subject.EventsStream, subject.Stalled)); n != 1 {
		t.Errorf("%d stalled events stored, want 1", n)
	}
	// The planner may not publish outcomes (deploy/nats/accounts.conf).
	if n := len(h.messages(subject.EventsStream, subject.Failed)); n != 0 {
		t.Errorf("%d failed events stored, want none", n)
	}
}

// Issue 15: the ledger (caught up on the bus, but its answer stale) still
// shows a package scheduled whose done the planner has seen: the
// reconciler neither re-issues nor gives it up. A staging.stalled for a
// package (another planner giving up for lack of news) does not drop the
// job's reference: only a release, a cancel or a real failure does.
func TestReconcilerTrustsRecordedOutcomes(t *testing.T) {
	ledger := &fakeLedger{jobs: map[string]ledgerapi.Job{}}
	api := httptest.NewServer(ledger)
	t.Cleanup(api.Close)
	h := start(t, releaseTopology, func(c *planner.Config) {
		c.LedgerURL = api.URL
		c.ReconcileInterval = 20 * time.Millisecond
		c.StallAfter = 100 * time.Millisecond
		c.MaxReissues = 1
		c.ReleaseSweep = 20 * time.Millisecond
	})
	ledgerDurable(t, h)
	h.archived("p1", "us-lta")
	h.archived("p2", "us-lta")
	h.submit("s-D", event.Submit{JobID: "D", Packages: []string{"p1", "p2"}, Destination: event.Destination{Site: "us"}, RequestedBy: "me"})
	h.event(subject.Planned, "planned:D")

	// A stager stages p1 and acknowledges its request after the outcome.
	cons, err := h.js.Consumer(t.Context(), subject.RequestsStream, subject.StagerDurable("us", "normal"))
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range batch.Messages() {
		rid := m.Headers().Get(jetstream.MsgIDHeader)
		if rid != planner.RequestID("D", "p1", 1) {
			t.Fatalf("stager got %s, want p1's request", rid)
		}
		done, err := event.New("ccat-staging/stager/us/h1", "done:"+rid, "p1", event.Done{
			Outcome: event.Outcome{JobID: "D", PackageID: "p1", Site: "us", Location: "us-proc", Attempt: 1, RequestID: rid, Instance: "h1"},
			Path:    "/hpc/p1", SizeBytes: 10, Files: 1})
		if err != nil {
			t.Fatal(err)
		}
		h.publish(subject.Done, done)
		if err := m.DoubleAck(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	dest := ledgerapi.Place{Site: "us", Location: "us-proc"}
	long := time.Now().Add(-time.Hour)
	ledger.set(ledgerapi.Job{JobSummary: ledgerapi.JobSummary{JobID: "D", Status: event.StatusScheduled, Priority: "normal", Destination: dest}, Packages: []ledgerapi.Package{
		{PackageID: "p1", Status: event.StatusScheduled, Destination: dest, PlannedAt: &long},
		{PackageID: "p2", Status: event.StatusScheduled, Destination: dest, PlannedAt: &long},
	}})
	poll.Until(t, 10*time.Second, "ten reconcile rounds", func() error {
		if n := counter(t, h.metrics(), `planner_reconcile_rounds_total{outcome="ok"}`); n < 10 {
			return fmt.Errorf("%v rounds", n)
		}
		return nil
	})
	if n := counter(t, h.metrics(), `planner_reconcile_skipped_total{reason="outcome_recorded"}`); n == 0 {
		t.Error("p1 never left alone for its recorded outcome")
	}
	if n := counter(t, h.metrics(), "planner_requests_reissued_total"); n != 0 {
		t.Errorf("%v requests re-issued, want none (p1 is done, p2 queued)", n)
	}
	if n := len(h.messages(subject.EventsStream, subject.Stalled)); n != 0 {
		t.Errorf("%d stalled events, want none", n)
	}

	// Another planner gives p2 up: its reference stays with D.
	rid := planner.RequestID("D", "p2", 1)
	st, err := event.New(planner.Source, "stalled:"+rid+":stalled", "p2", event.Stalled{JobID: "D", PackageID: "p2", Site: "us", Location: "us-proc",
		RequestID: rid, Reason: event.ReasonStalled, Message: "test"})
	if err != nil {
		t.Fatal(err)
	}
	h.publish(subject.Stalled, st)
	h.settled(subject.EventsStream, subject.PlannerOutcomes)
	time.Sleep(100 * time.Millisecond) // a few sweeps, which must schedule nothing
	for _, p := range []string{"p1", "p2"} {
		if it, err := h.refsOf("us", "us-proc", p); err != nil || !slices.Equal(it.Jobs, []string{"D"}) {
			t.Errorf("refs of %s = %+v, %v; want still D", p, it.Entry, err)
		}
	}
	if cs := h.cleanups(); len(cs) != 0 {
		t.Errorf("deletion items %+v, want none", cs)
	}
}

// A package whose own request was lost while another job staged its copy
// at the same location (dedup off) is not settled by that copy — it is
// re-issued, and answered already_present — but it is never given up:
// past MaxReissues it is re-issued once more instead of stalled.
func TestReconcilerNeverGivesUpAStagedCopy(t *testing.T) {
	ledger := &fakeLedger{jobs: map[string]ledgerapi.Job{}}
	api := httptest.NewServer(ledger)
	t.Cleanup(api.Close)
	h := start(t, testTopology, func(c *planner.Config) {
		c.LedgerURL = api.URL
		c.ReconcileInterval = 20 * time.Millisecond
		c.StallAfter = 100 * time.Millisecond
		c.MaxReissues = 1
		c.Dedup = false
	})
	ledgerDurable(t, h)
	h.archived("p1", "us-lta")
	h.submit("s-J", event.Submit{JobID: "J", Packages: []string{"p1"}, Destination: event.Destination{Site: "us"}, RequestedBy: "me"})
	h.event(subject.Planned, "planned:J")
	reqs, err := h.js.Stream(t.Context(), subject.RequestsStream)
	if err != nil {
		t.Fatal(err)
	}
	lose := func(gen int) {
		t.Helper()
		id := planner.RequestID("J", "p1", gen)
		poll.Until(t, 10*time.Second, "the request of this generation queued", func() error {
			for seq := uint64(1); ; {
				m, err := reqs.GetMsg(t.Context(), seq, jetstream.WithGetMsgSubject(subject.RequestsAll))
				if err != nil {
					return fmt.Errorf("%s not queued", id)
				}
				if m.Header.Get(jetstream.MsgIDHeader) == id {
					return reqs.DeleteMsg(t.Context(), m.Sequence)
				}
				seq = m.Sequence + 1
			}
		})
	}
	dest := ledgerapi.Place{Site: "us", Location: "us-proc"}
	long := time.Now().Add(-time.Hour)
	ledger.set(ledgerapi.Job{JobSummary: ledgerapi.JobSummary{JobID: "J", Status: event.StatusScheduled, Priority: "normal", Destination: dest}, Packages: []ledgerapi.Package{
		{PackageID: "p1", Status: event.StatusScheduled, Destination: dest, PlannedAt: &long}}})
	// Another job stages p1 at us-proc after J was planned.
	rid := planner.RequestID("K", "p1", 1)
	done, err := event.New("ccat-staging/stager/us/h1", "done:"+rid, "p1", event.Done{
		Outcome: event.Outcome{JobID: "K", PackageID: "p1", Site: "us", Location: "us-proc", Attempt: 1, RequestID: rid, Instance: "h1"},
		Path:    "/hpc/p1", SizeBytes: 10, Files: 1})
	if err != nil {
		t.Fatal(err)
	}
	h.publish(subject.Done, done)
	lose(1)
	lose(2)
	lose(3)
	lose(4) // re-issued again rather than given up
	if n := len(h.messages(subject.EventsStream, subject.Stalled)); n != 0 {
		t.Errorf("%d stalled events for a package whose copy is staged, want none", n)
	}
	if n := counter(t, h.metrics(), `planner_reconcile_skipped_total{reason="copy_staged"}`); n == 0 {
		t.Error("no re-issue past MaxReissues counted as copy_staged")
	}
}
