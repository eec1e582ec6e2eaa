package refs_test

import (
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/shared/internal/jstest"
	"github.com/ccatobs/ccat-staging/shared/refs"
	"github.com/nats-io/nats.go/jetstream"
)

// References are a set per copy: adding twice counts once, dropping the last
// records when and who held it, concurrent adds from several writers are all
// kept, and a compare-and-set at a stale revision reports ErrChanged.
func TestReferences(t *testing.T) {
	srv := jstest.New(t)
	ctx := t.Context()
	tbl, err := refs.Open(ctx, srv.JS, 1)
	if err != nil {
		t.Fatal(err)
	}
	const key = "us.us-proc.p1"
	ref := []refs.Ref{{Key: key, Site: "us", Location: "us-proc", PackageID: "p1"}}

	var wg sync.WaitGroup
	jobs := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	for _, j := range jobs {
		wg.Go(func() {
			// Two writers per job: the second finds itself already there.
			for range 2 {
				if err := tbl.Add(ctx, j, ref, 4); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	it, err := tbl.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if got := slices.Sorted(slices.Values(it.Jobs)); !slices.Equal(got, jobs) {
		t.Fatalf("jobs = %v, want %v", got, jobs)
	}

	now := time.Date(2026, 11, 26, 21, 0, 0, 0, time.UTC)
	for i, j := range jobs {
		n, err := tbl.DropJob(ctx, j, now)
		if err != nil || n != 1 {
			t.Fatalf("DropJob(%s) = %d, %v", j, n, err)
		}
		it, _ = tbl.Get(ctx, key)
		if last := i == len(jobs)-1; last != (it.EmptiedAt != nil) {
			t.Fatalf("after dropping %s: emptied_at %v", j, it.EmptiedAt)
		}
	}
	if !it.EmptiedAt.Equal(now) || !slices.Equal(it.LastJobs, []string{"h"}) {
		t.Errorf("emptied entry = %+v", it.Entry)
	}
	if n, err := tbl.DropJob(ctx, "h", now); err != nil || n != 0 {
		t.Errorf("dropping an absent job = %d, %v", n, err)
	}

	stale := it.Revision
	if err := tbl.Add(ctx, "z", ref, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := tbl.Put(ctx, key, it.Entry, stale); !errors.Is(err, refs.ErrChanged) {
		t.Errorf("Put at a stale revision = %v, want ErrChanged", err)
	}
	it, _ = tbl.Get(ctx, key)
	if it.EmptiedAt != nil || !slices.Equal(it.Jobs, []string{"z"}) {
		t.Errorf("re-referenced entry = %+v", it.Entry)
	}
	if err := tbl.Forget(ctx, key, stale); err != nil {
		t.Errorf("Forget at a stale revision = %v, want a no-op", err)
	}
	if err := tbl.Forget(ctx, key, it.Revision); err != nil {
		t.Fatal(err)
	}
	if _, err := tbl.Get(ctx, key); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("Get after Forget = %v", err)
	}
	// A claimed entry is started afresh by a new reference.
	if err := tbl.Add(ctx, "y", ref, 1); err != nil {
		t.Fatal(err)
	}
	it, _ = tbl.Get(ctx, key)
	e := it.Entry
	e.Jobs, e.DeletingFor = nil, 42
	if _, err := tbl.Put(ctx, key, e, it.Revision); err != nil {
		t.Fatal(err)
	}
	if err := tbl.Add(ctx, "x", ref, 1); err != nil {
		t.Fatal(err)
	}
	it, _ = tbl.Get(ctx, key)
	if it.DeletingFor != 0 || !slices.Equal(it.Jobs, []string{"x"}) {
		t.Errorf("entry referenced after a claim = %+v", it.Entry)
	}
}
