package unpack_test

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ccatobs/ccat-staging/services/stager/internal/tartest"
	"github.com/ccatobs/ccat-staging/services/stager/unpack"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/fault"
)

// target makes <tmp>/outside/ (a sibling that must stay empty) and
// <tmp>/root/pkg/ (the extraction dir), and returns both.
func target(t *testing.T) (dir, outside string) {
	base := t.TempDir()
	outside = filepath.Join(base, "outside")
	dir = filepath.Join(base, "root", "pkg")
	for _, d := range []string{outside, dir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir, outside
}

func opts(b []byte) unpack.Options {
	return unpack.Options{Size: int64(len(b)), SHA256: tartest.SHA256(b)}
}

func TestExtract(t *testing.T) {
	tb := tartest.Build(t,
		tartest.Dir("./"),
		tartest.Dir("./data/"),
		tartest.File("./data/a.fits", "alpha"),
		tartest.File("data/sub/b.fits", strings.Repeat("b", 3<<20)),
		tartest.Entry{Name: "run.sh", Body: "#!/bin/sh\n", Mode: 0o755},
		tartest.Symlink("latest", "data/a.fits"),
		tartest.Symlink("data/sub/up", "../a.fits"),
		tartest.Hardlink("copy.fits", "data/a.fits"),
		tartest.File("empty", ""),
	)
	dir, _ := target(t)
	o := opts(tb)
	o.Files = []event.File{{Path: "data/a.fits", SizeBytes: 5, SHA256: tartest.SHA256([]byte("alpha"))}}
	o.FileMode = 0o750 // a location that lets the group run scripts
	res, err := unpack.Extract(t.Context(), bytes.NewReader(tb), dir, o)
	if err != nil {
		t.Fatalf("Extract: %v", err)
	}
	if res.SHA256 != tartest.SHA256(tb) || res.Bytes != int64(len(tb)) {
		t.Errorf("result digest/size = %s/%d, want %s/%d", res.SHA256, res.Bytes, tartest.SHA256(tb), len(tb))
	}
	var names []string
	for f := range res.Files.All() {
		names = append(names, f.Path)
		b, err := os.ReadFile(filepath.Join(dir, f.Path))
		if err != nil {
			t.Fatalf("read %s: %v", f.Path, err)
		}
		if tartest.SHA256(b) != f.SHA256 || int64(len(b)) != f.SizeBytes {
			t.Errorf("%s on disk does not match its record", f.Path)
		}
	}
	want := []string{"data/a.fits", "data/sub/b.fits", "run.sh", "copy.fits", "empty"}
	if !slices.Equal(names, want) {
		t.Errorf("files = %v, want %v", names, want)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "data/sub/up")); err != nil || string(b) != "alpha" {
		t.Errorf("symlink inside package: %q, %v", b, err)
	}
	if st, err := os.Stat(filepath.Join(dir, "run.sh")); err != nil || st.Mode().Perm() != 0o750 {
		t.Errorf("run.sh: %v %v, want mode 0750 (archive 0755 within the location's 0750)", st, err)
	}
	if st, err := os.Stat(filepath.Join(dir, "empty")); err != nil || st.Mode().Perm() != 0o640 {
		t.Errorf("empty: %v %v, want mode 0640 (archive 0644 within 0750, no exec bit)", st, err)
	}
}

func reasonOf(err error) string { return fault.Reason(err, "") }

// TestHostileArchives is the tar-slip corpus: each archive must be refused
// as unsafe_archive, permanently, with nothing written outside the target.
func TestHostileArchives(t *testing.T) {
	big := strings.Repeat("x", 2048)
	tests := []struct {
		name    string
		entries []tartest.Entry
		tweak   func(*unpack.Options)
	}{
		{"absolute path", []tartest.Entry{tartest.File("/tmp/evil", "x")}, nil},
		{"dotdot path", []tartest.Entry{tartest.File("../outside/evil", "x")}, nil},
		{"dotdot inside path", []tartest.Entry{tartest.File("a/../../outside/evil", "x")}, nil},
		{"absolute symlink", []tartest.Entry{tartest.Symlink("l", "/etc/passwd")}, nil},
		{"relative symlink escape", []tartest.Entry{tartest.Symlink("l", "../outside")}, nil},
		{"deep symlink escape", []tartest.Entry{tartest.Dir("a/"), tartest.Symlink("a/l", "../../outside/x")}, nil},
		{"write through planted symlink", []tartest.Entry{tartest.Symlink("l", "."), tartest.File("l/f", "x")}, nil},
		{"hardlink escape", []tartest.Entry{tartest.Hardlink("h", "../outside/x")}, nil},
		{"hardlink to absolute", []tartest.Entry{tartest.Hardlink("h", "/etc/passwd")}, nil},
		{"hardlink to unknown file", []tartest.Entry{tartest.Hardlink("h", "nothere")}, nil},
		{"char device", []tartest.Entry{{Name: "dev", Type: tar.TypeChar}}, nil},
		{"block device", []tartest.Entry{{Name: "blk", Type: tar.TypeBlock}}, nil},
		{"fifo", []tartest.Entry{{Name: "fifo", Type: tar.TypeFifo}}, nil},
		{"duplicate file", []tartest.Entry{tartest.File("a", "1"), tartest.File("a", "2")}, nil},
		{"duplicate via ./", []tartest.Entry{tartest.File("a", "1"), tartest.File("./a", "2")}, nil},
		{"file then dir of same name", []tartest.Entry{tartest.File("a", "1"), tartest.File("a/b", "2")}, nil},
		// Name conflicts are properties of the archive: permanent at the
		// first read, not an io_error retried until retries_exhausted.
		{"file over implicit dir", []tartest.Entry{tartest.File("a/f", "1"), tartest.File("a", "2")}, nil},
		{"file over explicit dir", []tartest.Entry{tartest.Dir("a/"), tartest.File("a", "2")}, nil},
		{"symlink over implicit dir", []tartest.Entry{tartest.File("a/f", "1"), tartest.Symlink("a", "b")}, nil},
		{"hardlink over implicit dir", []tartest.Entry{tartest.File("f", "1"), tartest.File("a/g", "1"), tartest.Hardlink("a", "f")}, nil},
		{"dir over file", []tartest.Entry{tartest.File("a", "1"), tartest.Dir("a/")}, nil},
		{"dir over symlink", []tartest.Entry{tartest.Symlink("a", "b"), tartest.Dir("a/")}, nil},
		{"duplicate dir", []tartest.Entry{tartest.Dir("a/"), tartest.Dir("a/")}, nil},
		{"duplicate symlink", []tartest.Entry{tartest.Symlink("a", "b"), tartest.Symlink("a", "c")}, nil},
		{"hardlink over file", []tartest.Entry{tartest.File("f", "1"), tartest.File("g", "1"), tartest.Hardlink("g", "f")}, nil},
		{"name too long", []tartest.Entry{tartest.File(strings.Repeat("n", 256), "1")}, nil},
		{"hardlink through a symlink", []tartest.Entry{tartest.Dir("d/"), tartest.File("d/f", "1"), tartest.Symlink("l", "d"), tartest.Hardlink("h", "l/f")}, nil},
		{"too many entries", []tartest.Entry{tartest.File("a", "1"), tartest.File("b", "2"), tartest.File("c", "3")},
			func(o *unpack.Options) { o.MaxEntries = 2 }},
		{"too many entries with the directories they need", []tartest.Entry{tartest.File("a/b/c", "1")},
			func(o *unpack.Options) { o.MaxEntries = 2 }},
		{"too many bytes", []tartest.Entry{tartest.File("a", big), tartest.File("b", big)},
			func(o *unpack.Options) { o.MaxTotalBytes = 3000 }},
		{"root entry that is a file", []tartest.Entry{tartest.File(".", "x")}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tb := tartest.Build(t, tt.entries...)
			dir, outside := target(t)
			o := opts(tb)
			if tt.tweak != nil {
				tt.tweak(&o)
			}
			_, err := unpack.Extract(t.Context(), bytes.NewReader(tb), dir, o)
			if reasonOf(err) != event.ReasonUnsafeArchive || !fault.IsPermanent(err) {
				t.Fatalf("Extract = %v (reason %q), want permanent unsafe_archive", err, reasonOf(err))
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 0 {
				t.Errorf("written outside the target: %v", ents)
			}
			if ents, _ := os.ReadDir(filepath.Dir(dir)); len(ents) != 1 {
				t.Errorf("written beside the target: %v", ents)
			}
		})
	}
}

func TestMalformedTar(t *testing.T) {
	junk := bytes.Repeat([]byte{0xA5}, 1024)
	dir, _ := target(t)
	_, err := unpack.Extract(t.Context(), bytes.NewReader(junk), dir, opts(junk))
	if reasonOf(err) != event.ReasonUnsafeArchive || !fault.IsPermanent(err) {
		t.Fatalf("Extract = %v, want permanent unsafe_archive", err)
	}
}

// failingReader returns its bytes, then a read error: a connection cut.
type failingReader struct {
	r io.Reader
}

func (f *failingReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, errors.New("connection reset by peer")
	}
	return n, err
}

func TestVerification(t *testing.T) {
	good := tartest.Build(t, tartest.File("a", strings.Repeat("a", 5000)), tartest.File("b", "bee"))
	flipped := bytes.Clone(good)
	flipped[512+100] ^= 1 // inside a's contents: the tar still parses
	tests := []struct {
		name      string
		src       io.Reader
		o         unpack.Options
		reason    string
		permanent bool
	}{
		{"bit flip", bytes.NewReader(flipped), opts(good), event.ReasonChecksumMismatch, true},
		{"truncated", bytes.NewReader(good[:3000]), opts(good), event.ReasonSizeMismatch, true},
		{"too long", io.MultiReader(bytes.NewReader(good), bytes.NewReader(make([]byte, 10240))), opts(good), event.ReasonSizeMismatch, true},
		{"wrong expected checksum", bytes.NewReader(good), unpack.Options{Size: int64(len(good)), SHA256: strings.Repeat("0", 64)}, event.ReasonChecksumMismatch, true},
		{"manifest mismatch", bytes.NewReader(good), func() unpack.Options {
			o := opts(good)
			o.Files = []event.File{{Path: "b", SizeBytes: 3, SHA256: strings.Repeat("1", 64)}}
			return o
		}(), event.ReasonChecksumMismatch, true},
		{"manifest file missing", bytes.NewReader(good), func() unpack.Options {
			o := opts(good)
			o.Files = []event.File{{Path: "c", SizeBytes: 3, SHA256: tartest.SHA256([]byte("bee"))}}
			return o
		}(), event.ReasonChecksumMismatch, true},
		{"source read error", &failingReader{bytes.NewReader(good[:2000])}, opts(good), event.ReasonIOError, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, _ := target(t)
			_, err := unpack.Extract(t.Context(), tt.src, dir, tt.o)
			if reasonOf(err) != tt.reason || fault.IsPermanent(err) != tt.permanent {
				t.Fatalf("Extract = %v (reason %q, permanent %v), want %s permanent=%v", err, reasonOf(err), fault.IsPermanent(err), tt.reason, tt.permanent)
			}
		})
	}
}

// linkChains are archives whose every link, read as text, stays inside,
// but which resolve outside once earlier links are followed the way the
// kernel does. Before resolution was modelled each extracted
// "successfully" (or failed as a retried io_error). They are also seeds of
// FuzzExtract.
var linkChains = []struct {
	name    string
	entries []tartest.Entry
}{
	{"link through a link that climbs", []tartest.Entry{
		// a/b/c/up -> ../../.. is the package root; the second link climbs
		// one more level through it.
		tartest.Dir("a/b/c/"), tartest.Symlink("a/b/c/up", "../../.."), tartest.Symlink("x", "a/b/c/up/.."),
	}},
	{"link to a link that climbs", []tartest.Entry{
		tartest.Dir("a/b/"), tartest.Symlink("a/b/root", "../.."), tartest.Symlink("a/r", "b/root"), tartest.Symlink("out", "a/r/../x"),
	}},
	{"link made escaping by a later link", []tartest.Entry{
		// l -> d/.. is the root while d does not exist; d -> . makes it
		// the root's parent.
		tartest.Symlink("l", "d/.."), tartest.Symlink("d", "."),
	}},
	{"link through a sibling link to the parent", []tartest.Entry{
		// Read as text, up/../../.. from a/b/c is a; up is a/b, so it is
		// the root's parent.
		tartest.Dir("a/b/c/"), tartest.Symlink("a/b/c/up", ".."), tartest.Symlink("a/b/c/x", "up/../../.."),
	}},
	{"directory replaced by a link", []tartest.Entry{
		// d was made for d/f; a link over it would leave d/f unreachable
		// (today: EEXIST, retried as io_error).
		tartest.Dir("e/"), tartest.File("d/f", "x"), tartest.Symlink("d", "e"),
	}},
	{"explicit directory replaced by a link", []tartest.Entry{
		tartest.Dir("e/"), tartest.Dir("d/"), tartest.File("d/f", "x"), tartest.Symlink("d", "e"),
	}},
	{"link loop", []tartest.Entry{
		tartest.Symlink("a", "b"), tartest.Symlink("b", "a"),
	}},
}

// TestLinkChains: every chain fails unsafe_archive, permanently, and
// nothing resolves outside.
func TestLinkChains(t *testing.T) {
	for _, tt := range linkChains {
		t.Run(tt.name, func(t *testing.T) {
			tb := tartest.Build(t, tt.entries...)
			dir, outside := target(t)
			_, err := unpack.Extract(t.Context(), bytes.NewReader(tb), dir, opts(tb))
			if reasonOf(err) != event.ReasonUnsafeArchive || !fault.IsPermanent(err) {
				t.Errorf("Extract = %v (reason %q), want permanent unsafe_archive", err, reasonOf(err))
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 0 {
				t.Errorf("written outside the target: %v", ents)
			}
		})
	}
}

// TestLinksInside: chains that stay inside are fine, however they wind.
func TestLinksInside(t *testing.T) {
	tb := tartest.Build(t,
		tartest.Dir("a/b/c/"), tartest.File("a/b/c/data", "x"),
		tartest.Symlink("a/b/c/up", "../.."),  // a
		tartest.Symlink("a/up2", "b/c/up/.."), // the root
		tartest.Symlink("top", "a/up2/a/b/c/data"),
		tartest.Symlink("dangling", "nothere/x"),
	)
	dir, _ := target(t)
	if _, err := unpack.Extract(t.Context(), bytes.NewReader(tb), dir, opts(tb)); err != nil {
		t.Fatalf("Extract: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "top")); err != nil || string(b) != "x" {
		t.Errorf("top: %q, %v", b, err)
	}
	assertLinksInside(t, dir)
}

// TestModes: the archive narrows the location's modes, never widens them,
// never sets setuid/setgid/sticky; directories keep the setgid bit.
func TestModes(t *testing.T) {
	tb := tartest.Build(t,
		tartest.Entry{Name: "open/", Type: tar.TypeDir, Mode: 0o7777},
		tartest.Entry{Name: "open/suid", Body: "x", Mode: 0o7777},
		tartest.Entry{Name: "private/", Type: tar.TypeDir, Mode: 0o700},
		tartest.Entry{Name: "private/secret", Body: "x", Mode: 0o600},
		tartest.File("implicit/f", "x"),
		tartest.Entry{Name: "implicit/", Type: tar.TypeDir, Mode: 0o750},
	)
	dir, _ := target(t)
	if _, err := unpack.Extract(t.Context(), bytes.NewReader(tb), dir, opts(tb)); err != nil {
		t.Fatalf("Extract: %v", err)
	}
	want := map[string]fs.FileMode{
		"open":           fs.ModeDir | fs.ModeSetgid | 0o750,
		"open/suid":      0o640,
		"private":        fs.ModeDir | fs.ModeSetgid | 0o700,
		"private/secret": 0o600,
		"implicit":       fs.ModeDir | fs.ModeSetgid | 0o750,
		"implicit/f":     0o640,
	}
	for p, m := range want {
		st, err := os.Lstat(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode() != m {
			t.Errorf("%s: mode %v, want %v", p, st.Mode(), m)
		}
	}
}
