package planner

import (
	"context"
	"time"

	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/fault"
	"github.com/ccatobs/ccat-staging/shared/logx"
	"github.com/nats-io/nats.go/jetstream"
)

// handleOutcome frees a package at a location once the request staging it
// there has ended (done, or failed for good), so the next job that needs it
// gets a request of its own; a package that failed for good also drops its
// job's reference to the copy (the job will never use it). Outcomes of other
// requests change nothing.
func (s *service) handleOutcome(ctx context.Context, m jetstream.Msg) {
	log := s.log.With().Str("consumer", "planner-outcomes").Logger()
	var o event.Outcome
	final, failed := false, false
	env, err := event.Decode(m.Data())
	if err == nil {
		log = log.With().Str(logx.EventID, env.ID).Str(logx.EventType, env.Type).Logger()
		switch env.Type {
		case event.TypeDone:
			var d event.Done
			d, err = event.DataAs[event.Done](env)
			o, final = d.Outcome, true
		case event.TypeFailed:
			var f event.Failed
			f, err = event.DataAs[event.Failed](env)
			o, final = f.Outcome, f.Permanent || f.Reason == event.ReasonRetriesExhausted
			failed = final
		case event.TypeStalled:
			// A leader given up frees its package: the next job gets a
			// request of its own.
			var st event.Stalled
			st, err = event.DataAs[event.Stalled](env)
			o = event.Outcome{JobID: st.JobID, PackageID: st.PackageID, Site: st.Site, Location: st.Location, RequestID: st.RequestID}
			final, failed = true, true
		}
	}
	if err != nil {
		// Not ours to judge: the ledger records bad outcomes; the planner
		// only must not redeliver them forever.
		bus.Settle(ctx, m, fault.Permanent(reasonOf(err), err), log)
		return
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
