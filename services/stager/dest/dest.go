// Package dest manages packages at a processing location: hidden temp dirs on
// the same file system, the verification record kept beside (never inside)
// each package, the atomic commit to the final path, and the start-up sweep
// of temp dirs a crashed stager left behind.
//
// Layout under the location's root:
//
//	<package_id>/                          a verified package, nothing else
//	.staging-<instance>-<package_id>-<rnd>/  extraction in progress
//	.ccat-staging/manifests/<package_id>.json  what was verified
//	.ccat-staging/quarantine/<package_id>-<time>  what was at a final path
//	                                       that was not this package's
//	                                       verified copy (never deleted)
//	.ccat-staging/commit.lock              serialises commits of all
//	                                       instances sharing the root
//
// The verification record's JSON is read by stagectl verify too (for the
// modes and group): its fields are a contract.
package dest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/ccatobs/ccat-staging/shared/topology"
	"io"
	"io/fs"
	"iter"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ccatobs/ccat-staging/services/stager/unpack"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/fault"
	"golang.org/x/sys/unix"
)

// Location is one processing location as seen by one stager instance.
type Location struct {
	Name     string
	Root     string
	Instance string // path-safe instance name
	Perms    Perms
	// Sync is how a package extracted here is made durable before Commit
	// puts it in place (unpack.SyncFile when empty).
	Sync unpack.Sync
	// Committer, when set, groups this location's commits (NewCommitter);
	// nil commits each alone. Copies of the Location share it.
	Committer *Committer
	// noLock skips the commit lock: tests use it to stand for hosts whose
	// file system does not share flocks.
	noLock bool
}

// Perms is what a location grants on its packages.
type Perms struct {
	// DirMode and FileMode: permission bits, and for directories
	// optionally fs.ModeSetgid; 0 means unpack.DefaultDirMode (2750) and
	// unpack.DefaultFileMode (0640).
	DirMode, FileMode fs.FileMode
	// ChangeGroup gives everything the group GID (Group is its name as
	// configured, for the record); otherwise the file system's choice.
	ChangeGroup bool
	GID         int
	Group       string
}

// Dir and File are the effective modes.
func (p Perms) Dir() fs.FileMode {
	if p.DirMode == 0 {
		return unpack.DefaultDirMode
	}
	return p.DirMode
}

func (p Perms) File() fs.FileMode {
	if p.FileMode == 0 {
		return unpack.DefaultFileMode
	}
	return p.FileMode
}

// Manifest is the record of a verified package.
type Manifest struct {
	PackageID string       `json:"package_id"`
	Checksum  string       `json:"checksum"` // sha256:<hex> of the tar
	SizeBytes int64        `json:"size_bytes"`
	Files     []event.File `json:"files"`
	StagedAt  time.Time    `json:"staged_at"`
	// What the package was given (Commit fills them): the location's
	// directory and file modes, octal as chmod reads them (an archive's
	// own modes may only have narrowed them), and the group of the
	// package's root, which everything in it shares.
	DirMode  string `json:"dir_mode,omitempty"`
	FileMode string `json:"file_mode,omitempty"`
	GID      *int   `json:"gid,omitempty"`
	Group    string `json:"group,omitempty"`

	// List, when set, is written as the files instead of Files: Commit
	// streams it into the record, so a package of a million files is
	// never a million-element slice nor one huge JSON buffer.
	List FileList `json:"-"`
	// count is the number of files Present saw (it keeps none of them).
	count int
}

// FileList is a list of files that can be walked (unpack.Files).
type FileList interface {
	Len() int
	All() iter.Seq[event.File]
}

// Count is the number of files the manifest records.
func (m Manifest) Count() int {
	switch {
	case m.List != nil:
		return m.List.Len()
	case m.Files != nil:
		return len(m.Files)
	}
	return m.count
}

// Committed says what Commit did.
type Committed struct {
	// Already: a verified copy of the same checksum was in place (another
	// worker or instance won the race); the new tree was dropped.
	Already bool
	// Quarantined is where, relative to the root, Commit moved what was at
	// the final path before (it was not this package's verified copy), or
	// "".
	Quarantined string
}

const sidecar = ".ccat-staging"

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9._-]`)

// SafeInstance makes an instance name usable inside a file name.
func SafeInstance(s string) string {
	s = unsafeChars.ReplaceAllString(s, "_")
	if s == "" || strings.Trim(s, ".") == "" {
		return "stager"
	}
	return s
}

func (l Location) tempPrefix() string { return ".staging-" + l.Instance + "-" }

// Final is the path of a package once it is staged.
func (l Location) Final(pkg string) string { return filepath.Join(l.Root, pkg) }

func (l Location) manifestPath(pkg string) string {
	return filepath.Join(l.Root, sidecar, "manifests", pkg+".json")
}

// Prepare checks that the root exists and creates the sidecar in it. It
// never creates the root itself: a missing root is usually a file system
// that is not mounted, and creating it would fill the file system below.
func (l Location) Prepare() error {
	st, err := os.Stat(l.Root)
	if err != nil {
		return fmt.Errorf("processing location %s: %w", l.Name, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("processing location %s: %s is not a directory", l.Name, l.Root)
	}
	if err := os.MkdirAll(filepath.Join(l.Root, sidecar, "manifests"), 0o755); err != nil {
		return fmt.Errorf("prepare %s: %w", l.Root, err)
	}
	if l.Perms.ChangeGroup {
		// Found now rather than as a failure of every package: the stager's
		// user must be in the group (or root), and a seccomp filter must
		// allow chown.
		f, err := os.CreateTemp(filepath.Join(l.Root, sidecar), ".group-probe-")
		if err != nil {
			return fmt.Errorf("prepare %s: %w", l.Root, err)
		}
		f.Close()
		defer os.Remove(f.Name())
		if err := os.Lchown(f.Name(), -1, l.Perms.GID); err != nil {
			return fmt.Errorf("processing location %s: cannot give files group %q (gid %d): %w; the stager's user must be a member of it", l.Name, l.Perms.Group, l.Perms.GID, err)
		}
	}
	return nil
}

// TempDir creates an empty hidden directory for extracting pkg, with the
// location's group and directory mode before anything is written in it:
// it becomes the package's root. (It is made 0700, narrower than any
// mode, then given the group, then the mode, so no moment is wider.)
func (l Location) TempDir(pkg string) (string, error) {
	d, err := os.MkdirTemp(l.Root, l.tempPrefix()+pkg+"-")
	if err != nil {
		return "", ioErr("create temp dir", err)
	}
	if l.Perms.ChangeGroup {
		if err := os.Lchown(d, -1, l.Perms.GID); err != nil {
			_ = os.Remove(d)
			return "", ioErr("chgrp temp dir", err)
		}
	}
	if err := os.Chmod(d, l.Perms.Dir()); err != nil {
		_ = os.Remove(d)
		return "", ioErr("chmod temp dir", err)
	}
	return d, nil
}

// Sweep removes this instance's temp dirs, left by a crash or a kill, and
// returns how many it removed. Other instances' dirs are theirs to sweep.
func (l Location) Sweep() (int, error) {
	ents, err := os.ReadDir(l.Root)
	if err != nil {
		return 0, fmt.Errorf("sweep %s: %w", l.Root, err)
	}
	n := 0
	var errs []error
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), l.tempPrefix()) || strings.HasPrefix(e.Name(), ".replaced-"+l.Instance+"-") {
			if err := os.RemoveAll(filepath.Join(l.Root, e.Name())); err != nil {
				errs = append(errs, err)
				continue
			}
			n++
		}
	}
	return n, errors.Join(errs...)
}

// HasRecord says whether pkg has a verification record at l: one stat, no
// reading. It proves nothing (Present does); it spares a package that was
// never staged here the work of finding that out the long way.
func (l Location) HasRecord(pkg string) bool {
	_, err := os.Stat(l.manifestPath(pkg))
	return err == nil
}

// Present reports whether pkg is at its final path and matches the record of
// a verification against checksum: the record names the same tar checksum,
// the final path is a directory (not a link to one), and every recorded
// file is there with its size. It reads no file contents, so it is cheap
// enough to run on every request; it reads the record as a stream and
// checks each file as it goes, so a record of a million files is never in
// memory at once. The Manifest it returns has no Files, only their Count.
func (l Location) Present(pkg, checksum string) (Manifest, bool) {
	f, err := os.Open(l.manifestPath(pkg))
	if err != nil {
		return Manifest{}, false
	}
	defer f.Close()
	if st, err := os.Lstat(l.Final(pkg)); err != nil || !st.IsDir() {
		return Manifest{}, false // a link in place of the package is not it
	}
	root, err := os.OpenRoot(l.Final(pkg))
	if err != nil {
		return Manifest{}, false
	}
	defer root.Close()
	m, ok := readRecord(bufio.NewReaderSize(f, 64<<10), func(m *Manifest, ef event.File) bool {
		if m.PackageID != "" && m.PackageID != pkg || m.Checksum != "" && m.Checksum != checksum {
			return false // the record's head came first, as Commit writes it: stop early
		}
		st, err := root.Lstat(ef.Path)
		return err == nil && st.Mode().IsRegular() && st.Size() == ef.SizeBytes
	})
	if !ok || m.Checksum != checksum || m.PackageID != pkg {
		return Manifest{}, false
	}
	return m, true
}

// readRecord decodes a verification record from r, handing each file to
// check instead of keeping it; it fails as soon as check does.
func readRecord(r io.Reader, check func(*Manifest, event.File) bool) (Manifest, bool) {
	var m Manifest
	dec := json.NewDecoder(r)
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return m, false
	}
	head := map[string]json.RawMessage{}
	for dec.More() {
		t, err := dec.Token()
		key, ok := t.(string)
		if err != nil || !ok {
			return m, false
		}
		if key != "files" {
			var raw json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				return m, false
			}
			head[key] = raw
			// The head so far, so check can stop at a wrong checksum.
			switch key {
			case "package_id":
				_ = json.Unmarshal(raw, &m.PackageID)
			case "checksum":
				_ = json.Unmarshal(raw, &m.Checksum)
			}
			continue
		}
		if t, err := dec.Token(); err != nil || t != json.Delim('[') {
			if t == nil && err == nil {
				continue // "files": null
			}
			return m, false
		}
		for dec.More() {
			var ef event.File
			if err := dec.Decode(&ef); err != nil || !check(&m, ef) {
				return m, false
			}
			m.count++
		}
		if _, err := dec.Token(); err != nil {
			return m, false
		}
	}
	b, err := json.Marshal(head)
	if err != nil {
		return m, false
	}
	n := m.count
	if err := json.Unmarshal(b, &m); err != nil {
		return m, false
	}
	m.count = n
	return m, true
}

// Commit makes the verified tree tmp visible as pkg: it records m (with
// the location's modes and the tree's group), then renames tmp to the
// final path in one step that never replaces anything. When a verified copy
// with the same checksum is already there (another worker or instance won
// the race), tmp is removed and Commit reports Already. Anything else at
// the final path (a stale or partial copy, or files a user or a pipeline
// put there) is moved to the quarantine, never deleted.
//
// Instances sharing the root take turns through an flock on
// .ccat-staging/commit.lock, so a check and the renames that follow it are
// one step for all of them; the renames themselves use RENAME_NOREPLACE, so
// even a writer outside that lock cannot have its copy replaced: a final
// path that appears between the check and the rename is checked again.
//
// The record is written and fsynced before the lock is asked for. With a
// Committer, the commits that queue up while one batch holds the lock are
// the next batch, committed under one lock and made durable by one fsync
// of the manifests directory and one of the root (see Committer).
func (l Location) Commit(tmp, pkg string, m Manifest) (Committed, error) {
	st, err := os.Lstat(tmp)
	if err != nil {
		return Committed{}, ioErr("stat "+tmp, err)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		gid := int(sys.Gid)
		m.GID = &gid
	}
	m.DirMode, m.FileMode, m.Group = topology.Octal(l.Perms.Dir()), topology.Octal(l.Perms.File()), l.Perms.Group
	rec, err := l.writeRecord(m)
	if err != nil {
		return Committed{}, err
	}
	p := &pending{tmp: tmp, pkg: pkg, m: m, rec: rec}
	if l.Committer == nil {
		l.commitUnderLock(func() []*pending { return []*pending{p} })
		return p.c, p.err
	}
	return l.Committer.commit(l, p)
}

// Committer groups the commits of one location made in one process (group
// commit): a commit queues; if no batch is being committed it leads one,
// otherwise it waits. The leader takes the commit lock once, then takes
// everything queued by then as its batch, commits each item as Commit
// always has, makes the batch durable with one fsync of the manifests
// directory and one of the root, releases the lock, passes the lead to the
// first commit that queued meanwhile and hands each item its result. So a
// commit alone waits for nothing more than before, and under load the
// three fsyncs a package cost under the lock are two a batch. One
// Committer serves one Location (all copies of its value); the zero
// Location has none and commits alone.
type Committer struct {
	observe func(size int)

	mu      sync.Mutex
	queue   []*pending
	leading bool // a commit is leading a batch; new ones queue for the next
}

// NewCommitter returns a Committer that reports the size of every batch to
// observe (nil: not reported), after the batch's leader holds the lock.
func NewCommitter(observe func(size int)) *Committer {
	return &Committer{observe: observe}
}

// pending is one commit in a batch.
type pending struct {
	tmp, pkg string
	m        Manifest
	// rec is the record's temp file, written and fsynced before queueing;
	// "" once it was renamed into place (a retry writes another).
	rec   string
	tries int
	c     Committed
	err   error
	// turn gets one value: true to lead the next batch, or false when c
	// and err are set.
	turn chan bool
}

func (c *Committer) commit(l Location, p *pending) (Committed, error) {
	p.turn = make(chan bool, 1)
	c.mu.Lock()
	c.queue = append(c.queue, p)
	lead := !c.leading
	c.leading = true
	c.mu.Unlock()
	if !lead && !<-p.turn {
		return p.c, p.err
	}
	var batch []*pending
	done := false
	defer func() {
		if !done {
			// A panic in the batch (the stager's workers recover from
			// panics): no follower may wait forever or take silence for
			// success.
			for _, q := range batch {
				if q.err == nil {
					q.err = fmt.Errorf("commit of %s: the batch was aborted", q.pkg)
				}
			}
		}
		c.mu.Lock()
		if len(c.queue) > 0 {
			c.queue[0].turn <- true
		} else {
			c.leading = false
		}
		c.mu.Unlock()
		for _, q := range batch {
			if q != p {
				q.turn <- false
			}
		}
	}()
	l.commitUnderLock(func() []*pending {
		c.mu.Lock()
		batch = c.take()
		c.mu.Unlock()
		if c.observe != nil {
			c.observe(len(batch))
		}
		return batch
	})
	done = true
	return p.c, p.err
}

// take removes the next batch from the queue: the first commit of each
// package, in order. A later commit of a package already in the batch waits
// for the next one, so that it sees the first one's copy in place as a
// commit after it always has (and the two never share a record path within
// one round of renames). The queue's first commit (the leader's) is always
// taken. Called with c.mu held.
func (c *Committer) take() []*pending {
	var batch, rest []*pending
	seen := make(map[string]bool, len(c.queue))
	for _, p := range c.queue {
		if seen[p.pkg] {
			rest = append(rest, p)
			continue
		}
		seen[p.pkg] = true
		batch = append(batch, p)
	}
	c.queue = rest
	return batch
}

// commitUnderLock takes the commit lock, then the batch (so that commits
// queued while the lock was awaited join it), and commits it. Every item
// gets its result, and its record's temp file is gone when it returns.
func (l Location) commitUnderLock(take func() []*pending) {
	unlock, err := l.lock()
	batch := take()
	defer func() {
		for _, p := range batch {
			if p.rec != "" {
				_ = os.Remove(p.rec)
			}
		}
	}()
	if err != nil {
		for _, p := range batch {
			p.err = err
		}
		return
	}
	defer unlock()
	l.commitBatch(batch)
}

// commitBatch commits the items of a batch, each on its own (one's failure
// is its own), except the two fsyncs the batch shares. It goes in rounds:
// each item is checked, what is at its final path quarantined and its
// record renamed into place; the manifests directory is fsynced; then the
// trees are renamed into place, and an item whose final path was taken in
// between goes round again. So a record is durable before its tree is at
// the final path, as when every commit fsynced its own, and nobody is told
// of success before the root's fsync made the rename durable. Called with
// the commit lock held.
func (l Location) commitBatch(batch []*pending) {
	failAll := func(err error) {
		for _, p := range batch {
			if p.err == nil {
				p.err = err
			}
		}
	}
	rootChanged := false
	for round := batch; len(round) > 0; {
		var ready []*pending
		for _, p := range round {
			if l.settle(p, &rootChanged) {
				ready = append(ready, p)
			}
		}
		if len(ready) > 0 {
			dir := filepath.Join(l.Root, sidecar, "manifests")
			if err := syncDir(dir); err != nil {
				failAll(ioErr("sync "+dir, err))
				return
			}
		}
		round = nil
		for _, p := range ready {
			err := renameNoReplace(p.tmp, l.Final(p.pkg))
			switch {
			case err == nil:
				rootChanged = true
			case errors.Is(err, syscall.EEXIST) || errors.Is(err, syscall.ENOTEMPTY):
				round = append(round, p) // something appeared at final since the check: look again
			default:
				p.err = ioErr("rename into place", err)
			}
		}
	}
	if rootChanged {
		if err := syncDir(l.Root); err != nil {
			failAll(ioErr("sync "+l.Root, err))
		}
	}
}

// settle does for p what comes before its tree's rename: it looks at the
// final path, ends p as Already when its verified copy is there, quarantines
// anything else there, and renames p's record into place. It reports whether
// p's tree is to be renamed; when not, p has its result. rootChanged is set
// when the quarantine moved something out of (or back into) the root.
func (l Location) settle(p *pending, rootChanged *bool) bool {
	final := l.Final(p.pkg)
	for {
		if p.tries == 5 {
			p.err = ioErr("rename into place", fmt.Errorf("%s keeps changing under the commit", final))
			return false
		}
		p.tries++
		// What is there is looked at before it is judged, so that the
		// quarantine can tell whether it moves what was judged.
		st, statErr := os.Lstat(final)
		if _, ok := l.Present(p.pkg, p.m.Checksum); ok {
			p.c.Already = true
			p.err = os.RemoveAll(p.tmp)
			return false
		}
		if statErr == nil {
			q, back, err := l.quarantine(p.pkg, st)
			if err != nil {
				p.err = err
				return false
			}
			if q != "" || back {
				*rootChanged = true
			}
			if back {
				continue // it was a newer copy, put back: look again
			}
			if q != "" {
				p.c.Quarantined = q
			}
		}
		if p.rec == "" {
			rec, err := l.writeRecord(p.m)
			if err != nil {
				p.err = err
				return false
			}
			p.rec = rec
		}
		if err := os.Rename(p.rec, l.manifestPath(p.m.PackageID)); err != nil {
			p.err = ioErr("rename manifest", err)
			return false
		}
		p.rec = ""
		return true
	}
}

// quarantine moves what is at the final path of pkg to
// .ccat-staging/quarantine/<pkg>-<time> and returns that path relative to
// the root ("" when nothing was there any more). judged is what Commit
// found not verified: if what was moved is something else (another
// instance replaced it in between, where the commit lock does not reach
// across hosts), it is put back where it was and back is true.
func (l Location) quarantine(pkg string, judged fs.FileInfo) (rel string, back bool, err error) {
	dir := filepath.Join(l.Root, sidecar, "quarantine")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", false, ioErr("create "+dir, err)
	}
	stamp := time.Now().UTC().Format("20060102T150405.000000000Z")
	for n := 0; ; n++ {
		name := pkg + "-" + stamp
		if n > 0 {
			name += "-" + strconv.Itoa(n)
		}
		to := filepath.Join(dir, name)
		err := renameNoReplace(l.Final(pkg), to)
		switch {
		case err == nil:
			if st, err := os.Lstat(to); err == nil && !os.SameFile(st, judged) {
				if renameNoReplace(to, l.Final(pkg)) == nil {
					return "", true, nil
				}
			}
			if err := syncDir(dir); err != nil {
				return "", false, ioErr("sync "+dir, err)
			}
			return filepath.Join(sidecar, "quarantine", name), false, nil
		case errors.Is(err, fs.ErrNotExist):
			return "", false, nil
		case (errors.Is(err, syscall.EEXIST) || errors.Is(err, syscall.ENOTEMPTY)) && n < 100:
			continue
		default:
			return "", false, ioErr("quarantine "+l.Final(pkg), err)
		}
	}
}

// renameNoReplace renames old to new unless new exists (EEXIST). File
// systems without RENAME_NOREPLACE (EINVAL: some network file systems) get
// a check and a plain rename, which the commit lock makes safe among
// stagers.
func renameNoReplace(old, new string) error {
	err := unix.Renameat2(unix.AT_FDCWD, old, unix.AT_FDCWD, new, unix.RENAME_NOREPLACE)
	if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOSYS) {
		if _, err := os.Lstat(new); err == nil {
			return &os.LinkError{Op: "rename", Old: old, New: new, Err: syscall.EEXIST}
		}
		return os.Rename(old, new)
	}
	if err != nil {
		return &os.LinkError{Op: "rename", Old: old, New: new, Err: err}
	}
	return nil
}

// lock takes the location's commit lock, shared by every instance whose
// root this is (flock: local file systems, NFSv4, and cluster file systems
// mounted with flock support).
func (l Location) lock() (func(), error) {
	if l.noLock {
		return func() {}, nil
	}
	p := filepath.Join(l.Root, sidecar, "commit.lock")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, ioErr("open "+p, err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, ioErr("lock "+p, err)
	}
	return func() { f.Close() }, nil // closing releases the lock
}

// writeRecord writes m to a new temp file beside the records and fsyncs
// it, so that only its rename into place (and the directory's fsync) is
// left for the commit lock. It returns the temp file's path.
func (l Location) writeRecord(m Manifest) (string, error) {
	dir := filepath.Dir(l.manifestPath(m.PackageID))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", ioErr("create "+dir, err)
	}
	f, err := os.CreateTemp(dir, ".tmp-"+m.PackageID+"-")
	if err != nil {
		return "", ioErr("write manifest", err)
	}
	fail := func(what string, err error) (string, error) {
		f.Close()
		_ = os.Remove(f.Name())
		return "", ioErr(what, err)
	}
	w := bufio.NewWriterSize(f, 64<<10)
	err = encodeRecord(w, m)
	if err == nil {
		err = w.Flush()
	}
	if err != nil {
		return fail("write manifest", err)
	}
	if err := f.Sync(); err != nil {
		return fail("sync manifest", err)
	}
	if err := f.Close(); err != nil {
		_ = os.Remove(f.Name())
		return "", ioErr("close manifest", err)
	}
	return f.Name(), nil
}

// encodeRecord writes m as JSON, its files one at a time: the head is
// marshalled with an empty list, and the list streamed in its place.
func encodeRecord(w io.Writer, m Manifest) error {
	files := m.Files
	if m.List != nil {
		files = nil
	}
	m.Files = []event.File{}
	head, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode manifest: %w", err)
	}
	// The key can only occur once as JSON structure: strings escape quotes.
	before, after, ok := bytes.Cut(head, []byte(`"files":[]`))
	if !ok {
		return errors.New("encode manifest: no files key")
	}
	if _, err := w.Write(before); err != nil {
		return err
	}
	if _, err := io.WriteString(w, `"files":[`); err != nil {
		return err
	}
	all := slices.Values(files)
	if m.List != nil {
		all = m.List.All()
	}
	first := true
	for ef := range all {
		b, err := json.Marshal(ef)
		if err != nil {
			return fmt.Errorf("encode manifest: %w", err)
		}
		if !first {
			if _, err := w.Write([]byte{','}); err != nil {
				return err
			}
		}
		first = false
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	if _, err := w.Write([]byte{']'}); err != nil {
		return err
	}
	_, err = w.Write(after)
	return err
}

// Free returns the bytes available to an unprivileged writer at the root.
func (l Location) Free() (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(l.Root, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", l.Root, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func ioErr(what string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fault.Transient(event.ReasonNoSpace, fmt.Errorf("%s: %w", what, err))
	}
	return fault.Transient(event.ReasonIOError, fmt.Errorf("%s: %w", what, err))
}

// ErrOutsideRoot refuses a deletion whose path would not be a package
// directory directly inside the location's root.
var ErrOutsideRoot = errors.New("not a package directory inside the processing root")

var pkgRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// Remove deletes the staged copy of pkg: first its verification record, so
// no request can take a half-deleted tree for a staged one, then the
// package directory, moved aside in one rename and removed there. It
// returns the bytes of regular files it freed; a copy that is not there
// frees 0 and is no error. Only <root>/<pkg> is ever touched: an id that
// could name anything else (a path, '.', '..', a hidden name) is refused,
// and a symlink in its place is removed as a link, never followed.
func (l Location) Remove(pkg string) (freed int64, err error) {
	if !pkgRE.MatchString(pkg) || pkg == "." || pkg == ".." || strings.ContainsAny(pkg, `/\`) {
		return 0, fault.Permanent(event.ReasonBadRequest, fmt.Errorf("remove %q: %w", pkg, ErrOutsideRoot))
	}
	final := l.Final(pkg)
	if rel, err := filepath.Rel(l.Root, final); err != nil || rel != pkg {
		return 0, fault.Permanent(event.ReasonBadRequest, fmt.Errorf("remove %q: %w", pkg, ErrOutsideRoot))
	}
	if err := os.Remove(l.manifestPath(pkg)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, ioErr("remove record of "+pkg, err)
	}
	st, err := os.Lstat(final)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, ioErr("stat "+final, err)
	}
	if !st.IsDir() {
		// Not something a stager made: remove the entry itself only.
		if err := os.Remove(final); err != nil {
			return 0, ioErr("remove "+final, err)
		}
		return 0, nil
	}
	aside, err := os.MkdirTemp(l.Root, ".replaced-"+l.Instance+"-"+pkg+"-")
	if err != nil {
		return 0, ioErr("make room to delete "+pkg, err)
	}
	if err := os.Rename(final, filepath.Join(aside, pkg)); err != nil {
		_ = os.Remove(aside)
		return 0, ioErr("move "+final+" aside", err)
	}
	_ = filepath.WalkDir(aside, func(_ string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				freed += info.Size()
			}
		}
		return nil
	})
	if err := os.RemoveAll(aside); err != nil {
		// The copy is out of sight already; Sweep finishes the job at the
		// next start.
		return freed, ioErr("remove "+aside, err)
	}
	return freed, syncDir(l.Root)
}
