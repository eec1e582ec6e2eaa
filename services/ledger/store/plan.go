package store

import (
	"cmp"
	"context"
	"slices"
	"time"

	"github.com/ccatobs/ccat-staging/shared/event"
)

// The planner's side of a job: staging.submit (the request), staging.planned
// (the packages with their sources, possibly split in parts) and
// staging.rejected. The first submit owns the job id; a plan is
// authoritative over the submit whatever the order.

// wholePlans returns, by job, the latest time of the new plans in ds that
// list all of their job's packages.
func wholePlans(ds []decoded, isNew map[[2]string]bool) map[string]time.Time {
	out := map[string]time.Time{}
	for _, d := range ds {
		if v, ok := d.data.(event.Planned); ok && v.Parts <= 1 && isNew[[2]string{d.Env.Source, d.Env.ID}] {
			if t, seen := out[v.JobID]; !seen || d.Time.After(t) {
				out[v.JobID] = d.Time
			}
		}
	}
	return out
}

// sqlSubmitJob records a submit on its job row; its arguments are the
// submit's id, requester, priority, note, destination site and location,
// time, job id and id again.
const sqlSubmitJob = `UPDATE jobs SET submit_id = $1,
		requested_by = CASE WHEN planned THEN requested_by ELSE $2 END,
		priority = CASE WHEN planned THEN priority ELSE $3 END,
		note = CASE WHEN planned THEN note ELSE $4 END,
		dest_site = CASE WHEN planned THEN dest_site ELSE $5 END,
		dest_location = CASE WHEN planned THEN dest_location ELSE $6 END,
		updated_at = GREATEST(updated_at, $7)
	WHERE job_id = $8 AND (submit_id IS NULL OR submit_id = $9)`

func (a *applier) submit(ctx context.Context, d decoded, v event.Submit) error {
	prio := cmp.Or(v.Priority, event.PriorityNormal)
	job := []any{d.Env.ID, v.RequestedBy, prio, v.Note, v.Destination.Site, v.Destination.Location, d.Time, v.JobID, d.Env.ID}
	// The first submit seen for a job id owns it; a later, conflicting one
	// (the planner rejects it with job_id_conflict) changes nothing. A plan
	// already applied is authoritative, so the submit only fills what is
	// still empty, and adds packages only to a job without a plan.
	if t, ok := a.wholePlans[v.JobID]; ok && !d.Time.After(t) {
		// A plan of the whole job is in this batch (a projection catching
		// up): it writes or deletes every row the submit would add, so they
		// are not written only to be rewritten. The rows come out the same
		// either way: the plan sets each column the submit sets (the
		// pending status becomes the plan's), and updated_at, the latest
		// time of both, is the plan's, which is not earlier.
		return a.exec(ctx, "submit", sqlSubmitJob, job...)
	}
	return a.exec(ctx, "submit", `WITH owner AS (`+sqlSubmitJob+`
			RETURNING NOT planned AS owns)
		INSERT INTO job_packages (job_id, package_id, dest_site, dest_location, updated_at)
		SELECT $10, p, $11, $12, $13 FROM unnest($14::text[]) AS x(p), owner WHERE owner.owns ORDER BY p
		ON CONFLICT (job_id, package_id) DO NOTHING`,
		append(job, v.JobID, v.Destination.Site, v.Destination.Location, d.Time, v.Packages)...)
}

func (a *applier) planned(ctx context.Context, d decoded, v event.Planned) error {
	a.place(v.Destination.Site, v.Destination.Location)
	part, parts := max(v.Part, 1), max(v.Parts, 1)
	if err := a.exec(ctx, "plan job", `UPDATE jobs SET planned = true, requested_by = $1, priority = $2, note = $3,
			dest_site = $4, dest_location = $5, updated_at = GREATEST(updated_at, $6),
			plan_parts = GREATEST(plan_parts, $7),
			planned_parts = CASE WHEN $8::integer = ANY(planned_parts) THEN planned_parts ELSE array_append(planned_parts, $9::integer) END
		WHERE job_id = $10`,
		v.RequestedBy, v.Priority, v.Note, v.Destination.Site, v.Destination.Location, d.Time, parts, part, part, v.JobID); err != nil {
		return err
	}
	// One column per field, in package order (a fixed row order keeps
	// concurrent ledgers from deadlocking on each other's rows).
	pkgs := slices.SortedFunc(slices.Values(v.Packages), func(x, y event.PlannedPackage) int {
		return cmp.Compare(x.PackageID, y.PackageID)
	})
	n := len(pkgs)
	ids, status, reason, msg, req := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	srcLoc, srcSite, srcStorage, srcKey, sum := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	sizes := make([]int64, n)
	for i, p := range pkgs {
		ids[i], status[i], reason[i], msg[i], req[i] = p.PackageID, p.Status, p.Reason, p.Message, p.RequestID
		sizes[i], sum[i] = p.SizeBytes, p.Checksum
		if p.Source != nil {
			srcLoc[i], srcSite[i], srcStorage[i], srcKey[i] = p.Source.Location, p.Source.Site, p.Source.Storage, p.Source.Key
			a.place(p.Source.Site, p.Source.Location)
		}
	}
	// Packages a conflicting submit may have added before the plan arrived
	// are not part of the job: a plan in one message lists every package of
	// it. (A plan split in parts cannot say so; its parts all arrive soon.)
	// ids is never nil (make): <> ALL(NULL) is NULL, which deletes nothing,
	// where a plan without packages must delete them all.
	if v.Parts <= 1 {
		if err := a.exec(ctx, "drop unplanned packages", `DELETE FROM job_packages WHERE job_id = $1 AND package_id <> ALL($2::text[])`,
			v.JobID, ids); err != nil {
			return err
		}
	}
	if n == 0 {
		return nil // a plan without packages: the job has none
	}
	// A package failed at plan time (no_source) is completed when planned.
	return a.exec(ctx, "plan packages", `INSERT INTO job_packages AS jp (job_id, package_id, status, reason, message, request_id,
			src_location, src_site, src_storage, src_key, dest_site, dest_location, size_bytes, checksum, planned_at, completed_at,
			updated_at)
		SELECT $1, p, st, re, m, r, sl, ss, sst, sk, $2, $3, sz, cs, $4, CASE WHEN st = 'failed' THEN $5::timestamptz END, $6
		FROM unnest($7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::bigint[], $17::text[])
			AS x(p, st, re, m, r, sl, ss, sst, sk, sz, cs)
		ON CONFLICT (job_id, package_id) DO UPDATE SET
			status = CASE WHEN `+sqlTerminal+` THEN jp.status
				WHEN EXCLUDED.status = 'failed' THEN 'failed'
				WHEN jp.status = 'pending' THEN 'scheduled' ELSE jp.status END,
			reason = CASE WHEN `+sqlTerminal+` OR EXCLUDED.status <> 'failed' THEN jp.reason ELSE EXCLUDED.reason END,
			message = CASE WHEN `+sqlTerminal+` OR EXCLUDED.status <> 'failed' THEN jp.message ELSE EXCLUDED.message END,
			completed_at = CASE WHEN `+sqlTerminal+` THEN jp.completed_at ELSE EXCLUDED.completed_at END,
			request_id = EXCLUDED.request_id, src_location = EXCLUDED.src_location, src_site = EXCLUDED.src_site,
			src_storage = EXCLUDED.src_storage, src_key = EXCLUDED.src_key,
			dest_site = EXCLUDED.dest_site, dest_location = EXCLUDED.dest_location,
			size_bytes = CASE WHEN jp.status = 'completed' THEN jp.size_bytes ELSE EXCLUDED.size_bytes END,
			checksum = EXCLUDED.checksum, planned_at = EXCLUDED.planned_at, updated_at = GREATEST(jp.updated_at, EXCLUDED.updated_at)`,
		v.JobID, v.Destination.Site, v.Destination.Location, d.Time, d.Time, d.Time,
		ids, status, reason, msg, req,
		srcLoc, srcSite, srcStorage, srcKey,
		sizes, sum)
}

func (a *applier) rejected(ctx context.Context, d decoded, v event.Rejected) error {
	if !d.touchesJob() {
		return nil // recorded in the log only
	}
	return a.exec(ctx, "reject job", `UPDATE jobs SET rejected = true, reason = $1, message = $2,
			submit_id = COALESCE(submit_id, $3), completed_at = $4, updated_at = GREATEST(updated_at, $5)
		WHERE job_id = $6 AND NOT planned AND (submit_id IS NULL OR submit_id = $7)`,
		v.Reason, v.Message, v.SubmitID, d.Time, d.Time, v.JobID, v.SubmitID)
}
