package event

// Event types. The suffix is the data's major version: a breaking change to
// a schema is a new type, so old and new producers can coexist.
const (
	TypePackageArchived = "ccat.archive.package.archived.v1"
	TypeSubmit          = "ccat.staging.submit.v1"
	TypePlanned         = "ccat.staging.planned.v1"
	TypeRejected        = "ccat.staging.rejected.v1"
	TypeRequest         = "ccat.staging.request.v1"
	TypeStarted         = "ccat.staging.started.v1"
	TypeDone            = "ccat.staging.done.v1"
	TypeFailed          = "ccat.staging.failed.v1"
)

// Data is implemented by every event's data type.
type Data interface {
	EventType() string
}

// Priorities of a staging job.
const (
	PriorityLow    = "low"
	PriorityNormal = "normal"
	PriorityHigh   = "high"
)

// Statuses, in CCAT's vocabulary, of jobs and of a job's packages.
const (
	StatusPending    = "pending"
	StatusScheduled  = "scheduled"
	StatusInProgress = "in_progress"
	StatusCompleted  = "completed"
	StatusFailed     = "failed"
)

// Reason codes. They are part of the contract: dashboards, alerts and
// clients branch on them, so they never change meaning.
const (
	// Rejections of a whole staging.submit.
	ReasonInvalidRequest     = "invalid_request"
	ReasonUnknownSite        = "unknown_site"
	ReasonUnknownLocation    = "unknown_location"
	ReasonNotProcessing      = "not_processing_location"
	ReasonInactiveLocation   = "inactive_location"
	ReasonNoProcessing       = "no_processing_location"
	ReasonUnknownPackage     = "unknown_package"
	ReasonDuplicatePackage   = "duplicate_package"
	ReasonTooManyPackages    = "too_many_packages"
	ReasonJobIDConflict      = "job_id_conflict"
	ReasonUnsupportedVersion = "unsupported_version"

	// Failures of one package.
	ReasonNoSource         = "no_source"
	ReasonChecksumMismatch = "checksum_mismatch"
	ReasonSizeMismatch     = "size_mismatch"
	ReasonSourceMissing    = "source_missing"
	ReasonUnsafeArchive    = "unsafe_archive"
	ReasonIOError          = "io_error"
	ReasonNoSpace          = "no_space"
	ReasonBadRequest       = "bad_request"
	ReasonRetriesExhausted = "retries_exhausted"
	// ReasonBadManifest: the manifest a request refers to (Manifest) is
	// missing from the MANIFESTS bucket, or its bytes do not have the digest,
	// size or entry count the request names, or they do not parse. The same
	// object fails the same way on every delivery, so it is permanent.
	ReasonBadManifest = "bad_manifest"
)

// File is one entry of a package's manifest.
type File struct {
	Path      string `json:"path"`
	SizeBytes int64  `json:"size_bytes"`
	SHA256    string `json:"sha256"` // lower-case hex
}

// ManifestRef stands for a manifest too large to travel inline: the JSON
// array of File (the same encoding as an inline "files") stored in the
// JetStream Object Store bucket MANIFESTS under the package checksum
// ("sha256:<hex>" of the tar). The digest and size pin the exact bytes, so a
// reader verifies what it fetched before it trusts a single entry, and an
// object replaced after the event was published fails loudly instead of
// giving a different list.
type ManifestRef struct {
	SHA256    string `json:"sha256"`     // lower-case hex of the manifest's bytes
	SizeBytes int64  `json:"size_bytes"` // length of the manifest's bytes
	Files     int    `json:"files"`      // number of entries
}

// PackageArchived says a copy of a package exists at an archive location.
// It carries the manifest inline (Files) or by reference (Manifest), never
// both; neither means no manifest.
type PackageArchived struct {
	PackageID string       `json:"package_id"`
	Location  string       `json:"location"`
	Key       string       `json:"key"`
	SizeBytes int64        `json:"size_bytes"`
	Checksum  string       `json:"checksum"` // "sha256:<hex>" of the tar
	Format    string       `json:"format"`   // "tar"
	Files     []File       `json:"files,omitempty"`
	Manifest  *ManifestRef `json:"manifest,omitempty"`
}

// FileCount is the number of manifest entries in either form.
func (a PackageArchived) FileCount() int { return fileCount(a.Files, a.Manifest) }

func fileCount(files []File, ref *ManifestRef) int {
	if ref != nil {
		return ref.Files
	}
	return len(files)
}

func (PackageArchived) EventType() string { return TypePackageArchived }

// Destination is what a client asks for: exactly one of Site or Location.
type Destination struct {
	Site     string `json:"site,omitempty"`
	Location string `json:"location,omitempty"`
}

// Submit asks for packages to be staged. JobID is the idempotency key.
type Submit struct {
	JobID       string      `json:"job_id"`
	Packages    []string    `json:"packages"`
	Destination Destination `json:"destination"`
	RequestedBy string      `json:"requested_by"`
	Priority    string      `json:"priority,omitempty"`
	Note        string      `json:"note,omitempty"`
}

func (Submit) EventType() string { return TypeSubmit }

// Source is the archive copy a package is read from.
type Source struct {
	Location string `json:"location"`
	Site     string `json:"site"`
	Storage  string `json:"storage"` // disk|s3|tape
	Key      string `json:"key"`
}

// Target is a resolved processing location.
type Target struct {
	Site     string `json:"site"`
	Location string `json:"location"`
}

// PlannedPackage is one line of a plan.
type PlannedPackage struct {
	PackageID string  `json:"package_id"`
	Status    string  `json:"status"`           // scheduled | failed
	Reason    string  `json:"reason,omitempty"` // when failed
	Message   string  `json:"message,omitempty"`
	RequestID string  `json:"request_id,omitempty"` // id of the staging.request event
	Source    *Source `json:"source,omitempty"`
	SizeBytes int64   `json:"size_bytes,omitempty"`
	Checksum  string  `json:"checksum,omitempty"`
}

// Planned is the planner's whole plan for a job.
type Planned struct {
	JobID       string           `json:"job_id"`
	RequestedBy string           `json:"requested_by"`
	Priority    string           `json:"priority"`
	Note        string           `json:"note,omitempty"`
	Destination Target           `json:"destination"`
	Packages    []PlannedPackage `json:"packages"`
	// Part and Parts are set when a plan too large for one message is split:
	// part 1 has id planned:<job_id>, part n > 1 planned:<job_id>:<n>, and
	// every part repeats the job's fields and lists some of its packages.
	// Both are absent (0) for a plan in one message.
	Part  int `json:"part,omitempty"`
	Parts int `json:"parts,omitempty"`
}

func (Planned) EventType() string { return TypePlanned }

// Rejected says a staging.submit was refused as a whole.
type Rejected struct {
	JobID    string `json:"job_id,omitempty"`
	SubmitID string `json:"submit_id"` // CloudEvent id of the refused submit
	Reason   string `json:"reason"`
	Message  string `json:"message"`
}

func (Rejected) EventType() string { return TypeRejected }

// Request is the work item for one package at one site.
type Request struct {
	JobID       string `json:"job_id"`
	PackageID   string `json:"package_id"`
	Generation  int    `json:"generation"` // 1, then +1 each time the planner re-issues it
	Priority    string `json:"priority"`
	Source      Source `json:"source"`
	Destination Target `json:"destination"`
	SizeBytes   int64  `json:"size_bytes"`
	Checksum    string `json:"checksum"`
	Format      string `json:"format"`
	// Files or Manifest, as in PackageArchived: the planner passes on the
	// form its catalog holds, and turns a list too large for the request
	// message into a reference.
	Files    []File       `json:"files,omitempty"`
	Manifest *ManifestRef `json:"manifest,omitempty"`
}

// FileCount is the number of manifest entries in either form.
func (r Request) FileCount() int { return fileCount(r.Files, r.Manifest) }

func (Request) EventType() string { return TypeRequest }

// Outcome holds the fields every stager event carries.
type Outcome struct {
	JobID     string `json:"job_id"`
	PackageID string `json:"package_id"`
	Site      string `json:"site"`
	Location  string `json:"location"`
	Attempt   int    `json:"attempt"`
	RequestID string `json:"request_id,omitempty"`
	Instance  string `json:"instance,omitempty"` // the stager instance
}

// Started says a stager began an attempt.
type Started struct {
	Outcome
}

func (Started) EventType() string { return TypeStarted }

// Done says the package is unpacked and verified at Path.
type Done struct {
	Outcome
	Path            string  `json:"path"`
	SizeBytes       int64   `json:"size_bytes"`
	Files           int     `json:"files"`
	DurationSeconds float64 `json:"duration_seconds"`
	AlreadyPresent  bool    `json:"already_present"`
	// Quarantined is set when something that was not this package's
	// verified copy stood at the final path: where it was moved, relative
	// to the processing location's root
	// (.ccat-staging/quarantine/<package_id>-<time>). Staging never deletes
	// it; an operator decides.
	Quarantined string `json:"quarantined,omitempty"`
}

func (Done) EventType() string { return TypeDone }

// Failed says an attempt failed; Permanent means the package is failed for
// the job, otherwise it will be retried.
type Failed struct {
	Outcome
	Reason    string `json:"reason"`
	Message   string `json:"message"`
	Permanent bool   `json:"permanent"`
}

func (Failed) EventType() string { return TypeFailed }
