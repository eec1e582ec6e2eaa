package inflight_test

import (
	"context"
	"errors"
	"fmt"
	"github.com/ccatobs/ccat-staging/devkit/probe"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/bustest"
	"github.com/ccatobs/ccat-staging/services/planner/inflight"
	"github.com/nats-io/nats.go/jetstream"
)

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
			kv := &probe.WatchedKV{}
			tbl, err := inflight.Open(t.Context(), probe.WatchedJS{KeyValueManager: srv.JS, KV: kv}, 1, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			// Job a's requests stage pkg-000 … pkg-009 already.
			if _, err := tbl.Acquire(t.Context(), "a", wants("a", 10), 4); err != nil {
				t.Fatal(err)
			}
			kv.Calls.Store(0)
			kv.Peak.Store(0)
			kv.CancelAt, kv.Cancel = tc.cancelAt, cancel

			var got map[string]string
			for range max(1, tc.rounds) {
				got, err = tbl.Acquire(ctx, "b", tc.wants, tc.parallel)
			}
			t.Logf("%d bucket calls, at most %d at once", kv.Calls.Load(), kv.Peak.Load())
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Acquire = %v, want %v", err, tc.wantErr)
			}
			if p := kv.Peak.Load(); p > int64(tc.parallel) {
				t.Errorf("%d bucket calls at once, want at most %d", p, tc.parallel)
			}
			if want := tc.maxCalls * int64(max(1, tc.rounds)); tc.maxCalls > 0 && kv.Calls.Load() > want {
				t.Errorf("%d bucket calls, want at most %d: the pool went on after the failure", kv.Calls.Load(), want)
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
