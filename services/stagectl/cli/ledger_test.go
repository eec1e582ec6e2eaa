package cli

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/services/stagectl/audit"
	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
	"github.com/ccatobs/ccat-staging/shared/tarpkg"
)

// fakeLedger serves the ledger's read API from canned answers, so output and
// exit codes are tested exactly; tests/stagectl_test.go runs the real one.
type fakeLedger struct {
	mu        sync.Mutex
	seq       map[string][]ledgerapi.Job // successive answers for a job; the last repeats
	polls     map[string]int
	explain   map[string]any
	packages  map[string]any
	lastQuery url.Values
	srv       *httptest.Server
}

func newFakeLedger(t *testing.T) *fakeLedger {
	f := &fakeLedger{seq: map[string][]ledgerapi.Job{}, polls: map[string]int{}, explain: map[string]any{}, packages: map[string]any{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/jobs", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.lastQuery = r.URL.Query()
		var l ledgerapi.JobList
		ids := make([]string, 0, len(f.seq))
		for id := range f.seq {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		for _, id := range ids {
			j := f.seq[id][len(f.seq[id])-1]
			if s := r.URL.Query().Get("status"); s != "" && j.Status != s {
				continue
			}
			l.Jobs = append(l.Jobs, j.JobSummary)
		}
		_ = json.NewEncoder(w).Encode(l)
	})
	mux.HandleFunc("GET /v1/jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		id := r.PathValue("id")
		s, ok := f.seq[id]
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"title":"Not found","status":404}`))
			return
		}
		i := min(f.polls[id], len(s)-1)
		f.polls[id]++
		if s[i].JobID == "" { // a placeholder: not projected yet
			w.WriteHeader(http.StatusNotFound)
			return
		}
		_ = json.NewEncoder(w).Encode(s[i])
	})
	mux.HandleFunc("GET /v1/jobs/{id}/explain", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		x, ok := f.explain[r.PathValue("id")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode(x)
	})
	mux.HandleFunc("GET /v1/jobs/{id}/events", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") != "j1" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(`{"job_id":"j1","events":[
{"seq":1,"source":"s","id":"u-1","type":"ccat.staging.submit.v1","time":"2026-11-26T20:00:00Z","job_id":"j1","package_id":null,"data":{"job_id":"j1","packages":["p1","p2"],"destination":{"site":"cologne"},"requested_by":"a"}},
{"seq":2,"source":"s","id":"failed:request:j1:p2:1:3","type":"ccat.staging.failed.v1","time":"2026-11-26T20:00:05.5Z","job_id":"j1","package_id":"p2","data":{"job_id":"j1","package_id":"p2","site":"cologne","location":"cologne-processing","attempt":3,"instance":"st-1","reason":"checksum_mismatch","message":"sha256 differs","permanent":true}}]}`))
	})
	mux.HandleFunc("GET /v1/sites", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"sites":[
{"name":"us","packages":{"scheduled":4},"bytes_staged_last_day":0,"throughput_bytes_per_second_last_hour":0,"backlog":[{"priority":"normal","pending":4,"ack_pending":0}],"stagers":[]},
{"name":"cologne","packages":{"in_progress":1,"failed":2},"bytes_staged_last_day":3145728,"throughput_bytes_per_second_last_hour":2048,
 "backlog":[{"priority":"high","pending":0,"ack_pending":1},{"priority":"normal","pending":3,"ack_pending":0}],
 "stagers":[{"site":"cologne","instance":"a","workers":2,"busy":1},{"site":"cologne","instance":"b","workers":2,"busy":0}]}]}`))
	})
	mux.HandleFunc("GET /v1/packages/{id}", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		p, ok := f.packages[r.PathValue("id")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode(p)
	})
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeLedger) set(id string, seq ...ledgerapi.Job) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seq[id] = seq
	f.polls[id] = 0
}

func job(id, status string, done, completed, failed int) ledgerapi.Job {
	now := time.Date(2026, 11, 26, 20, 0, 0, 0, time.UTC)
	end := now.Add(90 * time.Second)
	j := ledgerapi.Job{JobSummary: ledgerapi.JobSummary{JobID: id, Status: status, RequestedBy: "alice", Priority: "normal", CreatedAt: now,
		Destination: ledgerapi.Place{Site: "cologne", Location: "cologne-processing"},
		Counts:      ledgerapi.Counts{Total: 2, Completed: completed, Failed: failed, Scheduled: 2 - completed - failed},
		BytesTotal:  2048, BytesDone: int64(done)}}
	if status == "completed" || status == "failed" {
		j.CompletedAt = &end
	}
	if status == "rejected" {
		j.Reason, j.Message, j.Counts = "unknown_site", `no site "x"`, ledgerapi.Counts{}
	}
	for i, p := range []string{"p1", "p2"} {
		pk := ledgerapi.Package{PackageID: p, Status: "scheduled", SizeBytes: 1024}
		switch {
		case i < completed:
			pk.Status, pk.Path = "completed", "/data/cologne/processing/"+p
		case i < completed+failed:
			pk.Status, pk.Reason, pk.Message, pk.Attempts = "failed", "checksum_mismatch", "sha256 differs", 5
		}
		j.Packages = append(j.Packages, pk)
	}
	return j
}

func TestSubmitWaitExitCodes(t *testing.T) {
	srv := provisioned(t)
	led := newFakeLedger(t)
	env := map[string]string{"NATS_URL": srv.URL, "LEDGER_URL": led.srv.URL}
	tests := []struct {
		name     string
		seq      []ledgerapi.Job
		extra    []string
		code     int
		wantOut  []string
		wantErr  string
		jsonMode bool
	}{
		{"completed", []ledgerapi.Job{{}, job("j", "scheduled", 0, 0, 0), job("j", "in_progress", 1024, 1, 0), job("j", "completed", 2048, 2, 0)}, nil, ExitOK,
			[]string{"job j scheduled packages 0/2", "job j in_progress packages 1/2 done 0 failed bytes 1.0 KiB/2.0 KiB (50%)", "job j completed: 2 of 2 packages, 2.0 KiB, took 1m30s"}, "", false},
		{"failed", []ledgerapi.Job{job("j", "in_progress", 1024, 1, 0), job("j", "failed", 1024, 1, 1)}, nil, ExitFailed,
			[]string{"job j failed: 1 of 2 packages completed, 1 failed", "p2       failed  checksum_mismatch  5         sha256 differs"}, "", false},
		{"rejected", []ledgerapi.Job{job("j", "rejected", 0, 0, 0)}, nil, ExitRejected, []string{`job j rejected: unknown_site: no site "x"`}, "", false},
		{"cancelled", []ledgerapi.Job{job("j", "cancelled", 0, 0, 0)}, nil, ExitCancelled, []string{"job j cancelled"}, "", false},
		{"timeout", []ledgerapi.Job{job("j", "scheduled", 0, 0, 0)}, []string{"--timeout", "200ms"}, ExitTimeout, nil, "did not end within 200ms (status scheduled)", false},
		{"never projected", []ledgerapi.Job{{}}, []string{"--timeout", "100ms"}, ExitTimeout, nil, "status unknown to the ledger", false},
		{"json", []ledgerapi.Job{job("j", "completed", 2048, 2, 0)}, []string{"--json"}, ExitOK, []string{`"status": "completed"`}, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			led.set("j", tc.seq...)
			args := append([]string{"submit", "--site", "cologne", "--job-id", "j", "p1", "p2", "--wait", "--poll", "10ms"}, tc.extra...)
			r := stagectl(t, env, "", args...)
			if r.code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, tc.code, r.stdout, r.stderr)
			}
			for _, w := range tc.wantOut {
				if !strings.Contains(r.stdout, w) {
					t.Errorf("stdout lacks %q:\n%s", w, r.stdout)
				}
			}
			if !strings.Contains(r.stderr, tc.wantErr) {
				t.Errorf("stderr lacks %q:\n%s", tc.wantErr, r.stderr)
			}
			if tc.jsonMode {
				var j ledgerapi.Job
				if err := json.Unmarshal([]byte(r.stdout), &j); err != nil || j.JobID != "j" {
					t.Errorf("stdout is not the job's JSON: %v\n%s", err, r.stdout)
				}
			}
		})
	}
}

func TestStatusJobsExplain(t *testing.T) {
	led := newFakeLedger(t)
	led.set("j1", job("j1", "failed", 1024, 1, 1))
	led.set("j2", job("j2", "in_progress", 512, 0, 0))
	led.explain["j2"] = map[string]any{"job_id": "j2", "status": "in_progress", "summary": "job j2 is in_progress: 0 of 2 packages completed, 0 failed",
		"packages": []map[string]any{{"package_id": "p1", "status": "scheduled", "why": "waiting in the queue at site cologne"}}}
	env := map[string]string{"LEDGER_URL": led.srv.URL}
	tests := []struct {
		name      string
		args      []string
		code      int
		want      []string
		wantQuery url.Values
	}{
		{"status table", []string{"status", "j1"}, 0, []string{"job:", "failed", "cologne/cologne-processing", "2 total, 1 completed, 1 failed",
			"PACKAGE  STATUS", "p2       failed     5         1.0 KiB  -         -       -", "checksum_mismatch: sha256 differs"}, nil},
		{"status json", []string{"status", "j1", "--json"}, 0, []string{`"job_id": "j1"`, `"package_id": "p2"`}, nil},
		{"status unknown job", []string{"status", "nope"}, ExitNotFound, nil, nil},
		{"wait for a failed job", []string{"wait", "j1", "--poll", "10ms"}, ExitFailed, []string{"job j1 failed: 1 of 2 packages completed, 1 failed"}, nil},
		{"wait times out", []string{"wait", "j2", "--poll", "10ms", "--timeout", "50ms"}, ExitTimeout, []string{"job j2 in_progress packages 0/2"}, nil},
		{"jobs table", []string{"jobs"}, 0, []string{"JOB  STATUS       SITE     LOCATION            PACKAGES  FAILED", "j1   failed       cologne  cologne-processing  1/2       1", "j2   in_progress"}, url.Values{"limit": {"50"}}},
		{"jobs filtered json", []string{"jobs", "--status", "failed", "--site", "cologne", "--limit", "5", "--json"}, 0, []string{`"job_id": "j1"`},
			url.Values{"status": {"failed"}, "site": {"cologne"}, "limit": {"5"}}},
		{"explain derived", []string{"explain", "j1"}, 0, []string{"It failed: 1 of 2 package(s) completed and 1 failed", "1 package(s) failed with checksum_mismatch (p2)"}, nil},
		{"explain from the ledger", []string{"explain", "j2"}, 0, []string{"job j2 is in_progress", "Package p1 (scheduled): waiting in the queue at site cologne."}, nil},
		{"explain json", []string{"explain", "j2", "--json"}, 0, []string{`"source": "ledger"`}, nil},
		{"explain unknown job", []string{"explain", "nope"}, ExitNotFound, nil, nil},
		{"events", []string{"events", "j1"}, 0, []string{"TIME", "2026-11-26T20:00:00.000Z  submit  -        2 package(s) to cologne",
			"failed  p2       checksum_mismatch (permanent): sha256 differs, attempt 3, on st-1  failed:request:j1:p2:1:3"}, nil},
		{"events json", []string{"events", "j1", "--json"}, 0, []string{`"type": "ccat.staging.failed.v1"`}, nil},
		{"sites", []string{"sites"}, 0, []string{"SITE     STAGERS  BUSY", "cologne  2        1/4   high:0+1 normal:3+0  0          1            2       3.0 MiB     2.0 KiB/s",
			"us       0        0/0   normal:4+0"}, nil},
		{"sites json", []string{"sites", "--json"}, 0, []string{`"name": "cologne"`, `"instance": "b"`}, nil},
		{"events unknown job", []string{"events", "nope"}, ExitNotFound, nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := stagectl(t, env, "", tc.args...)
			if r.code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, tc.code, r.stdout, r.stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stdout, w) {
					t.Errorf("stdout lacks %q:\n%s", w, r.stdout)
				}
			}
			if tc.wantQuery != nil {
				led.mu.Lock()
				q := led.lastQuery
				led.mu.Unlock()
				if q.Encode() != tc.wantQuery.Encode() {
					t.Errorf("query %s, want %s", q.Encode(), tc.wantQuery.Encode())
				}
			}
		})
	}
}

func TestVerify(t *testing.T) {
	srv := provisioned(t)
	led := newFakeLedger(t)
	dir := t.TempDir()
	root := filepath.Join(dir, "processing")
	env := map[string]string{"NATS_URL": srv.URL, "LEDGER_URL": led.srv.URL}
	trees := map[string][]tarpkg.Entry{"p1": tarpkg.Tree(1, 3, 3000), "p2": tarpkg.Tree(2, 2, 2000)}
	for id, entries := range trees {
		tarFile := filepath.Join(dir, id+".tar")
		if _, err := tarpkg.Write(tarFile, entries); err != nil {
			t.Fatal(err)
		}
		if r := stagectl(t, env, "", "archive", "announce", "--location", "cologne-lta", "--key", id+".tar", "--file", tarFile); r.code != 0 {
			t.Fatalf("announce: %s", r.stderr)
		}
	}
	stage := func(t *testing.T) {
		if err := os.RemoveAll(root); err != nil {
			t.Fatal(err)
		}
		for id, entries := range trees {
			for _, e := range entries {
				p := filepath.Join(root, id, filepath.FromSlash(e.Path))
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, e.Data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
		// The stager's bookkeeping is not a package.
		if err := os.MkdirAll(filepath.Join(root, ".ccat-staging", "manifests"), 0o755); err != nil {
			t.Fatal(err)
		}
		// p1 was staged with modes and a group, and its record says so; p2
		// predates such records and is not checked for them.
		err := filepath.WalkDir(filepath.Join(root, "p1"), func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				return os.Chmod(p, fs.ModeSetgid|0o750)
			}
			return os.Chmod(p, 0o640)
		})
		if err != nil {
			t.Fatal(err)
		}
		rec := fmt.Sprintf(`{"package_id":"p1","files":[],"dir_mode":"2750","file_mode":"0640","gid":%d}`, os.Getegid())
		if err := os.WriteFile(filepath.Join(root, ".ccat-staging", "manifests", "p1.json"), []byte(rec), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p1file := func() string { return filepath.Join(root, "p1", filepath.FromSlash(trees["p1"][0].Path)) }
	led.set("j1", job("j1", "completed", 2048, 2, 0))

	tests := []struct {
		name   string
		change func(t *testing.T)
		args   []string
		code   int
		kinds  []string
	}{
		{"intact", func(*testing.T) {}, nil, 0, nil},
		{"changed byte", func(t *testing.T) {
			p := filepath.Join(root, "p2", filepath.FromSlash(trees["p2"][1].Path))
			b, _ := os.ReadFile(p)
			b[0] ^= 1
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}, nil, ExitDrift, []string{audit.ChecksumMismatch}},
		{"deleted package and an untracked one", func(t *testing.T) {
			if err := os.RemoveAll(filepath.Join(root, "p1")); err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(filepath.Join(root, "stray"), 0o755); err != nil {
				t.Fatal(err)
			}
		}, nil, ExitDrift, []string{audit.MissingPackage, audit.UntrackedPackage}},
		{"released package swept", func(t *testing.T) {
			if err := os.RemoveAll(filepath.Join(root, "p2")); err != nil {
				t.Fatal(err)
			}
			led.mu.Lock()
			led.packages["p2"] = map[string]any{"package_id": "p2", "staged_copies": []map[string]any{
				{"location": "cologne-processing", "status": "deletion_scheduled"}}}
			led.mu.Unlock()
		}, nil, 0, nil},
		{"a copy the ledger calls deleted is on disk", func(t *testing.T) {
			led.mu.Lock()
			led.packages["p1"] = map[string]any{"package_id": "p1", "staged_copies": []map[string]any{
				{"location": "cologne-processing", "status": "deleted"}}}
			led.mu.Unlock()
			t.Cleanup(func() {
				led.mu.Lock()
				delete(led.packages, "p1")
				led.mu.Unlock()
			})
		}, nil, ExitDrift, []string{audit.DeletedPresent}},
		{"file wider than the location gives", func(t *testing.T) {
			if err := os.Chmod(p1file(), 0o644); err != nil {
				t.Fatal(err)
			}
		}, nil, ExitDrift, []string{audit.ModeMismatch}},
		{"setuid file", func(t *testing.T) {
			if err := os.Chmod(p1file(), fs.ModeSetuid|0o640); err != nil {
				t.Fatal(err)
			}
		}, nil, ExitDrift, []string{audit.ModeMismatch}},
		{"package directory narrower", func(t *testing.T) {
			if err := os.Chmod(filepath.Join(root, "p1"), 0o700); err != nil {
				t.Fatal(err)
			}
		}, nil, ExitDrift, []string{audit.ModeMismatch}},
		{"group changed", func(t *testing.T) {
			// Changing a file's group to one the test user is not in
			// needs root; the suite runs as root (CI does).
			if os.Geteuid() != 0 {
				t.Fatal("chgrp to a foreign group needs root: run the suite as root")
			}
			if err := os.Lchown(p1file(), -1, os.Getegid()+1); err != nil {
				t.Fatal(err)
			}
		}, nil, ExitDrift, []string{audit.GroupMismatch}},
		{"one job only ignores strays", func(t *testing.T) {
			if err := os.MkdirAll(filepath.Join(root, "stray"), 0o755); err != nil {
				t.Fatal(err)
			}
		}, []string{"--job", "j1"}, 0, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			stage(t)
			tc.change(t)
			args := append([]string{"verify", "--location", "cologne-processing", "--root", root, "--json"}, tc.args...)
			r := stagectl(t, env, "", args...)
			if r.code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, tc.code, r.stdout, r.stderr)
			}
			var rep VerifyReport
			if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
				t.Fatal(err)
			}
			var kinds []string
			for _, f := range rep.Drift {
				kinds = append(kinds, f.Kind)
			}
			led.mu.Lock()
			_, swept := led.packages["p2"]
			delete(led.packages, "p2")
			led.mu.Unlock()
			if swept != (len(rep.Released) == 1) {
				t.Errorf("released = %v", rep.Released)
			}
			if !slices.Equal(kinds, tc.kinds) || rep.Packages != 2 || len(rep.NoManifest) != 0 {
				t.Errorf("report %+v, want kinds %v", rep, tc.kinds)
			}
		})
	}

	// The table form says what differs and where.
	stage(t)
	p := filepath.Join(root, "p1", filepath.FromSlash(trees["p1"][0].Path))
	if err := os.WriteFile(p, []byte("short"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := stagectl(t, env, "", "verify", "--location", "cologne-processing", "--root", root)
	for _, w := range []string{"PACKAGE  PATH", "p1       " + trees["p1"][0].Path + "  size_mismatch", "verified 2 package(s), 5 file(s)", "1 difference(s)"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("stdout lacks %q:\n%s", w, r.stdout)
		}
	}
	if r.code != ExitDrift {
		t.Errorf("exit %d", r.code)
	}
}
