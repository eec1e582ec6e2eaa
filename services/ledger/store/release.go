package store

import (
	"context"

	"github.com/ccatobs/ccat-staging/shared/event"
)

// Releasing staged copies: staging.release (a job no longer needs its
// copies), the staged copies' derived status, and the stager's
// staging.released (the copy deleted, or its deletion failed).

// release records that a job no longer needs its staged copies; a copy no
// other unreleased job holds becomes deletion_scheduled (CCAT's status).
func (a *applier) release(ctx context.Context, d decoded, v event.Release) error {
	a.released = append(a.released, v.JobID)
	return a.exec(ctx, "release job", `UPDATE jobs SET released_at = LEAST(released_at, $1),
			released_by = CASE WHEN released_at IS NULL OR $2 < released_at THEN $3 ELSE released_by END
		WHERE job_id = $4`, d.Time, d.Time, v.RequestedBy, v.JobID)
}

// copies derives the status of the staged copies the batch touched: staged
// while some unreleased job holds the copy, deletion_scheduled once none
// does. Deriving it (rather than setting it per event) keeps the result the
// same whether a release arrives before or after the done.
func (a *applier) copies(ctx context.Context) error {
	if len(a.staged) == 0 && len(a.released) == 0 {
		return nil
	}
	// Written so that the plan is index lookups whatever the statistics
	// say (a fresh projection has none): the copies by package, then per
	// copy (a scalar subquery with LIMIT, which is never hashed over the
	// whole table the way an EXISTS may be) its holders by package, each
	// holder's job by key (NULL when it has no job row, which, like false,
	// does not count; no row at all is NULL too: deletion_scheduled).
	// A copy whose status stays is not written again (most are: a done
	// makes its copy staged, which it is already).
	status := `CASE WHEN (
				SELECT true FROM job_packages h
				WHERE h.package_id = sc.package_id AND h.dest_location = sc.location AND h.status = 'completed'
					AND (SELECT j.released_at IS NULL FROM jobs j WHERE j.job_id = h.job_id) LIMIT 1) THEN 'staged' ELSE 'deletion_scheduled' END`
	return a.exec(ctx, "staged copy status", `UPDATE staged_copies sc SET status = `+status+`
		WHERE sc.status IN ('staged', 'deletion_scheduled') AND sc.status <> `+status+`
			AND sc.package_id = ANY(ARRAY(SELECT unnest($1::text[]) UNION SELECT package_id FROM job_packages WHERE job_id = ANY($2::text[])))`,
		a.staged, a.released)
}

// deleted applies a stager's staging.released: the copy is deleted, or its
// deletion failed. deleted_at is when the deletion was attempted. Only a
// copy staged no later than the event is affected, so a package staged again
// after its deletion stays staged whichever arrives first; a deletion
// arriving before the copy's done leaves a row the done cannot revive. A
// failure never overrides a deletion.
func (a *applier) deleted(ctx context.Context, d decoded, v event.Released) error {
	a.place(v.Site, v.Location)
	status := "deleted"
	if v.Reason != "" {
		status = "deletion_failed"
	}
	job := ""
	if len(v.Jobs) > 0 {
		job = v.Jobs[0]
	}
	return a.exec(ctx, "copy "+status, `INSERT INTO staged_copies AS sc (package_id, location, site, path, job_id, staged_at,
			status, deleted_at, bytes_freed, deletion_reason)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
		ON CONFLICT (package_id, location) DO UPDATE SET status = EXCLUDED.status,
			deleted_at = GREATEST(sc.deleted_at, EXCLUDED.deleted_at), bytes_freed = EXCLUDED.bytes_freed,
			deletion_reason = EXCLUDED.deletion_reason
		WHERE sc.staged_at <= EXCLUDED.deleted_at AND (sc.status <> 'deleted' OR EXCLUDED.status = 'deleted')`,
		v.PackageID, v.Location, v.Site, v.Path, job, d.Time, status, d.Time, v.BytesFreed, v.Reason)
}
