package cli

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
)

func TestSubmitOptions(t *testing.T) {
	now := time.Date(2026, 11, 26, 20, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		o        submitOpts
		wantCode int // 0: no error
		check    func(t *testing.T, d event.Submit)
	}{
		{"site", submitOpts{site: "cologne", packages: stringList{"p1", "p2"}}, 0, func(t *testing.T, d event.Submit) {
			if d.Destination.Site != "cologne" || d.RequestedBy != "alice" || !strings.HasPrefix(d.JobID, "job-20261126-200000-") {
				t.Errorf("data = %+v", d)
			}
		}},
		{"location and all fields", submitOpts{location: "us-processing", packages: stringList{"p1"}, priority: "high", jobID: "my-job", note: "n", requestedBy: "bob"}, 0,
			func(t *testing.T, d event.Submit) {
				if d.Destination.Location != "us-processing" || d.JobID != "my-job" || d.RequestedBy != "bob" || d.Priority != "high" || d.Note != "n" {
					t.Errorf("data = %+v", d)
				}
			}},
		{"no destination", submitOpts{packages: stringList{"p1"}}, ExitUsage, nil},
		{"both destinations", submitOpts{site: "a", location: "b", packages: stringList{"p1"}}, ExitUsage, nil},
		{"no packages", submitOpts{site: "a"}, ExitUsage, nil},
		{"duplicate package", submitOpts{site: "a", packages: stringList{"p1", "p1"}}, ExitUsage, nil},
		{"bad priority", submitOpts{site: "a", packages: stringList{"p1"}, priority: "urgent"}, ExitUsage, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := tc.o.submit("alice", now)
			if tc.wantCode != 0 {
				var ee *exitError
				if !errors.As(err, &ee) || ee.code != tc.wantCode {
					t.Fatalf("err = %v, want exit code %d", err, tc.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := event.ValidateData(event.TypeSubmit, mustMarshal(t, d)); err != nil {
				t.Errorf("generated submit does not validate: %v", err)
			}
			tc.check(t, d)
		})
	}
}

func TestReadIDs(t *testing.T) {
	f := filepath.Join(t.TempDir(), "ids.txt")
	if err := os.WriteFile(f, []byte("# my list\np1\n\n  p2 p3 # two on a line\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := readIDs(f, nil)
	if err != nil || !slices.Equal(got, []string{"p1", "p2", "p3"}) {
		t.Errorf("readIDs(file) = %v, %v", got, err)
	}
	got, err = readIDs("-", strings.NewReader("a\nb\n"))
	if err != nil || !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("readIDs(-) = %v, %v", got, err)
	}
	if _, err := readIDs(filepath.Join(t.TempDir(), "nope"), nil); err == nil {
		t.Error("readIDs of a missing file succeeded")
	}
}

func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "stagectl.yaml")
	if err := os.WriteFile(file, []byte("NATS_URL: nats://file:4222\nLEDGER_URL: http://file:8080\nLEDGER_TOKEN: file-token\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	if err := os.MkdirAll(filepath.Join(home, ".config", "ccat-staging"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, ".config", "ccat-staging", "stagectl.yaml"), []byte("LEDGER_URL: http://home:8080\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("LEDGER_ULR: http://typo\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		g       globals
		env     map[string]string
		want    Config
		wantErr bool
	}{
		{"defaults", globals{}, nil, Config{NATSURL: DefaultNATSURL, LedgerURL: DefaultLedgerURL, User: "unknown"}, false},
		{"file", globals{config: file}, map[string]string{"USER": "alice"},
			Config{NATSURL: "nats://file:4222", LedgerURL: "http://file:8080", LedgerToken: "file-token", User: "alice"}, false},
		{"env over file", globals{config: file}, map[string]string{"NATS_URL": "nats://env:4222", "LEDGER_TOKEN": "env-token"},
			Config{NATSURL: "nats://env:4222", LedgerURL: "http://file:8080", LedgerToken: "env-token", User: "unknown"}, false},
		{"flags over env", globals{config: file, natsURL: "nats://flag:4222", json: true}, map[string]string{"NATS_URL": "nats://env:4222"},
			Config{NATSURL: "nats://flag:4222", LedgerURL: "http://file:8080", LedgerToken: "file-token", User: "unknown", JSON: true}, false},
		{"config from env var", globals{}, map[string]string{"STAGECTL_CONFIG": file},
			Config{NATSURL: "nats://file:4222", LedgerURL: "http://file:8080", LedgerToken: "file-token", User: "unknown"}, false},
		{"per-user file", globals{}, map[string]string{"HOME": home},
			Config{NATSURL: DefaultNATSURL, LedgerURL: "http://home:8080", User: "unknown"}, false},
		{"topology from env", globals{}, map[string]string{"TOPOLOGY_FILE": "/etc/topo.yaml"},
			Config{NATSURL: DefaultNATSURL, LedgerURL: DefaultLedgerURL, TopologyFile: "/etc/topo.yaml", User: "unknown"}, false},
		{"unknown key", globals{config: bad}, nil, Config{}, true},
		{"explicit file missing", globals{config: filepath.Join(dir, "none.yaml")}, nil, Config{}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := resolve(tc.g, func(k string) string { return tc.env[k] })
			if tc.wantErr {
				if err == nil {
					t.Fatalf("resolve = %+v, want an error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got.flags = globals{}
			if got != tc.want {
				t.Errorf("resolve =\n%+v, want\n%+v", got, tc.want)
			}
		})
	}
}

func TestParseFlagsAnywhere(t *testing.T) {
	tests := []struct {
		args     []string
		wantPos  []string
		wantJSON bool
		wantURL  string
	}{
		{[]string{"JOB", "--json"}, []string{"JOB"}, true, DefaultLedgerURL},
		{[]string{"--json", "JOB"}, []string{"JOB"}, true, DefaultLedgerURL},
		{[]string{"A", "--ledger-url", "http://x", "B"}, []string{"A", "B"}, false, "http://x"},
		{[]string{"--", "--json"}, []string{"--json"}, false, DefaultLedgerURL},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			e := &env{getenv: func(string) string { return "" }, stderr: &strings.Builder{}}
			pos, err := e.parse(newFlagSet("t", e.stderr), tc.args)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(pos, tc.wantPos) || e.cfg.JSON != tc.wantJSON || e.cfg.LedgerURL != tc.wantURL {
				t.Errorf("pos %q json %v url %q", pos, e.cfg.JSON, e.cfg.LedgerURL)
			}
		})
	}
}

func TestUsageExitCodes(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
		err  string // in stderr
	}{
		{"no command", nil, ExitUsage, "no command given"},
		{"unknown command", []string{"frobnicate"}, ExitUsage, `unknown command "frobnicate"`},
		{"help", []string{"help"}, ExitOK, ""}, // on stdout, checked below
		{"-h of a command", []string{"submit", "-h"}, ExitOK, "usage: stagectl submit"},
		{"unknown flag", []string{"jobs", "--colour"}, ExitUsage, "flag provided but not defined"},
		{"submit without destination", []string{"submit", "--package", "p"}, ExitUsage, "exactly one of --site and --location"},
		{"submit with an invalid job id", []string{"submit", "--site", "cologne", "--job-id", "a/b", "p"}, ExitUsage, "does not match"},
		{"status without job", []string{"status"}, ExitUsage, "exactly one job id"},
		{"wait without job", []string{"wait"}, ExitUsage, "exactly one job id"},
		{"jobs with bad limit", []string{"jobs", "--limit", "0"}, ExitUsage, "--limit"},
		{"archive without subcommand", []string{"archive"}, ExitUsage, "archive announce"},
		{"archive announce without file", []string{"archive", "announce", "--location", "l", "--key", "k"}, ExitUsage, "--file"},
		{"verify without location", []string{"verify"}, ExitUsage, "--location"},
		{"verify without root or topology", []string{"verify", "--location", "x"}, ExitUsage, "--root"},
		{"cancel without job", []string{"cancel"}, ExitUsage, "exactly one job id"},
		{"cancel with an invalid job id", []string{"cancel", "a:b", "--nats-url", "nats://127.0.0.1:1"}, ExitUsage, "does not match"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := stagectl(t, nil, "", tc.args...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.err) {
				t.Errorf("exit %d, stderr %q; want %d containing %q", r.code, r.stderr, tc.code, tc.err)
			}
			if r.code == ExitUsage && r.stdout != "" {
				t.Errorf("a usage error wrote to stdout: %q", r.stdout)
			}
		})
	}
}

func TestHelpOnStdout(t *testing.T) {
	r := stagectl(t, nil, "", "help")
	for _, w := range []string{"commands:", "verify", "-nats-url", "exit codes:"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("help lacks %q:\n%s", w, r.stdout)
		}
	}
	if r.code != 0 || r.stderr != "" {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestRateETA(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var r rate
	if _, ok := r.eta(t0, 0, 1000); ok {
		t.Error("an estimate from one observation")
	}
	if d, ok := r.eta(t0.Add(10*time.Second), 250, 1000); !ok || d != 30*time.Second {
		t.Errorf("eta = %v, %v; want 30s", d, ok)
	}
	if _, ok := r.eta(t0.Add(20*time.Second), 1000, 1000); ok {
		t.Error("an estimate for a finished transfer")
	}
}

func TestPlainProgressPrintsChanges(t *testing.T) {
	var b strings.Builder
	p := &plainProgress{w: &b, id: "j"}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	job := func(status string, done int64, completed int) ledgerapi.Job {
		return ledgerapi.Job{JobSummary: ledgerapi.JobSummary{JobID: "j", Status: status, BytesDone: done, BytesTotal: 400,
			Counts: ledgerapi.Counts{Total: 2, Completed: completed}}}
	}
	p.update(job("scheduled", 0, 0), t0)
	p.update(job("scheduled", 0, 0), t0.Add(time.Second))       // same: no line
	p.update(job("in_progress", 100, 0), t0.Add(2*time.Second)) // status changed
	p.update(job("in_progress", 150, 0), t0.Add(3*time.Second)) // bytes only, too soon
	p.update(job("in_progress", 200, 1), t0.Add(4*time.Second)) // a package completed
	p.update(job("completed", 400, 2), t0.Add(5*time.Second))
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("%d lines, want 4:\n%s", len(lines), b.String())
	}
	for _, want := range []string{"job j in_progress packages 1/2 done 0 failed bytes 200 B/400 B (50%) eta 4s", "completed packages 2/2"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, b.String())
		}
	}
}

func TestOutcomeCode(t *testing.T) {
	for status, want := range map[string]int{"completed": ExitOK, "failed": ExitFailed, "rejected": ExitRejected, "cancelled": ExitCancelled, "odd": ExitError} {
		if got := outcomeCode(status); got != want {
			t.Errorf("outcomeCode(%q) = %d, want %d", status, got, want)
		}
	}
}

func TestDerive(t *testing.T) {
	dest := ledgerapi.Place{Site: "cologne", Location: "cologne-processing"}
	tests := []struct {
		name string
		job  ledgerapi.Job
		want []string
	}{
		{"pending", ledgerapi.Job{JobSummary: ledgerapi.JobSummary{JobID: "j", Status: "pending"}}, []string{"planner has not planned it yet"}},
		{"rejected", ledgerapi.Job{JobSummary: ledgerapi.JobSummary{JobID: "j", Status: "rejected", Reason: "unknown_site", Message: `no site "x"`}},
			[]string{`refused the whole job: unknown_site: no site "x"`, "not in the topology file"}},
		{"scheduled", ledgerapi.Job{JobSummary: ledgerapi.JobSummary{JobID: "j", Status: "scheduled", Destination: dest, Counts: ledgerapi.Counts{Total: 1, Scheduled: 1}}},
			[]string{"wait for a stager of cologne"}},
		{"retrying", ledgerapi.Job{JobSummary: ledgerapi.JobSummary{JobID: "j", Status: "in_progress", Destination: dest}, Packages: []ledgerapi.Package{
			{PackageID: "p1", Status: "scheduled", Reason: "io_error", Message: "disk hiccup", Attempts: 2}}},
			[]string{"Package p1: attempt 2 failed (io_error: disk hiccup); it will be retried about 2s after the failure"}},
		{"no space", ledgerapi.Job{JobSummary: ledgerapi.JobSummary{JobID: "j", Status: "in_progress", Destination: dest}, Packages: []ledgerapi.Package{
			{PackageID: "p1", Status: "scheduled", Reason: "no_space", Message: "full", Attempts: 1}}},
			[]string{"attempt 1 failed (no_space: full); it will be retried about 30s after the failure"}},
		{"failed grouped", ledgerapi.Job{JobSummary: ledgerapi.JobSummary{JobID: "j", Status: "failed", Destination: dest, Counts: ledgerapi.Counts{Total: 3, Completed: 1, Failed: 2}}, Packages: []ledgerapi.Package{
			{PackageID: "p1", Status: "completed"},
			{PackageID: "p2", Status: "failed", Reason: "checksum_mismatch", Message: "sha differs"},
			{PackageID: "p3", Status: "failed", Reason: "checksum_mismatch"}}},
			[]string{"1 of 3 package(s) completed and 2 failed", "2 package(s) failed with checksum_mismatch (p2, p3): sha differs — the archive copy's bytes differ"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			x := derive(tc.job)
			all := strings.Join(x.Lines, "\n")
			for _, w := range tc.want {
				if !strings.Contains(all, w) {
					t.Errorf("explanation lacks %q:\n%s", w, all)
				}
			}
			if x.Source != "derived" || x.JobID != "j" {
				t.Errorf("explanation = %+v", x)
			}
		})
	}
}

func TestHumanBytesAndIDs(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 50 << 30: "50.0 GiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
	if got := archivedID("cologne-lta", "p1", "sha256:0123456789abcdef0123"); got != "archived:cologne-lta:p1:0123456789abcdef" {
		t.Errorf("archivedID = %q", got)
	}
	u := newUUID()
	if len(u) != 36 || u[14] != '4' || u == newUUID() {
		t.Errorf("newUUID = %q", u)
	}
}

func TestBarProgress(t *testing.T) {
	var b strings.Builder
	p := newBarProgress(&b, "j")
	j := ledgerapi.Job{JobSummary: ledgerapi.JobSummary{JobID: "j", Status: "in_progress", BytesTotal: 4 << 20, BytesDone: 1 << 20, Counts: ledgerapi.Counts{Total: 4, Completed: 1}}}
	p.update(j, time.Now())
	j.Status, j.BytesDone, j.Counts.Completed = "completed", 4<<20, 4
	p.update(j, time.Now())
	p.finish(j)
	out := b.String()
	for _, w := range []string{"j completed 4/4 pkgs", "100%", "4.0 MiB"} {
		if !strings.Contains(out, w) {
			t.Errorf("bar output lacks %q: %q", w, out)
		}
	}
}

// TestPrintJobDestination: the wire format has no null destination, so an
// unresolved one is an empty Place; a location known before its site (a
// submit by --location, not yet planned) is still shown.
func TestPrintJobDestination(t *testing.T) {
	tests := []struct {
		name string
		dest ledgerapi.Place
		want string
	}{
		{"unresolved", ledgerapi.Place{}, "-"},
		{"site and location", ledgerapi.Place{Site: "cologne", Location: "cologne-processing"}, "cologne/cologne-processing"},
		{"site only", ledgerapi.Place{Site: "cologne"}, "cologne/-"},
		{"location only", ledgerapi.Place{Location: "cologne-processing"}, "/cologne-processing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b strings.Builder
			j := ledgerapi.Job{JobSummary: ledgerapi.JobSummary{JobID: "j", Status: "pending", Destination: tt.dest}}
			if err := printJob(&b, j); err != nil {
				t.Fatal(err)
			}
			if !regexp.MustCompile(`(?m)^destination: +` + regexp.QuoteMeta(tt.want) + `$`).MatchString(b.String()) {
				t.Errorf("printJob = %q, want destination %q", b.String(), tt.want)
			}
		})
	}
}
