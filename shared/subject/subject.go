// Package subject names the streams, subjects and durable consumers of
// ccat-staging in one place, so that services, tests, the deployment's
// permissions and the docs cannot drift apart.
package subject

// Streams.
const (
	// ArchiveStream holds archive.* events (limits retention): the catalog's
	// and the ledger's history of which package copies exist where.
	ArchiveStream = "ARCHIVE"
	// EventsStream holds every staging.<event> (limits retention): the record
	// the ledger projects and can be rebuilt from.
	EventsStream = "STAGING_EVENTS"
	// RequestsStream holds staging.request.<site> work items (work-queue
	// retention): a message lives until a stager settles it.
	RequestsStream = "STAGING_REQUESTS"
)

// Subjects.
const (
	Archived = "archive.package.archived"
	Submit   = "staging.submit"
	Planned  = "staging.planned"
	Rejected = "staging.rejected"
	Started  = "staging.started"
	Done     = "staging.done"
	Failed   = "staging.failed"

	// ArchiveAll and EventsAll are the streams' subject filters. "staging.*"
	// matches exactly two tokens, so it never overlaps staging.request.<site>.
	ArchiveAll  = "archive.>"
	EventsAll   = "staging.*"
	RequestsAll = "staging.request.>"

	Progress = "staging.progress"
)

// Priorities, highest first: the order in which a stager drains its site's
// consumers. Each priority has its own subject and durable consumer so that a
// high-priority request never waits behind a normal backlog (a work-queue
// stream delivers in order within one consumer).
var Priorities = []string{"high", "normal", "low"}

// Request is the work subject of a site at a priority:
// staging.request.<site>.<priority>.
func Request(site, priority string) string { return "staging.request." + site + "." + priority }

// SiteRequests matches every request of a site, whatever its priority (for
// permissions and stream inspection).
func SiteRequests(site string) string { return "staging.request." + site + ".>" }

// Durable consumer names.
const (
	PlannerSubmit  = "planner-submit"
	PlannerCatalog = "planner-catalog"
	LedgerEvents   = "ledger-events"
	LedgerArchive  = "ledger-archive"
)

// StagerDurable is the durable consumer every stager instance of a site
// shares for one priority: stager-<site>-<priority>.
func StagerDurable(site, priority string) string { return "stager-" + site + "-" + priority }

// StagerBucket is the KV bucket where stager instances announce themselves.
const StagerBucket = "STAGERS"

// CatalogBucket is the JetStream KV bucket of the planner's package catalog.
const CatalogBucket = "CATALOG"

// ManifestsBucket is the JetStream Object Store bucket of package file
// manifests too large to travel inline in an event: the object's name is the
// package checksum ("sha256:<hex>") and the events carry its digest and size
// (event.ManifestRef). Its stream is OBJ_MANIFESTS.
const ManifestsBucket = "MANIFESTS"
