package planner

import (
	"context"
	"encoding/json"
	"time"

	"github.com/ccatobs/ccat-staging/services/planner/outcomes"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/fault"
	"github.com/ccatobs/ccat-staging/shared/logx"
	"github.com/nats-io/nats.go/jetstream"
)

// outcomePackage is the order key of an outcome: the package it is about.
// Outcomes of one package are recorded in the order they were published (a
// request that failed for good, then its re-issue done); those of
// different packages at once. A message that does not parse gets "", one
// lane among the others, and is judged by handleOutcome.
func outcomePackage(m jetstream.Msg) string {
	var v struct {
		Data struct {
			PackageID string `json:"package_id"`
		} `json:"data"`
	}
	_ = json.Unmarshal(m.Data(), &v)
	return v.Data.PackageID
}

// handleOutcome records a final outcome where the reconciler looks
// (PLANNER_OUTCOMES) and frees a package at a location once the request
// staging it there has ended (done, or failed for good), so the next job
// that needs it gets a request of its own. A package that failed for good
// also drops its job's reference to the copy (the job will never use it).
// A staging.stalled does not: it is the reconciler giving up for lack of
// news, not a fact about the copy, which may well be staged (a lagging
// ledger); the job's reference goes with its release or cancellation.
// Outcomes of other requests change nothing.
func (s *service) handleOutcome(ctx context.Context, m jetstream.Msg) {
	log := s.log.With().Str("consumer", "planner-outcomes").Logger()
	var o event.Outcome
	final, failed, stalled := false, false, false
	kind := ""
	env, err := event.Decode(m.Data())
	if err == nil {
		log = log.With().Str(logx.EventID, env.ID).Str(logx.EventType, env.Type).Logger()
		switch env.Type {
		case event.TypeDone:
			var d event.Done
			d, err = event.DataAs[event.Done](env)
			o, final, kind = d.Outcome, true, outcomes.Done
		case event.TypeFailed:
			var f event.Failed
			f, err = event.DataAs[event.Failed](env)
			o, final = f.Outcome, f.Permanent || f.Reason == event.ReasonRetriesExhausted
			failed = final
			if final {
				kind = outcomes.Failed
			}
		case event.TypeStalled:
			// A leader given up frees its package: the next job gets a
			// request of its own.
			var st event.Stalled
			st, err = event.DataAs[event.Stalled](env)
			o = event.Outcome{JobID: st.JobID, PackageID: st.PackageID, Site: st.Site, Location: st.Location, RequestID: st.RequestID}
			final, stalled = true, true
		}
	}
	if err != nil {
		// Not ours to judge: the ledger records bad outcomes; the planner
		// only must not redeliver them forever.
		bus.Settle(ctx, m, fault.Permanent(reasonOf(err), err), log)
		return
	}
	if kind != "" && o.JobID != "" && s.outcomes != nil {
		// Recorded before the request is freed and the message acked, so a
		// reconciler that sees the planner-outcomes durable caught up sees
		// the outcome too.
		at := env.Time
		if at.IsZero() {
			at = time.Now().UTC()
		}
		err := s.outcomes.Put(ctx, o.PackageID, outcomes.Record{Kind: kind, JobID: o.JobID, RequestID: o.RequestID, Location: o.Location, EventID: env.ID, At: at})
		if err != nil {
			bus.Settle(ctx, m, fault.Transient(event.ReasonIOError, err), log)
			return
		}
	}
	if stalled {
		log.Debug().Str(logx.JobID, o.JobID).Str(logx.PackageID, o.PackageID).Str(logx.Location, o.Location).Msg("stalled package keeps its reference until the job is released or cancelled")
	}
	if failed && o.JobID != "" && o.Site != "" && o.Location != "" {
		dropped, err := s.refs.Drop(ctx, RefsKey(o.Site, o.Location, o.PackageID), o.JobID, time.Now())
		if err != nil {
			bus.Settle(ctx, m, err, log)
			return
		}
		if dropped {
			log.Debug().Str(logx.JobID, o.JobID).Str(logx.PackageID, o.PackageID).Str(logx.Location, o.Location).Msg("failed package's reference dropped")
		}
	}
	if final && o.RequestID != "" && s.inflight != nil {
		freed, err := s.inflight.Release(ctx, o.Location, o.PackageID, o.RequestID)
		if err != nil {
			bus.Settle(ctx, m, err, log)
			return
		}
		if freed {
			log.Debug().Str(logx.JobID, o.JobID).Str(logx.PackageID, o.PackageID).Str(logx.Location, o.Location).Msg("package free for the next job")
		}
	}
	bus.Settle(ctx, m, nil, log)
}
