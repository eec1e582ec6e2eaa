package catalog_test

import (
	"context"
	"errors"
	"fmt"
	"github.com/ccatobs/ccat-staging/devkit/probe"
	"testing"

	"github.com/ccatobs/ccat-staging/devkit/bustest"
	"github.com/ccatobs/ccat-staging/services/planner/catalog"
	"github.com/ccatobs/ccat-staging/services/planner/route"
	"github.com/nats-io/nats.go/jetstream"
)

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
			kv := &probe.WatchedKV{}
			c, err := catalog.Open(t.Context(), probe.WatchedJS{KeyValueManager: srv.JS, KV: kv}, 1)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 20; i += 2 { // pkg-000, pkg-002, … pkg-018 are known
				id := fmt.Sprintf("pkg-%03d", i)
				if _, err := c.Add(t.Context(), id, cp("lta", id+".tar", sumA)); err != nil {
					t.Fatal(err)
				}
			}
			kv.Calls.Store(0)
			kv.Peak.Store(0)
			kv.CancelAt, kv.Cancel = tc.cancelAt, cancel

			var got map[string][]route.Copy
			for range max(1, tc.rounds) {
				got, err = c.Lookup(ctx, tc.ids, tc.parallel)
			}
			t.Logf("%d bucket calls, at most %d at once", kv.Calls.Load(), kv.Peak.Load())
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Lookup = %v, want %v", err, tc.wantErr)
			}
			if p := kv.Peak.Load(); p > int64(max(1, tc.parallel)) {
				t.Errorf("%d bucket calls at once, want at most %d", p, max(1, tc.parallel))
			}
			if want := tc.maxCalls * int64(max(1, tc.rounds)); tc.maxCalls > 0 && kv.Calls.Load() > want {
				t.Errorf("%d bucket calls, want at most %d: the pool went on after the failure", kv.Calls.Load(), want)
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
