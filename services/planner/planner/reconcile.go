package planner

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/ccatobs/ccat-staging/services/planner/outcomes"
	"github.com/ccatobs/ccat-staging/services/planner/reissue"
	"github.com/ccatobs/ccat-staging/services/planner/route"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
	"github.com/ccatobs/ccat-staging/shared/logx"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
)

// The reconciler finds packages that should be moving but are not, because
// JetStream is the transport and not the record: a request deleted from the
// work queue by hand, or taken by a stager that died without the message
// coming back, leaves the package scheduled (or in progress) for ever.
//
// It reads the ledger's API rather than its database: the API is the
// ledger's contract, works across hosts and needs no credentials for
// Postgres in the planner. Each round it lists the jobs still scheduled or
// in progress, and for each package quiet for longer than StallAfter
// (no plan, start or progress newer than that, nor a re-issue) it looks for
// the package's current request in STAGING_REQUESTS. A request still in the
// work queue is waiting or being worked on (a stager acknowledges only
// after the outcome), so it is left alone. A request that is gone is
// re-issued as the next generation, request:<job>:<package>:<gen+1>,
// routed afresh against the current topology and catalog; after
// MaxReissues re-issues the package is failed with reason stalled.
//
// Several planners may run it at once: the next generation is claimed by
// compare-and-set in PLANNER_REISSUES and only the winner publishes, and
// the request id is deterministic, so even a lost race inside JetStream's
// duplicate window publishes nothing twice.

// reconcile runs rounds every interval until ctx ends.
func (s *service) reconcile(ctx context.Context) {
	t := time.NewTicker(s.cfg.ReconcileInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := s.reconcileRound(ctx)
		behind, isBehind := errors.AsType[*behindError](err)
		switch {
		case ctx.Err() != nil:
			return
		case isBehind:
			// Not a failure of the planner: the record it would judge by is
			// not current, so it judges nothing (alert: CcatStagingReconcilerRecordBehind).
			s.m.reconcileRounds.WithLabelValues("behind").Inc()
			s.m.ledgerBehind.WithLabelValues(behind.durable).Set(1)
			s.m.ledgerLag.WithLabelValues(behind.durable).Set(float64(behind.lag()))
			s.log.Warn().Err(behind.cause).Str("durable", behind.durable).Uint64("ack_floor", behind.floor).Uint64("stream_head", behind.head).
				Uint64("lag", behind.lag()).Msg("reconciler does nothing: the record it judges by is behind the stream")
		case err != nil:
			s.m.reconcileRounds.WithLabelValues("failed").Inc()
			s.log.Warn().Err(err).Msg("reconcile round failed")
		default:
			s.m.reconcileRounds.WithLabelValues("ok").Inc()
			if n > 0 {
				s.log.Info().Int("acted_on", n).Msg("reconcile round")
			}
		}
	}
}

// stale is a quiet package and what of its job a re-issue needs; the rest
// of the job (its other packages) is not kept.
type stale struct {
	jobID, priority string
	jobDest         ledgerapi.Place
	pkg             ledgerapi.Package
}

// maxCandidates bounds the quiet packages one round holds and acts on, so
// a ledger showing a million stuck packages costs bounded memory; the rest
// are found by the next rounds.
const maxCandidates = 10_000

// reconcileRound runs one round and returns how many packages it re-issued
// or gave up on. It returns a *behindError, having done nothing, when the
// ledger or the planner's outcome record has not applied every event
// published before the round.
func (s *service) reconcileRound(ctx context.Context) (int, error) {
	events, err := s.js.Stream(ctx, subject.EventsStream)
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", subject.EventsStream, err)
	}
	head := events.CachedInfo().State.LastSeq
	if err := s.waitCaughtUp(ctx, events, subject.LedgerEvents, head, s.cfg.LedgerCatchUp); err != nil {
		return 0, err
	}
	s.m.ledgerBehind.WithLabelValues(subject.LedgerEvents).Set(0)
	s.m.ledgerLag.WithLabelValues(subject.LedgerEvents).Set(0)
	now := time.Now()
	var cands []stale
collect:
	for _, status := range []string{event.StatusScheduled, event.StatusInProgress} {
		cursor := ""
		for {
			q := url.Values{"status": {status}} // the ledger's default page size
			if cursor != "" {
				q.Set("cursor", cursor)
			}
			page, err := s.ledger.Jobs(ctx, q)
			if err != nil {
				return 0, fmt.Errorf("list %s jobs: %w", status, err)
			}
			for _, j := range page.Jobs {
				job, err := s.ledger.Job(ctx, j.JobID)
				if errors.Is(err, ledgerapi.ErrNotFound) {
					continue
				}
				if err != nil {
					return 0, fmt.Errorf("job %s: %w", j.JobID, err)
				}
				for _, p := range job.Packages {
					if (p.Status == event.StatusScheduled || p.Status == event.StatusInProgress) && now.Sub(lastActivity(p)) > s.cfg.StallAfter {
						cands = append(cands, stale{jobID: job.JobID, priority: job.Priority, jobDest: job.Destination, pkg: p})
						if len(cands) >= maxCandidates {
							break collect
						}
					}
				}
			}
			if page.NextCursor == "" || page.NextCursor == cursor {
				break
			}
			cursor = page.NextCursor
		}
	}
	if len(cands) == 0 {
		return 0, nil
	}
	// Packages whose outcome the planner recorded are settled, whatever the
	// ledger shows: no queue walk for them.
	cands, err = s.unsettled(ctx, cands, now)
	if err != nil || len(cands) == 0 {
		return 0, err
	}
	queued, err := s.queuedRequests(ctx, cands)
	if err != nil {
		return 0, err
	}
	// A request that left the queue before the walk had its outcome (if
	// any) published before it was acknowledged, so before this head: once
	// planner-outcomes has applied it, the record below is complete.
	events, err = s.js.Stream(ctx, subject.EventsStream)
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", subject.EventsStream, err)
	}
	if err := s.waitCaughtUp(ctx, events, subject.PlannerOutcomes, events.CachedInfo().State.LastSeq, s.cfg.LedgerCatchUp); err != nil {
		return 0, err
	}
	s.m.ledgerBehind.WithLabelValues(subject.PlannerOutcomes).Set(0)
	s.m.ledgerLag.WithLabelValues(subject.PlannerOutcomes).Set(0)
	acted := 0
	for _, c := range cands {
		if queued[c.jobID+":"+c.pkg.PackageID] {
			continue
		}
		ok, err := s.reconcilePackage(ctx, c, now)
		if err != nil {
			return acted, err
		}
		if ok {
			acted++
		}
	}
	return acted, nil
}

// destination is where the package is staged: its own, or its job's. The
// wire format has no null destination (openapi.json): an empty site is an
// absent one, and ok is false when neither names a site.
func (c stale) destination() (dest ledgerapi.Place, ok bool) {
	if c.pkg.Destination.Site != "" {
		return c.pkg.Destination, true
	}
	return c.jobDest, c.jobDest.Site != ""
}

// outcomeOf returns what the planner recorded of the candidate's outcome:
// own means the job's own request ended (settled); otherwise a record
// only proves the copy is staged at its destination (see outcomes.Of).
func (s *service) outcomeOf(ctx context.Context, c stale, now time.Time) (*outcomes.Record, bool, error) {
	loc := ""
	if d, ok := c.destination(); ok {
		loc = d.Location
	}
	// Without a plan time no copy record can be proven to postdate the
	// job's reference: only the job's own outcome counts.
	planned := now
	if c.pkg.PlannedAt != nil {
		planned = *c.pkg.PlannedAt
	}
	return s.outcomes.Of(ctx, c.jobID, c.pkg.PackageID, loc, planned)
}

// unsettled drops the candidates whose own outcome is recorded.
func (s *service) unsettled(ctx context.Context, cands []stale, now time.Time) ([]stale, error) {
	out := cands[:0]
	for _, c := range cands {
		r, own, err := s.outcomeOf(ctx, c, now)
		if err != nil {
			return nil, err
		}
		if own {
			s.m.reconcileSkip.WithLabelValues("outcome_recorded").Inc()
			s.log.Debug().Str(logx.JobID, c.jobID).Str(logx.PackageID, c.pkg.PackageID).Str("outcome", r.Kind).Str(logx.EventID, r.EventID).
				Msg("quiet package has an outcome the ledger does not show yet: left alone")
			continue
		}
		out = append(out, c)
	}
	return out, nil
}

// lastActivity is the newest sign of life of a package in the ledger.
func lastActivity(p ledgerapi.Package) time.Time {
	var t time.Time
	for _, x := range []*time.Time{p.PlannedAt, p.StartedAt} {
		if x != nil && x.After(t) {
			t = *x
		}
	}
	if p.Progress.UpdatedAt != nil && p.Progress.UpdatedAt.After(t) {
		t = *p.Progress.UpdatedAt
	}
	return t
}

// queuedRequests returns which candidates ("<job>:<package>") have a
// request in the work queue, whatever its generation. Memory is bounded by
// the candidates, not the queue: only their keys are kept. It reads only
// the candidates' sites, skips a site whose work consumers hold nothing
// (consumer info: pending plus unacknowledged is what the queue holds for
// them), walks a site with next-by-subject reads so acknowledged gaps cost
// nothing, reads in batches of a thousand (queue.go), and stops as soon as
// every candidate of the site is found.
func (s *service) queuedRequests(ctx context.Context, cands []stale) (map[string]bool, error) {
	st, err := s.js.Stream(ctx, subject.RequestsStream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", subject.RequestsStream, err)
	}
	want := map[string]map[string]bool{} // site -> candidate keys
	for _, c := range cands {
		d, ok := c.destination()
		if !ok {
			continue // reconcilePackage reports it
		}
		if want[d.Site] == nil {
			want[d.Site] = map[string]bool{}
		}
		want[d.Site][c.jobID+":"+c.pkg.PackageID] = true
	}
	out := map[string]bool{}
	for site, keys := range want {
		held, err := s.siteHolds(ctx, site)
		if err != nil {
			return nil, err
		}
		if !held {
			continue
		}
		missing := len(keys)
		see := func(_ uint64, msgID string) bool {
			s.m.queueReads.Inc()
			if job, pkg, ok := parseRequestID(msgID); ok {
				if k := job + ":" + pkg; keys[k] && !out[k] {
					out[k] = true
					missing--
				}
			}
			return missing > 0
		}
		first := st.CachedInfo().State.FirstSeq
		err = walkQueue(ctx, s.nc, subject.RequestsStream, subject.SiteRequests(site), first, see)
		if errors.Is(err, errNoDirect) {
			// A server or stream without direct gets: one read per message.
			err = s.walkQueueByGet(ctx, st, subject.SiteRequests(site), first, see)
		}
		if err != nil {
			return nil, fmt.Errorf("scan %s: %w", subject.RequestsStream, err)
		}
	}
	return out, nil
}

// walkQueueByGet is walkQueue one next-by-subject read at a time.
func (s *service) walkQueueByGet(ctx context.Context, st jetstream.Stream, subj string, from uint64, f func(uint64, string) bool) error {
	for seq := from; ; {
		m, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subj))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if !f(m.Sequence, m.Header.Get(jetstream.MsgIDHeader)) {
			return nil
		}
		seq = m.Sequence + 1
	}
}

// siteHolds reports whether any work consumer of the site holds a message
// (waiting or unacknowledged). A consumer that does not exist holds none.
func (s *service) siteHolds(ctx context.Context, site string) (bool, error) {
	for _, p := range subject.Priorities {
		cons, err := s.js.Consumer(ctx, subject.RequestsStream, subject.StagerDurable(site, p))
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("consumer %s: %w", subject.StagerDurable(site, p), err)
		}
		info, err := cons.Info(ctx)
		if err != nil {
			return false, fmt.Errorf("consumer %s: %w", subject.StagerDurable(site, p), err)
		}
		if info.NumPending > 0 || info.NumAckPending > 0 {
			return true, nil
		}
	}
	return false, nil
}

// reconcilePackage re-issues or gives up on one quiet package; it reports
// whether it did either.
func (s *service) reconcilePackage(ctx context.Context, c stale, now time.Time) (bool, error) {
	// Checked again now that planner-outcomes has caught up: an outcome
	// that arrived during the round settles the package.
	r, own, err := s.outcomeOf(ctx, c, now)
	if err != nil {
		return false, err
	}
	if own {
		s.m.reconcileSkip.WithLabelValues("outcome_recorded").Inc()
		return false, nil
	}
	copyStaged := r != nil
	cur, rev, err := s.reissues.Current(ctx, c.jobID, c.pkg.PackageID)
	if err != nil {
		return false, err
	}
	id := RequestID(c.jobID, c.pkg.PackageID, cur.Generation)
	if cur.GaveUp || (cur.Generation > 1 && now.Sub(cur.At) <= s.cfg.StallAfter) {
		return false, nil
	}
	log := s.log.With().Str(logx.JobID, c.jobID).Str(logx.PackageID, c.pkg.PackageID).Int("generation", cur.Generation).Logger()
	why := fmt.Sprintf("%s with no activity since %s and request %s not in the work queue",
		c.pkg.Status, lastActivity(c.pkg).UTC().Format(time.RFC3339), id)
	dest, ok := c.destination()
	if !ok {
		return false, fmt.Errorf("job %s package %s: ledger gives no destination", c.jobID, c.pkg.PackageID)
	}
	if cur.Generation > s.cfg.MaxReissues && copyStaged {
		// Never given up while its copy is known staged: one more
		// re-issue is answered already_present and settles it.
		s.m.reconcileSkip.WithLabelValues("copy_staged").Inc()
		log.Info().Str(logx.EventID, r.EventID).Msg("package past its re-issues has a staged copy: re-issued, not given up")
	} else if cur.Generation > s.cfg.MaxReissues {
		return true, s.giveUp(ctx, c, dest, id, rev, cur, event.ReasonStalled,
			fmt.Sprintf("%s; gave up after %d re-issues", why, cur.Generation-1))
	}
	next := reissue.State{Generation: cur.Generation + 1, Why: why, At: now.UTC()}
	req, err := s.rebuildRequest(ctx, c, dest, next.Generation)
	if r, ok := errors.AsType[*route.Refusal](err); ok {
		return true, s.giveUp(ctx, c, dest, id, rev, cur, r.Reason, r.Message)
	}
	if err != nil {
		return false, err
	}
	if err := s.reissues.Claim(ctx, c.jobID, c.pkg.PackageID, rev, next); errors.Is(err, reissue.ErrLost) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	newID := RequestID(c.jobID, c.pkg.PackageID, next.Generation)
	m, err := s.requestMsg(subject.Request(dest.Site, req.Priority), newID, req)
	if err != nil {
		return false, err
	}
	if _, err := s.js.PublishMsg(ctx, m); err != nil {
		// The claim stands: the next round finds this generation missing
		// from the queue and publishes the one after.
		return false, fmt.Errorf("publish %s: %w", newID, err)
	}
	s.m.reissued.Inc()
	log.Warn().Str("request_id", newID).Str("why", why).Msg("request re-issued")
	return true, nil
}

// rebuildRequest routes the package again; a *route.Refusal means it can
// no longer be staged (destination gone, no usable copy).
func (s *service) rebuildRequest(ctx context.Context, c stale, dest ledgerapi.Place, gen int) (event.Request, error) {
	topo := s.topo.Load()
	loc, err := route.Destination(topo, event.Destination{Location: dest.Location})
	if err != nil {
		return event.Request{}, err
	}
	copies, _, err := s.catalog.Get(ctx, c.pkg.PackageID)
	if err != nil {
		return event.Request{}, err
	}
	cp, at, ok := route.Source(topo, loc, copies)
	if !ok {
		return event.Request{}, &route.Refusal{Reason: event.ReasonNoSource, Message: route.NoSourceMessage(topo, copies)}
	}
	prio := c.priority
	if prio == "" {
		prio = event.PriorityNormal
	}
	return event.Request{
		JobID: c.jobID, PackageID: c.pkg.PackageID, Generation: gen, Priority: prio,
		Source:      event.Source{Location: at.Name, Site: at.Site, Storage: at.Storage, Key: cp.Key},
		Destination: event.Target{Site: loc.Site, Location: loc.Name},
		SizeBytes:   cp.SizeBytes, Checksum: cp.Checksum, Format: cp.Format, Files: cp.Files, Manifest: cp.Manifest,
	}, nil
}

// giveUp fails the package for good at its destination with a
// staging.stalled (only stagers may publish outcomes), then remembers that
// it did so the next rounds leave the package alone even while the ledger
// has not caught up. Two planners giving up at once publish the same event
// id, which JetStream and the ledger drop.
func (s *service) giveUp(ctx context.Context, c stale, dest ledgerapi.Place, requestID string, rev uint64, cur reissue.State, reason, msg string) error {
	st := event.Stalled{JobID: c.jobID, PackageID: c.pkg.PackageID, Site: dest.Site, Location: dest.Location,
		RequestID: requestID, Reason: reason, Message: msg, Reissues: max(cur.Generation-1, 0)}
	env, err := event.New(Source, "stalled:"+requestID+":"+reason, c.pkg.PackageID, st)
	if err != nil {
		return err
	}
	if _, err := bus.Publish(ctx, s.js, subject.Stalled, env); err != nil {
		return err
	}
	cur.GaveUp, cur.Why, cur.At = true, reason+": "+msg, time.Now().UTC()
	if err := s.reissues.Claim(ctx, c.jobID, c.pkg.PackageID, rev, cur); errors.Is(err, reissue.ErrLost) {
		return nil // another planner gave up on it at the same time
	} else if err != nil {
		return err
	}
	s.m.gaveUp.WithLabelValues(reason).Inc()
	s.log.Error().Str(logx.JobID, c.jobID).Str(logx.PackageID, c.pkg.PackageID).Str("reason", reason).Str("detail", msg).Msg("package given up")
	return nil
}

// parseRequestID splits request:<job>:<package>:<generation>; ids contain
// no ':', so the split is unambiguous.
func parseRequestID(id string) (job, pkg string, ok bool) {
	parts := strings.Split(id, ":")
	if len(parts) != 4 || parts[0] != "request" {
		return "", "", false
	}
	return parts[1], parts[2], true
}
