package refs_test

import (
	"context"
	"errors"
	"fmt"
	"github.com/ccatobs/ccat-staging/devkit/probe"
	"testing"

	"github.com/ccatobs/ccat-staging/shared/internal/jstest"
	"github.com/ccatobs/ccat-staging/shared/refs"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
)

// Add writes at most parallel references at once; the first failure is
// returned and stops every reference not yet started (with one worker:
// not a single further call reaches the bucket); a caller's cancellation
// is returned as such.
func TestAddWorkerPool(t *testing.T) {
	const bad = "us.us-proc.bad key" // a space: the bucket refuses the key
	good := func(n int) []refs.Ref {
		var rs []refs.Ref
		for i := range n {
			id := fmt.Sprintf("p%03d", i)
			rs = append(rs, refs.Ref{Key: "us.us-proc." + id, Site: "us", Location: "us-proc", PackageID: id})
		}
		return rs
	}
	for _, tc := range []struct {
		name      string
		refs      []refs.Ref
		parallel  int
		cancelAt  int64 // cancel the caller at this bucket call (0: never)
		wantErr   error
		rounds    int   // the same call this many times (0: once): a pool that goes on after a failure does so by chance, each time
		maxCalls  int64 // bucket calls at most per round (0: any)
		wantFresh int   // entries written, -1: fewer than half of them
	}{
		{name: "bounded", refs: good(60), parallel: 4, wantFresh: 60},
		{name: "more workers than references", refs: good(3), parallel: 50, wantFresh: 3},
		{name: "failure stops one worker at once", parallel: 1, refs: append([]refs.Ref{{Key: bad, PackageID: "bad"}}, good(20)...),
			wantErr: jetstream.ErrInvalidKey, rounds: 10, maxCalls: 2 /* the lapse index, the bad key's index */, wantFresh: 0},
		{name: "failure stops the rest", parallel: 4, refs: append([]refs.Ref{{Key: bad, PackageID: "bad"}}, good(200)...),
			wantErr: jetstream.ErrInvalidKey, wantFresh: -1},
		{name: "caller cancels", parallel: 2, refs: good(200), cancelAt: 20, wantErr: context.Canceled, wantFresh: -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := jstest.New(t)
			if _, err := refs.Open(t.Context(), srv.JS, 1); err != nil {
				t.Fatal(err)
			}
			raw, err := srv.JS.KeyValue(t.Context(), subject.PlannerRefsBucket)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			kv := &probe.WatchedKV{KeyValue: raw, CancelAt: tc.cancelAt, Cancel: cancel}

			for range max(1, tc.rounds) {
				err = refs.FromKV(kv).Add(ctx, "job-1", tc.refs, tc.parallel)
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Add = %v, want %v", err, tc.wantErr)
			}
			t.Logf("%d bucket calls, at most %d at once", kv.Calls.Load(), kv.Peak.Load())
			if p := kv.Peak.Load(); p > int64(tc.parallel) {
				t.Errorf("%d bucket calls at once, want at most %d", p, tc.parallel)
			}
			if want := tc.maxCalls * int64(max(1, tc.rounds)); tc.maxCalls > 0 && kv.Calls.Load() > want {
				t.Errorf("%d bucket calls, want at most %d: the pool went on after the failure", kv.Calls.Load(), want)
			}
			items, err := refs.FromKV(raw).List(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			switch n := len(items); {
			case tc.wantFresh >= 0 && n != tc.wantFresh:
				t.Errorf("%d entries written, want %d", n, tc.wantFresh)
			case tc.wantFresh < 0 && n >= len(tc.refs)/2:
				t.Errorf("%d of %d entries written: the pool did not stop", n, len(tc.refs))
			}
		})
	}
}
