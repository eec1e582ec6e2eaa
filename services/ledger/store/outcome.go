package store

import (
	"cmp"
	"context"
	"slices"
	"time"

	"github.com/ccatobs/ccat-staging/shared/event"
)

// A package's staging outcomes: the stager's started, progress, done and
// failed, and the planner's stalled. The stager's events are most of the
// stream, so they are applied set-wise (with archive.package.archived,
// archive.go): one multi-row statement per table and round instead of one
// per event. PostgreSQL refuses to upsert one row twice in a statement, so
// events are split into rounds in which no two touch the same row; the
// merge rules are commutative, so rounds may run in any order.

// The status of a package under attempts: the highest attempt number seen
// decides, and whether that attempt failed. This makes started, progress and
// failed commute, so any arrival order gives the same row. Terminal states
// never change.
const (
	sqlTerminal = `jp.status IN ('completed', 'failed', 'cancelled')`
	// sqlFinal: outcomes a cancel cannot undo. A done or a permanent failure
	// arriving after the cancel still records what really happened to the
	// package (its bytes are there, or it failed), whatever the order.
	sqlFinal = `jp.status IN ('completed', 'failed')`
	// sqlNewerProgress: the latest progress is the one of the highest
	// attempt, then the most bytes, then the latest time.
	sqlNewerProgress = `(EXCLUDED.progress_attempt, EXCLUDED.progress_bytes_done, EXCLUDED.progress_updated_at) >
		(jp.progress_attempt, jp.progress_bytes_done, jp.progress_updated_at)`
)

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
		FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $6::text[], $7::timestamptz[], $8::int[], $9::bigint[], $10::bigint[], $11::float8[])
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
		c.job, c.pkg, c.attempt, c.req, c.site,
		c.loc, c.t, pa, pb, pt, pr); err != nil {
		return err
	}
	return a.exec(ctx, "running attempts", `INSERT INTO attempts AS at (job_id, package_id, attempt, site, location, instance, request_id, started_at)
		SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $6::text[], $7::text[], $8::timestamptz[])
		ON CONFLICT (job_id, package_id, attempt) DO UPDATE SET
			started_at = LEAST(at.started_at, EXCLUDED.started_at),
			site = CASE WHEN at.site = '' THEN EXCLUDED.site ELSE at.site END,
			location = CASE WHEN at.location = '' THEN EXCLUDED.location ELSE at.location END,
			instance = CASE WHEN at.instance = '' THEN EXCLUDED.instance ELSE at.instance END,
			request_id = CASE WHEN at.request_id = '' THEN EXCLUDED.request_id ELSE at.request_id END`,
		c.job, c.pkg, c.attempt, c.site, c.loc,
		c.inst, c.req, c.t)
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
		FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bigint[], $9::int[], $10::bool[], $11::timestamptz[], $12::float8[],
				$13::int[], $14::timestamptz[])
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
		c.job, c.pkg, c.attempt, c.req, c.site,
		c.loc, path, size, files, present,
		c.t, dur, sa, st); err != nil {
		return err
	}
	n := len(ds)
	if err := a.endAttempts(ctx, c, repeat("completed", n), repeat("", n), repeat("", n), make([]bool, n), sa, st); err != nil {
		return err
	}
	// Two jobs may stage the same package to the same location in one
	// round only if their rows differ, which rounds() rules out.
	return a.exec(ctx, "staged copies", `INSERT INTO staged_copies (package_id, location, site, path, job_id, size_bytes, files, staged_at)
		SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::int[], $8::timestamptz[])
		ON CONFLICT (package_id, location) DO UPDATE SET
			status = CASE WHEN staged_copies.deleted_at < EXCLUDED.staged_at THEN 'staged' ELSE staged_copies.status END,
			deletion_reason = CASE WHEN staged_copies.deleted_at < EXCLUDED.staged_at THEN '' ELSE staged_copies.deletion_reason END,
			bytes_freed = CASE WHEN staged_copies.deleted_at < EXCLUDED.staged_at THEN 0 ELSE staged_copies.bytes_freed END,
			staged_at = CASE WHEN staged_copies.deleted_at < EXCLUDED.staged_at THEN EXCLUDED.staged_at
				ELSE LEAST(staged_copies.staged_at, EXCLUDED.staged_at) END,
			deleted_at = CASE WHEN staged_copies.deleted_at < EXCLUDED.staged_at THEN NULL ELSE staged_copies.deleted_at END`,
		c.pkg, c.loc, c.site, path, c.job,
		size, files, c.t)
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
		SELECT j, p, CASE WHEN perm AND re = $1 THEN 'cancelled' WHEN perm THEN 'failed' ELSE 'scheduled' END, re, m, a, true, r, s, l,
			CASE WHEN perm THEN t END, t
		FROM unnest($2::text[], $3::text[], $4::bool[], $5::text[], $6::text[], $7::int[], $8::text[], $9::text[], $10::text[], $11::timestamptz[])
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
		c.job, c.pkg, perm, reason, msg,
		c.attempt, c.req, c.site, c.loc, c.t); err != nil {
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
		FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
			$11::bool[], $12::timestamptz[], $13::int[], $14::timestamptz[]) AS x(j, p, a, s, l, i, r, o, re, m, perm, t, sa, st)
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
		c.job, c.pkg, c.attempt, c.site, c.loc,
		c.inst, c.req, outcome, reason, msg,
		perm, c.t, sa, st)
}

// stalled ends a package the planner gave up on exactly like a permanent
// failure: failed with the event's reason, unless it already completed or
// failed (terminal); it overrides a cancel as a failure does.
func (a *applier) stalled(ctx context.Context, d decoded, v event.Stalled) error {
	a.place(v.Site, v.Location)
	return a.exec(ctx, "stalled package", `INSERT INTO job_packages AS jp (job_id, package_id, status, reason, message,
			request_id, dest_site, dest_location, completed_at, updated_at)
		VALUES ($1, $2, 'failed', $3, $4, $5, $6, $7, $8, $9)
		ON CONFLICT (job_id, package_id) DO UPDATE SET
			status = CASE WHEN `+sqlFinal+` THEN jp.status ELSE 'failed' END,
			reason = CASE WHEN `+sqlFinal+` THEN jp.reason ELSE EXCLUDED.reason END,
			message = CASE WHEN `+sqlFinal+` THEN jp.message ELSE EXCLUDED.message END,
			completed_at = CASE WHEN `+sqlFinal+` THEN jp.completed_at ELSE EXCLUDED.completed_at END,
			request_id = CASE WHEN jp.request_id = '' THEN EXCLUDED.request_id ELSE jp.request_id END,
			dest_site = CASE WHEN jp.dest_site = '' THEN EXCLUDED.dest_site ELSE jp.dest_site END,
			dest_location = CASE WHEN jp.dest_location = '' THEN EXCLUDED.dest_location ELSE jp.dest_location END,
			updated_at = GREATEST(jp.updated_at, EXCLUDED.updated_at)`,
		v.JobID, v.PackageID, v.Reason, v.Message, v.RequestID, v.Site, v.Location, d.Time, d.Time)
}
