package unpack_test

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/services/stager/internal/tartest"
	"github.com/ccatobs/ccat-staging/services/stager/unpack"
	"golang.org/x/sys/unix"
)

// fuzzDepth is how deep below the fuzz's own temp dir the destination
// lies: a name climbing fewer levels than this lands inside the temp dir
// and is caught by the walk; one climbing more is checked by name.
const fuzzDepth = 4

// FuzzExtract: whatever the bytes, Extract never panics and nothing is
// created outside the destination directory; whatever it leaves inside is
// a regular file, a directory or a symlink; and when it succeeds every
// link, resolved by the kernel in the extracted tree (links through links
// included), stays inside. Seeds: the archives below, the link chains of
// TestLinkChains and testdata/fuzz/FuzzExtract.
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
	for _, c := range linkChains {
		f.Add(tartest.Build(f, c.entries...))
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
		_, extractErr := unpack.Extract(t.Context(), bytes.NewReader(b), dir, unpack.Options{
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
			default:
				t.Fatalf("special file left in the destination: %s (%v)", rel, d.Type())
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if extractErr == nil {
			// A failed extraction is removed before anything is visible;
			// a successful one must hold no link that leads out.
			assertLinksInside(t, dir)
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

// assertLinksInside resolves every symlink under dir with the kernel
// (openat2 with RESOLVE_BENEATH, which fails with EXDEV when any step of the
// resolution leaves dir) and with filepath.EvalSymlinks, and fails the test
// for each one that leads outside. A link the kernel cannot follow (it
// dangles, or loops) does not lead anywhere and passes.
func assertLinksInside(t testing.TB, dir string) {
	t.Helper()
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Type()&fs.ModeSymlink == 0 {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		target, _ := os.Readlink(p)
		lfd, err := unix.Openat2(fd, rel, &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS})
		if err == nil {
			unix.Close(lfd)
		} else if errors.Is(err, unix.EXDEV) {
			t.Errorf("symlink %s -> %s: the kernel resolves it outside the destination", rel, target)
		}
		if r, err := filepath.EvalSymlinks(p); err == nil && r != realDir && !strings.HasPrefix(r, realDir+string(filepath.Separator)) {
			t.Errorf("symlink %s -> %s resolves to %s, outside the destination", rel, target, r)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
