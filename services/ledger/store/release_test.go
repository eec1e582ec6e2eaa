package store_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/services/ledger/consume"
	"github.com/ccatobs/ccat-staging/services/ledger/internal/scenario"
	"github.com/ccatobs/ccat-staging/services/ledger/store"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
)

func releasedEvent(t *testing.T, id string, at time.Time, r event.Released) store.Event {
	t.Helper()
	env, err := event.New("ccat-staging/stager/cologne/h1", id, r.PackageID, r)
	if err != nil {
		t.Fatal(err)
	}
	env.Time = at
	raw, err := json.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	ev, p, ok := consume.Classify(subject.EventsStream, subject.Released, 1000, at, raw)
	if !ok {
		t.Fatalf("released event invalid: %s", p.Message)
	}
	return ev
}

// staging.released moves a copy deletion_scheduled -> deleted, or
// deletion_failed when the stager could not delete it; a failure never
// overrides a deletion, and a deletion applied before the copy's done (a
// replay in another order) still ends deleted.
func TestCopyDeletion(t *testing.T) {
	base := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	deletedP := scenario.PackageID("del", 0)
	failedP := scenario.PackageID("fail", 0)
	gone := event.Released{PackageID: deletedP, Site: "cologne", Location: "cologne-proc", Path: "/scratch/" + deletedP,
		BytesFreed: 10240, Jobs: []string{"del"}, RefsRevision: 9}
	failure := event.Released{PackageID: failedP, Site: "cologne", Location: "cologne-proc", Path: "/scratch/" + failedP,
		RefsRevision: 4, Reason: event.ReasonIOError, Message: "permission denied", Permanent: true}
	lateFailure := gone
	lateFailure.Reason, lateFailure.Message, lateFailure.BytesFreed = event.ReasonIOError, "busy", 0

	tests := []struct {
		name         string
		releaseFirst bool
	}{{"in order", false}, {"released before the jobs' events", true}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := newStore(t)
			jobs := events(t, scenario.Job{ID: "del", Packages: 1, Release: true, Base: base},
				scenario.Job{ID: "fail", Packages: 1, Release: true, Base: base},
				scenario.Job{ID: "kept", Packages: 1, Release: true, Base: base})
			rel := []store.Event{
				releasedEvent(t, "released:cologne-proc:"+deletedP+":9", base.Add(time.Hour), gone),
				releasedEvent(t, "released:cologne-proc:"+deletedP+":9:failed:1", base.Add(30*time.Minute), lateFailure),
				releasedEvent(t, "released:cologne-proc:"+failedP+":4:failed:5", base.Add(time.Hour), failure),
			}
			if tc.releaseFirst {
				apply(t, st, rel)
				apply(t, st, jobs)
			} else {
				apply(t, st, jobs)
				apply(t, st, rel)
			}
			for pkg, want := range map[string]string{
				deletedP:                      "deleted",
				failedP:                       "deletion_failed",
				scenario.PackageID("kept", 0): "deletion_scheduled",
			} {
				p, err := st.GetPackage(t.Context(), pkg)
				if err != nil {
					t.Fatal(err)
				}
				if len(p.StagedCopies) != 1 || p.StagedCopies[0].Status != want {
					t.Errorf("%s: staged copies %+v, want one %s", pkg, p.StagedCopies, want)
				}
			}
		})
	}
}
