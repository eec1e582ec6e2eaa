package chaos

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
)

// Scenarios of issue 16: every consumer heals itself and says so when it
// cannot. Each measures, per trial, the time from the fault's end until
// the trial's jobs are terminal in the ledger ("resume"), and reports max
// and p99 in its note.

// readyz returns the status code and body of base/readyz ("" base: 0).
func readyz(base string) (int, string) {
	if base == "" {
		return 0, ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/readyz", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitReady waits until every base's /readyz answers 200 and returns how
// long that took; a test error after within.
func (s *system) waitReady(within time.Duration, bases ...string) time.Duration {
	start := time.Now()
	for _, b := range bases {
		for {
			code, body := readyz(b)
			if code == http.StatusOK {
				break
			}
			if time.Since(start) > within {
				s.t.Errorf("%s/readyz still %d after %s: %s", b, code, within, body)
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return time.Since(start)
}

// resumed records the time from end to every job so far being terminal.
func (s *system) resumed(end time.Time, within time.Duration) time.Duration {
	s.waitJobs(within)
	d := time.Since(end)
	s.mu.Lock()
	s.resumes = append(s.resumes, d)
	s.recovered = max(s.recovered, d)
	s.mu.Unlock()
	return d
}

// resumeNote is "resume max X s, p99 Y s over N trials".
func (s *system) resumeNote() string {
	s.mu.Lock()
	rs := slices.Clone(s.resumes)
	s.mu.Unlock()
	if len(rs) == 0 {
		return "no resume measured"
	}
	slices.Sort(rs)
	p99 := rs[min(len(rs)-1, (len(rs)*99+99)/100-1)]
	return fmt.Sprintf("resume after the fault: max %.1f s, p99 %.1f s, median %.1f s over %d trials",
		rs[len(rs)-1].Seconds(), p99.Seconds(), rs[len(rs)/2].Seconds(), len(rs))
}

// blackholeAll: every service's link to the broker (planner, ledger,
// stagers) black-holes — open, nothing passes — for longer than
// CONSUMER_STALL_AFTER while jobs flow; /readyz of the ledger and the
// planner must fail during the stall, naming a durable or the missing
// consumer info, and be ready again after.
func blackholeAll(t *testing.T, s *system, trials int, rng *rand.Rand) string {
	pkgs := s.archive(trials*4, 4, 256<<10)
	unready := 0
	var longest time.Duration
	for i := range trials {
		if err := s.submit(t.Context(), fmt.Sprintf("bh-%03d-a", i), pkgs[4*i:4*i+2]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(jitter(rng, 0, 300*time.Millisecond))
		all := append(slices.Clone(s.svcProxies), s.proxies...)
		for _, p := range all {
			p.blackhole()
		}
		// Submitted straight to the broker while every service is cut
		// off: it is handled only once the links carry traffic again.
		if err := s.submit(t.Context(), fmt.Sprintf("bh-%03d-b", i), pkgs[4*i+2:4*i+4]); err != nil {
			t.Fatal(err)
		}
		hold := jitter(rng, 7*time.Second, 9*time.Second)
		longest = max(longest, hold)
		deadline := time.Now().Add(hold)
		seen := false
		for time.Now().Before(deadline) {
			lc, lb := readyz(s.api.BaseURL)
			pc, pb := readyz(s.plannerHTTP)
			if lc == http.StatusServiceUnavailable && pc == http.StatusServiceUnavailable &&
				strings.Contains(lb, "durable ledger-") && strings.Contains(pb, "durable planner-") {
				seen = true
			}
			time.Sleep(200 * time.Millisecond)
		}
		if seen {
			unready++
		} else {
			t.Errorf("trial %d: /readyz of ledger and planner did not both fail naming a durable during a %s black hole", i, hold)
		}
		for _, p := range all {
			p.heal()
		}
		end := time.Now()
		s.waitReady(60*time.Second, s.api.BaseURL, s.plannerHTTP)
		s.resumed(end, 90*time.Second)
	}
	return fmt.Sprintf("every link black-holed %.0f–%.0f s; /readyz unready (naming the durable) in %d of %d stalls and ready after; %s",
		7.0, longest.Seconds(), unready, trials, s.resumeNote())
}

// deleteDurables: a durable deleted while its service runs and jobs flow:
// one of ledger-events, planner-submit, planner-outcomes and the stagers'
// normal-priority work durable per trial.
func deleteDurables(t *testing.T, s *system, trials int, rng *rand.Rand) string {
	victims := []struct{ stream, durable string }{
		{subject.EventsStream, subject.LedgerEvents},
		{subject.EventsStream, subject.PlannerSubmit},
		{subject.EventsStream, subject.PlannerOutcomes},
		{subject.RequestsStream, subject.StagerDurable("cologne", "normal")},
	}
	pkgs := s.archive(trials*4, 4, 256<<10)
	counts := map[string]int{}
	for i := range trials {
		if err := s.submit(t.Context(), fmt.Sprintf("dd-%03d-a", i), pkgs[4*i:4*i+2]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(jitter(rng, 0, 400*time.Millisecond))
		// Each durable in turn, then at random.
		v := victims[i%len(victims)]
		if i >= len(victims) {
			v = victims[rng.IntN(len(victims))]
		}
		if err := s.js.DeleteConsumer(t.Context(), v.stream, v.durable); err != nil {
			t.Logf("delete %s: %v", v.durable, err)
		}
		counts[v.durable]++
		end := time.Now()
		// A job that needs the deleted durable to be back.
		if err := s.submit(t.Context(), fmt.Sprintf("dd-%03d-b", i), pkgs[4*i+2:4*i+4]); err != nil {
			t.Fatal(err)
		}
		s.resumed(end, 90*time.Second)
	}
	var names []string
	for n, c := range counts {
		names = append(names, fmt.Sprintf("%s ×%d", n, c))
	}
	slices.Sort(names)
	return fmt.Sprintf("deleted %s; %s", strings.Join(names, ", "), s.resumeNote())
}

// purgeArchive: the ARCHIVE stream purged of everything its durables
// (planner-catalog, ledger-archive) have already handled — nothing not yet
// delivered is lost — and new announcements must still reach both: the
// next job names packages announced after the purge.
func purgeArchive(t *testing.T, s *system, trials int, rng *rand.Rand) string {
	purged := uint64(0)
	for i := range trials {
		first := s.archive(2, 4, 64<<10)
		if err := s.submit(t.Context(), fmt.Sprintf("pa-%03d-a", i), first); err != nil {
			t.Fatal(err)
		}
		// Wait until both durables have settled everything stored.
		st, err := s.js.Stream(t.Context(), subject.ArchiveStream)
		if err != nil {
			t.Fatal(err)
		}
		last := st.CachedInfo().State.LastSeq
		for _, d := range []string{subject.PlannerCatalog, subject.LedgerArchive} {
			for {
				c, err := s.js.Consumer(t.Context(), subject.ArchiveStream, d)
				if err == nil && c.CachedInfo().AckFloor.Stream >= last {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		if err := st.Purge(t.Context(), jetstream.WithPurgeSequence(last+1)); err != nil {
			t.Fatal(err)
		}
		purged += last
		end := time.Now()
		time.Sleep(jitter(rng, 0, 500*time.Millisecond))
		after := s.archive(2, 4, 64<<10) // waits for the catalog to know them
		if err := s.submit(t.Context(), fmt.Sprintf("pa-%03d-b", i), after); err != nil {
			t.Fatal(err)
		}
		s.resumed(end, 60*time.Second)
	}
	return fmt.Sprintf("ARCHIVE purged of what both durables had settled (up to seq %d in all); %s", purged, s.resumeNote())
}

// slowResume is the resume time after which doubleRestart logs the
// consumers' state.
const slowResume = 10 * time.Second

// doubleRestart: the broker restarted twice within a second, under load;
// when a trial takes long to resume, the consumers' state is logged before
// and after (the ledger stall of issue 16).
func doubleRestart(t *testing.T, s *system, trials int, rng *rand.Rand) string {
	pkgs := s.archive(trials*6, 4, 128<<10)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Minute)
	defer cancel()
	slow := 0
	for i := range trials {
		// Load: two jobs (3 and 2 packages); the probe after the fault
		// takes the sixth package.
		for j, part := range [][]string{pkgs[6*i : 6*i+3], pkgs[6*i+3 : 6*i+5]} {
			if err := s.submit(ctx, fmt.Sprintf("dr-%03d-%d", i, j), part); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(jitter(rng, 0, 300*time.Millisecond))
		before := s.consumerSnapshot()
		for k := range 2 {
			if err := s.nats.signal(syscall.SIGTERM, 30*time.Second); err != nil {
				t.Log(err)
			}
			s.nats.start()
			waitTCP(t, s.natsAddr, 30*time.Second)
			if k == 0 {
				time.Sleep(jitter(rng, 0, 500*time.Millisecond))
			}
		}
		end := time.Now()
		if err := s.submit(ctx, fmt.Sprintf("dr-%03d-probe", i), pkgs[6*i+5:6*i+6]); err != nil {
			t.Fatal(err)
		}
		d := s.resumed(end, 120*time.Second)
		if d > slowResume {
			slow++
			t.Logf("trial %d resumed only after %s; consumers before the restarts:\n%s\nnow:\n%s", i, d, before, s.consumerSnapshot())
		}
	}
	return fmt.Sprintf("%d trials of two restarts within a second; %d resumed after more than %s; %s", trials, slow, slowResume, s.resumeNote())
}

// consumerSnapshot is every durable's state on the event, archive and
// request streams, one line each.
func (s *system) consumerSnapshot() string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var b strings.Builder
	for _, name := range []string{subject.EventsStream, subject.ArchiveStream, subject.RequestsStream} {
		st, err := s.js.Stream(ctx, name)
		if err != nil {
			fmt.Fprintf(&b, "stream %s: %v\n", name, err)
			continue
		}
		si := st.CachedInfo()
		fmt.Fprintf(&b, "stream %s: msgs=%d last=%d\n", name, si.State.Msgs, si.State.LastSeq)
		for ci := range st.ListConsumers(ctx).Info() {
			fmt.Fprintf(&b, "  %s: delivered=%d/%d ackfloor=%d/%d ack_pending=%d redelivered=%d pending=%d waiting=%d\n",
				ci.Name, ci.Delivered.Consumer, ci.Delivered.Stream, ci.AckFloor.Consumer, ci.AckFloor.Stream,
				ci.NumAckPending, ci.NumRedelivered, ci.NumPending, ci.NumWaiting)
		}
	}
	return b.String()
}
