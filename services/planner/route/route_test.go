package route_test

import (
	"errors"
	"testing"

	"github.com/ccatobs/ccat-staging/services/planner/route"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/topology"
)

const topo = `
sites:
  - name: cologne
    locations:
      - {name: cologne-lta, type: long_term_archive, storage: disk, priority: 2, path: /lta}
      - {name: cologne-proc, type: processing, storage: disk, priority: 2, path: /proc}
      - {name: cologne-fast, type: processing, storage: disk, priority: 1, path: /fast}
      - {name: cologne-old, type: processing, storage: disk, priority: 0, path: /old, active: false}
  - name: us
    locations:
      - {name: us-lta, type: long_term_archive, storage: disk, priority: 1, path: /archive}
      - {name: us-tape, type: long_term_archive, storage: tape, priority: 3, path: /tape}
      - {name: us-proc, type: processing, storage: disk, priority: 1, path: /hpc}
  - name: chile
    locations:
      - {name: chile-buffer, type: buffer, storage: disk, priority: 1, path: /buf}
      - {name: chile-lta, type: long_term_archive, storage: disk, priority: 1, path: /lta, active: false}
      - {name: chile-proc, type: processing, storage: disk, priority: 1, path: /p, active: false}
`

func load(t *testing.T) *topology.Topology {
	t.Helper()
	tp, err := topology.Parse([]byte(topo))
	if err != nil {
		t.Fatal(err)
	}
	return tp
}

func TestDestination(t *testing.T) {
	tp := load(t)
	tests := []struct {
		name   string
		d      event.Destination
		want   string // location name, or "" when refused
		reason string
	}{
		{"site picks the highest-priority active processing location", event.Destination{Site: "cologne"}, "cologne-fast", ""},
		{"site with one processing location", event.Destination{Site: "us"}, "us-proc", ""},
		{"location by name", event.Destination{Location: "cologne-proc"}, "cologne-proc", ""},
		{"unknown site", event.Destination{Site: "mars"}, "", event.ReasonUnknownSite},
		{"site without an active processing location", event.Destination{Site: "chile"}, "", event.ReasonNoProcessing},
		{"unknown location", event.Destination{Location: "nowhere"}, "", event.ReasonUnknownLocation},
		{"archive location", event.Destination{Location: "us-lta"}, "", event.ReasonNotProcessing},
		{"inactive processing location", event.Destination{Location: "cologne-old"}, "", event.ReasonInactiveLocation},
		{"neither", event.Destination{}, "", event.ReasonInvalidRequest},
		{"both", event.Destination{Site: "us", Location: "us-proc"}, "", event.ReasonInvalidRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := route.Destination(tp, tt.d)
			var r *route.Refusal
			switch {
			case tt.reason == "" && err != nil:
				t.Fatalf("Destination(%+v) = %v", tt.d, err)
			case tt.reason == "" && l.Name != tt.want:
				t.Errorf("Destination(%+v) = %s, want %s", tt.d, l.Name, tt.want)
			case tt.reason != "" && (!errors.As(err, &r) || r.Reason != tt.reason):
				t.Errorf("Destination(%+v) = %s, %v; want refusal %s", tt.d, l.Name, err, tt.reason)
			}
		})
	}
}

func TestSource(t *testing.T) {
	tp := load(t)
	at := func(locs ...string) []route.Copy {
		var cs []route.Copy
		for _, l := range locs {
			cs = append(cs, route.Copy{Location: l, Key: l + "/k.tar"})
		}
		return cs
	}
	cologne, _ := tp.Location("cologne-fast")
	us, _ := tp.Location("us-proc")
	tests := []struct {
		name   string
		dest   topology.Location
		copies []route.Copy
		want   string // chosen location, "" = no source
	}{
		{"same site preferred over better priority elsewhere", cologne, at("us-lta", "cologne-lta"), "cologne-lta"},
		{"same site preferred, other order", us, at("cologne-lta", "us-tape"), "us-tape"},
		{"priority among other sites", cologne, at("us-tape", "us-lta"), "us-lta"},
		{"buffer locations count as sources", cologne, at("chile-buffer"), "chile-buffer"},
		{"priority tie broken by name", us, at("cologne-lta", "chile-buffer"), "chile-buffer"},
		{"inactive location skipped", us, at("chile-lta", "cologne-lta"), "cologne-lta"},
		{"unknown location skipped", us, at("moon-lta", "us-tape"), "us-tape"},
		{"processing copies are not sources", us, at("us-proc", "cologne-lta"), "cologne-lta"},
		{"only inactive: no source", us, at("chile-lta"), ""},
		{"only unknown: no source", us, at("moon-lta"), ""},
		{"no copies: no source", us, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, l, ok := route.Source(tp, tt.dest, tt.copies)
			got := ""
			if ok {
				got = c.Location
				if l.Name != c.Location {
					t.Errorf("Source returned copy at %s but location %s", c.Location, l.Name)
				}
			}
			if got != tt.want {
				t.Errorf("Source(%s, %v) = %q, want %q", tt.dest.Name, tt.copies, got, tt.want)
			}
			if !ok && route.NoSourceMessage(tp, tt.copies) == "" {
				t.Error("NoSourceMessage is empty")
			}
		})
	}
}
