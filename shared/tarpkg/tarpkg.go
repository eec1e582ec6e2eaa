// Package tarpkg writes and describes package archives: a tar of a directory
// tree plus what an archive announcement carries about it (size, sha256 of
// the tar, and the manifest of its regular files). The demo, the tests and
// stagectl use it to play the upstream archiver.
package tarpkg

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path"
	"sort"
	"time"

	"github.com/ccatobs/ccat-staging/shared/event"
)

// Entry is one regular file of a package.
type Entry struct {
	Path string // slash-separated, relative
	Data []byte
}

// Info describes a written or read package.
type Info struct {
	SizeBytes int64
	Checksum  string // "sha256:<hex>" of the whole tar
	Files     []event.File
}

// Write creates the tar file at dst from entries (with their parent
// directories) and returns its description.
func Write(dst string, entries []Entry) (Info, error) {
	f, err := os.Create(dst)
	if err != nil {
		return Info{}, err
	}
	info, werr := WriteTo(f, entries)
	if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
		return Info{}, fmt.Errorf("write %s: %w", dst, err)
	}
	return info, nil
}

// WriteTo writes the tar of entries to w.
func WriteTo(w io.Writer, entries []Entry) (Info, error) {
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(w, h)}
	tw := tar.NewWriter(cw)
	mtime := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	dirs := map[string]bool{}
	var files []event.File
	for _, e := range entries {
		for d := path.Dir(e.Path); d != "." && d != "/" && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	dl := make([]string, 0, len(dirs))
	for d := range dirs {
		dl = append(dl, d)
	}
	sort.Strings(dl) // parents sort before children
	for _, d := range dl {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: mtime}); err != nil {
			return Info{}, err
		}
	}
	for _, e := range entries {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: e.Path, Mode: 0o644, Size: int64(len(e.Data)), ModTime: mtime}); err != nil {
			return Info{}, err
		}
		if _, err := tw.Write(e.Data); err != nil {
			return Info{}, err
		}
		s := sha256.Sum256(e.Data)
		files = append(files, event.File{Path: e.Path, SizeBytes: int64(len(e.Data)), SHA256: hex.EncodeToString(s[:])})
	}
	if err := tw.Close(); err != nil {
		return Info{}, err
	}
	return Info{SizeBytes: cw.n, Checksum: "sha256:" + hex.EncodeToString(h.Sum(nil)), Files: files}, nil
}

// Describe reads an existing tar once and returns its size, checksum and
// the manifest of its regular files.
func Describe(src string) (Info, error) {
	f, err := os.Open(src)
	if err != nil {
		return Info{}, err
	}
	defer f.Close()
	h := sha256.New()
	// Buffered, one copy buffer and one file hash for the whole archive:
	// tar reads headers 512 bytes at a time, and a fresh 32 KiB io.Copy
	// buffer per file made describing a 1,000,000-file package mostly
	// allocation and garbage collection.
	cr := &countReader{r: io.TeeReader(bufio.NewReaderSize(f, 1<<20), h)}
	tr := tar.NewReader(cr)
	fh := sha256.New()
	buf := make([]byte, 256<<10)
	var sum [sha256.Size]byte
	var files []event.File
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return Info{}, fmt.Errorf("read %s: %w", src, err)
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		fh.Reset()
		n, err := io.CopyBuffer(fh, tr, buf)
		if err != nil {
			return Info{}, fmt.Errorf("read %s: %w", src, err)
		}
		files = append(files, event.File{Path: hdr.Name, SizeBytes: n, SHA256: hex.EncodeToString(fh.Sum(sum[:0]))})
	}
	// Hash the padding after the end-of-archive marker too: the checksum is
	// of the file, not of what tar reads.
	if _, err := io.Copy(io.Discard, cr); err != nil {
		return Info{}, err
	}
	return Info{SizeBytes: cr.n, Checksum: "sha256:" + hex.EncodeToString(h.Sum(nil)), Files: files}, nil
}

// Tree returns n files of pseudo-random content, about total bytes in all,
// in a nested layout like an instrument's raw data. The same seed gives the
// same tree.
func Tree(seed uint64, n int, total int64) []Entry {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	out := make([]Entry, 0, n)
	per := total / int64(max(n, 1))
	for i := range n {
		size := per/2 + rng.Int64N(per+1)
		data := make([]byte, size)
		for j := range data {
			data[j] = byte(rng.UintN(256))
		}
		out = append(out, Entry{Path: fmt.Sprintf("scan-%03d/detector-%02d/frame-%04d.fits", i/8, i%8, i), Data: data})
	}
	return out
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

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
