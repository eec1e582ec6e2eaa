package tests

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/poll"
	"github.com/ccatobs/ccat-staging/services/planner/planner"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/ccatobs/ccat-staging/shared/tarpkg"
	"github.com/rs/zerolog"
)

// reconcilingPlanner runs one more planner on the system's bus with the
// reconciler on (the in-process pipeline's planner has no ledger URL) and
// returns a function reading its /metrics.
func reconcilingPlanner(t *testing.T, s *system, mod func(*planner.Config)) (metrics func() string) {
	t.Helper()
	addr := make(chan net.Addr, 1)
	ready := make(chan struct{})
	cfg := planner.Config{
		NATSURL: s.bus.URL, TopologyFile: s.topology, HTTPAddr: "127.0.0.1:0", TopologyPoll: -1,
		LedgerURL: s.api.BaseURL, ReleaseSweep: 100 * time.Millisecond,
		OnHTTP: func(a net.Addr) { addr <- a }, OnReady: func() { close(ready) },
	}
	mod(&cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel).With().Timestamp().Str("service", "reconciling-planner").Logger()
	go func() { done <- planner.Run(ctx, cfg, log) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("planner: %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("planner: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("planner not ready after 10s")
	}
	url := "http://" + (<-addr).String() + "/metrics"
	return func() string {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
}

// sumMetric adds every sample of a metric whose name and labels start with
// prefix.
func sumMetric(metrics, prefix string) float64 {
	total := 0.0
	for _, m := range regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(prefix)+`[^ ]* ([0-9.e+]+)$`).FindAllStringSubmatch(metrics, -1) {
		v, _ := strconv.ParseFloat(m[1], 64)
		total += v
	}
	return total
}

// Issue 15: a ledger whose projection stops behind a live API shows a
// staged package as scheduled. The reconciler (short StallAfter, one
// re-issue, retention 0s at the destination) must neither re-issue it, nor
// give it up with staging.stalled, nor let its reference drop so that the
// sweep deletes the copy; when the ledger catches up the package is
// completed and the copy is still there.
func TestLaggingLedgerKeepsStagedCopy(t *testing.T) {
	s := startReleaseSystem(t)
	const stallAfter = 300 * time.Millisecond
	metrics := reconcilingPlanner(t, s, func(c *planner.Config) {
		c.ReconcileInterval = 50 * time.Millisecond
		c.StallAfter = stallAfter
		c.MaxReissues = 1
		c.LedgerCatchUp = 100 * time.Millisecond
	})
	ctx := t.Context()
	js := s.bus.JS
	stagerDurable := subject.StagerDurable("us", event.PriorityNormal)
	// The stager waits until the ledger has projected the plan, so that the
	// ledger can then be stopped with the package scheduled in it.
	if _, err := js.PauseConsumer(ctx, subject.RequestsStream, stagerDurable, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	info := s.archive("lag-p", tarpkg.Tree(6, 2, 64<<10), "us-lta")
	s.submit("submit-lag", event.Submit{JobID: "lag-j", Packages: []string{"lag-p"}, Destination: event.Destination{Site: "us"}, RequestedBy: "lag-test"})
	poll.Until(t, 30*time.Second, "the ledger to see the job", func() error {
		j, err := s.api.Job(ctx, "lag-j")
		if err != nil {
			return err
		}
		if len(j.Packages) != 1 || j.Packages[0].Status != event.StatusScheduled {
			return fmt.Errorf("job %s", mustJSON(j))
		}
		return nil
	})
	if _, err := js.PauseConsumer(ctx, subject.EventsStream, subject.LedgerEvents, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := js.ResumeConsumer(ctx, subject.RequestsStream, stagerDurable); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(s.base, "us", "processing", "lag-p")
	poll.Until(t, 30*time.Second, "one staging.done", func() error {
		if n := len(ofType(s.events(subject.EventsStream), event.TypeDone)); n != 1 {
			return fmt.Errorf("%d staging.done events", n)
		}
		return nil
	})
	checkStaged(t, dir, info)

	// The ledger still says scheduled, planned long before StallAfter: the
	// reconciler looks at it round after round, for well over the time it
	// needs to re-issue, give up and have the sweep delete.
	quietSince := time.Now()
	rounds := func() float64 { return sumMetric(metrics(), "planner_reconcile_rounds_total") }
	start := rounds()
	poll.Until(t, 60*time.Second, "the reconciler to look at the job round after round", func() error {
		if n := rounds() - start; n < 15 || time.Since(quietSince) < 6*stallAfter {
			return fmt.Errorf("%v rounds in %v", n, time.Since(quietSince))
		}
		return nil
	})
	if j, err := s.api.Job(ctx, "lag-j"); err != nil || j.Packages[0].Status != event.StatusScheduled {
		t.Fatalf("the paused ledger shows %s (%v), want the package still scheduled", mustJSON(j), err)
	}
	evs := s.events(subject.EventsStream)
	for _, typ := range []string{event.TypeStalled, event.TypeReleased} {
		if n := len(ofType(evs, typ)); n != 0 {
			t.Errorf("%d %s events while the ledger lagged, want none", n, typ)
		}
	}
	if n := len(ofType(evs, event.TypeDone)); n != 1 {
		t.Errorf("%d staging.done events, want 1 (no re-issue answered already_present)", n)
	}
	cleanup, err := js.Stream(ctx, subject.CleanupStream)
	if err != nil {
		t.Fatal(err)
	}
	if seq := cleanup.CachedInfo().State.LastSeq; seq != 0 {
		t.Errorf("%d deletion items published for a copy the job still holds, want none", seq)
	}
	m := metrics()
	if n := sumMetric(m, "planner_requests_reissued_total"); n != 0 {
		t.Errorf("%v requests re-issued, want none", n)
	}
	if n := sumMetric(m, `planner_reconcile_rounds_total{outcome="behind"}`); n == 0 {
		t.Error("no round reported the ledger behind")
	}
	if n := sumMetric(m, `planner_reconcile_record_behind{durable="ledger-events"}`); n != 1 {
		t.Errorf("planner_reconcile_record_behind{ledger-events} = %v, want 1", n)
	}
	checkStaged(t, dir, info)

	// The ledger catches up: the package is completed, the copy stays.
	if _, err := js.ResumeConsumer(ctx, subject.EventsStream, subject.LedgerEvents); err != nil {
		t.Fatal(err)
	}
	if j := s.waitJob("lag-j", 30*time.Second); j.Status != event.StatusCompleted || j.Packages[0].Status != event.StatusCompleted {
		t.Fatalf("job after the ledger caught up: %s", mustJSON(j))
	}
	poll.Until(t, 10*time.Second, "the reconciler to be caught up", func() error {
		if n := sumMetric(metrics(), `planner_reconcile_record_behind{durable="ledger-events"}`); n != 0 {
			return fmt.Errorf("still behind: %v", n)
		}
		return nil
	})
	checkStaged(t, dir, info)
	s.waitCopy("lag-p", "us-processing", "staged")
}
