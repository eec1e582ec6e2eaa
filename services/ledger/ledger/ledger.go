// Package ledger runs the ledger: it projects every event of STAGING_EVENTS
// and ARCHIVE into PostgreSQL and serves the read API. Run holds no global
// state, so several ledgers (and the other services) can run in one process.
package ledger

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/ccatobs/ccat-staging/services/ledger/consume"
	"github.com/ccatobs/ccat-staging/services/ledger/httpapi"
	"github.com/ccatobs/ccat-staging/services/ledger/store"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/config"
	"github.com/ccatobs/ccat-staging/shared/db"
	"github.com/ccatobs/ccat-staging/shared/obs"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/ccatobs/ccat-staging/shared/topology"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Environment variables of the ledger (the common ones are in shared/config).
const (
	EnvHTTPAddr    = "LEDGER_HTTP_ADDR"
	EnvBatchSize   = "LEDGER_BATCH_SIZE"
	EnvMaxWait     = "LEDGER_FETCH_MAX_WAIT"
	EnvWorkers     = "LEDGER_APPLY_WORKERS"
	EnvBatchBytes  = "LEDGER_BATCH_BYTES"
	EnvSiteCache   = "LEDGER_SITE_CACHE"
	EnvDBConns     = "LEDGER_DB_MAX_CONNS"
	EnvTokens      = "LEDGER_TOKENS"
	EnvTokenFile   = "LEDGER_TOKEN_FILE"
	EnvCORSOrigins = "LEDGER_CORS_ORIGINS"
	EnvTimeout     = "LEDGER_REQUEST_TIMEOUT"
	EnvMaxPage     = "LEDGER_MAX_PAGE"
	EnvInstance    = "LEDGER_INSTANCE"
)

// Config is everything Run needs.
type Config struct {
	NATSURL     string
	DatabaseURL string
	// HTTPAddr is where the API listens; "" serves no HTTP at all.
	HTTPAddr string
	// TopologyFile, when set, seeds the sites and locations tables.
	TopologyFile string
	// BatchSize is the most messages applied in one transaction.
	BatchSize int
	// FetchMaxWait is how long one pull waits for a first message.
	FetchMaxWait time.Duration
	// ApplyWorkers is how many batches each durable applies at once.
	ApplyWorkers int
	// BatchBytes caps a batch's size in bytes.
	BatchBytes int
	// SiteCache is how long a site summary is served again; negative
	// never.
	SiteCache  time.Duration
	DBMaxConns int
	Streams    bus.StreamConfig
	// Tokens are the accepted bearer tokens; none means the API is open.
	Tokens         []string
	CORSOrigins    []string
	RequestTimeout time.Duration
	MaxPage        int
	Instance       string
	Version        string
	// Consumers configures the consumer runners (CONSUMER_STALL_AFTER,
	// CONSUMER_POLL_INTERVAL) and holds the stagers' retry policy
	// (STAGER_RETRY_*), which explain uses to say when a retry comes.
	Consumers bus.Consumers
	// Listening, when not nil, is called once the HTTP listener is bound.
	Listening func(net.Addr)
}

// ConfigFromEnv reads the configuration through getenv.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	e := config.NewEnv(getenv)
	host, _ := os.Hostname()
	c := Config{
		NATSURL:        e.String(config.NATSURL, "nats://127.0.0.1:4222"),
		DatabaseURL:    e.String(config.DatabaseURL, db.DefaultURL),
		HTTPAddr:       e.String(EnvHTTPAddr, "127.0.0.1:8080"),
		TopologyFile:   e.String(config.Topology, ""),
		BatchSize:      e.Int(EnvBatchSize, 1000),
		FetchMaxWait:   e.Duration(EnvMaxWait, time.Second),
		ApplyWorkers:   e.Int(EnvWorkers, 2),
		BatchBytes:     e.Int(EnvBatchBytes, 4<<20),
		SiteCache:      e.Duration(EnvSiteCache, time.Second),
		DBMaxConns:     e.Int(EnvDBConns, 8),
		CORSOrigins:    splitList(e.String(EnvCORSOrigins, "")),
		RequestTimeout: e.Duration(EnvTimeout, 10*time.Second),
		MaxPage:        e.Int(EnvMaxPage, 500),
		Instance:       e.String(EnvInstance, host),
		Consumers:      bus.ConsumersFromEnv(e),
		Streams: bus.StreamConfig{
			Replicas:     e.Int(config.StreamReplicas, 1),
			EventsMaxAge: e.Duration(config.EventsMaxAge, 0),
		},
	}
	if getenv(EnvHTTPAddr) == "-" {
		c.HTTPAddr = ""
	}
	c.Tokens = splitList(e.String(EnvTokens, ""))
	if err := e.Err(); err != nil {
		return c, err
	}
	if f := e.String(EnvTokenFile, ""); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return c, fmt.Errorf("%s: %w", EnvTokenFile, err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "#") {
				c.Tokens = append(c.Tokens, t)
			}
		}
	}
	if c.BatchSize < 1 || c.BatchSize > 10000 {
		return c, fmt.Errorf("%s=%d: want 1 to 10000", EnvBatchSize, c.BatchSize)
	}
	if c.BatchBytes < 64<<10 {
		return c, fmt.Errorf("%s=%d: want at least 65536", EnvBatchBytes, c.BatchBytes)
	}
	if c.ApplyWorkers < 1 || c.ApplyWorkers > 32 {
		return c, fmt.Errorf("%s=%d: want 1 to 32", EnvWorkers, c.ApplyWorkers)
	}
	if c.MaxPage < 1 {
		return c, fmt.Errorf("%s=%d: want at least 1", EnvMaxPage, c.MaxPage)
	}
	return c, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
		out = append(out, f)
	}
	return out
}

// OpenStore creates the database if needed, connects and migrates it.
func OpenStore(ctx context.Context, cfg Config, log zerolog.Logger) (*store.Store, error) {
	if err := db.EnsureDatabase(ctx, cfg.DatabaseURL); err != nil {
		return nil, err
	}
	bdb, err := db.Open(ctx, cfg.DatabaseURL, cfg.DBMaxConns)
	if err != nil {
		return nil, err
	}
	st := store.New(bdb)
	applied, err := st.Migrate(ctx)
	if err != nil {
		bdb.Close()
		return nil, err
	}
	if len(applied) > 0 {
		log.Info().Strs("migrations", applied).Msg("database migrated")
	}
	return st, nil
}

// consumerConfig is the ledger's durable on one stream. MaxDeliver is
// unlimited on purpose: a batch fails only when the database does, and an
// event must never be dropped for that; poison is acked, not redelivered.
// AckWait is how long the batch of a ledger that died stays invisible: a
// batch applies in tens of milliseconds, and one that outlives AckWait is
// merely applied twice, which the event log turns into a no-op.
func consumerConfig(durable, filter string) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       durable,
		Description:   "ccat-staging ledger projection",
		FilterSubject: filter,
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait:       20 * time.Second,
		MaxDeliver:    -1,
		MaxAckPending: 20000,
	}
}

// Run runs the ledger until ctx is cancelled, then shuts down and returns
// nil; it returns an error when start-up fails.
func Run(ctx context.Context, cfg Config, log zerolog.Logger) error {
	log = log.With().Str("instance", cfg.Instance).Logger()
	st, err := OpenStore(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer st.DB().Close()
	if cfg.TopologyFile != "" {
		t, err := topology.Load(cfg.TopologyFile)
		if err != nil {
			return err
		}
		if err := st.SeedTopology(ctx, t); err != nil {
			return err
		}
	}
	nc, js, err := bus.Connect(ctx, cfg.NATSURL, "ledger-"+cfg.Instance, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	if err := bus.Provision(ctx, js, cfg.Streams); err != nil {
		return err
	}
	reg := obs.NewRegistry()
	metrics := consume.NewMetrics(reg)
	broker := httpapi.NewBroker()
	health := bus.NewHealth(reg, cfg.Consumers.StallAfter)
	var consumers []*consume.Consumer
	for _, c := range []struct{ stream, durable, filter string }{
		{subject.EventsStream, subject.LedgerEvents, subject.EventsAll},
		{subject.ArchiveStream, subject.LedgerArchive, subject.ArchiveAll},
	} {
		cc := consumerConfig(c.durable, c.filter)
		if _, err := js.CreateOrUpdateConsumer(ctx, c.stream, cc); err != nil {
			return fmt.Errorf("consumer %s: %w", c.durable, err)
		}
		sc, _ := bus.StreamNamed(cfg.Streams, c.stream)
		consumers = append(consumers, &consume.Consumer{Store: st, JS: js, Config: cc, Stream: c.stream, StreamConfig: sc,
			Durable: c.durable, Health: health, Settings: cfg.Consumers,
			Batch: cfg.BatchSize, MaxBytes: cfg.BatchBytes, Workers: cfg.ApplyWorkers, MaxWait: cfg.FetchMaxWait, Log: log, Metrics: metrics,
			Applied: func(r store.Result) { broker.Publish(r.Jobs) }})
	}
	if len(cfg.Tokens) == 0 && cfg.HTTPAddr != "" {
		log.Warn().Msg("NO API TOKENS CONFIGURED: the read API is open to anyone who can reach " + cfg.HTTPAddr +
			" (set " + EnvTokens + " or " + EnvTokenFile + ")")
	}
	checks := map[string]obs.Check{
		"database": func(ctx context.Context) error { return st.DB().PingContext(ctx) },
		"nats": func(ctx context.Context) error {
			if s := nc.Status(); s != nats.CONNECTED {
				return fmt.Errorf("nats connection is %s", s)
			}
			return nil
		},
		"consumers": health.Check,
		"migrations": func(ctx context.Context) error {
			p, err := st.Pending(ctx)
			if err != nil {
				return err
			}
			if len(p) > 0 {
				return fmt.Errorf("pending migrations: %v", p)
			}
			return nil
		},
	}
	h := httpapi.NewServer(httpapi.Deps{Store: st, Live: natsLive{js: js}, Log: log, Registry: reg, Checks: checks, Retry: cfg.Consumers.Retry,
		Version: cfg.Version, Tokens: cfg.Tokens, CORSOrigins: cfg.CORSOrigins, Timeout: cfg.RequestTimeout,
		MaxPage: cfg.MaxPage, Broker: broker, SiteCache: cfg.SiteCache})

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, len(consumers)+1)
	for _, c := range consumers {
		wg.Go(func() {
			if err := c.Run(ctx); err != nil {
				errc <- err
				cancel()
			}
		})
	}
	wg.Go(func() { compactSiteCounts(ctx, st, log) })
	wg.Go(func() {
		if err := obs.Serve(ctx, cfg.HTTPAddr, h, log, cfg.Listening); err != nil {
			errc <- fmt.Errorf("http: %w", err)
			cancel()
		}
	})
	log.Info().Str("nats", cfg.NATSURL).Str("database", db.Redact(cfg.DatabaseURL)).Int("batch", cfg.BatchSize).
		Msg("ledger started")
	<-ctx.Done()
	wg.Wait()
	if err := nc.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		log.Warn().Err(err).Msg("nats drain")
	}
	close(errc)
	var errs []error
	for err := range errc {
		errs = append(errs, err)
	}
	log.Info().Msg("ledger stopped")
	return errors.Join(errs...)
}

// compactSiteCounts folds the site counters' delta rows every
// compactEvery, so the site summary sums a short table.
func compactSiteCounts(ctx context.Context, st *store.Store, log zerolog.Logger) {
	t := time.NewTicker(compactEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := st.CompactSiteCounts(ctx)
		if err != nil && ctx.Err() == nil {
			log.Warn().Err(err).Msg("site counters not compacted; will retry")
			continue
		}
		log.Debug().Int64("rows_folded", n).Msg("site counters compacted")
	}
}

// compactEvery is how often the site counters are compacted: a busy
// projection appends a few rows per batch.
const compactEvery = 30 * time.Second
