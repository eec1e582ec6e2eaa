package cli

import (
	"context"
	"fmt"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
)

// controlResult is what cancel and release print.
type controlResult struct {
	JobID   string `json:"job_id"`
	EventID string `json:"event_id"`
	Subject string `json:"subject"`
}

func runCancel(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet("stagectl cancel", e.stderr)
	reason := fs.String("reason", "", "why, kept with the job")
	by := fs.String("requested-by", "", "who asks (default $USER)")
	fs.Usage = func() {
		fmt.Fprintln(e.stderr, "usage: stagectl cancel JOB [--reason TEXT]")
		fs.PrintDefaults()
	}
	pos, err := e.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("cancel takes exactly one job id")
	}
	// One id per job: cancelling twice is one intent, deduplicated downstream.
	d := event.Cancel{JobID: pos[0], Reason: *reason, RequestedBy: orDefault(*by, e.cfg.User)}
	return control(ctx, e, subject.Cancel, "cancel", d.JobID, d)
}

func runRelease(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet("stagectl release", e.stderr)
	by := fs.String("requested-by", "", "who asks (default $USER)")
	fs.Usage = func() {
		fmt.Fprintln(e.stderr, "usage: stagectl release JOB")
		fs.PrintDefaults()
	}
	pos, err := e.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("release takes exactly one job id")
	}
	d := event.Release{JobID: pos[0], RequestedBy: orDefault(*by, e.cfg.User)}
	return control(ctx, e, subject.Release, "release", d.JobID, d)
}

// control publishes an operator's request about a job under the id
// <verb>:<job_id>.
func control[T event.Data](ctx context.Context, e *env, subj, verb, jobID string, d T) error {
	ev, err := publish(ctx, e, subj, verb+":"+jobID, d)
	if err != nil {
		return err
	}
	r := controlResult{JobID: jobID, EventID: ev.ID, Subject: subj}
	if e.cfg.JSON {
		return writeJSON(e.stdout, r)
	}
	_, err = fmt.Fprintf(e.stdout, "%s requested for job %s (event %s)\n", verb, r.JobID, ev.ID)
	return err
}
