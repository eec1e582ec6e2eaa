package planner

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/config"
)

// Environment variables read by ConfigFromEnv besides the common ones in
// shared/config (NATS_URL, TOPOLOGY_FILE, STREAM_REPLICAS, EVENTS_MAX_AGE).
const (
	EnvHTTPAddr              = "PLANNER_HTTP_ADDR"
	EnvMaxPackages           = "PLANNER_MAX_PACKAGES"
	EnvPublishWindow         = "PLANNER_PUBLISH_WINDOW"
	EnvLookupParallel        = "PLANNER_LOOKUP_PARALLEL"
	EnvSubmitWorkers         = "PLANNER_SUBMIT_WORKERS"
	EnvOutcomeWorkers        = "PLANNER_OUTCOME_WORKERS"
	EnvUnknownPackageRetries = "PLANNER_UNKNOWN_PACKAGE_RETRIES"
	EnvUnknownPackageDelay   = "PLANNER_UNKNOWN_PACKAGE_DELAY"
	EnvTopologyPoll          = "PLANNER_TOPOLOGY_POLL"
	EnvPlanPartBytes         = "PLANNER_PLAN_PART_BYTES"
	EnvVersion               = "PLANNER_VERSION"
	EnvDedup                 = "PLANNER_DEDUP"
	EnvInflightTTL           = "PLANNER_INFLIGHT_TTL"
	EnvLedgerURL             = "LEDGER_URL"
	EnvLedgerToken           = "LEDGER_TOKEN"
	EnvReconcileInterval     = "PLANNER_RECONCILE_INTERVAL"
	EnvStallAfter            = "PLANNER_STALL_AFTER"
	EnvMaxReissues           = "PLANNER_MAX_REISSUES"
	EnvReleaseSweep          = "PLANNER_RELEASE_SWEEP"
	EnvJobRetention          = "PLANNER_JOB_RETENTION"
	EnvRefRetention          = "PLANNER_REF_RETENTION"
	EnvLedgerCatchUp         = "PLANNER_LEDGER_CATCH_UP"
)

// Defaults.
const (
	DefaultNATSURL        = "nats://127.0.0.1:4222"
	DefaultHTTPAddr       = "127.0.0.1:9101"
	DefaultMaxPackages    = 10000
	DefaultPublishWindow  = 1024
	DefaultLookupParallel = 32
	// DefaultSubmitWorkers and DefaultOutcomeWorkers are how many submits
	// and outcomes one planner handles at once. Each costs a few broker
	// round trips and little CPU, so a handful at once keeps the broker,
	// not the round trips, the limit.
	DefaultSubmitWorkers         = 8
	DefaultOutcomeWorkers        = 16
	DefaultUnknownPackageRetries = 10
	DefaultUnknownPackageDelay   = time.Second
	DefaultTopologyPoll          = 5 * time.Second
	DefaultReconcileInterval     = time.Minute
	DefaultStallAfter            = 15 * time.Minute
	DefaultMaxReissues           = 3
	DefaultReleaseSweep          = time.Minute
	// DefaultJobRetention is how long the planner remembers a job after
	// its last state change (PLANNER_JOBS, CANCELLED, PLANNER_OUTCOMES,
	// PLANNER_REISSUES). The longest job is bounded by its queue wait plus
	// StallAfter x (MaxReissues+1) (about an hour with the defaults) and a
	// week-long queue backlog is already an incident, so 30 days is far
	// beyond any job still running, yet keeps a month of resubmits
	// idempotent and the buckets at a month of jobs.
	DefaultJobRetention = 30 * 24 * time.Hour
	// DefaultRefRetention is how long a job may hold references to staged
	// copies without releasing or cancelling them. Three months: far past
	// any job's end and an analysis campaign on its data, short enough that
	// forgotten jobs do not pin a processing file system for ever. The
	// copies then wait their location's retention, and the archive keeps
	// the package.
	DefaultRefRetention = 90 * 24 * time.Hour
	// DefaultLedgerCatchUp is how long a reconciler round waits for the
	// ledger and planner-outcomes durables to reach the stream's end before
	// it gives the round up as "behind".
	DefaultLedgerCatchUp = 5 * time.Second
)

// Config is everything Run needs. The zero value of an optional field means
// its default; NATSURL and TopologyFile are required.
type Config struct {
	NATSURL      string
	TopologyFile string
	// HTTPAddr serves /healthz, /readyz and /metrics; "" serves nothing.
	// "127.0.0.1:0" picks a free port (see OnHTTP).
	HTTPAddr string
	// MaxPackages is the most packages one job may ask for.
	MaxPackages int
	// Version is reported in logs and the build-info metric.
	Version string
	// Streams configures the streams every service provisions.
	Streams bus.StreamConfig
	// Stager is the definition used when the planner creates a site's work
	// consumers that do not exist yet (queue discovery). Existing consumers
	// are left alone so the planner never overrides a stager's settings.
	Stager bus.StagerConsumerConfig
	// PublishWindow bounds the publications awaiting acknowledgement.
	PublishWindow int
	// LookupParallel bounds the concurrent catalog reads of one job.
	LookupParallel int
	// SubmitWorkers is how many submits are planned at once (jobs are
	// independent: their claims and dedup entries are atomic KV writes).
	SubmitWorkers int
	// OutcomeWorkers is how many outcomes are recorded at once; those of
	// one package in the order they were published.
	OutcomeWorkers int
	// UnknownPackageRetries is how many deliveries of a submit naming
	// packages the catalog does not know wait for the catalog consumer to
	// catch up before the submit is rejected with unknown_package.
	UnknownPackageRetries int
	// UnknownPackageDelay is the wait between those deliveries.
	UnknownPackageDelay time.Duration
	// TopologyPoll is how often the topology file is checked for changes;
	// negative disables polling (Reload still works).
	TopologyPoll time.Duration
	// Reload, when not nil, makes Run reload the topology file whenever a
	// value arrives (main sends one on SIGHUP).
	Reload <-chan struct{}
	// PlanPartBytes caps the package lines of one staging.planned event; a
	// larger plan is split into parts. 0 means three quarters of the
	// server's max_payload (8 MB as deployed: ~24,000 packages per part;
	// 1 MB in a stock server: ~3,000); a larger value is capped to that.
	PlanPartBytes int
	// Dedup turns on cross-job deduplication: a package already being
	// staged to a location by another job is not requested again; the plan
	// line carries that job's request_id instead, and the ledger applies
	// that request's outcomes to every job package following it (see
	// README). On by default (PLANNER_DEDUP=false turns it off).
	Dedup bool
	// InflightTTL bounds how long a dedup entry waits for its outcome.
	InflightTTL time.Duration
	// LedgerURL is the ledger's read API; "" disables the reconciler.
	LedgerURL   string
	LedgerToken string
	// ReconcileInterval is the time between reconciler rounds.
	ReconcileInterval time.Duration
	// StallAfter is how long a scheduled or in-progress package may show
	// no activity before the reconciler looks for its request.
	StallAfter time.Duration
	// MaxReissues is how many times a lost request is re-issued before the
	// package is failed with reason stalled.
	MaxReissues int
	// ReleaseSweep is the time between sweeps of PLANNER_REFS for staged
	// copies whose retention has passed without references.
	ReleaseSweep time.Duration
	// JobRetention is how long finished jobs' state stays in the planner's
	// buckets: PLANNER_JOBS (idempotency), CANCELLED, PLANNER_OUTCOMES and
	// PLANNER_REISSUES expire entries this long after their last write.
	// Keep it longer than the longest job.
	JobRetention time.Duration
	// RefRetention is how long a job's references to staged copies last
	// when it is never released nor cancelled (counted by day from when it
	// took them); negative keeps them until release or cancel.
	RefRetention time.Duration
	// LedgerCatchUp bounds how long a reconciler round waits for the
	// ledger's durable (and planner-outcomes) to have applied every event
	// published before the round began; a durable that does not get there
	// means the ledger is behind, and the round does nothing.
	LedgerCatchUp time.Duration
	// Consumers configures the consumer runners: readiness after a stall
	// (CONSUMER_STALL_AFTER), info polling and the retry policy.
	Consumers bus.Consumers
	// OnHTTP, when not nil, is called with the bound address once the HTTP
	// listener is up (tests use "127.0.0.1:0").
	OnHTTP func(net.Addr)
	// OnReady, when not nil, is called once every stream, bucket and
	// consumer is provisioned and the consumers are running.
	OnReady func()
}

// ConfigFromEnv reads the configuration through getenv. An empty
// PLANNER_HTTP_ADDR cannot be told apart from an unset one, so "off" (or
// "none", "-") disables the HTTP listener; when the default address is
// already taken Run serves no HTTP and says so, rather than failing.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	env := config.NewEnv(getenv)
	cfg := Config{
		NATSURL:      env.String(config.NATSURL, DefaultNATSURL),
		TopologyFile: env.String(config.Topology, ""),
		HTTPAddr:     env.String(EnvHTTPAddr, DefaultHTTPAddr),
		MaxPackages:  env.Int(EnvMaxPackages, DefaultMaxPackages),
		Version:      env.String(EnvVersion, "dev"),
		Streams: bus.StreamConfig{
			Replicas:     env.Int(config.StreamReplicas, 1),
			EventsMaxAge: env.Duration(config.EventsMaxAge, 0),
		},
		PublishWindow:         env.Int(EnvPublishWindow, DefaultPublishWindow),
		LookupParallel:        env.Int(EnvLookupParallel, DefaultLookupParallel),
		SubmitWorkers:         env.Int(EnvSubmitWorkers, DefaultSubmitWorkers),
		OutcomeWorkers:        env.Int(EnvOutcomeWorkers, DefaultOutcomeWorkers),
		UnknownPackageRetries: env.Int(EnvUnknownPackageRetries, DefaultUnknownPackageRetries),
		UnknownPackageDelay:   env.Duration(EnvUnknownPackageDelay, DefaultUnknownPackageDelay),
		TopologyPoll:          env.Duration(EnvTopologyPoll, DefaultTopologyPoll),
		PlanPartBytes:         env.Int(EnvPlanPartBytes, 0),
		Dedup:                 env.Bool(EnvDedup, true),
		InflightTTL:           env.Duration(EnvInflightTTL, 24*time.Hour),
		LedgerURL:             env.String(EnvLedgerURL, ""),
		LedgerToken:           env.String(EnvLedgerToken, ""),
		ReconcileInterval:     env.Duration(EnvReconcileInterval, DefaultReconcileInterval),
		StallAfter:            env.Duration(EnvStallAfter, DefaultStallAfter),
		MaxReissues:           env.Int(EnvMaxReissues, DefaultMaxReissues),
		ReleaseSweep:          env.Duration(EnvReleaseSweep, DefaultReleaseSweep),
		JobRetention:          env.Duration(EnvJobRetention, DefaultJobRetention),
		RefRetention:          env.Duration(EnvRefRetention, DefaultRefRetention),
		LedgerCatchUp:         env.Duration(EnvLedgerCatchUp, DefaultLedgerCatchUp),
		Consumers:             bus.ConsumersFromEnv(env),
	}
	switch cfg.HTTPAddr {
	case "off", "none", "-":
		cfg.HTTPAddr = ""
	}
	if err := env.Err(); err != nil {
		return cfg, err
	}
	return cfg, cfg.validate()
}

func (c Config) validate() error {
	var errs []error
	if c.NATSURL == "" {
		errs = append(errs, errors.New("NATS URL is required ("+config.NATSURL+")"))
	}
	if c.TopologyFile == "" {
		errs = append(errs, errors.New("topology file is required ("+config.Topology+")"))
	}
	for _, n := range []struct {
		name string
		v    int
	}{{EnvMaxPackages, c.MaxPackages}, {EnvPublishWindow, c.PublishWindow}, {EnvLookupParallel, c.LookupParallel}, {EnvSubmitWorkers, c.SubmitWorkers}, {EnvOutcomeWorkers, c.OutcomeWorkers}, {EnvUnknownPackageRetries, c.UnknownPackageRetries}, {EnvPlanPartBytes, c.PlanPartBytes}, {EnvMaxReissues, c.MaxReissues}} {
		if n.v < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative (got %d)", n.name, n.v))
		}
	}
	return errors.Join(errs...)
}

func (c Config) withDefaults() Config {
	if c.MaxPackages == 0 {
		c.MaxPackages = DefaultMaxPackages
	}
	if c.PublishWindow == 0 {
		c.PublishWindow = DefaultPublishWindow
	}
	if c.LookupParallel == 0 {
		c.LookupParallel = DefaultLookupParallel
	}
	if c.SubmitWorkers == 0 {
		c.SubmitWorkers = DefaultSubmitWorkers
	}
	if c.OutcomeWorkers == 0 {
		c.OutcomeWorkers = DefaultOutcomeWorkers
	}
	if c.UnknownPackageRetries == 0 {
		c.UnknownPackageRetries = DefaultUnknownPackageRetries
	}
	if c.UnknownPackageDelay == 0 {
		c.UnknownPackageDelay = DefaultUnknownPackageDelay
	}
	if c.TopologyPoll == 0 {
		c.TopologyPoll = DefaultTopologyPoll
	}
	if c.ReleaseSweep <= 0 {
		c.ReleaseSweep = DefaultReleaseSweep
	}
	if c.ReconcileInterval <= 0 {
		c.ReconcileInterval = DefaultReconcileInterval
	}
	if c.StallAfter <= 0 {
		c.StallAfter = DefaultStallAfter
	}
	if c.JobRetention <= 0 {
		c.JobRetention = DefaultJobRetention
	}
	if c.RefRetention == 0 {
		c.RefRetention = DefaultRefRetention
	}
	if c.LedgerCatchUp <= 0 {
		c.LedgerCatchUp = DefaultLedgerCatchUp
	}
	if c.MaxReissues == 0 {
		c.MaxReissues = DefaultMaxReissues
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	return c
}
