package event

// TypePackageRemoved says a copy of a package is gone from an archive
// location (deleted, or the medium retired): the planner stops choosing it.
const TypePackageRemoved = "ccat.archive.package.removed.v1"

// PackageRemoved says the copy of a package at Location no longer exists.
// Removing a copy that was never announced is harmless.
type PackageRemoved struct {
	PackageID string `json:"package_id"`
	Location  string `json:"location"`
	Key       string `json:"key,omitempty"`
	Reason    string `json:"reason,omitempty"` // free text for operators
}

func (PackageRemoved) EventType() string { return TypePackageRemoved }
