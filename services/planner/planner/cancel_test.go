package planner_test

import (
	"testing"

	"github.com/ccatobs/ccat-staging/services/planner/planner"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
)

// A staging.cancel is recorded in CANCELLED (the stagers withdraw the job's
// requests) and frees the packages the job's requests held for dedup, so a
// later job does not follow a request that will be withdrawn; a cancel that
// is not valid is terminated, not redelivered.
func TestCancelIsRecordedForTheStagers(t *testing.T) {
	h := start(t, testTopology, nil) // dedup is on by default
	h.archived("p1", "us-lta")
	h.submit("s-A", event.Submit{JobID: "A", Packages: []string{"p1"}, Destination: event.Destination{Site: "us"}, RequestedBy: "me"})
	h.event(subject.Planned, "planned:A")

	cancel, err := event.New("ccat-staging/stagectl", "cancel:A", "", event.Cancel{JobID: "A", Reason: "wrong target", RequestedBy: "carol"})
	if err != nil {
		t.Fatal(err)
	}
	h.publish(subject.Cancel, cancel)
	h.submitRawTo(subject.Cancel, "cancel:garbage", []byte(`{"specversion":"1.0","id":"x","source":"y","type":"ccat.staging.cancel.v1","data":{"job_id":""}}`))
	h.submitRawTo(subject.Cancel, "cancel:not-json", []byte(`not json`))
	if n := h.settled(subject.EventsStream, subject.PlannerCancel); n != 0 {
		t.Errorf("%d cancels redelivered, want none", n)
	}

	kv, err := h.js.KeyValue(t.Context(), subject.CancelledBucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(t.Context(), "A")
	if err != nil || string(e.Value()) != "cancel:A" {
		t.Fatalf("CANCELLED[A] = %v, %v; want the cancel's id", e, err)
	}
	if keys, _ := kv.ListKeys(t.Context()); keys != nil {
		var n int
		for range keys.Keys() {
			n++
		}
		if n != 1 {
			t.Errorf("%d cancelled jobs recorded, want only A", n)
		}
	}

	h.submit("s-B", event.Submit{JobID: "B", Packages: []string{"p1"}, Destination: event.Destination{Site: "us"}, RequestedBy: "me"})
	b := dataOf[event.Planned](t, h.event(subject.Planned, "planned:B"))
	if got := b.Packages[0].RequestID; got != planner.RequestID("B", "p1", 1) {
		t.Errorf("B's p1 follows %s, want a request of its own (A is cancelled)", got)
	}
	for _, m := range h.messages(subject.EventsStream, "staging.*") {
		if m.Env.Type == event.TypeFailed || m.Env.Type == event.TypeStalled {
			t.Errorf("the planner published %s for a cancel", m.Env.ID)
		}
	}
}
