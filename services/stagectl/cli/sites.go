package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
)

func runSites(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet("stagectl sites", e.stderr)
	fs.Usage = func() {
		fmt.Fprintln(e.stderr, "usage: stagectl sites [--json]")
		fs.PrintDefaults()
	}
	pos, err := e.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usagef("sites takes no arguments")
	}
	var raw json.RawMessage
	if err := e.ledger().Get(ctx, "/v1/sites", &raw); err != nil {
		return err
	}
	if e.cfg.JSON {
		// Pass the ledger's answer through whole: scripts get every field.
		return writeJSON(e.stdout, raw)
	}
	// The answer is a list, or an object holding it under "sites".
	var sites []ledgerapi.Site
	if err := json.Unmarshal(raw, &sites); err != nil {
		var wrapped ledgerapi.SiteList
		if err := json.Unmarshal(raw, &wrapped); err != nil {
			return fmt.Errorf("ledger api: decode /v1/sites: %w", err)
		}
		sites = wrapped.Sites
	}
	rows := [][]string{{"SITE", "STAGERS", "BUSY", "BACKLOG", "SCHEDULED", "IN_PROGRESS", "FAILED", "STAGED_24H", "RATE_1H"}}
	for _, s := range sites {
		stagers, busy, backlog := "?", "?", "?"
		if s.LiveError == "" {
			b, w := 0, 0
			for _, st := range s.Stagers {
				b += st.Busy
				w += st.Workers
			}
			stagers, busy = fmt.Sprint(len(s.Stagers)), fmt.Sprintf("%d/%d", b, w)
			var parts []string
			for _, q := range s.Backlog {
				parts = append(parts, fmt.Sprintf("%s:%d+%d", q.Priority, q.Pending, q.AckPending))
			}
			backlog = dash(strings.Join(parts, " "))
		}
		rows = append(rows, []string{s.Name, stagers, busy, backlog, fmt.Sprint(s.Packages["scheduled"]), fmt.Sprint(s.Packages["in_progress"]),
			fmt.Sprint(s.Packages["failed"]), humanBytes(s.BytesStagedDay), humanBytes(int64(s.ThroughputHourBs)) + "/s"})
	}
	sort.SliceStable(rows[1:], func(i, j int) bool { return rows[1+i][0] < rows[1+j][0] })
	if err := table(e.stdout, rows); err != nil {
		return err
	}
	for _, s := range sites {
		switch {
		case s.LiveError != "":
			fmt.Fprintf(e.stderr, "stagectl: site %s: stagers and backlog unknown: %s\n", s.Name, s.LiveError)
		case len(s.Stagers) == 0:
			fmt.Fprintf(e.stderr, "stagectl: site %s: no stager heartbeat; its requests wait\n", s.Name)
		}
	}
	return nil
}
