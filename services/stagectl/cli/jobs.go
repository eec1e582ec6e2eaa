package cli

import (
	"context"
	"fmt"
	"net/url"
	"strconv"

	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
)

func runJobs(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet("stagectl jobs", e.stderr)
	status := fs.String("status", "", "only jobs with this status (pending, scheduled, in_progress, completed, failed, rejected, cancelled)")
	site := fs.String("site", "", "only jobs whose destination is this site")
	location := fs.String("location", "", "only jobs whose destination is this location")
	limit := fs.Int("limit", 50, "at most this many jobs")
	fs.Usage = func() {
		fmt.Fprintln(e.stderr, "usage: stagectl jobs [--status S] [--site S] [--location L] [--limit N] [--json]")
		fs.PrintDefaults()
	}
	pos, err := e.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usagef("jobs takes no arguments (got %q)", pos)
	}
	if *limit <= 0 {
		return usagef("--limit must be positive")
	}
	jobs, err := listJobs(ctx, e.ledger(), *status, *site, *location, *limit)
	if err != nil {
		return err
	}
	if e.cfg.JSON {
		return writeJSON(e.stdout, ledgerapi.JobList{Jobs: jobs})
	}
	rows := [][]string{{"JOB", "STATUS", "SITE", "LOCATION", "PACKAGES", "FAILED", "BYTES", "PRIORITY", "REQUESTED_BY", "CREATED"}}
	for _, j := range jobs {
		site, loc := dash(j.Destination.Site), dash(j.Destination.Location)
		rows = append(rows, []string{j.JobID, j.Status, site, loc,
			fmt.Sprintf("%d/%d", j.Counts.Completed, j.Counts.Total), fmt.Sprint(j.Counts.Failed),
			humanBytes(j.BytesTotal), dash(j.Priority), dash(j.RequestedBy), fmtTime(&j.CreatedAt)})
	}
	return table(e.stdout, rows)
}

// listJobs follows the ledger's cursor until limit jobs are collected. Each
// page asks for no more than is still wanted.
func listJobs(ctx context.Context, api *ledgerapi.Client, status, site, location string, limit int) ([]ledgerapi.JobSummary, error) {
	var out []ledgerapi.JobSummary
	cursor := ""
	for len(out) < limit {
		q := url.Values{}
		if status != "" {
			q.Set("status", status)
		}
		if site != "" {
			q.Set("site", site)
		}
		if location != "" {
			q.Set("location", location)
		}
		q.Set("limit", strconv.Itoa(min(limit-len(out), 500)))
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		page, err := api.Jobs(ctx, q)
		if err != nil {
			return nil, err
		}
		out = append(out, page.Jobs...)
		if page.NextCursor == "" || page.NextCursor == cursor || len(page.Jobs) == 0 {
			break
		}
		cursor = page.NextCursor
	}
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}
