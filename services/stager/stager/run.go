// Package stager is the stager service: it takes its site's staging requests
// from the work queue, highest priority first, streams each package once from
// its archive location into a hidden directory at the destination, verifies
// it, moves it into place atomically, and reports every attempt as events.
package stager

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/user"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ccatobs/ccat-staging/services/stager/archive"
	"github.com/ccatobs/ccat-staging/services/stager/dest"
	"github.com/ccatobs/ccat-staging/services/stager/unpack"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/heartbeat"
	"github.com/ccatobs/ccat-staging/shared/lease"
	"github.com/ccatobs/ccat-staging/shared/logx"
	"github.com/ccatobs/ccat-staging/shared/obs"
	"github.com/ccatobs/ccat-staging/shared/refs"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/ccatobs/ccat-staging/shared/topology"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// service is one running stager instance; Run owns it.
type service struct {
	cfg    Config
	log    zerolog.Logger
	topo   *topology.Topology
	nc     *nats.Conn
	js     jetstream.JetStream
	source string // CloudEvents source of everything this instance emits
	m      *metrics
	dests  map[string]dest.Location // processing locations of the site, by name

	mu       sync.Mutex
	backends map[string]archive.Backend
	reserved map[string]int64         // bytes promised to packages in flight, by location
	locks    map[string]chan struct{} // one extraction per package and location at a time
	busy     int
	started  time.Time
	// outbox settles the answers that hold nothing (outbox.go).
	outbox *outbox
	// cancels is the watched copy of the CANCELLED bucket (cancelview.go).
	cancels *cancelView
	// cancelKV is the CANCELLED bucket once the planner has created it.
	cancelKV atomic.Pointer[jetstream.KeyValue]
	// refsKV is the planner's PLANNER_REFS bucket once it exists.
	refsKV atomic.Pointer[refs.Table]
	// leases orders staging, already_present and deletion of one copy
	// across the site's instances (lease.go).
	leases *lease.Store

	// ready receives the HTTP listener's address (tests use it).
	ready func(net.Addr)
}

// Run runs a stager instance until ctx is cancelled, then stops pulling,
// lets in-flight packages finish within cfg.ShutdownGrace (interrupting,
// cleaning up and handing back the rest), and returns nil. It returns an
// error only when start-up fails.
func Run(ctx context.Context, cfg Config, log zerolog.Logger) error {
	return run(ctx, cfg, log, nil)
}

func run(ctx context.Context, cfg Config, log zerolog.Logger, ready func(net.Addr)) error {
	err := start(ctx, cfg, log, ready)
	if err != nil && ctx.Err() != nil {
		// Stopped while starting: that is a shutdown, not a failure.
		log.Info().Err(err).Msg("stopped during start-up")
		return nil
	}
	return err
}

func start(ctx context.Context, cfg Config, log zerolog.Logger, ready func(net.Addr)) error {
	cfg = cfg.withDefaults()
	topo := cfg.Topology
	if topo == nil {
		t, err := topology.Load(cfg.TopologyFile)
		if err != nil {
			return err
		}
		topo = t
		cfg.Topology = t
	}
	if err := cfg.check(); err != nil {
		return fmt.Errorf("stager config: %w", err)
	}
	instance := dest.SafeInstance(cfg.Instance)
	log = log.With().Str(logx.Site, cfg.Site).Str(logx.Instance, instance).Logger()
	s := &service{
		cfg:      cfg,
		log:      log,
		topo:     topo,
		source:   "ccat-staging/stager/" + cfg.Site + "/" + instance,
		m:        newMetrics(),
		dests:    map[string]dest.Location{},
		backends: map[string]archive.Backend{},
		reserved: map[string]int64{},
		locks:    map[string]chan struct{}{},
		cancels:  newCancelView(),
		started:  time.Now().UTC(),
		ready:    ready,
	}
	for _, l := range topo.Processing(cfg.Site) {
		perms, err := locationPerms(l)
		if err != nil {
			return err
		}
		sync, err := unpack.ParseSync(l.Sync)
		if err != nil {
			return fmt.Errorf("processing location %s: %w", l.Name, err)
		}
		batches := s.m.commitBatch.WithLabelValues(l.Name)
		d := dest.Location{Name: l.Name, Root: l.Path, Instance: instance, Perms: perms, Sync: sync,
			Committer: dest.NewCommitter(func(n int) { batches.Observe(float64(n)) })}
		if err := d.Prepare(); err != nil {
			return err
		}
		// A crash or kill -9 leaves only temp dirs behind; they are ours.
		n, err := d.Sweep()
		if err != nil {
			log.Warn().Err(err).Str(logx.Location, l.Name).Msg("sweeping temp dirs")
		}
		if n > 0 {
			log.Info().Int("removed", n).Str(logx.Location, l.Name).Msg("swept temp dirs of an earlier run")
		}
		s.dests[l.Name] = d
	}

	nc, js, err := bus.Connect(ctx, cfg.NATSURL, "stager-"+cfg.Site+"-"+instance, log)
	if err != nil {
		return err
	}
	defer nc.Drain()
	s.nc, s.js = nc, js
	sc := bus.StreamConfig{Replicas: cfg.Replicas, EventsMaxAge: cfg.EventsMaxAge}
	if err := bus.Provision(ctx, js, sc); err != nil {
		return err
	}
	if err := bus.ProvisionDeadLetter(ctx, js, sc); err != nil {
		return err
	}
	// Provisioned here too (not only by the runners) so that a stager
	// without the right to create them fails at start, loudly.
	consumers, err := bus.ProvisionStager(ctx, js, cfg.Site, bus.StagerConsumerConfig{
		AckWait: cfg.AckWait, MaxDeliver: cfg.MaxDeliver, MaxAckPending: cfg.MaxAckPending,
	})
	if err != nil {
		return err
	}
	// The site's backlog, per priority, as Prometheus sees it on scrape.
	backlog := bus.NewBacklog("stager_consumer_pending", "stager_consumer_ack_pending", "site", "priority")
	for i, p := range subject.Priorities {
		backlog.Add(consumers[i], cfg.Site, p)
	}
	s.m.reg.MustRegister(backlog)
	if err := bus.ProvisionCleanup(ctx, js, sc); err != nil {
		return err
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, subject.CleanupStream, bus.StagerCleanupConsumer(cfg.Site)); err != nil {
		return fmt.Errorf("provision cleanup consumer: %w", err)
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, subject.AdvisoryStream, bus.StagerAdvisoryConsumer(cfg.Site)); err != nil {
		return fmt.Errorf("provision advisory consumer: %w", err)
	}
	kv, err := heartbeat.Bucket(ctx, js, cfg.Replicas)
	if err != nil {
		return err
	}
	if s.leases, err = lease.Open(ctx, js, lease.Options{Instance: instance, Replicas: cfg.Replicas, TTL: cfg.LeaseTTL}); err != nil {
		return err
	}

	// Work outlives ctx by the grace period: shutdown stops the pulling at
	// once, but a package a minute from done should get to finish.
	work, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()
	var bg sync.WaitGroup
	bg.Go(func() {
		<-ctx.Done()
		t := time.NewTimer(cfg.ShutdownGrace)
		defer t.Stop()
		select {
		case <-t.C:
			log.Warn().Dur("grace", cfg.ShutdownGrace).Msg("grace period over: interrupting in-flight packages")
			stopWork()
		case <-work.Done():
		}
	})

	consumersCfg := cfg.Consumers()
	health := bus.NewHealth(s.m.reg, consumersCfg.StallAfter)
	httpErr := make(chan error, 1)
	if cfg.HTTPAddr != "" {
		mux := http.NewServeMux()
		obs.Mount(mux, s.m.reg, map[string]obs.Check{"nats": func(context.Context) error {
			if !nc.IsConnected() {
				return errors.New(nc.Status().String())
			}
			return nil
		}, "consumers": health.Check})
		bg.Go(func() { httpErr <- obs.Serve(ctx, cfg.HTTPAddr, mux, log, s.ready) })
	}

	// Every durable runs on the shared runner, which provisions it again if
	// it disappears and resets a subscription that stopped delivering.
	// Requests: cfg.Workers workers, each asking high, normal, low in that
	// order; handle settles each request itself and sends InProgress with
	// its progress events, and runs under work.
	reqRunner := consumersCfg.Runner(js, health, log)
	for _, p := range subject.Priorities {
		reqRunner.Durables = append(reqRunner.Durables, bus.DurableOn(sc, subject.RequestsStream,
			bus.StagerConsumer(cfg.Site, p, bus.StagerConsumerConfig{AckWait: cfg.AckWait, MaxDeliver: cfg.MaxDeliver, MaxAckPending: cfg.MaxAckPending})))
	}
	reqRunner.Mode, reqRunner.Workers, reqRunner.KeepAlive, reqRunner.Work = bus.Priority, cfg.Workers, -1, work
	reqRunner.Handler = func(ctx context.Context, m jetstream.Msg) error { s.handle(ctx, m); return nil }
	// Deletion items one at a time, under work too.
	cleanRunner := consumersCfg.Runner(js, health, log)
	cleanRunner.Durables = []bus.Durable{bus.DurableOn(sc, subject.CleanupStream, bus.StagerCleanupConsumer(cfg.Site))}
	cleanRunner.Mode, cleanRunner.PullExpiry, cleanRunner.Work = bus.Stream, 5*time.Second, work
	cleanRunner.Handler = func(ctx context.Context, m jetstream.Msg) error { s.handleCleanup(ctx, m); return nil }
	// MAX_DELIVERIES advisories (not CloudEvents): dead letters.
	deadRunner := consumersCfg.Runner(js, health, log)
	deadRunner.Durables = []bus.Durable{bus.DurableOn(sc, subject.AdvisoryStream, bus.StagerAdvisoryConsumer(cfg.Site))}
	deadRunner.Mode = bus.Stream
	deadRunner.Handler = func(ctx context.Context, m jetstream.Msg) error { s.deadLetter(ctx, m); return nil }

	log.Info().Int("workers", cfg.Workers).Str("version", cfg.Version).Msg("stager started")
	bg.Go(func() { s.beat(ctx, kv) })
	bg.Go(func() { s.watchCancelled(ctx, log) })
	bg.Go(func() { _ = deadRunner.Run(ctx) })
	// Settlers wait on round trips (the done's PubAck, the ack, the
	// lease's release), not on the disk: several per worker keep a worker
	// from waiting for room in the outbox.
	s.startOutbox(work, max(16, 4*cfg.Workers))
	var workers sync.WaitGroup
	workers.Go(func() { _ = cleanRunner.Run(ctx) })
	workers.Go(func() { _ = reqRunner.Run(ctx) })
	workers.Wait()
	s.closeOutbox()
	stopWork()
	bg.Wait()
	select {
	case err := <-httpErr:
		if err != nil {
			log.Error().Err(err).Msg("http server")
		}
	default:
	}
	log.Info().Msg("stager stopped")
	return nil
}

// beat announces the instance in the STAGERS bucket until ctx ends, then
// removes the key so the instance disappears at once rather than after TTL.
func (s *service) beat(ctx context.Context, kv jetstream.KeyValue) {
	key := heartbeat.Key(s.cfg.Site, dest.SafeInstance(s.cfg.Instance))
	put := func() {
		s.mu.Lock()
		busy := s.busy
		s.mu.Unlock()
		var free int64
		for _, d := range s.dests {
			if f, err := d.Free(); err == nil {
				free += f
			}
		}
		b := heartbeat.Beat{
			Site: s.cfg.Site, Instance: dest.SafeInstance(s.cfg.Instance), Version: s.cfg.Version,
			Workers: s.cfg.Workers, Busy: busy, FreeBytes: free, StartedAt: s.started, At: time.Now().UTC(),
		}
		raw, _ := json.Marshal(b)
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := kv.Put(pctx, key, raw); err != nil {
			s.log.Warn().Err(err).Msg("heartbeat")
		}
	}
	put()
	t := time.NewTicker(heartbeat.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_ = kv.Delete(dctx, key)
			cancel()
			return
		case <-t.C:
			put()
		}
	}
}

// locationPerms resolves a processing location's modes and group. The
// group is looked up once, here: an unknown group is a configuration error
// at start-up, not a failure of every package later.
func locationPerms(l topology.Location) (dest.Perms, error) {
	p := dest.Perms{DirMode: l.DirMode.Mode(), FileMode: l.FileMode.Mode(), Group: l.Group}
	if l.Group == "" {
		return p, nil
	}
	gid, err := lookupGroup(l.Group)
	if err != nil {
		return p, fmt.Errorf("processing location %s: group %q: %w", l.Name, l.Group, err)
	}
	p.ChangeGroup, p.GID = true, gid
	return p, nil
}

// lookupGroup takes a group name, or a numeric gid (which must exist too:
// a typo'd number would otherwise hand packages to a stranger's group).
func lookupGroup(name string) (int, error) {
	g, err := user.LookupGroup(name)
	if err != nil {
		if _, nerr := strconv.Atoi(name); nerr == nil {
			g, err = user.LookupGroupId(name)
		}
	}
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(g.Gid)
}
