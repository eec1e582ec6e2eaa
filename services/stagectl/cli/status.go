package cli

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
)

func runStatus(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet("stagectl status", e.stderr)
	fs.Usage = func() {
		fmt.Fprintln(e.stderr, "usage: stagectl status JOB [--json]")
		fs.PrintDefaults()
	}
	pos, err := e.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("status takes exactly one job id")
	}
	j, err := getJob(ctx, e, pos[0])
	if err != nil {
		return err
	}
	if e.cfg.JSON {
		return writeJSON(e.stdout, j)
	}
	return printJob(e.stdout, j)
}

// getJob fetches a job; a job the ledger does not know is exit code 8.
func getJob(ctx context.Context, e *env, id string) (ledgerapi.Job, error) {
	j, err := e.ledger().Job(ctx, id)
	if errors.Is(err, ledgerapi.ErrNotFound) {
		return j, withCode(ExitNotFound, fmt.Errorf("job %s: the ledger does not know it (yet)", id))
	}
	return j, err
}

func printJob(w io.Writer, j ledgerapi.Job) error {
	c := j.Counts
	dest := "-"
	if j.Destination != (ledgerapi.Place{}) { // the wire format has no null destination
		dest = j.Destination.Site + "/" + dash(j.Destination.Location)
	}
	head := [][]string{
		{"job", j.JobID},
		{"status", j.Status + reasonSuffix(j.Reason, j.Message)},
		{"destination", dest},
		{"priority", dash(j.Priority)},
		{"requested by", dash(j.RequestedBy)},
		{"packages", fmt.Sprintf("%d total, %d completed, %d failed, %d in progress, %d scheduled, %d pending",
			c.Total, c.Completed, c.Failed, c.InProgress, c.Scheduled, c.Pending)},
		{"bytes", fmt.Sprintf("%s of %s", humanBytes(j.BytesDone), humanBytes(j.BytesTotal))},
		{"created", fmtTime(&j.CreatedAt)},
		{"updated", fmtTime(&j.UpdatedAt)},
		{"completed", fmtTime(j.CompletedAt)},
	}
	if j.Note != "" {
		head = append(head, []string{"note", oneLine(j.Note, 200)})
	}
	for i := range head {
		head[i][0] += ":"
	}
	if err := table(w, head); err != nil {
		return err
	}
	if len(j.Packages) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	return table(w, packageRows(j.Packages))
}

func reasonSuffix(reason, msg string) string {
	switch {
	case reason != "" && msg != "":
		return " (" + reason + ": " + oneLine(msg, 120) + ")"
	case reason != "":
		return " (" + reason + ")"
	}
	return ""
}

func packageRows(ps []ledgerapi.Package) [][]string {
	rows := [][]string{{"PACKAGE", "STATUS", "ATTEMPTS", "SIZE", "PROGRESS", "SOURCE", "PATH", "REASON"}}
	for _, p := range ps {
		prog := "-"
		if p.Progress.BytesTotal > 0 && p.Status != "completed" {
			prog = fmt.Sprintf("%d%%", p.Progress.BytesDone*100/p.Progress.BytesTotal)
		} else if p.Status == "completed" {
			prog = "100%"
		}
		src := dash(p.Source.Location)
		rows = append(rows, []string{p.PackageID, p.Status, fmt.Sprint(p.Attempts), humanBytes(p.SizeBytes), prog, src, dash(p.Path),
			dash(p.Reason) + msgSuffix(p.Message)})
	}
	return rows
}

func msgSuffix(m string) string {
	if m == "" {
		return ""
	}
	return ": " + oneLine(m, 60)
}
