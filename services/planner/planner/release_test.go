package planner_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/poll"
	"github.com/ccatobs/ccat-staging/services/planner/planner"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/refs"
	"github.com/ccatobs/ccat-staging/shared/subject"
)

// releaseTopology: us-proc deletes as soon as nobody holds a copy
// (retention 0s); cologne-proc keeps copies for the default 7 days.
const releaseTopology = `
sites:
  - name: cologne
    locations:
      - {name: cologne-lta, type: long_term_archive, storage: s3, priority: 2, s3: {endpoint: "127.0.0.1:9000", bucket: lta}}
      - {name: cologne-proc, type: processing, storage: disk, priority: 1, path: /proc}
  - name: us
    locations:
      - {name: us-lta, type: long_term_archive, storage: disk, priority: 1, path: /archive}
      - {name: us-proc, type: processing, storage: disk, priority: 1, path: /hpc, retention: 0s}
`

func (h *harness) release(job string) {
	h.t.Helper()
	ev, err := event.New("ccat-staging/stagectl", "release:"+job, "", event.Release{JobID: job, RequestedBy: "carol"})
	if err != nil {
		h.t.Fatal(err)
	}
	h.publish(subject.Release, ev)
}

func (h *harness) refsOf(site, location, pkg string) (refs.Item, error) {
	kv, err := h.js.KeyValue(h.t.Context(), subject.PlannerRefsBucket)
	if err != nil {
		return refs.Item{}, err
	}
	return refs.FromKV(kv).Get(h.t.Context(), planner.RefsKey(site, location, pkg))
}

func (h *harness) cleanups() []event.Cleanup {
	var out []event.Cleanup
	for _, m := range h.messages(subject.CleanupStream, subject.CleanupAll) {
		out = append(out, dataOf[event.Cleanup](h.t, m.Env))
	}
	return out
}

// Two jobs share a copy at a location with retention 0s: releasing the first
// schedules nothing, releasing the second hands exactly one deletion to the
// site's stagers, even with two planners sweeping. A copy at a location with
// the default retention is not scheduled after its release; a job taking the
// copy again moves the entry past the deletion's revision, so a stager
// holding the item leaves the copy alone.
func TestReleaseCountsReferences(t *testing.T) {
	fast := func(c *planner.Config) { c.ReleaseSweep = 20 * time.Millisecond }
	h := start(t, releaseTopology, fast)
	h.run(fast) // a second planner sweeping the same bucket
	h.archived("p1", "us-lta")
	h.archived("p2", "cologne-lta")
	h.submit("s-A", event.Submit{JobID: "A", Packages: []string{"p1"}, Destination: event.Destination{Site: "us"}, RequestedBy: "me"})
	h.event(subject.Planned, "planned:A")
	h.submit("s-B", event.Submit{JobID: "B", Packages: []string{"p1"}, Destination: event.Destination{Site: "us"}, RequestedBy: "me"})
	h.event(subject.Planned, "planned:B")
	h.submit("s-C", event.Submit{JobID: "C", Packages: []string{"p2"}, Destination: event.Destination{Site: "cologne"}, RequestedBy: "me"})
	h.event(subject.Planned, "planned:C")

	it, err := h.refsOf("us", "us-proc", "p1")
	if err != nil || !slices.Equal(it.Jobs, []string{"A", "B"}) {
		t.Fatalf("refs of p1 at us-proc = %+v, %v; want jobs A and B", it.Entry, err)
	}

	h.release("A")
	h.release("C")
	h.settled(subject.EventsStream, subject.PlannerRelease)
	poll.Until(t, 5*time.Second, "p1's references to B only", func() error {
		it, err := h.refsOf("us", "us-proc", "p1")
		if err != nil || !slices.Equal(it.Jobs, []string{"B"}) {
			return fmt.Errorf("refs of p1 = %+v, %v; want B only", it.Entry, err)
		}
		return nil
	})
	c, err := h.refsOf("cologne", "cologne-proc", "p2")
	if err != nil || len(c.Jobs) != 0 || c.EmptiedAt == nil {
		t.Fatalf("refs of p2 at cologne-proc = %+v, %v; want empty with the time it emptied", c.Entry, err)
	}
	// Several sweeps (every 20 ms) pass; none may schedule anything.
	time.Sleep(100 * time.Millisecond)
	if n := len(h.cleanups()); n != 0 {
		t.Fatalf("%d deletions scheduled while B still holds p1 and p2 is within its retention", n)
	}

	h.release("B")
	var item event.Cleanup
	poll.Until(t, 5*time.Second, "one deletion item", func() error {
		cs := h.cleanups()
		if len(cs) != 1 {
			return fmt.Errorf("%d deletion items, want 1", len(cs))
		}
		item = cs[0]
		return nil
	})
	if item.PackageID != "p1" || item.Site != "us" || item.Location != "us-proc" || item.RefsKey != planner.RefsKey("us", "us-proc", "p1") {
		t.Errorf("deletion item %+v", item)
	}
	if !slices.Equal(item.Jobs, []string{"B"}) {
		t.Errorf("item names jobs %v, want the last holder B", item.Jobs)
	}
	it, err = h.refsOf("us", "us-proc", "p1")
	if err != nil || it.Revision != item.RefsRevision {
		t.Fatalf("refs entry at revision %d (%v), item carries %d", it.Revision, err, item.RefsRevision)
	}
	ms := h.messages(subject.CleanupStream, subject.Cleanup("us"))
	if want := planner.CleanupID("us-proc", "p1", item.RefsRevision); ms[0].Env.ID != want {
		t.Errorf("item id %s, want %s", ms[0].Env.ID, want)
	}
	// Sweeps keep running; the entry is scheduled, so nothing more is sent.
	time.Sleep(100 * time.Millisecond)
	if n := len(h.cleanups()); n != 1 {
		t.Errorf("%d deletion items after more sweeps, want still 1", n)
	}

	// D needs p1 again before a stager acted: the item's revision is stale.
	h.submit("s-D", event.Submit{JobID: "D", Packages: []string{"p1"}, Destination: event.Destination{Site: "us"}, RequestedBy: "me"})
	h.event(subject.Planned, "planned:D")
	it, err = h.refsOf("us", "us-proc", "p1")
	if err != nil || !slices.Equal(it.Jobs, []string{"D"}) || it.Revision == item.RefsRevision || it.ScheduledAt != nil {
		t.Fatalf("refs after D = rev %d %+v, %v; want D only at a new revision, not scheduled", it.Revision, it.Entry, err)
	}

	// Invalid releases are terminated, never redelivered.
	h.submitRawTo(subject.Release, "release:garbage", []byte(`{"specversion":"1.0","id":"x","source":"y","type":"ccat.staging.release.v1","data":{"job_id":""}}`))
	h.submitRawTo(subject.Release, "release:not-json", []byte(`not json`))
	if n := h.settled(subject.EventsStream, subject.PlannerRelease); n != 0 {
		t.Errorf("%d releases redelivered, want none", n)
	}
}

// A cancelled job drops its references like a released one.
func TestCancelDropsReferences(t *testing.T) {
	h := start(t, releaseTopology, func(c *planner.Config) { c.ReleaseSweep = 20 * time.Millisecond })
	h.archived("p1", "us-lta")
	h.submit("s-A", event.Submit{JobID: "A", Packages: []string{"p1"}, Destination: event.Destination{Site: "us"}, RequestedBy: "me"})
	h.event(subject.Planned, "planned:A")
	cancel, err := event.New("ccat-staging/stagectl", "cancel:A", "", event.Cancel{JobID: "A", RequestedBy: "carol"})
	if err != nil {
		t.Fatal(err)
	}
	h.publish(subject.Cancel, cancel)
	poll.Until(t, 5*time.Second, "one deletion item, for p1", func() error {
		cs := h.cleanups()
		if len(cs) != 1 || cs[0].PackageID != "p1" {
			b, _ := json.Marshal(cs)
			return fmt.Errorf("deletion items %s, want one for p1", b)
		}
		return nil
	})
}

// A package that fails for good drops its job's reference: the copy is
// deleted once its retention has passed (0s here), although the job is not
// released.
func TestFailedPackageDropsItsReference(t *testing.T) {
	h := start(t, releaseTopology, func(c *planner.Config) { c.ReleaseSweep = 20 * time.Millisecond; c.Dedup = false })
	h.archived("p1", "us-lta")
	h.archived("p2", "us-lta")
	h.submit("s-A", event.Submit{JobID: "A", Packages: []string{"p1", "p2"}, Destination: event.Destination{Site: "us"}, RequestedBy: "me"})
	h.event(subject.Planned, "planned:A")
	rid := planner.RequestID("A", "p1", 1)
	failed, err := event.New("ccat-staging/stager/us/h1", "failed:"+rid+":1", "p1", event.Failed{
		Outcome: event.Outcome{JobID: "A", PackageID: "p1", Site: "us", Location: "us-proc", Attempt: 1, RequestID: rid, Instance: "h1"},
		Reason:  event.ReasonChecksumMismatch, Message: "bad archive copy", Permanent: true})
	if err != nil {
		t.Fatal(err)
	}
	h.publish(subject.Failed, failed)
	poll.Until(t, 5*time.Second, "one deletion item, for p1", func() error {
		cs := h.cleanups()
		if len(cs) != 1 || cs[0].PackageID != "p1" {
			return fmt.Errorf("deletion items %+v, want one for p1", cs)
		}
		return nil
	})
	if it, err := h.refsOf("us", "us-proc", "p2"); err != nil || !slices.Equal(it.Jobs, []string{"A"}) {
		t.Errorf("refs of p2 = %+v, %v; want still A", it.Entry, err)
	}
}
