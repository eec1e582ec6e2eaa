package dest_test

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/services/stager/dest"
	"github.com/ccatobs/ccat-staging/shared/event"
)

// holdLock takes the location's commit lock as another instance on the
// same root would, and returns its release.
func holdLock(t *testing.T, l dest.Location) func() {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(l.Root, ".ccat-staging", "commit.lock"), os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release := func() { once.Do(func() { f.Close() }) }
	t.Cleanup(release)
	return release
}

// waitQueued waits until n commits are queued on c (they are blocked
// behind the lock the test holds, so they cannot leave the queue).
func waitQueued(t *testing.T, c *dest.Committer, n int) {
	t.Helper()
	for i := 0; dest.Queued(c) < n; i++ {
		if i == 6000 {
			t.Fatalf("%d commits queued, want %d", dest.Queued(c), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// batches counts the batches a Committer reports and their items.
type batches struct {
	mu    sync.Mutex
	sizes []int
}

func (b *batches) observe(n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sizes = append(b.sizes, n)
}

func (b *batches) get() []int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]int(nil), b.sizes...)
}

// stageTree makes a temp dir for pkg holding one file f of "one".
func stageTree(t *testing.T, l dest.Location, pkg string) string {
	t.Helper()
	tmp, err := l.TempDir(pkg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "f"), []byte("one"), 0o640); err != nil {
		t.Fatal(err)
	}
	return tmp
}

func manifest(pkg string) dest.Manifest {
	return dest.Manifest{PackageID: pkg, Checksum: "sha256:" + pkg, Files: []event.File{{Path: "f", SizeBytes: 3}}}
}

// TestGroupCommit: commits of one location that queue while another
// instance holds the commit lock land nowhere until it is released, then
// all land verified in batches: the lock is taken fewer times than there
// are commits. Each case sets which commit (if any) has lost its tree by
// the time its batch runs: it fails alone, the others of its batch land.
func TestGroupCommit(t *testing.T) {
	const n = 32
	for _, tc := range []struct {
		name    string
		missing int // index of the commit whose tree is gone, or -1
	}{
		{"all land", -1},
		{"a missing tree fails alone", 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got batches
			l := dest.Location{Name: "proc", Root: t.TempDir(), Instance: "i1", Committer: dest.NewCommitter(got.observe)}
			if err := l.Prepare(); err != nil {
				t.Fatal(err)
			}
			release := holdLock(t, l)
			var (
				wg   sync.WaitGroup
				tmps [n]string
				res  [n]dest.Committed
				errs [n]error
			)
			for i := range n {
				pkg := fmt.Sprintf("p%02d", i)
				tmps[i] = stageTree(t, l, pkg)
				wg.Go(func() { res[i], errs[i] = l.Commit(tmps[i], pkg, manifest(pkg)) })
			}
			waitQueued(t, l.Committer, n)
			for i := range n {
				if _, err := os.Lstat(l.Final(fmt.Sprintf("p%02d", i))); err == nil {
					t.Fatalf("p%02d landed while another instance held the commit lock", i)
				}
			}
			if tc.missing >= 0 {
				// Its record is written; its tree goes before the rename.
				if err := os.RemoveAll(tmps[tc.missing]); err != nil {
					t.Fatal(err)
				}
			}
			release()
			wg.Wait()
			sizes, total := got.get(), 0
			for _, s := range sizes {
				total += s
			}
			if total != n || len(sizes) >= n {
				t.Errorf("batches %v: want %d commits in fewer batches", sizes, n)
			}
			for i := range n {
				pkg := fmt.Sprintf("p%02d", i)
				_, present := l.Present(pkg, "sha256:"+pkg)
				if i == tc.missing {
					if errs[i] == nil || present {
						t.Errorf("%s (tree missing): Commit = %+v, %v, present %v; want an error", pkg, res[i], errs[i], present)
					}
					continue
				}
				if errs[i] != nil || res[i].Already || res[i].Quarantined != "" || !present {
					t.Errorf("%s: Commit = %+v, %v, present %v; want placed", pkg, res[i], errs[i], present)
				}
			}
			// No record temp file is left behind, whatever the outcome.
			ents, err := os.ReadDir(filepath.Join(l.Root, ".ccat-staging", "manifests"))
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ents {
				if e.Name()[0] == '.' {
					t.Errorf("left in the manifests: %s", e.Name())
				}
			}
		})
	}
}

// TestGroupCommitSamePackage: two commits of one package queued together
// are not one batch: the second sees the first's copy in place and drops
// its own, as it would committing after it.
func TestGroupCommitSamePackage(t *testing.T) {
	var got batches
	l := dest.Location{Name: "proc", Root: t.TempDir(), Instance: "i1", Committer: dest.NewCommitter(got.observe)}
	if err := l.Prepare(); err != nil {
		t.Fatal(err)
	}
	release := holdLock(t, l)
	var (
		wg   sync.WaitGroup
		tmps [2]string
		inos [2]uint64
		res  [2]dest.Committed
		errs [2]error
	)
	for i := range tmps {
		tmps[i] = stageTree(t, l, "p")
		inos[i] = inode(t, tmps[i])
		wg.Go(func() { res[i], errs[i] = l.Commit(tmps[i], "p", manifest("p")) })
	}
	waitQueued(t, l.Committer, 2)
	release()
	wg.Wait()
	if errs[0] != nil || errs[1] != nil || res[0].Already == res[1].Already || res[0].Quarantined != "" || res[1].Quarantined != "" {
		t.Fatalf("results %+v, %v and %+v, %v: want one placed and one already present", res[0], errs[0], res[1], errs[1])
	}
	if sizes := got.get(); len(sizes) != 2 || sizes[0] != 1 || sizes[1] != 1 {
		t.Errorf("batches %v, want [1 1]", sizes)
	}
	placed := 0
	if res[0].Already {
		placed = 1
	}
	if inode(t, l.Final("p")) != inos[placed] {
		t.Error("the final path is not the copy the placing commit reported")
	}
	if _, ok := l.Present("p", "sha256:p"); !ok {
		t.Error("no verified copy in place")
	}
	if _, err := os.Stat(tmps[1-placed]); !os.IsNotExist(err) {
		t.Errorf("the dropped copy's temp dir remains: %v", err)
	}
}
