// Package scenario builds realistic event streams for the ledger's tests and
// benchmarks: every event is made with event.New and the contract's ids.
package scenario

import (
	"fmt"
	"strings"
	"time"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
)

// Msg is an event and the subject it is published on.
type Msg struct {
	Subject string
	Env     event.Envelope
}

// Sum is a well-formed checksum.
const Sum = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

// Job describes one job's history.
type Job struct {
	ID       string
	Packages int // staged successfully (one retry on the second package)
	// NoSource adds a package the planner cannot find (failed at plan time).
	NoSource bool
	// Permanent adds a package whose staging fails permanently.
	Permanent bool
	Site      string
	Location  string
	Base      time.Time // time of the first event; later ones follow a second apart
	// Progress is the number of progress events per attempt.
	Progress int
	// Cancel cancels the job once its first package is staged; the others
	// never start.
	Cancel bool
	// Withdraw (with Cancel) adds the stager's withdrawal of each package
	// not started: a permanent staging.failed with reason cancelled.
	Withdraw bool
	// Release releases the job's staged copies at the end.
	Release bool
	// Remove removes the first package's archive copy at the end.
	Remove bool
	// Follows names a job whose requests this one follows (cross-job
	// dedup): the same packages (Packages, Permanent as in that job), each
	// planned with the other job's request id; no stager event of its own.
	Follows string
	// Stalled adds a package the planner's reconciler gives up on after one
	// started attempt (staging.stalled).
	Stalled bool
	// Present makes the first package's done say it was already at the
	// destination (nothing was copied).
	Present bool
}

type builder struct {
	out []Msg
	t   time.Time
	err error
}

func (b *builder) add(subj, source, id string, d event.Data) {
	if b.err != nil {
		return
	}
	env, err := event.New(source, id, "", d)
	if err != nil {
		b.err = err
		return
	}
	env.Time = b.t
	b.t = b.t.Add(time.Second)
	b.out = append(b.out, Msg{Subject: subj, Env: env})
}

// PackageID is the id of the i-th package of a job.
func PackageID(job string, i int) string { return fmt.Sprintf("%s-pkg-%d", job, i) }

// Events returns the job's events in the order they would be published:
// archive copies, submit, plan, then each package's attempts.
func Events(j Job) ([]Msg, error) {
	if j.Site == "" {
		j.Site, j.Location = "cologne", "cologne-proc"
	}
	if j.Base.IsZero() {
		j.Base = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	}
	b := &builder{t: j.Base}
	planner := "ccat-staging/planner"
	stager := "ccat-staging/stager/" + j.Site + "/h1"
	owner := j.ID // whose requests stage the packages
	if j.Follows != "" {
		owner = j.Follows
	}
	var ids []string
	for i := range j.Packages {
		ids = append(ids, PackageID(owner, i))
	}
	if j.Permanent {
		ids = append(ids, PackageID(owner, 90))
	}
	if j.Stalled {
		ids = append(ids, PackageID(owner, 80))
	}
	all := ids
	if j.NoSource {
		all = append(append([]string{}, ids...), PackageID(j.ID, 99))
	}
	for _, p := range ids {
		if j.Follows != "" {
			break // archived by the job followed
		}
		b.add(subject.Archived, "ccat-staging/demo", "archived:"+p, event.PackageArchived{PackageID: p, Location: "cologne-lta",
			Key: "obs/" + p + ".tar", SizeBytes: 10240, Checksum: Sum, Format: "tar",
			Files: []event.File{{Path: "a.fits", SizeBytes: 5, SHA256: strings.TrimPrefix(Sum, "sha256:")}}})
	}
	submitID := "submit-" + j.ID
	b.add(subject.Submit, "ccat-staging/test", submitID, event.Submit{JobID: j.ID, Packages: all,
		Destination: event.Destination{Site: j.Site}, RequestedBy: "alice", Priority: "normal", Note: "note of " + j.ID})
	var plan []event.PlannedPackage
	for _, p := range ids {
		plan = append(plan, event.PlannedPackage{PackageID: p, Status: event.StatusScheduled, RequestID: reqID(owner, p),
			Source:    &event.Source{Location: "cologne-lta", Site: "cologne", Storage: "disk", Key: "obs/" + p + ".tar"},
			SizeBytes: 10240, Checksum: Sum})
	}
	if j.NoSource {
		plan = append(plan, event.PlannedPackage{PackageID: PackageID(j.ID, 99), Status: event.StatusFailed,
			Reason: event.ReasonNoSource, Message: "no active archive copy"})
	}
	b.add(subject.Planned, planner, "planned:"+j.ID, event.Planned{JobID: j.ID, RequestedBy: "alice", Priority: "normal",
		Note: "note of " + j.ID, Destination: event.Target{Site: j.Site, Location: j.Location}, Packages: plan})
	for i, p := range ids {
		if j.Follows != "" {
			break // the followed job's events stage these packages
		}
		if j.Cancel && i == 1 {
			b.add(subject.Cancel, "ccat-staging/stagectl", "cancel:"+j.ID, event.Cancel{JobID: j.ID, Reason: "wrong packages", RequestedBy: "carol"})
			for _, q := range ids[i:] {
				if !j.Withdraw {
					break
				}
				rid := reqID(owner, q)
				b.add(subject.Failed, stager, "failed:"+rid+":1", event.Failed{Outcome: event.Outcome{JobID: j.ID, PackageID: q,
					Site: j.Site, Location: j.Location, Attempt: 1, RequestID: rid, Instance: "h1"},
					Reason: event.ReasonCancelled, Message: "job cancelled before this package started", Permanent: true})
			}
			break
		}
		rid := reqID(j.ID, p)
		out := func(a int) event.Outcome {
			return event.Outcome{JobID: j.ID, PackageID: p, Site: j.Site, Location: j.Location, Attempt: a, RequestID: rid, Instance: "h1"}
		}
		attempts := 1
		if i == 1 {
			attempts = 2
		}
		for a := 1; a <= attempts; a++ {
			b.add(subject.Started, stager, fmt.Sprintf("started:%s:%d", rid, a), event.Started{Outcome: out(a)})
			for s := 1; s <= j.Progress; s++ {
				done := int64(10240 * s / (j.Progress + 1))
				b.add(subject.Progress, stager, fmt.Sprintf("progress:%s:%d:%d", rid, a, s),
					event.Progress{Outcome: out(a), BytesDone: done, BytesTotal: 10240, RateBytesPerSecond: 1e6})
			}
			switch {
			case p == PackageID(j.ID, 80):
				b.add(subject.Stalled, planner, "stalled:"+rid+":stalled", event.Stalled{JobID: j.ID, PackageID: p,
					Site: j.Site, Location: j.Location, RequestID: rid, Reason: event.ReasonStalled, Message: "request lost", Reissues: 3})
			case p == PackageID(j.ID, 90):
				b.add(subject.Failed, stager, fmt.Sprintf("failed:%s:%d", rid, a), event.Failed{Outcome: out(a),
					Reason: event.ReasonChecksumMismatch, Message: "tar checksum differs", Permanent: true})
			case a < attempts:
				b.add(subject.Failed, stager, fmt.Sprintf("failed:%s:%d", rid, a), event.Failed{Outcome: out(a),
					Reason: event.ReasonIOError, Message: "connection reset"})
			default:
				b.add(subject.Done, stager, "done:"+rid, event.Done{Outcome: out(a), Path: "/data/proc/" + p,
					SizeBytes: 10240, Files: 1, DurationSeconds: 1.5, AlreadyPresent: j.Present && i == 0})
			}
		}
	}
	if j.Release {
		b.add(subject.Release, "ccat-staging/stagectl", "release:"+j.ID, event.Release{JobID: j.ID, RequestedBy: "alice"})
	}
	if j.Remove && len(ids) > 0 {
		b.add(subject.Removed, "ccat-staging/demo", "removed:"+ids[0], event.PackageRemoved{PackageID: ids[0], Location: "cologne-lta",
			Key: "obs/" + ids[0] + ".tar", Reason: "tape retired"})
	}
	return b.out, b.err
}

func reqID(job, pkg string) string { return "request:" + job + ":" + pkg + ":1" }
