package tests

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/bustest"
	"github.com/ccatobs/ccat-staging/devkit/dbtest"
	"github.com/ccatobs/ccat-staging/devkit/inproc"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/ccatobs/ccat-staging/shared/tarpkg"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// system is the whole pipeline running in the test process against its own
// JetStream server and its own database.
type system struct {
	t        *testing.T
	base     string // every file the system may touch lives below base
	topology string
	bus      *bustest.Server
	dbURL    string
	api      ledgerapi.Client
}

// testTopology is the system tests' topology (see inproc.TestTopology).
const testTopology = inproc.TestTopology

// startSystem runs ledger, planner and one stager per site until the test ends.
func startSystem(t *testing.T) *system {
	t.Helper()
	return startSystemWith(t, testTopology, nil)
}

// startSystemWith is startSystem over another topology (a template whose %[1]s
// is the test's base directory; every disk path in it is created) and with
// extra environment for the services.
func startSystemWith(t *testing.T, topologyTemplate string, extraEnv map[string]string) *system {
	t.Helper()
	s := &system{t: t, base: t.TempDir()}
	var err error
	if s.topology, err = inproc.WriteTopology(s.base, topologyTemplate); err != nil {
		t.Fatalf("test topology: %v", err)
	}
	s.bus = bustest.New(t)
	s.dbURL = dbtest.New(t)
	env := map[string]string{
		"NATS_URL":          s.bus.URL,
		"DATABASE_URL":      s.dbURL,
		"TOPOLOGY_FILE":     s.topology,
		"LEDGER_HTTP_ADDR":  "127.0.0.1:0",
		"PLANNER_HTTP_ADDR": "127.0.0.1:0",
		"STAGER_HTTP_ADDR":  "127.0.0.1:0",
		"STAGER_WORKERS":    "2",
	}
	maps.Copy(env, extraEnv)
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel).With().Timestamp().Logger()
	// Registered after the server's and the database's cleanups, so the
	// services stop before those go away.
	p := inproc.StartTest(t, inproc.Options{Sites: []string{"cologne", "us"}, Log: log, Env: inproc.SameEnv(env, "t-")})
	s.api.BaseURL = p.LedgerURL
	if err := bus.Provision(t.Context(), s.bus.JS, bus.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	return s
}

// archive writes a package under an archive location and announces it.
func (s *system) archive(id string, entries []tarpkg.Entry, locations ...string) tarpkg.Info {
	s.t.Helper()
	var info tarpkg.Info
	for _, loc := range locations {
		site, _, _ := strings.Cut(loc, "-")
		key := "raw/" + id + ".tar"
		dst := filepath.Join(s.base, site, "lta", key)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			s.t.Fatal(err)
		}
		var err error
		if info, err = tarpkg.Write(dst, entries); err != nil {
			s.t.Fatal(err)
		}
		s.announce(event.PackageArchived{PackageID: id, Location: loc, Key: key, SizeBytes: info.SizeBytes,
			Checksum: info.Checksum, Format: "tar", Files: info.Files})
	}
	return info
}

func (s *system) announce(a event.PackageArchived) {
	s.t.Helper()
	s.publish(subject.Archived, fmt.Sprintf("archived:%s:%s", a.Location, a.PackageID), a)
}

func (s *system) publish(subj, id string, d event.Data) {
	s.t.Helper()
	ev, err := event.New("ccat-staging/tests", id, "", d)
	if err != nil {
		s.t.Fatal(err)
	}
	if _, err := bus.Publish(s.t.Context(), s.bus.JS, subj, ev); err != nil {
		s.t.Fatal(err)
	}
}

func (s *system) submit(id string, d event.Submit) {
	s.t.Helper()
	s.publish(subject.Submit, id, d)
}

// waitJob polls the ledger API until the job is terminal.
func (s *system) waitJob(id string, within time.Duration) ledgerapi.Job {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(s.t.Context(), within)
	defer cancel()
	j, err := s.api.Wait(ctx, id, 50*time.Millisecond, ledgerapi.Job.Terminal)
	if err != nil {
		s.t.Fatalf("job %s: %v", id, err)
	}
	return j
}

// events returns every event in a stream, each checked against its schema.
func (s *system) events(stream string) []event.Envelope {
	s.t.Helper()
	ctx := s.t.Context()
	st, err := s.bus.JS.Stream(ctx, stream)
	if err != nil {
		s.t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	var out []event.Envelope
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			s.t.Fatal(err)
		}
		env, err := event.Validate(m.Data)
		if err != nil {
			s.t.Errorf("%s seq %d (%s) does not validate: %v\n%s", stream, seq, m.Subject, err, m.Data)
			continue
		}
		if got := m.Header.Get(jetstream.MsgIDHeader); got != env.ID {
			s.t.Errorf("%s seq %d: Nats-Msg-Id %q, CloudEvent id %q", stream, seq, got, env.ID)
		}
		out = append(out, env)
	}
	return out
}

func ofType(evs []event.Envelope, typ string) []event.Envelope {
	var out []event.Envelope
	for _, e := range evs {
		if e.Type == typ {
			out = append(out, e)
		}
	}
	return out
}

func dataOf[T event.Data](t *testing.T, e event.Envelope) T {
	t.Helper()
	v, err := event.DataAs[T](e)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// checkStaged verifies every manifest file under dir byte for byte.
func checkStaged(t *testing.T, dir string, info tarpkg.Info) {
	t.Helper()
	for _, f := range info.Files {
		b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(f.Path)))
		if err != nil {
			t.Errorf("staged file: %v", err)
			continue
		}
		sum := sha256.Sum256(b)
		if hex.EncodeToString(sum[:]) != f.SHA256 || int64(len(b)) != f.SizeBytes {
			t.Errorf("%s: content differs from the archive", f.Path)
		}
	}
}

// visibleEntries lists what a person sees in a processing root: everything
// but the stager's hidden bookkeeping.
func visibleEntries(t *testing.T, root string) []string {
	t.Helper()
	des, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, de := range des {
		if !strings.HasPrefix(de.Name(), ".") {
			out = append(out, de.Name())
		}
	}
	return out
}

// tempDirs finds staging temp dirs left anywhere under root.
func tempDirs(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && strings.HasPrefix(d.Name(), ".staging") {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// allFiles lists every path under root, relative to it.
func allFiles(t *testing.T, root string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out[rel] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// writeRawTar writes a tar made of hand-crafted headers, for hostile archives.
func writeRawTar(t *testing.T, dst string, entries []rawEntry) tarpkg.Info {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	for _, e := range entries {
		h := e.hdr
		h.Size = int64(len(e.data))
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := errors.Join(tw.Close(), f.Close()); err != nil {
		t.Fatal(err)
	}
	info, err := tarpkg.Describe(dst)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

type rawEntry struct {
	hdr  tar.Header
	data []byte
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
