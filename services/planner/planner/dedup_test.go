package planner_test

import (
	"testing"

	"github.com/ccatobs/ccat-staging/services/planner/planner"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
)

// With Dedup on, a package already being staged to a location by one job
// is not requested again by another: the second job's plan line names the
// first job's request, until that request's outcome frees the package.
func TestCrossJobDedup(t *testing.T) {
	h := start(t, testTopology, func(c *planner.Config) { c.Dedup = true })
	for _, p := range []string{"p1", "p2", "p3"} {
		h.archived(p, "us-lta")
	}
	plan := func(job, site string, pkgs ...string) map[string]string {
		t.Helper()
		h.submit("s-"+job, event.Submit{JobID: job, Packages: pkgs, Destination: event.Destination{Site: site}, RequestedBy: "me"})
		got := map[string]string{}
		for _, pp := range dataOf[event.Planned](t, h.event(subject.Planned, "planned:"+job)).Packages {
			got[pp.PackageID] = pp.RequestID
		}
		return got
	}
	requests := func() map[string]bool {
		t.Helper()
		got := map[string]bool{}
		for _, m := range h.messages(subject.RequestsStream, subject.RequestsAll) {
			got[m.Env.ID] = true
		}
		return got
	}

	a := plan("A", "us", "p1", "p2")
	b := plan("B", "us", "p2", "p3")
	if b["p2"] != planner.RequestID("A", "p2", 1) || b["p3"] != planner.RequestID("B", "p3", 1) {
		t.Errorf("B's plan = %v, want p2 following A's request", b)
	}
	if a["p2"] != planner.RequestID("A", "p2", 1) {
		t.Errorf("A's plan = %v", a)
	}
	// Another location is another copy: no dedup there.
	if c := plan("C", "cologne", "p2"); c["p2"] != planner.RequestID("C", "p2", 1) {
		t.Errorf("C's plan = %v, want its own request", c)
	}
	reqs := requests()
	if len(reqs) != 4 || reqs[planner.RequestID("B", "p2", 1)] {
		t.Errorf("requests = %v, want A/p1, A/p2, B/p3, C/p2", reqs)
	}

	// A's p2 is done at us-proc: the next job stages it afresh (the stager
	// will find it already present), and an outcome of a request the entry
	// does not name changes nothing.
	outcome := func(id string, o event.Outcome, d event.Data) {
		t.Helper()
		ev, err := event.New("test", id, "", d)
		if err != nil {
			t.Fatal(err)
		}
		subj := subject.Done
		if _, ok := d.(event.Failed); ok {
			subj = subject.Failed
		}
		h.publish(subj, ev)
	}
	o := event.Outcome{JobID: "A", PackageID: "p2", Site: "us", Location: "us-proc", Attempt: 1, RequestID: planner.RequestID("A", "p2", 1)}
	stale := o
	stale.RequestID = "request:X:p2:1"
	outcome("failed:stale", stale, event.Failed{Outcome: stale, Reason: event.ReasonIOError, Message: "x", Permanent: true})
	outcome("transient", o, event.Failed{Outcome: o, Reason: event.ReasonIOError, Message: "retrying", Permanent: false})
	h.settled(subject.EventsStream, subject.PlannerOutcomes)
	if d := plan("D", "us", "p2"); d["p2"] != planner.RequestID("A", "p2", 1) {
		t.Errorf("D's plan = %v, want still following A (no final outcome yet)", d)
	}
	outcome("done:A:p2", o, event.Done{Outcome: o, Path: "/hpc/p2", SizeBytes: 10240, Files: 1})
	h.settled(subject.EventsStream, subject.PlannerOutcomes)
	if e := plan("E", "us", "p2"); e["p2"] != planner.RequestID("E", "p2", 1) {
		t.Errorf("E's plan = %v, want its own request once A's is done", e)
	}
}
