package planner

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

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
		switch {
		case ctx.Err() != nil:
			return
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

type stale struct {
	job ledgerapi.Job
	pkg ledgerapi.Package
}

// reconcileRound runs one round and returns how many packages it re-issued
// or gave up on.
func (s *service) reconcileRound(ctx context.Context) (int, error) {
	now := time.Now()
	var cands []stale
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
						cands = append(cands, stale{job, p})
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
	queued, err := s.queuedRequests(ctx)
	if err != nil {
		return 0, err
	}
	acted := 0
	for _, c := range cands {
		ok, err := s.reconcilePackage(ctx, c, queued, now)
		if err != nil {
			return acted, err
		}
		if ok {
			acted++
		}
	}
	return acted, nil
}

// lastActivity is the newest sign of life of a package in the ledger.
func lastActivity(p ledgerapi.Package) time.Time {
	var t time.Time
	for _, x := range []*time.Time{p.PlannedAt, p.StartedAt} {
		if x != nil && x.After(t) {
			t = *x
		}
	}
	if p.Progress != nil && p.Progress.UpdatedAt != nil && p.Progress.UpdatedAt.After(t) {
		t = *p.Progress.UpdatedAt
	}
	return t
}

// queuedRequests returns "<job>:<package>" of every request in the work
// queue, whatever its generation, walking the queue with next-by-subject
// reads so acknowledged gaps cost nothing. A package with any request
// queued is waiting or being worked on.
func (s *service) queuedRequests(ctx context.Context) (map[string]bool, error) {
	st, err := s.js.Stream(ctx, subject.RequestsStream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", subject.RequestsStream, err)
	}
	out := map[string]bool{}
	for seq := uint64(1); ; {
		m, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject.RequestsAll))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("scan %s: %w", subject.RequestsStream, err)
		}
		if job, pkg, ok := parseRequestID(m.Header.Get(jetstream.MsgIDHeader)); ok {
			out[job+":"+pkg] = true
		}
		seq = m.Sequence + 1
	}
}

// reconcilePackage re-issues or gives up on one quiet package; it reports
// whether it did either.
func (s *service) reconcilePackage(ctx context.Context, c stale, queued map[string]bool, now time.Time) (bool, error) {
	if queued[c.job.JobID+":"+c.pkg.PackageID] {
		return false, nil
	}
	cur, rev, err := s.reissues.Current(ctx, c.job.JobID, c.pkg.PackageID)
	if err != nil {
		return false, err
	}
	id := RequestID(c.job.JobID, c.pkg.PackageID, cur.Generation)
	if cur.GaveUp || (cur.Generation > 1 && now.Sub(cur.At) <= s.cfg.StallAfter) {
		return false, nil
	}
	log := s.log.With().Str(logx.JobID, c.job.JobID).Str(logx.PackageID, c.pkg.PackageID).Int("generation", cur.Generation).Logger()
	why := fmt.Sprintf("%s with no activity since %s and request %s not in the work queue",
		c.pkg.Status, lastActivity(c.pkg).UTC().Format(time.RFC3339), id)
	dest := c.pkg.Destination
	if dest == nil {
		dest = c.job.Destination
	}
	if dest == nil {
		return false, fmt.Errorf("job %s package %s: ledger gives no destination", c.job.JobID, c.pkg.PackageID)
	}
	if cur.Generation > s.cfg.MaxReissues {
		return true, s.giveUp(ctx, c, *dest, id, rev, cur, event.ReasonStalled,
			fmt.Sprintf("%s; gave up after %d re-issues", why, cur.Generation-1))
	}
	next := reissue.State{Generation: cur.Generation + 1, Why: why, At: now.UTC()}
	req, err := s.rebuildRequest(ctx, c, *dest, next.Generation)
	if r, ok := errors.AsType[*route.Refusal](err); ok {
		return true, s.giveUp(ctx, c, *dest, id, rev, cur, r.Reason, r.Message)
	}
	if err != nil {
		return false, err
	}
	if err := s.reissues.Claim(ctx, c.job.JobID, c.pkg.PackageID, rev, next); errors.Is(err, reissue.ErrLost) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	newID := RequestID(c.job.JobID, c.pkg.PackageID, next.Generation)
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
func (s *service) rebuildRequest(ctx context.Context, c stale, dest ledgerapi.Target, gen int) (event.Request, error) {
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
	prio := c.job.Priority
	if prio == "" {
		prio = event.PriorityNormal
	}
	return event.Request{
		JobID: c.job.JobID, PackageID: c.pkg.PackageID, Generation: gen, Priority: prio,
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
func (s *service) giveUp(ctx context.Context, c stale, dest ledgerapi.Target, requestID string, rev uint64, cur reissue.State, reason, msg string) error {
	st := event.Stalled{JobID: c.job.JobID, PackageID: c.pkg.PackageID, Site: dest.Site, Location: dest.Location,
		RequestID: requestID, Reason: reason, Message: msg, Reissues: max(cur.Generation-1, 0)}
	env, err := event.New(Source, "stalled:"+requestID+":"+reason, c.pkg.PackageID, st)
	if err != nil {
		return err
	}
	if _, err := bus.Publish(ctx, s.js, subject.Stalled, env); err != nil {
		return err
	}
	cur.GaveUp, cur.Why, cur.At = true, reason+": "+msg, time.Now().UTC()
	if err := s.reissues.Claim(ctx, c.job.JobID, c.pkg.PackageID, rev, cur); errors.Is(err, reissue.ErrLost) {
		return nil // another planner gave up on it at the same time
	} else if err != nil {
		return err
	}
	s.m.gaveUp.WithLabelValues(reason).Inc()
	s.log.Error().Str(logx.JobID, c.job.JobID).Str(logx.PackageID, c.pkg.PackageID).Str("reason", reason).Str("detail", msg).Msg("package given up")
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
