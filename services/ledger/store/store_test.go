package store_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/dbtest"
	"github.com/ccatobs/ccat-staging/services/ledger/consume"
	"github.com/ccatobs/ccat-staging/services/ledger/internal/scenario"
	"github.com/ccatobs/ccat-staging/services/ledger/store"
	"github.com/ccatobs/ccat-staging/shared/db"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
	"github.com/ccatobs/ccat-staging/shared/subject"
)

func newStore(t *testing.T) *store.Store { return newStoreB(t) }

func newStoreB(t testing.TB) *store.Store {
	t.Helper()
	bdb, err := db.Open(t.Context(), dbtest.New(t), 8)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bdb.Close() })
	st := store.New(bdb)
	if _, err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	return st
}

// toEvents validates scenario messages the way the consumer does.
func toEvents(t *testing.T, msgs []scenario.Msg) []store.Event { return toEventsB(t, msgs) }

func toEventsB(t testing.TB, msgs []scenario.Msg) []store.Event {
	t.Helper()
	var out []store.Event
	for i, m := range msgs {
		raw, err := json.Marshal(m.Env)
		if err != nil {
			t.Fatal(err)
		}
		stream := subject.EventsStream
		if strings.HasPrefix(m.Subject, "archive.") {
			stream = subject.ArchiveStream
		}
		ev, p, ok := consume.Classify(stream, m.Subject, uint64(i+1), time.Now(), raw)
		if !ok {
			t.Fatalf("scenario event %s is invalid: %s", m.Env.ID, p.Message)
		}
		out = append(out, ev)
	}
	return out
}

func events(t *testing.T, jobs ...scenario.Job) []store.Event {
	t.Helper()
	var all []store.Event
	for _, j := range jobs {
		msgs, err := scenario.Events(j)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, toEvents(t, msgs)...)
	}
	return all
}

func apply(t *testing.T, st *store.Store, evs []store.Event, poison ...store.Poison) store.Result {
	t.Helper()
	res, err := st.Apply(t.Context(), evs, poison)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return res
}

func snapshot(t *testing.T, st *store.Store) map[string][]string {
	t.Helper()
	s, err := scenario.Snapshot(t.Context(), st.DB())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func diffSnapshots(t *testing.T, what string, got, want map[string][]string) {
	t.Helper()
	for name := range want {
		if reflect.DeepEqual(got[name], want[name]) {
			continue
		}
		if len(got[name]) != len(want[name]) {
			t.Errorf("%s: table %s has %d rows, want %d", what, name, len(got[name]), len(want[name]))
			continue
		}
		for i := range want[name] {
			if got[name][i] != want[name][i] {
				t.Errorf("%s: table %s row %d differs:\ngot  %s\nwant %s", what, name, i, got[name][i], want[name][i])
			}
		}
	}
}

func TestJobLifecycle(t *testing.T) {
	st := newStore(t)
	tests := []struct {
		name       string
		job        scenario.Job
		wantStatus string
		wantCounts ledgerapi.Counts
		wantReason string
		wantPkgs   map[int]string // package index -> status
	}{
		{"all staged", scenario.Job{ID: "ok", Packages: 3, Progress: 2}, "completed",
			ledgerapi.Counts{Total: 3, Completed: 3}, "", map[int]string{0: "completed", 1: "completed", 2: "completed"}},
		{"one without source", scenario.Job{ID: "nosrc", Packages: 2, NoSource: true}, "failed",
			ledgerapi.Counts{Total: 3, Completed: 2, Failed: 1}, event.ReasonNoSource, map[int]string{0: "completed", 99: "failed"}},
		{"one failing permanently", scenario.Job{ID: "perm", Packages: 1, Permanent: true}, "failed",
			ledgerapi.Counts{Total: 2, Completed: 1, Failed: 1}, event.ReasonChecksumMismatch, map[int]string{0: "completed", 90: "failed"}},
		{"cancelled after one package", scenario.Job{ID: "cancel", Packages: 3, Cancel: true}, "cancelled",
			ledgerapi.Counts{Total: 3, Completed: 1, Cancelled: 2}, "cancelled", map[int]string{0: "completed", 1: "cancelled", 2: "cancelled"}},
		{"cancelled, the rest withdrawn by the stager", scenario.Job{ID: "withdrawn", Packages: 3, Cancel: true, Withdraw: true}, "cancelled",
			ledgerapi.Counts{Total: 3, Completed: 1, Cancelled: 2}, "cancelled", map[int]string{0: "completed", 1: "cancelled", 2: "cancelled"}},
		{"one given up by the planner", scenario.Job{ID: "stall", Packages: 1, Stalled: true}, "failed",
			ledgerapi.Counts{Total: 2, Completed: 1, Failed: 1}, event.ReasonStalled, map[int]string{0: "completed", 80: "failed"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			apply(t, st, events(t, tt.job))
			job, err := st.GetJob(t.Context(), tt.job.ID)
			if err != nil {
				t.Fatal(err)
			}
			if job.Status != tt.wantStatus || job.Counts != tt.wantCounts || job.Reason != tt.wantReason {
				t.Errorf("job = %s %+v %q, want %s %+v %q", job.Status, job.Counts, job.Reason, tt.wantStatus, tt.wantCounts, tt.wantReason)
			}
			if job.CompletedAt == nil {
				t.Errorf("completed_at is null for a finished job")
			}
			if job.Destination != (ledgerapi.Place{Site: "cologne", Location: "cologne-proc"}) || job.RequestedBy != "alice" || job.Priority != "normal" {
				t.Errorf("job header = %+v", job.JobSummary)
			}
			byID := map[string]ledgerapi.Package{}
			for _, p := range job.Packages {
				byID[p.PackageID] = p
			}
			for i, want := range tt.wantPkgs {
				if got := byID[scenario.PackageID(tt.job.ID, i)].Status; got != want {
					t.Errorf("package %d status = %q, want %q", i, got, want)
				}
			}
			if p, ok := byID[scenario.PackageID(tt.job.ID, 1)]; ok && p.Status == "completed" && (p.Attempts != 2 || p.Path == "" || p.Source.Key == "") {
				t.Errorf("retried package = %+v, want 2 attempts, a path and a source", p)
			}
		})
	}
}

// A job observed half-way: a retry is scheduled, another package is running.
func TestInFlightState(t *testing.T) {
	st := newStore(t)
	all := events(t, scenario.Job{ID: "j", Packages: 2, Progress: 2})
	// Stop after package 1's first failure: archived×2, submit, planned,
	// pkg0 started, progress×2, done, pkg1 started, progress×2, failed.
	var cut []store.Event
	for _, e := range all {
		cut = append(cut, e)
		if e.Env.Type == event.TypeFailed {
			break
		}
	}
	// And package 0 only half-way.
	var evs []store.Event
	for _, e := range cut {
		if e.Env.Type == event.TypeDone {
			continue
		}
		evs = append(evs, e)
	}
	apply(t, st, evs)
	job, err := st.GetJob(t.Context(), "j")
	if err != nil {
		t.Fatal(err)
	}
	p0, p1 := job.Packages[0], job.Packages[1]
	if job.Status != "in_progress" || p0.Status != "in_progress" || p1.Status != "scheduled" {
		t.Fatalf("statuses job=%s p0=%s p1=%s, want in_progress, in_progress, scheduled", job.Status, p0.Status, p1.Status)
	}
	if p1.Reason != event.ReasonIOError || p1.Attempts != 1 {
		t.Errorf("retried package reason=%q attempts=%d, want io_error, 1", p1.Reason, p1.Attempts)
	}
	if p0.Progress.BytesDone != 10240*2/3 || p0.Progress.BytesTotal != 10240 || p0.Progress.RateBytesPerSecond != 1e6 || p0.Progress.UpdatedAt == nil {
		t.Errorf("progress = %+v", p0.Progress)
	}
	if job.BytesDone != p0.Progress.BytesDone || job.BytesTotal != 2*10240 {
		t.Errorf("job bytes = %d/%d", job.BytesDone, job.BytesTotal)
	}
}

func TestShuffledAndDuplicatedGiveTheSameState(t *testing.T) {
	jobs := []scenario.Job{
		{ID: "a", Packages: 3, Progress: 3, Release: true, Remove: true},
		{ID: "b", Packages: 2, NoSource: true, Permanent: true, Progress: 1},
		{ID: "c", Packages: 3, Cancel: true},
		// Followers (cross-job dedup) of each of them.
		{ID: "d", Packages: 3, Follows: "a", Progress: 1},
		{ID: "e", Packages: 2, Permanent: true, Stalled: true, Follows: "b"},
		{ID: "f", Packages: 3, Follows: "c"},
		{ID: "g", Packages: 3, Cancel: true, Withdraw: true},
	}
	jobs[1].Stalled = true
	inOrder := newStore(t)
	for _, e := range events(t, jobs...) {
		apply(t, inOrder, []store.Event{e})
	}
	want := snapshot(t, inOrder)
	for seed := range uint64(4) {
		t.Run(fmt.Sprintf("seed %d", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 7))
			evs := events(t, jobs...)
			evs = append(evs, evs[:len(evs)/2]...) // redeliveries
			rng.Shuffle(len(evs), func(i, j int) { evs[i], evs[j] = evs[j], evs[i] })
			st := newStore(t)
			for len(evs) > 0 {
				n := min(len(evs), 1+rng.IntN(7))
				apply(t, st, evs[:n])
				evs = evs[n:]
			}
			diffSnapshots(t, "shuffled", snapshot(t, st), want)
		})
	}
	// One batch holds each package's started and done together, which the
	// applier folds into one write (mergeStarts), and every follower with
	// its leader.
	for seed := range uint64(2) {
		t.Run(fmt.Sprintf("one batch, seed %d", seed), func(t *testing.T) {
			evs := events(t, jobs...)
			evs = append(evs, evs[:len(evs)/3]...)
			rand.New(rand.NewPCG(seed, 3)).Shuffle(len(evs), func(i, j int) { evs[i], evs[j] = evs[j], evs[i] })
			st := newStore(t)
			apply(t, st, evs)
			diffSnapshots(t, "one batch", snapshot(t, st), want)
		})
	}
	t.Run("two instances at once", func(t *testing.T) {
		evs := events(t, jobs...)
		rand.New(rand.NewPCG(99, 1)).Shuffle(len(evs), func(i, j int) { evs[i], evs[j] = evs[j], evs[i] })
		st := newStore(t)
		var wg sync.WaitGroup
		for w := range 2 {
			wg.Go(func() {
				for i := w * 3; i < len(evs); i += 6 {
					if _, err := st.Apply(context.WithoutCancel(t.Context()), evs[i:min(i+3, len(evs))], nil); err != nil {
						t.Errorf("Apply: %v", err)
					}
				}
			})
		}
		wg.Wait()
		diffSnapshots(t, "concurrent", snapshot(t, st), want)
	})
}

func TestLateEventsDoNotMoveATerminalStatus(t *testing.T) {
	st := newStore(t)
	all := events(t, scenario.Job{ID: "late", Packages: 1, Progress: 1})
	var started, progress []store.Event
	for _, e := range all {
		switch e.Env.Type {
		case event.TypeStarted:
			started = append(started, e)
		case event.TypeProgress:
			progress = append(progress, e)
		}
	}
	apply(t, st, all)
	// A late redelivery of an earlier event is a duplicate; a late new
	// event (another instance's restart of attempt 2) is logged only.
	late := started[0]
	late.Env.ID = strings.Replace(late.Env.ID, ":1", ":2", 1)
	late.Env.Source = "ccat-staging/stager/cologne/h2"
	res := apply(t, st, append([]store.Event{late}, progress...))
	if res.Applied[event.TypeStarted] != 1 || res.Duplicates != len(progress) {
		t.Errorf("Apply = %+v, want 1 new started and %d duplicates", res, len(progress))
	}
	job, err := st.GetJob(t.Context(), "late")
	if err != nil {
		t.Fatal(err)
	}
	if job.Status != "completed" || job.Packages[0].Status != "completed" {
		t.Errorf("after a late started: job %s, package %s; want completed", job.Status, job.Packages[0].Status)
	}
	evs, err := st.JobEvents(t.Context(), "late")
	if err != nil {
		t.Fatal(err)
	}
	if got := evs[len(evs)-1]; got.ID != late.Env.ID && !containsID(evs, late.Env.ID) {
		t.Errorf("late event not in the log")
	}
}

func containsID(evs []ledgerapi.LogEntry, id string) bool {
	for _, e := range evs {
		if e.ID == id {
			return true
		}
	}
	return false
}

func TestRejections(t *testing.T) {
	st := newStore(t)
	evs := events(t, scenario.Job{ID: "owned", Packages: 1})
	conflict, _ := event.New("ccat-staging/planner", "rejected:other-submit", "", event.Rejected{JobID: "owned",
		SubmitID: "other-submit", Reason: event.ReasonJobIDConflict, Message: "job owned exists with other content"})
	bad, _ := event.New("ccat-staging/planner", "rejected:s-bad", "", event.Rejected{JobID: "bad",
		SubmitID: "s-bad", Reason: event.ReasonUnknownSite, Message: `no site "x"`})
	submitBad, _ := event.New("ccat-staging/test", "s-bad", "", event.Submit{JobID: "bad", Packages: []string{"p"},
		Destination: event.Destination{Site: "x"}, RequestedBy: "bob"})
	evs = append(evs, toEvents(t, []scenario.Msg{{Env: conflict}, {Env: bad}, {Env: submitBad}})...)
	apply(t, st, evs)
	owned, err := st.GetJob(t.Context(), "owned")
	if err != nil {
		t.Fatal(err)
	}
	if owned.Status != "completed" || owned.Reason != "" {
		t.Errorf("job_id_conflict touched the existing job: %s %q", owned.Status, owned.Reason)
	}
	if evs, _ := st.JobEvents(t.Context(), "owned"); !containsID(evs, "rejected:other-submit") {
		t.Errorf("job_id_conflict rejection not in the job's log")
	}
	rej, err := st.GetJob(t.Context(), "bad")
	if err != nil {
		t.Fatal(err)
	}
	if rej.Status != "rejected" || rej.Reason != event.ReasonUnknownSite || rej.Message == "" || rej.RequestedBy != "bob" {
		t.Errorf("rejected job = %+v", rej.JobSummary)
	}
}

func TestPoisonIsRecordedOnce(t *testing.T) {
	st := newStore(t)
	p := store.Poison{Stream: "STAGING_EVENTS", StreamSeq: 7, Subject: "staging.done", Reason: event.ReasonInvalidEnvelope,
		Message: "not JSON near \x00\xff", EventID: "id\x00", Raw: []byte("\x00\xffgarbage")}
	apply(t, st, nil, p)
	apply(t, st, nil, p) // redelivered
	got, err := st.PoisonList(t.Context(), 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Reason != event.ReasonInvalidEnvelope || got[0].StreamSeq != 7 {
		t.Errorf("poison = %+v, want one row", got)
	}
}

func TestMigrateTwiceAtOnce(t *testing.T) {
	url := dbtest.New(t)
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			bdb, err := db.Open(t.Context(), url, 2)
			if err != nil {
				t.Error(err)
				return
			}
			defer bdb.Close()
			if _, err := store.New(bdb).Migrate(t.Context()); err != nil {
				t.Errorf("Migrate: %v", err)
			}
		})
	}
	wg.Wait()
	bdb, err := db.Open(t.Context(), url, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer bdb.Close()
	if p, err := store.New(bdb).Pending(t.Context()); err != nil || len(p) != 0 {
		t.Errorf("Pending = %v, %v; want none", p, err)
	}
}

func TestReleaseAndRemoval(t *testing.T) {
	st := newStore(t)
	apply(t, st, events(t, scenario.Job{ID: "held", Packages: 1}))
	apply(t, st, events(t, scenario.Job{ID: "rel", Packages: 1, Release: true, Remove: true}))
	p, err := st.GetPackage(t.Context(), scenario.PackageID("rel", 0))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.StagedCopies) != 1 || p.StagedCopies[0].Status != "deletion_scheduled" {
		t.Errorf("staged copies after release = %+v, want deletion_scheduled", p.StagedCopies)
	}
	if len(p.ArchiveCopies) != 1 || p.ArchiveCopies[0].Status != "removed" || p.ArchiveCopies[0].RemovedReason != "tape retired" {
		t.Errorf("archive copies after removal = %+v", p.ArchiveCopies)
	}
	if p.SizeBytes != 10240 {
		t.Errorf("package size = %d", p.SizeBytes)
	}
}

// A job following another's requests (cross-job dedup) ends with the
// other's outcomes, whichever arrives first: the follower's plan or the
// leader's events; a package the leader withdrew for its own cancel is left
// scheduled for the follower.
func TestFollowersShareTheLeadersOutcomes(t *testing.T) {
	leader := scenario.Job{ID: "lead", Packages: 2, Permanent: true, Progress: 1}
	follower := scenario.Job{ID: "follow", Packages: 2, Permanent: true, Follows: "lead"}
	tests := []struct {
		name  string
		order []scenario.Job
	}{
		{"follower planned first", []scenario.Job{follower, leader}},
		{"leader staged first", []scenario.Job{leader, follower}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := newStore(t)
			for _, j := range tt.order {
				apply(t, st, events(t, j))
			}
			job, err := st.GetJob(t.Context(), "follow")
			if err != nil {
				t.Fatal(err)
			}
			if want := (ledgerapi.Counts{Total: 3, Completed: 2, Failed: 1}); job.Status != "failed" || job.Counts != want ||
				job.Reason != event.ReasonChecksumMismatch {
				t.Errorf("follower = %s %+v %q, want failed %+v checksum_mismatch", job.Status, job.Counts, job.Reason, want)
			}
			for _, p := range job.Packages {
				want := "completed"
				if p.PackageID == scenario.PackageID("lead", 90) {
					want = "failed"
				}
				if p.Status != want || p.RequestID != "request:lead:"+p.PackageID+":1" {
					t.Errorf("follower package %s = %s via %s, want %s via the leader's request", p.PackageID, p.Status, p.RequestID, want)
				}
				if want == "completed" && (p.Path != "/data/proc/"+p.PackageID || p.SizeBytes != 10240 || p.CompletedAt == nil) {
					t.Errorf("follower package %s = %+v, want the leader's path and size", p.PackageID, p)
				}
			}
			lead, err := st.GetJob(t.Context(), "lead")
			if err != nil {
				t.Fatal(err)
			}
			if lead.Status != "failed" || lead.Counts != (ledgerapi.Counts{Total: 3, Completed: 2, Failed: 1}) {
				t.Errorf("leader = %s %+v", lead.Status, lead.Counts)
			}
		})
	}
	t.Run("leader cancelled", func(t *testing.T) {
		st := newStore(t)
		apply(t, st, events(t, scenario.Job{ID: "gone", Packages: 3, Cancel: true}))
		apply(t, st, events(t, scenario.Job{ID: "stays", Packages: 3, Follows: "gone"}))
		job, err := st.GetJob(t.Context(), "stays")
		if err != nil {
			t.Fatal(err)
		}
		if job.Status != "in_progress" || job.Counts != (ledgerapi.Counts{Total: 3, Completed: 1, Scheduled: 2}) {
			t.Errorf("follower of a cancelled job = %s %+v, want in_progress with 1 completed and 2 scheduled", job.Status, job.Counts)
		}
	})
}

// After a crash, redelivery can hand the ledger a job's outcomes before its
// plan (and before its submit): the packages seen so far are then not the
// whole job, so the job must not look finished until the plan is applied.
func TestOutcomesBeforeThePlanDoNotFinishTheJob(t *testing.T) {
	st := newStore(t)
	all := events(t, scenario.Job{ID: "early", Packages: 3})
	var plan, rest []store.Event
	for _, e := range all {
		switch e.Env.Type {
		case event.TypePlanned, event.TypeSubmit:
			plan = append(plan, e)
		case event.TypeDone, event.TypeStarted, event.TypeFailed, event.TypeProgress:
			// Only the first package's outcomes arrive early.
			if strings.Contains(string(e.Env.Data), scenario.PackageID("early", 0)) {
				rest = append(rest, e)
			}
		}
	}
	apply(t, st, rest)
	job, err := st.GetJob(t.Context(), "early")
	if err != nil {
		t.Fatal(err)
	}
	if job.Status == "completed" || job.CompletedAt != nil {
		t.Fatalf("with 1 of 3 packages known and completed, job is %s (completed_at %v); want it unfinished", job.Status, job.CompletedAt)
	}
	apply(t, st, plan)
	job, err = st.GetJob(t.Context(), "early")
	if err != nil {
		t.Fatal(err)
	}
	if job.Status == "completed" || len(job.Packages) != 3 {
		t.Fatalf("after the plan: job %s with %d packages; want 3 packages, not completed", job.Status, len(job.Packages))
	}
	apply(t, st, all) // everything, the early ones again as duplicates
	if job, err = st.GetJob(t.Context(), "early"); err != nil || job.Status != "completed" {
		t.Fatalf("after every event: %s, %v; want completed", job.Status, err)
	}
}

// A plan in parts: the job is not finished until every part is known.
func TestPlanPartsMustAllArrive(t *testing.T) {
	st := newStore(t)
	base := events(t, scenario.Job{ID: "parts", Packages: 2})
	var planned store.Event
	var others []store.Event
	for _, e := range base {
		if e.Env.Type == event.TypePlanned {
			planned = e
		} else {
			others = append(others, e)
		}
	}
	pl, err := event.DataAs[event.Planned](planned.Env)
	if err != nil {
		t.Fatal(err)
	}
	part := func(n int, pkgs []event.PlannedPackage) store.Event {
		p := pl
		p.Part, p.Parts, p.Packages = n, 2, pkgs
		env, err := event.New(planned.Env.Source, fmt.Sprintf("planned:parts:%d", n), "", p)
		if err != nil {
			t.Fatal(err)
		}
		e := planned
		e.Env = env
		return e
	}
	apply(t, st, append([]store.Event{part(1, pl.Packages[:1])}, others...))
	job, err := st.GetJob(t.Context(), "parts")
	if err != nil {
		t.Fatal(err)
	}
	if job.Status == "completed" {
		t.Fatalf("with part 1 of 2 applied, job is completed")
	}
	apply(t, st, []store.Event{part(2, pl.Packages[1:])})
	if job, err = st.GetJob(t.Context(), "parts"); err != nil || job.Status != "completed" || len(job.Packages) != 2 {
		t.Fatalf("after both parts: %s with %d packages, %v; want completed with 2", job.Status, len(job.Packages), err)
	}
}

// The site summary's counters (deltas kept by triggers on jobs) always equal
// a count of the job packages by their job's destination, whatever the
// batches; once every event is in, that is each package's own destination.
// So do the bytes staged (completed packages not already present). Compaction
// changes the rows but not what they sum to.
func TestSiteCountsMatchThePackages(t *testing.T) {
	jobs := []scenario.Job{
		{ID: "a", Packages: 3, Progress: 2, Release: true, Present: true},
		{ID: "b", Packages: 2, NoSource: true, Permanent: true},
		{ID: "c", Packages: 3, Cancel: true, Withdraw: true},
		{ID: "d", Packages: 2, Follows: "a"},
		{ID: "e", Packages: 2, Site: "us", Location: "us-proc"},
	}
	st := newStore(t)
	evs := events(t, jobs...)
	rand.New(rand.NewPCG(5, 5)).Shuffle(len(evs), func(i, j int) { evs[i], evs[j] = evs[j], evs[i] })
	type count struct {
		Site     string `bun:"site"`
		Location string `bun:"location"`
		Status   string `bun:"status"`
		N        int64  `bun:"n"`
	}
	byJob := `SELECT j.dest_site AS site, j.dest_location AS location, jp.status, count(*) AS n
			FROM job_packages jp JOIN jobs j USING (job_id) GROUP BY 1, 2, 3 ORDER BY 1, 2, 3`
	byPackage := `SELECT dest_site AS site, dest_location AS location, status, count(*) AS n
			FROM job_packages GROUP BY 1, 2, 3 ORDER BY 1, 2, 3`
	check := func(when, query string) {
		t.Helper()
		var want, got []count
		if err := st.DB().NewRaw(query).Scan(t.Context(), &want); err != nil {
			t.Fatal(err)
		}
		if err := st.DB().NewRaw(`SELECT site, location, status, sum(n) AS n FROM site_count_deltas
			GROUP BY 1, 2, 3 HAVING sum(n) <> 0 ORDER BY 1, 2, 3`).Scan(t.Context(), &got); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: counters %v, packages %v", when, got, want)
		}
		type bytes struct {
			Site  string `bun:"site"`
			Bytes int64  `bun:"bytes"`
		}
		var wantB, gotB []bytes
		// A follower's package was copied for the job it follows.
		const copied = `jp.status = 'completed' AND NOT jp.already_present
			AND NOT (jp.request_id LIKE 'request:%' AND split_part(jp.request_id, ':', 2) <> jp.job_id)`
		staged := `SELECT j.dest_site AS site, sum(jp.size_bytes) AS bytes FROM job_packages jp JOIN jobs j USING (job_id)
			WHERE ` + copied + ` GROUP BY 1 ORDER BY 1`
		if query == byPackage {
			staged = `SELECT dest_site AS site, sum(size_bytes) AS bytes FROM job_packages jp
				WHERE ` + copied + ` GROUP BY 1 ORDER BY 1`
		}
		if err := st.DB().NewRaw(staged).Scan(t.Context(), &wantB); err != nil {
			t.Fatal(err)
		}
		if err := st.DB().NewRaw(`SELECT site, sum(bytes) AS bytes FROM site_bytes_deltas
			GROUP BY 1 HAVING sum(bytes) <> 0 ORDER BY 1`).Scan(t.Context(), &gotB); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(gotB, wantB) {
			t.Errorf("%s: bytes staged %v, packages %v", when, gotB, wantB)
		}
	}
	for len(evs) > 0 {
		n := min(len(evs), 5)
		apply(t, st, evs[:n])
		evs = evs[n:]
		check(fmt.Sprintf("%d events left", len(evs)), byJob)
	}
	check("all events in", byPackage)
	const rows = `SELECT (SELECT count(*) FROM site_count_deltas) + (SELECT count(*) FROM site_bytes_deltas)`
	var before int
	if err := st.DB().NewRaw(rows).Scan(t.Context(), &before); err != nil {
		t.Fatal(err)
	}
	removed, err := st.CompactSiteCounts(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var after int
	if err := st.DB().NewRaw(rows).Scan(t.Context(), &after); err != nil {
		t.Fatal(err)
	}
	if removed == 0 || int64(before-after) != removed {
		t.Errorf("compaction removed %d rows, table went from %d to %d", removed, before, after)
	}
	check("after compaction", byPackage)
	// The scenario's events are a second apart from its base time; a
	// package's bytes count from its job's latest completion.
	base := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		now           time.Time
		hourCG, dayCG int64
		hourUS, dayUS int64
	}{
		// a: 2 of 3 copied (one already present); b: 2 and d: 0 (it
		// follows a); c: 1 before the cancel; e: 2. 10,240 bytes each.
		{base.Add(30 * time.Minute), 5 * 10240, 5 * 10240, 2 * 10240, 2 * 10240},
		{base.Add(5 * time.Hour), 0, 5 * 10240, 0, 2 * 10240},
		{base.Add(48 * time.Hour), 0, 0, 0, 0},
	} {
		sites, err := st.Sites(t.Context(), tc.now)
		if err != nil {
			t.Fatal(err)
		}
		var seen int
		for _, s := range sites {
			switch s.Name {
			case "us":
				seen++
				if s.Packages["completed"] != 2 {
					t.Errorf("us summary = %+v", s.Packages)
				}
				if s.BytesStagedHour != tc.hourUS || s.BytesStagedDay != tc.dayUS {
					t.Errorf("at %s: us staged %d in the hour, %d in the day; want %d, %d", tc.now, s.BytesStagedHour, s.BytesStagedDay, tc.hourUS, tc.dayUS)
				}
			case "cologne":
				seen++
				if s.BytesStagedHour != tc.hourCG || s.BytesStagedDay != tc.dayCG {
					t.Errorf("at %s: %s staged %d in the hour, %d in the day; want %d, %d", tc.now, s.Name, s.BytesStagedHour, s.BytesStagedDay, tc.hourCG, tc.dayCG)
				}
			}
		}
		if seen != 2 {
			t.Errorf("sites %+v: want us and cologne", sites)
		}
	}
}

// A stager's events change a job package's status, times and progress; when
// no index covers those columns (not even in a partial index's predicate),
// PostgreSQL can update the row in place (HOT) instead of adding an entry to
// every index: 17 against 27 µs per row here. Only the keys and the request
// id (set once, by the plan or the first outcome) may be indexed.
func TestJobPackageIndexesLeaveOutcomesHOT(t *testing.T) {
	st := newStore(t)
	indexed := map[string]bool{"job_id": true, "package_id": true, "request_id": true}
	var cols, defs []string
	if err := st.DB().NewRaw(`SELECT column_name FROM information_schema.columns
		WHERE table_schema = current_schema() AND table_name = 'job_packages'`).Scan(t.Context(), &cols); err != nil {
		t.Fatal(err)
	}
	if err := st.DB().NewRaw(`SELECT indexdef FROM pg_indexes
		WHERE schemaname = current_schema() AND tablename = 'job_packages'`).Scan(t.Context(), &defs); err != nil {
		t.Fatal(err)
	}
	if len(cols) < 10 || len(defs) < 2 {
		t.Fatalf("read %d columns and %d indexes of job_packages", len(cols), len(defs))
	}
	for _, def := range defs {
		for _, c := range cols {
			if !indexed[c] && regexp.MustCompile(`\b`+c+`\b`).MatchString(def) {
				t.Errorf("%s\n  covers %s, which outcomes change: their updates cannot be HOT", def, c)
			}
		}
	}
}

// A projection written before the site_bytes and package_failures
// migrations gets each job's bytes_staged, the history of bytes staged per
// site from its packages, and its failures recorded.
func TestSiteBytesAndFailuresMigrationsUpgradeAProjection(t *testing.T) {
	st := newStore(t)
	apply(t, st, events(t,
		scenario.Job{ID: "a", Packages: 3, Present: true, Permanent: true, NoSource: true},
		scenario.Job{ID: "d", Packages: 2, Follows: "a"},
		scenario.Job{ID: "e", Packages: 2, Site: "us", Location: "us-proc", Base: time.Date(2026, 11, 26, 9, 0, 0, 0, time.UTC)}))
	before := snapshot(t, st)
	if len(before["failures"]) != 2 { // a: no source, and a permanent failure
		t.Fatalf("failures before = %v", before["failures"])
	}
	if err := st.RedoMigrationsFrom(t.Context(), "20261127020000"); err != nil {
		t.Fatal(err)
	}
	diffSnapshots(t, "after the migration's down and up", snapshot(t, st), before)
	sites, err := st.Sites(t.Context(), time.Date(2026, 11, 26, 12, 30, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][2]int64{}
	for _, s := range sites {
		got[s.Name] = [2]int64{s.BytesStagedHour, s.BytesStagedDay}
	}
	// a copied 2 of its 3 packages (one was there already); d follows a;
	// e copied 2, three hours earlier.
	want := map[string][2]int64{"cologne": {2 * 10240, 2 * 10240}, "us": {0, 2 * 10240}}
	if !maps.Equal(got, want) {
		t.Errorf("bytes staged (hour, day) by site = %v, want %v", got, want)
	}
}

// Recent failures come from package_failures, kept by triggers; they are
// exactly what sorting every failed job package gives, whatever the order
// the events arrive in: failures at plan time (no source), by the stager
// (permanent), by the planner giving up (stalled), and followers of a
// failed request.
func TestRecentFailuresAreTheNewestFailedPackages(t *testing.T) {
	st := newStore(t)
	evs := events(t,
		scenario.Job{ID: "a", Packages: 2, NoSource: true, Permanent: true},
		scenario.Job{ID: "b", Packages: 3, Stalled: true, Base: time.Date(2026, 11, 26, 13, 0, 0, 0, time.UTC)},
		scenario.Job{ID: "c", Packages: 2, Follows: "a", Permanent: true},
		scenario.Job{ID: "d", Packages: 2, Cancel: true, Withdraw: true, Base: time.Date(2026, 11, 26, 11, 0, 0, 0, time.UTC)},
		scenario.Job{ID: "e", Packages: 1, NoSource: true, Base: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)})
	rand.New(rand.NewPCG(7, 7)).Shuffle(len(evs), func(i, j int) { evs[i], evs[j] = evs[j], evs[i] })
	for len(evs) > 0 {
		n := min(len(evs), 4)
		apply(t, st, evs[:n])
		evs = evs[n:]
	}
	var want []string
	if err := st.DB().NewRaw(`SELECT job_id || '/' || package_id FROM job_packages WHERE status = 'failed'
		ORDER BY completed_at DESC NULLS LAST, job_id, package_id`).Scan(t.Context(), &want); err != nil {
		t.Fatal(err)
	}
	if len(want) < 5 {
		t.Fatalf("only %d failed packages: %v", len(want), want)
	}
	for _, limit := range []int{1, 3, len(want), len(want) + 5} {
		got, err := st.RecentFailures(t.Context(), limit)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, p := range got {
			if p.Status != "failed" || p.Reason == "" {
				t.Errorf("%s/%s: status %q reason %q", p.JobID, p.PackageID, p.Status, p.Reason)
			}
			ids = append(ids, p.JobID+"/"+p.PackageID)
		}
		if w := want[:min(limit, len(want))]; !slices.Equal(ids, w) {
			t.Errorf("limit %d: %v, want %v", limit, ids, w)
		}
	}
}
