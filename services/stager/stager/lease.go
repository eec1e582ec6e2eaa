package stager

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"time"

	"github.com/ccatobs/ccat-staging/services/stager/dest"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/lease"
	"github.com/ccatobs/ccat-staging/shared/logx"
	"github.com/rs/zerolog"
)

// One owner of a copy at a time, across instances.
//
// Staging a package, answering already_present for it (unless
// presentUnleased can answer from one read of the lease) and deleting it
// take the copy's lease in STAGER_LEASES (shared/lease) — after the in-process
// lock, so this instance's own workers queue on a channel rather than on
// the bucket. The lease is what keeps another instance from reporting a
// copy as present while a deletion that has claimed it is removing it: the
// request waits (its message kept alive by keepAlive) and then finds the
// copy gone and stages it again, or finds that the deletion let it be.

// presentUnleased answers already_present without taking the copy's lease
// when one read of the lease (from the bucket's leader, lease.Store.Held)
// finds nobody holding it and the verified copy is then found in place. It
// reports false whenever it cannot tell (a held lease, a failed read, no
// copy): the caller then takes the lease and decides under it, as before.
//
// Why one read before the Present check is as good as holding the lease
// across the check and the done event, for the guarantee that matters (a
// request never answers already_present for a copy a deletion is removing):
//
//  1. Every deletion, in any instance, takes this lease before it re-reads
//     the copy's PLANNER_REFS entry (claim, then stillReferenced in
//     cleanup.go) and holds it until the copy is gone; d.Remove drops the
//     verification record first, so a deletion that died half-way leaves
//     a copy that Present no longer accepts.
//  2. The planner writes the job's reference before it publishes the
//     job's requests ("references before requests" in planner/submit.go;
//     a re-issued request's job is referenced already), and drops it only
//     once the package failed for good, or the job was released,
//     cancelled or lapsed.
//  3. Say the read happens at t0 and finds no holder. A deletion that took
//     the lease before t0 has also let it go before t0: it finished, and
//     if it removed the copy, Present fails (the request stages afresh
//     under the lease). A deletion that takes the lease after t0 re-reads
//     the entry after t0, so after this request was published, so after
//     the job's reference was written: its claim fails (the entry moved)
//     or stillReferenced keeps the copy. Either way no deletion removes
//     the copy between t0 and the done event, unless the job itself gave
//     up its reference — and then the held lease would only have delayed
//     that removal until the done was out, the same end state.
//
// The read must see every lease put acknowledged before it; a read from a
// lagging replica would not, hence Held's leader read. Staging by another
// worker or instance needs no lease here either: a copy is Present only
// after its commit (an atomic rename of a verified tree and record).
//
// A first look for the copy's record, before the read, only spares a new
// package the round trip; it decides nothing (a deletion may remove the
// copy between it and the read), the Present check after the read does.
func (s *service) presentUnleased(ctx context.Context, a *attempt) (event.Done, bool) {
	d := a.dest
	if !d.HasRecord(a.req.PackageID) {
		s.m.presentChecks.WithLabelValues("absent").Inc()
		return event.Done{}, false
	}
	cur, err := s.leases.Held(ctx, lease.Key(s.cfg.Site, d.Name, a.req.PackageID))
	switch {
	case err != nil:
		a.log.Debug().Err(err).Str(logx.Location, d.Name).Msg("reading the copy's lease; deciding under the lease instead")
		s.m.presentChecks.WithLabelValues("read_failed").Inc()
		return event.Done{}, false
	case cur != nil:
		s.m.presentChecks.WithLabelValues("held").Inc()
		return event.Done{}, false
	}
	m, ok := d.Present(a.req.PackageID, a.req.Checksum)
	if !ok {
		s.m.presentChecks.WithLabelValues("gone").Inc()
		return event.Done{}, false
	}
	s.m.presentChecks.WithLabelValues("present").Inc()
	return s.doneData(a, m.Count(), true), true
}

// acquireLease takes the lease of packageID at d for h, waiting while
// another holder has it; the wait is logged (with the holder) and counted.
func (s *service) acquireLease(ctx context.Context, d dest.Location, packageID string, h lease.Holder, log zerolog.Logger) (*lease.Lease, error) {
	began := time.Now()
	waited := false
	l, err := s.leases.Acquire(ctx, lease.Key(s.cfg.Site, d.Name, packageID), h, func(cur lease.Current) {
		if !waited {
			s.m.leaseWaits.WithLabelValues(h.Purpose).Inc()
			waited = true
		}
		log.Info().Str(logx.Location, d.Name).Str("holder", cur.Instance).Str("holder_purpose", cur.Purpose).
			Str("holder_job_id", cur.JobID).Uint64("holder_refs_revision", cur.RefsRevision).Time("held_since", cur.Since).
			Msg("copy held by another owner; waiting for its lease")
	})
	if err != nil {
		return nil, err
	}
	s.m.leaseWait.WithLabelValues(h.Purpose).Observe(time.Since(began).Seconds())
	if l.TookOver {
		s.m.takeovers.WithLabelValues(h.Purpose).Inc()
		log.Warn().Str(logx.Location, d.Name).Msg("took over the lease of a holder that stopped renewing it")
	}
	if waited {
		log.Info().Str(logx.Location, d.Name).Dur("waited", time.Since(began)).Msg("lease acquired after waiting")
	}
	return l, nil
}

// confirmLease renews l before an irreversible step; a lost lease is
// counted and logged, and the step must not be taken.
func (s *service) confirmLease(ctx context.Context, l *lease.Lease, log zerolog.Logger) error {
	err := l.Confirm(ctx)
	if err != nil {
		s.m.leaseLost.WithLabelValues(l.Holder().Purpose).Inc()
		log.Error().Err(err).Msg("lease lost before acting: not acting")
	}
	return err
}

// releaseLease frees l, even while shutdown cancels ctx; a failed release
// only makes the others wait for the lease's TTL.
func (s *service) releaseLease(ctx context.Context, l *lease.Lease, log zerolog.Logger) {
	if l == nil {
		return
	}
	if err := l.Release(ctx); err != nil {
		log.Warn().Err(err).Dur("expires_in", s.leases.TTL()).Msg("releasing lease")
	}
}

// holdPoint is a test hook, inert unless STAGER_TEST_HOLD_DIR is set: while
// the file <dir>/<point> exists the caller stops here, after writing
// <dir>/<point>.held (with this instance's name) so the test knows it got
// there. The two-process test uses it to hold a deletion between its
// claim and the removal of the copy — the moment another instance must not
// take the copy for present — which no real fault can pin down.
func (s *service) holdPoint(ctx context.Context, point string, log zerolog.Logger) {
	if s.cfg.testHold == "" {
		return
	}
	f := filepath.Join(s.cfg.testHold, point)
	if _, err := os.Stat(f); err != nil {
		return
	}
	log.Warn().Str("point", point).Msg("test hook: holding")
	if err := os.WriteFile(f+".held", []byte(s.cfg.Instance), 0o644); err != nil {
		log.Error().Err(err).Msg("test hook")
	}
	for {
		if _, err := os.Stat(f); errors.Is(err, os.ErrNotExist) {
			log.Warn().Str("point", point).Msg("test hook: going on")
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}
