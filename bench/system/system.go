// Package system runs the whole pipeline inside the benchmark process with
// the launcher the system tests use (devkit/inproc): its own embedded
// JetStream server with its store under the scenario's work dir, its own
// PostgreSQL database (created here, dropped on Close), and the services
// started one by one, so a scenario can fill a stream before the ledger
// starts or keep the stagers stopped.
package system

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"

	"github.com/ccatobs/ccat-staging/bench/pg"
	"github.com/ccatobs/ccat-staging/devkit/inproc"
	"github.com/ccatobs/ccat-staging/devkit/natsembed"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Site is the benchmark's only site.
const Site = "bench"

// Location names of the benchmark topology.
const (
	DiskLTA    = "bench-lta"
	S3LTA      = "bench-s3"
	Processing = "bench-processing"
)

// S3 describes an optional S3 archive location.
type S3 struct {
	Endpoint, Bucket, AccessKey, SecretKey string
	// Parts and PartSize set the location's parallel read; 0 keeps the
	// stager's defaults.
	Parts    int
	PartSize int64
}

// Options configure a System.
type Options struct {
	WorkDir  string
	MaxStore int64 // JetStream file store bytes; 0 means 4 GiB
	S3       *S3   // adds the S3 archive location when set
	Log      zerolog.Logger
	// Env adds or overrides service environment variables (e.g. STAGER_WORKERS).
	Env map[string]string
	// Sync is the processing location's sync setting ("" = the stager's
	// default, file).
	Sync string
}

// System is a running bus and database plus the services started on it.
type System struct {
	NS    *server.Server
	NC    *nats.Conn
	JS    jetstream.JetStream
	URL   string
	DBURL string
	API   ledgerapi.Client
	// LTA and Out are the disk archive root and the processing root.
	LTA, Out string

	opts   Options
	env    map[string]string
	dbName string
	pl     *inproc.Pipeline
}

// New starts the bus and creates the database; no service runs yet.
func New(ctx context.Context, o Options) (*System, error) {
	s := &System{opts: o,
		LTA: filepath.Join(o.WorkDir, "lta"), Out: filepath.Join(o.WorkDir, "processing")}
	for _, d := range []string{s.LTA, s.Out, filepath.Join(o.WorkDir, "nats")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	topo := filepath.Join(o.WorkDir, "topology.yaml")
	if err := os.WriteFile(topo, []byte(topology(s.LTA, s.Out, o.S3, o.Sync)), 0o644); err != nil {
		return nil, err
	}
	if o.MaxStore == 0 {
		o.MaxStore = 4 << 30
	}
	ns, err := natsembed.Start(natsembed.Options{StoreDir: filepath.Join(o.WorkDir, "nats"), Name: "bench", MaxStore: o.MaxStore})
	if err != nil {
		return nil, err
	}
	s.NS, s.URL = ns, ns.ClientURL()
	if s.NC, err = nats.Connect(s.URL, nats.Name("bench")); err != nil {
		s.Close()
		return nil, fmt.Errorf("connect: %w", err)
	}
	if s.JS, err = jetstream.New(s.NC); err != nil {
		s.Close()
		return nil, err
	}
	if err := bus.Provision(ctx, s.JS, bus.StreamConfig{}); err != nil {
		s.Close()
		return nil, fmt.Errorf("provision: %w", err)
	}
	if s.DBURL, s.dbName, err = pg.CreateDB(ctx); err != nil {
		s.Close()
		return nil, err
	}
	s.env = map[string]string{
		"NATS_URL":          s.URL,
		"DATABASE_URL":      s.DBURL,
		"TOPOLOGY_FILE":     topo,
		"LEDGER_HTTP_ADDR":  "127.0.0.1:0",
		"PLANNER_HTTP_ADDR": "",
		"STAGER_HTTP_ADDR":  "",
		"STAGER_SITE":       Site,
		"STAGER_WORKERS":    "2",
		"LOG_LEVEL":         "warn",
	}
	if o.S3 != nil {
		key := "CCAT_S3_" + envName(S3LTA)
		s.env[key+"_ACCESS_KEY_ID"] = o.S3.AccessKey
		s.env[key+"_SECRET_ACCESS_KEY"] = o.S3.SecretKey
	}
	for k, v := range o.Env {
		s.env[k] = v
	}
	s.pl = inproc.New(inproc.Options{Log: o.Log, Env: func(string) map[string]string {
		e := maps.Clone(s.env)
		// In this process no service serves HTTP but the ledger: an empty
		// address means the default port, which a second system (or
		// anything else on the machine) may hold. Environ keeps "" for the
		// child processes of the backlog scenario.
		e["PLANNER_HTTP_ADDR"], e["STAGER_HTTP_ADDR"] = "off", "off"
		return e
	}})
	return s, nil
}

func envName(loc string) string {
	b := []byte(loc)
	for i, c := range b {
		switch {
		case c >= 'a' && c <= 'z':
			b[i] = c - 'a' + 'A'
		case c == '-':
			b[i] = '_'
		}
	}
	return string(b)
}

func topology(lta, out string, s3 *S3, sync string) string {
	t := fmt.Sprintf(`sites:
  - name: %s
    locations:
      - name: %s
        type: long_term_archive
        storage: disk
        priority: 1
        path: %s
      - name: %s
        type: processing
        storage: disk
        priority: 1
        path: %s
`, Site, DiskLTA, lta, Processing, out)
	if sync != "" {
		t += "        sync: " + sync + "\n"
	}
	if s3 != nil {
		t += fmt.Sprintf(`      - name: %s
        type: long_term_archive
        storage: s3
        priority: 2
        s3:
          endpoint: %s
          bucket: %s
          region: us-east-1
          tls: false
          parts: %d
          part_size: %d
`, S3LTA, s3.Endpoint, s3.Bucket, s3.Parts, s3.PartSize)
	}
	return t
}

// Environ is the services' environment as KEY=value lines, for running a
// service's binary as a child process against this system.
func (s *System) Environ(extra map[string]string) []string {
	var out []string
	for k, v := range s.env {
		if _, ok := extra[k]; !ok {
			out = append(out, k+"="+v)
		}
	}
	for k, v := range extra {
		out = append(out, k+"="+v)
	}
	return out
}

// TopologyFile is the path of the system's topology.
func (s *System) TopologyFile() string { return s.env["TOPOLOGY_FILE"] }

// StartLedger starts the ledger and waits until its API answers.
func (s *System) StartLedger(ctx context.Context) error {
	if err := s.pl.StartLedger(ctx); err != nil {
		return err
	}
	s.API = ledgerapi.Client{BaseURL: s.pl.LedgerURL}
	return nil
}

// StartPlanner starts the planner (which serves no HTTP here, so nothing
// is awaited).
func (s *System) StartPlanner() error { return s.pl.StartPlanner(context.Background()) }

// StartStager starts one stager instance of the bench site.
func (s *System) StartStager(instance string) error { return s.pl.StartStager(Site, instance) }

// Stop cancels one service ("ledger", "planner", "stager-bench-<instance>")
// and waits for its Run to return.
func (s *System) Stop(name string) error { return s.pl.StopService(name) }

// Failed reports a service whose Run returned while it should be running.
func (s *System) Failed() error { return s.pl.Failed() }

// Close stops every service, the bus, and drops the database.
func (s *System) Close() error {
	var errs []error
	if s.pl != nil {
		errs = append(errs, s.pl.StopAll())
	}
	if s.NC != nil {
		s.NC.Close()
	}
	if s.NS != nil {
		s.NS.Shutdown()
		s.NS.WaitForShutdown()
	}
	if s.dbName != "" {
		errs = append(errs, pg.DropDB(context.Background(), s.dbName))
	}
	return errors.Join(errs...)
}
