package tests

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/poll"
	"github.com/ccatobs/ccat-staging/services/stagectl/cli"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/ccatobs/ccat-staging/shared/tarpkg"
)

type cliResult struct {
	code           int
	stdout, stderr string
}

// stagectl runs the CLI in-process against s, as an operator would run it
// with NATS_URL, LEDGER_URL and TOPOLOGY_FILE set. stdout is a buffer, so
// --wait prints plain lines (the non-TTY mode).
func (s *system) stagectl(args ...string) cliResult {
	s.t.Helper()
	env := map[string]string{"NATS_URL": s.bus.URL, "LEDGER_URL": s.api.BaseURL, "TOPOLOGY_FILE": s.topology, "USER": "e2e"}
	var out, errb bytes.Buffer
	code := cli.Run(s.t.Context(), append([]string{"stagectl"}, args...), func(k string) string { return env[k] }, strings.NewReader(""), &out, &errb)
	return cliResult{code: code, stdout: out.String(), stderr: errb.String()}
}

func (r cliResult) must(t *testing.T, code int, want ...string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
	}
	for _, w := range want {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("stdout lacks %q:\n%s", w, r.stdout)
		}
	}
}

func TestStagectlEndToEnd(t *testing.T) {
	s := startSystem(t)
	lta := filepath.Join(s.base, "cologne", "lta")

	// archive announce plays the upstream archiver for two good packages and
	// one whose archive copy is corrupted after it was announced.
	infos := map[string]tarpkg.Info{}
	for i, id := range []string{"ctl-p1", "ctl-p2", "ctl-bad"} {
		file := filepath.Join(lta, "raw", id+".tar")
		if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
			t.Fatal(err)
		}
		info, err := tarpkg.Write(file, tarpkg.Tree(uint64(100+i), 4, 48<<10))
		if err != nil {
			t.Fatal(err)
		}
		infos[id] = info
		s.stagectl("archive", "announce", "--location", "cologne-lta", "--key", "raw/"+id+".tar", "--file", file).
			must(t, 0, id, "archived:cologne-lta:"+id+":"+strings.TrimPrefix(info.Checksum, "sha256:")[:16])
	}
	bad := filepath.Join(lta, "raw", "ctl-bad.tar")
	b, err := os.ReadFile(bad)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(bad, b, 0o644); err != nil {
		t.Fatal(err)
	}

	// submit --wait: completed is exit 0, with plain progress lines.
	r := s.stagectl("submit", "--site", "cologne", "--package", "ctl-p1", "ctl-p2", "--job-id", "ctl-ok", "--wait", "--poll", "50ms", "--timeout", "90s")
	r.must(t, cli.ExitOK, "job ctl-ok completed: 2 of 2 packages")
	t.Logf("stagectl submit --wait:\n%s", r.stdout)
	if !strings.Contains(r.stdout, "job ctl-ok ") || !strings.Contains(r.stdout, " packages ") {
		t.Errorf("no plain progress line:\n%s", r.stdout)
	}
	if strings.Contains(r.stdout, "\r") || strings.Contains(r.stdout, "\x1b[") {
		t.Errorf("terminal control characters in non-TTY output:\n%q", r.stdout)
	}

	// A failed job is exit 3 and names the package and reason.
	s.stagectl("submit", "--location", "cologne-processing", "ctl-bad", "--job-id", "ctl-fail", "--wait", "--poll", "50ms", "--timeout", "90s").
		must(t, cli.ExitFailed, "job ctl-fail failed: 0 of 1 packages completed, 1 failed", "ctl-bad", event.ReasonChecksumMismatch)

	// wait follows an existing job with the same exit codes.
	s.stagectl("wait", "ctl-fail", "--poll", "50ms", "--timeout", "30s").must(t, cli.ExitFailed, "job ctl-fail failed")

	// A rejected job (nothing announced under that id) is exit 4.
	s.stagectl("submit", "--site", "cologne", "never-archived", "--job-id", "ctl-rej", "--wait", "--poll", "50ms", "--timeout", "60s").
		must(t, cli.ExitRejected, "job ctl-rej rejected: "+event.ReasonUnknownPackage)

	// status, as a table and as JSON.
	s.stagectl("status", "ctl-ok").must(t, 0, "completed", "ctl-p1", "ctl-p2", filepath.Join(s.base, "cologne", "processing"))
	r = s.stagectl("status", "ctl-ok", "--json")
	r.must(t, 0)
	var j ledgerapi.Job
	if err := json.Unmarshal([]byte(r.stdout), &j); err != nil || j.Status != "completed" || len(j.Packages) != 2 || j.Counts.Completed != 2 {
		t.Errorf("status --json: %v\n%s", err, r.stdout)
	}
	s.stagectl("status", "no-such-job").must(t, cli.ExitNotFound)

	// jobs with filters, as JSON and as a table.
	r = s.stagectl("jobs", "--status", "failed", "--site", "cologne", "--json")
	r.must(t, 0)
	var l ledgerapi.JobList
	if err := json.Unmarshal([]byte(r.stdout), &l); err != nil || len(l.Jobs) != 1 || l.Jobs[0].JobID != "ctl-fail" {
		t.Errorf("jobs --status failed: %v\n%s", err, r.stdout)
	}
	s.stagectl("jobs").must(t, 0, "JOB", "ctl-ok", "ctl-fail", "ctl-rej")

	// explain says why in words.
	s.stagectl("explain", "ctl-fail").must(t, 0, event.ReasonChecksumMismatch)
	s.stagectl("explain", "ctl-rej").must(t, 0, "rejected")

	// sites: both sites, with the live stagers the harness runs.
	r = s.stagectl("sites")
	r.must(t, 0, "SITE", "cologne", "us")
	t.Logf("stagectl sites:\n%s", r.stdout)
	if strings.Contains(r.stderr, "no stager heartbeat") {
		t.Errorf("sites reports a site without stagers:\n%s\n%s", r.stdout, r.stderr)
	}

	// events: the job's timeline from the ledger's event log.
	s.stagectl("events", "ctl-fail").must(t, 0, "submit", "planned", "started", event.ReasonChecksumMismatch+" (permanent)")

	// verify: the staged copies match their manifests; one changed byte is
	// drift, exit 7, named by package, file and kind.
	s.stagectl("verify", "--location", "cologne-processing").must(t, 0, "verified 2 package(s), 8 file(s)", "no drift")
	victim := filepath.Join(s.base, "cologne", "processing", "ctl-p2", filepath.FromSlash(infos["ctl-p2"].Files[2].Path))
	vb, err := os.ReadFile(victim)
	if err != nil {
		t.Fatal(err)
	}
	vb[7] ^= 0x01
	if err := os.WriteFile(victim, vb, 0o644); err != nil {
		t.Fatal(err)
	}
	r = s.stagectl("verify", "--location", "cologne-processing", "--json")
	r.must(t, cli.ExitDrift)
	var rep cli.VerifyReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Drift) != 1 || rep.Drift[0].PackageID != "ctl-p2" || rep.Drift[0].Path != infos["ctl-p2"].Files[2].Path || rep.Drift[0].Kind != "checksum_mismatch" {
		t.Errorf("drift = %+v", rep.Drift)
	}

	// The ledger's metrics the alerts and the dashboard use are exported and
	// have moved with the jobs above.
	metrics := scrape(t, s.api.BaseURL+"/metrics")
	for _, name := range []string{"ledger_events_applied_total", "ledger_batch_size_bucket", "ledger_batch_apply_seconds_bucket",
		"ledger_consumer_pending", "ledger_batch_failures_total", "ledger_events_duplicate_total"} {
		if _, ok := metrics[name]; !ok {
			t.Errorf("ledger /metrics has no %s", name)
		}
	}
	if metrics["ledger_events_applied_total"] < 10 {
		t.Errorf("ledger_events_applied_total = %v after three jobs", metrics["ledger_events_applied_total"])
	}

	// cancel and release publish valid events with their deterministic ids.
	s.stagectl("cancel", "ctl-ok", "--reason", "test").must(t, 0, "cancel requested for job ctl-ok")
	s.stagectl("release", "ctl-ok").must(t, 0, "release requested for job ctl-ok")
	ids := map[string]bool{}
	for _, e := range s.events(subject.EventsStream) {
		ids[e.ID] = true
	}
	if !ids["cancel:ctl-ok"] || !ids["release:ctl-ok"] {
		t.Errorf("cancel/release events missing from %s", subject.EventsStream)
	}
	// The ledger takes both into the job's timeline (and is not stuck on them).
	poll.Until(t, 30*time.Second, "the cancel and release events in the ledger's timeline of ctl-ok", func() error {
		r = s.stagectl("events", "ctl-ok")
		if r.code == 0 && strings.Contains(r.stdout, "cancel:ctl-ok") && strings.Contains(r.stdout, "release:ctl-ok") {
			return nil
		}
		return fmt.Errorf("exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	})
	// Terminal states never change: a completed job stays completed.
	s.stagectl("status", "ctl-ok").must(t, 0, "completed")
	for _, e := range s.events(subject.ArchiveStream) {
		if e.Source != cli.Source {
			t.Errorf("archive event %s from %s", e.ID, e.Source)
		}
	}
}

// scrape reads a Prometheus text exposition and sums each metric's samples
// over their labels.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, rest, _ := strings.Cut(line, " ")
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name = name[:i]
			_, rest, _ = strings.Cut(line, "} ")
		}
		f, err := strconv.ParseFloat(strings.Fields(rest)[0], 64)
		if err != nil {
			continue
		}
		out[name] += f
	}
	return out
}
