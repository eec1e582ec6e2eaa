// Package provision sets up, once and with admin rights, everything the
// services of a clustered deployment share: the streams, the dead-letter
// streams, the MANIFESTS object store (through bus.Provision), the STAGERS
// bucket and, for every site of the topology, the
// stagers' work and advisory consumers. Under the least-privilege
// permissions of deploy/nats, stagers and the ledger may not create or
// change streams, so this step (or the planner, which may) runs first.
// Everything is idempotent: run it again after changing the topology or
// STREAM_REPLICAS.
package provision

import (
	"context"
	"fmt"
	"time"

	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/config"
	"github.com/ccatobs/ccat-staging/shared/heartbeat"
	"github.com/ccatobs/ccat-staging/shared/lease"
	"github.com/ccatobs/ccat-staging/shared/logx"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/ccatobs/ccat-staging/shared/topology"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Config of a provisioning run.
type Config struct {
	NATSURL  string           // with admin credentials
	Topology string           // the sites whose consumers to create
	Streams  bus.StreamConfig // STREAM_REPLICAS, EVENTS_MAX_AGE
	Timeout  time.Duration    // the whole run
}

// ConfigFromEnv reads NATS_URL, TOPOLOGY_FILE, STREAM_REPLICAS,
// EVENTS_MAX_AGE and PROVISION_TIMEOUT.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	env := config.NewEnv(getenv)
	c := Config{
		NATSURL:  env.String(config.NATSURL, "nats://127.0.0.1:4222"),
		Topology: env.String(config.Topology, ""),
		Streams: bus.StreamConfig{
			Replicas:     env.Int(config.StreamReplicas, 1),
			EventsMaxAge: env.Duration(config.EventsMaxAge, 0),
		},
		Timeout: env.Duration("PROVISION_TIMEOUT", time.Minute),
	}
	if err := env.Err(); err != nil {
		return Config{}, err
	}
	if c.Topology == "" {
		return Config{}, fmt.Errorf("%s is required: the sites whose consumers to create", config.Topology)
	}
	if c.Streams.Replicas != 1 && c.Streams.Replicas != 3 {
		return Config{}, fmt.Errorf("%s=%d: use 1 (one server) or 3 (a cluster)", config.StreamReplicas, c.Streams.Replicas)
	}
	return c, nil
}

// Run connects, provisions and returns.
func Run(ctx context.Context, cfg Config, log zerolog.Logger) error {
	topo, err := topology.Load(cfg.Topology)
	if err != nil {
		return fmt.Errorf("topology: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	nc, js, err := bus.Connect(ctx, cfg.NATSURL, "ccat-provision", log)
	if err != nil {
		return err
	}
	defer nc.Close()
	return Provision(ctx, js, topo.SiteNames(), cfg.Streams, log)
}

// Provision creates or updates the shared streams and buckets and the
// consumers of every site in sites.
func Provision(ctx context.Context, js jetstream.JetStream, sites []string, sc bus.StreamConfig, log zerolog.Logger) error {
	if err := bus.Provision(ctx, js, sc); err != nil {
		return err
	}
	if err := bus.ProvisionDeadLetter(ctx, js, sc); err != nil {
		return err
	}
	if err := bus.ProvisionCleanup(ctx, js, sc); err != nil {
		return err
	}
	if _, err := heartbeat.Bucket(ctx, js, sc.Replicas); err != nil {
		return err
	}
	// STAGER_LEASES: stagers may use it but not create it.
	if _, err := lease.Open(ctx, js, lease.Options{Replicas: sc.Replicas}); err != nil {
		return err
	}
	for _, site := range sites {
		if _, err := bus.ProvisionStager(ctx, js, site, bus.StagerConsumerConfig{}); err != nil {
			return err
		}
		if _, err := js.CreateOrUpdateConsumer(ctx, subject.AdvisoryStream, bus.StagerAdvisoryConsumer(site)); err != nil {
			return fmt.Errorf("advisory consumer of %s: %w", site, err)
		}
		if _, err := js.CreateOrUpdateConsumer(ctx, subject.CleanupStream, bus.StagerCleanupConsumer(site)); err != nil {
			return fmt.Errorf("cleanup consumer of %s: %w", site, err)
		}
		log.Info().Str(logx.Site, site).Msg("site consumers provisioned")
	}
	log.Info().Int("replicas", max(sc.Replicas, 1)).Int("sites", len(sites)).Msg("provisioned")
	return nil
}
