package outcomes_test

import (
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/bustest"
	"github.com/ccatobs/ccat-staging/services/planner/outcomes"
)

// A job's own final outcome settles its package; a copy staged at the
// location by another request only counts when it is newer than the job's
// plan, and then only as proof the copy exists (own false).
func TestOutcomeOf(t *testing.T) {
	srv := bustest.New(t)
	ctx := t.Context()
	st, err := outcomes.Open(ctx, srv.JS, 1, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 6, 1, 0, 0, 0, time.UTC)
	for _, r := range []struct {
		pkg string
		rec outcomes.Record
	}{
		{"p1", outcomes.Record{Kind: outcomes.Done, JobID: "A", Location: "us-proc", EventID: "done:a1", At: t0}},
		{"p2", outcomes.Record{Kind: outcomes.Failed, JobID: "A", Location: "us-proc", EventID: "failed:a2", At: t0}},
		{"p3", outcomes.Record{Kind: outcomes.Done, JobID: "K", Location: "us-proc", EventID: "done:k3", At: t0}},
	} {
		if err := st.Put(ctx, r.pkg, r.rec); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name, job, pkg, loc string
		planned             time.Time
		want                string // event id, "" for none
		own                 bool
	}{
		{"own done", "A", "p1", "us-proc", t0.Add(-time.Minute), "done:a1", true},
		{"own failure", "A", "p2", "us-proc", t0.Add(-time.Minute), "failed:a2", true},
		{"other job's copy after the plan", "B", "p3", "us-proc", t0.Add(-time.Minute), "done:k3", false},
		{"other job's copy before the plan", "B", "p3", "us-proc", t0.Add(time.Minute), "", false},
		{"failures stage no copy", "B", "p2", "us-proc", t0.Add(-time.Minute), "", false},
		{"another location", "B", "p3", "cologne-proc", t0.Add(-time.Minute), "", false},
		{"nothing", "C", "p9", "us-proc", t0, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, own, err := st.Of(ctx, tt.job, tt.pkg, tt.loc, tt.planned)
			if err != nil {
				t.Fatal(err)
			}
			got := ""
			if r != nil {
				got = r.EventID
			}
			if got != tt.want || own != tt.own {
				t.Errorf("Of = %q, own %v; want %q, own %v", got, own, tt.want, tt.own)
			}
		})
	}
}
