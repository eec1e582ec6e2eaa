package hostile

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/ccatobs/ccat-staging/shared/tarpkg"
)

// TestHostileInput runs the whole corpus against one running system: the
// submit corpus (testdata/submits.json) and the generated submits, the
// hostile packages and announcements, and the API cases; between groups and
// at the end it proves the services are still healthy by staging a normal
// package to each site, and finally walks the file system.
func TestHostileInput(t *testing.T) {
	s := startSystem(t)
	s.api.Token = apiToken

	var buf bytes.Buffer
	info, err := tarpkg.WriteTo(&buf, tarpkg.Tree(99, 3, 16<<10))
	if err != nil {
		t.Fatal(err)
	}
	a := s.writeLTA(knownPackage, "cologne-lta", "raw/"+knownPackage+".tar", buf.Bytes())
	a.Files = info.Files
	s.expectStaged("cologne", knownPackage) // by job-id-conflict and the extensions case
	s.announce(t, a, nil, true)
	s.control(t, "cologne")

	groups := []struct {
		name string
		run  func(*testing.T, *system)
	}{
		{"submit", testSubmits},
		{"submit-generated", testSubmitSpecials},
		{"archive", testArchives},
		{"request", testRequests},
		{"api", testAPI},
	}
	for _, g := range groups {
		t.Run(g.name, func(t *testing.T) { g.run(t, s) })
		t.Run(g.name+"/still-healthy", func(t *testing.T) {
			s.healthy(t)
			s.control(t, "cologne")
			s.control(t, "us")
		})
	}

	// Let every consumer finish before judging what is on disk.
	for _, site := range []string{"cologne", "us"} {
		for _, p := range subject.Priorities {
			s.waitConsumerIdle(t, subject.RequestsStream, subject.StagerDurable(site, p))
		}
	}
	// No consumer is left with bad input pending or redelivering.
	s.waitConsumerIdle(t, subject.EventsStream, subject.LedgerEvents)
	s.waitConsumerIdle(t, subject.EventsStream, subject.PlannerSubmit)
	s.waitConsumerIdle(t, subject.ArchiveStream, subject.PlannerCatalog)
	s.waitConsumerIdle(t, subject.ArchiveStream, subject.LedgerArchive)
	s.checkTree(t)

	// Nothing the services published went unvalidated: the collector
	// reports invalid events at cleanup; here, no submit may have been
	// answered twice.
	seen := map[string]int{}
	for _, e := range s.events.matching(func(e event.Envelope) bool { return e.Type == event.TypeRejected }) {
		seen[e.ID]++
	}
	for id, n := range seen {
		if n > 1 {
			t.Errorf("%s stored %d times", id, n)
		}
	}
}

// TestLedgerKeepsProjecting: schema-valid events at the edge of the
// contract, published by anyone allowed on a staging subject (here a plan
// with no packages, on staging.planned and forged onto staging.submit),
// must not stop the ledger: a normal job submitted afterwards still shows
// completed. They are kept out of TestHostileInput so that a stalled
// projection there does not hide every other case.
func TestLedgerKeepsProjecting(t *testing.T) {
	s := startSystem(t)
	s.api.Token = apiToken
	empty := event.Planned{JobID: "h-empty-plan", RequestedBy: "hostile", Priority: event.PriorityNormal,
		Destination: event.Target{Site: "cologne", Location: "cologne-processing"}, Packages: []event.PlannedPackage{}}
	s.publish(subject.Planned, "planned:h-empty-plan", empty)
	forged := empty
	forged.JobID = "h-planned-on-submit"
	s.publish(subject.Submit, "ev-planned-on-submit", forged)
	s.control(t, "cologne")
	s.healthy(t)
	// The planner refuses the forged one as a submit, and the ledger shows
	// that job rejected rather than planned from the forged content.
	s.expectRejected(t, "ev-planned-on-submit", "h-planned-on-submit", event.ReasonInvalidRequest)
}

// TestLedgerIgnoresForgedEvents: upstream clients may publish only on
// staging.submit and archive.> (deploy/nats/accounts.conf), so an outcome
// they put on staging.submit, typed as a stager's done event, is forged and
// must not reach the projection. The planner answers it as a bad submit
// naming the job, so the ledger may show that job rejected, but never with
// a package, let alone a completed one or a staged copy.
func TestLedgerIgnoresForgedEvents(t *testing.T) {
	s := startSystem(t)
	s.api.Token = apiToken
	forged := event.Done{Outcome: event.Outcome{JobID: "h-forged", PackageID: "forged-pkg", Site: "cologne",
		Location: "cologne-processing", Attempt: 1, RequestID: "request:h-forged:forged-pkg:1"},
		Path: "/etc", SizeBytes: 1, Files: 1}
	s.publish(subject.Submit, "done:request:h-forged:forged-pkg:1", forged)
	s.expectRejected(t, "done:request:h-forged:forged-pkg:1", "h-forged", event.ReasonInvalidRequest)
	// The control job is submitted after the forged event, so once it is
	// projected the ledger has consumed past the forgery.
	s.control(t, "cologne")
	j, err := s.api.Job(t.Context(), "h-forged")
	if err != nil {
		t.Fatal(err)
	}
	if j.Counts.Total != 0 || len(j.Packages) != 0 {
		t.Errorf("the ledger projected a done event published on %s: job %s %+v %s", subject.Submit, j.Status, j.Counts, mustJSON(j.Packages))
	}
	var pkg struct {
		StagedCopies []json.RawMessage `json:"staged_copies"`
	}
	if err := s.api.Get(t.Context(), "/v1/packages/forged-pkg", &pkg); err == nil && len(pkg.StagedCopies) > 0 {
		t.Errorf("the forged done event created a staged copy: %s", pkg.StagedCopies)
	} else if err != nil && !errors.Is(err, ledgerapi.ErrNotFound) {
		t.Error(err)
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
