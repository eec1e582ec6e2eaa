package store

import (
	"context"
	_ "embed"

	"github.com/ccatobs/ccat-staging/shared/event"
)

// The job's own events (cancel) and the job status derived from its
// packages after every batch.

// cancel records a job's cancel; the earliest cancel's reason and requester
// win, whatever the arrival order. Its packages follow in deriveJobs.
func (a *applier) cancel(ctx context.Context, d decoded, v event.Cancel) error {
	return a.exec(ctx, "cancel job", `UPDATE jobs SET cancelled = true,
			cancelled_at = LEAST(cancelled_at, $1), cancel_reason = CASE WHEN cancelled_at IS NULL OR $2 < cancelled_at THEN $3 ELSE cancel_reason END,
			cancelled_by = CASE WHEN cancelled_at IS NULL OR $4 < cancelled_at THEN $5 ELSE cancelled_by END
		WHERE job_id = $6`, d.Time, d.Time, v.Reason, d.Time, v.RequestedBy, v.JobID)
}

// sqlJobStatus is the job status state machine, one statement with a
// comment per transition; its arguments are the jobs, twice.
//
//go:embed job_status.sql
var sqlJobStatus string

// deriveJobs recomputes the counts, bytes and status of jobs from their
// packages (job_status.sql). A cancelled job's unfinished packages are
// cancelled first, whenever their events arrive relative to the cancel;
// only a done or a permanent failure (what really happened) overrides that.
func (a *applier) deriveJobs(ctx context.Context, jobs []string) error {
	if err := a.exec(ctx, "cancel packages", `UPDATE job_packages jp SET status = 'cancelled', reason = 'cancelled',
			message = CASE WHEN j.cancel_reason <> '' THEN j.cancel_reason ELSE 'job cancelled' END,
			completed_at = j.cancelled_at
		FROM jobs j WHERE j.job_id = jp.job_id AND j.job_id = ANY($1::text[]) AND jp.job_id = ANY($2::text[]) AND j.cancelled
			AND jp.status IN ('pending', 'scheduled', 'in_progress')`,
		jobs, jobs); err != nil {
		return err
	}
	return a.exec(ctx, "derive job status", sqlJobStatus, jobs, jobs)
}
