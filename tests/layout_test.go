package tests

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const modulePrefix = "github.com/ccatobs/ccat-staging/"

// The repository's layout holds: shared/ holds no test helper (they live in
// devkit), production code never imports devkit, and no module needs the
// tests module (tests are what nothing depends on). A move that breaks either fails here rather than in
// a reviewer's eye.
func TestLayout(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}

	t.Run("no module requires the tests module", func(t *testing.T) {
		mods, err := filepath.Glob(filepath.Join(root, "*", "go.mod"))
		if err != nil {
			t.Fatal(err)
		}
		more, _ := filepath.Glob(filepath.Join(root, "*", "*", "go.mod"))
		mods = append(mods, more...)
		if len(mods) < 10 {
			t.Fatalf("found %d go.mod files under %s; is this the repository?", len(mods), root)
		}
		for _, m := range mods {
			b, err := os.ReadFile(m)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(b), modulePrefix+"tests ") {
				rel, _ := filepath.Rel(root, m)
				t.Errorf("%s requires or replaces the tests module", rel)
			}
		}
	})

	t.Run("shared has no test helper package", func(t *testing.T) {
		for file, imp := range imports(t, filepath.Join(root, "shared"), "testing") {
			rel, _ := filepath.Rel(root, file)
			t.Errorf("%s imports %s: a test helper belongs in devkit (or shared/internal for shared's own tests)", rel, imp)
		}
	})

	// Production packages: what a service binary or shared/ builds from.
	// The demo and bench run the pipeline in one process and may use devkit.
	for _, dir := range []string{"shared", "services/planner", "services/stager", "services/ledger", "services/stagectl"} {
		t.Run(dir+" imports no devkit package outside its tests", func(t *testing.T) {
			for file, imp := range imports(t, filepath.Join(root, dir), modulePrefix+"devkit") {
				rel, _ := filepath.Rel(root, file)
				t.Errorf("%s imports %s", rel, imp)
			}
		})
	}
}

// imports returns the imports of the non-test Go files under dir that are
// prefix or below it, as file → path (one per file suffices to name a
// culprit). Directories named internal are skipped when prefix is
// "testing": an internal helper for a module's own tests is not surface.
func imports(t *testing.T, dir, prefix string) map[string]string {
	t.Helper()
	out := map[string]string{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || (d.Name() == "internal" && prefix == "testing")) {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		for _, s := range f.Imports {
			p, _ := strconv.Unquote(s.Path.Value)
			if p == prefix || strings.HasPrefix(p, prefix+"/") {
				out[path] = p
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
