package stager_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/bustest"
	"github.com/ccatobs/ccat-staging/devkit/poll"
	"github.com/ccatobs/ccat-staging/devkit/s3test"
	"github.com/ccatobs/ccat-staging/services/stager/archive"
	"github.com/ccatobs/ccat-staging/services/stager/internal/tartest"
	"github.com/ccatobs/ccat-staging/services/stager/stager"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

const site = "testsite"

// world is one test's JetStream server, archive and processing roots, and
// topology file, plus a recorder of every event on STAGING_EVENTS.
type world struct {
	t       *testing.T
	srv     *bustest.Server
	archive string // disk archive root (location "lta")
	tape    string // tape cache root (location "tape")
	proc    string // processing root (location "proc")
	topo    string
	rec     *recorder
}

// recallScript is the tape location's recall command; it fails while
// <tape>/.fail-<n> files remain, consuming one per call, so a test decides
// how many recalls fail.
const recallScript = `#!/bin/sh
dir=$(dirname "$0")
for f in "$dir"/.fail-*; do
  if [ -e "$f" ]; then rm -f "$f"; echo "drive busy" >&2; exit 3; fi
done
exit 0
`

func newWorld(t *testing.T) *world { return newWorldS3(t, "") }

// newWorldS3 adds the S3 location "s3lta" (bucket "lta") served at endpoint.
func newWorldS3(t *testing.T, endpoint string) *world {
	t.Helper()
	base := t.TempDir()
	w := &world{t: t, srv: bustest.New(t),
		archive: filepath.Join(base, "archive"), tape: filepath.Join(base, "tape"), proc: filepath.Join(base, "proc")}
	for _, d := range []string{w.archive, w.tape, w.proc, filepath.Join(base, "other")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	script := filepath.Join(w.tape, "recall.sh")
	if err := os.WriteFile(script, []byte(recallScript), 0o755); err != nil {
		t.Fatal(err)
	}
	w.topo = filepath.Join(base, "topology.yaml")
	yaml := fmt.Sprintf(`sites:
  - name: %s
    locations:
      - {name: lta, type: long_term_archive, storage: disk, path: %q}
      - name: tape
        type: long_term_archive
        storage: tape
        path: %q
        recall: {command: [%q], timeout: 10s}
      - {name: proc, type: processing, storage: disk, path: %q}
  - name: elsewhere
    locations:
      - {name: other-proc, type: processing, storage: disk, path: %q}
`, site, w.archive, w.tape, script, w.proc, filepath.Join(base, "other"))
	if endpoint != "" {
		yaml += fmt.Sprintf(`  - name: s3site
    locations:
      - name: s3lta
        type: long_term_archive
        storage: s3
        # Small parts, so a test package is read as several ranged GETs.
        s3: {endpoint: %q, bucket: lta, region: us-east-1, parts: 3, part_size: 1048576}
`, endpoint)
	}
	if err := os.WriteFile(w.topo, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	w.rec = record(t, w.srv.JS)
	return w
}

func (w *world) config() stager.Config {
	return stager.Config{
		NATSURL: w.srv.URL, TopologyFile: w.topo, Site: site, Instance: "t1", Workers: 2,
		AckWait: 5 * time.Second, MaxDeliver: 4, RetryBase: 50 * time.Millisecond, RetryMax: 200 * time.Millisecond,
		NoSpaceDelay: 200 * time.Millisecond, ProgressInterval: time.Second, ShutdownGrace: 5 * time.Second,
		ChecksumAttempts: 1, Version: "test",
		S3Credentials: map[string]archive.Credentials{"s3lta": {AccessKeyID: s3test.AccessKey, SecretAccessKey: s3test.SecretKey}},
	}
}

// start runs a stager until the test ends and checks that Run returns nil.
func (w *world) start(cfg stager.Config) (stop func()) {
	t := w.t
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- stager.Run(ctx, cfg, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-errc:
				if err != nil {
					t.Errorf("Run = %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("Run did not return after cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// pkg is a package put into an archive location.
type pkg struct {
	id, key, checksum string
	size              int64
	tar               []byte
}

func (w *world) put(root, id string, tb []byte) pkg {
	w.t.Helper()
	key := "packages/" + id + ".tar"
	p := filepath.Join(root, filepath.FromSlash(key))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		w.t.Fatal(err)
	}
	if err := os.WriteFile(p, tb, 0o644); err != nil {
		w.t.Fatal(err)
	}
	return pkg{id: id, key: key, checksum: "sha256:" + tartest.SHA256(tb), size: int64(len(tb)), tar: tb}
}

func request(job string, p pkg) event.Request {
	return event.Request{
		JobID: job, PackageID: p.id, Generation: 1, Priority: event.PriorityNormal,
		Source:      event.Source{Location: "lta", Site: site, Storage: "disk", Key: p.key},
		Destination: event.Target{Site: site, Location: "proc"},
		SizeBytes:   p.size, Checksum: p.checksum, Format: "tar",
	}
}

func reqID(r event.Request) string {
	return fmt.Sprintf("request:%s:%s:%d", r.JobID, r.PackageID, r.Generation)
}

func (w *world) submit(r event.Request) string {
	w.t.Helper()
	id := reqID(r)
	env, err := event.New("ccat-staging/planner", id, r.PackageID, r)
	if err != nil {
		w.t.Fatal(err)
	}
	if _, err := bus.Publish(w.t.Context(), w.srv.JS, subject.Request(site, r.Priority), env); err != nil {
		w.t.Fatal(err)
	}
	return id
}

// recorder collects every event on STAGING_EVENTS and checks each against
// its schema.
type recorder struct {
	mu     sync.Mutex
	events []event.Envelope
}

func record(t *testing.T, js jetstream.JetStream) *recorder {
	t.Helper()
	ctx := t.Context()
	if err := bus.Provision(ctx, js, bus.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	c, err := js.OrderedConsumer(ctx, subject.EventsStream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{}
	cc, err := c.Consume(func(m jetstream.Msg) {
		env, err := event.Validate(m.Data())
		if err != nil {
			t.Errorf("emitted event does not validate: %v\n%s", err, m.Data())
			return
		}
		if m.Headers().Get(jetstream.MsgIDHeader) != env.ID {
			t.Errorf("Nats-Msg-Id %q != event id %q", m.Headers().Get(jetstream.MsgIDHeader), env.ID)
		}
		r.mu.Lock()
		r.events = append(r.events, env)
		r.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cc.Stop)
	return r
}

func (r *recorder) snapshot() []event.Envelope {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

// byID returns the event with id, if recorded.
func (r *recorder) byID(id string) (event.Envelope, bool) {
	for _, e := range r.snapshot() {
		if e.ID == id {
			return e, true
		}
	}
	return event.Envelope{}, false
}

// ofType lists the recorded events of a type whose id starts with prefix.
func (r *recorder) ofType(typ, prefix string) []event.Envelope {
	var out []event.Envelope
	for _, e := range r.snapshot() {
		if e.Type == typ && strings.HasPrefix(e.ID, prefix) {
			out = append(out, e)
		}
	}
	return out
}

// waitID waits for the event with id and decodes its data.
func waitID[T event.Data](t *testing.T, r *recorder, id string) T {
	t.Helper()
	var e event.Envelope
	poll.Until(t, 20*time.Second, "event "+id, poll.True(func() bool {
		var ok bool
		e, ok = r.byID(id)
		return ok
	}))
	d, err := event.DataAs[T](e)
	if err != nil {
		t.Fatalf("event %s: %v", id, err)
	}
	return d
}

// queued returns the number of messages left in the work queue.
func (w *world) queued() uint64 {
	w.t.Helper()
	s, err := w.srv.JS.Stream(w.t.Context(), subject.RequestsStream)
	if err != nil {
		w.t.Fatal(err)
	}
	info, err := s.Info(w.t.Context())
	if err != nil {
		w.t.Fatal(err)
	}
	return info.State.Msgs
}

// procEntries lists the processing root, sidecar excluded.
func (w *world) procEntries() []string {
	ents, err := os.ReadDir(w.proc)
	if err != nil {
		w.t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if e.Name() != ".ccat-staging" {
			out = append(out, e.Name())
		}
	}
	return out
}
