package event

import "time"

// Deleting staged copies nobody needs any more. The planner publishes a
// Cleanup work item on staging.cleanup.<site> for a copy whose references
// (PLANNER_REFS) have been empty for its location's retention; the site's
// stager deletes the copy and reports it as Released on staging.released.
const (
	TypeCleanup  = "ccat.staging.cleanup.v1"
	TypeReleased = "ccat.staging.released.v1"
)

// Cleanup asks the stagers of Site to delete the staged copy of PackageID at
// Location. RefsRevision is the revision of the copy's PLANNER_REFS entry
// when the planner decided; the stager deletes only while the entry is still
// at that revision (nobody referenced the copy since). Its id is
// cleanup:<location>:<package_id>:<refs_revision>.
type Cleanup struct {
	PackageID    string    `json:"package_id"`
	Site         string    `json:"site"`
	Location     string    `json:"location"`
	RefsKey      string    `json:"refs_key"`
	RefsRevision uint64    `json:"refs_revision"`
	Jobs         []string  `json:"jobs,omitempty"` // the jobs that last held the copy
	EmptiedAt    time.Time `json:"emptied_at"`
}

func (Cleanup) EventType() string { return TypeCleanup }

// Released reports the deletion of a staged copy. Reason is empty when the
// copy is gone (BytesFreed may be 0 when there was nothing left); otherwise
// the deletion failed (Permanent: the stager gave up). Ids:
// released:<location>:<package_id>:<refs_revision> when deleted,
// released:<location>:<package_id>:<refs_revision>:failed:<attempt> when not.
type Released struct {
	PackageID    string   `json:"package_id"`
	Site         string   `json:"site"`
	Location     string   `json:"location"`
	Path         string   `json:"path"`
	BytesFreed   int64    `json:"bytes_freed"`
	Jobs         []string `json:"jobs,omitempty"`
	RefsRevision uint64   `json:"refs_revision"`
	Reason       string   `json:"reason,omitempty"`
	Message      string   `json:"message,omitempty"`
	Permanent    bool     `json:"permanent,omitempty"`
}

func (Released) EventType() string { return TypeReleased }
