package stager_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/poll"
	"github.com/ccatobs/ccat-staging/services/stager/archive"
	"github.com/ccatobs/ccat-staging/services/stager/internal/tartest"
	"github.com/ccatobs/ccat-staging/services/stager/stager"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/rs/zerolog"
)

// setProcPerms rewrites the test topology's processing location "proc"
// with modes and a group.
func (w *world) setProcPerms(extra string) {
	w.t.Helper()
	b, err := os.ReadFile(w.topo)
	if err != nil {
		w.t.Fatal(err)
	}
	line := "{name: proc, type: processing, storage: disk, path: " + strconv.Quote(w.proc)
	if !strings.Contains(string(b), line) {
		w.t.Fatalf("topology has no proc line:\n%s", b)
	}
	b = []byte(strings.Replace(string(b), line, line+", "+extra, 1))
	if err := os.WriteFile(w.topo, b, 0o644); err != nil {
		w.t.Fatal(err)
	}
}

// osAccount creates a group or user with a unique name for the test and
// removes it afterwards.
func osAccount(t *testing.T, kind string, args ...string) string {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "ccat" + kind[:1] + hex.EncodeToString(b[:])
	add, del := "groupadd", "groupdel"
	if kind == "user" {
		add, del = "useradd", "userdel"
	}
	if out, err := exec.Command(add, append(args, name)...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", add, name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command(del, name).CombinedOutput(); err != nil {
			t.Errorf("%s %s: %v\n%s", del, name, err, out)
		}
	})
	return name
}

func ids(t *testing.T, name string) (uid, gid uint32) {
	t.Helper()
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := strconv.Atoi(u.Uid)
	b, _ := strconv.Atoi(u.Gid)
	return uint32(a), uint32(b)
}

// runAs runs a command with the credentials of uid (primary group gid,
// supplementary groups groups) and reports whether it succeeded.
func runAs(t *testing.T, uid, gid uint32, groups []uint32, name string, args ...string) (bool, string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: groups}}
	cmd.Dir = "/"
	out, err := cmd.CombinedOutput()
	return err == nil, string(out)
}

// TestStagedPackageReadableByGroup stages a package as root into a location
// with a group and modes, then reads every file as an unprivileged user of
// that group (it can) and as one outside it (it cannot), each in a child
// process with those credentials; the verification record notes the modes
// and group.
func TestStagedPackageReadableByGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		// The suite runs as root (CI does, and task setup needs it): a
		// skipped check of who can read a package would prove nothing.
		t.Fatal("this test creates users and runs readers as them: run the suite as root")
	}
	group := osAccount(t, "group")
	g, err := user.LookupGroup(group)
	if err != nil {
		t.Fatal(err)
	}
	gid64, _ := strconv.Atoi(g.Gid)
	gid := uint32(gid64)
	member := osAccount(t, "user", "-M", "-N", "-G", group, "-s", "/bin/sh")
	outsider := osAccount(t, "user", "-M", "-N", "-s", "/bin/sh")
	mUID, mGID := ids(t, member)
	oUID, oGID := ids(t, outsider)

	w := newWorld(t)
	// t.TempDir's directories are 0700: let others reach the root, as on a
	// real processing file system, so only the package's own modes decide.
	for p := filepath.Dir(w.proc); p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(w.proc, 0o755); err != nil {
		t.Fatal(err)
	}
	w.setProcPerms(`dir_mode: "2750", file_mode: "0640", group: ` + group)
	tb := tartest.Build(t,
		tartest.Entry{Name: "raw/", Type: '5', Mode: 0o777},
		tartest.Entry{Name: "raw/scan-001.fits", Body: "alpha", Mode: 0o666},
		tartest.Entry{Name: "raw/deep/scan-002.fits", Body: "beta", Mode: 0o644},
		tartest.Entry{Name: "run.sh", Body: "#!/bin/sh\n", Mode: 0o4755},
		tartest.File("meta.json", "{}"),
		tartest.Symlink("latest.fits", "raw/deep/scan-002.fits"),
	)
	p := w.put(w.archive, "pkg-perm", tb)
	id := w.submit(request("job-perm", p))
	w.start(w.config())
	done := waitID[event.Done](t, w.rec, "done:"+id)

	var files []string
	err = filepath.WalkDir(done.Path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if st.Sys().(*syscall.Stat_t).Gid != gid {
			t.Errorf("%s: gid %d, want %d", p, st.Sys().(*syscall.Stat_t).Gid, gid)
		}
		switch {
		case d.IsDir():
			if st.Mode() != fs.ModeDir|fs.ModeSetgid|0o750 {
				t.Errorf("%s: mode %v, want drwxr-s---", p, st.Mode())
			}
		case d.Type().IsRegular():
			files = append(files, p)
			if st.Mode() != 0o640 {
				t.Errorf("%s: mode %v, want -rw-r-----", p, st.Mode())
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 4 {
		t.Fatalf("files %v, want 4", files)
	}
	if ok, out := runAs(t, mUID, mGID, []uint32{gid}, "cat", append(files, filepath.Join(done.Path, "latest.fits"))...); !ok {
		t.Errorf("a member of %s cannot read the package: %s", group, out)
	}
	if ok, out := runAs(t, mUID, mGID, []uint32{gid}, "find", done.Path); !ok {
		t.Errorf("a member of %s cannot list the package: %s", group, out)
	}
	for _, f := range append(files, done.Path) {
		if ok, _ := runAs(t, oUID, oGID, nil, "cat", f); ok {
			t.Errorf("%s, outside %s, can read %s", outsider, group, f)
		}
	}
	if ok, _ := runAs(t, oUID, oGID, nil, "ls", done.Path); ok {
		t.Errorf("%s, outside %s, can list the package", outsider, group)
	}
	var m struct {
		DirMode  string `json:"dir_mode"`
		FileMode string `json:"file_mode"`
		GID      *int   `json:"gid"`
		Group    string `json:"group"`
	}
	b, err := os.ReadFile(filepath.Join(w.proc, ".ccat-staging", "manifests", "pkg-perm.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m.DirMode != "2750" || m.FileMode != "0640" || m.GID == nil || *m.GID != gid64 || m.Group != group {
		t.Errorf("verification record notes %+v, want 2750/0640/%d/%s", m, gid, group)
	}
}

// TestUnknownGroupFailsStartup: a group that does not exist is a
// configuration error when the stager starts, not a failure per package.
func TestUnknownGroupFailsStartup(t *testing.T) {
	w := newWorld(t)
	w.setProcPerms("group: ccat-no-such-group-zz")
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	err := stager.Run(ctx, w.config(), zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel))
	if err == nil || !strings.Contains(err.Error(), "ccat-no-such-group-zz") {
		t.Fatalf("Run = %v, want a start-up error naming the group", err)
	}
}

// counting counts the opens of an archive backend.
type counting struct {
	archive.Backend
	opens atomic.Int32
}

func (c *counting) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	c.opens.Add(1)
	return c.Backend.Open(ctx, key)
}

// TestNameConflictFailsOnce: an archive whose file "a" comes after "a/f"
// (a file over a directory) is a property of the archive: one delivery,
// permanent unsafe_archive, the archive read once — not an io_error
// fetched again MAX_DELIVERIES times.
func TestNameConflictFailsOnce(t *testing.T) {
	w := newWorld(t)
	p := w.put(w.archive, "pkg-clash", tartest.Build(t, tartest.File("a/f", "one"), tartest.File("a", "two")))
	src := &counting{Backend: archive.Disk{Root: w.archive}}
	id := w.submit(request("job-clash", p))
	w.start(stager.WithBackend(w.config(), src))
	f := waitID[event.Failed](t, w.rec, "failed:"+id+":1")
	if f.Reason != event.ReasonUnsafeArchive || !f.Permanent {
		t.Fatalf("failed = %+v, want permanent unsafe_archive", f)
	}
	poll.Until(t, 5*time.Second, "empty work queue", poll.True(func() bool { return w.queued() == 0 }))
	// A redelivery would come after RetryBase (50 ms): give it ten times that.
	time.Sleep(500 * time.Millisecond)
	if _, again := w.rec.byID("started:" + id + ":2"); again {
		t.Error("the package was delivered again")
	}
	if n := src.opens.Load(); n != 1 {
		t.Errorf("archive opened %d times, want 1", n)
	}
	if got := w.procEntries(); len(got) != 0 {
		t.Errorf("processing root holds %v", got)
	}
}

// TestRestageQuarantinesUserFiles: files a user put at a package's final
// path (not a verified copy) survive a staging: they are moved to the
// quarantine, the done event says where, and nothing is deleted.
func TestRestageQuarantinesUserFiles(t *testing.T) {
	w := newWorld(t)
	p := w.put(w.archive, "pkg-q", samplePackage(t))
	if err := os.MkdirAll(filepath.Join(w.proc, "pkg-q", "work"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(w.proc, "pkg-q", "work", "notes.txt"), []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	id := w.submit(request("job-q", p))
	w.start(w.config())
	done := waitID[event.Done](t, w.rec, "done:"+id)
	if done.AlreadyPresent || !strings.HasPrefix(done.Quarantined, ".ccat-staging/quarantine/pkg-q-") {
		t.Fatalf("done = %+v, want a quarantine", done)
	}
	if b, err := os.ReadFile(filepath.Join(w.proc, done.Quarantined, "work", "notes.txt")); err != nil || string(b) != "mine" {
		t.Errorf("the user's file in the quarantine: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(done.Path, "meta.json")); err != nil {
		t.Errorf("the package is not in place: %v", err)
	}
	if _, err := os.Stat(filepath.Join(done.Path, "work")); !os.IsNotExist(err) {
		t.Errorf("the user's directory is still inside the package: %v", err)
	}
}
