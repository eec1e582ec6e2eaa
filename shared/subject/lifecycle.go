package subject

// Stalled is the subject of ccat.staging.stalled.v1: the planner's
// reconciler gave up on a package. Two tokens, so STAGING_EVENTS keeps it.
const Stalled = "staging.stalled"

// CancelledBucket is the KV bucket where the planner records cancelled jobs
// (job id -> the cancel's event id). Stagers read it before starting a
// request and withdraw the requests of a cancelled job.
const CancelledBucket = "CANCELLED"

// PlannerCancel is the planner's durable on STAGING_EVENTS for
// staging.cancel.
const PlannerCancel = "planner-cancel"
