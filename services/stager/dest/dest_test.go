package dest_test

import (
	"os"
	"path/filepath"
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
	if _, ok := l.Present("p", "sha256:a"); ok {
		t.Fatal("present before staging")
	}
	if already, err := l.Commit(stage("one"), "p", m("sha256:a", 3)); err != nil || already {
		t.Fatalf("Commit = %v, %v", already, err)
	}
	if _, ok := l.Present("p", "sha256:a"); !ok {
		t.Error("not present after commit")
	}
	if _, ok := l.Present("p", "sha256:b"); ok {
		t.Error("present under another checksum")
	}
	// Same checksum again: the second copy is dropped.
	tmp := stage("one")
	if already, err := l.Commit(tmp, "p", m("sha256:a", 3)); err != nil || !already {
		t.Errorf("second Commit = %v, %v, want already", already, err)
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Errorf("temp dir of the dropped copy remains: %v", err)
	}
	// A new version replaces the old one.
	if already, err := l.Commit(stage("three"), "p", m("sha256:c", 5)); err != nil || already {
		t.Fatalf("Commit new version = %v, %v", already, err)
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
