package refs_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/shared/internal/jstest"
	"github.com/ccatobs/ccat-staging/shared/refs"
	"github.com/nats-io/nats.go/jetstream"
)

// countingKV counts the keys a Table reads (gets, and keys handed out by
// listings) on a real bucket: the cost of an operation in KV round trips
// and keys, which is what grows with the bucket, whatever the machine.
type countingKV struct {
	jetstream.KeyValue
	gets, listed, lists atomic.Int64
}

func (c *countingKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	c.gets.Add(1)
	return c.KeyValue.Get(ctx, key)
}

func (c *countingKV) ListKeys(ctx context.Context, opts ...jetstream.WatchOpt) (jetstream.KeyLister, error) {
	c.lists.Add(1)
	l, err := c.KeyValue.ListKeys(ctx, opts...)
	return c.wrap(l), err
}

func (c *countingKV) ListKeysFiltered(ctx context.Context, filters ...string) (jetstream.KeyLister, error) {
	c.lists.Add(1)
	l, err := c.KeyValue.ListKeysFiltered(ctx, filters...)
	return c.wrap(l), err
}

func (c *countingKV) wrap(l jetstream.KeyLister) jetstream.KeyLister {
	if l == nil {
		return nil
	}
	return &countingLister{KeyLister: l, n: &c.listed}
}

func (c *countingKV) reset() { c.gets.Store(0); c.listed.Store(0); c.lists.Store(0) }

func (c *countingKV) reads() int64 { return c.gets.Load() + c.listed.Load() }

type countingLister struct {
	jetstream.KeyLister
	n   *atomic.Int64
	out chan string
}

func (l *countingLister) Keys() <-chan string {
	if l.out == nil {
		l.out = make(chan string)
		in := l.KeyLister.Keys()
		go func() {
			defer close(l.out)
			for k := range in {
				l.n.Add(1)
				l.out <- k
			}
		}()
	}
	return l.out
}

// Issue 15: with thousands of jobs referencing copies, releasing (or
// cancelling) one job reads keys in proportion to its own packages, the
// sweep reads only copies nobody holds, and references of a job never
// released lapse after the retention. Asserted on keys read, not time.
func TestReleaseCostsItsPackages(t *testing.T) {
	srv := jstest.New(t)
	ctx := t.Context()
	if _, err := refs.Open(ctx, srv.JS, 1); err != nil {
		t.Fatal(err)
	}
	kv, err := srv.JS.KeyValue(ctx, "PLANNER_REFS")
	if err != nil {
		t.Fatal(err)
	}
	ckv := &countingKV{KeyValue: kv}
	tbl := refs.FromKV(ckv)
	const jobs, perJob = 2000, 2
	ref := func(i int) refs.Ref {
		return refs.Ref{Key: fmt.Sprintf("us.us-proc.p%05d", i), Site: "us", Location: "us-proc", PackageID: fmt.Sprintf("p%05d", i)}
	}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for j := w; j < jobs; j += 8 {
				// Each job holds two copies, one shared with the next job.
				if err := tbl.Add(ctx, fmt.Sprintf("job-%04d", j), []refs.Ref{ref(j), ref(j + 1)}, perJob); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	// A job id with dots must not match another's keys (job-1 vs job-1.x).
	if err := tbl.Add(ctx, "job-0001.x", []refs.Ref{ref(9000)}, 1); err != nil {
		t.Fatal(err)
	}

	now := time.Date(2026, 12, 6, 1, 0, 0, 0, time.UTC)
	ckv.reset()
	n, err := tbl.DropJob(ctx, "job-0001", now)
	if err != nil || n != perJob {
		t.Fatalf("DropJob = %d, %v; want %d", n, err, perJob)
	}
	// Per package: its index key listed, its entry read (once more on a
	// compare-and-set retry at most).
	if r := ckv.reads(); r > 3*perJob {
		t.Errorf("releasing a job of %d packages read %d keys (%d gets, %d listed) among %d jobs, want at most %d",
			perJob, r, ckv.gets.Load(), ckv.listed.Load(), jobs, 3*perJob)
	}
	if it, err := tbl.Get(ctx, ref(9000).Key); err != nil || !slices.Equal(it.Jobs, []string{"job-0001.x"}) {
		t.Errorf("job-0001.x's copy = %+v, %v", it.Entry, err)
	}

	// Job 0 alone held p00000: now nobody does once it goes; the sweep's
	// view is that one copy, read without the rest of the bucket.
	if _, err := tbl.DropJob(ctx, "job-0000", now); err != nil {
		t.Fatal(err)
	}
	ckv.reset()
	idle, err := tbl.Idle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, it := range idle {
		keys = append(keys, it.Key)
	}
	// p00001 was held by job-0000 and job-0001, both gone; p00002 is still
	// held by job-0002.
	if want := []string{ref(0).Key, ref(1).Key}; !slices.Equal(slices.Sorted(slices.Values(keys)), want) {
		t.Errorf("idle = %v, want %v", keys, want)
	}
	if r := ckv.reads(); r > 3*int64(len(keys)) {
		t.Errorf("the sweep's view of %d idle copies read %d keys", len(keys), r)
	}
	// A copy referenced again is no longer idle.
	if err := tbl.Add(ctx, "job-new", []refs.Ref{ref(0)}, 1); err != nil {
		t.Fatal(err)
	}
	if idle, err = tbl.Idle(ctx); err != nil || len(idle) != 1 || idle[0].Key != ref(1).Key {
		t.Errorf("idle after a new reference = %+v, %v", idle, err)
	}

	// Retention: every reference taken today lapses once it has passed.
	if n, err := tbl.Lapse(ctx, time.Now().Add(24*time.Hour), 30*24*time.Hour); err != nil || n != 0 {
		t.Errorf("Lapse before the retention = %d, %v", n, err)
	}
	n, err = tbl.Lapse(ctx, time.Now().Add(32*24*time.Hour), 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if want := (jobs-2)*perJob + 2; n != want {
		t.Errorf("lapsed %d references, want %d", n, want)
	}
	if it, err := tbl.Get(ctx, ref(500).Key); err != nil || len(it.Jobs) != 0 || it.EmptiedAt == nil {
		t.Errorf("copy after lapse = %+v, %v", it.Entry, err)
	}
}

// A bucket written before the indexes (entries only) is indexed when a
// planner opens it: releases and the sweep then find its entries.
func TestOpenIndexesAnOldBucket(t *testing.T) {
	srv := jstest.New(t)
	ctx := t.Context()
	kv, err := srv.JS.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "PLANNER_REFS", History: 1})
	if err != nil {
		t.Fatal(err)
	}
	old := map[string]string{
		"us.us-proc.p1": `{"package_id":"p1","site":"us","location":"us-proc","jobs":["a","b.c"]}`,
		"us.us-proc.p2": `{"package_id":"p2","site":"us","location":"us-proc","jobs":[],"emptied_at":"2026-12-01T00:00:00Z","last_jobs":["z"]}`,
	}
	for k, v := range old {
		if _, err := kv.Put(ctx, k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	tbl, err := refs.Open(ctx, srv.JS, 1)
	if err != nil {
		t.Fatal(err)
	}
	idle, err := tbl.Idle(ctx)
	if err != nil || len(idle) != 1 || idle[0].Key != "us.us-proc.p2" {
		t.Fatalf("idle after indexing = %+v, %v", idle, err)
	}
	now := time.Now()
	for _, j := range []string{"a", "b.c"} {
		if n, err := tbl.DropJob(ctx, j, now); err != nil || n != 1 {
			t.Fatalf("DropJob(%s) = %d, %v", j, n, err)
		}
	}
	if idle, err = tbl.Idle(ctx); err != nil || len(idle) != 2 {
		t.Errorf("idle after both releases = %+v, %v", idle, err)
	}
	// Opening again does not index twice (nor fail).
	if _, err := refs.Open(ctx, srv.JS, 1); err != nil {
		t.Fatal(err)
	}
	if items, err := tbl.List(ctx); err != nil || len(items) != 2 {
		t.Errorf("List = %d entries, %v; want the two entries, no index keys", len(items), err)
	}
}
