package jobs_test

import (
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/bustest"
	"github.com/ccatobs/ccat-staging/services/planner/jobs"
	"github.com/ccatobs/ccat-staging/shared/event"
)

func TestHash(t *testing.T) {
	base := event.Submit{JobID: "j", Packages: []string{"a", "b"}, Destination: event.Destination{Site: "s"}, RequestedBy: "me"}
	with := func(f func(*event.Submit)) event.Submit {
		s := base
		s.Packages = append([]string(nil), base.Packages...)
		f(&s)
		return s
	}
	tests := []struct {
		name string
		s    event.Submit
		same bool
	}{
		{"identical", with(func(*event.Submit) {}), true},
		{"package order", with(func(s *event.Submit) { s.Packages = []string{"b", "a"} }), true},
		{"explicit default priority", with(func(s *event.Submit) { s.Priority = "normal" }), true},
		{"other priority", with(func(s *event.Submit) { s.Priority = "high" }), false},
		{"other package", with(func(s *event.Submit) { s.Packages = []string{"a", "c"} }), false},
		{"other destination", with(func(s *event.Submit) { s.Destination = event.Destination{Location: "s"} }), false},
		{"other requester", with(func(s *event.Submit) { s.RequestedBy = "you" }), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := jobs.Hash(tt.s) == jobs.Hash(base); got != tt.same {
				t.Errorf("Hash(%+v) == Hash(base) is %v, want %v", tt.s, got, tt.same)
			}
		})
	}
}

func TestClaimLifecycle(t *testing.T) {
	srv := bustest.New(t)
	st, err := jobs.Open(t.Context(), srv.JS, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	check := func(step string, got jobs.Verdict, err error, want jobs.Verdict) {
		t.Helper()
		if err != nil || got != want {
			t.Fatalf("%s: verdict %v, %v; want %v", step, got, err, want)
		}
	}
	v, _, err := st.Check(ctx, "j", "h1")
	check("check unknown", v, err, jobs.New)
	v, _, err = st.Claim(ctx, "j", "h1", "s1", 2)
	check("first claim", v, err, jobs.New)
	v, rec, err := st.Claim(ctx, "j", "h1", "s2", 2)
	check("same content while planning", v, err, jobs.Resume)
	if rec.SubmitID != "s1" {
		t.Errorf("record names submit %q, want s1", rec.SubmitID)
	}
	v, _, err = st.Claim(ctx, "j", "h2", "s3", 2)
	check("other content while planning", v, err, jobs.Conflict)
	if err := st.MarkPlanned(ctx, "j"); err != nil {
		t.Fatal(err)
	}
	if err := st.MarkPlanned(ctx, "j"); err != nil {
		t.Fatalf("second MarkPlanned: %v", err)
	}
	v, _, err = st.Check(ctx, "j", "h1")
	check("same content once planned", v, err, jobs.Duplicate)
	v, _, err = st.Check(ctx, "j", "h2")
	check("other content once planned", v, err, jobs.Conflict)
	v, _, err = st.Claim(ctx, "j", "h1", "s4", 2)
	check("claim once planned", v, err, jobs.Duplicate)
}

// Touch restarts a record's retention without changing it; an unknown job
// is left alone.
func TestTouch(t *testing.T) {
	srv := bustest.New(t)
	ctx := t.Context()
	st, err := jobs.Open(ctx, srv.JS, 1, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Touch(ctx, "nobody"); err != nil {
		t.Fatalf("Touch of an unknown job = %v", err)
	}
	if _, _, err := st.Claim(ctx, "j", "h1", "s1", 1); err != nil {
		t.Fatal(err)
	}
	kv, err := srv.JS.KeyValue(ctx, "PLANNER_JOBS")
	if err != nil {
		t.Fatal(err)
	}
	before, err := kv.Get(ctx, "j")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Touch(ctx, "j"); err != nil {
		t.Fatal(err)
	}
	after, err := kv.Get(ctx, "j")
	if err != nil {
		t.Fatal(err)
	}
	if after.Revision() <= before.Revision() || string(after.Value()) != string(before.Value()) {
		t.Errorf("after Touch: revision %d (was %d), value %s (was %s)", after.Revision(), before.Revision(), after.Value(), before.Value())
	}
}
