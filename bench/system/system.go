// Package system runs the whole pipeline inside the benchmark process, the
// way tests/harness_test.go does: its own embedded JetStream server with its
// store under the scenario's work dir, its own PostgreSQL database (created
// here, dropped on Close), and the services started and stopped one by one
// through their importable Run functions, so a scenario can fill a stream
// before the ledger starts or keep the stagers stopped.
package system

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ccatobs/ccat-staging/bench/pg"
	"github.com/ccatobs/ccat-staging/devkit/natsembed"
	"github.com/ccatobs/ccat-staging/services/ledger/ledger"
	"github.com/ccatobs/ccat-staging/services/planner/planner"
	"github.com/ccatobs/ccat-staging/services/stager/stager"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
	"github.com/ccatobs/ccat-staging/shared/logx"
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
}

// Options configure a System.
type Options struct {
	WorkDir  string
	MaxStore int64 // JetStream file store bytes; 0 means 4 GiB
	S3       *S3   // adds the S3 archive location when set
	Log      zerolog.Logger
	// Env adds or overrides service environment variables (e.g. STAGER_WORKERS).
	Env map[string]string
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

	opts     Options
	env      map[string]string
	dbName   string
	mu       sync.Mutex
	services map[string]*running
}

type running struct {
	cancel context.CancelFunc
	done   chan error
}

// New starts the bus and creates the database; no service runs yet.
func New(ctx context.Context, o Options) (*System, error) {
	s := &System{opts: o, services: map[string]*running{},
		LTA: filepath.Join(o.WorkDir, "lta"), Out: filepath.Join(o.WorkDir, "processing")}
	for _, d := range []string{s.LTA, s.Out, filepath.Join(o.WorkDir, "nats")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	topo := filepath.Join(o.WorkDir, "topology.yaml")
	if err := os.WriteFile(topo, []byte(topology(s.LTA, s.Out, o.S3)), 0o644); err != nil {
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

func topology(lta, out string, s3 *S3) string {
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
`, S3LTA, s3.Endpoint, s3.Bucket)
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

func (s *System) getenv(extra map[string]string) func(string) string {
	return func(k string) string {
		if v, ok := extra[k]; ok {
			return v
		}
		return s.env[k]
	}
}

func (s *System) start(name string, run func(ctx context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1)}
	s.mu.Lock()
	s.services[name] = r
	s.mu.Unlock()
	go func() { r.done <- run(ctx) }()
}

func (s *System) log(service string) zerolog.Logger {
	return s.opts.Log.With().Str(logx.Service, service).Logger()
}

// StartLedger starts the ledger and waits until its API answers.
func (s *System) StartLedger(ctx context.Context) error {
	cfg, err := ledger.ConfigFromEnv(s.getenv(nil))
	if err != nil {
		return fmt.Errorf("ledger config: %w", err)
	}
	addr := make(chan net.Addr, 1)
	cfg.Listening = func(a net.Addr) { addr <- a }
	s.start("ledger", func(ctx context.Context) error { return ledger.Run(ctx, cfg, s.log("ledger")) })
	select {
	case a := <-addr:
		s.API = ledgerapi.Client{BaseURL: "http://" + a.String()}
		return nil
	case err := <-s.services["ledger"].done:
		return fmt.Errorf("ledger stopped at start-up: %w", err)
	case <-time.After(60 * time.Second):
		return errors.New("ledger API did not come up within 60s")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// StartPlanner starts the planner.
func (s *System) StartPlanner() error {
	cfg, err := planner.ConfigFromEnv(s.getenv(nil))
	if err != nil {
		return fmt.Errorf("planner config: %w", err)
	}
	// An empty PLANNER_HTTP_ADDR means the default port, which a second
	// system (or anything else on the machine) may hold: serve nothing.
	cfg.HTTPAddr = ""
	s.start("planner", func(ctx context.Context) error { return planner.Run(ctx, cfg, s.log("planner")) })
	return nil
}

// StartStager starts one stager instance of the bench site.
func (s *System) StartStager(instance string) error {
	cfg, err := stager.ConfigFromEnv(s.getenv(map[string]string{"STAGER_INSTANCE": instance}))
	if err != nil {
		return fmt.Errorf("stager config: %w", err)
	}
	cfg.HTTPAddr = "" // see StartPlanner
	s.start("stager-"+instance, func(ctx context.Context) error {
		return stager.Run(ctx, cfg, s.log("stager").With().Str(logx.Site, Site).Logger())
	})
	return nil
}

// Stop cancels one service and waits for its Run to return.
func (s *System) Stop(name string) error {
	s.mu.Lock()
	r, ok := s.services[name]
	delete(s.services, name)
	s.mu.Unlock()
	if !ok {
		return nil
	}
	r.cancel()
	select {
	case err := <-r.done:
		return err
	case <-time.After(60 * time.Second):
		return fmt.Errorf("%s did not stop within 60s", name)
	}
}

// Failed reports a service whose Run returned while it should be running.
func (s *System) Failed() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, r := range s.services {
		select {
		case err := <-r.done:
			r.done <- err
			return fmt.Errorf("%s stopped: %v", name, err)
		default:
		}
	}
	return nil
}

// Close stops every service, the bus, and drops the database.
func (s *System) Close() error {
	var errs []error
	s.mu.Lock()
	names := make([]string, 0, len(s.services))
	for n := range s.services {
		names = append(names, n)
	}
	s.mu.Unlock()
	for _, n := range names {
		if err := s.Stop(n); err != nil {
			errs = append(errs, err)
		}
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
