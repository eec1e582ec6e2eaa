package scenario

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/ccatobs/ccat-staging/bench/harness"
)

// hollow leaves no file's data behind and the tree's inodes in the trash.
func TestHollow(t *testing.T) {
	base := t.TempDir()
	out := filepath.Join(base, "out")
	if err := os.MkdirAll(filepath.Join(out, "a", "b"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"x", "a/y", "a/b/z"} {
		if err := os.WriteFile(filepath.Join(out, f), make([]byte, 4096), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	env := harness.Env{Trash: filepath.Join(base, ".trash")}
	if err := hollow(env, out); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatalf("output still there: %v", err)
	}
	files := 0
	err := filepath.WalkDir(env.Trash, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		files++
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		if st.Size() != 0 {
			t.Errorf("%s in the trash has %d bytes, want 0", p, st.Size())
		}
		return nil
	})
	if err != nil || files != 3 {
		t.Fatalf("trash holds %d files (%v), want the 3 emptied ones", files, err)
	}
	if err := hollow(env, out); err != nil {
		t.Fatalf("hollow of a missing dir: %v", err)
	}
}
