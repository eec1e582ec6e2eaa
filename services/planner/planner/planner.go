// Package planner is the planner service: it keeps the package catalog from
// archive.* announcements, turns each staging.submit into a plan
// (staging.planned) and one staging.request.<site>.<priority> per package,
// or refuses it (staging.rejected), and provisions the work consumers of
// every site in the topology. Run is the whole service; the demo and the
// end-to-end tests start it in-process, several at once, so it keeps no
// global state and handles no signals.
package planner

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ccatobs/ccat-staging/services/planner/catalog"
	"github.com/ccatobs/ccat-staging/services/planner/inflight"
	"github.com/ccatobs/ccat-staging/services/planner/jobs"
	"github.com/ccatobs/ccat-staging/services/planner/outcomes"
	"github.com/ccatobs/ccat-staging/services/planner/reissue"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
	"github.com/ccatobs/ccat-staging/shared/obs"
	"github.com/ccatobs/ccat-staging/shared/refs"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/ccatobs/ccat-staging/shared/topology"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Source is the CloudEvents source of everything the planner publishes.
const Source = "ccat-staging/planner"

// Consumer settings of the planner's own durables. AckWait is how long a
// message in the hands of a planner that died stays invisible, so it is
// short; a message being worked on is kept alive with InProgress (the
// runner sends it every AckWait/3),
// so a long plan never outlives it. maxHandle bounds one message's work.
const (
	submitAckWait  = 10 * time.Second
	catalogAckWait = 10 * time.Second
	maxHandle      = 5 * time.Minute
)

// service is one running planner.
type service struct {
	cfg           Config
	log           zerolog.Logger
	nc            *nats.Conn
	js            jetstream.JetStream // windowed async publishing and everything else
	topo          atomic.Pointer[topology.Topology]
	catalog       *catalog.Catalog
	jobs          *jobs.Store
	inflight      *inflight.Table   // nil unless Config.Dedup
	ledger        *ledgerapi.Client // nil unless Config.LedgerURL
	reissues      *reissue.Store
	outcomes      *outcomes.Store    // PLANNER_OUTCOMES: final outcomes the reconciler checks
	refs          *refs.Table        // PLANNER_REFS: jobs referencing each staged copy
	cancelled     jetstream.KeyValue // CANCELLED: job id -> cancel event id, read by the stagers
	catCons       jetstream.Consumer
	archiveStream jetstream.Stream // ARCHIVE, to see how far the catalog is behind
	m             *metrics
	// maxPayload is the server's limit on one message; plans and requests
	// are sized against it.
	maxPayload int64
}

// Run provisions what the planner needs, serves until ctx is cancelled, then
// lets the message in hand finish, and returns nil. It returns an error
// only when start-up fails; being cancelled during start-up is not a
// failure.
func Run(ctx context.Context, cfg Config, log zerolog.Logger) error {
	err := run(ctx, cfg, log)
	if err != nil && ctx.Err() != nil {
		log.Info().Err(err).Msg("planner cancelled while starting")
		return nil
	}
	return err
}

func run(ctx context.Context, cfg Config, log zerolog.Logger) error {
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("planner config: %w", err)
	}
	cfg = cfg.withDefaults()
	log = log.With().Str("component", "planner").Logger()
	topo, err := topology.Load(cfg.TopologyFile)
	if err != nil {
		return err
	}
	nc, _, err := bus.Connect(ctx, cfg.NATSURL, "ccat-staging planner", log)
	if err != nil {
		return err
	}
	defer closeConn(nc)
	js, err := jetstream.New(nc,
		// Above the publish window, so PublishMsgAsync never stalls.
		jetstream.WithPublishAsyncMaxPending(2*cfg.PublishWindow),
		jetstream.WithPublishAsyncTimeout(30*time.Second),
	)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	s := &service{cfg: cfg, log: log, nc: nc, js: js, maxPayload: nc.MaxPayload()}
	if limit := int(s.maxPayload * 3 / 4); s.cfg.PlanPartBytes == 0 || s.cfg.PlanPartBytes > limit {
		s.cfg.PlanPartBytes = limit
	}
	s.topo.Store(topo)

	if err := bus.Provision(ctx, js, cfg.Streams); err != nil {
		return err
	}
	if err := s.provisionSites(ctx, topo); err != nil {
		return err
	}
	if s.catalog, err = catalog.Open(ctx, js, cfg.Streams.Replicas); err != nil {
		return err
	}
	if s.jobs, err = jobs.Open(ctx, js, cfg.Streams.Replicas, cfg.JobRetention); err != nil {
		return err
	}
	if s.archiveStream, err = js.Stream(ctx, subject.ArchiveStream); err != nil {
		return fmt.Errorf("stream %s: %w", subject.ArchiveStream, err)
	}
	catCfg := jetstream.ConsumerConfig{
		Durable:       subject.PlannerCatalog,
		Description:   "planner: archive.* into the CATALOG bucket",
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait:       catalogAckWait,
	}
	s.catCons, err = js.CreateOrUpdateConsumer(ctx, subject.ArchiveStream, catCfg)
	if err != nil {
		return fmt.Errorf("provision consumer %s: %w", subject.PlannerCatalog, err)
	}
	subCfg := jetstream.ConsumerConfig{
		Durable:       subject.PlannerSubmit,
		Description:   "planner: staging.submit into plans and requests",
		FilterSubject: subject.Submit,
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait:       submitAckWait,
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, subject.EventsStream, subCfg); err != nil {
		return fmt.Errorf("provision consumer %s: %w", subject.PlannerSubmit, err)
	}

	if cfg.LedgerURL != "" {
		s.ledger = &ledgerapi.Client{BaseURL: cfg.LedgerURL, Token: cfg.LedgerToken}
		if s.reissues, err = reissue.Open(ctx, js, cfg.Streams.Replicas, cfg.JobRetention); err != nil {
			return err
		}
		if err := s.ensureDirectGet(ctx); err != nil {
			return err
		}
	}
	if s.outcomes, err = outcomes.Open(ctx, js, cfg.Streams.Replicas, cfg.JobRetention); err != nil {
		return err
	}
	if cfg.Dedup {
		if s.inflight, err = inflight.Open(ctx, js, cfg.Streams.Replicas, cfg.InflightTTL); err != nil {
			return err
		}
	}
	// Outcomes free dedup entries and drop the references of packages that
	// failed for good, so the consumer runs with dedup off too.
	outCfg := jetstream.ConsumerConfig{
		Durable:        subject.PlannerOutcomes,
		Description:    "planner: staging outcomes free packages for cross-job dedup and drop references of failed ones",
		FilterSubjects: []string{subject.Done, subject.Failed, subject.Stalled},
		AckPolicy:      jetstream.AckExplicitPolicy,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		AckWait:        catalogAckWait,
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, subject.EventsStream, outCfg); err != nil {
		return fmt.Errorf("provision consumer %s: %w", subject.PlannerOutcomes, err)
	}
	canDurable, err := s.openCancel(ctx)
	if err != nil {
		return err
	}
	relDurable, err := s.openRelease(ctx)
	if err != nil {
		return err
	}

	reg := obs.NewRegistry()
	s.m = newMetrics(reg, cfg.Version)
	s.m.sites.Set(float64(len(topo.Sites)))
	health := bus.NewHealth(reg, cfg.Consumers.StallAfter)

	// Everything below stops on runCtx, so a failing HTTP listener stops
	// the consumers too instead of leaving Run waiting for them.
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	// Every durable runs on the shared runner: one message at a time each
	// (a plan takes well under a second, and pre-fetched submits would only
	// age towards their AckWait), kept alive while handled, finished when
	// shutdown begins, and provisioned again if it disappears. The handlers
	// settle their messages themselves.
	settles := func(h func(context.Context, jetstream.Msg)) bus.Handler {
		return func(ctx context.Context, m jetstream.Msg) error { h(ctx, m); return nil }
	}
	for _, c := range []struct {
		durable bus.Durable
		pull    int
		workers int
		key     func(jetstream.Msg) string
		h       func(context.Context, jetstream.Msg)
	}{
		{bus.DurableOn(cfg.Streams, subject.ArchiveStream, catCfg), 64, 1, nil, s.handleArchive},
		{bus.DurableOn(cfg.Streams, subject.EventsStream, subCfg), 1, cfg.SubmitWorkers, nil, s.handleSubmit},
		{bus.DurableOn(cfg.Streams, subject.EventsStream, outCfg), 64, cfg.OutcomeWorkers, outcomePackage, s.handleOutcome},
		{canDurable, 16, 1, nil, s.handleCancel},
		{relDurable, 16, 1, nil, s.handleRelease},
	} {
		r := cfg.Consumers.Runner(js, health, log)
		r.Durables, r.Mode, r.Handler = []bus.Durable{c.durable}, bus.Stream, settles(c.h)
		r.Workers, r.Key = c.workers, c.key
		r.PullMax, r.PullExpiry, r.HandleLimit = c.pull, pullExpiry, maxHandle
		wg.Go(func() { _ = r.Run(runCtx) })
	}
	wg.Go(func() { s.watchTopology(runCtx) })
	wg.Go(func() { s.sweepReleases(runCtx) })
	if s.ledger != nil {
		wg.Go(func() { s.reconcile(runCtx) })
	}
	if cfg.HTTPAddr != "" {
		mux := http.NewServeMux()
		obs.Mount(mux, reg, map[string]obs.Check{"nats": func(context.Context) error {
			if st := nc.Status(); st != nats.CONNECTED {
				return fmt.Errorf("nats connection is %s", st)
			}
			return nil
		}, "consumers": health.Check})
		wg.Go(func() {
			err := obs.Serve(runCtx, cfg.HTTPAddr, mux, log, cfg.OnHTTP)
			switch {
			case err == nil:
			case cfg.HTTPAddr == DefaultHTTPAddr && errors.Is(err, syscall.EADDRINUSE):
				// Several planners in one host or process (tests, the demo)
				// that did not choose an address: an explicitly empty
				// PLANNER_HTTP_ADDR reads as unset, so the default cannot
				// be fatal. Planning does not need the endpoints.
				log.Warn().Err(err).Str("addr", cfg.HTTPAddr).Msg("default HTTP address taken; serving no /metrics (set PLANNER_HTTP_ADDR)")
			default:
				errc <- fmt.Errorf("http %s: %w", cfg.HTTPAddr, err)
			}
		})
	}
	log.Info().Str("version", cfg.Version).Strs("sites", topo.SiteNames()).Msg("planner started")
	if cfg.OnReady != nil {
		cfg.OnReady()
	}
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		log.Error().Err(runErr).Msg("stopping")
	}
	stop()
	wg.Wait()
	log.Info().Msg("planner stopped")
	return runErr
}

// closeConn drains the connection so the last acks and publications go out
// before it closes.
func closeConn(nc *nats.Conn) {
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := nc.Drain(); err != nil {
		nc.Close()
		return
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		nc.Close()
	}
}

// provisionSites creates the work consumers of every site that lacks them:
// queue discovery, so requests for a site wait in their own consumer even
// before the site's first stager starts. Consumers that exist are left as
// they are, so a stager's own settings are never overridden.
func (s *service) provisionSites(ctx context.Context, t *topology.Topology) error {
	for _, site := range t.SiteNames() {
		for _, p := range subject.Priorities {
			name := subject.StagerDurable(site, p)
			_, err := s.js.Consumer(ctx, subject.RequestsStream, name)
			if err == nil {
				continue
			}
			if !errors.Is(err, jetstream.ErrConsumerNotFound) {
				return fmt.Errorf("look up consumer %s: %w", name, err)
			}
			_, err = s.js.CreateConsumer(ctx, subject.RequestsStream, bus.StagerConsumer(site, p, s.cfg.Stager))
			if err != nil && !errors.Is(err, jetstream.ErrConsumerExists) {
				return fmt.Errorf("provision consumer %s: %w", name, err)
			}
			s.log.Info().Str("site", site).Str("priority", p).Str("consumer", name).Msg("provisioned site work consumer")
		}
	}
	return nil
}

// pullExpiry bounds each pull request. The client notices a consumer whose
// leader moved (a cluster node lost) only after two missed idle heartbeats,
// which are half the expiry: 5 s instead of the default 30 s turns a minute
// of stalled planning after a failover into seconds, for one extra pull
// request per consumer every few seconds while idle.
const pullExpiry = 5 * time.Second
