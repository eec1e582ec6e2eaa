package event

// TypeProgress reports bytes moved during an attempt, a few seconds apart.
const TypeProgress = "ccat.staging.progress.v1"

// Progress is published while a package streams (not per chunk).
type Progress struct {
	Outcome
	BytesDone          int64   `json:"bytes_done"`
	BytesTotal         int64   `json:"bytes_total"`
	RateBytesPerSecond float64 `json:"rate_bytes_per_second"`
}

func (Progress) EventType() string { return TypeProgress }
