package ledger_test

import (
	"encoding/json"
	"fmt"
	"github.com/ccatobs/ccat-staging/devkit/poll"
	"github.com/ccatobs/ccat-staging/devkit/probe"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/bustest"
	"github.com/ccatobs/ccat-staging/devkit/dbtest"
	"github.com/ccatobs/ccat-staging/services/ledger/internal/scenario"
	"github.com/ccatobs/ccat-staging/services/ledger/ledger"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
)

func (e *env) metrics() string {
	e.t.Helper()
	resp, err := http.Get(e.base + "/metrics")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// The ledger's durable deleted while the ledger runs (by hand, or lost in
// a broker's restart) is provisioned again and the projection goes on;
// the metrics say it happened.
func TestLedgerHealsADeletedDurable(t *testing.T) {
	t.Parallel()
	e := start(t, func(c *ledger.Config) { c.Consumers.PollInterval = 100 * time.Millisecond })
	e.publish(jobEvents(t, scenario.Job{ID: "before", Packages: 2})...)
	e.waitJob("before", "completed")
	if err := e.bus.JS.DeleteConsumer(t.Context(), subject.EventsStream, subject.LedgerEvents); err != nil {
		t.Fatal(err)
	}
	e.publish(jobEvents(t, scenario.Job{ID: "after", Packages: 2})...)
	e.waitJob("after", "completed")
	if m := e.metrics(); !regexp.MustCompile(`ccat_consumer_reprovisioned_total\{durable="ledger-events"\} [1-9]`).MatchString(m) {
		t.Errorf("metrics do not count the re-provisioning:\n%s", grepLines(m, "ccat_consumer_"))
	}
}

// explain's "retry at about" follows the stagers' policy: a package that
// failed with no_space is retried after STAGER_NO_SPACE_DELAY, not after
// the doubling delay of attempt 1.
func TestExplainRetryTimeFollowsTheStagersPolicy(t *testing.T) {
	t.Parallel()
	e := start(t, func(c *ledger.Config) { c.Consumers.Retry.NoSpace = 45 * time.Second })
	msgs := jobEvents(t, scenario.Job{ID: "full", Packages: 2})
	var part []scenario.Msg
	var failedAt time.Time
	for _, m := range msgs {
		if m.Env.Type == event.TypeDone {
			continue
		}
		if m.Env.Type == event.TypeFailed {
			var d map[string]any
			if err := json.Unmarshal(m.Env.Data, &d); err != nil {
				t.Fatal(err)
			}
			d["reason"] = event.ReasonNoSpace
			raw, err := json.Marshal(d)
			if err != nil {
				t.Fatal(err)
			}
			m.Env.Data = raw
			failedAt = m.Env.Time
			part = append(part, m)
			break
		}
		part = append(part, m)
	}
	e.publish(part...)
	want := failedAt.Add(45 * time.Second).UTC().Format(time.RFC3339)
	poll.Until(t, 20*time.Second, "explain the no_space retry", func() error {
		var ex struct {
			Packages []struct{ PackageID, Status, Why string } `json:"packages"`
		}
		e.get("/v1/jobs/full/explain", &ex)
		for _, p := range ex.Packages {
			if strings.Contains(p.Why, "with no_space") {
				if !strings.Contains(p.Why, "scheduled at about "+want) {
					return fmt.Errorf("explain = %q, want the retry at about %s (failure + 45 s)", p.Why, want)
				}
				return nil
			}
		}
		return fmt.Errorf("no package failed with no_space yet: %+v", ex)
	})
}

// While the ledger's link to the broker black-holes (open, nothing
// passes) and events wait, /readyz fails naming the durable; once traffic
// flows it projects the events and is ready again by itself.
func TestLedgerReadinessDuringAStall(t *testing.T) {
	t.Parallel()
	srv := bustest.New(t)
	proxy := probe.NewProxy(t, strings.TrimPrefix(srv.URL, "nats://"))
	e := &env{t: t, bus: srv}
	cfg, err := ledger.ConfigFromEnv(func(k string) string {
		return map[string]string{"NATS_URL": proxy.URL, "DATABASE_URL": dbtest.New(t), "LEDGER_HTTP_ADDR": "127.0.0.1:0",
			"LEDGER_FETCH_MAX_WAIT": "200ms", "CONSUMER_POLL_INTERVAL": "100ms", "CONSUMER_STALL_AFTER": "1s"}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	e.cfg = cfg
	e.run()
	e.publish(jobEvents(t, scenario.Job{ID: "before", Packages: 1})...)
	e.waitJob("before", "completed")
	readyz := func() (int, string) {
		resp, err := http.Get(e.base + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := readyz(); code != http.StatusOK {
		t.Fatalf("readyz before the stall = %d %s", code, body)
	}
	t1 := time.Now()
	proxy.Block()
	e.publish(jobEvents(t, scenario.Job{ID: "during", Packages: 1})...) // straight to the broker
	poll.Until(t, 20*time.Second, "unready naming the durable", func() error {
		if code, body := readyz(); code != http.StatusServiceUnavailable || !strings.Contains(body, "durable ledger-") {
			return fmt.Errorf("readyz = %d %s", code, body)
		}
		return nil
	})
	t.Logf("unready %s after the block", time.Since(t1))
	t0 := time.Now()
	proxy.Unblock()
	e.waitJob("during", "completed")
	t.Logf("projected %s after the link came back", time.Since(t0))
	poll.Until(t, 20*time.Second, "ready again", func() error {
		if code, body := readyz(); code != http.StatusOK {
			return fmt.Errorf("readyz = %d %s", code, body)
		}
		return nil
	})
	t.Logf("ready %s after the link came back", time.Since(t0))
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
