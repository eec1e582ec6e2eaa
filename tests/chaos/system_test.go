// Package chaos runs the real service binaries as separate processes against
// a child nats-server and a fresh PostgreSQL database, drives a workload,
// injects faults (kill -9, broker or database restart, network partition)
// and then checks the promise: every job reaches a terminal state, every
// package is completed exactly once, nothing is left behind, and every
// staged byte matches its checksum.
package chaos

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/dbtest"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/ccatobs/ccat-staging/shared/tarpkg"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const topologyYAML = `sites:
  - name: cologne
    locations:
      - name: cologne-lta
        type: long_term_archive
        storage: %[2]s
        priority: 1
        path: %[1]s/lta%[3]s
      - name: cologne-processing
        type: processing
        storage: disk
        priority: 1
        path: %[1]s/processing%[4]s
`

// ackWait is the stagers' AckWait: short, so a killed or partitioned
// stager's package moves on within seconds.
const ackWait = 2 * time.Second

// system is one independent deployment: its own nats-server (with its store
// dir, so it can be restarted on the same data), database, file roots and
// service processes.
type system struct {
	t        *testing.T
	dir      string
	natsAddr string
	nats     *proc
	planner  *proc
	ledger   *proc
	stagers  []*proc
	pg       *pgCluster // the ledger's private PostgreSQL, with options.pg
	proxies  []*proxy   // one per stager, between it and the server
	// svcProxies are the planner's and the ledger's, with proxyAll.
	svcProxies  []*proxy
	plannerHTTP string // the planner's /readyz base URL, with proxyAll
	// resumes are the per-trial times from a fault's end to the system
	// working again, for the scenarios that measure them.
	resumes []time.Duration
	api     ledgerapi.Client
	nc      *nats.Conn
	js      jetstream.JetStream

	topology string

	mu       sync.Mutex
	packages map[string]tarpkg.Info // archived packages by id
	jobs     map[string][]string    // submitted jobs and their packages
	released map[string]bool        // jobs released (their copies may be deleted)
	nextPkg  int
	// recovered is the longest time, over a scenario's trials, from the
	// end of a fault to every job terminal, for scenarios that wait per
	// trial (see faultOver).
	recovered time.Duration
}

type options struct {
	stagers int // stager instances at the site (default 1)
	// tape makes the archive a tape location whose recall command is a
	// script the scenario steers (see setArchive): slow or failing archive.
	tape bool
	// tmpfs, when set, mounts a tmpfs of that size (e.g. "12m") on the
	// processing root: a disk that fills up.
	tmpfs string
	// pg gives the ledger a private PostgreSQL cluster the scenario may
	// stop and crash, instead of a database on the shared server.
	pg bool
	// reconcile runs the planner's reconciler against the ledger with a
	// short stallAfter (and one re-issue), and gives the processing
	// location retention 0s, so a release deletes the copy at once.
	reconcile bool
	// proxyAll puts the planner and the ledger behind proxies too (the
	// stagers always are), and gives the planner an HTTP listener, so a
	// scenario can black-hole every service's link and watch /readyz.
	proxyAll bool
}

// stallAfter is the planner's PLANNER_STALL_AFTER with options.reconcile.
const stallAfter = time.Second

// recallScript stands in for a tape library: it sleeps for the seconds in
// archive.delay and fails while archive.fail exists.
const recallScript = `#!/bin/sh
d=$(cat %[1]s/archive.delay 2>/dev/null || echo 0)
sleep "$d"
if [ -e %[1]s/archive.fail ]; then echo "tape drive offline" >&2; exit 1; fi
exit 0
`

func startSystem(t *testing.T, o options) *system {
	t.Helper()
	if o.stagers == 0 {
		o.stagers = 1
	}
	s := &system{t: t, dir: t.TempDir(), packages: map[string]tarpkg.Info{}, jobs: map[string][]string{}, released: map[string]bool{}}
	for _, d := range []string{"lta", "processing", "logs", "nats"} {
		if err := os.MkdirAll(filepath.Join(s.dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	storage, recall := "disk", ""
	if o.tape {
		script := filepath.Join(s.dir, "recall.sh")
		if err := os.WriteFile(script, fmt.Appendf(nil, recallScript, s.dir), 0o755); err != nil {
			t.Fatal(err)
		}
		storage, recall = "tape", "\n        recall:\n          command: ["+script+"]\n          timeout: 1m"
	}
	topo := filepath.Join(s.dir, "topology.yaml")
	retention := ""
	if o.reconcile {
		retention = "\n        retention: 0s"
	}
	if err := os.WriteFile(topo, fmt.Appendf(nil, topologyYAML, s.dir, storage, recall, retention), 0o644); err != nil {
		t.Fatal(err)
	}
	s.topology = topo
	if o.tmpfs != "" {
		mnt := filepath.Join(s.dir, "processing")
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+o.tmpfs, "tmpfs", mnt).CombinedOutput(); err != nil {
			t.Fatalf("mount a %s tmpfs for the full-disk scenario (needs root, as in CI): %v: %s", o.tmpfs, err, out)
		}
		// Registered before the services start, so it runs after they stop.
		t.Cleanup(func() {
			if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
				t.Errorf("umount %s: %v: %s", mnt, err, out)
			}
		})
	}
	logs := filepath.Join(s.dir, "logs")
	port := freePort(t)
	s.natsAddr = fmt.Sprintf("127.0.0.1:%d", port)
	s.nats = newProc(t, logs, "nats-server", bin(t, "nats-server"),
		[]string{"-js", "-a", "127.0.0.1", "-p", fmt.Sprint(port), "-sd", filepath.Join(s.dir, "nats"), "-n", "chaos"}, nil)
	s.nats.start()
	waitTCP(t, s.natsAddr, 20*time.Second)
	var err error
	s.nc, err = nats.Connect("nats://"+s.natsAddr, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.nc.Close)
	if s.js, err = jetstream.New(s.nc); err != nil {
		t.Fatal(err)
	}
	if err := bus.Provision(t.Context(), s.js, bus.StreamConfig{}); err != nil {
		t.Fatal(err)
	}

	ledgerPort := freePort(t)
	common := map[string]string{
		"NATS_URL":      "nats://" + s.natsAddr,
		"TOPOLOGY_FILE": topo,
		"LOG_LEVEL":     "info",
		// Consumer info every second; /readyz fails after 5 s without
		// progress (production: 5 s and 60 s), so a trial sees it.
		"CONSUMER_POLL_INTERVAL": "1s",
		"CONSUMER_STALL_AFTER":   "5s",
	}
	with := func(extra map[string]string) map[string]string {
		m := map[string]string{}
		for k, v := range common {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	var dbURL string
	if o.pg {
		// Started before the ledger, so it is stopped after it.
		s.pg = startPG(t)
		dbURL = s.pg.url("ccat_chaos")
	} else {
		dbURL = dbtest.New(t)
	}
	ledgerNATS, plannerNATS, plannerHTTP := "nats://"+s.natsAddr, "nats://"+s.natsAddr, "off"
	if o.proxyAll {
		lp, pp := newProxy(t, s.natsAddr), newProxy(t, s.natsAddr)
		s.svcProxies = []*proxy{lp, pp}
		ledgerNATS, plannerNATS = "nats://"+lp.addr(), "nats://"+pp.addr()
		plannerHTTP = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		s.plannerHTTP = "http://" + plannerHTTP
	}
	s.ledger = newProc(t, logs, "ledger", bin(t, "ledger"), nil, with(map[string]string{
		"DATABASE_URL": dbURL, "LEDGER_HTTP_ADDR": fmt.Sprintf("127.0.0.1:%d", ledgerPort), "NATS_URL": ledgerNATS,
	}))
	plannerEnv := map[string]string{"PLANNER_HTTP_ADDR": plannerHTTP, "PLANNER_UNKNOWN_PACKAGE_DELAY": "200ms", "NATS_URL": plannerNATS}
	if o.reconcile {
		plannerEnv["LEDGER_URL"] = fmt.Sprintf("http://127.0.0.1:%d", ledgerPort)
		plannerEnv["PLANNER_STALL_AFTER"] = stallAfter.String()
		plannerEnv["PLANNER_RECONCILE_INTERVAL"] = "200ms"
		plannerEnv["PLANNER_MAX_REISSUES"] = "1"
		plannerEnv["PLANNER_RELEASE_SWEEP"] = "200ms"
		plannerEnv["PLANNER_LEDGER_CATCH_UP"] = "200ms"
	}
	s.planner = newProc(t, logs, "planner", bin(t, "planner"), nil, with(plannerEnv))
	for i := range o.stagers {
		px := newProxy(t, s.natsAddr)
		s.proxies = append(s.proxies, px)
		s.stagers = append(s.stagers, newProc(t, logs, fmt.Sprintf("stager-%d", i), bin(t, "stager"), nil, with(map[string]string{
			"NATS_URL": "nats://" + px.addr(), "STAGER_SITE": "cologne", "STAGER_INSTANCE": fmt.Sprintf("chaos-%d", i),
			"STAGER_HTTP_ADDR": "off", "STAGER_WORKERS": "2", "STAGER_ACK_WAIT": ackWait.String(),
			// Kills count as deliveries; a production MaxDeliver of 5 would
			// turn a storm of kills into retries_exhausted, which is not
			// what this suite measures.
			"STAGER_MAX_DELIVER": "100", "STAGER_RETRY_BASE": "100ms", "STAGER_RETRY_MAX": "1s",
			"STAGER_PROGRESS_INTERVAL": "500ms", "STAGER_SHUTDOWN_GRACE": "5s", "STAGER_NO_SPACE_DELAY": "500ms",
		})))
	}
	s.ledger.start()
	s.planner.start()
	for _, st := range s.stagers {
		st.start()
	}
	s.api.BaseURL = fmt.Sprintf("http://127.0.0.1:%d", ledgerPort)
	s.waitHealthy(60 * time.Second)
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range append([]*proc{s.nats, s.planner, s.ledger}, s.stagers...) {
				t.Logf("--- tail of %s:\n%s", p.name, p.tail(3000))
			}
		}
	})
	return s
}

// waitHealthy waits for the ledger's /healthz; the ledger is the last
// service to be usable after a restart because it migrates first.
func (s *system) waitHealthy(within time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(within)
	for {
		resp, err := http.Get(s.api.BaseURL + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("ledger not healthy after %s: %v\n%s", within, err, s.ledger.tail(3000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *system) publish(ctx context.Context, subj, id string, d event.Data) error {
	ev, err := event.New("ccat-staging/tests/chaos", id, "", d)
	if err != nil {
		return err
	}
	// The broker may be restarting: keep trying, as any client would.
	for {
		_, err = bus.Publish(ctx, s.js, subj, ev)
		if err == nil || ctx.Err() != nil {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// archive writes n packages of files×size bytes into the archive and
// announces them; it returns their ids.
func (s *system) archive(n, files int, size int64) []string {
	s.t.Helper()
	ids := make([]string, 0, n)
	for range n {
		s.mu.Lock()
		s.nextPkg++
		id := fmt.Sprintf("pkg-%04d", s.nextPkg)
		seed := uint64(s.nextPkg)
		s.mu.Unlock()
		key := "raw/" + id + ".tar"
		p := filepath.Join(s.dir, "lta", key)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			s.t.Fatal(err)
		}
		info, err := tarpkg.Write(p, tarpkg.Tree(seed, files, size))
		if err != nil {
			s.t.Fatal(err)
		}
		a := event.PackageArchived{PackageID: id, Location: "cologne-lta", Key: key, SizeBytes: info.SizeBytes,
			Checksum: info.Checksum, Format: "tar", Files: info.Files}
		if err := s.publish(s.t.Context(), subject.Archived, "archived:cologne-lta:"+id, a); err != nil {
			s.t.Fatal(err)
		}
		s.mu.Lock()
		s.packages[id] = info
		s.mu.Unlock()
		ids = append(ids, id)
	}
	// The planner must know them before jobs name them.
	kv, err := s.js.KeyValue(s.t.Context(), subject.CatalogBucket)
	for err != nil {
		time.Sleep(50 * time.Millisecond)
		kv, err = s.js.KeyValue(s.t.Context(), subject.CatalogBucket)
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, id := range ids {
		for {
			if _, err := kv.Get(s.t.Context(), id); err == nil {
				break
			}
			if time.Now().After(deadline) {
				s.t.Fatalf("catalog does not know %s after 60s", id)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return ids
}

// submit asks for packages under a new job id.
func (s *system) submit(ctx context.Context, job string, packages []string) error {
	s.mu.Lock()
	s.jobs[job] = packages
	s.mu.Unlock()
	return s.publish(ctx, subject.Submit, "submit-"+job, event.Submit{JobID: job, Packages: packages,
		Destination: event.Destination{Site: "cologne"}, RequestedBy: "chaos"})
}

// release publishes a staging.release for the job: its copies may go.
func (s *system) release(ctx context.Context, job string) error {
	s.mu.Lock()
	s.released[job] = true
	s.mu.Unlock()
	return s.publish(ctx, subject.Release, "release-"+job, event.Release{JobID: job, RequestedBy: "chaos"})
}

// setArchive steers the recall script: every recall sleeps delay, and
// fails while failing is true.
func (s *system) setArchive(delay time.Duration, failing bool) {
	s.t.Helper()
	if err := os.WriteFile(filepath.Join(s.dir, "archive.delay"), fmt.Appendf(nil, "%.1f", delay.Seconds()), 0o644); err != nil {
		s.t.Fatal(err)
	}
	flag := filepath.Join(s.dir, "archive.fail")
	if failing {
		if err := os.WriteFile(flag, nil, 0o644); err != nil {
			s.t.Fatal(err)
		}
	} else if err := os.Remove(flag); err != nil && !os.IsNotExist(err) {
		s.t.Fatal(err)
	}
}

// result is what one scenario reports.
type result struct {
	Scenario   string
	Trials     int
	Jobs       int
	Packages   int
	Lost       int // jobs or packages that ended anything but completed
	Duplicated int // packages with more than one done event or staged twice
	Stuck      int // jobs not terminal at the deadline
	// Premature counts jobs the ledger showed terminal before it knew all
	// their packages (their plan still waiting for a redelivery).
	Premature int
	Recover   time.Duration
	Note      string
}

// verify waits for every job to end and checks the invariants; it returns
// the figures and reports violations as test errors.
func (s *system) verify(since time.Time, within time.Duration) result {
	s.t.Helper()
	s.mu.Lock()
	jobs := make(map[string][]string, len(s.jobs))
	for k, v := range s.jobs {
		jobs[k] = v
	}
	releasedPkg := map[string]bool{}
	for j := range s.released {
		for _, p := range s.jobs[j] {
			releasedPkg[p] = true
		}
	}
	s.mu.Unlock()
	r := result{Jobs: len(jobs)}
	ctx, cancel := context.WithTimeout(s.t.Context(), within)
	defer cancel()
	staged := map[string]bool{}
	for job, pkgs := range jobs {
		r.Packages += len(pkgs)
		// A job may show terminal before all of its events are projected
		// (some wait for a redelivery after a kill); it is settled when it
		// is terminal and knows every package. Having shown terminal with
		// fewer packages is a premature answer, counted separately.
		seenEarly := false
		j, err := s.api.Wait(ctx, job, 100*time.Millisecond, func(j ledgerapi.Job) bool {
			if j.Terminal() && j.Counts.Total != len(pkgs) {
				seenEarly = true
			}
			return j.Terminal() && j.Counts.Total == len(pkgs)
		})
		if seenEarly {
			r.Premature++
		}
		if err != nil {
			if j.Terminal() {
				r.Lost++
				s.t.Errorf("job %s: %s %+v %s", job, j.Status, j.Counts, j.Message)
			} else {
				r.Stuck++
				s.t.Errorf("job %s stuck: %v", job, err)
			}
			continue
		}
		if j.Status != event.StatusCompleted || j.Counts.Completed != len(pkgs) || j.Counts.Total != len(pkgs) {
			r.Lost++
			s.t.Errorf("job %s: %s %+v %s", job, j.Status, j.Counts, j.Message)
		}
		for _, p := range j.Packages {
			if p.Status == event.StatusCompleted {
				staged[p.PackageID] = true
			}
		}
	}
	r.Recover = time.Since(since)
	if r.Stuck > 0 {
		s.logConsumers()
		// Ask the services where they are: Go prints every goroutine's
		// stack on SIGQUIT, into the log tailed below.
		for _, p := range append([]*proc{s.planner, s.ledger}, s.stagers...) {
			_ = p.signal(syscall.SIGQUIT, 5*time.Second)
			s.t.Logf("--- %s after SIGQUIT:\n%s", p.name, p.tail(30000))
		}
	}
	s.mu.Lock()
	r.Recover = max(r.Recover, s.recovered)
	s.mu.Unlock()

	// Exactly once: one done event per request, stored once.
	done := map[string]int{}
	perPkg := map[string]map[string]bool{}
	for _, m := range s.streamMsgs(subject.EventsStream, subject.Done) {
		env, err := event.Validate(m.Data)
		if err != nil {
			s.t.Errorf("stored done event does not validate: %v", err)
			continue
		}
		done[env.ID]++
		d, _ := event.DataAs[event.Done](env)
		k := d.JobID + "/" + d.PackageID
		if perPkg[k] == nil {
			perPkg[k] = map[string]bool{}
		}
		perPkg[k][env.ID] = true
	}
	for id, n := range done {
		if n > 1 {
			r.Duplicated++
			s.t.Errorf("done event %s stored %d times", id, n)
		}
	}
	for k, ids := range perPkg {
		if len(ids) > 1 {
			r.Duplicated++
			s.t.Errorf("%s has %d different done events", k, len(ids))
		}
	}

	// Nothing left behind, and every staged byte is the archive's.
	root := filepath.Join(s.dir, "processing")
	des, err := os.ReadDir(root)
	if err != nil {
		s.t.Fatal(err)
	}
	var visible []string
	for _, de := range des {
		switch {
		case de.Name() == ".ccat-staging":
		case strings.HasPrefix(de.Name(), "."):
			// A killed stager's temp dir is swept when it starts again;
			// every stager is running now, so none may be left.
			s.t.Errorf("left behind in the processing root: %s", de.Name())
		default:
			visible = append(visible, de.Name())
		}
	}
	for _, id := range visible {
		info, ok := s.packages[id]
		if !ok || !staged[id] {
			s.t.Errorf("%s is in the processing root but no job completed it", id)
			continue
		}
		for _, f := range info.Files {
			b, err := os.ReadFile(filepath.Join(root, id, filepath.FromSlash(f.Path)))
			sum := sha256.Sum256(b)
			if err != nil || hex.EncodeToString(sum[:]) != f.SHA256 {
				s.t.Errorf("%s/%s differs from the archive (%v)", id, f.Path, err)
				r.Lost++
			}
		}
	}
	// The projection holds one staged copy per package at the location,
	// however often it was staged.
	for id := range staged {
		var pkg ledgerapi.PackageInfo
		if err := s.api.Get(s.t.Context(), "/v1/packages/"+id, &pkg); err != nil {
			s.t.Errorf("ledger package %s: %v", id, err)
			continue
		}
		if n := len(pkg.StagedCopies); n != 1 || pkg.StagedCopies[0].Location != "cologne-processing" {
			r.Duplicated++
			s.t.Errorf("ledger package %s has %d staged copies: %+v", id, n, pkg.StagedCopies)
		}
	}
	// Every completed package a job still references is on disk; only a
	// released job's copies may be gone (deleted after their retention).
	onDisk := map[string]bool{}
	for _, id := range visible {
		onDisk[id] = true
	}
	for id := range staged {
		if !onDisk[id] && !releasedPkg[id] {
			r.Lost++
			s.t.Errorf("%s: completed, still referenced, and not on disk", id)
		}
	}
	s.stagectlVerify()
	return r
}

// stagectlVerify runs `stagectl verify` on the processing location: the
// ledger's record (copies it calls staged) against the disk (missing or
// altered copies, and copies it does not know) must agree.
func (s *system) stagectlVerify() {
	s.t.Helper()
	cmd := exec.Command(bin(s.t, "stagectl"), "verify", "--location", "cologne-processing", "--json")
	cmd.Env = append(os.Environ(), "NATS_URL=nats://"+s.natsAddr, "LEDGER_URL="+s.api.BaseURL, "TOPOLOGY_FILE="+s.topology)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		s.t.Errorf("stagectl verify: %v: record and disk differ:\n%s\n%s", err, out.String(), errb.String())
	}
}

type storedMsg struct {
	Subject string
	Data    []byte
}

// streamMsgs reads every stored message of a stream on subj.
func (s *system) streamMsgs(stream, subj string) []storedMsg {
	s.t.Helper()
	ctx := s.t.Context()
	cons, err := s.js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subj}})
	if err != nil {
		s.t.Fatal(err)
	}
	st, err := s.js.Stream(ctx, stream)
	if err != nil {
		s.t.Fatal(err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(subj))
	if err != nil {
		s.t.Fatal(err)
	}
	want := 0
	for _, n := range info.State.Subjects {
		want += int(n)
	}
	var out []storedMsg
	for len(out) < want {
		batch, err := cons.Fetch(min(want-len(out), 500), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			s.t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			out = append(out, storedMsg{m.Subject(), bytes.Clone(m.Data())})
			n++
		}
		if n == 0 {
			if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
				s.t.Fatal(err)
			}
			break
		}
	}
	return out
}

// faultOver waits until every job is terminal and records how long that
// took after the fault ended.
func (s *system) faultOver(within time.Duration) {
	start := time.Now()
	s.waitJobs(within)
	s.mu.Lock()
	s.recovered = max(s.recovered, time.Since(start))
	s.mu.Unlock()
}

// waitJobs waits until every job submitted so far is terminal (verify
// reports the ones that are not).
func (s *system) waitJobs(within time.Duration) {
	s.mu.Lock()
	var ids []string
	for id := range s.jobs {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(s.t.Context(), within)
	defer cancel()
	for _, id := range ids {
		_, _ = s.api.Wait(ctx, id, 100*time.Millisecond, ledgerapi.Job.Terminal)
	}
}

// outcomes counts stored stager events of a type for which keep is true.
func (s *system) outcomes(subj string, keep func(event.Envelope) bool) int {
	n := 0
	for _, m := range s.streamMsgs(subject.EventsStream, subj) {
		if env, err := event.Validate(m.Data); err == nil && keep(env) {
			n++
		}
	}
	return n
}

// retries counts attempts beyond the first (redeliveries).
func (s *system) retries() int {
	return s.outcomes(subject.Started, func(e event.Envelope) bool {
		d, err := event.DataAs[event.Started](e)
		return err == nil && d.Attempt > 1
	})
}

// failures counts transient staging.failed events.
func (s *system) failures() int {
	return s.outcomes(subject.Failed, func(e event.Envelope) bool {
		d, err := event.DataAs[event.Failed](e)
		return err == nil && !d.Permanent
	})
}

// noSpace counts staging.failed events with reason no_space.
func (s *system) noSpace() int {
	return s.outcomes(subject.Failed, func(e event.Envelope) bool {
		d, err := event.DataAs[event.Failed](e)
		return err == nil && d.Reason == event.ReasonNoSpace
	})
}

// lastSeq is the last sequence number of a stream.
func (s *system) lastSeq(t *testing.T, stream string) uint64 {
	st, err := s.js.Stream(t.Context(), stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

// supervisorRestarts names the processes that exited on their own and
// were started again by the harness's supervisor.
func (s *system) supervisorRestarts() string {
	var out []string
	for _, p := range append([]*proc{s.nats, s.planner, s.ledger}, s.stagers...) {
		p.mu.Lock()
		n := p.restarts
		p.mu.Unlock()
		if n > 0 {
			out = append(out, fmt.Sprintf("%s exited on its own %d× and was restarted", p.name, n))
		}
	}
	return strings.Join(out, ", ")
}

// logConsumers logs where the streams and every consumer on them are: a
// stuck job is either not delivered (delivered < last sequence), not acked
// (ack floor behind), or delivered and acked but not projected.
func (s *system) logConsumers() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, name := range []string{subject.EventsStream, subject.ArchiveStream, subject.RequestsStream} {
		st, err := s.js.Stream(ctx, name)
		if err != nil {
			s.t.Logf("stream %s: %v", name, err)
			continue
		}
		si := st.CachedInfo()
		s.t.Logf("stream %s: msgs=%d first=%d last=%d consumers=%d", name, si.State.Msgs, si.State.FirstSeq,
			si.State.LastSeq, si.State.Consumers)
		for ci := range st.ListConsumers(ctx).Info() {
			s.t.Logf("  consumer %s: delivered=%d/%d ackfloor=%d/%d ack_pending=%d redelivered=%d pending=%d waiting=%d paused=%v",
				ci.Name, ci.Delivered.Consumer, ci.Delivered.Stream, ci.AckFloor.Consumer, ci.AckFloor.Stream,
				ci.NumAckPending, ci.NumRedelivered, ci.NumPending, ci.NumWaiting, ci.Paused)
		}
	}
	s.t.Logf("--- nats-server log:\n%s", s.nats.tail(8000))
}
