package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"

	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/config"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
)

// Explanation is what explain prints: the ledger's own when it has an
// explain endpoint, else one derived here from the job.
type Explanation struct {
	JobID  string   `json:"job_id"`
	Status string   `json:"status"`
	Source string   `json:"source"` // "ledger" or "derived"
	Lines  []string `json:"lines"`
}

func runExplain(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet("stagectl explain", e.stderr)
	fs.Usage = func() {
		fmt.Fprintln(e.stderr, "usage: stagectl explain JOB [--json]")
		fs.PrintDefaults()
	}
	pos, err := e.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("explain takes exactly one job id")
	}
	j, err := getJob(ctx, e, pos[0])
	if err != nil {
		return err
	}
	x, ok := ledgerExplain(ctx, e, j)
	if !ok {
		// The stagers' retry policy, from the same STAGER_RETRY_*
		// variables the stagers and the ledger read.
		ce := config.NewEnv(e.getenv)
		retry := bus.RetryFromEnv(ce)
		if err := ce.Err(); err != nil {
			return usagef("%v", err)
		}
		x = deriveWith(j, retry)
	}
	if e.cfg.JSON {
		return writeJSON(e.stdout, x)
	}
	for _, l := range x.Lines {
		if _, err := fmt.Fprintln(e.stdout, l); err != nil {
			return err
		}
	}
	return nil
}

// ledgerExplain asks the ledger's /v1/jobs/{id}/explain. Ledgers without it
// answer 404 (the job exists, we just fetched it), and then we derive.
func ledgerExplain(ctx context.Context, e *env, j ledgerapi.Job) (Explanation, bool) {
	var raw map[string]json.RawMessage
	err := e.ledger().Get(ctx, "/v1/jobs/"+url.PathEscape(j.JobID)+"/explain", &raw)
	if err != nil {
		if !errors.Is(err, ledgerapi.ErrNotFound) {
			e.log.Debug().Err(err).Msg("ledger explain unavailable; deriving")
		}
		return Explanation{}, false
	}
	x := Explanation{JobID: j.JobID, Status: j.Status, Source: "ledger"}
	// The ledger answers {summary, packages: [{package_id, status, why}]};
	// other plausible shapes (lines, one text) are accepted too, so an older
	// or newer ledger still explains rather than falling back silently.
	for _, k := range []string{"summary", "explanation", "text", "message"} {
		var s string
		if json.Unmarshal(raw[k], &s) == nil && s != "" {
			x.Lines = append(x.Lines, s)
		}
	}
	for _, k := range []string{"packages", "lines", "steps", "details", "reasons"} {
		var ss []string
		if json.Unmarshal(raw[k], &ss) == nil {
			x.Lines = append(x.Lines, ss...)
			continue
		}
		var objs []map[string]any
		if json.Unmarshal(raw[k], &objs) == nil {
			for _, o := range objs {
				if id, ok := o["package_id"].(string); ok {
					if why, ok := o["why"].(string); ok {
						x.Lines = append(x.Lines, fmt.Sprintf("Package %s (%v): %s.", id, o["status"], why))
						continue
					}
				}
				x.Lines = append(x.Lines, flatten(o))
			}
		}
	}
	if len(x.Lines) == 0 {
		return Explanation{}, false
	}
	// The ledger explains what is still moving; what failed for good is
	// grouped by reason here, with what the reason means.
	x.Lines = append(x.Lines, failureLines(j)...)
	return x, true
}

func flatten(o map[string]any) string {
	keys := make([]string, 0, len(o))
	for k := range o {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%v", k, o[k]))
	}
	return strings.Join(parts, " ")
}

// hints say what a reason code means for the person reading, and what to do.
var hints = map[string]string{
	event.ReasonInvalidRequest:     "the submit itself was malformed; fix it and submit again",
	event.ReasonUnknownSite:        "the destination site is not in the topology file",
	event.ReasonUnknownLocation:    "the destination location is not in the topology file",
	event.ReasonNotProcessing:      "the destination location is not a processing location",
	event.ReasonInactiveLocation:   "the destination location is switched off (active: false)",
	event.ReasonNoProcessing:       "the site has no active processing location",
	event.ReasonUnknownPackage:     "no archived copy of the package has been announced (stagectl archive announce)",
	event.ReasonDuplicatePackage:   "a package was listed twice",
	event.ReasonTooManyPackages:    "the job lists more packages than the planner accepts in one job; split it",
	event.ReasonJobIDConflict:      "the job id was already used for a different request; choose another id",
	event.ReasonUnsupportedVersion: "the submit's event type version is not supported by this planner",
	event.ReasonNoSource:           "no active archive location holds a copy of the package",
	event.ReasonChecksumMismatch:   "the archive copy's bytes differ from its announced checksum: the copy is corrupt or the announcement wrong",
	event.ReasonSizeMismatch:       "the archive copy's size differs from its announcement",
	event.ReasonSourceMissing:      "the archive copy is gone from its location (deleted or moved)",
	event.ReasonUnsafeArchive:      "the tar holds paths or entry types the stager refuses (absolute, .., links, devices)",
	event.ReasonIOError:            "reading the archive or writing the processing file system failed; it is retried",
	event.ReasonNoSpace:            "the processing file system is full",
	event.ReasonBadRequest:         "the stager could not use the work item",
	event.ReasonRetriesExhausted:   "every attempt failed; the last attempt's reason is the one to fix",
	event.ReasonCancelled:          "the job was cancelled before a stager started the package",
	event.ReasonStalled:            "the planner re-issued the request several times and it never got staged: check the site's stagers and its work queue",
}

func hint(reason string) string {
	if h, ok := hints[reason]; ok {
		return " — " + h
	}
	return ""
}

// derive explains a job from what the ledger's job answer holds, with the
// default retry policy.
func derive(j ledgerapi.Job) Explanation { return deriveWith(j, bus.DefaultRetry()) }

// deriveWith is derive with the stagers' retry policy: a failed attempt
// says how long after the failure the retry comes.
func deriveWith(j ledgerapi.Job, retry bus.Retry) Explanation {
	x := Explanation{JobID: j.JobID, Status: j.Status, Source: "derived"}
	add := func(format string, args ...any) { x.Lines = append(x.Lines, fmt.Sprintf(format, args...)) }
	c := j.Counts
	dest := "an unresolved destination"
	if j.Destination != (ledgerapi.Place{}) {
		dest = "site " + j.Destination.Site
		if j.Destination.Location != "" {
			dest += " (location " + j.Destination.Location + ")"
		}
	}
	add("Job %s asks for %d package(s) at %s, priority %s, requested by %s.", j.JobID, c.Total, dest, dash(j.Priority), dash(j.RequestedBy))
	switch j.Status {
	case event.StatusPending:
		add("It is pending: the planner has not planned it yet. If that lasts more than a minute, check that the planner runs (consumer %s).", "planner-submit")
	case "rejected":
		add("The planner refused the whole job: %s: %s%s.", dash(j.Reason), oneLine(j.Message, 200), hint(j.Reason))
	case event.StatusScheduled:
		site := "its site"
		if j.Destination.Site != "" {
			site = j.Destination.Site
		}
		add("It is scheduled: %d package(s) wait for a stager of %s; none has started yet. If that lasts, check that a stager of %s runs (KV bucket STAGERS).", c.Scheduled, site, site)
	case event.StatusInProgress:
		add("It is in progress: %d completed, %d failed, %d in progress, %d waiting; %s of %s moved.", c.Completed, c.Failed, c.InProgress, c.Scheduled+c.Pending, humanBytes(j.BytesDone), humanBytes(j.BytesTotal))
	case event.StatusCompleted:
		add("It completed: all %d package(s), %s%s.", c.Total, humanBytes(j.BytesTotal), took(j))
	case event.StatusFailed:
		add("It failed: %d of %d package(s) completed and %d failed for good%s.", c.Completed, c.Total, c.Failed, took(j))
	case "cancelled":
		add("It was cancelled%s.", reasonSuffix(j.Reason, j.Message))
	default:
		add("Its status is %q.", j.Status)
	}
	for _, p := range j.Packages {
		if p.Reason != "" && p.Status != event.StatusCompleted && p.Status != event.StatusFailed {
			add("Package %s: attempt %d failed (%s: %s); it will be retried about %s after the failure%s.", p.PackageID, p.Attempts, p.Reason,
				oneLine(p.Message, 120), retry.Nominal(p.Attempts, p.Reason), hint(p.Reason))
		}
	}
	x.Lines = append(x.Lines, failureLines(j)...)
	return x
}

// failureLines groups a job's failed packages by reason: a hundred packages
// failing for one reason are one problem, not a hundred.
func failureLines(j ledgerapi.Job) []string {
	byReason := map[string][]string{}
	msgOf := map[string]string{}
	for _, p := range j.Packages {
		if p.Status == event.StatusFailed {
			byReason[p.Reason] = append(byReason[p.Reason], p.PackageID)
			if _, ok := msgOf[p.Reason]; !ok {
				msgOf[p.Reason] = p.Message
			}
		}
	}
	reasons := make([]string, 0, len(byReason))
	for r := range byReason {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	var out []string
	for _, r := range reasons {
		ids := byReason[r]
		list := strings.Join(ids[:min(len(ids), 5)], ", ")
		if len(ids) > 5 {
			list += fmt.Sprintf(" and %d more", len(ids)-5)
		}
		out = append(out, fmt.Sprintf("%d package(s) failed with %s (%s): %s%s.", len(ids), dash(r), list, oneLine(msgOf[r], 120), hint(r)))
	}
	return out
}
