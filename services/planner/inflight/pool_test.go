package inflight_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/bustest"
	"github.com/ccatobs/ccat-staging/services/planner/inflight"
	"github.com/nats-io/nats.go/jetstream"
)

// watchedKV is the real bucket. It counts the calls that reach it and the
// most running at once, and can cancel the caller's context at a given call:
// what a worker pool promises is visible only from the bucket's side.
type watchedKV struct {
	jetstream.KeyValue
	calls, now, peak atomic.Int64
	cancelAt         int64
	cancel           context.CancelFunc
}

func (k *watchedKV) enter() func() {
	if n := k.calls.Add(1); n == k.cancelAt {
		k.cancel()
	}
	cur := k.now.Add(1)
	for p := k.peak.Load(); cur > p && !k.peak.CompareAndSwap(p, cur); p = k.peak.Load() {
	}
	return func() { k.now.Add(-1) }
}

func (k *watchedKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	defer k.enter()()
	return k.KeyValue.Get(ctx, key)
}

func (k *watchedKV) Put(ctx context.Context, key string, v []byte) (uint64, error) {
	defer k.enter()()
	return k.KeyValue.Put(ctx, key, v)
}

func (k *watchedKV) Create(ctx context.Context, key string, v []byte, o ...jetstream.KVCreateOpt) (uint64, error) {
	defer k.enter()()
	return k.KeyValue.Create(ctx, key, v, o...)
}

func (k *watchedKV) Update(ctx context.Context, key string, v []byte, rev uint64) (uint64, error) {
	defer k.enter()()
	return k.KeyValue.Update(ctx, key, v, rev)
}

// watchedJS opens buckets as usual and hands out kv in their place.
type watchedJS struct {
	jetstream.KeyValueManager
	kv *watchedKV
}

func (j watchedJS) CreateOrUpdateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kv, err := j.KeyValueManager.CreateOrUpdateKeyValue(ctx, cfg)
	j.kv.KeyValue = kv
	return j.kv, err
}

// Acquire writes at most parallel keys at once; a package another job's
// request stages is followed; the first failure is returned, with no
// partial map, and stops every write not yet started (with one worker: not a
// single further call); a caller's cancellation is returned as such.
func TestAcquireWorkerPool(t *testing.T) {
	wants := func(job string, n int) []inflight.Want {
		var out []inflight.Want
		for i := range n {
			id := fmt.Sprintf("pkg-%03d", i)
			out = append(out, inflight.Want{Location: "us-proc", PackageID: id, RequestID: "request:" + job + ":" + id + ":1"})
		}
		return out
	}
	bad := inflight.Want{Location: "us proc", PackageID: "p", RequestID: "request:b:p:1"} // a space: the bucket refuses the key
	for _, tc := range []struct {
		name        string
		wants       []inflight.Want
		parallel    int
		cancelAt    int64 // cancel the caller at this bucket call (0: never)
		wantErr     error
		rounds      int   // the same call this many times (0: once): a pool that goes on after a failure does so by chance, each time
		maxCalls    int64 // bucket calls at most per round (0: any)
		wantOwn     int   // packages the job stages itself
		wantFollows int   // packages it follows job a's request for
	}{
		{name: "bounded", wants: wants("b", 60), parallel: 4, wantOwn: 50, wantFollows: 10},
		{name: "more workers than packages", wants: wants("b", 3), parallel: 50, wantFollows: 3},
		{name: "failure stops one worker at once", wants: append([]inflight.Want{bad}, wants("b", 20)...), parallel: 1,
			wantErr: jetstream.ErrInvalidKey, rounds: 10, maxCalls: 1},
		{name: "failure stops the rest", wants: append([]inflight.Want{bad}, wants("b", 200)...), parallel: 4,
			wantErr: jetstream.ErrInvalidKey, maxCalls: 100},
		{name: "caller cancels", wants: wants("b", 200), parallel: 2, cancelAt: 20, wantErr: context.Canceled, maxCalls: 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := bustest.New(t)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			kv := &watchedKV{}
			tbl, err := inflight.Open(t.Context(), watchedJS{srv.JS, kv}, 1, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			// Job a's requests stage pkg-000 … pkg-009 already.
			if _, err := tbl.Acquire(t.Context(), "a", wants("a", 10), 4); err != nil {
				t.Fatal(err)
			}
			kv.calls.Store(0)
			kv.peak.Store(0)
			kv.cancelAt, kv.cancel = tc.cancelAt, cancel

			var got map[string]string
			for range max(1, tc.rounds) {
				got, err = tbl.Acquire(ctx, "b", tc.wants, tc.parallel)
			}
			t.Logf("%d bucket calls, at most %d at once", kv.calls.Load(), kv.peak.Load())
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Acquire = %v, want %v", err, tc.wantErr)
			}
			if p := kv.peak.Load(); p > int64(tc.parallel) {
				t.Errorf("%d bucket calls at once, want at most %d", p, tc.parallel)
			}
			if want := tc.maxCalls * int64(max(1, tc.rounds)); tc.maxCalls > 0 && kv.calls.Load() > want {
				t.Errorf("%d bucket calls, want at most %d: the pool went on after the failure", kv.calls.Load(), want)
			}
			if tc.wantErr != nil && got != nil {
				t.Errorf("Acquire failed and still returned %d packages", len(got))
			}
			own, follows := 0, 0
			for _, w := range tc.wants {
				switch got[w.PackageID] {
				case w.RequestID:
					own++
				case "request:a:" + w.PackageID + ":1":
					follows++
				}
			}
			if own != tc.wantOwn || follows != tc.wantFollows {
				t.Errorf("own %d, follows %d; want %d, %d (%v)", own, follows, tc.wantOwn, tc.wantFollows, got)
			}
		})
	}
}
