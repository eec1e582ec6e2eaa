//go:build long

package unpack_test

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/services/stager/dest"
	"github.com/ccatobs/ccat-staging/services/stager/unpack"
)

// TestMillionEntriesRSS extracts a 1,000,000-entry archive (1,000
// directories of 999 one-byte files, names as long as a real package's)
// and logs the process's peak RSS, then commits it (the verification record
// is written) and checks it is present, as the stager does, and logs the
// peak again. It is a measurement, not a CI test: it
// is built only with -tags long (task test:long) and asserts nothing
// about the figure, which depends on the machine.
func TestMillionEntriesRSS(t *testing.T) {
	const dirs, perDir = 1000, 999 // 1,000 directory entries and 999,000 files
	name := func(d, f int) string {
		return fmt.Sprintf("obs-20260101T000000-module-%04d/scan_%06d_detector_%04d.fits", d, f, d)
	}
	// The archive is generated twice, streaming: once to learn its size and
	// digest, once to extract, so the test holds none of it in memory.
	gen := func(w io.Writer) error {
		bw := bufio.NewWriterSize(w, 1<<20)
		tw := tar.NewWriter(bw)
		mt := time.Unix(1700000000, 0)
		for d := range dirs {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name(d, 0)[:strings.LastIndexByte(name(d, 0), '/')+1], Mode: 0o755, ModTime: mt}); err != nil {
				return err
			}
			for f := range perDir {
				if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name(d, f), Mode: 0o644, Size: 1, ModTime: mt}); err != nil {
					return err
				}
				if _, err := tw.Write([]byte{'x'}); err != nil {
					return err
				}
			}
		}
		if err := tw.Close(); err != nil {
			return err
		}
		return bw.Flush()
	}
	h := sha256.New()
	cw := &countWriter{w: h}
	if err := gen(cw); err != nil {
		t.Fatal(err)
	}
	size, sum := cw.n, hex.EncodeToString(h.Sum(nil))
	root, err := os.MkdirTemp("/dev/shm", "million-")
	if err != nil {
		root = t.TempDir()
	} else {
		t.Cleanup(func() { os.RemoveAll(root) })
	}
	loc := dest.Location{Name: "proc", Root: root, Instance: "long"}
	if err := loc.Prepare(); err != nil {
		t.Fatal(err)
	}
	dir, err := loc.TempDir("million")
	if err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	debug.FreeOSMemory()
	before := procStatus(t, "VmRSS")
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(gen(pw)) }()
	start := time.Now()
	res, err := unpack.Extract(t.Context(), pr, dir, unpack.Options{Size: size, SHA256: sum, HashFiles: true})
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	hwm := procStatus(t, "VmHWM")
	t.Logf("extracted %d files (%d MiB of tar) in %s; RSS before %d MiB, peak %d MiB",
		res.Files.Len(), size>>20, elapsed.Round(time.Millisecond), before>>20, hwm>>20)
	// Then what the stager does next: write the verification record, and
	// answer a request for the package from it.
	start = time.Now()
	if _, err := loc.Commit(dir, "million", dest.Manifest{PackageID: "million", Checksum: "sha256:" + sum, SizeBytes: size, List: res.Files}); err != nil {
		t.Fatal(err)
	}
	m, ok := loc.Present("million", "sha256:"+sum)
	if !ok || m.Count() != dirs*perDir {
		t.Errorf("Present = %v with %d files", ok, m.Count())
	}
	t.Logf("committed and checked presence in %s; peak RSS now %d MiB", time.Since(start).Round(time.Millisecond), procStatus(t, "VmHWM")>>20)
	if res.Files.Len() != dirs*perDir {
		t.Errorf("%d files, want %d", res.Files.Len(), dirs*perDir)
	}
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// procStatus reads a "kB" field of /proc/self/status, in bytes.
func procStatus(t *testing.T, field string) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/self/status", field)
	return 0
}
