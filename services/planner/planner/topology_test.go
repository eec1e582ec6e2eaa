package planner_test

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/bustest"
	"github.com/ccatobs/ccat-staging/devkit/poll"
	"github.com/ccatobs/ccat-staging/services/planner/planner"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

const bonn = `
  - name: bonn
    locations:
      - {name: bonn-lta, type: long_term_archive, storage: disk, priority: 1, path: /lta}
      - {name: bonn-proc, type: processing, storage: disk, priority: 1, path: /proc}
`

func TestTopologyReload(t *testing.T) {
	tests := []struct {
		name    string
		poll    time.Duration
		trigger bool // send on Config.Reload instead of waiting for the poll
	}{
		{"file watched", 20 * time.Millisecond, false},
		{"reload on request (SIGHUP)", -1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reload := make(chan struct{}, 1)
			h := start(t, testTopology, func(c *planner.Config) { c.TopologyPoll = tt.poll; c.Reload = reload })
			if _, err := h.js.Consumer(t.Context(), subject.RequestsStream, subject.StagerDurable("bonn", "high")); !errors.Is(err, jetstream.ErrConsumerNotFound) {
				t.Fatalf("bonn consumer before the reload: %v", err)
			}
			h.archived("pb", "bonn-lta")
			h.submit("s-before", event.Submit{JobID: "j-before", Packages: []string{"pb"}, Destination: event.Destination{Site: "bonn"}, RequestedBy: "me"})
			if r := dataOf[event.Rejected](t, h.event(subject.Rejected, "rejected:s-before")); r.Reason != event.ReasonUnknownSite {
				t.Fatalf("before the reload: %+v", r)
			}

			// A broken file keeps the topology in use.
			if err := os.WriteFile(h.topoFile, []byte("sites: [oops"), 0o644); err != nil {
				t.Fatal(err)
			}
			if tt.trigger {
				reload <- struct{}{}
			}
			poll.Until(t, 5*time.Second, "a failed topology reload", func() error {
				if m := h.metrics(); !strings.Contains(m, `planner_topology_reloads_total{outcome="failed"}`) {
					return errors.New("no failed reload yet")
				}
				return nil
			})
			h.submit("s-broken", event.Submit{JobID: "j-broken", Packages: []string{"pb"}, Destination: event.Destination{Site: "us"}, RequestedBy: "me"})
			h.event(subject.Planned, "planned:j-broken")

			if err := os.WriteFile(h.topoFile, []byte(testTopology+bonn), 0o644); err != nil {
				t.Fatal(err)
			}
			if tt.trigger {
				reload <- struct{}{}
			}
			// The consumers are provisioned just before the new topology is
			// swapped in; the reload counter says the swap is done.
			poll.Until(t, 5*time.Second, "a successful topology reload", func() error {
				if m := h.metrics(); !strings.Contains(m, `planner_topology_reloads_total{outcome="reloaded"}`) {
					return errors.New("no successful reload yet")
				}
				for _, p := range subject.Priorities {
					if _, err := h.js.Consumer(t.Context(), subject.RequestsStream, subject.StagerDurable("bonn", p)); err != nil {
						return err
					}
				}
				return nil
			})
			h.submit("s-after", event.Submit{JobID: "j-after", Packages: []string{"pb"}, Destination: event.Destination{Site: "bonn"}, RequestedBy: "me"})
			p := dataOf[event.Planned](t, h.event(subject.Planned, "planned:j-after"))
			if p.Destination.Location != "bonn-proc" || p.Packages[0].Source.Location != "bonn-lta" {
				t.Errorf("plan after reload = %+v", p)
			}
		})
	}
}

// Start-up failures end Run with an error instead of hanging: a missing
// topology file, and an HTTP address already taken.
func TestRunFailsCleanly(t *testing.T) {
	srv := bustest.New(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	topo := filepath.Join(t.TempDir(), "t.yaml")
	if err := os.WriteFile(topo, []byte(testTopology), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  planner.Config
	}{
		{"no topology file", planner.Config{NATSURL: srv.URL, TopologyFile: topo + ".missing"}},
		{"http address taken", planner.Config{NATSURL: srv.URL, TopologyFile: topo, HTTPAddr: busy.Addr().String()}},
		{"no topology configured", planner.Config{NATSURL: srv.URL}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() { done <- planner.Run(t.Context(), tt.cfg, zerolog.Nop()) }()
			select {
			case err := <-done:
				if err == nil {
					t.Error("Run = nil, want an error")
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Run still running after 10s")
			}
		})
	}
}

// Two planners left on the default HTTP address (the demo and the
// end-to-end tests set PLANNER_HTTP_ADDR="", which reads as unset) both
// run; the second serves no HTTP.
func TestDefaultHTTPAddressTaken(t *testing.T) {
	cfg, err := planner.ConfigFromEnv(func(k string) string { return map[string]string{"TOPOLOGY_FILE": "x", "PLANNER_HTTP_ADDR": ""}[k] })
	if err != nil || cfg.HTTPAddr != planner.DefaultHTTPAddr {
		t.Fatalf("ConfigFromEnv = %q, %v", cfg.HTTPAddr, err)
	}
	// Take the default port; if something else holds it already, so much
	// the better: either way it is taken.
	if ln, err := net.Listen("tcp", planner.DefaultHTTPAddr); err == nil {
		defer ln.Close()
	}
	h := start(t, testTopology, func(c *planner.Config) { c.HTTPAddr = planner.DefaultHTTPAddr; c.OnHTTP = nil })
	h.archived("p1", "us-lta")
	h.submit("s", event.Submit{JobID: "j", Packages: []string{"p1"}, Destination: event.Destination{Site: "us"}, RequestedBy: "me"})
	h.event(subject.Planned, "planned:j")
}
