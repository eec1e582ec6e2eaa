package stager_test

import (
	"bufio"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/poll"
	"github.com/ccatobs/ccat-staging/services/stager/stager"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/refs"
	"github.com/ccatobs/ccat-staging/shared/subject"
)

// freeAddr returns a loopback address nobody listens on (for a child's
// /metrics).
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// metric reads one sample from a stager's /metrics; 0 when it is not (yet)
// there.
func metric(addr, sample string) float64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), sample+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// Two stager processes share one processing root. A deletion of copy P is
// held by the test hook at its worst moment — claimed in PLANNER_REFS, the
// refs entry checked, the copy about to be removed — and its process is
// frozen, so the other instance takes the next request. Then a new job
// references P (as the planner does: refs first, then the request). The
// other instance must not answer already_present for a copy that is about
// to go: when the job says completed, the copy is on disk.
//
// Before the lease, the other instance answered already_present at once
// (its lock was per process), the held deletion then removed the copy and
// the completed job's copy was gone — every run, since the frozen holder
// cannot take the request itself.
func TestTwoInstancesNeverCompleteOnACopyBeingDeleted(t *testing.T) {
	w := newWorld(t)
	hold := t.TempDir()
	p := w.put(w.archive, "shared", samplePackage(t))
	addrs := map[string]string{"a": freeAddr(t), "b": freeAddr(t)}
	procs := map[string]*proc{}
	for _, inst := range []string{"a", "b"} {
		procs[inst] = w.startProcess("STAGER_INSTANCE="+inst, "STAGER_HTTP_ADDR="+addrs[inst],
			stager.EnvTestHoldDir+"="+hold, stager.EnvLeaseTTL+"=10s",
			// InProgress goes out every AckWait/4: 1 s leaves room for a
			// loaded machine to be late with one or two of them.
			"STAGER_ACK_WAIT=4s")
	}

	// P is staged for job-0, which then releases it; the planner decides
	// the deletion at the entry's revision.
	first := w.submit(request("job-0", p))
	waitID[event.Done](t, w.rec, "done:"+first)
	rig := newCleanupRig(w)
	key, rev := rig.releaseAll("proc", p.id, "job-0")

	// Arm the hook and hand out the deletion; whichever instance takes it
	// stops right before removing the copy.
	point := filepath.Join(hold, "before-remove")
	if err := os.WriteFile(point, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	rig.item("cleanup:proc:shared:"+strconv.FormatUint(rev, 10), subject.Cleanup(site), event.Cleanup{
		PackageID: p.id, Site: site, Location: "proc", RefsKey: key, RefsRevision: rev, Jobs: []string{"job-0"}, EmptiedAt: time.Now().UTC(),
	})
	var deleter string
	poll.Until(t, 20*time.Second, "the deletion held by the hook", poll.True(func() bool {
		b, err := os.ReadFile(point + ".held")
		deleter = string(b)
		return err == nil && deleter != ""
	}))
	other := map[string]string{"a": "b", "b": "a"}[deleter]
	if other == "" {
		t.Fatalf("deletion held by unknown instance %q", deleter)
	}
	// Frozen, the deleter cannot take the new request: the other must.
	if err := procs[deleter].cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			_ = procs[deleter].cmd.Process.Signal(syscall.SIGCONT)
		}
	}
	t.Cleanup(resume)

	// A new job takes P: reference first, then the request.
	if err := rig.table.Add(t.Context(), "job-1", []refs.Ref{{Key: key, Site: site, Location: "proc", PackageID: p.id}}, 1); err != nil {
		t.Fatal(err)
	}
	id := w.submit(request("job-1", p))
	poll.Until(t, 20*time.Second, "job-1 answered or waiting for the copy's lease", poll.True(func() bool {
		_, done := w.rec.byID("done:" + id)
		return done || metric(addrs[other], `stager_lease_waits_total{purpose="stage"}`) >= 1
	}))

	// Keep it waiting past its AckWait (4 s): InProgress must keep the
	// request with this attempt rather than have it redelivered.
	if _, done := w.rec.byID("done:" + id); !done {
		time.Sleep(5 * time.Second)
	}

	// Let the deletion go on and finish.
	resume()
	if err := os.Remove(point); err != nil {
		t.Fatal(err)
	}
	released := waitID[event.Released](t, w.rec, stager.ReleasedID("proc", p.id, rev, 0))
	if released.BytesFreed <= 0 {
		t.Errorf("released = %+v, want bytes freed", released)
	}
	done := waitID[event.Done](t, w.rec, "done:"+id)

	// The invariant: a completed job's copy is on disk.
	if _, err := os.Stat(filepath.Join(done.Path, "meta.json")); err != nil {
		t.Fatalf("job-1 completed (already_present=%v, by %s) but its copy is gone: %v", done.AlreadyPresent, done.Instance, err)
	}
	if _, err := os.Stat(filepath.Join(w.proc, ".ccat-staging", "manifests", p.id+".json")); err != nil {
		t.Errorf("job-1's copy has no verification record: %v", err)
	}
	if done.AlreadyPresent || done.Instance != other {
		t.Errorf("done = already_present %v by %s; want staged again by %s after the deletion", done.AlreadyPresent, done.Instance, other)
	}
	if n := len(w.rec.ofType(event.TypeStarted, "started:"+id+":")); n != 1 {
		t.Errorf("%d attempts of job-1's request, want 1: the wait for the lease let it be redelivered", n)
	}
	if n := metric(addrs[other], `stager_lease_waits_total{purpose="stage"}`); n < 1 {
		t.Errorf("the other instance never waited for the copy's lease (waits %v)", n)
	}
}

// A stager killed while it holds a copy's lease (mid-package) leaves the
// lease to expire: another instance gets the redelivery, waits for the
// lease, takes it over once the TTL has passed, and stages the package.
func TestLeaseOfAKilledInstanceIsTakenOver(t *testing.T) {
	w := newWorld(t)
	p := w.put(w.archive, "orphaned", bigPackage(t, 16))
	// a's lease outlives it by 5 s, longer than the redelivery takes (AckWait 2 s).
	a := w.startProcess("STAGER_INSTANCE=a", "STAGER_READ_RATE=4000000", stager.EnvLeaseTTL+"=5s") // about 4 s for this package
	id := w.submit(request("job-orphan", p))
	waitID[event.Started](t, w.rec, "started:"+id+":1")
	poll.Until(t, 10*time.Second, "bytes in a temp dir", poll.True(func() bool {
		m, _ := filepath.Glob(filepath.Join(w.proc, ".staging-a-orphaned-*", "big.dat"))
		return len(m) > 0
	}))
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-a.done

	addr := freeAddr(t)
	w.startProcess("STAGER_INSTANCE=b", "STAGER_HTTP_ADDR="+addr, stager.EnvLeaseTTL+"=2s")
	d := waitID[event.Done](t, w.rec, "done:"+id)
	if d.Instance != "b" || d.AlreadyPresent {
		t.Errorf("done = %+v, want staged by b", d)
	}
	if n := metric(addr, `stager_lease_takeovers_total{purpose="stage"}`); n != 1 {
		t.Errorf("b's takeovers = %v, want 1 (a's lease expired)", n)
	}
	// Usually b also waited for the rest of a's TTL; on a loaded machine
	// the redelivery may come after the lease expired, so that is not
	// asserted.
	t.Logf("b waited for a's lease %v time(s)", metric(addr, `stager_lease_waits_total{purpose="stage"}`))
}
