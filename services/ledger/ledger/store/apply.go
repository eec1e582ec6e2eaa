package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/jackc/pgx/v5"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
)

// Event is one valid event to apply, with where it came from.
type Event struct {
	Env       event.Envelope
	Stream    string
	StreamSeq uint64
	// Time is the event's time attribute, or the stream's timestamp when the
	// producer left it out; either way a replay gives the same value.
	Time time.Time

	// The typed data, once Decode has run, and the raw data it came from:
	// an Event whose Env is replaced afterwards is decoded again.
	typed        bool
	from         []byte
	data         any
	jobID, pkgID string
}

// ErrNoProjection is Decode's error for a known event type that has no place
// in the projection (a work item, say): it is recorded as poison.
var ErrNoProjection = errors.New("no projection for this event type")

// Decode decodes e's data into its Go type, once: Apply then uses it, and a
// consumer can tell data that validates but does not decode (1.0 for an
// integer; a type the projection has no place for) before it reaches a
// batch, which would fail on every delivery.
func (e *Event) Decode() error {
	d, err := decode(*e)
	if err != nil {
		return err
	}
	e.typed, e.from, e.data, e.jobID, e.pkgID = true, e.Env.Data, d.data, d.jobID, d.pkgID
	return nil
}

// decodedFrom reports whether the typed data was decoded from e.Env.Data.
func (e *Event) decodedFrom() bool {
	a, b := e.from, e.Env.Data
	return e.typed && len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// JobID is the job the decoded event is about ("" for none, or before
// Decode).
func (e *Event) JobID() string { return e.jobID }

// PackageID is the package the decoded event is about ("" for none, or
// before Decode).
func (e *Event) PackageID() string { return e.pkgID }

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

// decoded is an event with its typed data.
type decoded struct {
	Event
	data  any
	jobID string
	pkgID string
	// mergedStart is the time of a started of the same attempt folded into
	// this done (mergeStarts).
	mergedStart time.Time
}

func decode(e Event) (decoded, error) {
	d := decoded{Event: e}
	if e.decodedFrom() {
		d.data, d.jobID, d.pkgID = e.data, e.jobID, e.pkgID
		return d, nil
	}
	var err error
	switch e.Env.Type {
	case event.TypePackageArchived:
		var v event.PackageArchived
		err = event.UnmarshalData(e.Env.Data, &v)
		d.data, d.pkgID = v, v.PackageID
	case event.TypeSubmit:
		var v event.Submit
		err = event.UnmarshalData(e.Env.Data, &v)
		d.data, d.jobID = v, v.JobID
	case event.TypePlanned:
		var v event.Planned
		err = event.UnmarshalData(e.Env.Data, &v)
		d.data, d.jobID = v, v.JobID
	case event.TypeRejected:
		var v event.Rejected
		err = event.UnmarshalData(e.Env.Data, &v)
		d.data, d.jobID = v, v.JobID
	case event.TypeStarted:
		var v event.Started
		err = event.UnmarshalData(e.Env.Data, &v)
		d.data, d.jobID, d.pkgID = v, v.JobID, v.PackageID
	case event.TypeProgress:
		var v event.Progress
		err = event.UnmarshalData(e.Env.Data, &v)
		d.data, d.jobID, d.pkgID = v, v.JobID, v.PackageID
	case event.TypeDone:
		var v event.Done
		err = event.UnmarshalData(e.Env.Data, &v)
		d.data, d.jobID, d.pkgID = v, v.JobID, v.PackageID
	case event.TypeFailed:
		var v event.Failed
		err = event.UnmarshalData(e.Env.Data, &v)
		d.data, d.jobID, d.pkgID = v, v.JobID, v.PackageID
	case event.TypePackageRemoved:
		var v event.PackageRemoved
		err = event.UnmarshalData(e.Env.Data, &v)
		d.data, d.pkgID = v, v.PackageID
	case event.TypeCancel:
		var v event.Cancel
		err = event.UnmarshalData(e.Env.Data, &v)
		d.data, d.jobID = v, v.JobID
	case event.TypeRelease:
		var v event.Release
		err = event.UnmarshalData(e.Env.Data, &v)
		d.data, d.jobID = v, v.JobID
	case event.TypeReleased:
		var v event.Released
		err = event.UnmarshalData(e.Env.Data, &v)
		d.data, d.pkgID = v, v.PackageID
	case event.TypeStalled:
		var v event.Stalled
		err = event.UnmarshalData(e.Env.Data, &v)
		d.data, d.jobID, d.pkgID = v, v.JobID, v.PackageID
	case event.TypeRequest:
		// Requests live in the work queue, not in the streams the ledger
		// reads; one arriving here is logged and otherwise ignored.
		var v event.Request
		err = event.UnmarshalData(e.Env.Data, &v)
		d.data, d.jobID, d.pkgID = v, v.JobID, v.PackageID
	default:
		return d, fmt.Errorf("%w: %q", ErrNoProjection, e.Env.Type)
	}
	if err != nil {
		return d, fmt.Errorf("decode %s: %w", e.Env.Type, err)
	}
	return d, nil
}

// touchesJob reports whether the event changes its job's row. A rejection
// for a job id conflict is about another submit and must leave the existing
// job alone.
func (d decoded) touchesJob() bool {
	if d.jobID == "" {
		return false
	}
	if r, ok := d.data.(event.Rejected); ok && r.Reason == event.ReasonJobIDConflict {
		return false
	}
	_, isReq := d.data.(event.Request)
	return !isReq
}

type poisonRow struct {
	bun.BaseModel `bun:"table:poison,alias:po"`
	Stream        string `bun:"stream"`
	StreamSeq     int64  `bun:"stream_seq"`
	Subject       string `bun:"subject"`
	Reason        string `bun:"reason"`
	Message       string `bun:"message"`
	EventID       string `bun:"event_id"`
	EventType     string `bun:"event_type"`
	Raw           string `bun:"raw"`
}

func strPtr(s string) *string {
	if s == "" {
		return nil
	}
	return &s
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
	err := s.inTx(ctx, func(ctx context.Context, tx bun.Tx, c txConn) error {
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
			rows := make([]poisonRow, len(poison))
			for i, p := range poison {
				// Poison is whatever arrived: every text is made storable,
				// or one bad message would fail its batch forever.
				rows[i] = poisonRow{Stream: p.Stream, StreamSeq: int64(p.StreamSeq), Subject: toValidUTF8([]byte(p.Subject)),
					Reason: p.Reason, Message: toValidUTF8([]byte(p.Message)), EventID: toValidUTF8([]byte(p.EventID)),
					EventType: toValidUTF8([]byte(p.EventType)), Raw: toValidUTF8(p.Raw)}
			}
			if _, err := tx.NewInsert().Model(&rows).On("CONFLICT (stream, stream_seq) DO NOTHING").Exec(ctx); err != nil {
				return fmt.Errorf("insert poison: %w", err)
			}
		}
		if len(ds) == 0 {
			return nil
		}
		// Serialise with other ledgers on the jobs whose requests others may
		// follow (cross-job dedup): the follower's plan and the leader's
		// outcomes must not each miss the other's uncommitted rows.
		if len(leaders) > 0 {
			pre = append(pre, queued{name: "lock followed jobs", sql: numberPlaceholders(
				`SELECT pg_advisory_xact_lock(?, hashtext(l)) FROM unnest(?::text[]) AS x(l) ORDER BY l`),
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
			pre = append(pre, queued{name: "lock jobs", sql: numberPlaceholders(`INSERT INTO jobs (job_id, created_at, updated_at)
				SELECT j, f, l FROM unnest(?::text[], ?::timestamptz[], ?::timestamptz[]) AS x(j, f, l) ORDER BY j
				ON CONFLICT (job_id) DO UPDATE SET created_at = LEAST(jobs.created_at, EXCLUDED.created_at),
					updated_at = GREATEST(jobs.updated_at, EXCLUDED.updated_at)`),
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
		a := applier{tx: tx, conn: c, sites: map[string]bool{}, locs: map[[2]string]bool{},
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
type logKey struct {
	Source string `bun:"source"`
	ID     string `bun:"id"`
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

// applier applies single events inside one batch's transaction and collects
// the sites and locations they mention.
type applier struct {
	tx       bun.Tx
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
		if err := a.exec(ctx, "record sites", `INSERT INTO sites (name) SELECT s FROM unnest(?::text[]) AS x(s)
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
			SELECT DISTINCT ON (n) n, s FROM unnest(?::text[], ?::text[]) AS x(n, s)
			WHERE NOT EXISTS (SELECT 1 FROM locations l WHERE l.name = x.n AND (l.site <> '' OR x.s = ''))
			ORDER BY n, s DESC
			ON CONFLICT (name) DO UPDATE SET site = EXCLUDED.site WHERE locations.site = '' AND EXCLUDED.site <> ''`,
			names, sitesOf); err != nil {
			return err
		}
	}
	return nil
}

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
		return a.exec(ctx, "cancel job", `UPDATE jobs SET cancelled = true,
				cancelled_at = LEAST(cancelled_at, ?), cancel_reason = CASE WHEN cancelled_at IS NULL OR ? < cancelled_at THEN ? ELSE cancel_reason END,
				cancelled_by = CASE WHEN cancelled_at IS NULL OR ? < cancelled_at THEN ? ELSE cancelled_by END
			WHERE job_id = ?`, d.Time, d.Time, v.Reason, d.Time, v.RequestedBy, v.JobID)
	case event.Release:
		return a.release(ctx, d, v)
	case event.Stalled:
		return a.stalled(ctx, d, v)
	case event.Released:
		return a.deleted(ctx, d, v)
	}
	return nil // logged only
}

// queued is a statement waiting for flush, in PostgreSQL's placeholders.
type queued struct {
	name, sql string
	args      []any
}

// exec queues a statement. The queue goes to the server in one round trip
// (flush): a batch is dozens of statements, and waiting for each one is
// what limits throughput, not executing them.
func (a *applier) exec(_ context.Context, name string, query string, args ...any) error {
	a.queue = append(a.queue, queued{name: name, sql: numberPlaceholders(query), args: pgxArgs(args)})
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

// numberPlaceholders turns bun's ? placeholders into $1, $2, … (none of the
// applier's statements has a ? of its own).
func numberPlaceholders(q string) string {
	var b strings.Builder
	n := 0
	for _, r := range q {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// pgxArgs unwraps bun's array wrappers: pgx binds Go slices as arrays
// itself. A nil slice becomes an empty one, not NULL (x <> ALL(NULL) is
// never true).
func pgxArgs(args []any) []any {
	out := make([]any, len(args))
	for i, v := range args {
		if av, ok := v.(*pgdialect.ArrayValue); ok {
			v = av.Value()
			if rv := reflect.ValueOf(v); rv.Kind() == reflect.Slice && rv.IsNil() {
				v = reflect.MakeSlice(rv.Type(), 0, 0).Interface()
			}
		}
		out[i] = v
	}
	return out
}

// removed marks an archive copy gone. Arriving before the copy's archived
// event, it leaves a placeholder that the archived event fills in; a copy
// archived again after its removal is active again.
func (a *applier) removed(ctx context.Context, d decoded, v event.PackageRemoved) error {
	a.place("", v.Location)
	return a.exec(ctx, "remove archive copy", `INSERT INTO archive_copies (package_id, location, key, size_bytes, checksum, format,
			archived_at, status, removed_at, removed_reason)
		VALUES (?, ?, ?, 0, '', '', ?, 'removed', ?, ?)
		ON CONFLICT (package_id, location) DO UPDATE SET
			status = CASE WHEN EXCLUDED.removed_at >= archive_copies.archived_at THEN 'removed' ELSE archive_copies.status END,
			removed_at = CASE WHEN EXCLUDED.removed_at >= archive_copies.archived_at
				THEN GREATEST(archive_copies.removed_at, EXCLUDED.removed_at) ELSE archive_copies.removed_at END,
			removed_reason = CASE WHEN EXCLUDED.removed_at >= archive_copies.archived_at
				AND (archive_copies.removed_at IS NULL OR EXCLUDED.removed_at >= archive_copies.removed_at)
				THEN EXCLUDED.removed_reason ELSE archive_copies.removed_reason END`,
		v.PackageID, v.Location, v.Key, d.Time, d.Time, v.Reason)
}

// release records that a job no longer needs its staged copies; a copy no
// other unreleased job holds becomes deletion_scheduled (CCAT's status).
func (a *applier) release(ctx context.Context, d decoded, v event.Release) error {
	a.released = append(a.released, v.JobID)
	return a.exec(ctx, "release job", `UPDATE jobs SET released_at = LEAST(released_at, ?),
			released_by = CASE WHEN released_at IS NULL OR ? < released_at THEN ? ELSE released_by END
		WHERE job_id = ?`, d.Time, d.Time, v.RequestedBy, v.JobID)
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
			AND sc.package_id = ANY(ARRAY(SELECT unnest(?::text[]) UNION SELECT package_id FROM job_packages WHERE job_id = ANY(?::text[])))`,
		pgdialect.Array(a.staged), pgdialect.Array(a.released))
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
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (package_id, location) DO UPDATE SET status = EXCLUDED.status,
			deleted_at = GREATEST(sc.deleted_at, EXCLUDED.deleted_at), bytes_freed = EXCLUDED.bytes_freed,
			deletion_reason = EXCLUDED.deletion_reason
		WHERE sc.staged_at <= EXCLUDED.deleted_at AND (sc.status <> 'deleted' OR EXCLUDED.status = 'deleted')`,
		v.PackageID, v.Location, v.Site, v.Path, job, d.Time, status, d.Time, v.BytesFreed, v.Reason)
}

// stalled ends a package the planner gave up on exactly like a permanent
// failure: failed with the event's reason, unless it already completed or
// failed (terminal); it overrides a cancel as a failure does.
func (a *applier) stalled(ctx context.Context, d decoded, v event.Stalled) error {
	a.place(v.Site, v.Location)
	return a.exec(ctx, "stalled package", `INSERT INTO job_packages AS jp (job_id, package_id, status, reason, message,
			request_id, dest_site, dest_location, completed_at, updated_at)
		VALUES (?, ?, 'failed', ?, ?, ?, ?, ?, ?, ?)
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

// sqlSubmitJob records a submit on its job row; its arguments are the
// submit's id, requester, priority, note, destination site and location,
// time, job id and id again.
const sqlSubmitJob = `UPDATE jobs SET submit_id = ?,
		requested_by = CASE WHEN planned THEN requested_by ELSE ? END,
		priority = CASE WHEN planned THEN priority ELSE ? END,
		note = CASE WHEN planned THEN note ELSE ? END,
		dest_site = CASE WHEN planned THEN dest_site ELSE ? END,
		dest_location = CASE WHEN planned THEN dest_location ELSE ? END,
		updated_at = GREATEST(updated_at, ?)
	WHERE job_id = ? AND (submit_id IS NULL OR submit_id = ?)`

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
		SELECT ?, p, ?, ?, ? FROM unnest(?::text[]) AS x(p), owner WHERE owner.owns ORDER BY p
		ON CONFLICT (job_id, package_id) DO NOTHING`,
		append(job, v.JobID, v.Destination.Site, v.Destination.Location, d.Time, pgdialect.Array(v.Packages))...)
}

func (a *applier) planned(ctx context.Context, d decoded, v event.Planned) error {
	a.place(v.Destination.Site, v.Destination.Location)
	part, parts := max(v.Part, 1), max(v.Parts, 1)
	if err := a.exec(ctx, "plan job", `UPDATE jobs SET planned = true, requested_by = ?, priority = ?, note = ?,
			dest_site = ?, dest_location = ?, updated_at = GREATEST(updated_at, ?),
			plan_parts = GREATEST(plan_parts, ?),
			planned_parts = CASE WHEN ?::integer = ANY(planned_parts) THEN planned_parts ELSE array_append(planned_parts, ?::integer) END
		WHERE job_id = ?`,
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
	if v.Parts <= 1 {
		if err := a.exec(ctx, "drop unplanned packages", `DELETE FROM job_packages WHERE job_id = ? AND package_id <> ALL(?::text[])`,
			v.JobID, pgdialect.Array(ids)); err != nil {
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
		SELECT ?, p, st, re, m, r, sl, ss, sst, sk, ?, ?, sz, cs, ?, CASE WHEN st = 'failed' THEN ?::timestamptz END, ?
		FROM unnest(?::text[], ?::text[], ?::text[], ?::text[], ?::text[], ?::text[], ?::text[], ?::text[], ?::text[], ?::bigint[], ?::text[])
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
		pgdialect.Array(ids), pgdialect.Array(status), pgdialect.Array(reason), pgdialect.Array(msg), pgdialect.Array(req),
		pgdialect.Array(srcLoc), pgdialect.Array(srcSite), pgdialect.Array(srcStorage), pgdialect.Array(srcKey),
		pgdialect.Array(sizes), pgdialect.Array(sum))
}

func (a *applier) rejected(ctx context.Context, d decoded, v event.Rejected) error {
	if !d.touchesJob() {
		return nil // recorded in the log only
	}
	return a.exec(ctx, "reject job", `UPDATE jobs SET rejected = true, reason = ?, message = ?,
			submit_id = COALESCE(submit_id, ?), completed_at = ?, updated_at = GREATEST(updated_at, ?)
		WHERE job_id = ? AND NOT planned AND (submit_id IS NULL OR submit_id = ?)`,
		v.Reason, v.Message, v.SubmitID, d.Time, d.Time, v.JobID, v.SubmitID)
}

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

// deriveJobs recomputes the counts, bytes and status of jobs from their
// packages: all completed → completed; all terminal with any failed →
// failed; any attempt started → in_progress; all pending → pending; else
// scheduled. A rejected job stays rejected.
func (a *applier) deriveJobs(ctx context.Context, jobs []string) error {
	// A cancelled job's unfinished packages are cancelled, whenever their
	// events arrive relative to the cancel; only a done or a permanent
	// failure (what really happened) overrides that.
	if err := a.exec(ctx, "cancel packages", `UPDATE job_packages jp SET status = 'cancelled', reason = 'cancelled',
			message = CASE WHEN j.cancel_reason <> '' THEN j.cancel_reason ELSE 'job cancelled' END,
			completed_at = j.cancelled_at
		FROM jobs j WHERE j.job_id = jp.job_id AND j.job_id = ANY(?::text[]) AND jp.job_id = ANY(?::text[]) AND j.cancelled
			AND jp.status IN ('pending', 'scheduled', 'in_progress')`,
		pgdialect.Array(jobs), pgdialect.Array(jobs)); err != nil {
		return err
	}
	return a.exec(ctx, "derive job status", `WITH c AS (
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
			FROM job_packages WHERE job_id = ANY(?::text[]) GROUP BY job_id
		), d AS (
			SELECT ids.job_id, COALESCE(c.total, 0) AS total, COALESCE(c.pending, 0) AS pending,
				COALESCE(c.scheduled, 0) AS scheduled, COALESCE(c.in_progress, 0) AS in_progress,
				COALESCE(c.completed, 0) AS completed, COALESCE(c.failed, 0) AS failed, COALESCE(c.cancelled, 0) AS cancelled,
				COALESCE(c.started, false) AS started, c.last_end, c.fail_reason,
				COALESCE(c.bytes_total, 0) AS bytes_total, COALESCE(c.bytes_done, 0) AS bytes_done,
				COALESCE(c.bytes_staged, 0) AS bytes_staged
			FROM unnest(?::text[]) AS ids(job_id) LEFT JOIN c USING (job_id)
		)
		UPDATE jobs j SET
			n_total = d.total, n_pending = d.pending, n_scheduled = d.scheduled, n_in_progress = d.in_progress,
			n_completed = d.completed, n_failed = d.failed, n_cancelled = d.cancelled, bytes_total = d.bytes_total, bytes_done = d.bytes_done,
			bytes_staged = d.bytes_staged,
			status = CASE WHEN j.rejected THEN 'rejected'
				WHEN d.total = 0 AND j.cancelled THEN 'cancelled'
				WHEN d.total = 0 THEN 'pending'
				-- Outcomes may arrive before (part of) the plan: until every
				-- part is known, the packages seen so far are not the job.
				WHEN NOT (j.planned AND cardinality(j.planned_parts) >= j.plan_parts) AND NOT j.cancelled
					THEN CASE WHEN d.started THEN 'in_progress' ELSE 'pending' END
				WHEN d.completed = d.total THEN 'completed'
				WHEN d.cancelled > 0 OR j.cancelled THEN 'cancelled'
				WHEN d.completed + d.failed = d.total THEN 'failed'
				WHEN d.started THEN 'in_progress'
				WHEN d.pending = d.total THEN 'pending'
				ELSE 'scheduled' END,
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
			completed_at = CASE WHEN j.rejected THEN j.completed_at
				WHEN NOT (j.planned AND cardinality(j.planned_parts) >= j.plan_parts) AND NOT j.cancelled THEN NULL
				WHEN d.total > 0 AND d.completed = d.total THEN d.last_end
				WHEN j.cancelled THEN j.cancelled_at
				WHEN d.total > 0 AND d.completed + d.failed = d.total THEN d.last_end
				ELSE NULL END,
			updated_at = GREATEST(j.updated_at, d.last_end)
		FROM d WHERE j.job_id = d.job_id`, pgdialect.Array(jobs), pgdialect.Array(jobs))
}
