package topology_test

import (
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/shared/topology"
)

// Retention: absent means the default; an explicit 0s means at once, which
// a time.Duration alone cannot tell apart from absent.
func TestKeepFor(t *testing.T) {
	tests := []struct {
		name, retention string
		want            time.Duration
	}{
		{"absent", "", topology.DefaultRetention},
		{"zero", "retention: 0s", 0},
		{"a week", "retention: 168h", 168 * time.Hour},
		{"an hour", "retention: 1h", time.Hour},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			doc := "sites:\n  - name: s\n    locations:\n      - name: p\n        type: processing\n        storage: disk\n        path: /p\n"
			if tc.retention != "" {
				doc += "        " + tc.retention + "\n"
			}
			topo, err := topology.Parse([]byte(doc))
			if err != nil {
				t.Fatal(err)
			}
			l, ok := topo.Location("p")
			if !ok {
				t.Fatal("no location p")
			}
			if got := l.KeepFor(); got != tc.want {
				t.Errorf("KeepFor = %v, want %v", got, tc.want)
			}
		})
	}
}
