package provision

import (
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/bustest"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/rs/zerolog"
)

func TestConfigFromEnv(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     map[string]string
		want    Config
		wantErr string
	}{
		{"defaults", map[string]string{"TOPOLOGY_FILE": "t.yaml"},
			Config{NATSURL: "nats://127.0.0.1:4222", Topology: "t.yaml", Streams: bus.StreamConfig{Replicas: 1}, Timeout: time.Minute}, ""},
		{"cluster", map[string]string{"TOPOLOGY_FILE": "t.yaml", "NATS_URL": "nats://admin:x@n1:4222", "STREAM_REPLICAS": "3", "EVENTS_MAX_AGE": "720h", "PROVISION_TIMEOUT": "10s"},
			Config{NATSURL: "nats://admin:x@n1:4222", Topology: "t.yaml", Streams: bus.StreamConfig{Replicas: 3, EventsMaxAge: 720 * time.Hour}, Timeout: 10 * time.Second}, ""},
		{"no topology", map[string]string{}, Config{}, "TOPOLOGY_FILE is required"},
		{"two replicas", map[string]string{"TOPOLOGY_FILE": "t.yaml", "STREAM_REPLICAS": "2"}, Config{}, "STREAM_REPLICAS=2"},
		{"bad duration", map[string]string{"TOPOLOGY_FILE": "t.yaml", "EVENTS_MAX_AGE": "a year"}, Config{}, "EVENTS_MAX_AGE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ConfigFromEnv(func(k string) string { return tc.env[k] })
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

// Run provisions everything a stager and the ledger need but may not
// create themselves, for every site of the topology, and a second run
// changes nothing.
func TestRunProvisionsEverySite(t *testing.T) {
	srv := bustest.New(t)
	cfg := Config{NATSURL: srv.URL, Topology: "../topology.example.yaml", Streams: bus.StreamConfig{Replicas: 1}, Timeout: 30 * time.Second}
	for run := 1; run <= 2; run++ {
		if err := Run(t.Context(), cfg, zerolog.Nop()); err != nil {
			t.Fatalf("run %d: %v", run, err)
		}
	}
	for _, sc := range append(bus.Streams(cfg.Streams), append(bus.DeadLetterStreams(cfg.Streams), bus.CleanupStream(cfg.Streams))...) {
		s, err := srv.JS.Stream(t.Context(), sc.Name)
		if err != nil {
			t.Fatalf("stream %s: %v", sc.Name, err)
		}
		if d := bus.StreamDiff(s.CachedInfo().Config, sc); d != "" {
			t.Errorf("stream %s: %s differs", sc.Name, d)
		}
	}
	if _, err := srv.JS.KeyValue(t.Context(), subject.StagerBucket); err != nil {
		t.Errorf("bucket %s: %v", subject.StagerBucket, err)
	}
	for _, site := range []string{"cologne", "us"} {
		for _, p := range subject.Priorities {
			if _, err := srv.JS.Consumer(t.Context(), subject.RequestsStream, subject.StagerDurable(site, p)); err != nil {
				t.Errorf("consumer %s: %v", subject.StagerDurable(site, p), err)
			}
		}
		if _, err := srv.JS.Consumer(t.Context(), subject.AdvisoryStream, subject.StagerAdvisoryDurable(site)); err != nil {
			t.Errorf("consumer %s: %v", subject.StagerAdvisoryDurable(site), err)
		}
		if _, err := srv.JS.Consumer(t.Context(), subject.CleanupStream, subject.StagerCleanupDurable(site)); err != nil {
			t.Errorf("consumer %s: %v", subject.StagerCleanupDurable(site), err)
		}
	}
}

func TestRunFailsWithoutTopology(t *testing.T) {
	err := Run(t.Context(), Config{NATSURL: "nats://127.0.0.1:1", Topology: "does-not-exist.yaml", Timeout: time.Second}, zerolog.Nop())
	if err == nil || !strings.Contains(err.Error(), "topology") {
		t.Fatalf("err = %v, want a topology error", err)
	}
}
