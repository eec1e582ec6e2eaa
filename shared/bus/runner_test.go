package bus

import (
	"context"
	"errors"
	"fmt"
	"github.com/ccatobs/ccat-staging/devkit/probe"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/fault"
	"github.com/ccatobs/ccat-staging/shared/internal/jstest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"
)

// testDurable is a limits stream "T" on t.> and a durable on it.
func testDurable(name string) Durable {
	return Durable{
		Stream: jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, Storage: jetstream.FileStorage},
		Consumer: jetstream.ConsumerConfig{Durable: name, AckPolicy: jetstream.AckExplicitPolicy,
			DeliverPolicy: jetstream.DeliverAllPolicy, AckWait: 5 * time.Second, MaxDeliver: 5},
	}
}

// seen records what a handler was given, by event id.
type seen struct {
	mu  sync.Mutex
	ids map[string]int
}

func (s *seen) add(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ids == nil {
		s.ids = map[string]int{}
	}
	s.ids[id]++
}

func (s *seen) count(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ids[id]
}

func (s *seen) distinct() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ids)
}

// publishEvents publishes n valid events (staging.cancel data) on t.x with
// ids prefix-0 … prefix-(n-1).
func publishEvents(t *testing.T, js jetstream.JetStream, prefix string, n int) {
	t.Helper()
	for i := range n {
		env, err := event.New("test", fmt.Sprintf("%s-%d", prefix, i), "", event.Cancel{JobID: "job-1", RequestedBy: "t", Reason: "r"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Publish(t.Context(), js, "t.x", env); err != nil {
			t.Fatal(err)
		}
	}
}

func startRunner(t *testing.T, r *Runner) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := r.Run(ctx); err != nil {
			t.Errorf("Run = %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
}

func recordingHandler(s *seen) Handler {
	return func(ctx context.Context, m jetstream.Msg) error {
		env, err := event.Decode(m.Data())
		if err != nil {
			return fault.Permanent("bad", err)
		}
		s.add(env.ID)
		return nil
	}
}

func provision(t *testing.T, js jetstream.JetStream, d Durable) {
	t.Helper()
	if _, err := EnsureStream(t.Context(), js, d.Stream); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateOrUpdateConsumer(t.Context(), d.Stream.Name, d.Consumer); err != nil {
		t.Fatal(err)
	}
}

// A durable deleted under a running runner is provisioned again and its
// messages are still handled; the runner never stops.
func TestRunnerReprovisionsADeletedDurable(t *testing.T) {
	srv := jstest.New(t)
	d := testDurable("heal")
	provision(t, srv.JS, d)
	var s seen
	h := NewHealth(nil, time.Minute)
	startRunner(t, &Runner{JS: srv.JS, Durables: []Durable{d}, Handler: recordingHandler(&s), Health: h,
		PollInterval: 100 * time.Millisecond, Log: zerolog.Nop()})
	publishEvents(t, srv.JS, "a", 3)
	jstest.Until(t, 10*time.Second, "first events handled", func() bool { return s.distinct() == 3 })

	if err := srv.JS.DeleteConsumer(t.Context(), "T", "heal"); err != nil {
		t.Fatal(err)
	}
	publishEvents(t, srv.JS, "b", 3)
	jstest.Until(t, 10*time.Second, "events after the deletion handled", func() bool { return s.distinct() == 6 })
	if _, err := srv.JS.Consumer(t.Context(), "T", "heal"); err != nil {
		t.Fatalf("durable not provisioned again: %v", err)
	}
	if got := testutil.ToFloat64(h.m.reprovisions.WithLabelValues("heal")); got < 1 {
		t.Errorf("reprovisioned_total = %v, want >= 1", got)
	}
}

// A stream deleted and created again (empty, as on a new cluster) heals:
// the runner provisions the durable on the new stream and handles what is
// published there.
func TestRunnerHealsAStreamDeletedAndRecreated(t *testing.T) {
	srv := jstest.New(t)
	d := testDurable("heal-stream")
	provision(t, srv.JS, d)
	var s seen
	startRunner(t, &Runner{JS: srv.JS, Durables: []Durable{d}, Handler: recordingHandler(&s),
		PollInterval: 100 * time.Millisecond, Log: zerolog.New(zerolog.NewTestWriter(t))})
	publishEvents(t, srv.JS, "a", 2)
	jstest.Until(t, 10*time.Second, "first events handled", func() bool { return s.distinct() == 2 })

	if err := srv.JS.DeleteStream(t.Context(), "T"); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.JS.CreateStream(t.Context(), d.Stream); err != nil {
		t.Fatal(err)
	}
	publishEvents(t, srv.JS, "b", 2)
	jstest.Until(t, 10*time.Second, "events on the new stream handled", func() bool { return s.count("b-0") == 1 && s.count("b-1") == 1 })

	// Deleted and not recreated by anyone: the runner creates it itself
	// (after streamGrace).
	if err := srv.JS.DeleteStream(t.Context(), "T"); err != nil {
		t.Fatal(err)
	}
	jstest.Until(t, 10*time.Second, "stream provisioned again by the runner", func() bool {
		_, err := srv.JS.Consumer(t.Context(), "T", "heal-stream")
		return err == nil
	})
	publishEvents(t, srv.JS, "c", 1)
	jstest.Until(t, 10*time.Second, "events on the runner's stream handled", func() bool { return s.count("c-0") == 1 })
}

// A message that is not a CloudEvent is terminated once, with its reason,
// logged and counted; the handler never sees it and it is not redelivered.
func TestRunnerTerminatesUndecodableOnce(t *testing.T) {
	srv := jstest.New(t)
	d := testDurable("decode")
	provision(t, srv.JS, d)
	var s seen
	var logs strings.Builder
	var logMu sync.Mutex
	h := NewHealth(nil, time.Minute)
	startRunner(t, &Runner{JS: srv.JS, Durables: []Durable{d}, Handler: recordingHandler(&s), Health: h, Decode: true,
		PollInterval: 100 * time.Millisecond, Log: zerolog.New(lockedWriter{&logMu, &logs})})
	if _, err := srv.JS.Publish(t.Context(), "t.x", []byte("not json")); err != nil {
		t.Fatal(err)
	}
	publishEvents(t, srv.JS, "ok", 1)
	jstest.Until(t, 10*time.Second, "valid event handled", func() bool { return s.count("ok-0") == 1 })
	jstest.Until(t, 10*time.Second, "invalid one terminated", func() bool {
		return testutil.ToFloat64(h.m.undecodable.WithLabelValues("decode", event.ReasonInvalidEnvelope)) == 1
	})
	if got := testutil.ToFloat64(h.m.settled.WithLabelValues("decode", "term", event.ReasonInvalidEnvelope)); got != 1 {
		t.Errorf("settled{term,invalid_envelope} = %v, want 1", got)
	}
	var ci *jetstream.ConsumerInfo
	jstest.Until(t, 10*time.Second, "both settled", func() bool {
		c, err := srv.JS.Consumer(t.Context(), "T", "decode")
		if err != nil {
			return false
		}
		ci = c.CachedInfo()
		return ci.NumAckPending == 0
	})
	time.Sleep(300 * time.Millisecond) // a redelivery would show by now
	if c, err := srv.JS.Consumer(t.Context(), "T", "decode"); err == nil {
		ci = c.CachedInfo()
	}
	if ci.NumAckPending != 0 || ci.NumRedelivered != 0 || ci.Delivered.Consumer != 2 {
		t.Errorf("consumer after a term: ack_pending %d, redelivered %d, delivered %d; want 0, 0, 2",
			ci.NumAckPending, ci.NumRedelivered, ci.Delivered.Consumer)
	}
	logMu.Lock()
	defer logMu.Unlock()
	if !strings.Contains(logs.String(), "not a valid event") || !strings.Contains(logs.String(), `"durable":"decode"`) {
		t.Errorf("no log line naming the durable for the invalid message:\n%s", logs.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// The kind of the handler's error decides the reply: nil acks, a
// permanent error terminates with its reason, any other error naks with
// the Retry policy's delay and the message comes back. A handler that
// settles itself (through Settle) is settled once.
func TestRunnerSettlesByErrorKind(t *testing.T) {
	cases := []struct {
		name       string
		err        error
		selfSettle bool
		verdict    string
		reason     string
		deliveries int
	}{
		{name: "ok", verdict: "ack", deliveries: 1},
		{name: "permanent", err: fault.Permanent("bad_request", errors.New("no")), verdict: "term", reason: "bad_request", deliveries: 1},
		{name: "transient", err: fault.Transient("io_error", errors.New("blip")), verdict: "nak", deliveries: 2},
		{name: "plain", err: errors.New("blip"), verdict: "nak", deliveries: 2},
		{name: "self-settled", err: errors.New("blip"), selfSettle: true, verdict: "nak", deliveries: 2},
	}
	srv := jstest.New(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := testDurable("kind-" + tc.name)
			d.Consumer.FilterSubject = "t." + tc.name
			provision(t, srv.JS, d)
			var mu sync.Mutex
			var deliveries []time.Time
			h := NewHealth(nil, time.Minute)
			retry := Retry{Base: 300 * time.Millisecond, Max: time.Second, NoSpace: time.Second}
			startRunner(t, &Runner{JS: srv.JS, Durables: []Durable{d}, Health: h, Retry: retry,
				PollInterval: 100 * time.Millisecond, Log: zerolog.Nop(),
				Handler: func(ctx context.Context, m jetstream.Msg) error {
					mu.Lock()
					deliveries = append(deliveries, time.Now())
					first := len(deliveries) == 1
					mu.Unlock()
					if !first {
						return nil // the retry succeeds
					}
					if tc.selfSettle {
						Settle(ctx, m, tc.err, zerolog.Nop())
					}
					return tc.err
				}})
			if _, err := srv.JS.Publish(t.Context(), "t."+tc.name, []byte("{}")); err != nil {
				t.Fatal(err)
			}
			jstest.Until(t, 10*time.Second, "first verdict recorded", func() bool {
				return testutil.ToFloat64(h.m.settled.WithLabelValues(d.Name(), tc.verdict, tc.reason)) == 1
			})
			jstest.Until(t, 10*time.Second, "message settled for good", func() bool {
				c, err := srv.JS.Consumer(t.Context(), "T", d.Name())
				return err == nil && c.CachedInfo().NumAckPending == 0 && c.CachedInfo().NumPending == 0 &&
					c.CachedInfo().AckFloor.Stream == c.CachedInfo().Delivered.Stream
			})
			time.Sleep(400 * time.Millisecond) // a second reply or redelivery would show by now
			mu.Lock()
			defer mu.Unlock()
			if len(deliveries) != tc.deliveries {
				t.Fatalf("deliveries = %d, want %d", len(deliveries), tc.deliveries)
			}
			if tc.deliveries == 2 {
				// Not a speed check: a bare Nak would come back at once.
				if gap := deliveries[1].Sub(deliveries[0]); gap < 200*time.Millisecond {
					t.Errorf("redelivered after %s, want the Retry delay (~300 ms)", gap)
				}
			}
		})
	}
}

// While the runner's connection black-holes (open, but nothing passes),
// /readyz fails naming the durable with pending work; when traffic flows
// again, the messages are handled and it is ready by itself.
func TestRunnerReadinessDuringAStall(t *testing.T) {
	srv := jstest.New(t)
	d := testDurable("stall")
	provision(t, srv.JS, d)
	proxy := probe.NewProxy(t, strings.TrimPrefix(srv.URL, "nats://"))
	// Long pings: the connection looks alive for the whole test.
	nc, err := nats.Connect(proxy.URL, nats.PingInterval(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	var s seen
	h := NewHealth(nil, 600*time.Millisecond)
	startRunner(t, &Runner{JS: js, Durables: []Durable{d}, Handler: recordingHandler(&s), Health: h,
		PollInterval: 100 * time.Millisecond, ResetAfter: 300 * time.Millisecond, Log: zerolog.Nop()})
	publishEvents(t, srv.JS, "a", 1)
	jstest.Until(t, 10*time.Second, "flowing before the stall", func() bool { return s.count("a-0") == 1 })
	if err := h.Check(t.Context()); err != nil {
		t.Fatalf("unready before the stall: %v", err)
	}

	// The poller needs one answer showing pending work: pause after it.
	proxy.Block()
	publishEvents(t, srv.JS, "b", 3) // straight to the server
	// No consumer info answers while blocked: readiness fails by the
	// info age. Show the pending-work rule too by letting one poll pass.
	jstest.Until(t, 10*time.Second, "unready naming the durable", func() bool {
		err := h.Check(t.Context())
		return err != nil && strings.Contains(err.Error(), "durable stall")
	})
	proxy.Unblock()
	jstest.Until(t, 20*time.Second, "messages handled after the stall", func() bool { return s.distinct() == 4 })
	jstest.Until(t, 10*time.Second, "ready again", func() bool { return h.Check(t.Context()) == nil })
}

// The pending-work rule of readiness: counted from the first poll that
// saw undelivered messages, not while every handler is busy or the
// server holds back for MaxAckPending, and cleared by a delivery.
func TestHealthPendingRule(t *testing.T) {
	now := time.Now()
	s := &durableState{name: "x", capacity: 1, progress: now.Add(-time.Hour), infoAt: now}
	info := &jetstream.ConsumerInfo{NumPending: 5, Config: jetstream.ConsumerConfig{MaxAckPending: 10}}
	s.observe(now, info)
	if d := s.stuck(now.Add(2 * time.Second)); d != 2*time.Second {
		t.Errorf("stuck = %s, want 2s counted from the first poll that saw pending work", d)
	}
	if why := s.unready(now.Add(61*time.Second), time.Minute); !strings.Contains(why, "durable x") {
		t.Errorf("unready = %q, want it to name the durable", why)
	}
	s.delivered(now.Add(62 * time.Second))
	if why := s.unready(now.Add(63*time.Second), time.Minute); why != "" {
		t.Errorf("unready after a delivery = %q", why)
	}
	// Busy handlers are progress; so is a full MaxAckPending.
	s.observe(now.Add(64*time.Second), info)
	s.begin()
	if d := s.stuck(now.Add(200 * time.Second)); d != 0 {
		t.Errorf("stuck with every handler busy = %s", d)
	}
	s.end(now.Add(200 * time.Second))
	s.observe(now.Add(201*time.Second), &jetstream.ConsumerInfo{NumPending: 5, NumAckPending: 10, Config: jetstream.ConsumerConfig{MaxAckPending: 10}})
	if d := s.stuck(now.Add(400 * time.Second)); d != 0 {
		t.Errorf("stuck with MaxAckPending used up = %s", d)
	}
}

// deafJS hands out consumers whose first Messages subscription never
// delivers anything while the connection stays up: a pull request lost on
// the server (a restart, a leader change) that the client does not learn
// about. That fault cannot be caused on purpose with one embedded server,
// so this wrapper stands in for it; every other call is the real server's.
type deafJS struct {
	jetstream.JetStream
	deafened atomic.Bool
}

func (j *deafJS) Consumer(ctx context.Context, stream, name string) (jetstream.Consumer, error) {
	c, err := j.JetStream.Consumer(ctx, stream, name)
	if err != nil {
		return nil, err
	}
	return &deafConsumer{Consumer: c, js: j}, nil
}

func (j *deafJS) CreateOrUpdateConsumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	c, err := j.JetStream.CreateOrUpdateConsumer(ctx, stream, cfg)
	if err != nil {
		return nil, err
	}
	return &deafConsumer{Consumer: c, js: j}, nil
}

type deafConsumer struct {
	jetstream.Consumer
	js *deafJS
}

func (c *deafConsumer) Messages(opts ...jetstream.PullMessagesOpt) (jetstream.MessagesContext, error) {
	if c.js.deafened.CompareAndSwap(false, true) {
		return &deafIter{stop: make(chan struct{})}, nil
	}
	return c.Consumer.Messages(opts...)
}

type deafIter struct {
	once sync.Once
	stop chan struct{}
}

func (d *deafIter) Next(...jetstream.NextOpt) (jetstream.Msg, error) {
	<-d.stop
	return nil, jetstream.ErrMsgIteratorClosed
}
func (d *deafIter) Stop()  { d.once.Do(func() { close(d.stop) }) }
func (d *deafIter) Drain() { d.Stop() }

// A subscription that receives nothing while consumer info says messages
// wait is reset, and the messages are handled.
func TestRunnerResetsASilentSubscription(t *testing.T) {
	srv := jstest.New(t)
	d := testDurable("silent")
	provision(t, srv.JS, d)
	var s seen
	h := NewHealth(nil, time.Minute)
	startRunner(t, &Runner{JS: &deafJS{JetStream: srv.JS}, Durables: []Durable{d}, Handler: recordingHandler(&s), Health: h,
		PollInterval: 100 * time.Millisecond, ResetAfter: 300 * time.Millisecond, Log: zerolog.Nop()})
	publishEvents(t, srv.JS, "a", 3)
	jstest.Until(t, 10*time.Second, "events handled after the reset", func() bool { return s.distinct() == 3 })
	if got := testutil.ToFloat64(h.m.resets.WithLabelValues("silent")); got < 1 {
		t.Errorf("resets_total = %v, want >= 1", got)
	}
}

// Priority workers all busy with one durable's messages are progress for
// every durable of the group: high waiting behind busy workers is not a
// stall. Then the first free worker takes high before normal.
func TestPriorityWorkersBusyAreNotAStall(t *testing.T) {
	srv := jstest.New(t)
	high, normal := testDurable("prio-high"), testDurable("prio-normal")
	high.Consumer.FilterSubject, normal.Consumer.FilterSubject = "t.high", "t.normal"
	provision(t, srv.JS, high)
	provision(t, srv.JS, normal)
	release := make(chan struct{})
	var mu sync.Mutex
	var order []string
	h := NewHealth(nil, 300*time.Millisecond)
	startRunner(t, &Runner{JS: srv.JS, Durables: []Durable{high, normal}, Mode: Priority, Workers: 1, Health: h,
		PollInterval: 50 * time.Millisecond, ResetAfter: 150 * time.Millisecond, Log: zerolog.Nop(),
		Handler: func(ctx context.Context, m jetstream.Msg) error {
			mu.Lock()
			order = append(order, m.Subject())
			first := len(order) == 1
			mu.Unlock()
			if first {
				<-release
			}
			return nil
		}})
	if _, err := srv.JS.Publish(t.Context(), "t.normal", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	jstest.Until(t, 10*time.Second, "the worker busy", func() bool { mu.Lock(); defer mu.Unlock(); return len(order) == 1 })
	for _, subj := range []string{"t.normal", "t.high"} {
		if _, err := srv.JS.Publish(t.Context(), subj, []byte("{}")); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(600 * time.Millisecond) // two StallAfters with high pending
	if err := h.Check(t.Context()); err != nil {
		t.Errorf("unready while the only worker is busy: %v", err)
	}
	close(release)
	jstest.Until(t, 10*time.Second, "all handled", func() bool { mu.Lock(); defer mu.Unlock(); return len(order) == 3 })
	mu.Lock()
	defer mu.Unlock()
	if order[1] != "t.high" {
		t.Errorf("order = %v, want high before the waiting normal", order)
	}
}

// A typed handler gets the decoded, schema-checked data; a message whose
// data is not a valid T is terminated with invalid_data, and one that is
// not a CloudEvent with invalid_envelope, without reaching the handler.
func TestTypedHandler(t *testing.T) {
	srv := jstest.New(t)
	d := testDurable("typed")
	provision(t, srv.JS, d)
	var s seen
	h := NewHealth(nil, time.Minute)
	startRunner(t, &Runner{JS: srv.JS, Durables: []Durable{d}, Health: h, PollInterval: 100 * time.Millisecond, Log: zerolog.Nop(),
		Handler: Typed(func(ctx context.Context, env event.Envelope, c event.Cancel) error {
			if c.JobID == "" {
				return errors.New("no job id")
			}
			s.add(env.ID)
			return nil
		})})
	bad, err := event.New("test", "bad-1", "", event.Cancel{JobID: "job-1", RequestedBy: "t", Reason: "r"})
	if err != nil {
		t.Fatal(err)
	}
	bad.Data = []byte(`{"job_id": 5}`)
	if _, err := Publish(t.Context(), srv.JS, "t.x", bad); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.JS.Publish(t.Context(), "t.x", []byte(`[1,2]`)); err != nil {
		t.Fatal(err)
	}
	publishEvents(t, srv.JS, "good", 1)
	jstest.Until(t, 10*time.Second, "valid one handled", func() bool { return s.count("good-0") == 1 })
	jstest.Until(t, 10*time.Second, "invalid ones terminated", func() bool {
		return testutil.ToFloat64(h.m.settled.WithLabelValues("typed", "term", event.ReasonInvalidData)) == 1 &&
			testutil.ToFloat64(h.m.settled.WithLabelValues("typed", "term", event.ReasonInvalidEnvelope)) == 1
	})
	if s.distinct() != 1 {
		t.Errorf("handler saw %d events, want only the valid one", s.distinct())
	}
}

// The dispatcher of a Priority runner fetches for every idle worker at once
// and in priority order, and never more than the workers can start: with
// three workers, two high and four normal waiting, the first round hands
// out both high and one normal in one go; while all three workers are busy
// nothing more is fetched (ack pending stays at three); the rest follows.
// On the code with one fetch of one message per worker there was no round
// handing out more than one.
func TestPriorityDispatcherFetchesForIdleWorkersInOrder(t *testing.T) {
	srv := jstest.New(t)
	high, normal := testDurable("disp-high"), testDurable("disp-normal")
	high.Consumer.FilterSubject, normal.Consumer.FilterSubject = "t.high", "t.normal"
	provision(t, srv.JS, high)
	provision(t, srv.JS, normal)
	for _, subj := range []string{"t.normal", "t.normal", "t.high", "t.normal", "t.high", "t.normal"} {
		if _, err := srv.JS.Publish(t.Context(), subj, []byte("{}")); err != nil {
			t.Fatal(err)
		}
	}
	const workers = 3
	release := make(chan struct{})
	var mu sync.Mutex
	var order []string
	h := NewHealth(nil, 0)
	startRunner(t, &Runner{JS: srv.JS, Durables: []Durable{high, normal}, Mode: Priority, Workers: workers, Health: h, Log: zerolog.Nop(),
		Handler: func(ctx context.Context, m jetstream.Msg) error {
			mu.Lock()
			order = append(order, m.Subject())
			mu.Unlock()
			<-release
			return nil
		}})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	t.Cleanup(free) // before the runner's cleanup: a failing test must not leave its workers blocked
	handled := func() int { mu.Lock(); defer mu.Unlock(); return len(order) }
	jstest.Until(t, 10*time.Second, "every worker busy", func() bool { return handled() == workers })
	ackPending := func() int {
		n := 0
		for _, d := range []string{"disp-high", "disp-normal"} {
			c, err := srv.JS.Consumer(t.Context(), "T", d)
			if err != nil {
				t.Fatal(err)
			}
			info, err := c.Info(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			n += info.NumAckPending
		}
		return n
	}
	for range 5 { // nothing fetched while no worker is idle
		if n := ackPending(); n != workers {
			t.Fatalf("%d messages held with %d workers busy", n, workers)
		}
		time.Sleep(50 * time.Millisecond)
	}
	mu.Lock()
	first := slices.Clone(order)
	mu.Unlock()
	slices.Sort(first)
	if want := []string{"t.high", "t.high", "t.normal"}; !slices.Equal(first, want) {
		t.Errorf("first round handled %v, want both high and one normal", first)
	}
	if n := testutil.CollectAndCount(h.m.dispatched); n != 1 {
		t.Fatalf("dispatch rounds recorded for %d durables, want 1", n)
	}
	if got := histogramMax(t, h, "disp-high"); got < 2 {
		t.Errorf("no fetch round handed out more than %v message(s)", got)
	}
	free()
	jstest.Until(t, 10*time.Second, "all handled", func() bool { return handled() == 6 })
}

// histogramMax is the upper bound of the highest non-empty bucket of the
// dispatch histogram of durable.
func histogramMax(t *testing.T, h *Health, durable string) float64 {
	t.Helper()
	var m dto.Metric
	if err := h.m.dispatched.WithLabelValues(durable).(prometheus.Histogram).Write(&m); err != nil {
		t.Fatal(err)
	}
	var prev uint64
	top := 0.0
	for _, b := range m.GetHistogram().GetBucket() {
		if b.GetCumulativeCount() > prev {
			top = b.GetUpperBound()
		}
		prev = b.GetCumulativeCount()
	}
	return top
}

// A Stream runner with several workers handles that many messages at once;
// with a Key, the messages of one key still one after the other, in the
// order they were delivered.
func TestStreamWorkers(t *testing.T) {
	idOf := func(m jetstream.Msg) int {
		env, err := event.Decode(m.Data())
		if err != nil {
			return -1
		}
		var i int
		_, _ = fmt.Sscanf(env.ID, "e-%d", &i)
		return i
	}
	const n, workers, keys = 48, 4, 8
	for _, tt := range []struct {
		name string
		key  func(jetstream.Msg) string
	}{
		{"any worker", nil},
		{"in order per key", func(m jetstream.Msg) string { return fmt.Sprint(idOf(m) % keys) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := jstest.New(t)
			d := testDurable("workers")
			d.Consumer.MaxAckPending = 1000
			provision(t, srv.JS, d)
			var (
				mu      sync.Mutex
				order   = map[int][]int{}
				handled int
				now     atomic.Int32
				most    atomic.Int32
			)
			h := func(ctx context.Context, m jetstream.Msg) error {
				c := now.Add(1)
				defer now.Add(-1)
				for p := most.Load(); c > p && !most.CompareAndSwap(p, c); p = most.Load() {
				}
				i := idOf(m)
				time.Sleep(20 * time.Millisecond)
				mu.Lock()
				order[i%keys] = append(order[i%keys], i)
				handled++
				mu.Unlock()
				return nil
			}
			startRunner(t, &Runner{JS: srv.JS, Durables: []Durable{d}, Mode: Stream, Workers: workers, Key: tt.key,
				Handler: h, Log: zerolog.Nop()})
			publishEvents(t, srv.JS, "e", n)
			jstest.Until(t, 20*time.Second, "every message handled", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return handled >= n
			})
			if got := most.Load(); got < 2 || got > workers {
				t.Errorf("at most %d messages handled at once, want 2 … %d", got, workers)
			}
			mu.Lock()
			defer mu.Unlock()
			if handled != n {
				t.Errorf("handled %d messages, want %d (each once)", handled, n)
			}
			if tt.key == nil {
				return
			}
			for k, ids := range order {
				if !slices.IsSorted(ids) {
					t.Errorf("key %d handled out of delivery order: %v", k, ids)
				}
			}
		})
	}
}

// A handler that defers its message settles it itself, after it returned:
// the runner neither acks it on return nor settles it twice. Here the first
// delivery is handed back (Nak) a while after the handler returned, so the
// message comes again; had the runner acked it on return, it would not.
// The late verdicts are counted like any other.
func TestDeferredMessageIsTheHandlersToSettle(t *testing.T) {
	srv := jstest.New(t)
	d := testDurable("deferred")
	provision(t, srv.JS, d)
	var deliveries atomic.Int32
	h := NewHealth(nil, time.Minute)
	handler := func(ctx context.Context, m jetstream.Msg) error {
		n := deliveries.Add(1)
		Defer(m)
		go func() {
			time.Sleep(200 * time.Millisecond)
			if n == 1 {
				_ = m.Nak()
				return
			}
			_ = m.DoubleAck(context.Background())
		}()
		return nil
	}
	startRunner(t, &Runner{JS: srv.JS, Durables: []Durable{d}, Mode: Stream, Handler: handler, Health: h, Log: zerolog.Nop()})
	publishEvents(t, srv.JS, "d", 1)
	jstest.Until(t, 10*time.Second, "the deferred message delivered again and acked", func() bool {
		return deliveries.Load() >= 2 && testutil.ToFloat64(h.m.settled.WithLabelValues("deferred", "ack", "")) == 1
	})
	if got := testutil.ToFloat64(h.m.settled.WithLabelValues("deferred", "nak", "")); got != 1 {
		t.Errorf("settled{nak} = %v, want 1", got)
	}
	time.Sleep(300 * time.Millisecond)
	if n := deliveries.Load(); n != 2 {
		t.Errorf("%d deliveries, want 2 (handed back once, then acked)", n)
	}
}

// While handling is fast, a Priority runner fetches ahead of its busy
// workers; the messages it holds are kept alive, so workers that turn
// slow under them cost no redelivery; and once handling is slow it holds
// nothing ahead again.
func TestPriorityLooksAheadOnlyWhileFast(t *testing.T) {
	srv := jstest.New(t)
	d := testDurable("ahead")
	d.Consumer.FilterSubject = "t.ahead"
	d.Consumer.AckWait = time.Second // held messages need InProgress within it
	provision(t, srv.JS, d)
	pub := func(kind string, n int) {
		for range n {
			if _, err := srv.JS.Publish(t.Context(), "t.ahead", []byte(kind)); err != nil {
				t.Fatal(err)
			}
		}
	}
	const workers = 2
	var mu sync.Mutex
	release, released := make(chan struct{}), false
	free := func() {
		mu.Lock()
		defer mu.Unlock()
		if !released {
			close(release)
			released = true
		}
	}
	deliveries := map[uint64]int{} // stream sequence → times handled
	var busy int
	// record counts a handling of m, by either instance.
	record := func(m jetstream.Msg) error {
		md, err := m.Metadata()
		if err != nil {
			return err
		}
		mu.Lock()
		deliveries[md.Sequence.Stream]++
		mu.Unlock()
		return nil
	}
	h := NewHealth(nil, 0)
	startRunner(t, &Runner{JS: srv.JS, Durables: []Durable{d}, Mode: Priority, Workers: workers, Health: h, Log: zerolog.Nop(),
		Handler: func(ctx context.Context, m jetstream.Msg) error {
			if err := record(m); err != nil {
				return err
			}
			if string(m.Data()) == "slow" {
				mu.Lock()
				busy++
				r := release
				mu.Unlock()
				<-r
			}
			return nil
		}})
	t.Cleanup(free) // before the runner's cleanup: a failing test must not leave its workers blocked
	handled := func() (n int) {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range deliveries {
			n += c
		}
		return n
	}
	ackPending := func() int {
		c, err := srv.JS.Consumer(t.Context(), "T", "ahead")
		if err != nil {
			t.Fatal(err)
		}
		info, err := c.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		return info.NumAckPending
	}

	// Fast handling first; then both workers stuck on slow messages with
	// more waiting: the runner holds messages ahead of them (the rest is
	// for the other instance below).
	pub("fast", 4)
	jstest.Until(t, 10*time.Second, "fast messages handled", func() bool { return handled() == 4 })
	pub("slow", 2)
	pub("fast", 4)
	jstest.Until(t, 10*time.Second, "both workers stuck and messages held ahead", func() bool {
		mu.Lock()
		b := busy
		mu.Unlock()
		return b == workers && ackPending() > workers
	})
	// A second instance on the same durable, idle with a pull waiting: a
	// held message that was not kept alive would be redelivered to it
	// after AckWait and handled twice.
	other := &Runner{JS: srv.JS, Durables: []Durable{d}, Mode: Priority, Workers: 1, Log: zerolog.Nop(),
		Handler: func(ctx context.Context, m jetstream.Msg) error { return record(m) }}
	octx, ostop := context.WithCancel(t.Context())
	ostopped := make(chan struct{})
	go func() { defer close(ostopped); _ = other.Run(octx) }()
	time.Sleep(3 * d.Consumer.AckWait) // the held messages wait three AckWaits
	ostop()
	<-ostopped
	free()
	jstest.Until(t, 10*time.Second, "all handled", func() bool { return handled() >= 10 })
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	for seq, n := range deliveries {
		if n != 1 {
			t.Errorf("message %d handled %d times, want once", seq, n)
		}
	}
	mu.Unlock()
	if n := testutil.ToFloat64(h.m.redelivered.WithLabelValues("ahead")); n != 0 {
		t.Errorf("%v redeliveries of held messages", n)
	}

	// Two messages that take longer than lookAheadBelow: handling is slow
	// now, and with both workers stuck again nothing is held ahead.
	mu.Lock()
	release, released, busy = make(chan struct{}), false, 0
	mu.Unlock()
	pub("slow", 2)
	stuck := func() bool { mu.Lock(); defer mu.Unlock(); return busy == workers }
	jstest.Until(t, 10*time.Second, "both workers on slow messages", stuck)
	time.Sleep(lookAheadBelow + 100*time.Millisecond)
	free()
	jstest.Until(t, 10*time.Second, "slow messages handled", func() bool { return handled() == 12 })
	mu.Lock()
	release, released, busy = make(chan struct{}), false, 0
	mu.Unlock()
	pub("slow", 2)
	pub("fast", 3)
	jstest.Until(t, 10*time.Second, "both workers stuck again", stuck)
	for range 5 {
		if n := ackPending(); n != workers {
			t.Fatalf("%d messages held with %d workers busy and handling slow", n, workers)
		}
		time.Sleep(50 * time.Millisecond)
	}
	free()
	jstest.Until(t, 10*time.Second, "all handled", func() bool { return handled() == 17 })
}
