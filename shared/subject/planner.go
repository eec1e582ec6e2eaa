package subject

// PlannerJobsBucket is the JetStream KV bucket where the planner remembers
// each job id it has accepted (job id -> hash of the submit's content), so a
// resubmit is a no-op and a different job under the same id is refused.
const PlannerJobsBucket = "PLANNER_JOBS"

// PlannerInflightBucket is where the planner records, per processing
// location and package, the request currently staging that package there
// (cross-job deduplication): <location>.<package key> -> request id.
const PlannerInflightBucket = "PLANNER_INFLIGHT"

// PlannerOutcomes is the planner's durable on STAGING_EVENTS for
// staging.done and staging.failed: an outcome frees the package for the
// next job that needs it.
const PlannerOutcomes = "planner-outcomes"

// PlannerReissuesBucket is where the planner's reconciler records the
// request generation of each package it re-issued (<job>.<package> ->
// generation), so that several planners agree on the next generation by
// compare-and-set and only one publishes it.
const PlannerReissuesBucket = "PLANNER_REISSUES"

// PlannerOutcomesBucket is the planner's record of final staging outcomes,
// per job package and per staged copy, written by planner-outcomes and read
// by the reconciler so it never re-issues or gives up on a package whose
// outcome exists while the ledger has not shown it yet.
const PlannerOutcomesBucket = "PLANNER_OUTCOMES"
