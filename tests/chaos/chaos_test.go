package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
	"github.com/ccatobs/ccat-staging/shared/subject"
)

// scenario injects one kind of fault trials times into a running system
// while it works, and returns when the last fault is over.
type scenario struct {
	name string
	// trials in the CI variant and in the long run (CHAOS_LONG=1).
	ci, long int
	opts     options
	run      func(t *testing.T, s *system, trials int, rng *rand.Rand) string
	// after, when set, adds to the note once the system has recovered.
	after func(s *system) string
	// within bounds how long the system may take to finish after the last
	// fault; the planner and the ledger only get a killed message back
	// after their consumers' AckWait (60 s and 30 s, not configurable).
	within time.Duration
}

func scenarios() []scenario {
	return []scenario{
		{name: "kill-stager", ci: 10, long: 100, run: killStager, within: 60 * time.Second},
		{name: "kill-planner", ci: 10, long: 100, run: killPlanner, after: replans, within: 120 * time.Second},
		{name: "kill-ledger", ci: 10, long: 100, run: killLedger, within: 90 * time.Second},
		{name: "nats-restart", ci: 3, long: 20, run: restartNATS, within: 120 * time.Second},
		{name: "partition-stager", ci: 2, long: 20, opts: options{stagers: 2}, run: partitionStager, within: 60 * time.Second},
		{name: "slow-archive", ci: 3, long: 20, opts: options{tape: true}, run: slowArchive, after: redeliveries, within: 120 * time.Second},
		{name: "failing-archive", ci: 3, long: 20, opts: options{tape: true}, run: failingArchive, within: 60 * time.Second},
		{name: "full-disk", ci: 1, long: 5, opts: options{tmpfs: "128m"}, run: fullDisk, within: 60 * time.Second},
		{name: "postgres-restart", ci: 3, long: 20, opts: options{pg: true}, run: restartPostgres, after: failedBatches, within: 120 * time.Second},
		{name: "mixed", ci: 6, long: 100, opts: options{stagers: 2}, run: mixed, within: 120 * time.Second},
		{name: "ledger-stall", ci: 2, long: 20, opts: options{stagers: 2, reconcile: true}, run: stallLedger, after: keptCopies, within: 60 * time.Second},
		{name: "blackhole", ci: 2, long: 20, opts: options{proxyAll: true}, run: blackholeAll, within: 90 * time.Second},
		{name: "durable-deleted", ci: 4, long: 40, run: deleteDurables, within: 90 * time.Second},
		{name: "archive-purged", ci: 2, long: 20, run: purgeArchive, within: 60 * time.Second},
		{name: "double-restart", ci: 3, long: 50, run: doubleRestart, within: 120 * time.Second},
	}
}

// TestChaos runs every scenario on its own system, in parallel (most of a
// scenario's time is spent waiting for AckWaits), and prints the figures.
// CHAOS_LONG=1 runs the long variant; CHAOS_RESULTS=<file> writes the table.
func TestChaos(t *testing.T) {
	long := os.Getenv("CHAOS_LONG") == "1"
	if _, err := binaries(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var results []result
	t.Run("scenarios", func(t *testing.T) {
		// All at once, whatever -test.parallel says: a scenario mostly
		// waits (AckWaits), so running them together is what keeps the CI
		// variant short.
		var wg sync.WaitGroup
		defer wg.Wait()
		only := os.Getenv("CHAOS_ONLY")
		for _, sc := range scenarios() {
			if only != "" && !strings.Contains(","+only+",", ","+sc.name+",") {
				continue
			}
			wg.Go(func() {
				t.Run(sc.name, func(t *testing.T) {
					trials := sc.ci
					if long {
						trials = sc.long
					}
					// CHAOS_SEED replays a run's fault timing.
					seed := uint64(time.Now().UnixNano())
					if v, err := strconv.ParseUint(os.Getenv("CHAOS_SEED"), 10, 64); err == nil {
						seed = v
					}
					t.Logf("seed %d", seed)
					rng := rand.New(rand.NewPCG(seed, 0x5eed))
					s := startSystem(t, sc.opts)
					note := sc.run(t, s, trials, rng)
					last := time.Now()
					r := s.verify(last, sc.within)
					if sc.after != nil {
						note += "; " + sc.after(s)
					}
					if rs := s.supervisorRestarts(); rs != "" {
						note += "; " + rs
					}
					r.Scenario, r.Trials, r.Note = sc.name, trials, note
					t.Logf("%s: trials %d, jobs %d, packages %d, lost %d, duplicated %d, stuck %d, premature %d, recovered in %s; %s",
						r.Scenario, r.Trials, r.Jobs, r.Packages, r.Lost, r.Duplicated, r.Stuck, r.Premature, r.Recover.Round(100*time.Millisecond), r.Note)
					if r.Premature > 0 {
						t.Errorf("%d jobs were shown terminal by the ledger before it knew all their packages", r.Premature)
					}
					mu.Lock()
					results = append(results, r)
					mu.Unlock()
				})
			})
		}
	})
	table := resultsTable(results, long)
	t.Log("\n" + table)
	if p := os.Getenv("CHAOS_RESULTS"); p != "" {
		if err := os.WriteFile(p, []byte(table), 0o644); err != nil {
			t.Error(err)
		}
	}
}

func resultsTable(rs []result, long bool) string {
	var b strings.Builder
	variant := "CI variant"
	if long {
		variant = "long run (CHAOS_LONG=1)"
	}
	fmt.Fprintf(&b, "Run of %s, %s.\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), variant)
	b.WriteString("| scenario | trials | jobs | packages | lost | duplicated | stuck | premature | time to recover | notes |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, sc := range scenarios() {
		for _, r := range rs {
			if r.Scenario == sc.name {
				fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %d | %d | %d | %.1f s | %s |\n", r.Scenario, r.Trials, r.Jobs, r.Packages,
					r.Lost, r.Duplicated, r.Stuck, r.Premature, r.Recover.Seconds(), r.Note)
			}
		}
	}
	return b.String()
}

func jitter(rng *rand.Rand, lo, hi time.Duration) time.Duration {
	return lo + time.Duration(rng.Int64N(int64(hi-lo)+1))
}

// inFlight reports whether a stager has an extraction under way.
func inFlight(s *system) bool {
	des, _ := os.ReadDir(filepath.Join(s.dir, "processing"))
	for _, de := range des {
		if strings.HasPrefix(de.Name(), ".staging-") {
			return true
		}
	}
	return false
}

// killStager: kill -9 the site's only stager at a random moment after each
// submit, then start it again; its package comes back after AckWait.
func killStager(t *testing.T, s *system, trials int, rng *rand.Rand) string {
	pkgs := s.archive(trials*2, 8, 2<<20)
	mid := 0
	for i := range trials {
		if err := s.submit(t.Context(), fmt.Sprintf("ks-%03d", i), pkgs[2*i:2*i+2]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(jitter(rng, 50*time.Millisecond, 600*time.Millisecond))
		if inFlight(s) {
			mid++
		}
		s.stagers[0].kill9()
		time.Sleep(jitter(rng, 0, 300*time.Millisecond))
		s.stagers[0].start()
	}
	return fmt.Sprintf("%d of %d kills hit a package mid-extraction", mid, trials)
}

// killPlanner: kill -9 the planner while it publishes the requests of
// 200-package jobs: it watches the work queue and kills once the job's
// first requests are stored but not yet all of them (or at a random moment
// when it misses that window).
func killPlanner(t *testing.T, s *system, trials int, rng *rand.Rand) string {
	const size = 200
	pool := s.archive(size, 1, 1<<10)
	for i := range trials {
		base := s.lastSeq(t, subject.RequestsStream)
		if err := s.submit(t.Context(), fmt.Sprintf("kp-%03d", i), pool); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(jitter(rng, 50*time.Millisecond, 300*time.Millisecond))
		for time.Now().Before(deadline) {
			if n := s.lastSeq(t, subject.RequestsStream) - base; n > 0 && n < size {
				break
			}
		}
		s.planner.kill9()
		s.planner.start()
		time.Sleep(jitter(rng, 100*time.Millisecond, 400*time.Millisecond))
	}
	return "a killed submit comes back after the planner's 60 s AckWait"
}

// replans reads the planner's log: a plan published again after a kill
// finds some of its requests already in the stream (JetStream drops them as
// duplicates), which shows the kill landed between two publications.
func replans(s *system) string {
	b, err := os.ReadFile(s.planner.log)
	if err != nil {
		return err.Error()
	}
	planned, mid := 0, 0
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.Contains(line, `"message":"job planned"`) {
			continue
		}
		planned++
		var v struct {
			Duplicates int `json:"duplicates"`
		}
		if json.Unmarshal([]byte(line), &v) == nil && v.Duplicates > 0 {
			mid++
		}
	}
	return fmt.Sprintf("%d of the %d plans the planner logged as published were re-plans after a kill between two publications", mid, planned)
}

// killLedger: kill -9 the ledger at random moments while events flow.
func killLedger(t *testing.T, s *system, trials int, rng *rand.Rand) string {
	pkgs := s.archive(trials*4, 2, 16<<10)
	for i := range trials {
		if err := s.submit(t.Context(), fmt.Sprintf("kl-%03d", i), pkgs[4*i:4*i+4]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(jitter(rng, 0, 300*time.Millisecond))
		s.ledger.kill9()
		s.ledger.start()
	}
	s.waitHealthy(60 * time.Second)
	return "a killed batch comes back after the ledger consumer's AckWait"
}

// restartNATS: stop the server and start it again on the same store dir
// while jobs are being planned, staged and projected.
func restartNATS(t *testing.T, s *system, trials int, rng *rand.Rand) string {
	pkgs := s.archive(trials*6, 4, 256<<10)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	var down time.Duration
	for i := range trials {
		for j := range 2 {
			n := 6*i + 3*j
			if err := s.submit(ctx, fmt.Sprintf("nr-%03d-%d", i, j), pkgs[n:n+3]); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(jitter(rng, 50*time.Millisecond, 500*time.Millisecond))
		start := time.Now()
		if err := s.nats.signal(syscall.SIGTERM, 30*time.Second); err != nil {
			t.Log(err)
		}
		time.Sleep(jitter(rng, 200*time.Millisecond, time.Second))
		s.nats.start()
		waitTCP(t, s.natsAddr, 30*time.Second)
		down += time.Since(start)
	}
	return fmt.Sprintf("broker down %.1f s in all", down.Seconds())
}

// partitionStager: cut one of two stagers off the broker for longer than
// AckWait while it stages; the other takes its package over, and when the
// first comes back its late outcome must change nothing.
func partitionStager(t *testing.T, s *system, trials int, rng *rand.Rand) string {
	pkgs := s.archive(trials*4, 8, 2<<20)
	for i := range trials {
		for j := range 2 {
			n := 4*i + 2*j
			if err := s.submit(t.Context(), fmt.Sprintf("ps-%03d-%d", i, j), pkgs[n:n+2]); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(jitter(rng, 100*time.Millisecond, 400*time.Millisecond))
		s.proxies[0].partition()
		time.Sleep(2*ackWait + jitter(rng, 0, time.Second))
		s.proxies[0].heal()
	}
	return fmt.Sprintf("partitions of %s..%s, AckWait %s", 2*ackWait, 2*ackWait+time.Second, ackWait)
}

// mixed: a random fault per trial from all of the above.
func mixed(t *testing.T, s *system, trials int, rng *rand.Rand) string {
	pkgs := s.archive(trials*3, 4, 512<<10)
	counts := map[string]int{}
	for i := range trials {
		if err := s.submit(t.Context(), fmt.Sprintf("mx-%03d", i), pkgs[3*i:3*i+3]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(jitter(rng, 0, 400*time.Millisecond))
		switch f := rng.IntN(5); f {
		case 0:
			counts["stager"]++
			st := s.stagers[rng.IntN(len(s.stagers))]
			st.kill9()
			st.start()
		case 1:
			counts["planner"]++
			s.planner.kill9()
			s.planner.start()
		case 2:
			counts["ledger"]++
			s.ledger.kill9()
			s.ledger.start()
		case 3:
			counts["nats"]++
			_ = s.nats.signal(syscall.SIGTERM, 30*time.Second)
			s.nats.start()
			waitTCP(t, s.natsAddr, 30*time.Second)
		case 4:
			counts["partition"]++
			px := s.proxies[rng.IntN(len(s.proxies))]
			px.partition()
			time.Sleep(ackWait + 500*time.Millisecond)
			px.heal()
		}
	}
	s.waitHealthy(60 * time.Second)
	return fmt.Sprintf("faults: %d stager kills, %d planner kills, %d ledger kills, %d broker restarts, %d partitions",
		counts["stager"], counts["planner"], counts["ledger"], counts["nats"], counts["partition"])
}

// slowArchive: every recall stalls longer than AckWait. The stager keeps
// the message alive while it waits, so nothing is redelivered or staged
// twice.
func slowArchive(t *testing.T, s *system, trials int, rng *rand.Rand) string {
	const stall = 3 * time.Second
	s.setArchive(stall, false)
	pkgs := s.archive(trials*2, 4, 256<<10)
	for i := range trials {
		if err := s.submit(t.Context(), fmt.Sprintf("sa-%03d", i), pkgs[2*i:2*i+2]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(jitter(rng, 0, time.Second))
	}
	return fmt.Sprintf("each recall stalls %s (AckWait %s)", stall, ackWait)
}

func redeliveries(s *system) string {
	return fmt.Sprintf("%d attempts beyond the first", s.retries())
}

// failingArchive: the archive fails every read for a while (a tape drive
// offline), then comes back; the transient failures are retried until the
// packages are staged.
func failingArchive(t *testing.T, s *system, trials int, rng *rand.Rand) string {
	s.setArchive(0, true)
	pkgs := s.archive(trials*2, 4, 256<<10)
	for i := range trials {
		if err := s.submit(t.Context(), fmt.Sprintf("fa-%03d", i), pkgs[2*i:2*i+2]); err != nil {
			t.Fatal(err)
		}
	}
	outage := jitter(rng, 2*time.Second, 4*time.Second)
	time.Sleep(outage)
	s.setArchive(0, false)
	s.faultOver(time.Minute)
	return fmt.Sprintf("archive failing for %.1f s; %d transient failures retried", outage.Seconds(), s.failures())
}

// fullDisk: the processing file system (a small tmpfs) is nearly full when
// the jobs arrive; packages wait (no_space, retried) instead of failing or
// leaving partial trees, and all complete once space is freed.
func fullDisk(t *testing.T, s *system, trials int, rng *rand.Rand) string {
	root := filepath.Join(s.dir, "processing")
	ballast := filepath.Join(root, "ballast.bin")
	for i := range trials {
		// Leave about 6 MiB free: room for one 4 MiB package at a time.
		var st syscall.Statfs_t
		if err := syscall.Statfs(root, &st); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(ballast, make([]byte, int64(st.Bavail)*st.Bsize-6<<20), 0o644); err != nil {
			t.Fatal(err)
		}
		pkgs := s.archive(4, 8, 4<<20)
		if err := s.submit(t.Context(), fmt.Sprintf("fd-%03d", i), pkgs); err != nil {
			t.Fatal(err)
		}
		time.Sleep(jitter(rng, 2*time.Second, 3*time.Second))
		if err := os.Remove(ballast); err != nil {
			t.Fatal(err)
		}
		s.faultOver(time.Minute)
	}
	return fmt.Sprintf("%d no_space waits while the disk was full", s.noSpace())
}

// stallLedger: the ledger's projection stops (its durable paused, its API
// live) for 3 x the planner's StallAfter while stagers work and earlier
// jobs are released; the reconciler (one re-issue, retention 0 s) must not
// take the ledger's stale "scheduled" for a lost request: no completed
// package given up, no copy a job still references deleted.
func stallLedger(t *testing.T, s *system, trials int, rng *rand.Rand) string {
	pkgs := s.archive(trials*8, 4, 128<<10)
	ctx := t.Context()
	work := subject.StagerDurable("cologne", event.PriorityNormal)
	var prev []string
	for i := range trials {
		// Jobs completed before the stall, released during it.
		var jobs []string
		for j := range 2 {
			n := 8*i + 2*j
			id := fmt.Sprintf("ls-%03d-a%d", i, j)
			if err := s.submit(ctx, id, pkgs[n:n+2]); err != nil {
				t.Fatal(err)
			}
			jobs = append(jobs, id)
		}
		s.waitJobs(time.Minute)
		// Jobs the ledger has seen planned, not staged, when it stops: the
		// stagers hold off until then.
		if _, err := s.js.PauseConsumer(ctx, subject.RequestsStream, work, time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		var stalled []string
		for j := range 2 {
			n := 8*i + 4 + 2*j
			id := fmt.Sprintf("ls-%03d-b%d", i, j)
			if err := s.submit(ctx, id, pkgs[n:n+2]); err != nil {
				t.Fatal(err)
			}
			stalled = append(stalled, id)
		}
		for _, id := range stalled {
			if _, err := s.api.Wait(ctx, id, 50*time.Millisecond, func(j ledgerapi.Job) bool { return j.Counts.Scheduled == 2 }); err != nil {
				t.Fatalf("job %s never scheduled in the ledger: %v", id, err)
			}
		}
		if _, err := s.js.PauseConsumer(ctx, subject.EventsStream, subject.LedgerEvents, time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if _, err := s.js.ResumeConsumer(ctx, subject.RequestsStream, work); err != nil {
			t.Fatal(err)
		}
		time.Sleep(jitter(rng, 0, stallAfter))
		for _, j := range append(prev, jobs[0]) {
			if err := s.release(ctx, j); err != nil {
				t.Fatal(err)
			}
		}
		prev = jobs[1:]
		time.Sleep(3 * stallAfter)
		if _, err := s.js.ResumeConsumer(ctx, subject.EventsStream, subject.LedgerEvents); err != nil {
			t.Fatal(err)
		}
	}
	return fmt.Sprintf("ledger projection stopped %d x %s (3 x StallAfter) with the stagers working and releases", trials, 3*stallAfter)
}

// keptCopies checks what stallLedger promises and says so in the note.
func keptCopies(s *system) string {
	held := map[string]bool{} // packages of jobs never released
	s.mu.Lock()
	for j, ps := range s.jobs {
		if !s.released[j] {
			for _, p := range ps {
				held[p] = true
			}
		}
	}
	s.mu.Unlock()
	done := map[string]bool{}
	for _, m := range s.streamMsgs(subject.EventsStream, subject.Done) {
		if env, err := event.Validate(m.Data); err == nil {
			if d, err := event.DataAs[event.Done](env); err == nil {
				done[d.JobID+"/"+d.PackageID] = true
			}
		}
	}
	stalledDone := 0
	for _, m := range s.streamMsgs(subject.EventsStream, subject.Stalled) {
		if env, err := event.Validate(m.Data); err == nil {
			if st, err := event.DataAs[event.Stalled](env); err == nil && done[st.JobID+"/"+st.PackageID] {
				stalledDone++
				s.t.Errorf("completed package %s of %s given up: %s", st.PackageID, st.JobID, st.Message)
			}
		}
	}
	deletedHeld, deleted := 0, 0
	for _, m := range s.streamMsgs(subject.EventsStream, subject.Released) {
		if env, err := event.Validate(m.Data); err == nil {
			if r, err := event.DataAs[event.Released](env); err == nil {
				deleted++
				if held[r.PackageID] {
					deletedHeld++
					s.t.Errorf("copy of %s deleted while a job still references it", r.PackageID)
				}
			}
		}
	}
	verdict := "stagectl verify clean"
	if s.t.Failed() {
		verdict = "see the test's errors"
	}
	return fmt.Sprintf("%d copies deleted after releases, %d of them still referenced; %d completed packages stalled; %s", deleted, deletedHeld, stalledDone, verdict)
}
