package bus

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"runtime/debug"
	"sync"
	"time"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/fault"
	"github.com/ccatobs/ccat-staging/shared/logx"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Durable is a consumer a Runner reads, with everything needed to create
// it again: when the durable or its stream disappears (deleted by hand,
// purged with the stream, a new cluster), the runner re-provisions it with
// this very configuration and goes on.
type Durable struct {
	Stream   jetstream.StreamConfig
	Consumer jetstream.ConsumerConfig
}

// Name is the durable's name.
func (d Durable) Name() string { return d.Consumer.Durable }

// Handler handles one message. It returns nil (ack), a fault.Permanent
// error (term, with its reason) or any other error (nak, delayed by the
// Retry policy). A handler may settle the message itself (the older
// handlers do, through Settle); the runner then only records the verdict.
// A handler that hands the message on to be settled after it returns marks
// it with Defer first, or the runner acks it on return.
type Handler func(ctx context.Context, m jetstream.Msg) error

// BatchHandler takes a fetched batch and settles every message itself
// (the ledger acks a batch only after its transaction commits). It may
// return before the messages are settled, handing them to workers; a
// handler that blocks holds the next fetch back.
type BatchHandler func(ctx context.Context, msgs []jetstream.Msg)

// Mode is how a Runner pulls.
type Mode int

const (
	// Stream keeps one pull subscription (a Messages iterator with idle
	// heartbeats) per durable and handles its messages one at a time, or
	// Workers at a time: in delivery order per Key when a Key is set.
	Stream Mode = iota
	// Priority has Workers workers fed by one dispatcher, which asks the
	// durables in order with a no-wait fetch of as many messages as
	// workers are idle: the durables with work win in order (the
	// stagers' high, normal, low), and no message is fetched that a
	// worker cannot start at once.
	Priority
	// Batch fetches up to BatchSize messages or BatchBytes at once, waiting
	// BatchWait for the first, and hands them to the BatchHandler.
	Batch
)

// Runner consumes durables of one kind until its context ends: the one
// fetch / keep-alive / settle loop of every service. It never returns
// before ctx ends: fetch errors are logged and retried, a missing durable
// or stream is provisioned again, and a subscription that receives nothing
// while the server says messages wait is reset.
type Runner struct {
	JS       jetstream.JetStream
	Durables []Durable // one, or (Priority) several, highest priority first
	Mode     Mode
	Handler  Handler
	Batch    BatchHandler

	// Workers is how many messages are handled at once (Priority,
	// Stream); Batch runs one batch handler at a time.
	Workers int
	// LookAhead is how many messages a Priority runner may fetch for
	// workers still busy, while handling is fast (dispatch): 0 = Workers,
	// negative = none.
	LookAhead int
	// Key, for a Stream runner with several workers, names what must be
	// handled in delivery order: messages of one key go to one worker, one
	// after the other (the planner's outcomes of one package). Nil: any
	// idle worker takes the next message.
	Key func(jetstream.Msg) string
	// PullMax is how many messages a Stream subscription buffers; 0 = 1.
	PullMax int
	// PullExpiry bounds each pull request of a Stream subscription; the
	// server sends idle heartbeats every PullExpiry/2 (at most 5 s), and two
	// missed ones make the client pull again. 0 = 5 s.
	PullExpiry time.Duration
	// BatchSize, BatchBytes and BatchWait shape Batch fetches: wait up to
	// BatchWait for one message, then take what else waits, up to
	// BatchSize messages and BatchBytes (0: 500, 4 MiB, 1 s).
	BatchSize, BatchBytes int
	BatchWait             time.Duration

	// KeepAlive is how often InProgress is sent while a handler works; 0 =
	// a third of the durable's AckWait, negative = never (the handler does
	// it, as the stager does together with its progress events).
	KeepAlive time.Duration
	// HandleLimit cancels a handler's context after this long (0: never).
	// The context gets no deadline on purpose: a JetStream call under a
	// deadline waits for it instead of the client's 5 s default.
	HandleLimit time.Duration
	// Work is the context handlers run under; it may outlive the Run
	// context (a stager's grace period). Nil: Run's context without its
	// cancellation, so a message in hand is finished on shutdown.
	Work context.Context
	// Decode refuses messages that are not a valid CloudEvent before the
	// handler sees them: terminated with the reason, logged and counted.
	Decode bool
	// Retry is the redelivery policy (zero: DefaultRetry).
	Retry Retry
	// Health receives the durables' state and metrics; nil: a private one.
	Health *Health
	// PollInterval is how often consumer info is polled (0: 5 s);
	// ResetAfter is how long messages may wait with a handler free and
	// nothing delivered before the subscription is reset (0: 3 polls).
	PollInterval, ResetAfter time.Duration
	// OnInfo, when set, is called with every consumer info polled.
	OnInfo func(durable string, info *jetstream.ConsumerInfo)
	Log    zerolog.Logger

	group []*durableState // every durable's state, set by Run
}

// durable is a Runner's live view of one Durable.
type durable struct {
	Durable
	st *durableState

	mu       sync.Mutex
	cons     jetstream.Consumer
	stop     func() // stops the current Stream subscription
	lastHeal time.Time
	lastWarn time.Time
	// streamGone is when the stream was first seen missing.
	streamGone time.Time
}

func (d *durable) consumer() jetstream.Consumer {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cons
}

// Run consumes until ctx ends and returns nil then (an error only for a
// Runner that is set up wrongly).
func (r *Runner) Run(ctx context.Context) error {
	if err := r.defaults(); err != nil {
		return err
	}
	ds := make([]*durable, len(r.Durables))
	capacity := 1
	if r.Mode != Batch {
		capacity = r.Workers
	}
	for i, d := range r.Durables {
		ds[i] = &durable{Durable: d, st: r.Health.state(d.Stream.Name, d.Name(), capacity)}
		r.Health.m.stalled.WithLabelValues(d.Name()).Set(0)
		r.group = append(r.group, ds[i].st)
	}
	var wg sync.WaitGroup
	for _, d := range ds {
		wg.Go(func() { r.watch(ctx, d) })
	}
	switch r.Mode {
	case Stream:
		for _, d := range ds {
			wg.Go(func() { r.stream(ctx, d) })
		}
	case Priority:
		wg.Go(func() { r.dispatch(ctx, ds) })
	case Batch:
		wg.Go(func() { r.batch(ctx, ds[0]) })
	}
	wg.Wait()
	return nil
}

func (r *Runner) defaults() error {
	switch {
	case len(r.Durables) == 0:
		return errors.New("runner: no durable")
	case r.Mode == Batch && (r.Batch == nil || len(r.Durables) != 1):
		return errors.New("runner: batch mode needs a BatchHandler and one durable")
	case r.Mode != Batch && r.Handler == nil:
		return errors.New("runner: no handler")
	case r.Key != nil && r.Mode != Stream:
		return errors.New("runner: only stream mode takes a Key")
	}
	if r.Health == nil {
		r.Health = NewHealth(nil, 0)
	}
	r.Retry = r.Retry.WithDefaults()
	r.Workers = max(r.Workers, 1)
	// A Stream runner's workers can only be busy with what it buffered.
	r.PullMax = max(r.PullMax, 1)
	if r.Mode == Stream {
		r.PullMax = max(r.PullMax, r.Workers)
	}
	if r.PullExpiry <= 0 {
		r.PullExpiry = 5 * time.Second
	}
	if r.BatchSize <= 0 {
		r.BatchSize = 500
	}
	if r.BatchBytes <= 0 {
		r.BatchBytes = 4 << 20
	}
	if r.BatchWait <= 0 {
		r.BatchWait = time.Second
	}
	if r.PollInterval <= 0 {
		r.PollInterval = 5 * time.Second
	}
	if r.ResetAfter <= 0 {
		r.ResetAfter = 3 * r.PollInterval
	}
	return nil
}

// gone reports whether err says the durable or its stream does not exist
// (any more); a no-responders answer to a pull says the same on some paths.
func gone(err error) bool {
	return errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted) ||
		errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrConsumerDoesNotExist) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse)
}

// handle returns the durable's consumer, looking it up (and provisioning it
// when it is missing) first if need be; nil when the server cannot say yet.
func (r *Runner) handle(ctx context.Context, d *durable) jetstream.Consumer {
	if c := d.consumer(); c != nil {
		return c
	}
	r.heal(ctx, d, false)
	return d.consumer()
}

// heal looks the durable up afresh and, when it or its stream is missing,
// provisions both again with their configuration. It runs at most once a
// second per durable, however many workers ask.
func (r *Runner) heal(ctx context.Context, d *durable, force bool) {
	d.mu.Lock()
	if !force && time.Since(d.lastHeal) < time.Second {
		d.mu.Unlock()
		return
	}
	d.lastHeal = time.Now()
	d.mu.Unlock()
	log := r.Log.With().Str("durable", d.Name()).Str("stream", d.Stream.Name).Logger()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := r.JS.Consumer(cctx, d.Stream.Name, d.Name())
	if err != nil && gone(err) {
		// Until it exists again, the loops wait rather than pull from a
		// handle of what is gone.
		d.mu.Lock()
		d.cons = nil
		d.mu.Unlock()
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			// A stream created while the server still removes the old
			// one of that name took no messages (seen with 2.15.3):
			// create it only once it has been missing a while, which also
			// leaves its own provisioner the first go.
			d.mu.Lock()
			if d.streamGone.IsZero() {
				d.streamGone = time.Now()
			}
			wait := streamGrace - time.Since(d.streamGone)
			d.mu.Unlock()
			if len(d.Stream.Subjects) == 0 {
				log.Error().Msg("stream missing and its configuration unknown here; waiting for its provisioner")
				return
			}
			if wait > 0 {
				log.Warn().Dur("recreate_in", wait).Msg("stream missing; creating it again unless it comes back")
				return
			}
			if _, serr := EnsureStream(cctx, r.JS, d.Stream); serr != nil {
				log.Error().Err(serr).Msg("stream missing and not provisioned; will try again")
				return
			}
			log.Warn().Msg("stream was missing: provisioned it again")
		}
		c, err = r.JS.CreateOrUpdateConsumer(cctx, d.Stream.Name, d.Consumer)
		if err == nil {
			r.Health.m.reprovisions.WithLabelValues(d.Name()).Inc()
			log.Warn().Msg("durable was missing: provisioned it again with its configuration")
		}
	}
	if err != nil {
		if ctx.Err() == nil {
			log.Warn().Err(err).Msg("looking up durable; will try again")
		}
		return
	}
	d.mu.Lock()
	d.cons = c
	d.streamGone = time.Time{}
	d.mu.Unlock()
}

// streamGrace is how long a stream must have been missing before a runner
// creates it again.
const streamGrace = 2 * time.Second

// fetchFailed counts and logs (at most every 10 s per durable) a failed
// pull, and heals when the durable may be gone.
func (r *Runner) fetchFailed(ctx context.Context, d *durable, err error) {
	if ctx.Err() != nil {
		return
	}
	r.Health.m.errors.WithLabelValues(d.Name()).Inc()
	d.mu.Lock()
	warn := time.Since(d.lastWarn) >= 10*time.Second
	if warn {
		d.lastWarn = time.Now()
	}
	d.mu.Unlock()
	if warn {
		r.Log.Warn().Err(err).Str("durable", d.Name()).Msg("pull failed; retrying")
	}
	if gone(err) {
		r.heal(ctx, d, false)
	}
}

// stream reads one durable through a Messages iterator, reopened whenever
// it ends before ctx: after a reset, a deleted consumer, a closed
// subscription.
func (r *Runner) stream(ctx context.Context, d *durable) {
	handle, wait := r.lanes(ctx, d)
	defer wait()
	for ctx.Err() == nil {
		c := r.handle(ctx, d)
		if c == nil {
			sleep(ctx, time.Second)
			continue
		}
		it, err := c.Messages(jetstream.PullMaxMessages(r.PullMax), jetstream.PullExpiry(r.PullExpiry),
			jetstream.PullHeartbeat(min(r.PullExpiry/2, 5*time.Second)), jetstream.WithMessagesErrOnMissingHeartbeat(true))
		if err != nil {
			r.fetchFailed(ctx, d, err)
			r.heal(ctx, d, false)
			sleep(ctx, time.Second)
			continue
		}
		d.mu.Lock()
		d.stop = it.Stop
		d.mu.Unlock()
		stopOnCancel := context.AfterFunc(ctx, it.Stop)
		for {
			m, err := it.Next()
			if err != nil {
				if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
					break
				}
				r.fetchFailed(ctx, d, err)
				if gone(err) || errors.Is(err, jetstream.ErrBadRequest) {
					r.heal(ctx, d, true)
					break
				}
				if !errors.Is(err, jetstream.ErrNoHeartbeat) {
					sleep(ctx, 200*time.Millisecond)
				}
				continue
			}
			if ctx.Err() != nil {
				// Stopped with a message buffered: hand it back now
				// rather than after AckWait.
				_ = m.Nak()
				break
			}
			handle(m)
		}
		stopOnCancel()
		it.Stop()
	}
}

// lanes returns how a Stream runner hands a delivered message to its
// workers, and the wait for the last of them to finish. One worker: the
// reading loop handles the message itself. Several without a Key: any idle
// worker takes it. With a Key: the worker of its key's lane, so messages of
// one key are handled in delivery order. The hand-over is unbuffered: the
// loop reads the next message only once a worker has taken this one, so
// what waits, waits in the subscription's buffer (PullMax) as before.
// Workers finish the message in hand when ctx ends (process runs it under
// Work, not ctx).
func (r *Runner) lanes(ctx context.Context, d *durable) (handle func(jetstream.Msg), wait func()) {
	if r.Workers == 1 {
		return func(m jetstream.Msg) { r.process(ctx, d, m) }, func() {}
	}
	n := 1
	if r.Key != nil {
		n = r.Workers
	}
	chans := make([]chan jetstream.Msg, n)
	per := r.Workers / n // workers per lane: all on the one lane, or one each
	var wg sync.WaitGroup
	for i := range chans {
		chans[i] = make(chan jetstream.Msg)
		for range per {
			wg.Go(func() {
				for m := range chans[i] {
					r.process(ctx, d, m)
				}
			})
		}
	}
	handle = func(m jetstream.Msg) {
		c := chans[0]
		if r.Key != nil {
			c = chans[laneOf(r.Key(m), n)]
		}
		c <- m
	}
	wait = func() {
		for _, c := range chans {
			close(c)
		}
		wg.Wait()
	}
	return handle, wait
}

// laneOf maps a key to one of n lanes.
func laneOf(key string, n int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	return int(h.Sum32() % uint32(n))
}

// delivered is a message and the durable it came from.
type delivered struct {
	d *durable
	m jetstream.Msg
}

// dispatch feeds the Workers workers of a Priority runner. It holds one
// token per idle worker and fetches only with tokens in hand, as many
// messages as it holds tokens, asking the durables in order. One fetch
// round trip serves every idle worker, where one per worker and durable
// asked was the cost before.
//
// While handling is fast (lookAheadBelow on average) it also holds up to
// LookAhead tokens for workers that are still busy: the next messages are
// fetched while the workers finish, and wait here for the first worker
// free. A fetch costs a round trip or two (a few milliseconds on a loaded
// host), which for tiny or already-present packages was as long as the
// work, so workers stood idle for a third of their time. Messages held
// ahead are few and short-lived by that rule; they are kept alive with
// InProgress, so a worker that turns slow after them costs no redelivery,
// and they are handed back when the runner stops. The price: a high
// message can wait behind at most LookAhead normal ones fetched before it.
// When handling is slow no token is held ahead: every message fetched goes
// to a worker that waits for it, so none waits in this process while a
// long package runs (and another instance may take it).
//
// With nothing waiting it polls again after 20 ms, backing off to 100 ms:
// one poller now stands for all workers, where each of N workers used to
// poll with a back-off to 500 ms, so the cap is lower to keep new work from
// waiting longer than it did (the idle cost stays at a few no-wait pulls
// per durable and second).
func (r *Runner) dispatch(ctx context.Context, ds []*durable) {
	const minIdle, maxIdle = 20 * time.Millisecond, 100 * time.Millisecond
	ahead := r.LookAhead
	if ahead == 0 {
		ahead = r.Workers
	}
	ahead = max(ahead, 0)
	// Tokens bound what is fetched and not yet handled (workers busy plus
	// messages held), so neither channel ever blocks the dispatcher.
	work := make(chan *held, r.Workers+ahead)
	tokens := make(chan struct{}, r.Workers+ahead)
	var p pace
	heldGauge := r.Health.m.held.WithLabelValues(ds[0].Name())
	keep := r.heldKeepAlive(ds)
	var workers sync.WaitGroup
	for range r.Workers {
		tokens <- struct{}{}
		workers.Go(func() {
			for h := range work {
				h.take()
				heldGauge.Dec()
				began := time.Now()
				r.process(ctx, h.d, h.m)
				p.add(time.Since(began))
				tokens <- struct{}{}
			}
		})
	}
	defer func() {
		// Held messages go back at once, for whoever runs next.
		for drained := false; !drained; {
			select {
			case h := <-work:
				h.take()
				heldGauge.Dec()
				_ = h.m.NakWithDelay(0)
			default:
				drained = true
			}
		}
		close(work)
		workers.Wait()
	}()
	extra := 0 // look-ahead tokens in circulation
	// use reports whether a token taken from tokens may be used for a
	// fetch; a look-ahead token is retired instead while handling is slow.
	use := func() bool {
		if extra > 0 && !p.fast() {
			extra--
			return false
		}
		return true
	}
	wait := minIdle
	for ctx.Err() == nil {
		if p.fast() {
			for ; extra < ahead; extra++ {
				tokens <- struct{}{}
			}
		}
		// One token at least, then every other one free now.
		select {
		case <-ctx.Done():
			return
		case <-tokens:
		}
		if !use() {
			continue
		}
		k := 1
	more:
		for k < r.Workers+ahead {
			select {
			case <-tokens:
				if use() {
					k++
				}
			default:
				break more
			}
		}
		got := r.next(ctx, ds, k)
		for _, w := range got {
			heldGauge.Inc()
			work <- hold(w, keep)
		}
		for range k - len(got) {
			tokens <- struct{}{}
		}
		if len(got) > 0 {
			r.Health.m.dispatched.WithLabelValues(ds[0].Name()).Observe(float64(len(got)))
			wait = minIdle
			continue
		}
		sleep(ctx, wait)
		wait = min(wait*2, maxIdle)
	}
}

// lookAheadBelow is the mean handling time under which a Priority runner
// fetches ahead of its busy workers (dispatch).
const lookAheadBelow = time.Second

// pace is how long handling a message takes: the latest and a moving
// mean.
type pace struct {
	mu         sync.Mutex
	last, mean time.Duration
	n          int
}

func (p *pace) add(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n == 0 {
		p.mean = d
	} else {
		p.mean += (d - p.mean) / 8
	}
	p.last = d
	p.n++
}

// fast says whether handling is fast lately: the latest message and the
// mean under lookAheadBelow. One slow message is enough to stop looking
// ahead (a big package among tiny ones); nothing is known before the
// first one.
func (p *pace) fast() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n > 0 && p.last < lookAheadBelow && p.mean < lookAheadBelow
}

// heldKeepAlive is how often a message waiting for a worker is kept alive:
// a third of the shortest AckWait of the runner's durables.
func (r *Runner) heldKeepAlive(ds []*durable) time.Duration {
	every := time.Duration(0)
	for _, d := range ds {
		if d.Consumer.AckWait > 0 && (every == 0 || d.Consumer.AckWait/3 < every) {
			every = d.Consumer.AckWait / 3
		}
	}
	if every == 0 {
		every = 10 * time.Second // a third of the server's default AckWait
	}
	return every
}

// held is a fetched message on its way to a worker; until a worker takes
// it, it is sent InProgress every keep-alive interval.
type held struct {
	delivered
	mu    sync.Mutex
	taken bool
	t     *time.Timer
}

func hold(w delivered, every time.Duration) *held {
	h := &held{delivered: w}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.t = time.AfterFunc(every, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.taken {
			return
		}
		_ = h.m.InProgress()
		h.t.Reset(every)
	})
	return h
}

func (h *held) take() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.taken = true
	h.t.Stop()
}

// next fetches up to k waiting messages, asking the durables in order: the
// first durable's messages first, the next durable only for what is left.
// A no-wait pull answers at once or within a second, lost or not, so it
// needs no heartbeats.
func (r *Runner) next(ctx context.Context, ds []*durable, k int) []delivered {
	var got []delivered
	for _, d := range ds {
		if len(got) == k {
			break
		}
		c := r.handle(ctx, d)
		if c == nil {
			continue
		}
		b, err := c.FetchNoWait(k - len(got))
		if err != nil {
			r.fetchFailed(ctx, d, err)
			continue
		}
		for m := range b.Messages() {
			got = append(got, delivered{d, m})
		}
		if err := b.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, jetstream.ErrNoMessages) {
			r.fetchFailed(ctx, d, err)
		}
	}
	return got
}

// batch is the fetch loop of a Batch runner.
func (r *Runner) batch(ctx context.Context, d *durable) {
	for ctx.Err() == nil {
		c := r.handle(ctx, d)
		if c == nil {
			sleep(ctx, time.Second)
			continue
		}
		msgs, err := r.fetchBatch(c)
		if err != nil {
			r.fetchFailed(ctx, d, err)
			sleep(ctx, time.Second)
		}
		if len(msgs) == 0 {
			continue
		}
		now := time.Now()
		d.st.delivered(now)
		r.Health.m.lastDelivery.WithLabelValues(d.Name()).Set(float64(now.Unix()))
		r.Health.m.delivered.WithLabelValues(d.Name()).Add(float64(len(msgs)))
		for _, m := range msgs {
			if md, err := m.Metadata(); err == nil && md.NumDelivered > 1 {
				r.Health.m.redelivered.WithLabelValues(d.Name()).Inc()
			}
		}
		d.st.begin()
		r.Batch(ctx, msgs)
		d.st.end(time.Now())
	}
}

// fetchBatch waits up to BatchWait for one message, then takes whatever
// else is already waiting, up to BatchSize messages and BatchBytes: low
// latency when idle, big batches under load. The second pull waits
// batchRestWait at most for messages that are not there (a no-wait pull
// cannot limit bytes). Both pulls are short: the client ends each by its
// own timer, so a pull lost in a broker restart costs a second, not a
// stall.
func (r *Runner) fetchBatch(c jetstream.Consumer) ([]jetstream.Msg, error) {
	first, err := c.Fetch(1, jetstream.FetchMaxWait(r.BatchWait))
	if err != nil {
		return nil, err
	}
	var msgs []jetstream.Msg
	for m := range first.Messages() {
		msgs = append(msgs, m)
	}
	if err := first.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
		return msgs, err
	}
	if len(msgs) == 0 || r.BatchSize == 1 {
		return msgs, nil
	}
	budget := r.BatchBytes - len(msgs[0].Data())
	if budget <= 0 {
		return msgs, nil
	}
	rest, err := c.Fetch(r.BatchSize-1, jetstream.FetchMaxBytes(budget), jetstream.FetchMaxWait(batchRestWait))
	if err != nil {
		return msgs, nil // the first one is still worth handling
	}
	for m := range rest.Messages() {
		msgs = append(msgs, m)
	}
	return msgs, nil
}

// batchRestWait bounds how long the pull after a batch's first message
// waits for more: only when fewer than a batch are waiting does it wait
// that long.
const batchRestWait = 5 * time.Millisecond

// process handles one delivered message and makes sure it is settled once.
func (r *Runner) process(ctx context.Context, d *durable, m jetstream.Msg) {
	now := time.Now()
	d.st.delivered(now)
	// Priority workers serve every durable of the group: a worker busy
	// with a normal request is a worker high cannot have, so all of them
	// count it.
	busy := []*durableState{d.st}
	if r.Mode == Priority {
		busy = r.group
	}
	for _, st := range busy {
		st.begin()
	}
	defer func() {
		now := time.Now()
		for _, st := range busy {
			st.end(now)
		}
	}()
	name := d.Name()
	r.Health.m.lastDelivery.WithLabelValues(name).Set(float64(now.Unix()))
	r.Health.m.delivered.WithLabelValues(name).Inc()
	n := 1
	log := r.Log.With().Str("durable", name).Logger()
	if md, err := m.Metadata(); err == nil {
		n = int(md.NumDelivered)
		log = log.With().Uint64(logx.StreamSeq, md.Sequence.Stream).Int(logx.Attempt, n).Logger()
	}
	if n > 1 {
		r.Health.m.redelivered.WithLabelValues(name).Inc()
	}
	dm := &delivery{Msg: m, retry: r.Retry, maxDeliver: d.Consumer.MaxDeliver, onVerdict: func(v, reason string) {
		r.Health.m.settled.WithLabelValues(name, v, reason).Inc()
	}}
	if r.Decode {
		if _, err := event.Decode(m.Data()); err != nil {
			reason := event.ReasonInvalidEnvelope
			if ie, ok := errors.AsType[*event.InvalidError](err); ok {
				reason = ie.Reason
			}
			r.Health.m.undecodable.WithLabelValues(name, reason).Inc()
			log.Error().Err(err).Str("reason", reason).Msg("not a valid event; terminating it")
			r.settle(ctx, dm, fault.Permanent(reason, err), log)
			return
		}
	}
	work := r.Work
	if work == nil {
		work = context.WithoutCancel(ctx)
	}
	hctx, cancel := context.WithCancel(work)
	defer cancel()
	if r.HandleLimit > 0 {
		t := time.AfterFunc(r.HandleLimit, cancel)
		defer t.Stop()
	}
	if every := r.keepAlive(d); every > 0 {
		go keepAlive(hctx, dm, every)
	}
	err := r.call(hctx, dm, log)
	cancel()
	r.settle(ctx, dm, err, log)
}

// call runs the handler; a panic is a transient failure of this message,
// not the end of the service.
func (r *Runner) call(ctx context.Context, m jetstream.Msg, log zerolog.Logger) (err error) {
	defer func() {
		if p := recover(); p != nil {
			log.Error().Any("panic", p).Str("stack", string(debug.Stack())).Msg("handler panicked; handing the message back")
			err = fmt.Errorf("handler panicked: %v", p)
		}
	}()
	return r.Handler(ctx, m)
}

func (r *Runner) keepAlive(d *durable) time.Duration {
	switch {
	case r.KeepAlive < 0:
		return 0
	case r.KeepAlive > 0:
		return r.KeepAlive
	case d.Consumer.AckWait > 0:
		return d.Consumer.AckWait / 3
	default:
		return 10 * time.Second // a third of the server's default AckWait
	}
}

// keepAlive sends InProgress every interval until ctx ends.
func keepAlive(ctx context.Context, m jetstream.Msg, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = m.InProgress()
		}
	}
}

// settle settles what the handler left unsettled, through the one Settle
// every handler that settles itself uses too.
func (r *Runner) settle(ctx context.Context, m *delivery, err error, log zerolog.Logger) {
	if v, _ := m.verdict(); v != "" {
		return
	}
	if m.isDeferred() {
		if err != nil {
			// A handler that deferred the message and then failed still
			// gets its error heard; the message is its to settle.
			log.Warn().Err(err).Msg("handler deferred the message and returned an error; leaving it to be settled")
		}
		return
	}
	Settle(ctx, m, err, log)
}

// watch polls the durable's consumer info every PollInterval: it feeds the
// metrics and readiness, provisions the durable again when it is gone, and
// resets the subscription when messages wait, a handler is free and
// nothing has arrived for ResetAfter (a pull lost in a broker restart, a
// subscription on a connection that looks alive but is not).
func (r *Runner) watch(ctx context.Context, d *durable) {
	t := time.NewTicker(r.PollInterval)
	defer t.Stop()
	name := d.Name()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c := d.consumer()
		if c == nil {
			r.heal(ctx, d, false)
			continue
		}
		ictx, cancel := context.WithTimeout(ctx, min(r.PollInterval, 5*time.Second))
		info, err := c.Info(ictx)
		cancel()
		now := time.Now()
		switch {
		case err != nil && gone(err):
			d.st.infoFailed(err)
			r.heal(ctx, d, true)
			r.reset(d, "durable was missing")
			continue
		case err != nil:
			if ctx.Err() == nil {
				d.st.infoFailed(err)
			}
			continue
		}
		d.st.observe(now, info)
		r.Health.m.pending.WithLabelValues(name).Set(float64(info.NumPending))
		r.Health.m.ackPending.WithLabelValues(name).Set(float64(info.NumAckPending))
		if r.OnInfo != nil {
			r.OnInfo(name, info)
		}
		stuck := d.st.stuck(now)
		r.Health.m.stalled.WithLabelValues(name).Set(stuck.Seconds())
		if stuck >= r.ResetAfter {
			r.Log.Warn().Str("durable", name).Uint64("pending", info.NumPending).Int("ack_pending", info.NumAckPending).
				Int("waiting", info.NumWaiting).Dur("stalled_for", stuck).Msg("messages wait and nothing arrives: resetting the subscription")
			r.heal(ctx, d, true)
			r.reset(d, "stalled")
		}
	}
}

// reset ends the durable's current subscription; its loop opens a new one.
func (r *Runner) reset(d *durable, why string) {
	d.mu.Lock()
	stop := d.stop
	d.stop = nil
	d.mu.Unlock()
	r.Health.m.resets.WithLabelValues(d.Name()).Inc()
	if stop != nil {
		stop()
	}
	r.Log.Debug().Str("durable", d.Name()).Str("why", why).Msg("subscription reset")
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
