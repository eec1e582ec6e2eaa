package stager

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/ccatobs/ccat-staging/services/stager/archive"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/config"
	"github.com/ccatobs/ccat-staging/shared/lease"
	"github.com/ccatobs/ccat-staging/shared/topology"
)

// Environment variables read by ConfigFromEnv, besides the common ones in
// shared/config (NATS_URL, TOPOLOGY_FILE, STREAM_REPLICAS, EVENTS_MAX_AGE).
const (
	EnvSite             = "STAGER_SITE"
	EnvInstance         = "STAGER_INSTANCE"
	EnvWorkers          = "STAGER_WORKERS"
	EnvHTTPAddr         = "STAGER_HTTP_ADDR"
	EnvAckWait          = "STAGER_ACK_WAIT"
	EnvMaxDeliver       = "STAGER_MAX_DELIVER"
	EnvMaxAckPending    = "STAGER_MAX_ACK_PENDING"
	EnvFreeSpaceFactor  = "STAGER_FREE_SPACE_FACTOR"
	EnvMaxEntries       = "STAGER_MAX_ENTRIES"
	EnvMaxUnpacked      = "STAGER_MAX_UNPACKED_BYTES"
	EnvChecksumAttempts = "STAGER_CHECKSUM_ATTEMPTS"
	EnvProgressInterval = "STAGER_PROGRESS_INTERVAL"
	EnvShutdownGrace    = "STAGER_SHUTDOWN_GRACE"
	EnvRetryBase        = bus.EnvRetryBase
	EnvRetryMax         = bus.EnvRetryMax
	EnvNoSpaceDelay     = bus.EnvNoSpaceDelay
	EnvReadRate         = "STAGER_READ_RATE"
	EnvHashFiles        = "STAGER_HASH_FILES"
	EnvLeaseTTL         = "STAGER_LEASE_TTL"
	// EnvTestHoldDir is a test hook, inert unless set: see Config.testHold.
	EnvTestHoldDir = "STAGER_TEST_HOLD_DIR"
)

// Config is everything a stager instance needs. Zero values of the optional
// knobs mean the defaults listed in the README.
type Config struct {
	NATSURL      string
	TopologyFile string
	// Topology, when set, is used instead of loading TopologyFile.
	Topology *topology.Topology
	Site     string
	Instance string
	Version  string
	Workers  int
	// HTTPAddr serves /healthz, /readyz and /metrics; "" serves nothing.
	HTTPAddr string

	Replicas     int           // streams and the STAGERS bucket
	EventsMaxAge time.Duration // STAGING_EVENTS and ARCHIVE retention

	AckWait       time.Duration // server redelivers after this much silence; InProgress is sent at a quarter of it
	MaxDeliver    int           // attempts per request before retries_exhausted
	MaxAckPending int           // packages in flight per site and priority

	FreeSpaceFactor  float64 // a package needs size × factor free bytes to start
	MaxEntries       int     // entries per archive
	MaxUnpackedBytes int64   // unpacked bytes per archive; 0 = the package's size
	ChecksumAttempts int     // reads that must all mismatch before checksum_mismatch is permanent
	ProgressInterval time.Duration
	ShutdownGrace    time.Duration // in-flight packages may finish within it after shutdown begins
	RetryBase        time.Duration // first NakWithDelay; doubles per attempt, with jitter
	RetryMax         time.Duration
	NoSpaceDelay     time.Duration // redelivery delay while the destination is full
	ReadRate         int64         // bytes per second per package read from an archive; 0 = unlimited
	// HashFiles records each file's sha256 in the verification record even
	// when the request has no manifest (a second hash pass; the tar's sha256
	// already covers every byte).
	HashFiles bool

	// LeaseTTL is how long a (location, package) lease in STAGER_LEASES
	// outlives its holder's last renewal (renewed every LeaseTTL/3): how
	// long the other instances wait for a stager that died holding one.
	LeaseTTL time.Duration
	// StallAfter: a durable with pending work and no progress for this
	// long fails /readyz (CONSUMER_STALL_AFTER; 0: 60 s). PollInterval:
	// how often the runners poll consumer info (CONSUMER_POLL_INTERVAL).
	StallAfter, PollInterval time.Duration

	// S3Credentials holds each S3 location's credentials, by location name.
	S3Credentials map[string]archive.Credentials

	// openBackend replaces archive.For in tests that need a source the real
	// backends cannot imitate (a stream that stalls on demand).
	openBackend func(topology.Location, archive.Credentials) (archive.Backend, error)

	// testHold is a directory of test hooks (STAGER_TEST_HOLD_DIR), for the
	// tests that must hold a deletion at its worst moment in another
	// process: while the file <testHold>/<point> exists, the stager stops
	// at that point (see holdPoint). Unset, nothing is looked at.
	testHold string
}

func (c Config) withDefaults() Config {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	if c.Workers <= 0 {
		c.Workers = 2
	}
	if c.Instance == "" {
		c.Instance = "stager"
	}
	def(&c.AckWait, 60*time.Second)
	if c.MaxDeliver <= 0 {
		c.MaxDeliver = 5
	}
	if c.MaxAckPending <= 0 {
		c.MaxAckPending = 64
	}
	if c.FreeSpaceFactor <= 0 {
		c.FreeSpaceFactor = 1.1
	}
	if c.MaxEntries <= 0 {
		c.MaxEntries = 1_000_000
	}
	if c.ChecksumAttempts <= 0 {
		c.ChecksumAttempts = 2
	}
	def(&c.ProgressInterval, 5*time.Second)
	def(&c.ShutdownGrace, 30*time.Second)
	def(&c.RetryBase, time.Second)
	def(&c.RetryMax, 5*time.Minute)
	def(&c.NoSpaceDelay, 30*time.Second)
	def(&c.LeaseTTL, lease.DefaultTTL)
	c.LeaseTTL = max(c.LeaseTTL, lease.MinTTL)
	return c
}

// Consumers is the runners' configuration; the retry policy is the one
// the ledger's explain reads from the same STAGER_RETRY_* variables.
func (c Config) Consumers() bus.Consumers {
	return bus.Consumers{StallAfter: c.StallAfter, PollInterval: c.PollInterval,
		Retry: bus.Retry{Base: c.RetryBase, Max: c.RetryMax, NoSpace: c.NoSpaceDelay, Jitter: bus.DefaultRetry().Jitter}}
}

// ConfigFromEnv reads the configuration through getenv. It loads the
// topology, because the site must be one of its sites and each S3
// location's credentials are looked up by the location's name.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	e := config.NewEnv(getenv)
	c := Config{
		NATSURL:          e.String(config.NATSURL, "nats://127.0.0.1:4222"),
		TopologyFile:     e.String(config.Topology, ""),
		Site:             e.String(EnvSite, ""),
		Instance:         e.String(EnvInstance, ""),
		Workers:          e.Int(EnvWorkers, 2),
		HTTPAddr:         e.String(EnvHTTPAddr, "127.0.0.1:9102"),
		Replicas:         e.Int(config.StreamReplicas, 1),
		EventsMaxAge:     e.Duration(config.EventsMaxAge, 0),
		AckWait:          e.Duration(EnvAckWait, 60*time.Second),
		MaxDeliver:       e.Int(EnvMaxDeliver, 5),
		MaxAckPending:    e.Int(EnvMaxAckPending, 64),
		FreeSpaceFactor:  e.Float(EnvFreeSpaceFactor, 1.1),
		MaxEntries:       e.Int(EnvMaxEntries, 1_000_000),
		MaxUnpackedBytes: int64(e.Float(EnvMaxUnpacked, 0)),
		ChecksumAttempts: e.Int(EnvChecksumAttempts, 2),
		ProgressInterval: e.Duration(EnvProgressInterval, 5*time.Second),
		ShutdownGrace:    e.Duration(EnvShutdownGrace, 30*time.Second),
		RetryBase:        e.Duration(EnvRetryBase, time.Second),
		RetryMax:         e.Duration(EnvRetryMax, 5*time.Minute),
		NoSpaceDelay:     e.Duration(EnvNoSpaceDelay, 30*time.Second),
		ReadRate:         int64(e.Float(EnvReadRate, 0)),
		HashFiles:        e.Bool(EnvHashFiles, false),
		LeaseTTL:         e.Duration(EnvLeaseTTL, lease.DefaultTTL),
		testHold:         e.String(EnvTestHoldDir, ""),
		StallAfter:       e.Duration(bus.EnvStallAfter, bus.DefaultStallAfter),
		PollInterval:     e.Duration(bus.EnvPollInterval, 5*time.Second),
	}
	if err := e.Err(); err != nil {
		return c, err
	}
	// An unset variable and an empty one look the same through getenv, so
	// the listener is switched off by name.
	switch strings.ToLower(c.HTTPAddr) {
	case "off", "none", "-":
		c.HTTPAddr = ""
	}
	if c.Instance == "" {
		h, err := os.Hostname()
		if err != nil {
			return c, fmt.Errorf("%s is unset and the hostname is unknown: %w", EnvInstance, err)
		}
		c.Instance = h
	}
	if c.TopologyFile == "" {
		return c, fmt.Errorf("%s is required", config.Topology)
	}
	t, err := topology.Load(c.TopologyFile)
	if err != nil {
		return c, err
	}
	c.Topology = t
	if err := c.check(); err != nil {
		return c, err
	}
	c.S3Credentials = map[string]archive.Credentials{}
	for _, s := range t.Sites {
		for _, l := range s.Locations {
			if l.Storage != topology.StorageS3 {
				continue
			}
			p := "CCAT_S3_" + strings.ToUpper(strings.ReplaceAll(l.Name, "-", "_"))
			cr := archive.Credentials{AccessKeyID: getenv(p + "_ACCESS_KEY_ID"), SecretAccessKey: getenv(p + "_SECRET_ACCESS_KEY")}
			if cr.AccessKeyID == "" {
				cr = archive.Credentials{AccessKeyID: getenv("AWS_ACCESS_KEY_ID"), SecretAccessKey: getenv("AWS_SECRET_ACCESS_KEY")}
			}
			c.S3Credentials[l.Name] = cr
		}
	}
	return c, nil
}

// check validates what the defaults cannot fix.
func (c Config) check() error {
	var errs []error
	if c.Site == "" {
		errs = append(errs, fmt.Errorf("%s is required", EnvSite))
	} else if c.Topology != nil {
		if _, ok := c.Topology.Site(c.Site); !ok {
			errs = append(errs, fmt.Errorf("%s=%q is not a site of the topology", EnvSite, c.Site))
		} else if len(c.Topology.Processing(c.Site)) == 0 {
			errs = append(errs, fmt.Errorf("site %q has no active processing location", c.Site))
		}
	}
	if c.Workers < 0 || c.Workers > 1024 {
		errs = append(errs, fmt.Errorf("%s=%d: want 1..1024", EnvWorkers, c.Workers))
	}
	if c.FreeSpaceFactor < 0 {
		errs = append(errs, fmt.Errorf("%s must not be negative", EnvFreeSpaceFactor))
	}
	return errors.Join(errs...)
}
