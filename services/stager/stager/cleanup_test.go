package stager_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/poll"
	"github.com/ccatobs/ccat-staging/services/stager/stager"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/refs"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// cleanupRig publishes deletion items as the planner would.
type cleanupRig struct {
	w     *world
	table *refs.Table
}

func newCleanupRig(w *world) *cleanupRig {
	t := w.t
	if err := bus.ProvisionCleanup(t.Context(), w.srv.JS, bus.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	table, err := refs.Open(t.Context(), w.srv.JS, 1)
	if err != nil {
		t.Fatal(err)
	}
	return &cleanupRig{w: w, table: table}
}

// releaseAll makes each job reference pkg at location, then drops them all,
// and returns the key and the entry's revision: what the planner would
// decide the deletion at.
func (r *cleanupRig) releaseAll(location, pkg string, jobs ...string) (string, uint64) {
	t := r.w.t
	key := site + "." + location + "." + pkg
	for _, j := range jobs {
		if err := r.table.Add(t.Context(), j, []refs.Ref{{Key: key, Site: site, Location: location, PackageID: pkg}}, 1); err != nil {
			t.Fatal(err)
		}
	}
	for _, j := range jobs {
		if _, err := r.table.DropJob(t.Context(), j, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	it, err := r.table.Get(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	return key, it.Revision
}

func (r *cleanupRig) item(msgID, subj string, c event.Cleanup) {
	t := r.w.t
	env, err := event.New("ccat-staging/planner", msgID, c.PackageID, c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Publish(t.Context(), r.w.srv.JS, subj, env); err != nil {
		t.Fatal(err)
	}
}

func (r *cleanupRig) raw(msgID string, data []byte) {
	m := nats.NewMsg(subject.Cleanup(site))
	m.Data = data
	m.Header.Set(jetstream.MsgIDHeader, msgID)
	if _, err := r.w.srv.JS.PublishMsg(r.w.t.Context(), m); err != nil {
		r.w.t.Fatal(err)
	}
}

// settled waits until every deletion item is acknowledged or terminated.
func (r *cleanupRig) settled() {
	r.w.t.Helper()
	poll.Until(r.w.t, 10*time.Second, "empty cleanup queue", poll.True(func() bool {
		s, err := r.w.srv.JS.Stream(r.w.t.Context(), subject.CleanupStream)
		if err != nil {
			return false
		}
		info, err := s.Info(r.w.t.Context())
		return err == nil && info.State.Msgs == 0
	}))
}

// A deletion item deletes the copy only while its refs entry is where the
// planner decided: a copy referenced again in between stays. A deletion
// reports staging.released with the bytes freed and forgets the entry; a
// repeat finds nothing to do; an item for a location that is not one of the
// site's processing locations is refused with a permanent failure; garbage
// is terminated.
func TestCleanupDeletesOnlyUnreferencedCopies(t *testing.T) {
	w := newWorld(t)
	p := w.put(w.archive, "pkg-1", samplePackage(t))
	id := w.submit(request("job-1", p))
	w.start(w.config())
	waitID[event.Done](t, w.rec, "done:"+id)
	rig := newCleanupRig(w)
	final := filepath.Join(w.proc, "pkg-1")

	// Decided at rev, then job-2 took and dropped the copy: stale.
	key, stale := rig.releaseAll("proc", "pkg-1", "job-1")
	_, rev := rig.releaseAll("proc", "pkg-1", "job-2")
	item := event.Cleanup{PackageID: "pkg-1", Site: site, Location: "proc", RefsKey: key, RefsRevision: stale, Jobs: []string{"job-1"}, EmptiedAt: time.Now().UTC()}
	rig.item("cleanup:proc:pkg-1:stale", subject.Cleanup(site), item)
	rig.settled()
	if _, err := os.Stat(final); err != nil {
		t.Fatalf("copy deleted by a stale item: %v", err)
	}
	if ev := w.rec.ofType(event.TypeReleased, ""); len(ev) != 0 {
		t.Fatalf("released events for a kept copy: %v", ev)
	}

	item.RefsRevision, item.Jobs = rev, []string{"job-2"}
	rig.item("cleanup:proc:pkg-1:current", subject.Cleanup(site), item)
	rel := waitID[event.Released](t, w.rec, stager.ReleasedID("proc", "pkg-1", rev, 0))
	if rel.BytesFreed <= 0 || rel.Path != final || rel.Reason != "" || rel.Site != site || !slices.Equal(rel.Jobs, []string{"job-2"}) {
		t.Errorf("released = %+v", rel)
	}
	rig.settled()
	if _, err := os.Stat(final); !os.IsNotExist(err) {
		t.Errorf("copy still there: %v", err)
	}
	if got := w.procEntries(); len(got) != 0 {
		t.Errorf("processing root holds %v", got)
	}
	if _, err := rig.table.Get(t.Context(), key); err == nil {
		t.Error("refs entry of the deleted copy kept")
	}

	// A repeat of the same decision (redelivery, or the sweep publishing it
	// again) finds the entry forgotten and reports nothing more.
	rig.item("cleanup:proc:pkg-1:repeat", subject.Cleanup(site), item)
	// Not a processing location of this site: refused, nothing deleted.
	other := filepath.Join(filepath.Dir(w.proc), "other")
	if err := os.WriteFile(filepath.Join(other, "keep"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	rig.item("cleanup:other-proc:keep:1", subject.Cleanup(site), event.Cleanup{
		PackageID: "keep", Site: site, Location: "other-proc", RefsKey: site + ".other-proc.keep", RefsRevision: 1, EmptiedAt: time.Now().UTC()})
	// Garbage, and an item for another site on this site's subject.
	rig.raw("cleanup:garbage", []byte(`{"specversion":"1.0","id":"g","source":"s","type":"ccat.staging.cleanup.v1","data":{"package_id":"../x"}}`))
	rig.item("cleanup:wrong-site", subject.Cleanup(site), event.Cleanup{
		PackageID: "pkg-1", Site: "elsewhere", Location: "proc", RefsKey: key, RefsRevision: rev, EmptiedAt: time.Now().UTC()})
	refused := waitID[event.Released](t, w.rec, stager.ReleasedID("other-proc", "keep", 1, 1))
	if refused.Reason != event.ReasonNotProcessing || !refused.Permanent {
		t.Errorf("refused = %+v", refused)
	}
	rig.settled()
	if _, err := os.Stat(filepath.Join(other, "keep")); err != nil {
		t.Errorf("file of another location touched: %v", err)
	}
	if n := len(w.rec.ofType(event.TypeReleased, "")); n != 2 {
		t.Errorf("%d released events, want the deletion and the refusal", n)
	}
}

// A package requested again after its deletion was claimed is staged afresh,
// never reported already_present from the copy being deleted.
func TestStageAfterCleanup(t *testing.T) {
	w := newWorld(t)
	p := w.put(w.archive, "pkg-1", samplePackage(t))
	id := w.submit(request("job-1", p))
	w.start(w.config())
	waitID[event.Done](t, w.rec, "done:"+id)
	rig := newCleanupRig(w)
	key, rev := rig.releaseAll("proc", "pkg-1", "job-1")
	rig.item("cleanup:1", subject.Cleanup(site), event.Cleanup{PackageID: "pkg-1", Site: site, Location: "proc", RefsKey: key, RefsRevision: rev, EmptiedAt: time.Now().UTC()})
	waitID[event.Released](t, w.rec, stager.ReleasedID("proc", "pkg-1", rev, 0))

	r := request("job-2", p)
	id2 := w.submit(r)
	done := waitID[event.Done](t, w.rec, "done:"+id2)
	if done.AlreadyPresent {
		t.Error("staged after deletion reported already_present")
	}
	if _, ok := os.Stat(filepath.Join(w.proc, "pkg-1")); ok != nil {
		t.Errorf("package not staged again: %v", ok)
	}
}

// A job that references the copy after the deletion claimed it (the
// planner's reference resets the claimed entry) keeps the copy: the
// deletion reads the entry again under the copy's lease before removing,
// keeps the copy (no staging.released) and leaves the new reference alone;
// the job's request then finds the copy present.
func TestCleanupKeepsACopyReferencedAfterTheClaim(t *testing.T) {
	w := newWorld(t)
	hold := t.TempDir()
	p := w.put(w.archive, "pkg-1", samplePackage(t))
	id := w.submit(request("job-1", p))
	w.start(stager.WithTestHold(w.config(), hold))
	waitID[event.Done](t, w.rec, "done:"+id)
	rig := newCleanupRig(w)
	key, rev := rig.releaseAll("proc", "pkg-1", "job-1")

	point := filepath.Join(hold, "after-claim")
	if err := os.WriteFile(point, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	rig.item("cleanup:1", subject.Cleanup(site), event.Cleanup{PackageID: "pkg-1", Site: site, Location: "proc", RefsKey: key, RefsRevision: rev, EmptiedAt: time.Now().UTC()})
	poll.Until(t, 10*time.Second, "the deletion held after its claim", poll.True(func() bool {
		_, err := os.Stat(point + ".held")
		return err == nil
	}))
	if err := rig.table.Add(t.Context(), "job-2", []refs.Ref{{Key: key, Site: site, Location: "proc", PackageID: "pkg-1"}}, 1); err != nil {
		t.Fatal(err)
	}
	id2 := w.submit(request("job-2", p))
	if err := os.Remove(point); err != nil {
		t.Fatal(err)
	}
	rig.settled()
	done := waitID[event.Done](t, w.rec, "done:"+id2)
	if !done.AlreadyPresent {
		t.Errorf("done = %+v, want already_present from the kept copy", done)
	}
	if _, err := os.Stat(filepath.Join(w.proc, "pkg-1", "meta.json")); err != nil {
		t.Fatalf("copy referenced after the claim was deleted: %v", err)
	}
	if ev := w.rec.ofType(event.TypeReleased, ""); len(ev) != 0 {
		t.Errorf("released events for a kept copy: %v", ev)
	}
	it, err := rig.table.Get(t.Context(), key)
	if err != nil || !slices.Equal(it.Jobs, []string{"job-2"}) || it.DeletingFor != 0 {
		t.Errorf("refs entry = %+v, %v; want job-2's reference, no claim", it, err)
	}
}
