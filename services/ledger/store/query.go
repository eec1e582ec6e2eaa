package store

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
	"github.com/uptrace/bun"
)

// The read side answers in the /v1 wire types of shared/ledgerapi, which
// the API encodes as they are: rows are scanned into the private *Row types
// here (they carry the column names) and converted.

type jobRow struct {
	JobID        string       `bun:"job_id"`
	Status       string       `bun:"status"`
	Reason       string       `bun:"reason"`
	Message      string       `bun:"message"`
	RequestedBy  string       `bun:"requested_by"`
	Priority     string       `bun:"priority"`
	Note         string       `bun:"note"`
	DestSite     string       `bun:"dest_site"`
	DestLocation string       `bun:"dest_location"`
	CreatedAt    time.Time    `bun:"created_at"`
	UpdatedAt    time.Time    `bun:"updated_at"`
	CompletedAt  bun.NullTime `bun:"completed_at"`
	NTotal       int          `bun:"n_total"`
	NPending     int          `bun:"n_pending"`
	NScheduled   int          `bun:"n_scheduled"`
	NInProgress  int          `bun:"n_in_progress"`
	NCompleted   int          `bun:"n_completed"`
	NFailed      int          `bun:"n_failed"`
	NCancelled   int          `bun:"n_cancelled"`
	BytesTotal   int64        `bun:"bytes_total"`
	BytesDone    int64        `bun:"bytes_done"`
}

const jobCols = `job_id, status, reason, message, requested_by, priority, note, dest_site, dest_location,
	created_at, updated_at, completed_at, n_total, n_pending, n_scheduled, n_in_progress, n_completed, n_failed,
	n_cancelled, bytes_total, bytes_done`

func nullTime(t bun.NullTime) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

func (r jobRow) summary() ledgerapi.JobSummary {
	return ledgerapi.JobSummary{
		JobID: r.JobID, Status: r.Status, Reason: r.Reason, Message: r.Message, RequestedBy: r.RequestedBy,
		Priority: r.Priority, Note: r.Note, Destination: ledgerapi.Place{Site: r.DestSite, Location: r.DestLocation},
		CreatedAt: r.CreatedAt.UTC(), UpdatedAt: r.UpdatedAt.UTC(), CompletedAt: nullTime(r.CompletedAt),
		Counts: ledgerapi.Counts{Total: r.NTotal, Pending: r.NPending, Scheduled: r.NScheduled, InProgress: r.NInProgress,
			Completed: r.NCompleted, Failed: r.NFailed, Cancelled: r.NCancelled},
		BytesTotal: r.BytesTotal, BytesDone: r.BytesDone,
	}
}

type pkgRow struct {
	JobID           string          `bun:"job_id"`
	PackageID       string          `bun:"package_id"`
	Status          string          `bun:"status"`
	Reason          string          `bun:"reason"`
	Message         string          `bun:"message"`
	Attempts        int             `bun:"attempts"`
	RequestID       string          `bun:"request_id"`
	SrcLocation     string          `bun:"src_location"`
	SrcSite         string          `bun:"src_site"`
	SrcStorage      string          `bun:"src_storage"`
	SrcKey          string          `bun:"src_key"`
	DestSite        string          `bun:"dest_site"`
	DestLocation    string          `bun:"dest_location"`
	Path            string          `bun:"path"`
	SizeBytes       int64           `bun:"size_bytes"`
	Files           int             `bun:"files"`
	AlreadyPresent  bool            `bun:"already_present"`
	PlannedAt       bun.NullTime    `bun:"planned_at"`
	StartedAt       bun.NullTime    `bun:"started_at"`
	CompletedAt     bun.NullTime    `bun:"completed_at"`
	DurationSeconds sql.NullFloat64 `bun:"duration_seconds"`
	ProgressAttempt int             `bun:"progress_attempt"`
	ProgressDone    int64           `bun:"progress_bytes_done"`
	ProgressTotal   int64           `bun:"progress_bytes_total"`
	ProgressRate    float64         `bun:"progress_rate"`
	ProgressAt      bun.NullTime    `bun:"progress_updated_at"`
}

const pkgCols = `job_id, package_id, status, reason, message, attempts, request_id, src_location, src_site, src_storage,
	src_key, dest_site, dest_location, path, size_bytes, files, already_present, planned_at, started_at, completed_at,
	duration_seconds, progress_attempt, progress_bytes_done, progress_bytes_total, progress_rate, progress_updated_at`

func (r pkgRow) pkg() ledgerapi.Package {
	p := ledgerapi.Package{
		PackageID: r.PackageID, Status: r.Status, Reason: r.Reason, Message: r.Message, Attempts: r.Attempts,
		RequestID:   r.RequestID,
		Source:      ledgerapi.Source{Location: r.SrcLocation, Site: r.SrcSite, Storage: r.SrcStorage, Key: r.SrcKey},
		Destination: ledgerapi.Place{Site: r.DestSite, Location: r.DestLocation}, Path: r.Path, SizeBytes: r.SizeBytes,
		Files: r.Files, AlreadyPresent: r.AlreadyPresent, PlannedAt: nullTime(r.PlannedAt),
		StartedAt: nullTime(r.StartedAt), CompletedAt: nullTime(r.CompletedAt),
		Progress: ledgerapi.Progress{BytesDone: r.ProgressDone, BytesTotal: r.ProgressTotal, RateBytesPerSecond: r.ProgressRate,
			UpdatedAt: nullTime(r.ProgressAt)},
	}
	if r.DurationSeconds.Valid {
		d := r.DurationSeconds.Float64
		p.DurationSeconds = &d
	}
	if r.Status == "completed" && p.SizeBytes > 0 {
		// A finished package shows full progress whatever the last report said.
		p.Progress.BytesDone, p.Progress.BytesTotal = p.SizeBytes, p.SizeBytes
	}
	return p
}

// JobFilter selects and orders jobs for ListJobs.
type JobFilter struct {
	Status      string
	Site        string
	Location    string
	RequestedBy string
	Since       time.Time // created at or after
	Until       time.Time // created before
	Query       string    // substring of job id or note
	Sort        string    // "created" (default) or "updated", newest first
	Limit       int
	Cursor      string
}

// ErrBadCursor is returned for a cursor ListJobs did not produce.
var ErrBadCursor = errors.New("malformed cursor")

type cursor struct {
	T  time.Time `json:"t"`
	ID string    `json:"id"`
}

func encodeCursor(t time.Time, id string) string {
	b, _ := json.Marshal(cursor{T: t, ID: id})
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeCursor(s string) (cursor, error) {
	var c cursor
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return c, ErrBadCursor
	}
	if err := json.Unmarshal(b, &c); err != nil || c.ID == "" || strings.ContainsRune(c.ID, 0) || !utf8.ValidString(c.ID) {
		return c, ErrBadCursor
	}
	return c, nil
}

// ListJobs returns a page of jobs, newest first, and the cursor of the next
// page ("" when this is the last). Pagination is by keyset on (time, job_id),
// so pages stay stable while new jobs arrive.
func (s *Store) ListJobs(ctx context.Context, f JobFilter) ([]ledgerapi.JobSummary, string, error) {
	col := "created_at"
	if f.Sort == "updated" {
		col = "updated_at"
	}
	var where []string
	var args []any
	add := func(cond string, a ...any) { where = append(where, cond); args = append(args, a...) }
	if f.Status != "" {
		add("status = ?", f.Status)
	}
	if f.Site != "" {
		add("dest_site = ?", f.Site)
	}
	if f.Location != "" {
		add("dest_location = ?", f.Location)
	}
	if f.RequestedBy != "" {
		add("requested_by = ?", f.RequestedBy)
	}
	if !f.Since.IsZero() {
		add("created_at >= ?", f.Since)
	}
	if !f.Until.IsZero() {
		add("created_at < ?", f.Until)
	}
	if f.Query != "" {
		pat := "%" + strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(f.Query) + "%"
		add("(job_id ILIKE ? OR note ILIKE ?)", pat, pat)
	}
	if f.Cursor != "" {
		c, err := decodeCursor(f.Cursor)
		if err != nil {
			return nil, "", err
		}
		add("("+col+", job_id) < (?, ?)", c.T, c.ID)
	}
	q := "SELECT " + jobCols + " FROM jobs"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY " + col + " DESC, job_id DESC LIMIT ?"
	args = append(args, f.Limit+1)
	var rows []jobRow
	if err := s.db.NewRaw(q, args...).Scan(ctx, &rows); err != nil {
		return nil, "", fmt.Errorf("list jobs: %w", err)
	}
	next := ""
	if len(rows) > f.Limit {
		rows = rows[:f.Limit]
		last := rows[len(rows)-1]
		t := last.CreatedAt
		if col == "updated_at" {
			t = last.UpdatedAt
		}
		next = encodeCursor(t, last.JobID)
	}
	out := make([]ledgerapi.JobSummary, len(rows))
	for i, r := range rows {
		out[i] = r.summary()
	}
	return out, next, nil
}

// GetJob returns a job with its packages, or ErrNotFound.
func (s *Store) GetJob(ctx context.Context, id string) (ledgerapi.Job, error) {
	var rows []jobRow
	if err := s.db.NewRaw("SELECT "+jobCols+" FROM jobs WHERE job_id = ?", id).Scan(ctx, &rows); err != nil {
		return ledgerapi.Job{}, fmt.Errorf("get job %s: %w", id, err)
	}
	if len(rows) == 0 {
		return ledgerapi.Job{}, ErrNotFound
	}
	var pkgs []pkgRow
	if err := s.db.NewRaw("SELECT "+pkgCols+" FROM job_packages WHERE job_id = ? ORDER BY package_id", id).Scan(ctx, &pkgs); err != nil {
		return ledgerapi.Job{}, fmt.Errorf("get packages of job %s: %w", id, err)
	}
	j := ledgerapi.Job{JobSummary: rows[0].summary(), Packages: make([]ledgerapi.Package, len(pkgs))}
	for i, p := range pkgs {
		j.Packages[i] = p.pkg()
	}
	return j, nil
}

// logRow is a row of event_log as ledgerapi.LogEntry (the conversion
// fails to compile if the two drift apart).
type logRow struct {
	Seq       int64           `bun:"seq"`
	Source    string          `bun:"source"`
	ID        string          `bun:"id"`
	Type      string          `bun:"type"`
	Subject   string          `bun:"subject"`
	Time      time.Time       `bun:"event_time"`
	JobID     *string         `bun:"job_id"`
	PackageID *string         `bun:"package_id"`
	Stream    string          `bun:"stream"`
	StreamSeq int64           `bun:"stream_seq"`
	Data      json.RawMessage `bun:"data,type:jsonb"`
}

// JobEvents returns the timeline of a job, oldest first, or ErrNotFound.
func (s *Store) JobEvents(ctx context.Context, id string) ([]ledgerapi.LogEntry, error) {
	var rows []logRow
	if err := s.db.NewRaw(`SELECT seq, source, id, type, subject, event_time, job_id, package_id, stream, stream_seq, data
		FROM event_log WHERE job_id = ? ORDER BY event_time, seq`, id).Scan(ctx, &rows); err != nil {
		return nil, fmt.Errorf("events of job %s: %w", id, err)
	}
	if len(rows) == 0 {
		return nil, ErrNotFound
	}
	out := make([]ledgerapi.LogEntry, len(rows))
	for i, r := range rows {
		out[i] = ledgerapi.LogEntry(r)
		out[i].Time = r.Time.UTC()
	}
	return out, nil
}

// archiveRow is a row of archive_copies as ledgerapi.ArchiveCopy.
type archiveRow struct {
	Location      string     `bun:"location"`
	Site          string     `bun:"site"`
	Key           string     `bun:"key"`
	SizeBytes     int64      `bun:"size_bytes"`
	Checksum      string     `bun:"checksum"`
	Format        string     `bun:"format"`
	Files         int        `bun:"files"`
	ArchivedAt    time.Time  `bun:"archived_at"`
	Status        string     `bun:"status"`
	RemovedAt     *time.Time `bun:"removed_at"`
	RemovedReason string     `bun:"removed_reason"`
}

// stagedRow is a row of staged_copies as ledgerapi.StagedCopy.
type stagedRow struct {
	Location  string    `bun:"location"`
	Site      string    `bun:"site"`
	Path      string    `bun:"path"`
	Status    string    `bun:"status"`
	JobID     string    `bun:"job_id"`
	SizeBytes int64     `bun:"size_bytes"`
	Files     int       `bun:"files"`
	StagedAt  time.Time `bun:"staged_at"`
}

// GetPackage returns a package's copies and the jobs that asked for it, or
// ErrNotFound when the ledger has never heard of it.
func (s *Store) GetPackage(ctx context.Context, id string) (ledgerapi.PackageInfo, error) {
	out := ledgerapi.PackageInfo{PackageID: id, ArchiveCopies: []ledgerapi.ArchiveCopy{}, StagedCopies: []ledgerapi.StagedCopy{},
		Jobs: []ledgerapi.Package{}}
	var archived []archiveRow
	var staged []stagedRow
	if err := s.db.NewRaw(`SELECT a.location, COALESCE(l.site, '') AS site, a.key, a.size_bytes, a.checksum, a.format, a.files, a.archived_at,
		a.status, a.removed_at, a.removed_reason
		FROM archive_copies a LEFT JOIN locations l ON l.name = a.location WHERE a.package_id = ? ORDER BY a.location`, id).
		Scan(ctx, &archived); err != nil {
		return out, fmt.Errorf("archive copies of %s: %w", id, err)
	}
	if err := s.db.NewRaw(`SELECT location, site, path, status, job_id, size_bytes, files, staged_at
		FROM staged_copies WHERE package_id = ? ORDER BY location`, id).Scan(ctx, &staged); err != nil {
		return out, fmt.Errorf("staged copies of %s: %w", id, err)
	}
	for _, r := range archived {
		out.ArchiveCopies = append(out.ArchiveCopies, ledgerapi.ArchiveCopy(r))
	}
	for _, r := range staged {
		out.StagedCopies = append(out.StagedCopies, ledgerapi.StagedCopy(r))
	}
	var pkgs []pkgRow
	if err := s.db.NewRaw("SELECT "+pkgCols+" FROM job_packages WHERE package_id = ? ORDER BY job_id", id).Scan(ctx, &pkgs); err != nil {
		return out, fmt.Errorf("jobs of package %s: %w", id, err)
	}
	for _, p := range pkgs {
		jp := p.pkg()
		jp.JobID = p.JobID
		out.Jobs = append(out.Jobs, jp)
	}
	for _, c := range out.ArchiveCopies {
		if c.Checksum != "" {
			out.SizeBytes, out.Checksum = c.SizeBytes, c.Checksum
		}
	}
	if len(out.ArchiveCopies) == 0 && len(out.StagedCopies) == 0 && len(out.Jobs) == 0 {
		return out, ErrNotFound
	}
	return out, nil
}

// locationRow is a row of locations as ledgerapi.Location.
type locationRow struct {
	Name     string `bun:"name"`
	Site     string `bun:"site"`
	Type     string `bun:"type"`
	Storage  string `bun:"storage"`
	Priority int    `bun:"priority"`
	Active   bool   `bun:"active"`
}

// Sites returns every known site (from the topology and from events) with
// what the projection knows of it; Backlog, Stagers and LiveError are what
// NATS knows, left for the API to fill.
func (s *Store) Sites(ctx context.Context, now time.Time) ([]ledgerapi.Site, error) {
	var names []string
	if err := s.db.NewRaw("SELECT name FROM sites ORDER BY name").Scan(ctx, &names); err != nil {
		return nil, fmt.Errorf("list sites: %w", err)
	}
	var locs []locationRow
	if err := s.db.NewRaw("SELECT name, site, type, storage, priority, active FROM locations ORDER BY site, priority, name").
		Scan(ctx, &locs); err != nil {
		return nil, fmt.Errorf("list locations: %w", err)
	}
	var counts []struct {
		Site     string `bun:"dest_site"`
		Location string `bun:"dest_location"`
		Status   string `bun:"status"`
		N        int    `bun:"n"`
	}
	// Kept by triggers as deltas of the jobs' package counters (migration
	// site_counts): a sum over a few thousand rows at most, not a count of
	// every job package.
	if err := s.db.NewRaw(`SELECT site AS dest_site, location AS dest_location, status, sum(n) AS n FROM site_count_deltas
		GROUP BY site, location, status HAVING sum(n) <> 0`).Scan(ctx, &counts); err != nil {
		return nil, fmt.Errorf("count packages by site: %w", err)
	}
	var staged []struct {
		Site string `bun:"dest_site"`
		Hour int64  `bun:"hour"`
		Day  int64  `bun:"day"`
	}
	// Deltas of the jobs' bytes_staged, kept by triggers (migration
	// site_bytes) so that a package's done stays a HOT update.
	if err := s.db.NewRaw(`SELECT site AS dest_site,
			COALESCE(sum(bytes) FILTER (WHERE at >= ?), 0) AS hour,
			COALESCE(sum(bytes), 0) AS day
		FROM site_bytes_deltas WHERE at >= ?
		GROUP BY site`, now.Add(-time.Hour), now.Add(-24*time.Hour)).Scan(ctx, &staged); err != nil {
		return nil, fmt.Errorf("bytes staged by site: %w", err)
	}
	idx := map[string]*ledgerapi.Site{}
	out := make([]ledgerapi.Site, len(names))
	for i, n := range names {
		out[i] = ledgerapi.Site{Name: n, Locations: []ledgerapi.Location{}, Packages: map[string]int{
			"pending": 0, "scheduled": 0, "in_progress": 0, "completed": 0, "failed": 0, "cancelled": 0},
			PackagesByLocation: map[string]map[string]int{}}
		idx[n] = &out[i]
	}
	for _, l := range locs {
		if st := idx[l.Site]; st != nil {
			st.Locations = append(st.Locations, ledgerapi.Location(l))
		}
	}
	for _, c := range counts {
		if st := idx[c.Site]; st != nil {
			st.Packages[c.Status] += c.N
			if c.Location != "" {
				if st.PackagesByLocation[c.Location] == nil {
					st.PackagesByLocation[c.Location] = map[string]int{}
				}
				st.PackagesByLocation[c.Location][c.Status] = c.N
			}
		}
	}
	for _, b := range staged {
		if st := idx[b.Site]; st != nil {
			st.BytesStagedHour, st.BytesStagedDay = b.Hour, b.Day
			st.ThroughputHourBs = float64(b.Hour) / 3600
		}
	}
	return out, nil
}

// CompactSiteCounts folds the site counters' delta rows into one row per
// site, location and status, and the bytes staged into one row per site and
// minute (hour, once older than a day), and returns how many rows it
// removed. Deltas
// committed meanwhile are not visible to it and stay; of several ledgers only
// one compacts at a time.
func (s *Store) CompactSiteCounts(ctx context.Context) (int64, error) {
	var removed int64
	err := s.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		var mine bool
		if err := tx.NewRaw("SELECT pg_try_advisory_xact_lock(?)", compactLockKey).Scan(ctx, &mine); err != nil {
			return err
		}
		if !mine {
			return nil
		}
		var r struct {
			Removed int64 `bun:"removed"`
		}
		if err := tx.NewRaw(`WITH gone AS (DELETE FROM site_count_deltas RETURNING site, location, status, n),
			kept AS (INSERT INTO site_count_deltas (site, location, status, n)
				SELECT site, location, status, sum(n) FROM gone GROUP BY 1, 2, 3 HAVING sum(n) <> 0 RETURNING 1)
			SELECT (SELECT count(*) FROM gone) - (SELECT count(*) FROM kept) AS removed`).Scan(ctx, &r); err != nil {
			return err
		}
		removed = r.Removed
		// Bytes staged are asked for by the hour and the day: minutes are
		// kept for a day, hours after that. Only rows not folded yet are
		// taken, so the work stays that of the last 30 s however long the
		// history (a minute may end up with a row per compaction: the sums
		// are the same).
		if err := tx.NewRaw(`WITH gone AS (DELETE FROM site_bytes_deltas
				WHERE at <> date_trunc('minute', at) OR (at < now() - interval '1 day' AND at <> date_trunc('hour', at))
				RETURNING site, at, bytes),
			kept AS (INSERT INTO site_bytes_deltas (site, at, bytes)
				SELECT site, date_trunc(CASE WHEN at < now() - interval '1 day' THEN 'hour' ELSE 'minute' END, at), sum(bytes)
				FROM gone GROUP BY 1, 2 HAVING sum(bytes) <> 0 RETURNING 1)
			SELECT (SELECT count(*) FROM gone) - (SELECT count(*) FROM kept) AS removed`).Scan(ctx, &r); err != nil {
			return err
		}
		removed += r.Removed
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("compact site counts: %w", err)
	}
	return removed, nil
}

// compactLockKey is the advisory lock CompactSiteCounts holds.
const compactLockKey = 0x63636174_73697465 // "ccatsite"

// poisonRow is a row of poison as ledgerapi.Poison.
type poisonRow struct {
	ID         int64     `bun:"id"`
	Stream     string    `bun:"stream"`
	StreamSeq  int64     `bun:"stream_seq"`
	Subject    string    `bun:"subject"`
	Reason     string    `bun:"reason"`
	Message    string    `bun:"message"`
	EventID    string    `bun:"event_id"`
	EventType  string    `bun:"event_type"`
	ReceivedAt time.Time `bun:"received_at"`
}

// PoisonList returns the most recent poison messages.
func (s *Store) PoisonList(ctx context.Context, limit int) ([]ledgerapi.Poison, error) {
	var rows []poisonRow
	if err := s.db.NewRaw(`SELECT id, stream, stream_seq, subject, reason, message, event_id, event_type, received_at
		FROM poison ORDER BY id DESC LIMIT ?`, limit).Scan(ctx, &rows); err != nil {
		return nil, fmt.Errorf("list poison: %w", err)
	}
	out := make([]ledgerapi.Poison, len(rows))
	for i, r := range rows {
		out[i] = ledgerapi.Poison(r)
	}
	return out, nil
}

// AttemptInfo is the latest attempt of a package.
type AttemptInfo struct {
	PackageID string     `bun:"package_id"`
	Attempt   int        `bun:"attempt"`
	Instance  string     `bun:"instance"`
	Outcome   string     `bun:"outcome"`
	EndedAt   *time.Time `bun:"ended_at"`
}

// LastAttempts returns the latest attempt of every package of a job.
func (s *Store) LastAttempts(ctx context.Context, jobID string) (map[string]AttemptInfo, error) {
	var rows []AttemptInfo
	if err := s.db.NewRaw(`SELECT DISTINCT ON (package_id) package_id, attempt, instance, outcome, ended_at
		FROM attempts WHERE job_id = ? ORDER BY package_id, attempt DESC`, jobID).Scan(ctx, &rows); err != nil {
		return nil, fmt.Errorf("attempts of job %s: %w", jobID, err)
	}
	out := make(map[string]AttemptInfo, len(rows))
	for _, r := range rows {
		out[r.PackageID] = r
	}
	return out, nil
}

// RecentFailures returns the most recently failed packages, newest first.
// It walks package_failures (kept by triggers on job_packages, migration
// package_failures) by time: a few index reads, not a sort of every failure.
func (s *Store) RecentFailures(ctx context.Context, limit int) ([]ledgerapi.Package, error) {
	var rows []pkgRow
	// The limit applies to package_failures alone, so it is read in index
	// order whatever the statistics say; the table holds failed packages
	// only (its triggers see to that).
	if err := s.db.NewRaw("SELECT "+pkgCols+` FROM (
			SELECT job_id, package_id, failed_at FROM package_failures
			ORDER BY failed_at DESC NULLS LAST, job_id, package_id LIMIT ?) f
		JOIN job_packages jp USING (job_id, package_id)
		ORDER BY f.failed_at DESC NULLS LAST, job_id, package_id`, limit).Scan(ctx, &rows); err != nil {
		return nil, fmt.Errorf("recent failures: %w", err)
	}
	out := make([]ledgerapi.Package, len(rows))
	for i, r := range rows {
		out[i] = r.pkg()
		out[i].JobID = r.JobID
	}
	return out, nil
}
