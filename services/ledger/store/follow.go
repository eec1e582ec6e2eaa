package store

import (
	"context"
	"maps"
	"slices"
	"strings"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/jackc/pgx/v5"
)

// Cross-job deduplication: the planner may schedule job B's package P with
// job A's request id (request:A:P:<gen>) instead of staging P twice to the
// same location. B's row then follows A's row for P: every outcome of the
// request shows on both. Following the leader's *row* (rather than fanning
// each event out) keeps the projection order-independent: whichever of A's
// outcomes and B's plan arrives last brings B up to date, and the leader's
// row is itself independent of the order of its events.

// followLockClass namespaces the ledger's advisory locks on followed jobs.
const followLockClass = 0x666f6c // "fol"

// requestJob returns the job id inside a request id
// (request:<job>:<package>:<generation>); ids contain no ':'.
func requestJob(requestID string) string {
	rest, ok := strings.CutPrefix(requestID, "request:")
	if !ok {
		return ""
	}
	job, _, _ := strings.Cut(rest, ":")
	return job
}

// followKeys returns the jobs to serialise on (jobs whose requests a plan in
// the batch follows, and jobs with outcomes in it) and the packages with
// outcomes, whose followers must be brought up to date.
func followKeys(ds []decoded) (leaders, pkgs []string) {
	ls, ps := map[string]bool{}, map[string]bool{}
	for _, d := range ds {
		switch v := d.data.(type) {
		case event.Planned:
			for _, p := range v.Packages {
				if j := requestJob(p.RequestID); j != "" && j != v.JobID {
					ls[j] = true
				}
			}
		case event.Started, event.Progress, event.Done, event.Failed:
			o := outcomeOf(d)
			ls[o.JobID], ps[o.PackageID] = true, true
		case event.Stalled:
			ls[v.JobID], ps[v.PackageID] = true, true
		}
	}
	return slices.Sorted(maps.Keys(ls)), slices.Sorted(maps.Keys(ps))
}

// syncFollowers copies the staging state of each leader row onto the rows
// following it, for followers in jobs or of packages in pkgs, and returns
// the follower jobs it changed (their status must be derived again); the
// packages it changed join a.staged, as their copies' holders changed.
// A follower that is already completed or failed keeps that status
// (terminal); while its leader has the same status it still takes the
// leader's details (a late progress report), so the result does not depend
// on when the follower caught up.
// A leader row that only says its own job's plan (pending, scheduled without
// an attempt) or its own job's cancel (cancelled, or a failure with reason
// cancelled: the stager withdrew the request for the leader's job) has
// nothing to pass on: the follower stays scheduled, and the planner's
// reconciler re-issues it as its own request once it stays quiet.
func (a *applier) syncFollowers(ctx context.Context, jobs, pkgs []string) ([]string, error) {
	var out []string
	q := a.queue
	a.queue = nil
	err := a.conn.query(ctx, q, queued{name: "sync followers", sql: `UPDATE job_packages f SET status = l.status, reason = l.reason, message = l.message,
			attempts = l.attempts, last_attempt_failed = l.last_attempt_failed,
			started_at = l.started_at, started_attempt = l.started_attempt,
			progress_attempt = l.progress_attempt, progress_bytes_done = l.progress_bytes_done,
			progress_bytes_total = l.progress_bytes_total, progress_rate = l.progress_rate,
			progress_updated_at = l.progress_updated_at,
			path = l.path, size_bytes = CASE WHEN l.status = 'completed' THEN l.size_bytes ELSE f.size_bytes END,
			files = l.files, already_present = l.already_present, completed_at = l.completed_at,
			duration_seconds = l.duration_seconds, updated_at = GREATEST(f.updated_at, l.updated_at)
		FROM job_packages l
		WHERE f.request_id LIKE 'request:%' AND split_part(f.request_id, ':', 2) <> f.job_id
			AND l.job_id = split_part(f.request_id, ':', 2) AND l.package_id = f.package_id
			AND (f.job_id = ANY($1::text[]) OR f.package_id = ANY($2::text[]))
			AND (f.status NOT IN ('completed', 'failed') OR f.status = l.status)
			AND (l.status IN ('completed', 'in_progress') OR (l.status = 'failed' AND l.reason <> $3)
				OR (l.status = 'scheduled' AND l.attempts > 0))
		RETURNING f.job_id, f.package_id`, args: []any{jobs, pkgs, event.ReasonCancelled}},
		func(r pgx.Rows) error {
			var job, pkg string
			if err := r.Scan(&job, &pkg); err != nil {
				return err
			}
			out = append(out, job)
			a.staged = append(a.staged, pkg)
			return nil
		})
	if err != nil {
		return nil, err
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}
