package event

// Operator control of a running job. They travel on staging.cancel and
// staging.release (two tokens, so STAGING_EVENTS keeps them for a rebuild).
// Their ids are cancel:<job_id> and release:<job_id>: asking twice is the
// same intent, so the second request is deduplicated.
const (
	TypeCancel  = "ccat.staging.cancel.v1"
	TypeRelease = "ccat.staging.release.v1"
)

// Cancel asks that the packages of a job not yet staged are not staged.
type Cancel struct {
	JobID       string `json:"job_id"`
	Reason      string `json:"reason,omitempty"`
	RequestedBy string `json:"requested_by"`
}

func (Cancel) EventType() string { return TypeCancel }

// Release says the staged copies of a job are no longer needed by it, so the
// processing location may reclaim them once no other job holds them.
type Release struct {
	JobID       string `json:"job_id"`
	RequestedBy string `json:"requested_by"`
}

func (Release) EventType() string { return TypeRelease }
