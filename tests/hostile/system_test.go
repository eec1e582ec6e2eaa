// Package hostile drives malformed and malicious input through the real entry
// points of ccat-staging (staging.submit and archive.package.archived on a
// real JetStream server, and the ledger's HTTP API) while the real planner,
// stagers and ledger run in this process, and checks that every case ends in
// its exact, reasoned outcome, that the services stay healthy, and that
// nothing is written outside the configured roots.
package hostile

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/dbtest"
	"github.com/ccatobs/ccat-staging/devkit/inproc"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/ccatobs/ccat-staging/shared/tarpkg"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Limits the services run with, small so that the hostile cases that exceed
// them stay small.
const (
	maxPackages = 100 // PLANNER_MAX_PACKAGES
	maxEntries  = 50  // STAGER_MAX_ENTRIES
	// maxPayload is the server's max_payload: large enough to carry an event
	// over event.MaxSize, so the services' own size guard is what answers.
	maxPayload = 16 << 20
)

// escapeMarker names every file a hostile archive tries to plant outside
// the destination; after the corpus no file of that name may exist in any
// ancestor of the roots.
const escapeMarker = "ccat-hostile-escaped"

const topologyYAML = `sites:
  - name: cologne
    locations:
      - name: cologne-lta
        type: long_term_archive
        storage: disk
        priority: 1
        path: %[1]s/cologne/lta
      - name: cologne-processing
        type: processing
        storage: disk
        priority: 1
        path: %[1]s/cologne/processing
      - name: cologne-closed
        type: processing
        storage: disk
        priority: 2
        active: false
        path: %[1]s/cologne/closed
  - name: us
    locations:
      - name: us-lta
        type: long_term_archive
        storage: disk
        priority: 1
        path: %[1]s/us/lta
      - name: us-processing
        type: processing
        storage: disk
        priority: 1
        path: %[1]s/us/processing
  - name: chile
    locations:
      - name: chile-lta
        type: long_term_archive
        storage: disk
        priority: 1
        path: %[1]s/chile/lta
`

var roots = []string{"cologne/lta", "cologne/processing", "cologne/closed", "us/lta", "us/processing", "chile/lta"}

// system is the whole pipeline against its own JetStream server (started
// here rather than with bustest, to raise max_payload) and database.
type system struct {
	t          *testing.T
	base       string
	nc         *nats.Conn
	js         jetstream.JetStream
	api        ledgerapi.Client
	plannerURL string
	events     *collector

	mu        sync.Mutex
	controls  int
	completed map[string]bool // "<site>/<package>" expected at a processing root
	lta       map[string]bool // files the tests wrote under archive roots, relative to base
}

func startSystem(t *testing.T) *system {
	t.Helper()
	s := &system{t: t, base: t.TempDir(), completed: map[string]bool{}, lta: map[string]bool{}}
	topo, err := inproc.WriteTopology(s.base, topologyYAML)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := server.NewServer(&server.Options{
		ServerName: "hostile", Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true,
		StoreDir: t.TempDir(), JetStreamMaxMemory: 64 << 20, JetStreamMaxStore: 1 << 30,
		MaxPayload: maxPayload, NoSigs: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	s.nc, err = nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.nc.Close)
	if s.js, err = jetstream.New(s.nc); err != nil {
		t.Fatal(err)
	}
	if err := bus.Provision(t.Context(), s.js, bus.StreamConfig{}); err != nil {
		t.Fatal(err)
	}

	env := map[string]string{
		"NATS_URL":                        ns.ClientURL(),
		"DATABASE_URL":                    dbtest.New(t),
		"TOPOLOGY_FILE":                   topo,
		"LEDGER_HTTP_ADDR":                "127.0.0.1:0",
		"LEDGER_TOKENS":                   apiToken,
		"PLANNER_HTTP_ADDR":               "127.0.0.1:0",
		"STAGER_HTTP_ADDR":                "off",
		"STAGER_WORKERS":                  "4",
		"PLANNER_MAX_PACKAGES":            fmt.Sprint(maxPackages),
		"PLANNER_UNKNOWN_PACKAGE_RETRIES": "3",
		"PLANNER_UNKNOWN_PACKAGE_DELAY":   "100ms",
		"STAGER_MAX_ENTRIES":              fmt.Sprint(maxEntries),
		"STAGER_RETRY_BASE":               "20ms",
		"STAGER_RETRY_MAX":                "200ms",
		"STAGER_ACK_WAIT":                 "10s",
		"STAGER_PROGRESS_INTERVAL":        "1s",
	}
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel).With().Timestamp().Logger()
	p := inproc.StartTest(t, inproc.Options{Sites: []string{"cologne", "us"}, Log: log, Env: inproc.SameEnv(env, "hostile-")})
	s.api.BaseURL, s.plannerURL = p.LedgerURL, p.PlannerURL
	s.events = newCollector(t, s.js)
	return s
}

// collector keeps every event of STAGING_EVENTS by id, checking that what
// the services emit validates and carries its id as Nats-Msg-Id.
type collector struct {
	mu   sync.Mutex
	byID map[string]event.Envelope
	all  []event.Envelope
	bad  []string
}

func newCollector(t *testing.T, js jetstream.JetStream) *collector {
	t.Helper()
	c := &collector{byID: map[string]event.Envelope{}}
	cons, err := js.OrderedConsumer(t.Context(), subject.EventsStream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		if m.Subject() == subject.Submit {
			return // our own, hostile on purpose
		}
		env, err := event.Validate(m.Data())
		c.mu.Lock()
		defer c.mu.Unlock()
		if err != nil {
			c.bad = append(c.bad, fmt.Sprintf("%s: %v: %.300s", m.Subject(), err, m.Data()))
			return
		}
		if got := m.Headers().Get(jetstream.MsgIDHeader); got != env.ID {
			c.bad = append(c.bad, fmt.Sprintf("%s: Nats-Msg-Id %q, id %q", m.Subject(), got, env.ID))
		}
		c.byID[env.ID] = env
		c.all = append(c.all, env)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cc.Stop()
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, b := range c.bad {
			t.Errorf("a service emitted an invalid event: %s", b)
		}
	})
	return c
}

// wait returns the event with id once it has arrived.
func (c *collector) wait(t *testing.T, id string, within time.Duration) (event.Envelope, bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		c.mu.Lock()
		e, ok := c.byID[id]
		c.mu.Unlock()
		if ok || time.Now().After(deadline) {
			return e, ok
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// matching returns the events for which keep is true.
func (c *collector) matching(keep func(event.Envelope) bool) []event.Envelope {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []event.Envelope
	for _, e := range c.all {
		if keep(e) {
			out = append(out, e)
		}
	}
	return out
}

// publishRaw sends bytes as they are on subj; msgID "" sends no Nats-Msg-Id.
func (s *system) publishRaw(subj string, data []byte, msgID string) (*jetstream.PubAck, error) {
	m := nats.NewMsg(subj)
	m.Data = data
	if msgID != "" {
		m.Header.Set(jetstream.MsgIDHeader, msgID)
	}
	return s.js.PublishMsg(s.t.Context(), m)
}

func (s *system) publish(subj, id string, d event.Data) {
	s.t.Helper()
	ev, err := event.New("ccat-staging/tests/hostile", id, "", d)
	if err != nil {
		s.t.Fatal(err)
	}
	if _, err := bus.Publish(s.t.Context(), s.js, subj, ev); err != nil {
		s.t.Fatal(err)
	}
}

// ltaPath is where a key of an archive location lives on disk.
func (s *system) ltaPath(location, key string) string {
	site, _, _ := strings.Cut(location, "-")
	return filepath.Join(s.base, site, "lta", filepath.FromSlash(key))
}

// writeLTA writes b at key under the archive location and returns the
// announcement that describes it truthfully.
func (s *system) writeLTA(id, location, key string, b []byte) event.PackageArchived {
	s.t.Helper()
	p := s.ltaPath(location, key)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		s.t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		s.t.Fatal(err)
	}
	s.wrote(p)
	sum := sha256.Sum256(b)
	return event.PackageArchived{PackageID: id, Location: location, Key: key, SizeBytes: int64(len(b)),
		Checksum: "sha256:" + hex.EncodeToString(sum[:]), Format: "tar"}
}

// wrote records a path the test put under an archive root.
func (s *system) wrote(p string) {
	rel, _ := filepath.Rel(s.base, p)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lta[filepath.ToSlash(rel)] = true
}

// waitJob polls the ledger until the job is terminal.
func (s *system) waitJob(t *testing.T, id string, within time.Duration) ledgerapi.Job {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), within)
	defer cancel()
	j, err := s.api.Wait(ctx, id, 50*time.Millisecond, ledgerapi.Job.Terminal)
	if err != nil {
		t.Fatalf("job %s: %v", id, err)
	}
	return j
}

// control stages a well-formed package end to end to a site and checks its
// bytes: the proof that the services are still healthy after hostile input.
func (s *system) control(t *testing.T, site string) {
	t.Helper()
	s.mu.Lock()
	s.controls++
	n := s.controls
	s.mu.Unlock()
	id := fmt.Sprintf("control-%s-%d", site, n)
	var buf bytes.Buffer
	info, err := tarpkg.WriteTo(&buf, tarpkg.Tree(uint64(n), 4, 32<<10))
	if err != nil {
		t.Fatal(err)
	}
	a := s.writeLTA(id, site+"-lta", "raw/"+id+".tar", buf.Bytes())
	a.Files = info.Files
	s.publish(subject.Archived, "archived:"+a.Location+":"+id, a)
	s.publish(subject.Submit, "submit-"+id, event.Submit{JobID: "job-" + id, Packages: []string{id},
		Destination: event.Destination{Site: site}, RequestedBy: "hostile-control"})
	j := s.waitJob(t, "job-"+id, 60*time.Second)
	if j.Status != event.StatusCompleted || len(j.Packages) != 1 {
		t.Fatalf("control job %s: %s %s", j.JobID, j.Status, j.Message)
	}
	s.expectStaged(site, id)
	for _, f := range info.Files {
		b, err := os.ReadFile(filepath.Join(j.Packages[0].Path, filepath.FromSlash(f.Path)))
		sum := sha256.Sum256(b)
		if err != nil || hex.EncodeToString(sum[:]) != f.SHA256 {
			t.Errorf("control %s: %s differs from the archive (%v)", id, f.Path, err)
		}
	}
}

// expectStaged allows package id in site's processing root.
func (s *system) expectStaged(site, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.completed[site+"/"+id] = true
}

// healthy checks the services' /healthz endpoints.
func (s *system) healthy(t *testing.T) {
	t.Helper()
	for _, u := range []string{s.api.BaseURL + "/healthz", s.plannerURL + "/healthz"} {
		resp, err := http.Get(u)
		if err != nil {
			t.Errorf("GET %s: %v", u, err)
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %d", u, resp.StatusCode)
		}
	}
}

// checkTree walks the test's directory and fails on anything a service
// wrote where it must not: only staged packages (those expected to complete)
// and the stager's hidden bookkeeping may appear in a processing root, no
// temp dir may be left, and nothing named after escapeMarker may exist in
// any ancestor of the roots.
func (s *system) checkTree(t *testing.T) {
	t.Helper()
	err := filepath.WalkDir(s.base, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(s.base, p)
		parts := strings.Split(filepath.ToSlash(rel), "/")
		switch {
		case rel == "." || rel == "topology.yaml":
			return nil
		case len(parts) >= 2 && parts[1] == "lta":
			// Written by the tests; a stager must only read here.
			s.mu.Lock()
			known := s.lta[filepath.ToSlash(rel)]
			s.mu.Unlock()
			if len(parts) > 2 && !d.IsDir() && !known {
				t.Errorf("unexpected file in an archive root: %s", rel)
			}
			return nil
		case len(parts) == 1 || (len(parts) == 2 && (parts[1] == "processing" || parts[1] == "closed")):
			return nil
		case len(parts) >= 3 && parts[1] == "processing" && parts[2] == ".ccat-staging":
			return nil
		case len(parts) >= 3 && parts[1] == "processing" && strings.HasPrefix(parts[2], "."):
			t.Errorf("temp dir or hidden file left in a processing root: %s", rel)
			return fs.SkipDir
		case len(parts) >= 3 && parts[1] == "processing" && s.isStaged(parts[0], parts[2]):
			return fs.SkipDir
		}
		t.Errorf("unexpected path after the hostile corpus: %s", rel)
		if d.IsDir() {
			return fs.SkipDir
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, r := range roots {
		for d := filepath.Join(s.base, r); !seen[d]; d = filepath.Dir(d) {
			seen[d] = true
			matches, _ := filepath.Glob(filepath.Join(d, escapeMarker+"*"))
			for _, m := range matches {
				t.Errorf("a hostile archive planted %s outside its root", m)
			}
		}
	}
}

func (s *system) isStaged(site, id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.completed[site+"/"+id]
}

// rawEntry is one hand-made tar entry of a hostile archive.
type rawEntry struct {
	hdr  tar.Header
	data []byte
}

// tarOf writes entries as they are (sizes from data unless a header sets
// one for a typeflag without data) and returns the archive's bytes.
func tarOf(t *testing.T, entries ...rawEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if h.Typeflag == tar.TypeReg || h.Typeflag == 0 {
			h.Size = int64(len(e.data))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		h.Format = tar.FormatPAX
		if len(h.PAXRecords) == 0 && len(h.Name) < 100 && h.Typeflag != tar.TypeChar && h.Typeflag != tar.TypeBlock {
			h.Format = tar.FormatUnknown
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar header %q: %v", h.Name, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := errors.Join(tw.Close()); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func reg(name, data string) rawEntry {
	return rawEntry{tar.Header{Typeflag: tar.TypeReg, Name: name}, []byte(data)}
}
