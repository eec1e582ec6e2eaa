-- The job status state machine: each job of the batch ($1 and $2, the same
-- sorted job ids) takes its counts, bytes, status, reason, message and
-- completion time from its packages' rows, which the appliers have just
-- written. A job's status is derived, never set by an event, so every
-- arrival order of the events gives the same job row. The first WHEN that
-- holds decides; each branch says which state it leads to and why.
-- Embedded by job.go and sent as it is (pgx, $n placeholders).
WITH c AS (
	SELECT job_id,
		count(*) AS total,
		count(*) FILTER (WHERE status = 'pending') AS pending,
		count(*) FILTER (WHERE status = 'scheduled') AS scheduled,
		count(*) FILTER (WHERE status = 'in_progress') AS in_progress,
		count(*) FILTER (WHERE status = 'completed') AS completed,
		count(*) FILTER (WHERE status = 'failed') AS failed,
		count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
		bool_or(attempts > 0 OR status IN ('in_progress', 'completed')) AS started,
		max(completed_at) AS last_end,
		min(reason) FILTER (WHERE status = 'failed') AS fail_reason,
		sum(GREATEST(size_bytes, progress_bytes_total)) AS bytes_total,
		sum(CASE WHEN status = 'completed' THEN size_bytes
			WHEN status = 'in_progress' AND progress_attempt = attempts THEN progress_bytes_done
			ELSE 0 END) AS bytes_done,
		-- Copied for this job: not already there, and not by the
		-- earlier job whose request it follows (counted there).
		sum(size_bytes) FILTER (WHERE status = 'completed' AND NOT already_present
			AND NOT (request_id LIKE 'request:%' AND split_part(request_id, ':', 2) <> job_id)) AS bytes_staged
	FROM job_packages WHERE job_id = ANY($1::text[]) GROUP BY job_id
), d AS (
	-- Every job of the batch, also one without package rows (yet).
	SELECT ids.job_id, COALESCE(c.total, 0) AS total, COALESCE(c.pending, 0) AS pending,
		COALESCE(c.scheduled, 0) AS scheduled, COALESCE(c.in_progress, 0) AS in_progress,
		COALESCE(c.completed, 0) AS completed, COALESCE(c.failed, 0) AS failed, COALESCE(c.cancelled, 0) AS cancelled,
		COALESCE(c.started, false) AS started, c.last_end, c.fail_reason,
		COALESCE(c.bytes_total, 0) AS bytes_total, COALESCE(c.bytes_done, 0) AS bytes_done,
		COALESCE(c.bytes_staged, 0) AS bytes_staged
	FROM unnest($2::text[]) AS ids(job_id) LEFT JOIN c USING (job_id)
)
UPDATE jobs j SET
	n_total = d.total, n_pending = d.pending, n_scheduled = d.scheduled, n_in_progress = d.in_progress,
	n_completed = d.completed, n_failed = d.failed, n_cancelled = d.cancelled, bytes_total = d.bytes_total, bytes_done = d.bytes_done,
	bytes_staged = d.bytes_staged,
	status = CASE
		-- → rejected: the planner refused the submit; terminal, nothing
		-- after it (a late plan or outcome) changes that.
		WHEN j.rejected THEN 'rejected'
		-- → cancelled: cancelled before any package was known.
		WHEN d.total = 0 AND j.cancelled THEN 'cancelled'
		-- → pending: no package rows: only events without packages (a
		-- cancel, a release) arrived so far, or its plan has none.
		WHEN d.total = 0 THEN 'pending'
		-- → in_progress / pending: outcomes may arrive before (part of) the
		-- plan; until every part is known, the packages seen so far are not
		-- the job, so it cannot be completed or failed yet.
		WHEN NOT (j.planned AND cardinality(j.planned_parts) >= j.plan_parts) AND NOT j.cancelled
			THEN CASE WHEN d.started THEN 'in_progress' ELSE 'pending' END
		-- → completed: every package completed; wins over a cancel that came
		-- too late to stop anything.
		WHEN d.completed = d.total THEN 'completed'
		-- → cancelled: the job was cancelled (or a stager withdrew one of its
		-- packages for the cancel) and not everything completed.
		WHEN d.cancelled > 0 OR j.cancelled THEN 'cancelled'
		-- → failed: every package terminal, at least one failed.
		WHEN d.completed + d.failed = d.total THEN 'failed'
		-- → in_progress: some attempt started and the job is not finished.
		WHEN d.started THEN 'in_progress'
		-- → pending: every package still pending (known from the submit
		-- only).
		WHEN d.pending = d.total THEN 'pending'
		-- → scheduled: planned, no attempt started yet.
		ELSE 'scheduled' END,
	-- The reason and message follow the same branches: the rejection's, the
	-- cancel's, none while the plan is incomplete, then the first failure's
	-- reason with "n of m packages failed".
	reason = CASE WHEN j.rejected THEN j.reason
		WHEN j.cancelled AND d.completed < d.total THEN 'cancelled'
		WHEN NOT (j.planned AND cardinality(j.planned_parts) >= j.plan_parts) THEN ''
		WHEN d.total > 0 AND d.completed + d.failed = d.total AND d.failed > 0 THEN COALESCE(d.fail_reason, '')
		ELSE '' END,
	message = CASE WHEN j.rejected THEN j.message
		WHEN j.cancelled AND d.completed < d.total THEN 'cancelled by ' || j.cancelled_by ||
			CASE WHEN j.cancel_reason <> '' THEN ': ' || j.cancel_reason ELSE '' END
		WHEN NOT (j.planned AND cardinality(j.planned_parts) >= j.plan_parts) THEN ''
		WHEN d.total > 0 AND d.completed + d.failed = d.total AND d.failed > 0
			THEN d.failed || ' of ' || d.total || ' packages failed'
		ELSE '' END,
	-- Set when the job reaches a terminal state: the rejection's time, the
	-- last package's end, or the cancel's time; NULL while the plan is
	-- incomplete or packages are unfinished.
	completed_at = CASE WHEN j.rejected THEN j.completed_at
		WHEN NOT (j.planned AND cardinality(j.planned_parts) >= j.plan_parts) AND NOT j.cancelled THEN NULL
		WHEN d.total > 0 AND d.completed = d.total THEN d.last_end
		WHEN j.cancelled THEN j.cancelled_at
		WHEN d.total > 0 AND d.completed + d.failed = d.total THEN d.last_end
		ELSE NULL END,
	updated_at = GREATEST(j.updated_at, d.last_end)
FROM d WHERE j.job_id = d.job_id
