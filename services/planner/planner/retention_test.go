package planner_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/poll"
	"github.com/ccatobs/ccat-staging/services/planner/planner"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
)

// Issue 15: the planner's job state is bounded. PLANNER_JOBS, CANCELLED,
// PLANNER_OUTCOMES and PLANNER_REISSUES expire entries JobRetention after
// their last write (1 s here), so a finished job, a cancel and an outcome
// are all forgotten; nothing of the job stays behind.
func TestJobStateExpires(t *testing.T) {
	const retention = time.Second
	h := start(t, testTopology, func(c *planner.Config) { c.JobRetention = retention; c.LedgerURL = "http://127.0.0.1:1" })
	ctx := t.Context()
	for _, b := range []string{subject.PlannerJobsBucket, subject.CancelledBucket, subject.PlannerOutcomesBucket, subject.PlannerReissuesBucket} {
		kv, err := h.js.KeyValue(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		st, err := kv.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.TTL() != retention {
			t.Errorf("%s keeps entries for %v, want the job retention %v", b, st.TTL(), retention)
		}
	}
	h.archived("p1", "us-lta")
	h.submit("s-E", event.Submit{JobID: "E", Packages: []string{"p1"}, Destination: event.Destination{Site: "us"}, RequestedBy: "me"})
	h.event(subject.Planned, "planned:E")
	rid := planner.RequestID("E", "p1", 1)
	done, err := event.New("ccat-staging/stager/us/h1", "done:"+rid, "p1", event.Done{
		Outcome: event.Outcome{JobID: "E", PackageID: "p1", Site: "us", Location: "us-proc", Attempt: 1, RequestID: rid, Instance: "h1"},
		Path:    "/hpc/p1", SizeBytes: 10, Files: 1})
	if err != nil {
		t.Fatal(err)
	}
	h.publish(subject.Done, done)
	cancel, err := event.New("ccat-staging/stagectl", "cancel:E", "", event.Cancel{JobID: "E", Reason: "test", RequestedBy: "me"})
	if err != nil {
		t.Fatal(err)
	}
	h.publish(subject.Cancel, cancel)
	h.settled(subject.EventsStream, subject.PlannerOutcomes)
	h.settled(subject.EventsStream, subject.PlannerCancel)

	count := func(bucket string) int {
		kv, err := h.js.KeyValue(ctx, bucket)
		if err != nil {
			t.Fatal(err)
		}
		keys, err := kv.ListKeys(ctx)
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return 0
		}
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = keys.Stop() }()
		n := 0
		for range keys.Keys() {
			n++
		}
		return n
	}
	for _, b := range []string{subject.PlannerJobsBucket, subject.CancelledBucket, subject.PlannerOutcomesBucket} {
		if n := count(b); n == 0 {
			t.Fatalf("%s holds nothing right after the job", b)
		}
	}
	poll.Until(t, 15*time.Second, "the retained buckets emptied", func() error {
		for _, b := range []string{subject.PlannerJobsBucket, subject.CancelledBucket, subject.PlannerOutcomesBucket} {
			if n := count(b); n != 0 {
				return fmt.Errorf("%s still holds %d keys", b, n)
			}
		}
		return nil
	})
}
