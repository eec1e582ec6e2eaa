package scenario

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestQuoteSurvivesTheShell(t *testing.T) {
	tests := []string{"plain", "with space", "it's", `back\slash`, "$HOME `x` \"q\"", ""}
	for _, s := range tests {
		t.Run(s, func(t *testing.T) {
			out, err := exec.CommandContext(t.Context(), "sh", "-c", "printf %s "+quote(s)).Output()
			if err != nil {
				t.Fatal(err)
			}
			if string(out) != s {
				t.Errorf("sh printf %s = %q, want %q", quote(s), out, s)
			}
		})
	}
}

func TestCSVRate(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		want    float64
		wantErr bool
	}{
		{"nats bench v0.5 pub", "#RunID,ClientID,MsgCount,MsgBytes,MsgsPerSec,BytesPerSec,DurationSecs\nabc,P0,40000,10240000,151805,77724563.6,0.13\n", 151805, false},
		{"no data row", "#RunID,MsgsPerSec\n", 0, true},
		{"no rate column", "#RunID,Other\nx,1\n", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "b.csv")
			if err := os.WriteFile(p, []byte(tt.body), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := csvRate(p)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("csvRate = %v, %v; want %v, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestLifecycleEventsValidate(t *testing.T) {
	evs := lifecycle(2, 3)
	if len(evs) != 2*(2+2*3) {
		t.Fatalf("lifecycle(2, 3) = %d events, want %d", len(evs), 2*(2+2*3))
	}
	seen := map[string]bool{}
	for _, e := range evs {
		if seen[e.id] {
			t.Errorf("duplicate event id %s", e.id)
		}
		seen[e.id] = true
		if _, err := newEvent(e.id, e.data); err != nil {
			t.Errorf("%s: %v", e.id, err)
		}
		if strings.Contains(e.subj, ">") || strings.Contains(e.subj, "*") {
			t.Errorf("%s: wildcard subject %s", e.id, e.subj)
		}
	}
}

// interleave only reorders: every event once, each job's submit and plan
// before its packages' events, each package's started before its done.
func TestInterleaveKeepsEachLifecycleInOrder(t *testing.T) {
	for _, tc := range []struct{ jobs, perJob, inFlight, spread int }{
		{7, 3, 3, 2}, {4, 5, 4, 50}, {1, 1, 25, 0}, {10, 2, 1, 1},
	} {
		evs := lifecycle(tc.jobs, tc.perJob)
		got := interleave(evs, tc.perJob, tc.inFlight, tc.spread)
		if len(got) != len(evs) {
			t.Fatalf("%+v: %d events, want %d", tc, len(got), len(evs))
		}
		pos := map[string]int{}
		for i, e := range got {
			if _, dup := pos[e.id]; dup {
				t.Fatalf("%+v: %s twice", tc, e.id)
			}
			pos[e.id] = i
		}
		for _, e := range evs {
			if _, ok := pos[e.id]; !ok {
				t.Fatalf("%+v: %s lost", tc, e.id)
			}
			switch id := e.id; {
			case strings.HasPrefix(id, "started:"):
				rid := strings.TrimSuffix(strings.TrimPrefix(id, "started:"), ":1")
				job := strings.Split(rid, ":")[1]
				if pos[id] > pos["done:"+rid] || pos["planned:"+job] > pos[id] || pos["submit:"+job] > pos["planned:"+job] {
					t.Errorf("%+v: %s out of its lifecycle's order", tc, id)
				}
			}
		}
	}
	// Jobs run side by side: the second job's first package starts before
	// the first job's second one.
	got := interleave(lifecycle(2, 2), 2, 2, 1)
	var order []string
	for _, e := range got {
		order = append(order, e.id)
	}
	if i, j := slices.Index(order, "started:request:proj-00001:proj-00001-p000:1:1"), slices.Index(order, "started:request:proj-00000:proj-00000-p001:1:1"); i < 0 || j < 0 || i > j {
		t.Errorf("not interleaved: %v", order)
	}
}
