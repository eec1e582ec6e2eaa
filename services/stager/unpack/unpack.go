// Package unpack extracts a tar stream in one pass: every byte read from the
// source is hashed while the entries are written, so a package of any size is
// read once, held in memory only a buffer at a time, and verified (size,
// sha256 of the tar, and each file's sha256 when a manifest is given) before
// the caller makes it visible. It refuses anything that could write outside
// the target directory, and any link that, resolved as the kernel resolves
// it in the finished tree, leads outside.
package unpack

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"iter"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/fault"
	"golang.org/x/sys/unix"
)

// Options describe what the stream must be.
type Options struct {
	// Size is the exact length of the tar stream in bytes; reading more or
	// fewer is a size mismatch.
	Size int64
	// SHA256 is the expected lower-case hex digest of the whole tar stream.
	SHA256 string
	// Files, when not empty, is the package's manifest: each listed file must
	// be in the archive with this size and sha256.
	Files []event.File
	// MaxEntries bounds the number of entries, directories made for entries
	// below them included (0 = 1,000,000).
	MaxEntries int
	// MaxTotalBytes bounds the sum of the entries' sizes (0 = Size). A plain
	// tar cannot unpack to more than its own size, so anything claiming more
	// is hostile.
	MaxTotalBytes int64
	// HashFiles computes each file's sha256 for the Result even without a
	// manifest. It costs a second hash pass over the data; the tar's own
	// sha256 already proves every byte.
	HashFiles bool
	// DirMode and FileMode are what the processing location grants
	// (DefaultDirMode and DefaultFileMode when 0). Every directory and file
	// gets them from its creation, narrowed by the archive's own mode for
	// group and others; setuid, setgid and sticky never come from the
	// archive, directories keep DirMode's setgid bit. The caller creates
	// dir itself with DirMode.
	DirMode, FileMode fs.FileMode
	// ChangeGroup gives every entry the group GID, before anything is
	// written into it. Otherwise entries get the group the file system
	// gives (the setgid bit of the parent, or the stager's group).
	ChangeGroup bool
	GID         int
	// Read, when not nil, is advanced by every byte read from the source, so
	// the caller can report progress from another goroutine.
	Read *atomic.Int64
	// Sync chooses how the tree is made durable before Extract returns
	// (SyncFile when empty). Either way nothing is returned as extracted
	// before every byte and every directory entry is on stable storage.
	Sync Sync

	// syncfs stands for unix.Syncfs in tests that must see when the file
	// system is synced or make it fail (nil: the real call).
	syncfs func(fd int) error
}

// Sync is how an extraction is made durable.
type Sync string

const (
	// SyncFile fsyncs every file as soon as it is written (in the
	// background, while the next entry streams), then every directory:
	// only this package's pages are waited for.
	SyncFile Sync = "file"
	// SyncFilesystem writes without any fsync and syncs the whole target
	// file system once at the end (syncfs(2)), which lets the kernel write
	// the package back in large sorted batches and commit the journal once
	// instead of once per file; it also waits for whatever else is dirty
	// on that file system (other writers' data), and reports write-back
	// errors reliably only on Linux 5.8 and later.
	SyncFilesystem Sync = "filesystem"
)

// ParseSync reads a location's setting: "", "file" or "filesystem".
func ParseSync(s string) (Sync, error) {
	switch Sync(s) {
	case "":
		return SyncFile, nil
	case SyncFile, SyncFilesystem:
		return Sync(s), nil
	}
	return "", fmt.Errorf("sync %q: want file or filesystem", s)
}

// Result describes what was written.
type Result struct {
	Files  Files // regular files (hard links included), in archive order
	Dirs   int
	Bytes  int64  // bytes of the tar stream read
	SHA256 string // hex digest of the tar stream
	// Synced is how long Extract waited, after the last entry was
	// written, for the tree to become durable (the background fsyncs
	// draining and the directories' fsyncs, or the one syncfs).
	Synced time.Duration
}

// Files lists the regular files an extraction wrote without holding their
// paths: each event.File is built when it is asked for, so a
// 1,000,000-file package costs its compact tree, not a million strings
// (the caller streams them into the verification record).
type Files struct {
	t      *tree
	hashed bool
}

// Len is the number of files.
func (f Files) Len() int {
	if f.t == nil {
		return 0
	}
	return len(f.t.files)
}

// All yields the files in archive order.
func (f Files) All() iter.Seq[event.File] {
	return func(yield func(event.File) bool) {
		if f.t == nil {
			return
		}
		var buf []byte
		for i, r := range f.t.files {
			buf = f.t.path(r.node, buf)
			ef := event.File{Path: string(buf), SizeBytes: r.size}
			if f.hashed {
				ef.SHA256 = hex.EncodeToString(f.t.sums[i][:])
			}
			if !yield(ef) {
				return
			}
		}
	}
}

// Slice returns the files as a slice, for callers with few of them.
func (f Files) Slice() []event.File { return slices.Collect(f.All()) }

const copyBuf = 1 << 20

// The default modes of a processing location: the stager's user reads and
// writes, its group reads and traverses (the setgid bit keeps the group on
// everything below), others nothing.
const (
	DefaultDirMode  = fs.ModeSetgid | 0o750
	DefaultFileMode = fs.FileMode(0o640)
)

// Extract reads the tar stream src and unpacks it under dir, which must exist
// and be empty; every file and directory it wrote is durable before it
// returns (o.Sync says how).
// On error dir may hold a partial tree: the caller removes it. Errors carry a
// fault reason: unsafe_archive (any structural fault of the archive:
// unsafe names and links, duplicates, name conflicts), checksum_mismatch and
// size_mismatch are permanent, found on the first read; source read errors
// (io_error), a full disk (no_space) and cancellation are transient.
func Extract(ctx context.Context, src io.Reader, dir string, o Options) (Result, error) {
	if o.MaxEntries <= 0 {
		o.MaxEntries = 1_000_000
	}
	if o.MaxTotalBytes <= 0 {
		o.MaxTotalBytes = o.Size
	}
	if o.DirMode == 0 {
		o.DirMode = DefaultDirMode
	}
	if o.FileMode == 0 {
		o.FileMode = DefaultFileMode
	}
	if o.Sync == "" {
		o.Sync = SyncFile
	}
	if o.syncfs == nil {
		o.syncfs = unix.Syncfs
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return Result{}, fault.Transient(event.ReasonIOError, fmt.Errorf("open target %s: %w", dir, err))
	}
	defer root.Close()
	// Opened before anything is written: syncfs reports the write-back
	// errors of the file system since the descriptor was opened.
	top, err := os.Open(dir)
	if err != nil {
		return Result{}, fault.Transient(event.ReasonIOError, fmt.Errorf("open target %s: %w", dir, err))
	}
	defer top.Close()

	s := newSource(ctx, src, o)
	defer close(s.quit)
	x := &extractor{
		root:   root,
		o:      o,
		tr:     tar.NewReader(s),
		t:      newTree(),
		hash:   o.HashFiles || len(o.Files) > 0,
		syncer: newSyncer(o.Sync == SyncFile),
	}
	if x.hash {
		x.hasher = newFileHasher(bufSize(o.Size, copyBuf))
	} else {
		x.buf = make([]byte, bufSize(o.Size, copyBuf))
	}
	err = x.run()
	if x.hasher != nil {
		x.t.sums = x.hasher.wait()
	}
	written := time.Now()
	if serr := x.syncer.wait(); err == nil && serr != nil {
		err = serr
	}
	synced := time.Since(written)
	if err != nil {
		return Result{}, s.classify(err)
	}
	// The end-of-archive marker may be followed by padding up to the record
	// size; it is part of the package's bytes and of its checksum.
	if _, err := io.Copy(io.Discard, s); err != nil {
		return Result{}, s.classify(err)
	}
	if err := s.verify(); err != nil {
		return Result{}, err
	}
	if err := x.checkManifest(); err != nil {
		return Result{}, err
	}
	durable := time.Now()
	if err := x.makeDurable(top); err != nil {
		return Result{}, err
	}
	synced += time.Since(durable)
	// Only names and files are needed from here on: the index goes.
	x.t.slots = nil
	return Result{Files: Files{t: x.t, hashed: x.hash}, Dirs: x.dirCount(), Bytes: s.n, SHA256: hex.EncodeToString(s.h.Sum(nil)), Synced: synced}, nil
}

// makeDurable makes the directory entries durable (the files' data is, or,
// with SyncFilesystem, becomes so here too), after the whole archive was
// verified: a package that fails verification costs no sync.
func (x *extractor) makeDurable(top *os.File) error {
	if x.o.Sync != SyncFilesystem {
		return x.syncDirs()
	}
	if err := x.o.syncfs(int(top.Fd())); err != nil {
		return writeErr("syncfs of the target file system", &os.PathError{Op: "syncfs", Path: top.Name(), Err: err})
	}
	return nil
}

// source reads, hashes and counts the archive in its own goroutine and
// hands the bytes on in chunks, so that hashing the stream on one core
// overlaps with parsing and writing on another. The goroutine owns n, h,
// err and tooBig until it sends its last chunk (the one with an error);
// the consumer reads them only after receiving that chunk.
type source struct {
	ctx   context.Context
	r     io.Reader
	h     hash.Hash
	limit int64  // the package's size
	want  string // the package's sha256
	read  *atomic.Int64
	out   chan chunk
	free  chan []byte
	quit  chan struct{} // closed when Extract returns: stop, whatever the state

	n      int64
	err    error // a read error of the source itself
	tooBig bool

	cur   chunk // consumer side
	off   int
	final error // the last chunk's error, once received
}

type chunk struct {
	b   []byte
	n   int
	err error
}

const chunks, chunkSize = 4, 1 << 20

// bufSize sizes a buffer for a package of size bytes: never more than max,
// and no bigger than the package needs. Allocating (and zeroing) 5 MiB of
// buffers for a 2 KiB package cost 17 % of a stager's CPU when it staged
// many small packages; a small buffer costs a large package nothing, since
// the sizes only shrink below max for packages smaller than max.
func bufSize(size int64, max int) int {
	const min = 32 << 10
	if size+512 >= int64(max) {
		return max
	}
	return int(size+512) + min - int(size+512)%min // round up to 32 KiB
}

var errTooBig = errors.New("source is longer than the package size")

func newSource(ctx context.Context, r io.Reader, o Options) *source {
	s := &source{ctx: ctx, r: r, h: sha256.New(), limit: o.Size, want: o.SHA256, read: o.Read,
		out: make(chan chunk, chunks), free: make(chan []byte, chunks), quit: make(chan struct{})}
	size := bufSize(o.Size, chunkSize)
	for range chunks {
		s.free <- make([]byte, size)
	}
	go s.loop()
	return s
}

func (s *source) loop() {
	for {
		var buf []byte
		select {
		case buf = <-s.free:
		case <-s.quit:
			return
		}
		n, err := 0, s.ctx.Err()
		if err == nil {
			n, err = io.ReadFull(s.r, buf)
			if err == io.ErrUnexpectedEOF {
				err = io.EOF
			}
		}
		if n > 0 {
			s.h.Write(buf[:n])
			s.n += int64(n)
			if s.read != nil {
				s.read.Add(int64(n))
			}
			if s.n > s.limit {
				s.tooBig, err = true, errTooBig
			}
		}
		if err != nil && err != io.EOF && err != errTooBig && s.ctx.Err() == nil {
			s.err = err
		}
		select {
		case s.out <- chunk{buf, n, err}:
		case <-s.quit:
			return
		}
		if err != nil {
			return
		}
	}
}

// Read hands on the bytes the goroutine read, then its final error.
func (s *source) Read(p []byte) (int, error) {
	for s.off >= s.cur.n {
		if s.final != nil {
			return 0, s.final
		}
		if s.cur.b != nil {
			s.free <- s.cur.b
		}
		s.cur, s.off = <-s.out, 0
		s.final = s.cur.err
	}
	n := copy(p, s.cur.b[s.off:s.cur.n])
	s.off += n
	return n, nil
}

// verify checks the stream's length and digest once it has been read to EOF.
func (s *source) verify() error {
	if s.tooBig || s.n != s.limit {
		return fault.Permanent(event.ReasonSizeMismatch, fmt.Errorf("archive is %s bytes, want %d", s.sizeString(), s.limit))
	}
	if got := hex.EncodeToString(s.h.Sum(nil)); got != s.want {
		return fault.Permanent(event.ReasonChecksumMismatch, fmt.Errorf("archive sha256 %s, want %s", got, s.want))
	}
	return nil
}

func (s *source) sizeString() string {
	if s.tooBig {
		return fmt.Sprintf("more than %d", s.limit)
	}
	return fmt.Sprint(s.n)
}

// classify turns a failure during extraction into a reasoned error. A
// classified error (unsafe entry, full disk) stands. Otherwise the rest of
// the stream is read (which also makes the reader's state safe to look at):
// a source error or cancellation is transient; bytes that are not the
// package's are the real reason; and if the bytes are right, the package
// itself is a malformed tar.
func (s *source) classify(err error) error {
	if _, ok := errors.AsType[*fault.Error](err); ok {
		return err
	}
	if s.final == nil {
		_, _ = io.Copy(io.Discard, s)
	}
	switch {
	case s.ctx.Err() != nil:
		return fault.Transient(event.ReasonIOError, fmt.Errorf("interrupted: %w", s.ctx.Err()))
	case s.err != nil:
		return fault.Transient(event.ReasonIOError, fmt.Errorf("read archive: %w", s.err))
	}
	if verr := s.verify(); verr != nil {
		return verr
	}
	return fault.Permanent(event.ReasonUnsafeArchive, fmt.Errorf("malformed tar: %w", err))
}

type extractor struct {
	root    *os.Root
	o       Options
	tr      *tar.Reader
	t       *tree
	entries int
	total   int64
	buf     []byte      // the copy buffer when files are not hashed
	hasher  *fileHasher // hashes each file's bytes when they are
	hash    bool        // compute each file's sha256
	syncer  *syncer
}

func unsafeErr(format string, args ...any) error {
	return fault.Permanent(event.ReasonUnsafeArchive, fmt.Errorf(format, args...))
}

// writeErr classifies a failure to write the target tree. The tree model
// refuses every conflict before the file system sees it, so what is left
// is the outside world (transient), except a name the file system cannot
// hold, which is a property of the archive.
func writeErr(what string, err error) error {
	switch {
	case errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT):
		return fault.Transient(event.ReasonNoSpace, fmt.Errorf("%s: %w", what, err))
	case errors.Is(err, syscall.ENAMETOOLONG) || errors.Is(err, syscall.EILSEQ):
		return fault.Permanent(event.ReasonUnsafeArchive, fmt.Errorf("%s: %w", what, err))
	}
	return fault.Transient(event.ReasonIOError, fmt.Errorf("%s: %w", what, err))
}

func (x *extractor) run() error {
	for {
		hdr, err := x.tr.Next()
		if err == io.EOF {
			return x.checkLinks()
		}
		if err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		if err := x.count(); err != nil {
			return err
		}
		name, err := CleanName(hdr.Name)
		if err != nil {
			return err
		}
		if name == "." {
			if hdr.Typeflag != tar.TypeDir {
				return unsafeErr("entry %q is not a directory", hdr.Name)
			}
			continue
		}
		dir, base, err := x.parent(name)
		if err != nil {
			return err
		}
		if c := x.t.child(dir, base); c >= 0 {
			// Only a directory entry for a directory made implicitly
			// earlier is no conflict; anything else is a duplicate or a
			// file, link or directory over another entry.
			if hdr.Typeflag != tar.TypeDir || x.t.nodes[c].kind != kindImplicit {
				return unsafeErr("entry %q (type %q) conflicts with an earlier entry of that name", name, hdr.Typeflag)
			}
		}
		switch hdr.Typeflag {
		case tar.TypeReg:
			err = x.file(dir, base, name, hdr)
		case tar.TypeDir:
			err = x.dir(dir, base, name, hdr)
		case tar.TypeSymlink:
			err = x.symlink(dir, base, name, hdr.Linkname)
		case tar.TypeLink:
			err = x.hardlink(dir, base, name, hdr.Linkname)
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			err = unsafeErr("entry %q is a device or FIFO", name)
		default:
			err = unsafeErr("entry %q has unsupported type %q", name, hdr.Typeflag)
		}
		if err != nil {
			return err
		}
	}
}

// maxNames bounds the bytes of names and link targets the tree keeps
// (its offsets are 32-bit).
const maxNames = 1 << 31

// count counts one more name in the tree and refuses an archive beyond the
// limits.
func (x *extractor) count() error {
	x.entries++
	if x.entries > x.o.MaxEntries {
		return unsafeErr("more than %d entries (directories made for entries included)", x.o.MaxEntries)
	}
	if len(x.t.arena) > maxNames {
		return unsafeErr("names and link targets add up to more than %d bytes", maxNames)
	}
	return nil
}

// CleanName turns a tar entry name into a clean relative slash path, or
// refuses it: empty, absolute, NUL, any ".." element, or an element longer
// than a file system name can be. "." is the root.
func CleanName(raw string) (string, error) {
	switch {
	case raw == "":
		return "", unsafeErr("empty entry name")
	case strings.ContainsRune(raw, 0):
		return "", unsafeErr("entry name with NUL")
	case strings.HasPrefix(raw, "/"):
		return "", unsafeErr("absolute entry name %q", raw)
	}
	for _, e := range strings.Split(raw, "/") {
		if e == ".." {
			return "", unsafeErr("entry name %q climbs out with ..", raw)
		}
		if len(e) > nameMax {
			return "", unsafeErr("entry name %q has an element longer than %d bytes", raw, nameMax)
		}
	}
	return path.Clean(raw), nil
}

// nameMax is Linux's NAME_MAX.
const nameMax = 255

// parent finds (creating what is missing) the directory an entry goes in.
// Writing through a link is refused even when the link stays inside: the
// archive would then name one file by two paths, and the classic two-step
// escape (plant a link, write through it) needs exactly that.
func (x *extractor) parent(name string) (int32, string, error) {
	cur := int32(rootNode)
	rest := name
	for {
		elem, more, ok := strings.Cut(rest, "/")
		if !ok {
			return cur, rest, nil
		}
		c := x.t.child(cur, elem)
		switch {
		case c < 0:
			// A directory made for an entry counts as an entry: the
			// limit bounds the tree's memory, whatever the names.
			if err := x.count(); err != nil {
				return 0, "", err
			}
			p := name[:len(name)-len(rest)+len(elem)]
			if err := x.mkdir(p, x.dirMode(x.o.DirMode)); err != nil {
				return 0, "", err
			}
			c = x.t.add(cur, elem, kindImplicit)
		case !x.t.nodes[c].kind.isDir():
			return 0, "", unsafeErr("entry %q lies below non-directory %q", name, name[:len(name)-len(rest)+len(elem)])
		}
		cur, rest = c, more
	}
}

// dirMode is the mode of a directory whose archive mode is m: the
// configured mode, narrowed by the archive for group and others (the owner,
// the stager, keeps what is configured so it can verify and remove the
// copy), with the setgid bit of the configured mode and never setuid or
// sticky.
func (x *extractor) dirMode(m fs.FileMode) fs.FileMode {
	conf := x.o.DirMode
	return conf&m.Perm()&0o077 | conf&0o700 | conf&fs.ModeSetgid
}

// fileMode narrows the configured file mode by the archive's: an archive
// cannot widen what the location grants, nor set setuid, setgid or sticky.
// The owner keeps read and write as configured.
func (x *extractor) fileMode(m fs.FileMode) fs.FileMode {
	return x.o.FileMode.Perm() & (m.Perm() | 0o600)
}

// mkdir creates p with mode, then gives it the group and the exact mode
// (mkdir is subject to umask and ignores setgid) before anything goes in.
func (x *extractor) mkdir(p string, mode fs.FileMode) error {
	if err := x.root.Mkdir(p, mode.Perm()); err != nil {
		return writeErr("create "+p, err)
	}
	return x.setMode(p, mode)
}

func (x *extractor) setMode(p string, mode fs.FileMode) error {
	if x.o.ChangeGroup {
		if err := x.root.Lchown(p, -1, x.o.GID); err != nil {
			return writeErr("chgrp "+p, err)
		}
	}
	if err := x.root.Chmod(p, mode); err != nil {
		return writeErr("chmod "+p, err)
	}
	return nil
}

func (x *extractor) dir(dir int32, base, name string, hdr *tar.Header) error {
	mode := x.dirMode(hdr.FileInfo().Mode())
	if c := x.t.child(dir, base); c >= 0 {
		// Made implicitly for an earlier entry: now it gets its own mode.
		x.t.nodes[c].kind = kindDir
		return x.setMode(name, mode)
	}
	if err := x.mkdir(name, mode); err != nil {
		return err
	}
	x.t.add(dir, base, kindDir)
	return nil
}

func (x *extractor) file(dir int32, base, name string, hdr *tar.Header) error {
	if hdr.Size < 0 {
		return unsafeErr("entry %q has negative size", name)
	}
	x.total += hdr.Size
	if x.total > x.o.MaxTotalBytes {
		return unsafeErr("entries add up to more than %d bytes", x.o.MaxTotalBytes)
	}
	mode := x.fileMode(hdr.FileInfo().Mode())
	f, err := x.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return writeErr("create "+name, err)
	}
	// Group and exact mode before a byte is written; the mode the file was
	// created with was narrower still (umask only removes bits).
	if x.o.ChangeGroup {
		if err := f.Chown(-1, x.o.GID); err != nil {
			f.Close()
			return writeErr("chgrp "+name, err)
		}
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return writeErr("chmod "+name, err)
	}
	w := &fileWriter{f: f}
	var n int64
	if x.hash {
		n, err = x.hasher.copy(w, x.tr)
	} else {
		n, err = io.CopyBuffer(w, x.tr, x.buf)
	}
	if err != nil {
		f.Close()
		if w.err != nil {
			return writeErr("write "+name, w.err)
		}
		return err // a read error: the caller blames the source or the tar
	}
	if !hdr.ModTime.IsZero() {
		// Scientists sort by mtime; a failure here is not worth the package.
		_ = x.root.Chtimes(name, hdr.ModTime, hdr.ModTime)
	}
	// Synced in the background while the next entry streams, so that the
	// disk flush overlaps the reading rather than stalling it.
	if err := x.syncer.add(f, name); err != nil {
		return err
	}
	rec := fileRec{size: n}
	if x.hash {
		x.hasher.endFile()
	}
	rec.node = x.t.add(dir, base, kindFile)
	x.t.nodes[rec.node].ref = int32(len(x.t.files))
	x.t.files = append(x.t.files, rec)
	return nil
}

// fileWriter remembers a write error, so that it is not mistaken for a read
// error of the source (both are *fs.PathError).
type fileWriter struct {
	f   *os.File
	err error
}

func (w *fileWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	if err != nil {
		w.err = err
	}
	return n, err
}

// maxTarget is Linux's PATH_MAX less the NUL: no longer link can be made.
const maxTarget = 4095

func (x *extractor) symlink(dir int32, base, name, target string) error {
	switch {
	case target == "" || strings.ContainsRune(target, 0) || len(target) > maxTarget:
		return unsafeErr("symlink %q has an invalid target", name)
	case strings.HasPrefix(target, "/"):
		return unsafeErr("symlink %q points to absolute path %q", name, target)
	}
	// Resolved against the tree as extracted so far; checkLinks resolves
	// every link again once the tree is complete, since a later entry can
	// change where an earlier link leads.
	if err := x.t.resolve(dir, target); err != nil {
		return unsafeErr("symlink %q -> %q %w", name, target, err)
	}
	if err := x.root.Symlink(target, name); err != nil {
		return writeErr("symlink "+name, err)
	}
	if x.o.ChangeGroup {
		if err := x.root.Lchown(name, -1, x.o.GID); err != nil {
			return writeErr("chgrp "+name, err)
		}
	}
	i := x.t.add(dir, base, kindSymlink)
	x.t.addLink(i, target)
	return nil
}

// checkLinks resolves every symlink against the finished tree: each must
// stay inside the package whatever came after it.
func (x *extractor) checkLinks() error {
	var buf []byte
	for i := range x.t.nodes {
		if x.t.nodes[i].kind != kindSymlink {
			continue
		}
		if err := x.t.resolve(x.t.nodes[i].parent, x.t.target(int32(i))); err != nil {
			buf = x.t.path(int32(i), buf)
			return unsafeErr("symlink %q -> %q %w once the archive is complete", buf, x.t.target(int32(i)), err)
		}
	}
	return nil
}

// hardlink links to a regular file this archive wrote, named by the path
// it was written at: a name through a link, or of anything else, is
// refused, so a hard link can never reach outside the package.
func (x *extractor) hardlink(dir int32, base, name, target string) error {
	t, err := CleanName(target)
	if err != nil {
		return err
	}
	i := x.t.find(t)
	if i < 0 || x.t.nodes[i].kind != kindFile {
		return unsafeErr("hard link %q to %q, which is not a file of this archive", name, target)
	}
	if err := x.root.Link(t, name); err != nil {
		return writeErr("link "+name, err)
	}
	ref := x.t.nodes[i].ref
	rec := x.t.files[ref]
	if x.hash {
		x.hasher.sameAs(ref)
	}
	rec.node = x.t.add(dir, base, kindFile)
	x.t.nodes[rec.node].ref = int32(len(x.t.files))
	x.t.files = append(x.t.files, rec)
	return nil
}

func (x *extractor) checkManifest() error {
	for _, want := range x.o.Files {
		name, err := CleanName(want.Path)
		if err != nil {
			return fault.Permanent(event.ReasonBadRequest, fmt.Errorf("manifest path %q: %w", want.Path, err))
		}
		i := x.t.find(name)
		if i < 0 || x.t.nodes[i].kind != kindFile {
			return fault.Permanent(event.ReasonChecksumMismatch, fmt.Errorf("manifest file %q is not in the archive", want.Path))
		}
		ref := x.t.nodes[i].ref
		got := x.t.files[ref]
		if !x.hash {
			return fmt.Errorf("manifest given but files not hashed") // unreachable: a manifest turns hashing on
		}
		if sum := hex.EncodeToString(x.t.sums[ref][:]); got.size != want.SizeBytes || sum != want.SHA256 {
			return fault.Permanent(event.ReasonChecksumMismatch,
				fmt.Errorf("file %q is %d bytes sha256 %s, manifest says %d bytes sha256 %s", want.Path, got.size, sum, want.SizeBytes, want.SHA256))
		}
	}
	return nil
}

func (x *extractor) dirCount() int {
	n := 0
	for _, nd := range x.t.nodes {
		if nd.kind.isDir() {
			n++
		}
	}
	return n
}

// syncDirs makes the directory entries durable, children before parents
// (a node is always added after its parent), the root last, so that after
// the caller's rename a crash cannot leave a verified package missing
// names.
func (x *extractor) syncDirs() error {
	var buf []byte
	for i := len(x.t.nodes) - 1; i >= 0; i-- {
		if !x.t.nodes[i].kind.isDir() {
			continue
		}
		buf = x.t.path(int32(i), buf)
		d := string(buf)
		if d == "" {
			d = "."
		}
		f, err := x.root.Open(d)
		if err != nil {
			return writeErr("open "+d, err)
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return writeErr("sync "+d, err)
		}
	}
	return nil
}

// syncer fsyncs and closes written files in the background, a bounded
// number at a time, and reports the first failure. Without fsync (the
// file system is synced once at the end) it only closes them, in the
// extractor's goroutine: a close costs no disk wait.
type syncer struct {
	fsync bool
	q     chan syncItem
	done  chan struct{}
	mu    sync.Mutex
	err   error
}

type syncItem struct {
	f    *os.File
	name string
}

func newSyncer(fsync bool) *syncer {
	s := &syncer{fsync: fsync, q: make(chan syncItem, 64), done: make(chan struct{})}
	if !fsync {
		close(s.done)
		return s
	}
	var wg sync.WaitGroup
	for range syncWorkers {
		wg.Go(func() {
			for it := range s.q {
				err := it.f.Sync()
				if cerr := it.f.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					s.mu.Lock()
					if s.err == nil {
						s.err = writeErr("sync "+it.name, err)
					}
					s.mu.Unlock()
				}
			}
		})
	}
	go func() {
		wg.Wait()
		close(s.done)
	}()
	return s
}

// syncWorkers fsyncs may wait at once. On a journalling file system each
// fsync of a small file waits for a journal commit; one at a time, a
// package of thousands of small files waits for thousands of commits in
// a row, while fsyncs waiting together join the same commit.
const syncWorkers = 4

func (s *syncer) add(f *os.File, name string) error {
	s.mu.Lock()
	err := s.err
	s.mu.Unlock()
	if err != nil {
		f.Close()
		return err
	}
	if !s.fsync {
		if err := f.Close(); err != nil {
			return writeErr("close "+name, err)
		}
		return nil
	}
	s.q <- syncItem{f, name}
	return nil
}

// wait syncs what is queued and returns the first error.
func (s *syncer) wait() error {
	close(s.q)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// fileHasher computes each file's sha256 in its own goroutine, so that the
// second hash pass a manifest needs overlaps with the writes instead of
// adding to them: the extractor reads a chunk of the entry into a buffer,
// writes it to the file and hands the buffer over; the hasher hands it
// back once hashed. A CPU profile of a 2 GiB package put the per-file hash
// at half of the extracting goroutine's time, on the path of every byte.
// The sums come out in file order (hard links included) from wait.
type fileHasher struct {
	in   chan hashItem
	free chan []byte
	done chan struct{}
	sums [][32]byte // the goroutine's until done is closed
}

// hashItem is a chunk of the current file, its end (end), or a hard link
// to file number ref (link).
type hashItem struct {
	b    []byte
	end  bool
	link bool
	ref  int32
}

// hashBufs chunks of a file may be in flight: enough to keep both
// goroutines busy, bounded so memory stays hashBufs × the buffer size.
const hashBufs = 4

func newFileHasher(size int) *fileHasher {
	h := &fileHasher{in: make(chan hashItem, hashBufs+1), free: make(chan []byte, hashBufs), done: make(chan struct{})}
	for range hashBufs {
		h.free <- make([]byte, size)
	}
	go h.loop()
	return h
}

func (h *fileHasher) loop() {
	defer close(h.done)
	fh := sha256.New()
	for it := range h.in {
		switch {
		case it.link:
			h.sums = append(h.sums, h.sums[it.ref])
		case it.end:
			var sum [32]byte
			fh.Sum(sum[:0])
			h.sums = append(h.sums, sum)
			fh.Reset()
		default:
			fh.Write(it.b)
			h.free <- it.b[:cap(it.b)] // never blocks: there are only hashBufs buffers
		}
	}
}

// copy writes the current entry's bytes from r to w and queues them for
// hashing; the caller ends the file with endFile once it is complete.
func (h *fileHasher) copy(w io.Writer, r io.Reader) (int64, error) {
	var n int64
	for {
		buf := <-h.free
		k, err := r.Read(buf)
		if k > 0 {
			if _, werr := w.Write(buf[:k]); werr != nil {
				h.free <- buf
				return n, werr
			}
			n += int64(k)
			h.in <- hashItem{b: buf[:k]}
		} else {
			h.free <- buf
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

func (h *fileHasher) endFile()         { h.in <- hashItem{end: true} }
func (h *fileHasher) sameAs(ref int32) { h.in <- hashItem{link: true, ref: ref} }

// wait hashes what is queued and returns every file's sum.
func (h *fileHasher) wait() [][32]byte {
	close(h.in)
	<-h.done
	return h.sums
}
