package store

// Applying a batch: the coordinator. Apply decodes the batch, takes its locks,
// COPYs the new events into the event log and hands each to its family's
// applier (plan.go, outcome.go, archive.go, release.go, job.go), whose
// statements queue up and go to PostgreSQL in a few round trips; then the
// derived state: followers (follow.go), staged copies, job status.

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/jackc/pgx/v5"
)

// Poison is a message that could not be applied, kept with the reason.
type Poison struct {
	Stream    string
	StreamSeq uint64
	Subject   string
	Reason    string
	Message   string
	EventID   string
	EventType string
	Raw       []byte
}

// Result says what a batch did.
type Result struct {
	Applied    map[string]int // new events by type
	Duplicates int            // events already in the log
	Poison     int
	// Jobs lists the jobs whose state the batch touched.
	Jobs []string
}

// Apply applies a batch in one transaction: poison rows, then every event not
// yet in the log, then the derived status of every job touched. It returns
// only once the transaction committed, so the caller may ack afterwards.
// Events whose data cannot be decoded should have been sent as Poison; Apply
// fails the whole batch on one (a bug, not bad input).
func (s *Store) Apply(ctx context.Context, events []Event, poison []Poison) (Result, error) {
	res := Result{Applied: map[string]int{}}
	ds := make([]decoded, 0, len(events))
	seen := make(map[[2]string]bool, len(events))
	for _, e := range events {
		k := [2]string{e.Env.Source, e.Env.ID}
		if seen[k] {
			res.Duplicates++
			continue
		}
		seen[k] = true
		d, err := decode(e)
		if err != nil {
			return res, err
		}
		ds = append(ds, d)
	}
	jobSet := map[string][2]time.Time{} // first and last event time
	for _, d := range ds {
		if d.touchesJob() {
			t, ok := jobSet[d.jobID]
			if !ok {
				t = [2]time.Time{d.Time, d.Time}
			}
			if d.Time.Before(t[0]) {
				t[0] = d.Time
			}
			if d.Time.After(t[1]) {
				t[1] = d.Time
			}
			jobSet[d.jobID] = t
		}
	}
	jobs := make([]string, 0, len(jobSet))
	for j := range jobSet {
		jobs = append(jobs, j)
	}
	slices.Sort(jobs)
	leaders, outcomePkgs := followKeys(ds)

	var applied map[string]int
	var dups int
	err := s.inTx(ctx, func(ctx context.Context, c txConn) error {
		applied, dups = map[string]int{}, 0
		// The statements before the event log's lookup go to the server
		// with it, in one round trip (insertLog).
		var pre []queued
		// A batch's statements are planned with costs from statistics a
		// fresh or fast-growing projection does not have yet; JIT then
		// compiles statements that touch a few hundred rows, at several
		// milliseconds each. Off for this transaction only.
		pre = append(pre, queued{name: "set jit", sql: `SET LOCAL jit = off`})
		if len(poison) > 0 {
			pre = append(pre, poisonRows(poison))
		}
		if len(ds) == 0 {
			if len(pre) == 1 {
				return nil // only SET LOCAL: nothing to write
			}
			return c.batch(ctx, pre)
		}
		// Serialise with other ledgers on the jobs whose requests others may
		// follow (cross-job dedup): the follower's plan and the leader's
		// outcomes must not each miss the other's uncommitted rows.
		if len(leaders) > 0 {
			pre = append(pre, queued{name: "lock followed jobs", sql: `SELECT pg_advisory_xact_lock($1, hashtext(l)) FROM unnest($2::text[]) AS x(l) ORDER BY l`,
				args: []any{followLockClass, leaders}})
		}
		// Lock the jobs in a fixed order before touching their packages, so
		// two ledger instances applying events of the same job serialise
		// instead of each deriving the job's status from a stale snapshot.
		if len(jobs) > 0 {
			first, last := make([]time.Time, len(jobs)), make([]time.Time, len(jobs))
			for i, j := range jobs {
				first[i], last[i] = jobSet[j][0], jobSet[j][1]
			}
			pre = append(pre, queued{name: "lock jobs", sql: `INSERT INTO jobs (job_id, created_at, updated_at)
				SELECT j, f, l FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS x(j, f, l) ORDER BY j
				ON CONFLICT (job_id) DO UPDATE SET created_at = LEAST(jobs.created_at, EXCLUDED.created_at),
					updated_at = GREATEST(jobs.updated_at, EXCLUDED.updated_at)`,
				args: []any{jobs, first, last}})
		}
		fresh, err := insertLog(ctx, c, pre, ds)
		if err != nil {
			return err
		}
		isNew := make(map[[2]string]bool, len(fresh))
		for _, f := range fresh {
			isNew[[2]string{f.Source, f.ID}] = true
		}
		a := applier{conn: c, sites: map[string]bool{}, locs: map[[2]string]bool{},
			wholePlans: wholePlans(ds, isNew)}
		var hot []decoded
		for _, d := range ds {
			if !isNew[[2]string{d.Env.Source, d.Env.ID}] {
				dups++
				continue
			}
			applied[d.Env.Type]++
			if isHot(d) {
				hot = append(hot, d)
				continue
			}
			if err := a.apply(ctx, d); err != nil {
				return fmt.Errorf("apply %s %s: %w", d.Env.Type, d.Env.ID, err)
			}
		}
		if err := a.applyHot(ctx, hot); err != nil {
			return fmt.Errorf("apply stager events: %w", err)
		}
		if err := a.places(ctx); err != nil {
			return err
		}
		derive := jobs
		if len(jobs) > 0 || len(outcomePkgs) > 0 {
			// Followers copy their leader's rows, which the queue may still
			// be writing: it runs first, in the same round trip.
			followers, err := a.syncFollowers(ctx, jobs, outcomePkgs)
			if err != nil {
				return err
			}
			if len(followers) > 0 {
				derive = slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(jobs), followers...))))
			}
		}
		if err := a.copies(ctx); err != nil {
			return err
		}
		if len(derive) > 0 {
			if err := a.deriveJobs(ctx, derive); err != nil {
				return err
			}
		}
		return a.flush(ctx)
	})
	if err != nil {
		return res, err
	}
	res.Applied, res.Duplicates, res.Poison, res.Jobs = applied, res.Duplicates+dups, len(poison), jobs
	return res, nil
}

// applier applies single events inside one batch's transaction and collects
// the sites and locations they mention.
type applier struct {
	conn     txConn
	queue    []queued // statements run by flush
	staged   []string // packages with a new done
	released []string // jobs released
	sites    map[string]bool
	locs     map[[2]string]bool // location, site
	// wholePlans holds, by job, the latest time of a new plan in this
	// batch that lists all of the job's packages (not split in parts).
	wholePlans map[string]time.Time
}

func (a *applier) place(site, loc string) {
	if site != "" {
		a.sites[site] = true
	}
	if loc != "" {
		a.locs[[2]string{loc, site}] = true
	}
}

// places records sites and locations named by events, so /v1/sites knows
// them even without a topology file. Sorted, to take row locks in order.
func (a *applier) places(ctx context.Context) error {
	sites := slices.Sorted(func(yield func(string) bool) {
		for s := range a.sites {
			if !yield(s) {
				return
			}
		}
	})
	// Both statements skip what is known already: an upsert locks the row
	// it conflicts with even when it changes nothing, and every batch names
	// the same few sites and locations, so two appliers took turns on them,
	// each waiting for the other's commit.
	if len(sites) > 0 {
		if err := a.exec(ctx, "record sites", `INSERT INTO sites (name) SELECT s FROM unnest($1::text[]) AS x(s)
			WHERE NOT EXISTS (SELECT 1 FROM sites WHERE name = x.s) ORDER BY s ON CONFLICT DO NOTHING`, sites); err != nil {
			return err
		}
	}
	if len(a.locs) > 0 {
		keys := make([][2]string, 0, len(a.locs))
		for k := range a.locs {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, func(x, y [2]string) int { return cmp.Compare(x[0], y[0]) })
		names, sitesOf := make([]string, len(keys)), make([]string, len(keys))
		for i, k := range keys {
			names[i], sitesOf[i] = k[0], k[1]
		}
		if err := a.exec(ctx, "record locations", `INSERT INTO locations (name, site)
			SELECT DISTINCT ON (n) n, s FROM unnest($1::text[], $2::text[]) AS x(n, s)
			WHERE NOT EXISTS (SELECT 1 FROM locations l WHERE l.name = x.n AND (l.site <> '' OR x.s = ''))
			ORDER BY n, s DESC
			ON CONFLICT (name) DO UPDATE SET site = EXCLUDED.site WHERE locations.site = '' AND EXCLUDED.site <> ''`,
			names, sitesOf); err != nil {
			return err
		}
	}
	return nil
}

// apply queues the statements of one event that is not applied set-wise
// (applyHot), by its family: plan.go, job.go, archive.go, release.go,
// outcome.go. A request has no statements: it is in the event log only.
func (a *applier) apply(ctx context.Context, d decoded) error {
	switch v := d.data.(type) {
	case event.Submit:
		return a.submit(ctx, d, v)
	case event.Planned:
		return a.planned(ctx, d, v)
	case event.Rejected:
		return a.rejected(ctx, d, v)
	case event.PackageRemoved:
		return a.removed(ctx, d, v)
	case event.Cancel:
		return a.cancel(ctx, d, v)
	case event.Release:
		return a.release(ctx, d, v)
	case event.Stalled:
		return a.stalled(ctx, d, v)
	case event.Released:
		return a.deleted(ctx, d, v)
	}
	return nil // logged only
}

// exec queues a statement. The queue goes to the server in one round trip
// (flush): a batch is dozens of statements, and waiting for each one is
// what limits throughput, not executing them.
// Statements are written for pgx as they go to PostgreSQL: $n placeholders,
// Go slices for arrays (bound in binary). A nil slice is NULL, not an empty
// array: each statement either never gets one or uses it where NULL and
// empty agree (unnest, = ANY).
func (a *applier) exec(_ context.Context, name string, query string, args ...any) error {
	a.queue = append(a.queue, queued{name: name, sql: query, args: args})
	return nil
}

// flush runs the queued statements as one pgx batch on the transaction's
// connection: one round trip, each statement with its arguments bound in
// binary (arrays are not formatted into text and parsed back), and each
// prepared once per connection and then reused from pgx's statement cache,
// so a batch's statements are not parsed and planned again every time.
func (a *applier) flush(ctx context.Context) error {
	if len(a.queue) == 0 {
		return nil
	}
	q := a.queue
	a.queue = nil
	return a.conn.batch(ctx, q)
}

// logColumns are the event log's columns insertLog copies.
var logColumns = []string{"source", "id", "type", "subject", "event_time", "job_id", "package_id", "stream", "stream_seq", "data"}

// insertLog adds the batch's events that are not in the event log yet, in
// batch order, with COPY straight into event_log, and returns them: COPY
// costs a fraction of an INSERT's parsing, planning and conflict checks.
// The events already there are found first by their keys, in the same
// round trip as the statements in pre. A concurrent applier inserting one of
// the same events in between makes the COPY fail on the primary key; the
// transaction is then retried (retryable) and finds the event logged.
func insertLog(ctx context.Context, c txConn, pre []queued, ds []decoded) ([]logKey, error) {
	sources, ids := make([]string, len(ds)), make([]string, len(ds))
	for i, d := range ds {
		sources[i], ids[i] = d.Env.Source, d.Env.ID
	}
	var known []logKey
	if err := c.query(ctx, pre, queued{name: "event log lookup", sql: `SELECT l.source, l.id FROM unnest($1::text[], $2::text[]) AS x(s, i)
			JOIN event_log l ON l.source = x.s AND l.id = x.i`, args: []any{sources, ids}},
		func(r pgx.Rows) error {
			var k logKey
			err := r.Scan(&k.Source, &k.ID)
			known = append(known, k)
			return err
		}); err != nil {
		return nil, err
	}
	have := make(map[logKey]bool, len(known))
	for _, k := range known {
		have[k] = true
	}
	fresh := make([]logKey, 0, len(ds))
	rows := make([][]any, 0, len(ds))
	for _, d := range ds {
		k := logKey{d.Env.Source, d.Env.ID}
		if have[k] {
			continue
		}
		fresh = append(fresh, k)
		rows = append(rows, []any{d.Env.Source, d.Env.ID, d.Env.Type, d.Env.Subject, d.Time, strPtr(d.jobID), strPtr(d.pkgID),
			d.Stream, int64(d.StreamSeq), string(d.Env.Data)})
	}
	if len(rows) == 0 {
		return nil, nil
	}
	n, err := c.copyFrom(ctx, "event_log", logColumns, rows)
	if err != nil {
		return nil, fmt.Errorf("copy event log: %w", err)
	}
	if n != int64(len(rows)) {
		return nil, fmt.Errorf("copy event log: %d of %d rows", n, len(rows))
	}
	return fresh, nil
}

// logKey identifies an event in the log.
type logKey struct{ Source, ID string }

// poisonRows is the statement that records poison, in the batch's order.
// Poison is whatever arrived: every text is made storable, or one bad
// message would fail its batch forever.
func poisonRows(poison []Poison) queued {
	n := len(poison)
	streams, subjects, reasons, msgs := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	ids, types, raws := make([]string, n), make([]string, n), make([]string, n)
	seqs := make([]int64, n)
	for i, p := range poison {
		streams[i], seqs[i], reasons[i] = p.Stream, int64(p.StreamSeq), p.Reason
		subjects[i], msgs[i] = toValidUTF8([]byte(p.Subject)), toValidUTF8([]byte(p.Message))
		ids[i], types[i], raws[i] = toValidUTF8([]byte(p.EventID)), toValidUTF8([]byte(p.EventType)), toValidUTF8(p.Raw)
	}
	return queued{name: "insert poison", sql: `INSERT INTO poison (stream, stream_seq, subject, reason, message, event_id, event_type, raw)
		SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[])
		ON CONFLICT (stream, stream_seq) DO NOTHING`,
		args: []any{streams, seqs, subjects, reasons, msgs, ids, types, raws}}
}

// strPtr is NULL for "" (an event without a job or package).
func strPtr(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// toValidUTF8 makes raw bytes storable as PostgreSQL text, which refuses NUL
// and invalid UTF-8; ranging over a string yields U+FFFD for invalid bytes.
func toValidUTF8(b []byte) string {
	s := string(b)
	out := make([]rune, 0, len(s))
	for _, r := range s {
		if r == 0 {
			r = '\uFFFD' // PostgreSQL text cannot hold NUL
		}
		out = append(out, r)
	}
	return string(out)
}
