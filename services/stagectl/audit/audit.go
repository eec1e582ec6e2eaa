// Package audit compares a staged copy of a package on disk with the
// manifest its archive announcement carried: every file present, of the
// announced size and sha256, and nothing else; and with the modes and group
// the stager recorded it gave the copy.
package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/ccatobs/ccat-staging/shared/topology"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"syscall"

	"github.com/ccatobs/ccat-staging/shared/event"
)

// Kinds of drift.
const (
	MissingPackage   = "missing_package"   // the ledger says staged, the directory is gone
	UntrackedPackage = "untracked_package" // a directory the ledger knows nothing about
	// DeletedPresent: the ledger records the copy deleted (a stager
	// reported staging.released), yet its directory is on disk.
	DeletedPresent   = "deleted_copy_present"
	MissingFile      = "missing_file"
	ExtraFile        = "extra_file"
	NotRegular       = "not_regular" // a link, device or the like where a file was expected
	SizeMismatch     = "size_mismatch"
	ChecksumMismatch = "checksum_mismatch"
	Unreadable       = "unreadable"
)

// Finding is one difference between disk and manifest.
type Finding struct {
	PackageID string `json:"package_id"`
	Path      string `json:"path,omitempty"` // slash-separated, relative to the package
	Kind      string `json:"kind"`
	Detail    string `json:"detail,omitempty"`
}

// Result is the audit of one package directory.
type Result struct {
	Files    int       // files hashed
	Bytes    int64     // bytes hashed
	Findings []Finding // sorted by path
}

// Package checks dir against want. A missing dir is one MissingPackage
// finding. I/O errors on single files become Unreadable findings so one bad
// file does not hide the state of the rest.
func Package(pkg, dir string, want []event.File) Result {
	var r Result
	add := func(path, kind, detail string) {
		r.Findings = append(r.Findings, Finding{PackageID: pkg, Path: path, Kind: kind, Detail: detail})
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		detail := "no such directory"
		if err == nil {
			detail = "not a directory"
		} else if !errors.Is(err, fs.ErrNotExist) {
			detail = err.Error()
		}
		add("", MissingPackage, dir+": "+detail)
		return r
	}
	onDisk := map[string]fs.FileMode{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			rel, _ := filepath.Rel(dir, p)
			add(filepath.ToSlash(rel), Unreadable, err.Error())
			if d != nil && d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		onDisk[filepath.ToSlash(rel)] = d.Type()
		return nil
	})
	if err != nil {
		add("", Unreadable, err.Error())
	}
	for _, f := range want {
		mode, ok := onDisk[f.Path]
		if !ok {
			add(f.Path, MissingFile, fmt.Sprintf("want %d bytes", f.SizeBytes))
			continue
		}
		delete(onDisk, f.Path)
		if !mode.IsRegular() {
			add(f.Path, NotRegular, mode.Type().String())
			continue
		}
		size, sum, err := hashFile(filepath.Join(dir, filepath.FromSlash(f.Path)))
		if err != nil {
			add(f.Path, Unreadable, err.Error())
			continue
		}
		r.Files++
		r.Bytes += size
		switch {
		case size != f.SizeBytes:
			add(f.Path, SizeMismatch, fmt.Sprintf("want %d bytes, have %d", f.SizeBytes, size))
		case sum != f.SHA256:
			add(f.Path, ChecksumMismatch, fmt.Sprintf("want sha256 %s, have %s", f.SHA256, sum))
		}
	}
	for p := range onDisk {
		add(p, ExtraFile, "not in the manifest")
	}
	sort.Slice(r.Findings, func(i, j int) bool { return r.Findings[i].Path < r.Findings[j].Path })
	return r
}

func hashFile(p string) (int64, string, error) {
	f, err := os.Open(p)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return n, "", fmt.Errorf("read %s: %w", p, err)
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

// Kinds of permission drift.
const (
	ModeMismatch  = "mode_mismatch"  // wider than the location grants, or special bits
	GroupMismatch = "group_mismatch" // not the group the copy was staged with
)

// Perms is what the stager recorded it gave a package (the verification
// record's dir_mode, file_mode and gid).
type Perms struct {
	DirMode, FileMode fs.FileMode // fs.ModeSetgid for a setgid DirMode
	GID               int
}

// Modes checks the modes and group of everything in dir against p. The
// package directory must have exactly DirMode; below it an archive may have
// narrowed the modes but never widened them: directories within DirMode
// and with its setgid bit, files within FileMode, no setuid or sticky, and
// every entry (links included) of group GID.
func Modes(pkg, dir string, p Perms) []Finding {
	var out []Finding
	add := func(path, kind, detail string) {
		out = append(out, Finding{PackageID: pkg, Path: path, Kind: kind, Detail: detail})
	}
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // Package reports what cannot be read
		}
		rel, _ := filepath.Rel(dir, path)
		rel = filepath.ToSlash(rel)
		if rel == "." {
			rel = ""
		}
		st, err := os.Lstat(path)
		if err != nil {
			return nil
		}
		if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Gid) != p.GID {
			add(rel, GroupMismatch, fmt.Sprintf("gid %d, staged with %d", sys.Gid, p.GID))
		}
		m := st.Mode()
		special := m & (fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
		switch {
		case m.IsDir() && rel == "":
			if m.Perm() != p.DirMode.Perm() || special != p.DirMode&fs.ModeSetgid {
				add(rel, ModeMismatch, fmt.Sprintf("package directory is %s, the location gives %s", topology.Octal(m), topology.Octal(p.DirMode)))
			}
		case m.IsDir():
			if m.Perm()&^p.DirMode.Perm() != 0 || special != p.DirMode&fs.ModeSetgid {
				add(rel, ModeMismatch, fmt.Sprintf("directory is %s, the location gives at most %s", topology.Octal(m), topology.Octal(p.DirMode)))
			}
		case m.IsRegular():
			if m.Perm()&^p.FileMode.Perm() != 0 || special != 0 {
				add(rel, ModeMismatch, fmt.Sprintf("file is %s, the location gives at most %s", topology.Octal(m), topology.Octal(p.FileMode)))
			}
		}
		return nil
	})
	return out
}
