package catalog_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/ccatobs/ccat-staging/devkit/bustest"
	"github.com/ccatobs/ccat-staging/services/planner/catalog"
	"github.com/ccatobs/ccat-staging/services/planner/route"
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

// Lookup reads at most parallel keys at once (fewer than one counts as
// one); the first failure is returned, with no partial map, and stops every
// read not yet started (with one worker: not a single further read); a
// caller's cancellation is returned as such.
func TestLookupWorkerPool(t *testing.T) {
	ids := func(n int) []string {
		var out []string
		for i := range n {
			out = append(out, fmt.Sprintf("pkg-%03d", i))
		}
		return out
	}
	for _, tc := range []struct {
		name      string
		ids       []string
		parallel  int
		cancelAt  int64 // cancel the caller at this bucket call (0: never)
		wantErr   error
		rounds    int   // the same call this many times (0: once): a pool that goes on after a failure does so by chance, each time
		maxCalls  int64 // bucket calls at most per round (0: any)
		wantKnown int
	}{
		{name: "bounded", ids: ids(100), parallel: 5, wantKnown: 10},
		{name: "no parallelism asked is one", ids: ids(30), parallel: 0, wantKnown: 10},
		{name: "more workers than ids", ids: ids(3), parallel: 50, wantKnown: 2},
		{name: "failure stops one worker at once", ids: append([]string{"bad id"}, ids(20)...), parallel: 1,
			wantErr: jetstream.ErrInvalidKey, rounds: 10, maxCalls: 1},
		{name: "failure stops the rest", ids: append([]string{"bad id"}, ids(200)...), parallel: 4,
			wantErr: jetstream.ErrInvalidKey, maxCalls: 100},
		{name: "caller cancels", ids: ids(200), parallel: 2, cancelAt: 20, wantErr: context.Canceled, maxCalls: 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := bustest.New(t)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			kv := &watchedKV{}
			c, err := catalog.Open(t.Context(), watchedJS{srv.JS, kv}, 1)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 20; i += 2 { // pkg-000, pkg-002, … pkg-018 are known
				id := fmt.Sprintf("pkg-%03d", i)
				if _, err := c.Add(t.Context(), id, cp("lta", id+".tar", sumA)); err != nil {
					t.Fatal(err)
				}
			}
			kv.calls.Store(0)
			kv.peak.Store(0)
			kv.cancelAt, kv.cancel = tc.cancelAt, cancel

			var got map[string][]route.Copy
			for range max(1, tc.rounds) {
				got, err = c.Lookup(ctx, tc.ids, tc.parallel)
			}
			t.Logf("%d bucket calls, at most %d at once", kv.calls.Load(), kv.peak.Load())
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Lookup = %v, want %v", err, tc.wantErr)
			}
			if p := kv.peak.Load(); p > int64(max(1, tc.parallel)) {
				t.Errorf("%d bucket calls at once, want at most %d", p, max(1, tc.parallel))
			}
			if want := tc.maxCalls * int64(max(1, tc.rounds)); tc.maxCalls > 0 && kv.calls.Load() > want {
				t.Errorf("%d bucket calls, want at most %d: the pool went on after the failure", kv.calls.Load(), want)
			}
			if tc.wantErr != nil && got != nil {
				t.Errorf("Lookup failed and still returned %d packages", len(got))
			}
			if len(got) != tc.wantKnown {
				t.Errorf("Lookup found %d packages, want %d", len(got), tc.wantKnown)
			}
		})
	}
}
