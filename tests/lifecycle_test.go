package tests

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/poll"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/ccatobs/ccat-staging/shared/tarpkg"
)

// Two jobs for the same package and location, submitted back to back: the
// package is staged once (cross-job dedup, on by default), the second job
// follows the first one's request, and both end completed with the path.
func TestLifecycleDedupStagesOnce(t *testing.T) {
	s := startSystem(t)
	ctx := t.Context()
	info := s.archive("dup-p0", tarpkg.Tree(40, 6, 2<<20), "cologne-lta")
	// The first job's request must still be in flight when the second job
	// is planned (the planner frees the package on its done): the site's
	// stager gets nothing until both are planned.
	for _, prio := range subject.Priorities {
		if _, err := s.bus.JS.PauseConsumer(ctx, subject.RequestsStream, subject.StagerDurable("cologne", prio), time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for _, j := range []string{"dup-a", "dup-b"} {
		s.submit("submit-"+j, event.Submit{JobID: j, Packages: []string{"dup-p0"},
			Destination: event.Destination{Location: "cologne-processing"}, RequestedBy: "lifecycle"})
		if _, err := s.api.Wait(wctx, j, 50*time.Millisecond, func(j ledgerapi.Job) bool { return j.Status == event.StatusScheduled }); err != nil {
			t.Fatalf("%s never scheduled: %v", j, err)
		}
	}
	for _, prio := range subject.Priorities {
		if _, err := s.bus.JS.ResumeConsumer(ctx, subject.RequestsStream, subject.StagerDurable("cologne", prio)); err != nil {
			t.Fatal(err)
		}
	}
	want := filepath.Join(s.base, "cologne", "processing", "dup-p0")
	for _, id := range []string{"dup-a", "dup-b"} {
		job := s.waitJob(id, 60*time.Second)
		if job.Status != event.StatusCompleted || job.Counts.Completed != 1 || len(job.Packages) != 1 {
			t.Fatalf("job %s = %s %+v, want completed: %s", id, job.Status, job.Counts, mustJSON(job))
		}
		p := job.Packages[0]
		if p.Status != event.StatusCompleted || p.Path != want || p.SizeBytes != info.SizeBytes || p.CompletedAt == nil {
			t.Errorf("job %s package = %+v, want completed at %s", id, p, want)
		}
	}
	checkStaged(t, want, info)

	evs := s.events(subject.EventsStream)
	var plannedB event.Planned
	for _, e := range ofType(evs, event.TypePlanned) {
		if pl := dataOf[event.Planned](t, e); pl.JobID == "dup-b" {
			plannedB = pl
		}
	}
	if len(plannedB.Packages) != 1 || plannedB.Packages[0].RequestID != "request:dup-a:dup-p0:1" {
		t.Errorf("dup-b's plan = %+v, want it to follow request:dup-a:dup-p0:1", plannedB.Packages)
	}
	if n := len(ofType(evs, event.TypeDone)); n != 1 {
		t.Errorf("%d done events, want the package staged once", n)
	}
	if n := len(ofType(evs, event.TypeStarted)); n != 1 {
		t.Errorf("%d started events, want one staging", n)
	}
}

// Cancelling a job with a backlog: its requests still queued are withdrawn
// by the stager (failed/cancelled, no archive read, nothing written), the
// job and those packages end cancelled, and the site goes on with other work.
func TestLifecycleCancelWithdrawsBacklog(t *testing.T) {
	s := startSystem(t)
	ctx := t.Context()
	for _, p := range []string{"can-p0", "can-p1", "keep-p0"} {
		s.archive(p, tarpkg.Tree(50, 3, 256<<10), "us-lta")
	}
	// The backlog: the US site's stager gets nothing until resumed.
	for _, prio := range subject.Priorities {
		if _, err := s.bus.JS.PauseConsumer(ctx, subject.RequestsStream, subject.StagerDurable("us", prio), time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	s.submit("submit-can", event.Submit{JobID: "can-job", Packages: []string{"can-p0", "can-p1"},
		Destination: event.Destination{Site: "us"}, RequestedBy: "lifecycle"})
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := s.api.Wait(wctx, "can-job", 50*time.Millisecond, func(j ledgerapi.Job) bool { return j.Status == event.StatusScheduled }); err != nil {
		t.Fatalf("can-job never scheduled: %v", err)
	}
	s.publish(subject.Cancel, "cancel:can-job", event.Cancel{JobID: "can-job", Reason: "wrong packages", RequestedBy: "carol"})
	poll.Until(t, 30*time.Second, "the job in the cancelled bucket", func() error {
		kv, err := s.bus.JS.KeyValue(ctx, subject.CancelledBucket)
		if err != nil {
			return err
		}
		_, err = kv.Get(ctx, "can-job")
		return err
	})
	s.submit("submit-keep", event.Submit{JobID: "keep-job", Packages: []string{"keep-p0"},
		Destination: event.Destination{Site: "us"}, RequestedBy: "lifecycle"})
	if _, err := s.api.Wait(wctx, "keep-job", 50*time.Millisecond, func(j ledgerapi.Job) bool { return j.Status == event.StatusScheduled }); err != nil {
		t.Fatalf("keep-job never scheduled: %v", err)
	}
	for _, prio := range subject.Priorities {
		if _, err := s.bus.JS.ResumeConsumer(ctx, subject.RequestsStream, subject.StagerDurable("us", prio)); err != nil {
			t.Fatal(err)
		}
	}

	if keep := s.waitJob("keep-job", 60*time.Second); keep.Status != event.StatusCompleted {
		t.Fatalf("keep-job = %s: %s", keep.Status, mustJSON(keep))
	}
	withdrawn := map[string]bool{}
	poll.Until(t, 30*time.Second, "every withdrawn package's staging.failed", func() error {
		for _, e := range ofType(s.events(subject.EventsStream), event.TypeFailed) {
			if f := dataOf[event.Failed](t, e); f.JobID == "can-job" && f.Reason == event.ReasonCancelled && f.Permanent {
				withdrawn[f.PackageID] = true
			}
		}
		if len(withdrawn) != 2 {
			return fmt.Errorf("withdrawn %v", withdrawn)
		}
		return nil
	})
	for _, e := range ofType(s.events(subject.EventsStream), event.TypeStarted) {
		if dataOf[event.Started](t, e).JobID == "can-job" {
			t.Errorf("a withdrawn request started: %s", e.ID)
		}
	}
	job := s.waitJob("can-job", 30*time.Second)
	if job.Status != "cancelled" || len(job.Packages) != 2 || job.Counts.Completed != 0 {
		t.Errorf("can-job = %s %+v, want cancelled with its 2 packages cancelled", job.Status, job.Counts)
	}
	for _, p := range job.Packages {
		if p.Status != "cancelled" || p.Reason != event.ReasonCancelled || p.Path != "" {
			t.Errorf("package %s = %+v, want cancelled without a path", p.PackageID, p)
		}
	}
	root := filepath.Join(s.base, "us", "processing")
	for _, p := range []string{"can-p0", "can-p1"} {
		if _, err := os.Stat(filepath.Join(root, p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s staged for a cancelled job (%v)", p, err)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "keep-p0")); err != nil {
		t.Errorf("keep-p0: %v", err)
	}
	poll.Until(t, 10*time.Second, "the us stager's consumer settled", func() error {
		c, err := s.bus.JS.Consumer(ctx, subject.RequestsStream, subject.StagerDurable("us", "normal"))
		if err != nil {
			return err
		}
		info, err := c.Info(ctx)
		if err != nil {
			return err
		}
		if info.NumPending+uint64(info.NumAckPending) != 0 {
			return fmt.Errorf("%d pending, %d unacknowledged", info.NumPending, info.NumAckPending)
		}
		return nil
	})
}

// A package the planner's reconciler gives up on (staging.stalled, which
// the planner may publish where staging.failed is the stagers' alone) ends
// failed with reason stalled in the ledger, and so does its job.
func TestLifecycleStalledFailsThePackage(t *testing.T) {
	s := startSystem(t)
	ctx := t.Context()
	s.archive("stall-p0", tarpkg.Tree(60, 2, 64<<10), "us-lta")
	for _, prio := range subject.Priorities {
		if _, err := s.bus.JS.PauseConsumer(ctx, subject.RequestsStream, subject.StagerDurable("us", prio), time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	s.submit("submit-stall", event.Submit{JobID: "stall-job", Packages: []string{"stall-p0"},
		Destination: event.Destination{Site: "us"}, RequestedBy: "lifecycle"})
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := s.api.Wait(wctx, "stall-job", 50*time.Millisecond, func(j ledgerapi.Job) bool { return j.Status == event.StatusScheduled }); err != nil {
		t.Fatalf("stall-job never scheduled: %v", err)
	}
	rid := "request:stall-job:stall-p0:4"
	st := event.Stalled{JobID: "stall-job", PackageID: "stall-p0", Site: "us", Location: "us-processing", RequestID: rid,
		Reason: event.ReasonStalled, Message: "request lost 3 times", Reissues: 3}
	ev, err := event.New("ccat-staging/planner", "stalled:"+rid+":stalled", "stall-p0", st)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Publish(ctx, s.bus.JS, subject.Stalled, ev); err != nil {
		t.Fatal(err)
	}
	job := s.waitJob("stall-job", 30*time.Second)
	if job.Status != event.StatusFailed || job.Reason != event.ReasonStalled || len(job.Packages) != 1 ||
		job.Packages[0].Status != event.StatusFailed || job.Packages[0].Reason != event.ReasonStalled {
		t.Errorf("stall-job = %s", mustJSON(job))
	}
	if n := len(ofType(s.events(subject.EventsStream), event.TypeStalled)); n != 1 {
		t.Errorf("%d stalled events, want 1", n)
	}
}
