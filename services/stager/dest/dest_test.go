package dest_test

import (
	"encoding/json"
	"io/fs"
	"iter"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/ccatobs/ccat-staging/services/stager/dest"
	"github.com/ccatobs/ccat-staging/shared/event"
)

func TestCommitAndPresent(t *testing.T) {
	l := dest.Location{Name: "proc", Root: t.TempDir(), Instance: "i1"}
	if err := l.Prepare(); err != nil {
		t.Fatal(err)
	}
	stage := func(body string) string {
		tmp, err := l.TempDir("p")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tmp, "f"), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return tmp
	}
	m := func(sum string, size int64) dest.Manifest {
		return dest.Manifest{PackageID: "p", Checksum: sum, Files: []event.File{{Path: "f", SizeBytes: size}}}
	}
	if _, ok := l.Present("p", "sha256:a"); ok || l.HasRecord("p") {
		t.Fatal("present (or a record) before staging")
	}
	if c, err := l.Commit(stage("one"), "p", m("sha256:a", 3)); err != nil || c.Already || c.Quarantined != "" {
		t.Fatalf("Commit = %+v, %v", c, err)
	}
	if !l.HasRecord("p") {
		t.Error("no record after commit")
	}
	if _, ok := l.Present("p", "sha256:a"); !ok {
		t.Error("not present after commit")
	}
	if _, ok := l.Present("p", "sha256:b"); ok {
		t.Error("present under another checksum")
	}
	// Same checksum again: the second copy is dropped.
	tmp := stage("one")
	if c, err := l.Commit(tmp, "p", m("sha256:a", 3)); err != nil || !c.Already {
		t.Errorf("second Commit = %+v, %v, want already", c, err)
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Errorf("temp dir of the dropped copy remains: %v", err)
	}
	// A new version takes the old one's place; the old one goes to the
	// quarantine, not away.
	c, err := l.Commit(stage("three"), "p", m("sha256:c", 5))
	if err != nil || c.Already || !strings.HasPrefix(c.Quarantined, ".ccat-staging/quarantine/p-") {
		t.Fatalf("Commit new version = %+v, %v", c, err)
	}
	if b, _ := os.ReadFile(filepath.Join(l.Root, c.Quarantined, "f")); string(b) != "one" {
		t.Errorf("quarantined copy holds %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(l.Final("p"), "f")); string(b) != "three" {
		t.Errorf("final holds %q", b)
	}
	// A truncated file is noticed.
	if err := os.WriteFile(filepath.Join(l.Final("p"), "f"), []byte("thr"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, ok := l.Present("p", "sha256:c"); ok {
		t.Error("present with a truncated file")
	}
	ents, _ := os.ReadDir(l.Root)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if len(names) != 2 {
		t.Errorf("root holds %v, want the package and the sidecar", names)
	}
}

// TestQuarantineKeepsUserFiles: a directory at the final path that is not
// a verified copy (here a user's, with their notes) is moved to the
// quarantine with everything in it, never deleted, and the record says so.
func TestQuarantineKeepsUserFiles(t *testing.T) {
	l := dest.Location{Name: "proc", Root: t.TempDir(), Instance: "i1"}
	if err := l.Prepare(); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(l.Final("p"), "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(l.Final("p"), "sub", "notes.txt"), []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	tmp, err := l.TempDir("p")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "f"), []byte("one"), 0o640); err != nil {
		t.Fatal(err)
	}
	c, err := l.Commit(tmp, "p", dest.Manifest{PackageID: "p", Checksum: "sha256:a", Files: []event.File{{Path: "f", SizeBytes: 3}}})
	if err != nil || c.Already || c.Quarantined == "" {
		t.Fatalf("Commit = %+v, %v, want a quarantine", c, err)
	}
	if b, err := os.ReadFile(filepath.Join(l.Root, c.Quarantined, "sub", "notes.txt")); err != nil || string(b) != "mine" {
		t.Errorf("the user's file in the quarantine: %q, %v", b, err)
	}
	if _, ok := l.Present("p", "sha256:a"); !ok {
		t.Error("the package is not in place")
	}
}

// TestConcurrentCommits: two instances committing the same package at the
// same moment leave one verified copy, which both report (one placed it,
// the other found it already present), and neither removes or quarantines
// the other's verified copy. Many rounds, to meet the race.
func TestConcurrentCommits(t *testing.T) { eachCommitter(t, testConcurrentCommits) }

func testConcurrentCommits(t *testing.T, committer func() *dest.Committer) {
	root := t.TempDir()
	a := dest.Location{Name: "proc", Root: root, Instance: "a", Committer: committer()}
	b := dest.Location{Name: "proc", Root: root, Instance: "b", Committer: committer()}
	if err := a.Prepare(); err != nil {
		t.Fatal(err)
	}
	m := dest.Manifest{PackageID: "p", Checksum: "sha256:a", Files: []event.File{{Path: "f", SizeBytes: 3}}}
	for round := range 100 {
		if _, err := a.Remove("p"); err != nil {
			t.Fatal(err)
		}
		inos, res, errs := commitBoth(t, a, b, m)
		if errs[0] != nil || errs[1] != nil {
			t.Fatalf("round %d: Commit errors %v, %v", round, errs[0], errs[1])
		}
		if res[0].Already == res[1].Already || res[0].Quarantined != "" || res[1].Quarantined != "" {
			t.Fatalf("round %d: results %+v and %+v, want one placed and one already present, nothing quarantined", round, res[0], res[1])
		}
		placed := 0
		if res[0].Already {
			placed = 1
		}
		if got := inode(t, a.Final("p")); got != inos[placed] {
			t.Fatalf("round %d: the final path is not the copy the placing commit reported", round)
		}
		if _, ok := b.Present("p", "sha256:a"); !ok {
			t.Fatalf("round %d: no verified copy in place", round)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(root, ".ccat-staging", "quarantine")); len(ents) != 0 {
		t.Errorf("quarantine holds %d entries, want none", len(ents))
	}
}

// TestConcurrentCommitsWithoutLock: where the commit lock does not reach
// (hosts whose file system does not share flocks), two instances replacing
// the same stale copy still leave one verified copy that both report: the
// stale copy is quarantined once, and a verified copy moved by the other
// instance's quarantine step is noticed and put back.
func TestConcurrentCommitsWithoutLock(t *testing.T) {
	eachCommitter(t, testConcurrentCommitsWithoutLock)
}

func testConcurrentCommitsWithoutLock(t *testing.T, committer func() *dest.Committer) {
	root := shmDir(t) // fsync costs nothing there, so the commits overlap more
	a := dest.WithoutLock(dest.Location{Name: "proc", Root: root, Instance: "a", Committer: committer()})
	b := dest.WithoutLock(dest.Location{Name: "proc", Root: root, Instance: "b", Committer: committer()})
	if err := a.Prepare(); err != nil {
		t.Fatal(err)
	}
	m := dest.Manifest{PackageID: "p", Checksum: "sha256:a", Files: []event.File{{Path: "f", SizeBytes: 3}}}
	const rounds = 100
	for round := range rounds {
		if _, err := a.Remove("p"); err != nil {
			t.Fatal(err)
		}
		// A stale copy: the record will name f with 3 bytes, this has 5.
		if err := os.MkdirAll(a.Final("p"), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(a.Final("p"), "f"), []byte("stale"), 0o640); err != nil {
			t.Fatal(err)
		}
		inos, res, errs := commitBoth(t, a, b, m)
		if errs[0] != nil || errs[1] != nil {
			t.Fatalf("round %d: Commit errors %v, %v", round, errs[0], errs[1])
		}
		if res[0].Already == res[1].Already {
			t.Fatalf("round %d: results %+v and %+v, want one placed and one already present", round, res[0], res[1])
		}
		placed := 0
		if res[0].Already {
			placed = 1
		}
		if got := inode(t, a.Final("p")); got != inos[placed] {
			t.Fatalf("round %d: the final path is not the copy the placing commit reported", round)
		}
		if _, ok := b.Present("p", "sha256:a"); !ok {
			t.Fatalf("round %d: no verified copy in place", round)
		}
	}
	// Every stale copy quarantined exactly once, and nothing else.
	ents, err := os.ReadDir(filepath.Join(root, ".ccat-staging", "quarantine"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != rounds {
		t.Errorf("quarantine holds %d entries, want %d (one stale copy a round)", len(ents), rounds)
	}
	for _, e := range ents {
		if b, err := os.ReadFile(filepath.Join(root, ".ccat-staging", "quarantine", e.Name(), "f")); err != nil || string(b) != "stale" {
			t.Errorf("quarantined %s holds %q, %v: a verified copy was quarantined", e.Name(), b, err)
		}
	}
}

// eachCommitter runs test with instances committing alone (no Committer)
// and through a Committer each, as the stager's are.
// commitBoth extracts package "p" (one file f, "one") into a temp dir of
// each of a and b and commits both at once. It returns the temp dirs'
// inodes (to tell whose copy ended up in place) and each commit's result.
func commitBoth(t *testing.T, a, b dest.Location, m dest.Manifest) (inos [2]uint64, res [2]dest.Committed, errs [2]error) {
	t.Helper()
	var tmps [2]string
	for i, l := range []dest.Location{a, b} {
		tmp, err := l.TempDir("p")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tmp, "f"), []byte("one"), 0o640); err != nil {
			t.Fatal(err)
		}
		tmps[i], inos[i] = tmp, inode(t, tmp)
	}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, l := range []dest.Location{a, b} {
		wg.Go(func() {
			<-start
			res[i], errs[i] = l.Commit(tmps[i], "p", m)
		})
	}
	close(start)
	wg.Wait()
	return inos, res, errs
}

func eachCommitter(t *testing.T, test func(*testing.T, func() *dest.Committer)) {
	for _, tc := range []struct {
		name      string
		committer func() *dest.Committer
	}{
		{"alone", func() *dest.Committer { return nil }},
		{"grouped", func() *dest.Committer { return dest.NewCommitter(nil) }},
	} {
		t.Run(tc.name, func(t *testing.T) { test(t, tc.committer) })
	}
}

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	st, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Ino
}

// TestTempDirPerms: the extraction directory has the location's mode from
// the start, whatever the umask.
func TestTempDirPerms(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	l := dest.Location{Name: "proc", Root: t.TempDir(), Instance: "i1", Perms: dest.Perms{DirMode: fs.ModeSetgid | 0o750}}
	tmp, err := l.TempDir("p")
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(tmp)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode() != fs.ModeDir|fs.ModeSetgid|0o750 {
		t.Errorf("temp dir mode %v, want drwxr-s---", st.Mode())
	}
}

// list is a FileList over a slice.
type list []event.File

func (l list) Len() int                  { return len(l) }
func (l list) All() iter.Seq[event.File] { return slices.Values(l) }

// TestRecordStreams: a record written from a FileList reads back as the
// same files, Present counts them without keeping them, and a record whose
// files do not match the tree is not present.
func TestRecordStreams(t *testing.T) {
	l := dest.Location{Name: "proc", Root: t.TempDir(), Instance: "i1"}
	if err := l.Prepare(); err != nil {
		t.Fatal(err)
	}
	tmp, err := l.TempDir("p")
	if err != nil {
		t.Fatal(err)
	}
	files := list{{Path: "a", SizeBytes: 1, SHA256: strings.Repeat("a", 64)}, {Path: "d/b", SizeBytes: 2}, {Path: `q"uote`, SizeBytes: 0}}
	for _, f := range files {
		p := filepath.Join(tmp, filepath.FromSlash(f.Path))
		if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(strings.Repeat("x", int(f.SizeBytes))), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Commit(tmp, "p", dest.Manifest{PackageID: "p", Checksum: "sha256:a", SizeBytes: 3, List: files}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(l.Root, ".ccat-staging", "manifests", "p.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m dest.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("record is not JSON: %v\n%s", err, b)
	}
	if !slices.Equal(m.Files, []event.File(files)) || m.SizeBytes != 3 || m.DirMode != "2750" || m.FileMode != "0640" || m.GID == nil {
		t.Errorf("record = %+v", m)
	}
	got, ok := l.Present("p", "sha256:a")
	if !ok || got.Count() != 3 || got.Files != nil || got.SizeBytes != 3 || got.DirMode != "2750" {
		t.Errorf("Present = %+v, %v", got, ok)
	}
	if err := os.Remove(filepath.Join(l.Final("p"), "d", "b")); err != nil {
		t.Fatal(err)
	}
	if _, ok := l.Present("p", "sha256:a"); ok {
		t.Error("present with a file missing")
	}
}

// shmDir returns a fresh directory on /dev/shm when there is one.
func shmDir(t *testing.T) string {
	d, err := os.MkdirTemp("/dev/shm", "dest-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}
