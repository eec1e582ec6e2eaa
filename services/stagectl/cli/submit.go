package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/logx"
	"github.com/ccatobs/ccat-staging/shared/subject"
)

type submitOpts struct {
	site, location, priority, jobID, note, requestedBy, fromFile string
	packages                                                     stringList
	wait, plain                                                  bool
	timeout, poll                                                time.Duration
}

func runSubmit(ctx context.Context, e *env, args []string) error {
	var o submitOpts
	fs := newFlagSet("stagectl submit", e.stderr)
	fs.StringVar(&o.site, "site", "", "destination site (the planner picks its processing location)")
	fs.StringVar(&o.location, "location", "", "destination processing location (instead of --site)")
	fs.Var(&o.packages, "package", "package id (repeatable; bare arguments count too)")
	fs.StringVar(&o.fromFile, "from-file", "", "file of package ids, one per line, # comments; - for stdin")
	fs.StringVar(&o.priority, "priority", "", "high, normal or low (default: the planner's, normal)")
	fs.StringVar(&o.jobID, "job-id", "", "job id, the idempotency key (default: generated)")
	fs.StringVar(&o.note, "note", "", "free text kept with the job")
	fs.StringVar(&o.requestedBy, "requested-by", "", "who asks (default $USER)")
	fs.BoolVar(&o.wait, "wait", false, "follow the job until it ends; the exit code reflects the outcome")
	fs.DurationVar(&o.timeout, "timeout", 0, "with --wait: give up after this long (exit 6); 0 waits forever")
	fs.DurationVar(&o.poll, "poll", time.Second, "with --wait: how often to ask the ledger")
	fs.BoolVar(&o.plain, "plain", false, "with --wait: plain progress lines even on a terminal")
	fs.Usage = func() {
		fmt.Fprintln(e.stderr, "usage: stagectl submit (--site S | --location L) --package P [--package P2 …] [flags]")
		fs.PrintDefaults()
	}
	pos, err := e.parse(fs, args)
	if err != nil {
		return err
	}
	o.packages = append(o.packages, pos...)
	if o.fromFile != "" {
		ids, err := readIDs(o.fromFile, e.stdin)
		if err != nil {
			return err
		}
		o.packages = append(o.packages, ids...)
	}
	data, err := o.submit(e.cfg.User, time.Now())
	if err != nil {
		return err
	}
	if o.wait && o.poll <= 0 {
		return usagef("--poll must be positive")
	}
	ev, err := publish(ctx, e, subject.Submit, newUUID(), data)
	if err != nil {
		return err
	}
	e.log.Info().Str(logx.JobID, data.JobID).Str(logx.EventID, ev.ID).Int("packages", len(data.Packages)).Msg("submitted")
	if !o.wait {
		if e.cfg.JSON {
			return writeJSON(e.stdout, map[string]string{"job_id": data.JobID, "event_id": ev.ID})
		}
		_, err := fmt.Fprintln(e.stdout, data.JobID)
		return err
	}
	return wait(ctx, e, data.JobID, waitOpts{timeout: o.timeout, poll: o.poll, plain: o.plain})
}

// submit checks the options and builds the event's data.
func (o submitOpts) submit(user string, now time.Time) (event.Submit, error) {
	if (o.site == "") == (o.location == "") {
		return event.Submit{}, usagef("give exactly one of --site and --location")
	}
	if len(o.packages) == 0 {
		return event.Submit{}, usagef("no packages: give --package, bare ids or --from-file")
	}
	switch o.priority {
	case "", event.PriorityHigh, event.PriorityNormal, event.PriorityLow:
	default:
		return event.Submit{}, usagef("--priority %q: want high, normal or low", o.priority)
	}
	seen := map[string]bool{}
	for _, p := range o.packages {
		if seen[p] {
			// The planner would reject the whole job for it; say so here.
			return event.Submit{}, usagef("package %q given twice", p)
		}
		seen[p] = true
	}
	d := event.Submit{
		JobID:       o.jobID,
		Packages:    o.packages,
		Destination: event.Destination{Site: o.site, Location: o.location},
		RequestedBy: orDefault(o.requestedBy, user),
		Priority:    o.priority,
		Note:        o.note,
	}
	if d.JobID == "" {
		d.JobID = newJobID(now)
	}
	return d, nil
}

// readIDs reads package ids, one per line; blank lines and # comments are
// skipped, so a list can carry notes.
func readIDs(name string, stdin io.Reader) ([]string, error) {
	r := stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return nil, fmt.Errorf("--from-file: %w", err)
		}
		defer f.Close()
		r = f
	}
	var out []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		out = append(out, strings.Fields(line)...)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("--from-file %s: %w", name, err)
	}
	return out, nil
}
