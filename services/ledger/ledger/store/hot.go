package store

import (
	"cmp"
	"context"
	"slices"
	"time"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/uptrace/bun/dialect/pgdialect"
)

// The stager's events (started, progress, done, failed) are most of the
// stream, so they are applied set-wise: one multi-row statement per table and
// round instead of one per event. PostgreSQL refuses to upsert one row twice
// in a statement, so events are split into rounds in which no two touch the
// same row; the merge rules are commutative, so rounds may run in any order.

// rounds splits events so that no two in one round share a key.
func rounds(ds []decoded, keys func(decoded) []string) [][]decoded {
	var used []map[string]bool
	var out [][]decoded
	for _, d := range ds {
		ks := keys(d)
		r := 0
		for ; r < len(used); r++ {
			free := true
			for _, k := range ks {
				if used[r][k] {
					free = false
					break
				}
			}
			if free {
				break
			}
		}
		if r == len(used) {
			used = append(used, map[string]bool{})
			out = append(out, nil)
		}
		for _, k := range ks {
			used[r][k] = true
		}
		out[r] = append(out[r], d)
	}
	return out
}

func isHot(d decoded) bool {
	switch d.data.(type) {
	case event.Started, event.Progress, event.Done, event.Failed, event.PackageArchived:
		return true
	}
	return false
}

// foldProgress drops progress reports that cannot change the projection:
// per package and attempt only the earliest (it may be the attempt's start)
// and the furthest (it is the progress shown) matter. Long transfers send
// hundreds of reports; every one stays in the event log.
func foldProgress(ds []decoded) []decoded {
	type key struct {
		job, pkg string
		attempt  int
	}
	first, best := map[key]int{}, map[key]int{}
	for i, d := range ds {
		p, ok := d.data.(event.Progress)
		if !ok {
			continue
		}
		k := key{p.JobID, p.PackageID, p.Attempt}
		if j, ok := first[k]; !ok || d.Time.Before(ds[j].Time) {
			first[k] = i
		}
		if j, ok := best[k]; !ok || newerProgress(p, d.Time, ds[j].data.(event.Progress), ds[j].Time) {
			best[k] = i
		}
	}
	keep := make([]bool, len(ds))
	for _, i := range first {
		keep[i] = true
	}
	for _, i := range best {
		keep[i] = true
	}
	out := ds[:0:0]
	for i, d := range ds {
		if _, ok := d.data.(event.Progress); !ok || keep[i] {
			out = append(out, d)
		}
	}
	return out
}

// newerProgress is sqlNewerProgress in Go.
func newerProgress(a event.Progress, at time.Time, b event.Progress, bt time.Time) bool {
	if a.BytesDone != b.BytesDone {
		return a.BytesDone > b.BytesDone
	}
	return at.After(bt)
}

func sortKey(d decoded) (string, string) {
	if v, ok := d.data.(event.PackageArchived); ok {
		return "", v.PackageID
	}
	o := outcomeOf(d)
	return o.JobID, o.PackageID
}

func outcomeOf(d decoded) event.Outcome {
	switch v := d.data.(type) {
	case event.Started:
		return v.Outcome
	case event.Progress:
		return v.Outcome
	case event.Done:
		return v.Outcome
	case event.Failed:
		return v.Outcome
	}
	return event.Outcome{}
}

// mergeStarts folds a started into the done of the same package and
// attempt when both are in the batch (a projection catching up, or a short
// transfer): the done's rows then record the start too, and the package's
// rows are written once instead of twice. The result is the one applying
// both gives: started and done of one attempt commute, and done is final.
func mergeStarts(ds []decoded) []decoded {
	type key struct {
		job, pkg string
		attempt  int
	}
	dones := map[key]bool{}
	for _, d := range ds {
		if v, ok := d.data.(event.Done); ok {
			dones[key{v.JobID, v.PackageID, v.Attempt}] = true
		}
	}
	if len(dones) == 0 {
		return ds
	}
	starts := map[key]time.Time{}
	for _, d := range ds {
		if v, ok := d.data.(event.Started); ok {
			k := key{v.JobID, v.PackageID, v.Attempt}
			if t, seen := starts[k]; dones[k] && (!seen || d.Time.Before(t)) {
				starts[k] = d.Time
			}
		}
	}
	out := ds[:0:0]
	for _, d := range ds {
		switch v := d.data.(type) {
		case event.Started:
			if dones[key{v.JobID, v.PackageID, v.Attempt}] {
				continue
			}
		case event.Done:
			d.mergedStart = starts[key{v.JobID, v.PackageID, v.Attempt}]
		}
		out = append(out, d)
	}
	return out
}

// applyHot applies stager events set-wise.
func (a *applier) applyHot(ctx context.Context, ds []decoded) error {
	rs := rounds(mergeStarts(foldProgress(ds)), func(d decoded) []string {
		if v, ok := d.data.(event.PackageArchived); ok {
			return []string{"pk\x00" + v.PackageID, "ac\x00" + v.PackageID + "\x00" + v.Location}
		}
		o := outcomeOf(d)
		ks := []string{"jp\x00" + o.JobID + "\x00" + o.PackageID}
		if _, ok := d.data.(event.Done); ok {
			ks = append(ks, "sc\x00"+o.PackageID+"\x00"+o.Location)
		}
		return ks
	})
	for _, r := range rs {
		// A fixed row order within each statement keeps concurrent
		// ledgers from deadlocking on each other's rows.
		slices.SortFunc(r, func(x, y decoded) int {
			jx, px := sortKey(x)
			jy, py := sortKey(y)
			return cmp.Or(cmp.Compare(jx, jy), cmp.Compare(px, py))
		})
		var att, done, failed, archived []decoded
		for _, d := range r {
			if v, ok := d.data.(event.PackageArchived); ok {
				a.place("", v.Location)
				archived = append(archived, d)
				continue
			}
			o := outcomeOf(d)
			a.place(o.Site, o.Location)
			switch d.data.(type) {
			case event.Started, event.Progress:
				att = append(att, d)
			case event.Done:
				done = append(done, d)
				a.staged = append(a.staged, o.PackageID)
			case event.Failed:
				failed = append(failed, d)
			}
		}
		if err := a.archives(ctx, archived); err != nil {
			return err
		}
		if err := a.attempts(ctx, att); err != nil {
			return err
		}
		if err := a.dones(ctx, done); err != nil {
			return err
		}
		if err := a.failures(ctx, failed); err != nil {
			return err
		}
	}
	return nil
}

// cols collects one column per field for unnest.
type cols struct {
	job, pkg, req, site, loc, inst []string
	attempt                        []int
	t                              []time.Time
}

func (c *cols) add(o event.Outcome, t time.Time) {
	c.job, c.pkg, c.req = append(c.job, o.JobID), append(c.pkg, o.PackageID), append(c.req, o.RequestID)
	c.site, c.loc, c.inst = append(c.site, o.Site), append(c.loc, o.Location), append(c.inst, o.Instance)
	c.attempt, c.t = append(c.attempt, o.Attempt), append(c.t, t)
}

// attempts applies started and progress: both say attempt n is running.
func (a *applier) attempts(ctx context.Context, ds []decoded) error {
	if len(ds) == 0 {
		return nil
	}
	var c cols
	var pa []int
	var pb, pt []int64
	var pr []float64
	for _, d := range ds {
		c.add(outcomeOf(d), d.Time)
		if p, ok := d.data.(event.Progress); ok {
			pa, pb, pt, pr = append(pa, p.Attempt), append(pb, p.BytesDone), append(pt, p.BytesTotal), append(pr, p.RateBytesPerSecond)
		} else {
			pa, pb, pt, pr = append(pa, 0), append(pb, 0), append(pt, 0), append(pr, 0)
		}
	}
	if err := a.exec(ctx, "running packages", `INSERT INTO job_packages AS jp (job_id, package_id, status, attempts, request_id,
			dest_site, dest_location, started_at, started_attempt, progress_attempt, progress_bytes_done, progress_bytes_total, progress_rate,
			progress_updated_at, updated_at)
		SELECT j, p, 'in_progress', a, r, s, l, t, a, pa, pb, pt, pr, CASE WHEN pa > 0 THEN t END, t
		FROM unnest(?::text[], ?::text[], ?::int[], ?::text[], ?::text[], ?::text[], ?::timestamptz[], ?::int[], ?::bigint[], ?::bigint[], ?::float8[])
			AS x(j, p, a, r, s, l, t, pa, pb, pt, pr)
		ON CONFLICT (job_id, package_id) DO UPDATE SET
			status = CASE WHEN `+sqlTerminal+` THEN jp.status
				WHEN EXCLUDED.attempts > jp.attempts OR (EXCLUDED.attempts = jp.attempts AND NOT jp.last_attempt_failed) THEN 'in_progress'
				ELSE jp.status END,
			last_attempt_failed = CASE WHEN EXCLUDED.attempts > jp.attempts THEN false ELSE jp.last_attempt_failed END,
			started_at = CASE WHEN EXCLUDED.started_attempt > jp.started_attempt OR jp.started_at IS NULL THEN EXCLUDED.started_at
				WHEN EXCLUDED.started_attempt = jp.started_attempt THEN LEAST(jp.started_at, EXCLUDED.started_at)
				ELSE jp.started_at END,
			started_attempt = GREATEST(jp.started_attempt, EXCLUDED.started_attempt),
			attempts = GREATEST(jp.attempts, EXCLUDED.attempts),
			request_id = CASE WHEN jp.request_id = '' THEN EXCLUDED.request_id ELSE jp.request_id END,
			dest_site = CASE WHEN jp.dest_site = '' THEN EXCLUDED.dest_site ELSE jp.dest_site END,
			dest_location = CASE WHEN jp.dest_location = '' THEN EXCLUDED.dest_location ELSE jp.dest_location END,
			progress_attempt = CASE WHEN `+sqlNewerProgress+` THEN EXCLUDED.progress_attempt ELSE jp.progress_attempt END,
			progress_bytes_done = CASE WHEN `+sqlNewerProgress+` THEN EXCLUDED.progress_bytes_done ELSE jp.progress_bytes_done END,
			progress_bytes_total = CASE WHEN `+sqlNewerProgress+` THEN EXCLUDED.progress_bytes_total ELSE jp.progress_bytes_total END,
			progress_rate = CASE WHEN `+sqlNewerProgress+` THEN EXCLUDED.progress_rate ELSE jp.progress_rate END,
			progress_updated_at = CASE WHEN `+sqlNewerProgress+` THEN EXCLUDED.progress_updated_at ELSE jp.progress_updated_at END,
			updated_at = GREATEST(jp.updated_at, EXCLUDED.updated_at)`,
		pgdialect.Array(c.job), pgdialect.Array(c.pkg), pgdialect.Array(c.attempt), pgdialect.Array(c.req), pgdialect.Array(c.site),
		pgdialect.Array(c.loc), pgdialect.Array(c.t), pgdialect.Array(pa), pgdialect.Array(pb), pgdialect.Array(pt), pgdialect.Array(pr)); err != nil {
		return err
	}
	return a.exec(ctx, "running attempts", `INSERT INTO attempts AS at (job_id, package_id, attempt, site, location, instance, request_id, started_at)
		SELECT * FROM unnest(?::text[], ?::text[], ?::int[], ?::text[], ?::text[], ?::text[], ?::text[], ?::timestamptz[])
		ON CONFLICT (job_id, package_id, attempt) DO UPDATE SET
			started_at = LEAST(at.started_at, EXCLUDED.started_at),
			site = CASE WHEN at.site = '' THEN EXCLUDED.site ELSE at.site END,
			location = CASE WHEN at.location = '' THEN EXCLUDED.location ELSE at.location END,
			instance = CASE WHEN at.instance = '' THEN EXCLUDED.instance ELSE at.instance END,
			request_id = CASE WHEN at.request_id = '' THEN EXCLUDED.request_id ELSE at.request_id END`,
		pgdialect.Array(c.job), pgdialect.Array(c.pkg), pgdialect.Array(c.attempt), pgdialect.Array(c.site), pgdialect.Array(c.loc),
		pgdialect.Array(c.inst), pgdialect.Array(c.req), pgdialect.Array(c.t))
}

func (a *applier) dones(ctx context.Context, ds []decoded) error {
	if len(ds) == 0 {
		return nil
	}
	var c cols
	var path []string
	var size []int64
	var files []int
	var present []bool
	var dur []float64
	// A start merged into the done (mergeStarts): its attempt, 0 for none,
	// and its time.
	var sa []int
	var st []time.Time
	for _, d := range ds {
		v := d.data.(event.Done)
		c.add(v.Outcome, d.Time)
		path, size, files = append(path, v.Path), append(size, v.SizeBytes), append(files, v.Files)
		present, dur = append(present, v.AlreadyPresent), append(dur, v.DurationSeconds)
		if d.mergedStart.IsZero() {
			sa, st = append(sa, 0), append(st, d.Time)
		} else {
			sa, st = append(sa, v.Attempt), append(st, d.mergedStart)
		}
	}
	if err := a.exec(ctx, "complete packages", `INSERT INTO job_packages AS jp (job_id, package_id, status, attempts, request_id,
			dest_site, dest_location, path, size_bytes, files, already_present, completed_at, duration_seconds, updated_at,
			started_at, started_attempt)
		SELECT j, p, 'completed', a, r, s, l, path, sz, f, ap, t, dur, GREATEST(t, st), CASE WHEN sa > 0 THEN st END, sa
		FROM unnest(?::text[], ?::text[], ?::int[], ?::text[], ?::text[], ?::text[], ?::text[], ?::bigint[], ?::int[], ?::bool[], ?::timestamptz[], ?::float8[],
				?::int[], ?::timestamptz[])
			AS x(j, p, a, r, s, l, path, sz, f, ap, t, dur, sa, st)
		ON CONFLICT (job_id, package_id) DO UPDATE SET
			-- the merged start, by the rules of attempts() for a started
			started_at = CASE WHEN EXCLUDED.started_attempt = 0 THEN jp.started_at
				WHEN EXCLUDED.started_attempt > jp.started_attempt OR jp.started_at IS NULL THEN EXCLUDED.started_at
				WHEN EXCLUDED.started_attempt = jp.started_attempt THEN LEAST(jp.started_at, EXCLUDED.started_at)
				ELSE jp.started_at END,
			started_attempt = GREATEST(jp.started_attempt, EXCLUDED.started_attempt),
			status = CASE WHEN `+sqlFinal+` THEN jp.status ELSE 'completed' END,
			reason = CASE WHEN `+sqlFinal+` THEN jp.reason ELSE '' END,
			message = CASE WHEN `+sqlFinal+` THEN jp.message ELSE '' END,
			path = CASE WHEN `+sqlFinal+` THEN jp.path ELSE EXCLUDED.path END,
			size_bytes = CASE WHEN `+sqlFinal+` THEN jp.size_bytes ELSE EXCLUDED.size_bytes END,
			files = CASE WHEN `+sqlFinal+` THEN jp.files ELSE EXCLUDED.files END,
			already_present = CASE WHEN `+sqlFinal+` THEN jp.already_present ELSE EXCLUDED.already_present END,
			completed_at = CASE WHEN `+sqlFinal+` THEN jp.completed_at ELSE EXCLUDED.completed_at END,
			duration_seconds = CASE WHEN `+sqlFinal+` THEN jp.duration_seconds ELSE EXCLUDED.duration_seconds END,
			last_attempt_failed = CASE WHEN EXCLUDED.attempts >= jp.attempts THEN false ELSE jp.last_attempt_failed END,
			attempts = GREATEST(jp.attempts, EXCLUDED.attempts),
			request_id = CASE WHEN jp.request_id = '' THEN EXCLUDED.request_id ELSE jp.request_id END,
			dest_site = CASE WHEN jp.dest_site = '' THEN EXCLUDED.dest_site ELSE jp.dest_site END,
			dest_location = CASE WHEN jp.dest_location = '' THEN EXCLUDED.dest_location ELSE jp.dest_location END,
			updated_at = GREATEST(jp.updated_at, EXCLUDED.updated_at)`,
		pgdialect.Array(c.job), pgdialect.Array(c.pkg), pgdialect.Array(c.attempt), pgdialect.Array(c.req), pgdialect.Array(c.site),
		pgdialect.Array(c.loc), pgdialect.Array(path), pgdialect.Array(size), pgdialect.Array(files), pgdialect.Array(present),
		pgdialect.Array(c.t), pgdialect.Array(dur), pgdialect.Array(sa), pgdialect.Array(st)); err != nil {
		return err
	}
	n := len(ds)
	if err := a.endAttempts(ctx, c, repeat("completed", n), repeat("", n), repeat("", n), make([]bool, n), sa, st); err != nil {
		return err
	}
	// Two jobs may stage the same package to the same location in one
	// round only if their rows differ, which rounds() rules out.
	return a.exec(ctx, "staged copies", `INSERT INTO staged_copies (package_id, location, site, path, job_id, size_bytes, files, staged_at)
		SELECT * FROM unnest(?::text[], ?::text[], ?::text[], ?::text[], ?::text[], ?::bigint[], ?::int[], ?::timestamptz[])
		ON CONFLICT (package_id, location) DO UPDATE SET
			status = CASE WHEN staged_copies.deleted_at < EXCLUDED.staged_at THEN 'staged' ELSE staged_copies.status END,
			deletion_reason = CASE WHEN staged_copies.deleted_at < EXCLUDED.staged_at THEN '' ELSE staged_copies.deletion_reason END,
			bytes_freed = CASE WHEN staged_copies.deleted_at < EXCLUDED.staged_at THEN 0 ELSE staged_copies.bytes_freed END,
			staged_at = CASE WHEN staged_copies.deleted_at < EXCLUDED.staged_at THEN EXCLUDED.staged_at
				ELSE LEAST(staged_copies.staged_at, EXCLUDED.staged_at) END,
			deleted_at = CASE WHEN staged_copies.deleted_at < EXCLUDED.staged_at THEN NULL ELSE staged_copies.deleted_at END`,
		pgdialect.Array(c.pkg), pgdialect.Array(c.loc), pgdialect.Array(c.site), pgdialect.Array(path), pgdialect.Array(c.job),
		pgdialect.Array(size), pgdialect.Array(files), pgdialect.Array(c.t))
}

func repeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}

// failures applies staged.failed: a permanent failure ends the package; a
// transient one puts it back in the queue (scheduled) when it is the latest
// attempt, with its reason. A permanent failure with reason cancelled is a
// stager withdrawing the request of a cancelled job: the package ends
// cancelled, whether the job's cancel was applied before or after it.
func (a *applier) failures(ctx context.Context, ds []decoded) error {
	if len(ds) == 0 {
		return nil
	}
	var c cols
	var perm []bool
	var reason, msg []string
	for _, d := range ds {
		v := d.data.(event.Failed)
		c.add(v.Outcome, d.Time)
		perm, reason, msg = append(perm, v.Permanent), append(reason, v.Reason), append(msg, v.Message)
	}
	if err := a.exec(ctx, "fail packages", `INSERT INTO job_packages AS jp (job_id, package_id, status, reason, message, attempts,
			last_attempt_failed, request_id, dest_site, dest_location, completed_at, updated_at)
		SELECT j, p, CASE WHEN perm AND re = ? THEN 'cancelled' WHEN perm THEN 'failed' ELSE 'scheduled' END, re, m, a, true, r, s, l,
			CASE WHEN perm THEN t END, t
		FROM unnest(?::text[], ?::text[], ?::bool[], ?::text[], ?::text[], ?::int[], ?::text[], ?::text[], ?::text[], ?::timestamptz[])
			AS x(j, p, perm, re, m, a, r, s, l, t)
		ON CONFLICT (job_id, package_id) DO UPDATE SET
			status = CASE WHEN `+sqlFinal+` THEN jp.status
				WHEN EXCLUDED.status IN ('failed', 'cancelled') THEN EXCLUDED.status
				WHEN jp.status = 'cancelled' THEN jp.status
				WHEN EXCLUDED.attempts >= jp.attempts THEN 'scheduled' ELSE jp.status END,
			reason = CASE WHEN `+sqlFinal+` THEN jp.reason
				WHEN EXCLUDED.status IN ('failed', 'cancelled') THEN EXCLUDED.reason
				WHEN jp.status = 'cancelled' THEN jp.reason
				WHEN EXCLUDED.attempts >= jp.attempts THEN EXCLUDED.reason ELSE jp.reason END,
			message = CASE WHEN `+sqlFinal+` THEN jp.message
				WHEN EXCLUDED.status IN ('failed', 'cancelled') THEN EXCLUDED.message
				WHEN jp.status = 'cancelled' THEN jp.message
				WHEN EXCLUDED.attempts >= jp.attempts THEN EXCLUDED.message ELSE jp.message END,
			completed_at = CASE WHEN `+sqlFinal+` THEN jp.completed_at
				WHEN EXCLUDED.status IN ('failed', 'cancelled') THEN EXCLUDED.completed_at
				WHEN jp.status = 'cancelled' THEN jp.completed_at ELSE NULL END,
			last_attempt_failed = CASE WHEN EXCLUDED.attempts >= jp.attempts THEN true ELSE jp.last_attempt_failed END,
			attempts = GREATEST(jp.attempts, EXCLUDED.attempts),
			request_id = CASE WHEN jp.request_id = '' THEN EXCLUDED.request_id ELSE jp.request_id END,
			dest_site = CASE WHEN jp.dest_site = '' THEN EXCLUDED.dest_site ELSE jp.dest_site END,
			dest_location = CASE WHEN jp.dest_location = '' THEN EXCLUDED.dest_location ELSE jp.dest_location END,
			updated_at = GREATEST(jp.updated_at, EXCLUDED.updated_at)`,
		event.ReasonCancelled,
		pgdialect.Array(c.job), pgdialect.Array(c.pkg), pgdialect.Array(perm), pgdialect.Array(reason), pgdialect.Array(msg),
		pgdialect.Array(c.attempt), pgdialect.Array(c.req), pgdialect.Array(c.site), pgdialect.Array(c.loc), pgdialect.Array(c.t)); err != nil {
		return err
	}
	return a.endAttempts(ctx, c, repeat("failed", len(ds)), reason, msg, perm, make([]int, len(ds)), c.t)
}

// endAttempts records how attempts ended; sa and st are a start merged into
// the outcome (mergeStarts): its attempt (0 for none) and time.
func (a *applier) endAttempts(ctx context.Context, c cols, outcome, reason, msg []string, perm []bool, sa []int, st []time.Time) error {
	return a.exec(ctx, "end attempts", `INSERT INTO attempts AS at (job_id, package_id, attempt, site, location, instance, request_id,
			outcome, reason, message, permanent, ended_at, started_at)
		SELECT j, p, a, s, l, i, r, o, re, m, perm, t, CASE WHEN sa > 0 THEN st END
		FROM unnest(?::text[], ?::text[], ?::int[], ?::text[], ?::text[], ?::text[], ?::text[], ?::text[], ?::text[], ?::text[],
			?::bool[], ?::timestamptz[], ?::int[], ?::timestamptz[]) AS x(j, p, a, s, l, i, r, o, re, m, perm, t, sa, st)
		ON CONFLICT (job_id, package_id, attempt) DO UPDATE SET
			started_at = LEAST(at.started_at, EXCLUDED.started_at),
			outcome = CASE WHEN at.outcome = 'in_progress' THEN EXCLUDED.outcome ELSE at.outcome END,
			reason = CASE WHEN at.outcome = 'in_progress' THEN EXCLUDED.reason ELSE at.reason END,
			message = CASE WHEN at.outcome = 'in_progress' THEN EXCLUDED.message ELSE at.message END,
			permanent = CASE WHEN at.outcome = 'in_progress' THEN EXCLUDED.permanent ELSE at.permanent END,
			ended_at = CASE WHEN at.outcome = 'in_progress' THEN EXCLUDED.ended_at ELSE at.ended_at END,
			site = CASE WHEN at.site = '' THEN EXCLUDED.site ELSE at.site END,
			location = CASE WHEN at.location = '' THEN EXCLUDED.location ELSE at.location END,
			instance = CASE WHEN at.instance = '' THEN EXCLUDED.instance ELSE at.instance END,
			request_id = CASE WHEN at.request_id = '' THEN EXCLUDED.request_id ELSE at.request_id END`,
		pgdialect.Array(c.job), pgdialect.Array(c.pkg), pgdialect.Array(c.attempt), pgdialect.Array(c.site), pgdialect.Array(c.loc),
		pgdialect.Array(c.inst), pgdialect.Array(c.req), pgdialect.Array(outcome), pgdialect.Array(reason), pgdialect.Array(msg),
		pgdialect.Array(perm), pgdialect.Array(c.t), pgdialect.Array(sa), pgdialect.Array(st))
}

// archives applies archive.package.archived.
func (a *applier) archives(ctx context.Context, ds []decoded) error {
	if len(ds) == 0 {
		return nil
	}
	var pkg, loc, key, sum, format []string
	var size []int64
	var files []int
	var t []time.Time
	for _, d := range ds {
		v := d.data.(event.PackageArchived)
		pkg, loc, key, sum, format = append(pkg, v.PackageID), append(loc, v.Location), append(key, v.Key), append(sum, v.Checksum), append(format, v.Format)
		size, files, t = append(size, v.SizeBytes), append(files, v.FileCount()), append(t, d.Time)
	}
	if err := a.exec(ctx, "upsert packages", `INSERT INTO packages (package_id, size_bytes, checksum, format, first_archived_at)
		SELECT * FROM unnest(?::text[], ?::bigint[], ?::text[], ?::text[], ?::timestamptz[])
		ON CONFLICT (package_id) DO UPDATE SET first_archived_at = LEAST(packages.first_archived_at, EXCLUDED.first_archived_at)`,
		pgdialect.Array(pkg), pgdialect.Array(size), pgdialect.Array(sum), pgdialect.Array(format), pgdialect.Array(t)); err != nil {
		return err
	}
	return a.exec(ctx, "upsert archive copies", `INSERT INTO archive_copies (package_id, location, key, size_bytes, checksum, format, files, archived_at)
		SELECT * FROM unnest(?::text[], ?::text[], ?::text[], ?::bigint[], ?::text[], ?::text[], ?::int[], ?::timestamptz[])
		ON CONFLICT (package_id, location) DO UPDATE SET archived_at = LEAST(archive_copies.archived_at, EXCLUDED.archived_at),
			key = EXCLUDED.key, size_bytes = EXCLUDED.size_bytes, checksum = EXCLUDED.checksum, format = EXCLUDED.format,
			files = EXCLUDED.files,
			status = CASE WHEN archive_copies.removed_at IS NOT NULL AND archive_copies.removed_at >= EXCLUDED.archived_at
				THEN 'removed' ELSE 'active' END,
			removed_at = CASE WHEN archive_copies.removed_at IS NOT NULL AND archive_copies.removed_at >= EXCLUDED.archived_at
				THEN archive_copies.removed_at END,
			removed_reason = CASE WHEN archive_copies.removed_at IS NOT NULL AND archive_copies.removed_at >= EXCLUDED.archived_at
				THEN archive_copies.removed_reason ELSE '' END`,
		pgdialect.Array(pkg), pgdialect.Array(loc), pgdialect.Array(key), pgdialect.Array(size), pgdialect.Array(sum),
		pgdialect.Array(format), pgdialect.Array(files), pgdialect.Array(t))
}
