package dest_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/ccatobs/ccat-staging/services/stager/dest"
	"github.com/ccatobs/ccat-staging/shared/event"
)

// Remove deletes the record and the package directory, frees its bytes,
// treats a missing copy as nothing to do, and never touches anything but
// <root>/<package>.
func TestRemove(t *testing.T) {
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "keep"), []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	l := dest.Location{Name: "proc", Root: t.TempDir(), Instance: "i1"}
	if err := l.Prepare(); err != nil {
		t.Fatal(err)
	}
	tmp, err := l.TempDir("p")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(tmp, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{"a": "12345", "sub/b": "123"} {
		if err := os.WriteFile(filepath.Join(tmp, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A link inside the package must be removed as a link, not followed.
	if err := os.Symlink(outside, filepath.Join(tmp, "link")); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Commit(tmp, "p", dest.Manifest{PackageID: "p", Checksum: "sha256:a", Files: []event.File{{Path: "a", SizeBytes: 5}}}); err != nil {
		t.Fatal(err)
	}
	// A link at the final path of another package is removed, not followed.
	if err := os.Symlink(outside, l.Final("q")); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name      string
		pkg       string
		freed     int64
		outOfRoot bool
	}{
		{"staged copy", "p", 8, false},
		{"again: nothing left", "p", 0, false},
		{"never staged", "never", 0, false},
		{"symlink in place", "q", 0, false},
		{"parent", "..", 0, true},
		{"path", "../x", 0, true},
		{"hidden", ".ccat-staging", 0, true},
		{"empty", "", 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			freed, err := l.Remove(tc.pkg)
			if tc.outOfRoot {
				if !errors.Is(err, dest.ErrOutsideRoot) {
					t.Fatalf("Remove(%q) = %d, %v; want ErrOutsideRoot", tc.pkg, freed, err)
				}
				return
			}
			if err != nil || freed != tc.freed {
				t.Fatalf("Remove(%q) = %d, %v; want %d freed", tc.pkg, freed, err, tc.freed)
			}
			if _, err := os.Lstat(l.Final(tc.pkg)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s still there: %v", tc.pkg, err)
			}
			if _, ok := l.Present(tc.pkg, "sha256:a"); ok || l.HasRecord(tc.pkg) {
				t.Errorf("%s still present (or its record)", tc.pkg)
			}
		})
	}
	if b, err := os.ReadFile(filepath.Join(outside, "keep")); err != nil || string(b) != "precious" {
		t.Errorf("file outside the root: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(l.Root, ".ccat-staging", "manifests")); err != nil {
		t.Errorf("sidecar damaged: %v", err)
	}
	ents, _ := os.ReadDir(l.Root)
	for _, e := range ents {
		if e.Name() != ".ccat-staging" {
			t.Errorf("left in the root: %s", e.Name())
		}
	}
}
