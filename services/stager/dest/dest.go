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
package dest

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/fault"
)

// Location is one processing location as seen by one stager instance.
type Location struct {
	Name     string
	Root     string
	Instance string // path-safe instance name
}

// Manifest is the record of a verified package.
type Manifest struct {
	PackageID string       `json:"package_id"`
	Checksum  string       `json:"checksum"` // sha256:<hex> of the tar
	SizeBytes int64        `json:"size_bytes"`
	Files     []event.File `json:"files"`
	StagedAt  time.Time    `json:"staged_at"`
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
	return nil
}

// TempDir creates an empty hidden directory for extracting pkg.
func (l Location) TempDir(pkg string) (string, error) {
	d, err := os.MkdirTemp(l.Root, l.tempPrefix()+pkg+"-")
	if err != nil {
		return "", ioErr("create temp dir", err)
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

// Present reports whether pkg is at its final path and matches the record of
// a verification against checksum: the record names the same tar checksum
// and every recorded file is there with its size. It reads no file contents,
// so it is cheap enough to run on every request.
func (l Location) Present(pkg, checksum string) (Manifest, bool) {
	b, err := os.ReadFile(l.manifestPath(pkg))
	if err != nil {
		return Manifest{}, false
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil || m.Checksum != checksum || m.PackageID != pkg {
		return Manifest{}, false
	}
	root, err := os.OpenRoot(l.Final(pkg))
	if err != nil {
		return Manifest{}, false
	}
	defer root.Close()
	for _, f := range m.Files {
		st, err := root.Lstat(f.Path)
		if err != nil || !st.Mode().IsRegular() || st.Size() != f.SizeBytes {
			return Manifest{}, false
		}
	}
	return m, true
}

// Commit makes the verified tree tmp visible as pkg: it records m, then
// renames tmp to the final path in one step. When a verified copy with the
// same checksum is already there (another worker won the race), tmp is
// removed and Commit reports already=true. A stale or partial tree at the
// final path is moved aside first and removed.
func (l Location) Commit(tmp, pkg string, m Manifest) (already bool, err error) {
	final := l.Final(pkg)
	if _, ok := l.Present(pkg, m.Checksum); ok {
		return true, os.RemoveAll(tmp)
	}
	var aside string
	if _, err := os.Lstat(final); err == nil {
		aside, err = os.MkdirTemp(l.Root, ".replaced-"+l.Instance+"-"+pkg+"-")
		if err != nil {
			return false, ioErr("make room for "+pkg, err)
		}
		if err := os.Rename(final, filepath.Join(aside, pkg)); err != nil {
			return false, ioErr("move stale "+final+" aside", err)
		}
	}
	if err := l.writeManifest(m); err != nil {
		return false, err
	}
	if err := os.Rename(tmp, final); err != nil {
		return false, ioErr("rename into place", err)
	}
	if err := syncDir(l.Root); err != nil {
		return false, ioErr("sync "+l.Root, err)
	}
	if aside != "" {
		// The new copy is in place; the old one is garbage.
		_ = os.RemoveAll(aside)
	}
	return false, nil
}

func (l Location) writeManifest(m Manifest) error {
	dir := filepath.Dir(l.manifestPath(m.PackageID))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return ioErr("create "+dir, err)
	}
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode manifest: %w", err)
	}
	f, err := os.CreateTemp(dir, ".tmp-"+m.PackageID+"-")
	if err != nil {
		return ioErr("write manifest", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return ioErr("write manifest", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return ioErr("sync manifest", err)
	}
	if err := f.Close(); err != nil {
		return ioErr("close manifest", err)
	}
	if err := os.Rename(f.Name(), l.manifestPath(m.PackageID)); err != nil {
		return ioErr("rename manifest", err)
	}
	return syncDir(dir)
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
