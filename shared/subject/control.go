package subject

// Operator control subjects: two tokens, so STAGING_EVENTS (staging.*) keeps
// them beside the events they affect.
const (
	Cancel  = "staging.cancel"
	Release = "staging.release"
)
