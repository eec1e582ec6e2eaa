package event

// ReasonCancelled settles a request whose job was cancelled before a stager
// started it: a permanent staging.failed, published without reading the
// archive.
const ReasonCancelled = "cancelled"

// TypeStalled is published by the planner's reconciler when it gives up on a
// package (see ReasonStalled). It is not a staging.failed because only the
// stagers may publish outcomes (deploy/nats/accounts.conf); the ledger ends
// the package failed with the event's reason, exactly as a permanent failure.
const TypeStalled = "ccat.staging.stalled.v1"

// Stalled says the planner gave up on a job's package. Its id is
// stalled:<request id>:<reason>, so two planners giving up at once publish
// one event.
type Stalled struct {
	JobID     string `json:"job_id"`
	PackageID string `json:"package_id"`
	Site      string `json:"site"`     // the job's destination
	Location  string `json:"location"` // the job's destination
	RequestID string `json:"request_id,omitempty"`
	Reason    string `json:"reason"` // stalled, no_source, inactive_location, …
	Message   string `json:"message"`
	Reissues  int    `json:"reissues"`
}

func (Stalled) EventType() string { return TypeStalled }
