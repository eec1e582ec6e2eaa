package inproc_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/bustest"
	"github.com/ccatobs/ccat-staging/devkit/dbtest"
	"github.com/ccatobs/ccat-staging/devkit/inproc"
	"github.com/rs/zerolog"
)

// env is a pipeline's environment over its own server, database and
// topology; the planner and stagers serve no HTTP.
func env(t *testing.T) map[string]string {
	t.Helper()
	topo, err := inproc.WriteTopology(t.TempDir(), inproc.TestTopology)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]string{
		"NATS_URL":          bustest.New(t).URL,
		"DATABASE_URL":      dbtest.New(t),
		"TOPOLOGY_FILE":     topo,
		"LEDGER_HTTP_ADDR":  "127.0.0.1:0",
		"PLANNER_HTTP_ADDR": "off",
		"STAGER_HTTP_ADDR":  "off",
	}
}

func testLog(t *testing.T) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
}

// The benchmarks start the services one by one and stop some while the
// others run: each is its own service, named as StopService expects.
func TestServicesStartAndStopOneByOne(t *testing.T) {
	p := inproc.New(inproc.Options{Env: inproc.SameEnv(env(t), ""), Log: testLog(t)})
	t.Cleanup(p.Stop)
	if err := p.StartLedger(t.Context()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(p.LedgerURL + "/healthz")
	if err != nil {
		t.Fatalf("ledger API at %q: %v", p.LedgerURL, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("ledger /healthz: %s", resp.Status)
	}
	if err := p.StartPlanner(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, instance := range []string{"a", "b"} {
		if err := p.StartStager("cologne", instance); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.StartStager("cologne", "a"); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("a second stager-cologne-a: %v, want already running", err)
	}
	if err := p.StopService("stager-cologne-a"); err != nil {
		t.Errorf("stop stager-cologne-a: %v", err)
	}
	if err := p.Failed(); err != nil {
		t.Errorf("Failed after a deliberate stop: %v", err)
	}
	if err := p.StopAll(); err != nil {
		t.Errorf("StopAll: %v", err)
	}
}

// A stager of a site the topology does not know is refused at start, with
// the service's name, before it runs.
func TestStartRefusesABadConfig(t *testing.T) {
	_, err := inproc.Start(t.Context(), inproc.Options{Env: inproc.SameEnv(env(t), "t-"), Sites: []string{"atlantis"},
		Log: testLog(t), Within: 30 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "stager-atlantis") {
		t.Fatalf("Start with an unknown site: %v, want an error naming stager-atlantis", err)
	}
}
