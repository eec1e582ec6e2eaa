package stager

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ccatobs/ccat-staging/services/stager/dest"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/logx"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Headers of a dead letter, beside the original Nats-Msg-Id.
const (
	HeaderOriginalSubject = "Ccat-Original-Subject"
	HeaderDeliveries      = "Ccat-Deliveries"
	HeaderReason          = "Ccat-Reason"
)

// maxDeliveries is the part of a JetStream MAX_DELIVERIES advisory we use.
type maxDeliveries struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries int    `json:"deliveries"`
}

// deadLetter handles one of the site's MAX_DELIVERIES advisories, read
// from the advisory stream by a runner. A request that ran out of
// deliveries stays in the work queue, invisible and never redelivered;
// this ends it as a permanent retries_exhausted failure, copies it to the
// dead-letter stream and deletes it from the work queue. Every instance of
// a site shares the durable, so each advisory is handled once, and a
// stager that was down catches up.
func (s *service) deadLetter(ctx context.Context, m jetstream.Msg) {
	var adv maxDeliveries
	if err := json.Unmarshal(m.Data(), &adv); err != nil || adv.StreamSeq == 0 {
		s.log.Error().Err(err).Str("subject", m.Subject()).Msg("unreadable advisory; terminating it")
		_ = m.TermWithReason("unreadable advisory")
		return
	}
	log := s.log.With().Uint64(logx.StreamSeq, adv.StreamSeq).Str("consumer", adv.Consumer).Logger()
	if err := s.moveToDead(ctx, adv); err != nil {
		log.Error().Err(err).Msg("dead-lettering; will retry")
		_ = m.NakWithDelay(5 * time.Second)
		return
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := m.DoubleAck(actx); err != nil {
		log.Warn().Err(err).Msg("ack advisory")
	}
}

func (s *service) moveToDead(ctx context.Context, adv maxDeliveries) error {
	stream, err := s.js.Stream(ctx, subject.RequestsStream)
	if err != nil {
		return fmt.Errorf("work queue: %w", err)
	}
	raw, err := stream.GetMsg(ctx, adv.StreamSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil // already moved by an earlier delivery of this advisory
	}
	if err != nil {
		return fmt.Errorf("get request %d: %w", adv.StreamSeq, err)
	}
	reqID := raw.Header.Get(jetstream.MsgIDHeader)
	env, err := event.Decode(raw.Data)
	if err == nil {
		reqID = env.ID
		if req, err := event.DataAs[event.Request](env); err == nil {
			f := event.Failed{
				Outcome: event.Outcome{JobID: req.JobID, PackageID: req.PackageID, Site: s.cfg.Site, Location: req.Destination.Location,
					Attempt: max(adv.Deliveries, 1), RequestID: env.ID, Instance: dest.SafeInstance(s.cfg.Instance)},
				Reason:    event.ReasonRetriesExhausted,
				Message:   fmt.Sprintf("gave up after %d deliveries; the request is in %s", adv.Deliveries, subject.DeadStream),
				Permanent: true,
			}
			if err := s.publish(ctx, subject.Failed, "failed:"+env.ID+":exhausted", req.PackageID, f); err != nil {
				return err
			}
			s.log.Error().Str(logx.JobID, req.JobID).Str(logx.PackageID, req.PackageID).Int(logx.Attempt, adv.Deliveries).
				Msg("retries exhausted; request moved to the dead-letter stream")
		}
	}
	if reqID == "" {
		reqID = "seq:" + strconv.FormatUint(adv.StreamSeq, 10)
	}
	dm := nats.NewMsg(subject.Dead(s.cfg.Site))
	dm.Data = raw.Data
	dm.Header.Set(jetstream.MsgIDHeader, "dead:"+reqID)
	dm.Header.Set(HeaderOriginalSubject, raw.Subject)
	dm.Header.Set(HeaderDeliveries, strconv.Itoa(adv.Deliveries))
	dm.Header.Set(HeaderReason, event.ReasonRetriesExhausted)
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, err := s.js.PublishMsg(pctx, dm); err != nil {
		return fmt.Errorf("publish dead letter: %w", err)
	}
	if err := stream.DeleteMsg(pctx, adv.StreamSeq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("delete request %d from the work queue: %w", adv.StreamSeq, err)
	}
	s.m.dead.Inc()
	return nil
}
