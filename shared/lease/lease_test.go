package lease_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/shared/internal/jstest"
	"github.com/ccatobs/ccat-staging/shared/lease"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// holderConn is one lease holder with a connection of its own, so a test
// can make it die (close the connection) without touching the others.
func holderConn(t *testing.T, srv *jstest.Server, ttl time.Duration) (*lease.Store, *nats.Conn) {
	t.Helper()
	nc, err := nats.Connect(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := lease.Open(t.Context(), js, lease.Options{TTL: ttl, MarkerTTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return st, nc
}

func TestKey(t *testing.T) {
	for _, tc := range []struct{ pkg, want string }{
		{"pkg-1", "s.proc.pkg-1"},
		{"obs.2026.a_b", "s.proc.obs.2026.a_b"},
		{"ends.", "s.proc.=ZW5kcy4"},
		{"a..b", "s.proc.=YS4uYg"},
	} {
		if got := lease.Key("s", "proc", tc.pkg); got != tc.want {
			t.Errorf("Key(%q) = %q, want %q", tc.pkg, got, tc.want)
		}
	}
}

// Two holders contend for one key: exactly one gets it, the other sees who
// holds it and gets it once it is released; a release by a holder whose
// lease was taken over does not free the new holder's lease.
func TestContention(t *testing.T) {
	srv := jstest.New(t)
	a, _ := holderConn(t, srv, 5*time.Second)
	b, _ := holderConn(t, srv, 5*time.Second)
	ctx := t.Context()
	key := lease.Key("s", "proc", "pkg-1")

	la, cur, err := a.TryAcquire(ctx, key, lease.Holder{Instance: "a", Purpose: lease.PurposeDelete, RefsRevision: 7})
	if err != nil || la == nil {
		t.Fatalf("a: lease %v, holder %+v, err %v", la, cur, err)
	}
	lb, cur, err := b.TryAcquire(ctx, key, lease.Holder{Instance: "b", Purpose: lease.PurposeStage, JobID: "job-1"})
	if err != nil || lb != nil {
		t.Fatalf("b took a held lease: %v, %v", lb, err)
	}
	if cur.Instance != "a" || cur.Purpose != lease.PurposeDelete || cur.RefsRevision != 7 {
		t.Errorf("b sees holder %+v, want a deleting", cur.Holder)
	}
	if la.TookOver {
		t.Errorf("a's lease counted as a takeover of nobody")
	}

	// b waits; a releases; b gets it, and it is no takeover.
	got := make(chan *lease.Lease, 1)
	var waits atomic.Int32
	go func() {
		l, err := b.Acquire(ctx, key, lease.Holder{Instance: "b", Purpose: lease.PurposeStage}, func(c lease.Current) { waits.Add(1) })
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	select {
	case l := <-got:
		t.Fatalf("b acquired while a held the lease: %+v", l.Holder())
	case <-time.After(300 * time.Millisecond):
	}
	if err := la.Release(ctx); err != nil {
		t.Fatal(err)
	}
	lb = <-got
	if lb == nil {
		t.Fatal("b never acquired")
	}
	if lb.TookOver {
		t.Errorf("a released, yet b's lease counts as a takeover")
	}
	if waits.Load() != 1 {
		t.Errorf("onWait called %d times for one holder, want 1", waits.Load())
	}
	if err := la.Release(ctx); err != nil {
		t.Errorf("second release: %v", err)
	}
	if _, cur, _ := a.TryAcquire(ctx, key, lease.Holder{Instance: "a"}); cur == nil || cur.Instance != "b" {
		t.Errorf("after a's repeated release the key is held by %+v, want b", cur)
	}
	if err := lb.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// Many holders hammer one key: at no time do two of them hold it.
func TestMutualExclusion(t *testing.T) {
	srv := jstest.New(t)
	key := lease.Key("s", "proc", "hot")
	var inside, maxInside, total atomic.Int32
	var wg sync.WaitGroup
	for i := range 4 {
		st, _ := holderConn(t, srv, 5*time.Second)
		wg.Go(func() {
			for range 5 {
				l, err := st.Acquire(t.Context(), key, lease.Holder{Instance: string(rune('a' + i)), Purpose: lease.PurposeStage}, nil)
				if err != nil {
					t.Error(err)
					return
				}
				n := inside.Add(1)
				for {
					m := maxInside.Load()
					if n <= m || maxInside.CompareAndSwap(m, n) {
						break
					}
				}
				time.Sleep(5 * time.Millisecond)
				inside.Add(-1)
				total.Add(1)
				if err := l.Release(t.Context()); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if maxInside.Load() != 1 || total.Load() != 20 {
		t.Errorf("max holders at once %d (want 1), acquisitions %d (want 20)", maxInside.Load(), total.Load())
	}
}

// A held lease is renewed: it outlives its TTL several times over and
// nobody else gets it meanwhile; Confirm succeeds while it is held.
func TestRenewal(t *testing.T) {
	srv := jstest.New(t)
	a, _ := holderConn(t, srv, time.Second)
	b, _ := holderConn(t, srv, time.Second)
	key := lease.Key("s", "proc", "long")
	la, _, err := a.TryAcquire(t.Context(), key, lease.Holder{Instance: "a", Purpose: lease.PurposeStage})
	if err != nil || la == nil {
		t.Fatal(la, err)
	}
	first := la.Holder().RenewedAt
	end := time.Now().Add(3500 * time.Millisecond)
	for time.Now().Before(end) {
		if l, _, err := b.TryAcquire(t.Context(), key, lease.Holder{Instance: "b"}); err != nil || l != nil {
			t.Fatalf("b took a renewed lease (err %v)", err)
		}
		select {
		case <-la.Lost():
			t.Fatal("a's lease lost while renewing")
		case <-time.After(100 * time.Millisecond):
		}
	}
	if !la.Holder().RenewedAt.After(first) {
		t.Errorf("never renewed: renewed_at %v", la.Holder().RenewedAt)
	}
	if err := la.Confirm(t.Context()); err != nil {
		t.Errorf("Confirm of a held lease: %v", err)
	}
	if err := la.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// A holder that dies (its connection gone, so no renewals) loses the lease
// after TTL: a waiter gets it and counts a takeover; the dead holder's
// lease reports itself lost, and its Confirm fails instead of letting it
// act on a copy somebody else now owns.
func TestExpiryWhenHolderDies(t *testing.T) {
	srv := jstest.New(t)
	a, anc := holderConn(t, srv, time.Second)
	b, _ := holderConn(t, srv, time.Second)
	key := lease.Key("s", "proc", "orphan")
	la, _, err := a.TryAcquire(t.Context(), key, lease.Holder{Instance: "a", Purpose: lease.PurposeDelete})
	if err != nil || la == nil {
		t.Fatal(la, err)
	}
	anc.Close()

	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	var waited []lease.Current
	lb, err := b.Acquire(ctx, key, lease.Holder{Instance: "b", Purpose: lease.PurposeStage}, func(c lease.Current) { waited = append(waited, c) })
	if err != nil {
		t.Fatalf("b never took over a dead holder's lease: %v", err)
	}
	if !lb.TookOver {
		t.Errorf("b's lease after an expiry is not counted as a takeover")
	}
	if len(waited) == 0 || waited[0].Instance != "a" {
		t.Errorf("b waited for %+v, want a", waited)
	}
	select {
	case <-la.Lost():
	case <-time.After(5 * time.Second):
		t.Errorf("the dead holder's lease never reported itself lost")
	}
	if err := la.Confirm(t.Context()); !errors.Is(err, lease.ErrLost) && err == nil {
		t.Errorf("Confirm of an expired lease = %v, want an error", err)
	}
	if err := lb.Confirm(t.Context()); err != nil {
		t.Errorf("the new holder's Confirm: %v", err)
	}
	if err := lb.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// Waiting respects ctx.
func TestAcquireRespectsContext(t *testing.T) {
	srv := jstest.New(t)
	a, _ := holderConn(t, srv, 5*time.Second)
	key := lease.Key("s", "proc", "busy")
	la, _, err := a.TryAcquire(t.Context(), key, lease.Holder{Instance: "a"})
	if err != nil || la == nil {
		t.Fatal(la, err)
	}
	defer la.Release(t.Context())
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if _, err := a.Acquire(ctx, key, lease.Holder{Instance: "b"}, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Acquire past its deadline = %v, want DeadlineExceeded", err)
	}
}

// A restarted instance (same name, new run) takes over at once what its
// dead predecessor held, rather than waiting for the TTL; another instance
// still waits.
func TestRestartedInstanceTakesOverItsOwn(t *testing.T) {
	srv := jstest.New(t)
	open := func(instance string) *lease.Store {
		st, err := lease.Open(t.Context(), srv.JS, lease.Options{Instance: instance, TTL: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	key := lease.Key("s", "proc", "pkg")
	dead := open("t1")
	if l, _, err := dead.TryAcquire(t.Context(), key, lease.Holder{Purpose: lease.PurposeStage}); err != nil || l == nil {
		t.Fatal(l, err)
	}
	if l, cur, err := open("t2").TryAcquire(t.Context(), key, lease.Holder{}); err != nil || l != nil || cur.Instance != "t1" {
		t.Fatalf("another instance: lease %v, holder %+v, err %v; want t1 holding", l, cur, err)
	}
	l, cur, err := open("t1").TryAcquire(t.Context(), key, lease.Holder{Purpose: lease.PurposeStage})
	if err != nil || l == nil {
		t.Fatalf("restarted t1 waits for its own dead lease: holder %+v, err %v", cur, err)
	}
	if !l.TookOver {
		t.Errorf("not counted as a takeover")
	}
	if err := l.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// Released and expired leases leave markers that expire too: the bucket
// holds only leases in use, however many copies were ever leased; and a
// lease taken after a release's marker expired is no takeover.
func TestBucketHoldsOnlyLeasesInUse(t *testing.T) {
	srv := jstest.New(t)
	a, anc := holderConn(t, srv, time.Second)
	b, _ := holderConn(t, srv, time.Second)
	released, _, err := a.TryAcquire(t.Context(), lease.Key("s", "proc", "released"), lease.Holder{Instance: "a"})
	if err != nil || released == nil {
		t.Fatal(released, err)
	}
	if err := released.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	if l, _, err := a.TryAcquire(t.Context(), lease.Key("s", "proc", "expired"), lease.Holder{Instance: "a"}); err != nil || l == nil {
		t.Fatal(l, err)
	}
	anc.Close() // the holder of "expired" dies
	s, err := srv.JS.Stream(t.Context(), "KV_"+lease.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, err := s.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bucket still holds %d messages after every lease was released or expired", info.State.Msgs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	l, _, err := b.TryAcquire(t.Context(), lease.Key("s", "proc", "released"), lease.Holder{Instance: "b"})
	if err != nil || l == nil || l.TookOver {
		t.Fatalf("after the markers expired: lease %v (err %v), want a fresh one", l, err)
	}
	if err := l.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// Held answers from the leader through a lease's whole life: nobody before
// the first take, the holder while held and after each renewal, nobody after
// a release (a purge marker) and after an expiry (a MaxAge marker), and the
// new holder after a takeover.
func TestHeldThroughALeasesLife(t *testing.T) {
	srv := jstest.New(t)
	a, anc := holderConn(t, srv, time.Second)
	b, _ := holderConn(t, srv, time.Second)
	ctx := t.Context()
	key := lease.Key("s", "proc", "pkg-held")
	held := func(step string, st *lease.Store, want string) {
		t.Helper()
		cur, err := st.Held(ctx, key)
		if err != nil {
			t.Fatalf("%s: Held: %v", step, err)
		}
		got := ""
		if cur != nil {
			got = cur.Instance + "/" + cur.Purpose
		}
		if got != want {
			t.Errorf("%s: Held = %q, want %q", step, got, want)
		}
	}

	held("never taken", b, "")
	la, _, err := a.TryAcquire(ctx, key, lease.Holder{Instance: "a", Purpose: lease.PurposeDelete})
	if err != nil || la == nil {
		t.Fatal(la, err)
	}
	held("taken", b, "a/delete")
	if err := la.Confirm(ctx); err != nil {
		t.Fatal(err)
	}
	held("renewed", b, "a/delete")
	if err := la.Release(ctx); err != nil {
		t.Fatal(err)
	}
	held("released", b, "")

	la, _, err = a.TryAcquire(ctx, key, lease.Holder{Instance: "a", Purpose: lease.PurposeStage})
	if err != nil || la == nil {
		t.Fatal(la, err)
	}
	held("taken again", b, "a/stage")
	anc.Close() // a dies holding it: no renewals, the TTL runs out
	deadline := time.Now().Add(10 * time.Second)
	for {
		cur, err := b.Held(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if cur == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a dead holder's lease still held after its TTL: %+v", cur.Holder)
		}
		time.Sleep(50 * time.Millisecond)
	}
	lb, _, err := b.TryAcquire(ctx, key, lease.Holder{Instance: "b", Purpose: lease.PurposeStage})
	if err != nil || lb == nil || !lb.TookOver {
		t.Fatalf("b after the expiry: %v (took over %v), %v", lb, lb != nil && lb.TookOver, err)
	}
	held("taken over", b, "b/stage")
	if err := lb.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// A key nobody ever held is taken in one round trip: the compare-and-set
// publish alone, no read of the key before it (the old way read it first).
// A key with a release marker on it still goes by the read.
func TestNewKeyTakenWithoutARead(t *testing.T) {
	srv := jstest.New(t)
	st, _ := holderConn(t, srv, 5*time.Second)
	ctx := t.Context()
	var reads atomic.Int32
	sub, err := srv.NC.Subscribe("$JS.API.>", func(m *nats.Msg) {
		if m.Subject != "$JS.API.INFO" {
			reads.Add(1)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := srv.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	key := lease.Key("s", "proc", "pkg-new")
	l, cur, err := st.TryAcquire(ctx, key, lease.Holder{Purpose: lease.PurposeStage, JobID: "job-1"})
	if err != nil || l == nil {
		t.Fatalf("lease %v, holder %+v, err %v", l, cur, err)
	}
	if err := srv.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := reads.Load(); n != 0 {
		t.Errorf("%d JetStream API requests to take a new key, want none (the publish alone)", n)
	}
	if l.TookOver {
		t.Errorf("a new key's lease counted as a takeover")
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	// Released: a marker is there now, and the key is taken again by the
	// read-then-write path.
	l2, _, err := st.TryAcquire(ctx, key, lease.Holder{Purpose: lease.PurposeStage, JobID: "job-2"})
	if err != nil || l2 == nil {
		t.Fatalf("taking a released key: %v, %v", l2, err)
	}
	if err := l2.Release(ctx); err != nil {
		t.Fatal(err)
	}
}
