package subject

// Releasing staged copies. A job's staging.release drops its references to
// the copies it staged; the planner keeps the references in
// PlannerRefsBucket and, once a copy has had none for its location's
// retention, hands its deletion to the site's stagers on CleanupStream, a
// work queue of its own so deletions never wait behind staging priorities.
// The stager reports each deletion as staging.released.
const (
	// Released is the subject of ccat.staging.released.v1 (two tokens, so
	// STAGING_EVENTS keeps it).
	Released = "staging.released"
	// CleanupStream holds deletion work items (work-queue retention).
	CleanupStream = "STAGING_CLEANUP"
	// CleanupAll is CleanupStream's subject filter: staging.cleanup.<site>.
	CleanupAll = "staging.cleanup.>"
	// PlannerRefsBucket holds, per processing location and package, the
	// jobs referencing the staged copy: <site>.<location>.<package key> ->
	// refs.
	PlannerRefsBucket = "PLANNER_REFS"
	// PlannerRelease is the planner's durable on STAGING_EVENTS for
	// staging.release.
	PlannerRelease = "planner-release"
)

// Cleanup is the deletion work subject of a site: staging.cleanup.<site>.
// Three tokens, so it never lands in STAGING_EVENTS (staging.*).
func Cleanup(site string) string { return "staging.cleanup." + site }

// StagerCleanupDurable is the durable through which a site's stagers take
// their deletion work: stager-<site>-cleanup.
func StagerCleanupDurable(site string) string { return "stager-" + site + "-cleanup" }
