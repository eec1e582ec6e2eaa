package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/schollz/progressbar/v3"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
	"github.com/ccatobs/ccat-staging/shared/logx"
)

type waitOpts struct {
	timeout, poll time.Duration
	plain         bool
}

// progress shows a followed job; update is called after every poll.
type progress interface {
	update(j ledgerapi.Job, now time.Time)
	finish(j ledgerapi.Job)
}

// wait follows a job through the ledger until it is terminal and turns its
// end into stagectl's exit code.
func wait(ctx context.Context, e *env, id string, o waitOpts) error {
	wctx := ctx
	if o.timeout > 0 {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	var p progress
	switch {
	case e.cfg.JSON:
		// stdout is for the final JSON document only.
		p = &plainProgress{w: e.stderr, id: id}
	case !o.plain && isTTY(e.stdout):
		p = newBarProgress(e.stdout, id)
	default:
		p = &plainProgress{w: e.stdout, id: id}
	}
	api := e.ledger()
	t := time.NewTicker(o.poll)
	defer t.Stop()
	var (
		j       ledgerapi.Job
		lastErr error
	)
	for {
		got, err := api.Job(wctx, id)
		switch {
		case err == nil:
			j, lastErr = got, nil
			p.update(j, time.Now())
		case errors.Is(err, ledgerapi.ErrNotFound):
			// The ledger has not projected the submit yet.
			lastErr = err
		case wctx.Err() == nil:
			if lastErr == nil || lastErr.Error() != err.Error() {
				e.log.Warn().Err(err).Str(logx.JobID, id).Msg("ledger not answering; still waiting")
			}
			lastErr = err
		}
		if err == nil && j.Terminal() {
			break
		}
		select {
		case <-wctx.Done():
			p.finish(j)
			if ctx.Err() != nil {
				return fmt.Errorf("stopped waiting for job %s: %w", id, ctx.Err())
			}
			status := orDefault(j.Status, "unknown to the ledger")
			if lastErr != nil {
				status += "; last error: " + lastErr.Error()
			}
			return withCode(ExitTimeout, fmt.Errorf("job %s did not end within %s (status %s)", id, o.timeout, status))
		case <-t.C:
			continue
		}
	}
	p.finish(j)
	if e.cfg.JSON {
		if err := writeJSON(e.stdout, j); err != nil {
			return err
		}
	} else if err := summary(e.stdout, j); err != nil {
		return err
	}
	if code := outcomeCode(j.Status); code != ExitOK {
		return silent{code: code}
	}
	return nil
}

// outcomeCode maps a terminal job status to stagectl's exit code.
func outcomeCode(status string) int {
	switch status {
	case event.StatusCompleted:
		return ExitOK
	case event.StatusFailed:
		return ExitFailed
	case "rejected":
		return ExitRejected
	case "cancelled":
		return ExitCancelled
	}
	return ExitError
}

// summary says how a job ended, with the packages that did not make it.
func summary(w io.Writer, j ledgerapi.Job) error {
	c := j.Counts
	switch j.Status {
	case "rejected":
		fmt.Fprintf(w, "job %s rejected: %s: %s\n", j.JobID, dash(j.Reason), oneLine(j.Message, 200))
		return nil
	case event.StatusCompleted:
		fmt.Fprintf(w, "job %s completed: %d of %d packages, %s%s\n", j.JobID, c.Completed, c.Total, humanBytes(j.BytesTotal), took(j))
		return nil
	}
	fmt.Fprintf(w, "job %s %s: %d of %d packages completed, %d failed%s\n", j.JobID, j.Status, c.Completed, c.Total, c.Failed, took(j))
	rows := [][]string{{"PACKAGE", "STATUS", "REASON", "ATTEMPTS", "MESSAGE"}}
	for _, p := range j.Packages {
		if p.Status != event.StatusCompleted {
			rows = append(rows, []string{p.PackageID, p.Status, dash(p.Reason), fmt.Sprint(p.Attempts), oneLine(p.Message, 80)})
		}
	}
	if len(rows) > 1 {
		return table(w, rows)
	}
	return nil
}

func took(j ledgerapi.Job) string {
	if j.CreatedAt.IsZero() || j.CompletedAt == nil {
		return ""
	}
	return ", took " + j.CompletedAt.Sub(j.CreatedAt).Round(time.Second).String()
}

func isTTY(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && isatty.IsTerminal(f.Fd())
}

// rate estimates the transfer rate from the first observation on, which is
// steadier than the last poll's difference.
type rate struct {
	t0  time.Time
	b0  int64
	set bool
}

// eta returns the expected time left, or false while there is no estimate.
func (r *rate) eta(now time.Time, done, total int64) (time.Duration, bool) {
	if !r.set {
		r.t0, r.b0, r.set = now, done, true
		return 0, false
	}
	el := now.Sub(r.t0).Seconds()
	if el <= 0 || done <= r.b0 || total <= done {
		return 0, false
	}
	bps := float64(done-r.b0) / el
	return time.Duration(float64(total-done) / bps * float64(time.Second)).Round(time.Second), true
}

// plainProgress prints a line whenever the job changes, for logs and pipes.
type plainProgress struct {
	w        io.Writer
	id       string
	last     string
	lastAt   time.Time
	lastByte int64
	r        rate
}

func (p *plainProgress) update(j ledgerapi.Job, now time.Time) {
	eta, etaOK := p.r.eta(now, j.BytesDone, j.BytesTotal)
	state := fmt.Sprintf("%s %d/%d/%d", j.Status, j.Counts.Completed, j.Counts.Failed, j.Counts.Total)
	// A byte count alone moves on every poll: one line per 2 s is plenty.
	if state == p.last && (j.BytesDone == p.lastByte || now.Sub(p.lastAt) < 2*time.Second) {
		return
	}
	p.last, p.lastAt, p.lastByte = state, now, j.BytesDone
	fmt.Fprintln(p.w, plainLine(j, now, eta, etaOK))
}

func (p *plainProgress) finish(ledgerapi.Job) {}

func plainLine(j ledgerapi.Job, now time.Time, eta time.Duration, etaOK bool) string {
	c := j.Counts
	s := fmt.Sprintf("%s job %s %s packages %d/%d done %d failed", now.UTC().Format(time.RFC3339), j.JobID, j.Status, c.Completed, c.Total, c.Failed)
	if j.BytesTotal > 0 {
		s += fmt.Sprintf(" bytes %s/%s (%d%%)", humanBytes(j.BytesDone), humanBytes(j.BytesTotal), j.BytesDone*100/j.BytesTotal)
	}
	if etaOK && !j.Terminal() {
		s += " eta " + eta.String()
	}
	return s
}

// barProgress draws one progress bar per job on a terminal: bytes with rate
// and ETA, packages in the description.
type barProgress struct {
	w   io.Writer
	bar *progressbar.ProgressBar
	max int64
}

func newBarProgress(w io.Writer, id string) *barProgress {
	return &barProgress{w: w, max: -1, bar: progressbar.NewOptions64(-1,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(id+" waiting for the plan"),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowCount(),
		progressbar.OptionUseIECUnits(true),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionSetRenderBlankState(true),
	)}
}

func (b *barProgress) update(j ledgerapi.Job, _ time.Time) {
	if j.BytesTotal > 0 && j.BytesTotal != b.max {
		b.max = j.BytesTotal
		b.bar.ChangeMax64(j.BytesTotal)
	}
	c := j.Counts
	b.bar.Describe(fmt.Sprintf("%s %s %d/%d pkgs", j.JobID, j.Status, c.Completed+c.Failed, c.Total))
	_ = b.bar.Set64(j.BytesDone)
}

func (b *barProgress) finish(j ledgerapi.Job) {
	if j.Status == event.StatusCompleted {
		_ = b.bar.Finish()
	} else {
		_ = b.bar.Exit()
	}
	fmt.Fprintln(b.w)
}
