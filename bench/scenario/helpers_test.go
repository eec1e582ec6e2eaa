package scenario

import (
	"os"
	"os/exec"
	"path/filepath"
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
