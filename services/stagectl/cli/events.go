package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
)

func runEvents(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet("stagectl events", e.stderr)
	fs.Usage = func() {
		fmt.Fprintln(e.stderr, "usage: stagectl events JOB [--json]")
		fs.PrintDefaults()
	}
	pos, err := e.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("events takes exactly one job id")
	}
	var tl ledgerapi.JobEvents
	err = e.ledger().Get(ctx, "/v1/jobs/"+url.PathEscape(pos[0])+"/events", &tl)
	if errors.Is(err, ledgerapi.ErrNotFound) {
		return withCode(ExitNotFound, fmt.Errorf("job %s: the ledger has no events of it", pos[0]))
	}
	if err != nil {
		return err
	}
	if e.cfg.JSON {
		return writeJSON(e.stdout, tl)
	}
	rows := [][]string{{"TIME", "TYPE", "PACKAGE", "DETAIL", "ID"}}
	for _, ev := range tl.Events {
		pkg := "-"
		if ev.PackageID != nil && *ev.PackageID != "" {
			pkg = *ev.PackageID
		}
		rows = append(rows, []string{ev.Time.UTC().Format("2006-01-02T15:04:05.000Z"), shortType(ev.Type), pkg, detail(ev), ev.ID})
	}
	return table(e.stdout, rows)
}

// shortType drops the constant parts: ccat.staging.done.v1 -> done.
func shortType(t string) string {
	s := strings.TrimPrefix(t, "ccat.")
	s = strings.TrimPrefix(s, "staging.")
	if i := strings.LastIndex(s, ".v"); i > 0 {
		s = s[:i]
	}
	return s
}

// detail picks the fields of an event's data a person scans a timeline for.
func detail(ev ledgerapi.LogEntry) string {
	var d struct {
		Attempt    int    `json:"attempt"`
		Reason     string `json:"reason"`
		Message    string `json:"message"`
		Permanent  bool   `json:"permanent"`
		Path       string `json:"path"`
		Instance   string `json:"instance"`
		BytesDone  int64  `json:"bytes_done"`
		BytesTotal int64  `json:"bytes_total"`
		Packages   []any  `json:"packages"`
		Dest       struct {
			Site     string `json:"site"`
			Location string `json:"location"`
		} `json:"destination"`
	}
	_ = json.Unmarshal(ev.Data, &d) // a timeline shows what it can
	var parts []string
	switch shortType(ev.Type) {
	case "submit", "planned":
		parts = append(parts, fmt.Sprintf("%d package(s) to %s", len(d.Packages), strings.Trim(d.Dest.Site+"/"+d.Dest.Location, "/")))
	case "progress":
		if d.BytesTotal > 0 {
			parts = append(parts, fmt.Sprintf("%s of %s", humanBytes(d.BytesDone), humanBytes(d.BytesTotal)))
		}
	case "done":
		parts = append(parts, d.Path)
	case "failed":
		kind := "will retry"
		if d.Permanent {
			kind = "permanent"
		}
		parts = append(parts, d.Reason+" ("+kind+"): "+oneLine(d.Message, 60))
	case "stalled":
		parts = append(parts, d.Reason+": "+oneLine(d.Message, 60))
	case "rejected", "cancel":
		parts = append(parts, strings.Trim(d.Reason+": "+oneLine(d.Message, 60), ": "))
	}
	if d.Attempt > 0 {
		parts = append(parts, fmt.Sprintf("attempt %d", d.Attempt))
	}
	if d.Instance != "" {
		parts = append(parts, "on "+d.Instance)
	}
	return dash(strings.Join(parts, ", "))
}
