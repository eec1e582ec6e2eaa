package store

import (
	"bufio"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/shared/event"
)

var placeholder = regexp.MustCompile(`\$(\d+)`)

// The write path has one SQL notation, the one pgx sends: every statement an
// event of each family queues uses $1…$n, each of them, with exactly n
// arguments, and no ? placeholder a conversion layer would have to rewrite.
// No database: exec only queues.
func TestWritePathStatementsArePgxNotation(t *testing.T) {
	at := time.Date(2026, 12, 6, 1, 0, 0, 0, time.UTC)
	o := event.Outcome{JobID: "j", PackageID: "p", Site: "s", Location: "l", Attempt: 1, RequestID: "request:j:p:1", Instance: "i"}
	src := &event.Source{Location: "a", Site: "s", Storage: "disk", Key: "k"}
	data := []event.Data{
		event.Submit{JobID: "j", Packages: []string{"p"}, Destination: event.Destination{Site: "s", Location: "l"}},
		event.Submit{JobID: "w", Packages: []string{"p"}}, // a whole plan of w follows in the batch
		event.Planned{JobID: "w", Packages: []event.PlannedPackage{{PackageID: "p", Status: "scheduled", Source: src}}},
		event.Planned{JobID: "j", Part: 1, Parts: 2, Packages: []event.PlannedPackage{{PackageID: "p", Status: "failed", Reason: event.ReasonNoSource}}},
		event.Planned{JobID: "e"}, // without packages
		event.Rejected{JobID: "j", Reason: event.ReasonUnknownSite},
		event.Rejected{JobID: "j", Reason: event.ReasonJobIDConflict}, // log only
		event.Request{JobID: "j", PackageID: "p"},                     // log only
		event.Cancel{JobID: "j", Reason: "r", RequestedBy: "u"},
		event.Release{JobID: "j", RequestedBy: "u"},
		event.Released{PackageID: "p", Site: "s", Location: "l", Jobs: []string{"j"}},
		event.Released{PackageID: "p", Site: "s", Location: "l", Reason: event.ReasonIOError},
		event.Stalled{JobID: "j", PackageID: "q", Site: "s", Location: "l", Reason: "stalled"},
		event.PackageArchived{PackageID: "p", Location: "a", Files: []event.File{{Path: "f"}}},
		event.PackageRemoved{PackageID: "p", Location: "a"},
		event.Started{Outcome: o},
		event.Progress{Outcome: o, BytesDone: 1, BytesTotal: 2},
		event.Done{Outcome: o, Path: "/x", SizeBytes: 2},
		event.Failed{Outcome: event.Outcome{JobID: "j", PackageID: "r", Attempt: 2}, Reason: event.ReasonIOError, Permanent: true},
	}
	ds := make([]decoded, len(data))
	isNew := map[[2]string]bool{}
	for i, v := range data {
		raw, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		e := Event{Env: event.Envelope{Source: "t", ID: strconv.Itoa(i), Type: v.EventType(), Data: raw}, Time: at}
		if ds[i], err = decode(e); err != nil {
			t.Fatal(err)
		}
		isNew[[2]string{"t", strconv.Itoa(i)}] = true
	}
	a := applier{sites: map[string]bool{}, locs: map[[2]string]bool{}, wholePlans: wholePlans(ds, isNew)}
	ctx := t.Context()
	var hot []decoded
	for _, d := range ds {
		if isHot(d) {
			hot = append(hot, d)
			continue
		}
		if err := a.apply(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	for _, step := range []func() error{
		func() error { return a.applyHot(ctx, hot) },
		func() error { return a.places(ctx) },
		func() error { return a.copies(ctx) },
		func() error { return a.deriveJobs(ctx, []string{"e", "j", "w"}) },
		func() error {
			a.queue = append(a.queue, poisonRows([]Poison{{Stream: "s", Raw: []byte("x")}}))
			return nil
		},
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	names := map[string]bool{}
	for _, q := range a.queue {
		names[q.name] = true
		if strings.Contains(q.sql, "?") {
			t.Errorf("%s: a ? in the statement:\n%s", q.name, q.sql)
		}
		seen := map[int]bool{}
		hi := 0
		for _, m := range placeholder.FindAllStringSubmatch(q.sql, -1) {
			n, _ := strconv.Atoi(m[1])
			seen[n], hi = true, max(hi, n)
		}
		if hi != len(q.args) || len(seen) != hi {
			t.Errorf("%s: placeholders up to $%d (%d distinct) for %d arguments:\n%s", q.name, hi, len(seen), len(q.args), q.sql)
		}
	}
	// Every family queued something (a missing one would test nothing).
	for _, want := range []string{"submit", "plan job", "drop unplanned packages", "plan packages", "reject job", "cancel job",
		"release job", "copy deleted", "copy deletion_failed", "stalled package", "upsert packages", "upsert archive copies",
		"remove archive copy", "running packages", "running attempts", "complete packages", "end attempts", "staged copies",
		"fail packages", "record sites", "record locations", "staged copy status", "cancel packages", "derive job status",
		"insert poison"} {
		if !names[want] {
			t.Errorf("no statement %q queued", want)
		}
	}
}

// The job status state machine says why for each transition: in the
// status CASE of job_status.sql every WHEN and the ELSE follow a comment.
func TestJobStatusTransitionsAreCommented(t *testing.T) {
	sc := bufio.NewScanner(strings.NewReader(sqlJobStatus))
	in, prev, branches := false, "", 0
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "status = CASE"):
			in = true
		case in && (strings.HasPrefix(line, "WHEN") || strings.HasPrefix(line, "ELSE")):
			branches++
			if !strings.HasPrefix(prev, "--") {
				t.Errorf("transition without a comment: %s", line)
			}
			if strings.HasSuffix(line, "END,") {
				in = false
			}
		}
		prev = line
	}
	if branches < 10 {
		t.Fatalf("found %d transitions in job_status.sql's status CASE", branches)
	}
}
