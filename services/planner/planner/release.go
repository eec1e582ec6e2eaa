package planner

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ccatobs/ccat-staging/services/planner/kvkey"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/fault"
	"github.com/ccatobs/ccat-staging/shared/logx"
	"github.com/ccatobs/ccat-staging/shared/refs"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Release: reference counting of staged copies (PLANNER_REFS), and the sweep
// that hands the deletion of copies nobody needs any more to the site's
// stagers (STAGING_CLEANUP). A copy stays until its location's retention
// has passed since its last reference went away, because scientists often
// ask for the same data again; retention 0s deletes at the next sweep.

// republishAfter is how long a published deletion item may go unanswered
// before the sweep publishes it again (the item was lost, or its stream
// purged). The id is the same, and a stager handles a repeat idempotently.
const republishAfter = 10 * time.Minute

// openRelease opens PLANNER_REFS, the cleanup stream, every site's cleanup
// consumer, and the planner-release durable.
func (s *service) openRelease(ctx context.Context) (bus.Durable, error) {
	var err error
	if s.refs, err = refs.Open(ctx, s.js, s.cfg.Streams.Replicas); err != nil {
		return bus.Durable{}, err
	}
	if err := bus.ProvisionCleanup(ctx, s.js, s.cfg.Streams); err != nil {
		return bus.Durable{}, err
	}
	if err := s.provisionCleanupConsumers(ctx, s.topo.Load().SiteNames()); err != nil {
		return bus.Durable{}, err
	}
	cc := jetstream.ConsumerConfig{
		Durable:       subject.PlannerRelease,
		Description:   "planner: staging.release drops the job's references to staged copies",
		FilterSubject: subject.Release,
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait:       catalogAckWait,
	}
	if _, err := s.js.CreateOrUpdateConsumer(ctx, subject.EventsStream, cc); err != nil {
		return bus.Durable{}, fmt.Errorf("provision consumer %s: %w", subject.PlannerRelease, err)
	}
	return bus.DurableOn(s.cfg.Streams, subject.EventsStream, cc), nil
}

// provisionCleanupConsumers creates the cleanup durable of every site that
// lacks one, so deletion items wait for a stager that is not running yet.
func (s *service) provisionCleanupConsumers(ctx context.Context, sites []string) error {
	for _, site := range sites {
		name := subject.StagerCleanupDurable(site)
		_, err := s.js.Consumer(ctx, subject.CleanupStream, name)
		if err == nil {
			continue
		}
		if !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return fmt.Errorf("look up consumer %s: %w", name, err)
		}
		if _, err := s.js.CreateConsumer(ctx, subject.CleanupStream, bus.StagerCleanupConsumer(site)); err != nil && !errors.Is(err, jetstream.ErrConsumerExists) {
			return fmt.Errorf("provision consumer %s: %w", name, err)
		}
	}
	return nil
}

// reference records that the job needs the copy of every scheduled package
// at its destination (followers of another job's request included).
func (s *service) reference(ctx context.Context, jobID string, p event.Planned) error {
	var rs []refs.Ref
	for _, pp := range p.Packages {
		if pp.Status == event.StatusScheduled {
			rs = append(rs, refs.Ref{Key: RefsKey(p.Destination.Site, p.Destination.Location, pp.PackageID), Site: p.Destination.Site, Location: p.Destination.Location, PackageID: pp.PackageID})
		}
	}
	if err := s.refs.Add(ctx, jobID, rs, s.cfg.LookupParallel); err != nil {
		return fault.Transient(event.ReasonIOError, fmt.Errorf("reference staged copies: %w", err))
	}
	return nil
}

// handleRelease drops the job's references. The ledger records the release
// itself; the planner publishes nothing now: the sweep decides deletions.
func (s *service) handleRelease(ctx context.Context, m jetstream.Msg) {
	log := s.log.With().Str("consumer", subject.PlannerRelease).Logger()
	env, err := event.Decode(m.Data())
	var r event.Release
	if err == nil {
		log = log.With().Str(logx.EventID, env.ID).Logger()
		r, err = event.DataAs[event.Release](env)
	}
	if err != nil {
		s.m.releases.WithLabelValues("invalid").Inc()
		bus.Settle(ctx, m, fault.Permanent(reasonOf(err), err), log)
		return
	}
	log = log.With().Str(logx.JobID, r.JobID).Logger()
	n, err := s.refs.DropJob(ctx, r.JobID, time.Now())
	if err != nil {
		s.m.releases.WithLabelValues("retried").Inc()
		bus.Settle(ctx, m, fault.Transient(event.ReasonIOError, err), log)
		return
	}
	s.touchJob(ctx, r.JobID, log)
	s.m.releases.WithLabelValues("recorded").Inc()
	log.Info().Int("references", n).Str("requested_by", r.RequestedBy).Msg("job released its staged copies")
	bus.Settle(ctx, m, nil, log)
}

// touchJob restarts the job's retention in PLANNER_JOBS when it ends for
// the planner (release, cancel), so the record lives JobRetention after
// the end, not after the plan. Best effort: failing, the record expires
// JobRetention after the plan, which is longer than any job anyway.
func (s *service) touchJob(ctx context.Context, jobID string, log zerolog.Logger) {
	if err := s.jobs.Touch(ctx, jobID); err != nil {
		log.Warn().Err(err).Msg("job record's retention not restarted")
	}
}

// sweepReleases runs sweeps every ReleaseSweep until ctx ends.
func (s *service) sweepReleases(ctx context.Context) {
	t := time.NewTicker(s.cfg.ReleaseSweep)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if n, err := s.sweep(ctx, time.Now()); err != nil && ctx.Err() == nil {
			s.log.Warn().Err(err).Msg("release sweep failed")
		} else if n > 0 {
			s.log.Info().Int("deletions", n).Msg("release sweep")
		}
	}
}

// sweep publishes a deletion item for every copy whose references have been
// empty for its location's retention, and returns how many. Safe with
// several planners: an item is scheduled by compare-and-set on the entry's
// revision, and only the winner publishes; the item carries the revision
// the winner wrote, so the stager deletes only if nobody referenced the
// copy since.
func (s *service) sweep(ctx context.Context, now time.Time) (int, error) {
	// References a job never released nor cancelled go after RefRetention;
	// their copies then age towards their location's retention like any.
	if lapsed, err := s.refs.Lapse(ctx, now, s.cfg.RefRetention); err != nil {
		return 0, err
	} else if lapsed > 0 {
		s.m.lapsed.Add(float64(lapsed))
		s.log.Warn().Int("references", lapsed).Dur("ref_retention", s.cfg.RefRetention).Msg("references of jobs never released lapsed")
	}
	items, err := s.refs.Idle(ctx)
	if err != nil {
		return 0, err
	}
	topo := s.topo.Load()
	n := 0
	var errs []error
	for _, it := range items {
		if len(it.Jobs) > 0 || it.EmptiedAt == nil || it.DeletingFor != 0 {
			continue
		}
		loc, ok := topo.Location(it.Location)
		if !ok || now.Sub(*it.EmptiedAt) < loc.KeepFor() {
			// A location gone from the topology keeps its copies: deleting
			// them is an operator's decision.
			continue
		}
		rev, outcome := it.Revision, "republished"
		switch {
		case it.ScheduledAt == nil:
			e := it.Entry
			at := now.UTC()
			e.ScheduledAt = &at
			rev, err = s.refs.Put(ctx, it.Key, e, it.Revision)
			if errors.Is(err, refs.ErrChanged) {
				continue // referenced again, or another planner scheduled it
			}
			if err != nil {
				errs = append(errs, err)
				continue
			}
			outcome = "scheduled"
		case now.Sub(*it.ScheduledAt) < republishAfter:
			continue
		}
		if err := s.publishCleanup(ctx, it, rev); err != nil {
			// The entry stays scheduled; the item is published again after
			// republishAfter.
			s.m.cleanups.WithLabelValues("failed").Inc()
			errs = append(errs, err)
			continue
		}
		s.m.cleanups.WithLabelValues(outcome).Inc()
		s.log.Info().Str(logx.PackageID, it.PackageID).Str(logx.Site, it.Site).Str(logx.Location, it.Location).
			Uint64("refs_revision", rev).Str("outcome", outcome).Msg("deletion of unreferenced staged copy handed to the stagers")
		n++
	}
	return n, errors.Join(errs...)
}

// RefsKey is the PLANNER_REFS key of a package's copy at a location:
// <site>.<location>.<package key>. The site comes first so that NATS
// permissions can let a site's stagers claim deletions of their own
// site's copies only ($KV.PLANNER_REFS.<site>.>).
func RefsKey(site, location, packageID string) string {
	return site + "." + location + "." + kvkey.For(packageID)
}

// CleanupID is the event id of a deletion item.
func CleanupID(location, packageID string, rev uint64) string {
	return "cleanup:" + location + ":" + packageID + ":" + strconv.FormatUint(rev, 10)
}

func (s *service) publishCleanup(ctx context.Context, it refs.Item, rev uint64) error {
	c := event.Cleanup{
		PackageID: it.PackageID, Site: it.Site, Location: it.Location,
		RefsKey: it.Key, RefsRevision: rev, Jobs: it.LastJobs, EmptiedAt: *it.EmptiedAt,
	}
	env, err := event.New(Source, CleanupID(it.Location, it.PackageID, rev), it.PackageID, c)
	if err != nil {
		return err
	}
	if _, err := bus.Publish(ctx, s.js, subject.Cleanup(it.Site), env); err != nil {
		return fmt.Errorf("publish cleanup of %s at %s: %w", it.PackageID, it.Location, err)
	}
	return nil
}
