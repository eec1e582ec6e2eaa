package unpack_test

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/services/stager/unpack"
)

// fuzzDepth is how deep below the fuzz's own temp dir the destination
// lies: a name climbing fewer levels than this lands inside the temp dir
// and is caught by the walk; one climbing more is checked by name.
const fuzzDepth = 4

// FuzzExtract: whatever the bytes, Extract never panics and nothing is
// created outside the destination directory; whatever it leaves inside is
// a regular file, a directory, or a symlink whose target stays inside.
// Seeds: the archives below and testdata/fuzz/FuzzExtract.
func FuzzExtract(f *testing.F) {
	seed := func(entries ...tar.Header) []byte {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, h := range entries {
			data := []byte(nil)
			if h.Typeflag == tar.TypeReg {
				data = []byte("x")
				h.Size = 1
			}
			if h.Mode == 0 {
				h.Mode = 0o644
			}
			if err := tw.WriteHeader(&h); err != nil {
				f.Fatal(err)
			}
			tw.Write(data)
		}
		tw.Close()
		return buf.Bytes()
	}
	up := strings.Repeat("../", fuzzDepth+2)
	for _, s := range [][]byte{
		seed(tar.Header{Typeflag: tar.TypeDir, Name: "d/"}, tar.Header{Typeflag: tar.TypeReg, Name: "d/f"}),
		seed(tar.Header{Typeflag: tar.TypeReg, Name: "../escape"}),
		seed(tar.Header{Typeflag: tar.TypeReg, Name: up + "escape"}),
		seed(tar.Header{Typeflag: tar.TypeReg, Name: "/tmp/escape"}),
		seed(tar.Header{Typeflag: tar.TypeSymlink, Name: "l", Linkname: ".."}, tar.Header{Typeflag: tar.TypeReg, Name: "l/escape"}),
		seed(tar.Header{Typeflag: tar.TypeSymlink, Name: "l", Linkname: "/"}),
		seed(tar.Header{Typeflag: tar.TypeSymlink, Name: "a/l", Linkname: "../../x"}),
		seed(tar.Header{Typeflag: tar.TypeReg, Name: "f"}, tar.Header{Typeflag: tar.TypeLink, Name: "h", Linkname: "f"}),
		seed(tar.Header{Typeflag: tar.TypeLink, Name: "h", Linkname: "../escape"}),
		seed(tar.Header{Typeflag: tar.TypeFifo, Name: "p"}),
		seed(tar.Header{Typeflag: tar.TypeReg, Name: "a"}, tar.Header{Typeflag: tar.TypeReg, Name: "./a"}),
		seed(tar.Header{Typeflag: tar.TypeReg, Name: "x", PAXRecords: map[string]string{"comment": "hi"}}),
		[]byte("not a tar at all"),
		{},
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		base := fuzzDir(t)
		dir := base
		for i := range fuzzDepth {
			dir = filepath.Join(dir, "d"+string(rune('0'+i)))
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		_, _ = unpack.Extract(t.Context(), bytes.NewReader(b), dir, unpack.Options{
			Size: int64(len(b)), SHA256: hex.EncodeToString(sum[:]), MaxEntries: 64,
		})
		// Inside base, only dir's ancestors and dir's tree may exist.
		err := filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(dir, p)
			if rel == ".." || strings.HasPrefix(rel, "../") {
				if !d.IsDir() || !strings.HasPrefix(dir, p) {
					t.Fatalf("created outside the destination: %s", p)
				}
				return nil
			}
			switch {
			case d.Type().IsRegular() || d.IsDir():
			case d.Type()&fs.ModeSymlink != 0:
				target, err := os.Readlink(p)
				if err != nil {
					t.Fatal(err)
				}
				resolved := path.Join(path.Dir(filepath.ToSlash(rel)), target)
				if path.IsAbs(target) || resolved == ".." || strings.HasPrefix(resolved, "../") {
					t.Fatalf("symlink %s -> %s leads outside the destination", rel, target)
				}
			default:
				t.Fatalf("special file left in the destination: %s (%v)", rel, d.Type())
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		// Names climbing out further than base: look where they would land.
		tr := tar.NewReader(bytes.NewReader(b))
		for {
			h, err := tr.Next()
			if err != nil {
				break
			}
			for _, name := range []string{h.Name, h.Linkname} {
				if name == "" || strings.ContainsRune(name, 0) {
					continue
				}
				p := filepath.Join(dir, filepath.FromSlash(name))
				if path.IsAbs(name) {
					p = filepath.Clean(name)
				}
				if strings.HasPrefix(p, base+string(filepath.Separator)) {
					continue // covered by the walk
				}
				if createdSinceStart(p) {
					t.Fatalf("entry %q created %s outside the destination", name, p)
				}
			}
		}
	})
}

// fuzzDir returns a fresh directory, on /dev/shm when there is one: Extract
// syncs every file and directory it writes, and on a disk that makes each
// run cost milliseconds, on tmpfs nothing.
func fuzzDir(t *testing.T) string {
	d, err := os.MkdirTemp("/dev/shm", "fuzz-extract-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// createdSinceStart reports whether p is a non-directory that appeared or
// changed after this test binary started. Existing files of the machine
// (/etc/passwd) are older; directories are skipped because creating test
// dirs touches /tmp itself, and nothing can be written into a directory
// outside without also leaving a file there.
func createdSinceStart(p string) bool {
	st, err := os.Lstat(p)
	return err == nil && !st.IsDir() && !st.ModTime().Before(started)
}

var started = time.Now().Add(-time.Second)
