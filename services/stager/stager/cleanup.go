package stager

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/fault"
	"github.com/ccatobs/ccat-staging/shared/lease"
	"github.com/ccatobs/ccat-staging/shared/logx"
	"github.com/ccatobs/ccat-staging/shared/refs"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Deleting staged copies nobody references (staging.cleanup.<site>).
//
// The planner decides that a copy may go and says at which revision of its
// PLANNER_REFS entry it decided. A job may take the copy again at any time
// until the stager acts, so the stager, holding the copy's lease (the one
// staging and the already_present answer take, in every instance of the
// site: lease.go), claims the deletion by compare-and-set on that very
// revision: if the entry moved, somebody needs the copy and it stays.
// After the claim a new reference resets the entry; the deletion reads the
// entry again under the lease and keeps the copy if a job holds it now, and
// a reference that comes later still has its request wait for the lease,
// then find the copy gone and stage it afresh. The claim records the
// revision it was for, so a redelivered item whose first delivery claimed
// but died before finishing may go on.

// refsTable returns the PLANNER_REFS bucket once the planner has created it.
func (s *service) refsTable(ctx context.Context) (*refs.Table, error) {
	if t := s.refsKV.Load(); t != nil {
		return t, nil
	}
	kv, err := s.js.KeyValue(ctx, subject.PlannerRefsBucket)
	if err != nil {
		return nil, fmt.Errorf("kv bucket %s: %w", subject.PlannerRefsBucket, err)
	}
	t := refs.FromKV(kv)
	s.refsKV.Store(t)
	return t, nil
}

// ReleasedID is the id of the staging.released event of a deletion decided
// at refs revision rev; a failed attempt n gets its own id, so the success
// that may follow is never taken for its duplicate.
func ReleasedID(location, packageID string, rev uint64, failedAttempt int) string {
	id := "released:" + location + ":" + packageID + ":" + strconv.FormatUint(rev, 10)
	if failedAttempt > 0 {
		id += ":failed:" + strconv.Itoa(failedAttempt)
	}
	return id
}

func (s *service) handleCleanup(ctx context.Context, m jetstream.Msg) {
	n := 1
	if md, err := m.Metadata(); err == nil {
		n = int(md.NumDelivered)
	}
	log := s.log.With().Int(logx.Attempt, n).Str("consumer", subject.StagerCleanupDurable(s.cfg.Site)).Logger()
	env, err := event.Decode(m.Data())
	var c event.Cleanup
	if err == nil {
		log = log.With().Str(logx.EventID, env.ID).Logger()
		c, err = event.DataAs[event.Cleanup](env)
	}
	switch {
	case err != nil:
	case c.Site != s.cfg.Site:
		err = fmt.Errorf("deletion item for site %q reached site %q", c.Site, s.cfg.Site)
	case !strings.HasPrefix(c.RefsKey, c.Site+"."+c.Location+"."):
		// The key must be the copy's own: the claim is written there.
		err = fmt.Errorf("refs key %q is not a key of %s at %s", c.RefsKey, c.PackageID, c.Location)
	}
	if err != nil {
		// Nothing trustworthy to report on: the ledger never hears of it,
		// the log and the metric do.
		s.m.cleanups.WithLabelValues("invalid").Inc()
		bus.Settle(ctx, m, fault.Permanent(event.ReasonBadRequest, err), log)
		return
	}
	log = log.With().Str(logx.PackageID, c.PackageID).Str(logx.Location, c.Location).Uint64("refs_revision", c.RefsRevision).Logger()
	rel := event.Released{PackageID: c.PackageID, Site: c.Site, Location: c.Location, Jobs: c.Jobs, RefsRevision: c.RefsRevision}
	d, ok := s.dests[c.Location]
	if !ok {
		// Never delete anywhere but a processing location of this site.
		s.cleanupFailed(ctx, m, log, rel, n, fault.Permanent(event.ReasonNotProcessing,
			fmt.Errorf("%s is not a processing location of site %s", c.Location, s.cfg.Site)))
		return
	}
	rel.Path = d.Final(c.PackageID)
	table, err := s.refsTable(ctx)
	if err != nil {
		s.m.cleanups.WithLabelValues("retry").Inc()
		bus.Settle(ctx, m, fault.Transient(event.ReasonIOError, err), log)
		return
	}

	// A wait for the lease may outlast the item's AckWait: the runner
	// keeps the item alive (InProgress) while this handler works.
	unlock, err := s.lock(ctx, d.Name+"/"+c.PackageID)
	if err != nil {
		bus.Settle(ctx, m, fault.Transient(event.ReasonIOError, err), log)
		return
	}
	defer unlock()
	// The copy's lease, from before the claim until the copy is gone: no
	// instance may stage it or report it present in between.
	l, err := s.acquireLease(ctx, d, c.PackageID, lease.Holder{Purpose: lease.PurposeDelete, RefsRevision: c.RefsRevision}, log)
	if err != nil {
		s.m.cleanups.WithLabelValues("retry").Inc()
		bus.Settle(ctx, m, fault.Transient(event.ReasonIOError, fmt.Errorf("lease of %s at %s: %w", c.PackageID, d.Name, err)), log)
		return
	}
	defer s.releaseLease(ctx, l, log)
	claimed, err := s.claim(ctx, table, c)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		// Forgotten: an earlier delivery deleted the copy and reported it.
		s.m.cleanups.WithLabelValues("gone").Inc()
		bus.Settle(ctx, m, nil, log)
		return
	case errors.Is(err, refs.ErrChanged):
		s.m.cleanups.WithLabelValues("referenced").Inc()
		log.Info().Msg("copy referenced again since the deletion was decided: kept")
		bus.Settle(ctx, m, nil, log)
		return
	case err != nil:
		s.m.cleanups.WithLabelValues("retry").Inc()
		bus.Settle(ctx, m, fault.Transient(event.ReasonIOError, err), log)
		return
	}
	s.holdPoint(ctx, holdAfterClaim, log)
	// Under the lease, read the entry again: a job that took the copy after
	// the claim reset it (refs.Table.Add), and its request waits for this
	// lease; rather than delete and re-stage, keep the copy for it.
	if keep, err := s.stillReferenced(ctx, table, c, claimed); err != nil {
		s.m.cleanups.WithLabelValues("retry").Inc()
		bus.Settle(ctx, m, fault.Transient(event.ReasonIOError, err), log)
		return
	} else if keep {
		s.m.cleanups.WithLabelValues("referenced").Inc()
		log.Info().Msg("copy referenced again after the deletion was claimed: kept")
		bus.Settle(ctx, m, nil, log)
		return
	}
	s.holdPoint(ctx, holdBeforeRemove, log)
	if err := s.confirmLease(ctx, l, log); err != nil {
		// Somebody else may own the copy now; the claim stays recorded, so
		// the redelivery goes on from here.
		s.m.cleanups.WithLabelValues("retry").Inc()
		bus.Settle(ctx, m, fault.Transient(event.ReasonIOError, err), log)
		return
	}

	freed, err := d.Remove(c.PackageID)
	if err != nil {
		s.cleanupFailed(ctx, m, log, rel, n, err)
		return
	}
	rel.BytesFreed = freed
	if err := s.publish(ctx, subject.Released, ReleasedID(c.Location, c.PackageID, c.RefsRevision, 0), c.PackageID, rel); err != nil {
		// The copy is gone; the redelivery finds the claim and reports it.
		s.m.cleanups.WithLabelValues("retry").Inc()
		bus.Settle(ctx, m, fault.Transient(event.ReasonIOError, fmt.Errorf("publish released: %w", err)), log)
		return
	}
	if err := table.Forget(ctx, c.RefsKey, claimed); err != nil {
		// Harmless: the entry stays claimed and empty, and the next
		// reference resets it.
		log.Warn().Err(err).Msg("forgetting the deleted copy's references")
	}
	s.m.cleanups.WithLabelValues("deleted").Inc()
	s.m.freed.Add(float64(freed))
	log.Info().Int64("bytes_freed", freed).Strs("jobs", c.Jobs).Msg("unreferenced staged copy deleted")
	bus.Settle(ctx, m, nil, log)
}

// claim marks the deletion as taken if the entry is still where the planner
// decided it (or this deletion already claimed it), and returns the
// entry's revision after the claim.
func (s *service) claim(ctx context.Context, table *refs.Table, c event.Cleanup) (uint64, error) {
	it, err := table.Get(ctx, c.RefsKey)
	if err != nil {
		return 0, err
	}
	if len(it.Jobs) > 0 {
		return 0, refs.ErrChanged
	}
	if it.DeletingFor == c.RefsRevision {
		return it.Revision, nil
	}
	if it.Revision != c.RefsRevision {
		return 0, refs.ErrChanged
	}
	e := it.Entry
	e.DeletingFor = c.RefsRevision
	return table.Put(ctx, c.RefsKey, e, it.Revision)
}

// Test hook points of a deletion (see holdPoint): right after the claim,
// and right before a claimed deletion removes the copy.
const (
	holdAfterClaim   = "after-claim"
	holdBeforeRemove = "before-remove"
)

// stillReferenced re-reads the copy's refs entry after the claim (at
// revision claimed) and reports whether a job references the copy now.
func (s *service) stillReferenced(ctx context.Context, table *refs.Table, c event.Cleanup, claimed uint64) (bool, error) {
	it, err := table.Get(ctx, c.RefsKey)
	if err != nil {
		// Not even a forgotten entry is expected while the claim holds:
		// leave the copy; the redelivery sorts it out.
		return false, err
	}
	if it.Revision == claimed {
		return false, nil
	}
	return len(it.Jobs) > 0 || it.DeletingFor != c.RefsRevision, nil
}

// cleanupFailed reports a deletion that did not happen. Transient errors are
// retried with back-off until the consumer's MaxDeliver; the last attempt,
// or a permanent error, reports permanent=true and terminates the item
// (the copy stays deletion_failed in the ledger until an operator acts or a
// new job references it).
func (s *service) cleanupFailed(ctx context.Context, m jetstream.Msg, log zerolog.Logger, rel event.Released, n int, err error) {
	rel.Reason = fault.Reason(err, event.ReasonIOError)
	rel.Message = truncate(err.Error(), 1000)
	rel.Permanent = fault.IsPermanent(err) || n >= bus.StagerCleanupConsumer(s.cfg.Site).MaxDeliver
	if perr := s.publish(ctx, subject.Released, ReleasedID(rel.Location, rel.PackageID, rel.RefsRevision, n), rel.PackageID, rel); perr != nil {
		log.Error().Err(perr).Msg("publish deletion failure")
	}
	if rel.Permanent {
		s.m.cleanups.WithLabelValues("failed").Inc()
		bus.Settle(ctx, m, fault.Permanent(rel.Reason, err), log)
		return
	}
	s.m.cleanups.WithLabelValues("retry").Inc()
	bus.Settle(ctx, m, fault.Transient(rel.Reason, err), log)
}
