package unpack

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ccatobs/ccat-staging/services/stager/internal/tartest"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/fault"
	"golang.org/x/sys/unix"
)

// TestSyncOrder: with SyncFilesystem the target file system is synced
// exactly once, after every entry is complete on disk and before Extract
// returns (so before the caller's Commit renames the tree into place and
// before any done event: both come after Extract); with SyncFile it is
// never synced as a whole. A failing syncfs fails the extraction,
// transiently, so nothing unsynced is ever reported staged.
//
// syncfs is replaced by a fake here, and only here: durability itself
// cannot be observed without pulling the power, and a write-back error
// (EIO) cannot be caused on demand on a real file system. The fake calls
// the real syncfs where it succeeds, so the file system is still synced.
func TestSyncOrder(t *testing.T) {
	body := strings.Repeat("x", 3<<20)
	tb := tartest.Build(t,
		tartest.Dir("data/"),
		tartest.File("data/a.fits", "alpha"),
		tartest.File("data/sub/b.fits", body),
		tartest.File("c.dat", "gamma"),
	)
	want := map[string]int64{"data/a.fits": 5, "data/sub/b.fits": int64(len(body)), "c.dat": 5}
	tests := []struct {
		name      string
		mode      Sync
		fail      error
		wantCalls int
		wantErr   string // fault reason
	}{
		{"default is per file", "", nil, 0, ""},
		{"per file", SyncFile, nil, 0, ""},
		{"filesystem", SyncFilesystem, nil, 1, ""},
		{"filesystem write-back error", SyncFilesystem, syscall.EIO, 1, event.ReasonIOError},
		{"filesystem full", SyncFilesystem, syscall.ENOSPC, 1, event.ReasonNoSpace},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "pkg")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			calls := 0
			o := Options{Size: int64(len(tb)), SHA256: tartest.SHA256(tb), Sync: tc.mode}
			o.syncfs = func(fd int) error {
				calls++
				// Everything is written by now: every file has all its bytes.
				for p, n := range want {
					st, err := os.Stat(filepath.Join(dir, p))
					if err != nil || st.Size() != n {
						t.Errorf("syncfs before %s was complete: %v", p, err)
					}
				}
				if tc.fail != nil {
					return tc.fail
				}
				return unix.Syncfs(fd)
			}
			res, err := Extract(t.Context(), bytes.NewReader(tb), dir, o)
			if calls != tc.wantCalls {
				t.Errorf("syncfs called %d times, want %d", calls, tc.wantCalls)
			}
			if tc.wantErr != "" {
				var fe *fault.Error
				if !errors.As(err, &fe) || fe.Reason != tc.wantErr || fe.Permanent {
					t.Fatalf("Extract = %v, want transient %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Extract: %v", err)
			}
			if res.Files.Len() != len(want) {
				t.Errorf("%d files, want %d", res.Files.Len(), len(want))
			}
		})
	}
}

// TestParseSync: a location's setting, empty meaning per file.
func TestParseSync(t *testing.T) {
	for in, want := range map[string]Sync{"": SyncFile, "file": SyncFile, "filesystem": SyncFilesystem} {
		if got, err := ParseSync(in); err != nil || got != want {
			t.Errorf("ParseSync(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseSync("none"); err == nil {
		t.Error(`ParseSync("none") accepted`)
	}
}

// TestFileHashes: the per-file sums, computed off the extracting goroutine,
// come out in file order and right for files of many chunks, empty files
// and hard links (which take the sum of the file they link to).
func TestFileHashes(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 300_000) // 4.8 MB: several 1 MiB chunks
	tb := tartest.Build(t,
		tartest.File("big.fits", big),
		tartest.File("empty", ""),
		tartest.File("small", "s"),
		tartest.Hardlink("again.fits", "big.fits"),
		tartest.File("last", "z"),
	)
	dir := filepath.Join(t.TempDir(), "pkg")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	res, err := Extract(t.Context(), bytes.NewReader(tb), dir, Options{Size: int64(len(tb)), SHA256: tartest.SHA256(tb), HashFiles: true})
	if err != nil {
		t.Fatal(err)
	}
	want := []event.File{
		{Path: "big.fits", SizeBytes: int64(len(big)), SHA256: tartest.SHA256([]byte(big))},
		{Path: "empty", SizeBytes: 0, SHA256: tartest.SHA256(nil)},
		{Path: "small", SizeBytes: 1, SHA256: tartest.SHA256([]byte("s"))},
		{Path: "again.fits", SizeBytes: int64(len(big)), SHA256: tartest.SHA256([]byte(big))},
		{Path: "last", SizeBytes: 1, SHA256: tartest.SHA256([]byte("z"))},
	}
	got := res.Files.Slice()
	if len(got) != len(want) {
		t.Fatalf("files %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("file %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}
