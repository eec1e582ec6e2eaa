package planner

import (
	"context"
	"fmt"
	"time"

	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/fault"
	"github.com/ccatobs/ccat-staging/shared/logx"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
)

// openCancel creates the CANCELLED bucket and the planner-cancel durable.
// The planner cannot reach into the work queue cheaply (a request is only
// found by walking it), so a cancel is recorded where every stager looks
// before starting a request: the stager withdraws it (failed/cancelled,
// permanent) without reading the archive. Entries expire JobRetention after
// the cancel (30 days by default): far longer than a request waits in a
// queue, and the bucket stays at a month of cancellations.
func (s *service) openCancel(ctx context.Context) (bus.Durable, error) {
	kv, err := s.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      subject.CancelledBucket,
		Description: "job id -> cancel event id (planner writes, stagers withdraw the job's requests)",
		History:     1,
		TTL:         s.cfg.JobRetention,
		Storage:     jetstream.FileStorage,
		Replicas:    max(s.cfg.Streams.Replicas, 1),
	})
	if err != nil {
		return bus.Durable{}, fmt.Errorf("kv bucket %s: %w", subject.CancelledBucket, err)
	}
	s.cancelled = kv
	cc := jetstream.ConsumerConfig{
		Durable:       subject.PlannerCancel,
		Description:   "planner: staging.cancel into the CANCELLED bucket",
		FilterSubject: subject.Cancel,
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait:       catalogAckWait,
	}
	if _, err := s.js.CreateOrUpdateConsumer(ctx, subject.EventsStream, cc); err != nil {
		return bus.Durable{}, fmt.Errorf("provision consumer %s: %w", subject.PlannerCancel, err)
	}
	return bus.DurableOn(s.cfg.Streams, subject.EventsStream, cc), nil
}

// handleCancel records a cancelled job and, with dedup on, frees the
// packages its requests hold, so that a later job stages them with a
// request of its own instead of following one the stager will withdraw.
// The ledger records the cancel itself; the planner publishes nothing.
func (s *service) handleCancel(ctx context.Context, m jetstream.Msg) {
	log := s.log.With().Str("consumer", subject.PlannerCancel).Logger()
	env, err := event.Decode(m.Data())
	var c event.Cancel
	if err == nil {
		log = log.With().Str(logx.EventID, env.ID).Logger()
		c, err = event.DataAs[event.Cancel](env)
	}
	if err != nil {
		// The ledger keeps bad events as poison; the planner must only not
		// redeliver them forever.
		s.m.cancels.WithLabelValues("invalid").Inc()
		bus.Settle(ctx, m, fault.Permanent(reasonOf(err), err), log)
		return
	}
	log = log.With().Str(logx.JobID, c.JobID).Logger()
	if _, err := s.cancelled.Put(ctx, c.JobID, []byte(env.ID)); err != nil {
		s.m.cancels.WithLabelValues("retried").Inc()
		bus.Settle(ctx, m, fault.Transient(event.ReasonIOError, fmt.Errorf("record cancel: %w", err)), log)
		return
	}
	if s.inflight != nil {
		n, err := s.inflight.ReleaseJob(ctx, c.JobID)
		if err != nil {
			s.m.cancels.WithLabelValues("retried").Inc()
			bus.Settle(ctx, m, fault.Transient(event.ReasonIOError, err), log)
			return
		}
		if n > 0 {
			log.Info().Int("freed", n).Msg("cancelled job's packages freed for other jobs")
		}
	}
	// A cancelled job needs none of its copies: its references go as on a
	// release, so the copies age towards their retention.
	if n, err := s.refs.DropJob(ctx, c.JobID, time.Now()); err != nil {
		s.m.cancels.WithLabelValues("retried").Inc()
		bus.Settle(ctx, m, fault.Transient(event.ReasonIOError, err), log)
		return
	} else if n > 0 {
		log.Info().Int("references", n).Msg("cancelled job's references to staged copies dropped")
	}
	s.touchJob(ctx, c.JobID, log)
	s.m.cancels.WithLabelValues("recorded").Inc()
	log.Info().Str("requested_by", c.RequestedBy).Str("reason", c.Reason).Msg("job cancelled: stagers withdraw its requests")
	bus.Settle(ctx, m, nil, log)
}
