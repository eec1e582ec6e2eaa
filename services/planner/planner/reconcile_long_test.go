//go:build long

package planner

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/bustest"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
	"github.com/ccatobs/ccat-staging/shared/obs"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	promtestutil "github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
)

// TestReconcilerQueueViewAtScale measures the reconciler's view of the work
// queue with a million requests queued (BENCH_QUEUED to change), before
// (main's walk: one GetMsg per message into a map of every request) and
// after (batched direct gets keeping only the candidates), in the same
// run. The candidate is a package whose request is not queued: the worst
// case, the whole site's queue is read. Not in CI:
//
//	go test -tags long -run TestReconcilerQueueViewAtScale -v -timeout 60m ./services/planner/planner/
//
// It reports time, the Go heap the view retains and allocates, and the
// process's peak RSS (which includes the embedded nats-server) per variant.
func TestReconcilerQueueViewAtScale(t *testing.T) {
	n := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("BENCH_QUEUED")); err == nil {
		n = v
	}
	srv := bustest.New(t)
	ctx := t.Context()
	if err := bus.Provision(ctx, srv.JS, bus.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.ProvisionStager(ctx, srv.JS, "us", bus.StagerConsumerConfig{}); err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(srv.NC, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(strings.Repeat("x", 600)) // about a request's size
	start := time.Now()
	for i := range n {
		m := nats.NewMsg(subject.Request("us", "normal"))
		m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("request:job-%d:pkg-%07d:1", i/1000, i))
		m.Data = body
		if _, err := js.PublishMsgAsync(m); err != nil {
			t.Fatal(err)
		}
		if i%2000 == 1999 {
			<-js.PublishAsyncComplete() // a window, so the client never stalls
		}
	}
	<-js.PublishAsyncComplete()
	t.Logf("queued %d requests in %s", n, time.Since(start).Round(time.Second))

	// Each variant runs in a child process of its own (this test binary,
	// BENCH_VARIANT set), so its RSS is the view's alone, not the server's.
	for _, variant := range []string{"before", "after"} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestReconcilerQueueViewChild$", "-test.v")
		cmd.Env = append(os.Environ(), "BENCH_VARIANT="+variant, "BENCH_NATS_URL="+srv.URL)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", variant, err, out)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, "RESULT") {
				t.Logf("%d queued: %s", n, strings.TrimSpace(l))
			}
		}
	}
}

// TestReconcilerQueueViewChild is one variant of the measurement above; it
// does nothing unless started by it.
func TestReconcilerQueueViewChild(t *testing.T) {
	variant, url := os.Getenv("BENCH_VARIANT"), os.Getenv("BENCH_NATS_URL")
	if variant == "" {
		return
	}
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	s := &service{js: js, nc: nc, log: zerolog.Nop(), m: newMetrics(obs.NewRegistry(), "bench")}
	cands := []stale{{jobID: "lost", pkg: ledgerapi.Package{PackageID: "p", Destination: ledgerapi.Place{Site: "us", Location: "us-proc"}}}}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	rss0 := peakRSS()
	t0 := time.Now()
	var kept map[string]bool
	if variant == "before" {
		kept, err = oldQueuedRequests(s, t)
	} else {
		kept, err = s.queuedRequests(t.Context(), cands)
	}
	d := time.Since(t0)
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("RESULT %s: round's queue view %s, %d entries kept, heap in use after %.1f MiB (was %.1f), allocated %.1f MiB, peak RSS %s (at start %s), %s\n",
		variant, d.Round(time.Millisecond), len(kept), float64(after.HeapAlloc)/(1<<20), float64(before.HeapAlloc)/(1<<20),
		float64(after.TotalAlloc-before.TotalAlloc)/(1<<20), peakRSS(), rss0, calls(variant, s))
}

func calls(variant string, s *service) string {
	if variant == "before" {
		return "one GetMsg call per message"
	}
	return "read " + strconv.Itoa(int(testutilCounter(s))) + " messages, one direct-get call per " + strconv.Itoa(queueBatch)
}

// oldQueuedRequests is main's queuedRequests (before issue 15), verbatim
// but for the receiver, as the baseline.
func oldQueuedRequests(s *service, t *testing.T) (map[string]bool, error) {
	ctx := t.Context()
	st, err := s.js.Stream(ctx, subject.RequestsStream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", subject.RequestsStream, err)
	}
	out := map[string]bool{}
	for seq := uint64(1); ; {
		m, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject.RequestsAll))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("scan %s: %w", subject.RequestsStream, err)
		}
		if job, pkg, ok := parseRequestID(m.Header.Get(jetstream.MsgIDHeader)); ok {
			out[job+":"+pkg] = true
		}
		seq = m.Sequence + 1
	}
}

// peakRSS is VmHWM from /proc/self/status.
func peakRSS() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "?"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

func testutilCounter(s *service) float64 {
	return promtestutil.ToFloat64(s.m.queueReads)
}
