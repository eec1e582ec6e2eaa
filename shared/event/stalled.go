package event

// ReasonStalled fails a package the planner's reconciler re-issued the
// configured number of times without it ever getting staged: its request
// keeps disappearing (lost from the work queue, or a stager died holding it
// without redelivery). It travels in a permanent staging.failed whose site
// and location are the job's destination and whose id is
// failed:<request id>:stalled.
const ReasonStalled = "stalled"
