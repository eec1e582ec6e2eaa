package catalog_test

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/ccatobs/ccat-staging/devkit/bustest"
	"github.com/ccatobs/ccat-staging/devkit/natsembed"
	"github.com/ccatobs/ccat-staging/services/planner/catalog"
	"github.com/ccatobs/ccat-staging/services/planner/route"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const (
	sumA = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	sumB = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
)

func cp(loc, key, sum string) route.Copy {
	return route.Copy{Location: loc, Key: key, SizeBytes: 10, Checksum: sum, Format: "tar",
		Files: []event.File{{Path: "a.fits", SizeBytes: 10, SHA256: sum[7:]}}}
}

func TestAddAndRemove(t *testing.T) {
	srv := bustest.New(t)
	c, err := catalog.Open(t.Context(), srv.JS, 1)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name string
		op   func() (catalog.Result, error)
		want catalog.Result
		err  error
		locs []string // locations recorded afterwards
	}{
		{"first copy", func() (catalog.Result, error) { return c.Add(t.Context(), "p1", cp("b-lta", "k", sumA)) }, catalog.Added, nil, []string{"b-lta"}},
		{"same announcement again", func() (catalog.Result, error) { return c.Add(t.Context(), "p1", cp("b-lta", "k", sumA)) }, catalog.Unchanged, nil, []string{"b-lta"}},
		{"second location", func() (catalog.Result, error) { return c.Add(t.Context(), "p1", cp("a-lta", "k2", sumA)) }, catalog.Added, nil, []string{"a-lta", "b-lta"}},
		{"other checksum elsewhere is a conflict", func() (catalog.Result, error) { return c.Add(t.Context(), "p1", cp("c-lta", "k", sumB)) }, "", catalog.ErrConflict, []string{"a-lta", "b-lta"}},
		{"moved key at the same location", func() (catalog.Result, error) { return c.Add(t.Context(), "p1", cp("a-lta", "k3", sumA)) }, catalog.Replaced, nil, []string{"a-lta", "b-lta"}},
		{"remove one", func() (catalog.Result, error) { return c.Remove(t.Context(), "p1", "b-lta") }, catalog.Removed, nil, []string{"a-lta"}},
		{"remove it again", func() (catalog.Result, error) { return c.Remove(t.Context(), "p1", "b-lta") }, catalog.Unchanged, nil, []string{"a-lta"}},
		{"remove the last", func() (catalog.Result, error) { return c.Remove(t.Context(), "p1", "a-lta") }, catalog.Removed, nil, []string{}},
		{"re-archived with new content once alone", func() (catalog.Result, error) { return c.Add(t.Context(), "p1", cp("c-lta", "k", sumB)) }, catalog.Added, nil, []string{"c-lta"}},
	}
	for _, st := range steps {
		res, err := st.op()
		if res != st.want || !errors.Is(err, st.err) {
			t.Fatalf("%s: got %q, %v; want %q, %v", st.name, res, err, st.want, st.err)
		}
		copies, known, err := c.Get(t.Context(), "p1")
		if err != nil || !known {
			t.Fatalf("%s: Get = %v, %v, %v", st.name, copies, known, err)
		}
		var locs []string
		for _, c := range copies {
			locs = append(locs, c.Location)
		}
		if !slices.Equal(locs, st.locs) && !(len(locs) == 0 && len(st.locs) == 0) {
			t.Fatalf("%s: locations = %v, want %v", st.name, locs, st.locs)
		}
	}
	if _, known, _ := c.Get(t.Context(), "never"); known {
		t.Error("Get(never) known")
	}
	if res, err := c.Remove(t.Context(), "never", "x"); res != catalog.Unchanged || err != nil {
		t.Errorf("Remove(never) = %q, %v", res, err)
	}
}

// Concurrent announcements of different copies must all survive: the
// compare-and-set loop is what several planner instances rely on.
func TestConcurrentAddsKeepEveryCopy(t *testing.T) {
	srv := bustest.New(t)
	c, err := catalog.Open(t.Context(), srv.JS, 1)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			if _, err := c.Add(t.Context(), "p", cp(fmt.Sprintf("loc-%d", i), "k", sumA)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	copies, _, err := c.Get(t.Context(), "p")
	if err != nil || len(copies) != 8 {
		t.Fatalf("Get = %d copies, %v; want 8", len(copies), err)
	}
}

func TestLookup(t *testing.T) {
	srv := bustest.New(t)
	c, err := catalog.Open(t.Context(), srv.JS, 1)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range 200 {
		id := fmt.Sprintf("pkg-%03d", i)
		ids = append(ids, id)
		if i%2 == 0 {
			if _, err := c.Add(t.Context(), id, cp("lta", id+".tar", sumA)); err != nil {
				t.Fatal(err)
			}
		}
	}
	got, err := c.Lookup(t.Context(), ids, 16)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 100 {
		t.Fatalf("Lookup found %d, want 100", len(got))
	}
	if cs := got["pkg-010"]; len(cs) != 1 || cs[0].Key != "pkg-010.tar" {
		t.Errorf("Lookup[pkg-010] = %+v", cs)
	}
	if _, ok := got["pkg-011"]; ok {
		t.Error("Lookup found pkg-011, which was never added")
	}
}

// The catalog is JetStream state: it is still there after the server
// restarts on the same store.
func TestSurvivesServerRestart(t *testing.T) {
	dir := t.TempDir()
	open := func() (*catalog.Catalog, func()) {
		ns, err := natsembed.Start(natsembed.Options{StoreDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		nc, err := nats.Connect(ns.ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		js, _ := jetstream.New(nc)
		c, err := catalog.Open(t.Context(), js, 1)
		if err != nil {
			t.Fatal(err)
		}
		return c, func() { nc.Close(); ns.Shutdown(); ns.WaitForShutdown() }
	}
	c, stop := open()
	if _, err := c.Add(t.Context(), "p", cp("lta", "k", sumA)); err != nil {
		t.Fatal(err)
	}
	stop()
	c, stop = open()
	defer stop()
	copies, known, err := c.Get(t.Context(), "p")
	if err != nil || !known || len(copies) != 1 || copies[0].Files[0].Path != "a.fits" {
		t.Fatalf("after restart Get = %+v, %v, %v", copies, known, err)
	}
}
