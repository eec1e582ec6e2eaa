package ledgerapi

import (
	"encoding/json"
	"time"

	"github.com/ccatobs/ccat-staging/shared/heartbeat"
)

// The types below are the /v1 wire format, defined once: the ledger's
// handlers encode them and every client decodes them. Each mirrors the
// schema component of the same name in the ledger's openapi.json (a test in
// the ledger's httpapi package checks field names, which are required — not
// omitempty —, which are nullable — pointers — and enums by reflection), so
// a field added on one side only fails that test instead of being dropped
// silently by the other side's decoder.

// Place is a site and, when resolved, a location.
type Place struct {
	Site     string `json:"site"`
	Location string `json:"location"`
}

// Source is the archive copy a package is read from.
type Source struct {
	Location string `json:"location"`
	Site     string `json:"site"`
	Storage  string `json:"storage"`
	Key      string `json:"key"`
}

// Counts are a job's packages by status.
type Counts struct {
	Total      int `json:"total"`
	Pending    int `json:"pending"`
	Scheduled  int `json:"scheduled"`
	InProgress int `json:"in_progress"`
	Completed  int `json:"completed"`
	Failed     int `json:"failed"`
	Cancelled  int `json:"cancelled"`
}

// JobSummary is a job without its packages (the list view).
type JobSummary struct {
	JobID       string     `json:"job_id"`
	Status      string     `json:"status" enum:"pending,scheduled,in_progress,completed,failed,rejected,cancelled"`
	Reason      string     `json:"reason"`
	Message     string     `json:"message"`
	RequestedBy string     `json:"requested_by"`
	Priority    string     `json:"priority"`
	Note        string     `json:"note"`
	Destination Place      `json:"destination"`
	CreatedAt   time.Time  `json:"created_at"`
	UpdatedAt   time.Time  `json:"updated_at"`
	CompletedAt *time.Time `json:"completed_at"`
	Counts      Counts     `json:"counts"`
	BytesTotal  int64      `json:"bytes_total"`
	BytesDone   int64      `json:"bytes_done"`
}

// Terminal reports whether the job will not change any more.
func (j JobSummary) Terminal() bool {
	switch j.Status {
	case "completed", "failed", "rejected", "cancelled":
		return true
	}
	return false
}

// Progress is the latest progress report of a package's current attempt.
type Progress struct {
	BytesDone          int64      `json:"bytes_done"`
	BytesTotal         int64      `json:"bytes_total"`
	RateBytesPerSecond float64    `json:"rate_bytes_per_second"`
	UpdatedAt          *time.Time `json:"updated_at"`
}

// Package is one package of a job.
type Package struct {
	PackageID string `json:"package_id"`
	// JobID is set in /v1/packages answers only: inside a Job it is the job's.
	JobID           string     `json:"job_id,omitempty"`
	Status          string     `json:"status" enum:"pending,scheduled,in_progress,completed,failed,cancelled"`
	Reason          string     `json:"reason"`
	Message         string     `json:"message"`
	Attempts        int        `json:"attempts"`
	RequestID       string     `json:"request_id"`
	Source          Source     `json:"source"`
	Destination     Place      `json:"destination"`
	Path            string     `json:"path"`
	SizeBytes       int64      `json:"size_bytes"`
	Files           int        `json:"files"`
	AlreadyPresent  bool       `json:"already_present"`
	PlannedAt       *time.Time `json:"planned_at"`
	StartedAt       *time.Time `json:"started_at"`
	CompletedAt     *time.Time `json:"completed_at"`
	DurationSeconds *float64   `json:"duration_seconds"`
	Progress        Progress   `json:"progress"`
}

// Job is a job with every package.
type Job struct {
	JobSummary
	Packages []Package `json:"packages"`
}

// JobList is one page of jobs.
type JobList struct {
	Jobs []JobSummary `json:"jobs"`
	// NextCursor is empty on the last page.
	NextCursor string `json:"next_cursor"`
}

// LogEntry is one event of a job's timeline.
type LogEntry struct {
	Seq       int64           `json:"seq"`
	Source    string          `json:"source"`
	ID        string          `json:"id"`
	Type      string          `json:"type"`
	Subject   string          `json:"subject"`
	Time      time.Time       `json:"time"`
	JobID     *string         `json:"job_id"`
	PackageID *string         `json:"package_id"`
	Stream    string          `json:"stream"`
	StreamSeq int64           `json:"stream_seq"`
	Data      json.RawMessage `json:"data"`
}

// JobEvents is a job's timeline, oldest first.
type JobEvents struct {
	JobID  string     `json:"job_id"`
	Events []LogEntry `json:"events"`
}

// Explanation says in plain words why a job is not done yet.
type Explanation struct {
	JobID    string               `json:"job_id"`
	Status   string               `json:"status" enum:"pending,scheduled,in_progress,completed,failed,rejected,cancelled"`
	Summary  string               `json:"summary"`
	Packages []PackageExplanation `json:"packages"`
}

// PackageExplanation says why one unfinished package is not done yet.
type PackageExplanation struct {
	PackageID string `json:"package_id"`
	Status    string `json:"status"`
	Why       string `json:"why"`
}

// ArchiveCopy is a copy of a package in an archive location.
type ArchiveCopy struct {
	Location      string     `json:"location"`
	Site          string     `json:"site"`
	Key           string     `json:"key"`
	SizeBytes     int64      `json:"size_bytes"`
	Checksum      string     `json:"checksum"`
	Format        string     `json:"format"`
	Files         int        `json:"files"`
	ArchivedAt    time.Time  `json:"archived_at"`
	Status        string     `json:"status" enum:"active,removed"`
	RemovedAt     *time.Time `json:"removed_at"`
	RemovedReason string     `json:"removed_reason"`
}

// StagedCopy is a copy of a package unpacked at a processing location.
type StagedCopy struct {
	Location  string    `json:"location"`
	Site      string    `json:"site"`
	Path      string    `json:"path"`
	Status    string    `json:"status" enum:"staged,deletion_scheduled,deleted,deletion_failed"`
	JobID     string    `json:"job_id"`
	SizeBytes int64     `json:"size_bytes"`
	Files     int       `json:"files"`
	StagedAt  time.Time `json:"staged_at"`
}

// PackageInfo is everything the ledger knows about a package.
type PackageInfo struct {
	PackageID     string        `json:"package_id"`
	SizeBytes     int64         `json:"size_bytes"`
	Checksum      string        `json:"checksum"`
	ArchiveCopies []ArchiveCopy `json:"archive_copies"`
	StagedCopies  []StagedCopy  `json:"staged_copies"`
	Jobs          []Package     `json:"jobs"`
}

// Backlog is the state of one stager durable consumer.
type Backlog struct {
	Durable    string `json:"durable"`
	Priority   string `json:"priority"`
	Pending    uint64 `json:"pending"`     // not yet delivered
	AckPending int    `json:"ack_pending"` // delivered, being staged
}

// Location is one location of a site.
type Location struct {
	Name     string `json:"name"`
	Site     string `json:"site"`
	Type     string `json:"type"`
	Storage  string `json:"storage"`
	Priority int    `json:"priority"`
	Active   bool   `json:"active"`
}

// Site is a site as the API shows it: the projection's counts plus what
// NATS says about its stagers (whose heartbeats are the Heartbeat schema).
type Site struct {
	Name      string     `json:"name"`
	Locations []Location `json:"locations"`
	// Packages are the job packages headed to the site, by status.
	Packages map[string]int `json:"packages"`
	// PackagesByLocation splits Packages by destination location.
	PackagesByLocation map[string]map[string]int `json:"packages_by_location"`
	BytesStagedHour    int64                     `json:"bytes_staged_last_hour"`
	BytesStagedDay     int64                     `json:"bytes_staged_last_day"`
	ThroughputHourBs   float64                   `json:"throughput_bytes_per_second_last_hour"`
	Backlog            []Backlog                 `json:"backlog"`
	Stagers            []heartbeat.Beat          `json:"stagers"`
	// LiveError says why backlog and stagers are missing, when they are.
	LiveError string `json:"live_error,omitempty"`
}

// SiteList is every site.
type SiteList struct {
	Sites []Site `json:"sites"`
}

// Poison is a message the ledger could not apply.
type Poison struct {
	ID         int64     `json:"id"`
	Stream     string    `json:"stream"`
	StreamSeq  int64     `json:"stream_seq"`
	Subject    string    `json:"subject"`
	Reason     string    `json:"reason"`
	Message    string    `json:"message"`
	EventID    string    `json:"event_id"`
	EventType  string    `json:"event_type"`
	ReceivedAt time.Time `json:"received_at"`
}

// PoisonList is the most recent poison messages, newest first.
type PoisonList struct {
	Poison []Poison `json:"poison"`
}

// Problem is an RFC 9457 error answer.
type Problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail,omitempty"`
	Instance string `json:"instance,omitempty"`
}
