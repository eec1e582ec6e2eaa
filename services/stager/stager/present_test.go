package stager_test

import (
	"github.com/ccatobs/ccat-staging/devkit/poll"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/services/stager/stager"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/lease"
	"github.com/ccatobs/ccat-staging/shared/refs"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
)

// leaseWrites is how many messages STAGER_LEASES has ever stored: every
// take, renewal and release is one.
func leaseWrites(w *world) uint64 {
	w.t.Helper()
	s, err := w.srv.JS.Stream(w.t.Context(), "KV_"+lease.Bucket)
	if err != nil {
		w.t.Fatal(err)
	}
	info, err := s.Info(w.t.Context())
	if err != nil {
		w.t.Fatal(err)
	}
	return info.State.LastSeq
}

// An already-present request is the pure control plane: answered from one
// read of the copy's lease, it takes no lease (nothing written to
// STAGER_LEASES) and publishes no staging.started, only its done. On the
// code before the unleased check, it took and released the lease (two
// writes) and published a started first.
//
// Every answer, the one that staged the copy too, is settled off the worker
// (the outbox): acked only after the done's PubAck, so each request leaves
// the work queue after one delivery.
func TestAlreadyPresentTakesNoLeaseAndStartsNothing(t *testing.T) {
	w := newWorld(t)
	p := w.put(w.archive, "pkg-p", samplePackage(t))
	cfg := w.config()
	addr := freeAddr(t)
	cfg.HTTPAddr = addr
	w.start(cfg)
	first := w.submit(request("job-a", p))
	waitID[event.Done](t, w.rec, "done:"+first)
	if n := len(w.rec.ofType(event.TypeStarted, "started:"+first+":")); n != 1 {
		t.Errorf("%d started events for the request that staged the copy, want 1", n)
	}
	before := leaseWrites(w)

	for _, job := range []string{"job-b", "job-c"} {
		id := w.submit(request(job, p))
		d := waitID[event.Done](t, w.rec, "done:"+id)
		if !d.AlreadyPresent || d.Attempt != 1 {
			t.Errorf("%s: done = %+v, want already_present on attempt 1", job, d)
		}
		if n := len(w.rec.ofType(event.TypeStarted, "started:"+id+":")); n != 0 {
			t.Errorf("%s: %d started events for an already-present answer, want none", job, n)
		}
	}
	if after := leaseWrites(w); after != before {
		t.Errorf("STAGER_LEASES went from %d to %d messages: already-present answers took the lease", before, after)
	}
	poll.Until(t, 5*time.Second, "the answered requests acked", poll.True(func() bool { return w.queued() == 0 }))
	if n := metric(addr, `stager_outbox_settled_total{result="acked"}`); n != 3 {
		t.Errorf("%v answers acked through the outbox, want 3", n)
	}
	if n := len(w.rec.ofType(event.TypeDone, "")); n != 3 {
		t.Errorf("%d done events, want 3 (one per request, no redelivery)", n)
	}
}

// A deletion of this very instance holds the copy's lease, claimed and
// about to remove the copy (held there by the test hook). A new job's
// request, referenced first as the planner does, is taken by the other
// worker: its unleased check must see the held lease and wait under the
// lease (and the in-process lock), then find the copy gone and stage it
// again; it must never answer already_present for the copy being removed.
// The unleased check skips the in-process lock, so only the lease read
// stands between it and the deletion here.
func TestUnleasedCheckSeesADeletionInProgress(t *testing.T) {
	w := newWorld(t)
	hold := t.TempDir()
	p := w.put(w.archive, "pkg-d", samplePackage(t))
	w.start(stager.WithTestHold(w.config(), hold))
	first := w.submit(request("job-0", p))
	waitID[event.Done](t, w.rec, "done:"+first)
	rig := newCleanupRig(w)
	key, rev := rig.releaseAll("proc", p.id, "job-0")

	point := filepath.Join(hold, "before-remove")
	if err := os.WriteFile(point, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	rig.item("cleanup:d:"+strconv.FormatUint(rev, 10), subject.Cleanup(site), event.Cleanup{
		PackageID: p.id, Site: site, Location: "proc", RefsKey: key, RefsRevision: rev, EmptiedAt: time.Now().UTC(),
	})
	poll.Until(t, 10*time.Second, "the deletion held before removing the copy", poll.True(func() bool {
		_, err := os.Stat(point + ".held")
		return err == nil
	}))
	if err := rig.table.Add(t.Context(), "job-1", []refs.Ref{{Key: key, Site: site, Location: "proc", PackageID: p.id}}, 1); err != nil {
		t.Fatal(err)
	}
	id := w.submit(request("job-1", p))
	// Long enough for a wrong already_present to come out.
	time.Sleep(500 * time.Millisecond)
	if d, ok := w.rec.byID("done:" + id); ok {
		t.Fatalf("answered %s while a deletion held the copy's lease", d.ID)
	}
	if err := os.Remove(point); err != nil {
		t.Fatal(err)
	}
	waitID[event.Released](t, w.rec, stager.ReleasedID("proc", p.id, rev, 0))
	d := waitID[event.Done](t, w.rec, "done:"+id)
	if d.AlreadyPresent {
		t.Errorf("done = %+v, want staged again after the deletion", d)
	}
	if _, err := os.Stat(filepath.Join(d.Path, "meta.json")); err != nil {
		t.Errorf("job-1 completed but its copy is gone: %v", err)
	}
}

// Deletions and new references race, round after round, with two workers:
// each round the copy's references are dropped, its deletion is handed out,
// and at the same time a new job references the copy (refs first, then the
// request). Whichever wins, once both are settled the job that completed
// has its copy on disk.
func TestAlreadyPresentRacingDeletions(t *testing.T) {
	w := newWorld(t)
	p := w.put(w.archive, "pkg-r", samplePackage(t))
	w.start(w.config())
	prev := "job-r0"
	first := w.submit(request(prev, p))
	waitID[event.Done](t, w.rec, "done:"+first)
	rig := newCleanupRig(w)
	for i := 1; i <= 12; i++ {
		key, rev := rig.releaseAll("proc", p.id, prev)
		job := "job-r" + strconv.Itoa(i)
		rig.item("cleanup:r:"+strconv.FormatUint(rev, 10), subject.Cleanup(site), event.Cleanup{
			PackageID: p.id, Site: site, Location: "proc", RefsKey: key, RefsRevision: rev, EmptiedAt: time.Now().UTC(),
		})
		if i%2 == 0 {
			time.Sleep(time.Duration(i) * time.Millisecond) // vary who wins
		}
		if err := rig.table.Add(t.Context(), job, []refs.Ref{{Key: key, Site: site, Location: "proc", PackageID: p.id}}, 1); err != nil {
			t.Fatal(err)
		}
		id := w.submit(request(job, p))
		d := waitID[event.Done](t, w.rec, "done:"+id)
		rig.settled()
		if _, err := os.Stat(filepath.Join(d.Path, "meta.json")); err != nil {
			t.Fatalf("round %d: %s completed (already_present %v) but its copy is gone: %v", i, job, d.AlreadyPresent, err)
		}
		prev = job
	}
}

// A staged request's done goes out through the outbox, and the copy's
// lease is let go of only after it: the lease's release marker is stored
// after the done, so no deletion can take the copy while its done is not yet
// durable. The started event is stored before the done.
func TestLeaseOutlivesTheDone(t *testing.T) {
	w := newWorld(t)
	p := w.put(w.archive, "pkg-l", samplePackage(t))
	w.start(w.config())
	id := w.submit(request("job-l", p))
	waitID[event.Done](t, w.rec, "done:"+id)
	ctx := t.Context()
	events, err := w.srv.JS.Stream(ctx, subject.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	done, err := events.GetLastMsgForSubject(ctx, subject.Done)
	if err != nil {
		t.Fatal(err)
	}
	started, err := events.GetLastMsgForSubject(ctx, subject.Started)
	if err != nil {
		t.Fatal(err)
	}
	if started.Sequence > done.Sequence {
		t.Errorf("started stored at %d, after the done at %d", started.Sequence, done.Sequence)
	}
	leases, err := w.srv.JS.Stream(ctx, "KV_"+lease.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	subj := "$KV." + lease.Bucket + "." + lease.Key(site, "proc", p.id)
	var rel *jetstream.RawStreamMsg
	poll.Until(t, 5*time.Second, "the lease released", poll.True(func() bool {
		m, err := leases.GetLastMsgForSubject(ctx, subj)
		if err != nil || m.Header.Get(jetstream.MarkerReasonHeader) == "" && len(m.Data) > 0 {
			return false
		}
		rel = m
		return true
	}))
	if rel.Time.Before(done.Time) {
		t.Errorf("lease released at %s, before the done was stored at %s", rel.Time, done.Time)
	}
}

// A done the stream refuses to store leaves its request in the work queue:
// the outbox hands it back and the redelivery answers again. The request is
// acked only after its done is stored — on the code before, the runner
// acked it as soon as the worker handed it to the outbox, so a done that
// was never stored lost the request for good.
func TestOutboxAcksOnlyAStoredDone(t *testing.T) {
	w := newWorld(t)
	p := w.put(w.archive, "pkg-o", samplePackage(t))
	cfg := w.config()
	cfg.RetryBase, cfg.RetryMax = 2*time.Second, 2*time.Second
	addr := freeAddr(t)
	cfg.HTTPAddr = addr
	w.start(cfg)
	first := w.submit(request("job-a", p))
	waitID[event.Done](t, w.rec, "done:"+first)
	poll.Until(t, 5*time.Second, "the first request acked", poll.True(func() bool { return w.queued() == 0 }))

	// The events stream refuses new messages while the answer goes out.
	ctx := t.Context()
	events, err := w.srv.JS.Stream(ctx, subject.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := events.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	full := info.Config
	full.MaxMsgs, full.Discard = int64(info.State.Msgs), jetstream.DiscardNew
	if _, err := w.srv.JS.UpdateStream(ctx, full); err != nil {
		t.Fatal(err)
	}
	second := w.submit(request("job-b", p))
	poll.Until(t, 10*time.Second, "the unstored done handed back", poll.True(func() bool {
		return metric(addr, `stager_outbox_settled_total{result="nak"}`) >= 1
	}))
	if _, err := w.srv.JS.UpdateStream(ctx, info.Config); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 20*time.Second, "the second done stored", poll.True(func() bool {
		m, err := events.GetLastMsgForSubject(ctx, subject.Done)
		return err == nil && m.Header.Get(jetstream.MsgIDHeader) == "done:"+second
	}))
	poll.Until(t, 5*time.Second, "the second request acked", poll.True(func() bool { return w.queued() == 0 }))
}
