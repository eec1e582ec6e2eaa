package httpapi

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/ccatobs/ccat-staging/services/ledger/store"
	"github.com/ccatobs/ccat-staging/shared/heartbeat"
	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
)

// staleProgress is how long a running package may stay silent before the
// explanation says so; stagers report every few seconds.
const staleProgress = 2 * time.Minute

func handleJobExplain(d Deps) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, ok := jobID(w, r)
		if !ok {
			return
		}
		job, err := d.Store.GetJob(r.Context(), id)
		if errors.Is(err, store.ErrNotFound) {
			notFound(w, r, "job", id)
			return
		}
		if err != nil {
			internalError(w, r, d.Log, err)
			return
		}
		last, err := d.Store.LastAttempts(r.Context(), id)
		if err != nil {
			internalError(w, r, d.Log, err)
			return
		}
		now := d.Now()
		// What NATS knows is fetched once per site, and its absence is an
		// explanation in itself rather than an error.
		type siteLive struct {
			backlog []ledgerapi.Backlog
			beats   []heartbeat.Beat
			err     error
		}
		live := map[string]*siteLive{}
		var beats []heartbeat.Beat
		var beatsErr error
		if d.Live != nil {
			beats, beatsErr = d.Live.Stagers(r.Context())
		} else {
			beatsErr = errors.New("the ledger has no NATS connection")
		}
		liveOf := func(site string) *siteLive {
			if l, ok := live[site]; ok {
				return l
			}
			l := &siteLive{err: beatsErr}
			if l.err == nil {
				for _, b := range beats {
					if b.Site == site {
						l.beats = append(l.beats, b)
					}
				}
				l.backlog, l.err = d.Live.Backlog(r.Context(), site)
			}
			live[site] = l
			return l
		}
		out := []ledgerapi.PackageExplanation{}
		for _, p := range job.Packages {
			if p.Status == "completed" || p.Status == "failed" || p.Status == "cancelled" {
				continue
			}
			site := p.Destination.Site
			var why string
			switch {
			case p.Status == "pending":
				why = fmt.Sprintf("waiting for the planner: the job was submitted %s ago and has no plan yet", ago(now, job.CreatedAt))
			case p.Status == "in_progress":
				why = fmt.Sprintf("in progress at site %s", site)
				if p.Progress.BytesTotal > 0 {
					why += fmt.Sprintf(" at %.0f%% (%d of %d bytes", 100*float64(p.Progress.BytesDone)/float64(p.Progress.BytesTotal),
						p.Progress.BytesDone, p.Progress.BytesTotal)
					if p.Progress.RateBytesPerSecond > 0 {
						why += fmt.Sprintf(", %.1f MB/s", p.Progress.RateBytesPerSecond/1e6)
					}
					why += ")"
				}
				if p.StartedAt != nil {
					why += fmt.Sprintf(" for %s", ago(now, *p.StartedAt))
				}
				why += fmt.Sprintf(", attempt %d", p.Attempts)
				if a, ok := last[p.PackageID]; ok && a.Instance != "" {
					why += " on stager " + a.Instance
				}
				if p.Progress.UpdatedAt != nil && now.Sub(*p.Progress.UpdatedAt) > staleProgress {
					why += fmt.Sprintf("; no progress report for %s", ago(now, *p.Progress.UpdatedAt))
				}
			case p.Attempts > 0:
				a := last[p.PackageID]
				why = fmt.Sprintf("attempt %d failed at site %s with %s", p.Attempts, site, p.Reason)
				if p.Message != "" {
					why += " (" + p.Message + ")"
				}
				if a.EndedAt != nil {
					// The stagers' own policy: no_space waits its fixed
					// delay, everything else doubles (±jitter, hence about).
					at := a.EndedAt.Add(d.Retry.Nominal(p.Attempts, p.Reason))
					why += fmt.Sprintf("; retry %d scheduled at about %s", p.Attempts+1, at.UTC().Format(time.RFC3339))
				} else {
					why += fmt.Sprintf("; retry %d scheduled", p.Attempts+1)
				}
			default:
				why = fmt.Sprintf("waiting in the queue at site %s", site)
				l := liveOf(site)
				if l.err == nil {
					for _, b := range l.backlog {
						if b.Priority == job.Priority {
							why += fmt.Sprintf(" behind up to %d requests (%s priority; %d being staged)", b.Pending, b.Priority, b.AckPending)
						}
					}
				}
			}
			if p.Status != "pending" && site != "" {
				l := liveOf(site)
				switch {
				case l.err != nil:
					why += fmt.Sprintf("; stager state unknown: %v", l.err)
				case len(l.beats) == 0:
					why += fmt.Sprintf("; no stager heartbeat at site %s for at least %s", site, heartbeat.TTL)
				}
			}
			out = append(out, ledgerapi.PackageExplanation{PackageID: p.PackageID, Status: p.Status, Why: why})
		}
		summary := fmt.Sprintf("job %s is %s: %d of %d packages completed, %d failed", job.JobID, job.Status,
			job.Counts.Completed, job.Counts.Total, job.Counts.Failed)
		if job.Status == "rejected" {
			summary = fmt.Sprintf("job %s was rejected (%s): %s", job.JobID, job.Reason, job.Message)
		}
		encode(w, http.StatusOK, ledgerapi.Explanation{JobID: job.JobID, Status: job.Status, Summary: summary, Packages: out})
	})
}

func ago(now, t time.Time) string {
	d := now.Sub(t)
	if d < 0 {
		d = 0
	}
	return d.Round(time.Second).String()
}
