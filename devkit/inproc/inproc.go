// Package inproc runs ccat-staging's three services inside the calling
// process the way a deployment runs them: each from its ConfigFromEnv and
// Run, with its own environment. It is the one launcher of the pipeline: the
// demo (services/demo), the benchmarks (bench/system) and every system test
// (tests, tests/hostile, deploy/nats) start the services with it against
// their own JetStream server and database.
//
// Start runs the whole pipeline at once; New and the Start* methods run the
// services one by one, for a benchmark that fills a stream before the ledger
// starts or keeps the stagers stopped.
package inproc

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/services/ledger/ledger"
	"github.com/ccatobs/ccat-staging/services/planner/planner"
	"github.com/ccatobs/ccat-staging/services/stager/stager"
	"github.com/ccatobs/ccat-staging/shared/logx"
	"github.com/rs/zerolog"
)

// Options says what to run.
type Options struct {
	// Env returns the environment of one service: "ledger", "planner" or
	// "stager-<site>". STAGER_SITE is set for a stager whatever it says.
	// The services see nothing else: never the caller's own environment.
	Env func(service string) map[string]string
	// Sites gets one stager each from Start.
	Sites []string
	Log   zerolog.Logger
	// Within bounds how long a start waits for a service's HTTP listener
	// (0: 60 s).
	Within time.Duration
}

// Pipeline is the running services.
type Pipeline struct {
	// LedgerURL and PlannerURL are their HTTP base URLs ("" when the
	// service serves no HTTP or has not started).
	LedgerURL, PlannerURL string
	// Errors receives the error of a service that stopped on its own.
	Errors <-chan error

	o        Options
	errc     chan error
	mu       sync.Mutex
	services map[string]*running
}

// running is one started service.
type running struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when Run has returned
	err    error         // Run's result, once done is closed
}

// New returns a pipeline with nothing running yet.
func New(o Options) *Pipeline {
	if o.Within <= 0 {
		o.Within = 60 * time.Second
	}
	if o.Env == nil {
		o.Env = func(string) map[string]string { return nil }
	}
	// Buffered so that a failing service never blocks on a reader; more
	// failures than that are in Failed.
	errc := make(chan error, 16)
	return &Pipeline{o: o, errc: errc, Errors: errc, services: map[string]*running{}}
}

// Start starts the ledger, the planner and a stager per site, and returns
// once the ledger's and the planner's HTTP listeners are bound (when they
// serve HTTP). ctx bounds only that wait (a Ctrl-C during the demo's
// start-up); the services run until Stop.
func Start(ctx context.Context, o Options) (*Pipeline, error) {
	p := New(o)
	fail := func(err error) (*Pipeline, error) {
		p.Stop()
		return nil, err
	}
	// Every service starts before any listener is awaited, so the ledger's
	// migrations and the planner's start-up overlap as in a deployment.
	var waits []func() error
	lwait, err := p.startLedger(ctx)
	if err != nil {
		return fail(err)
	}
	pwait, err := p.startPlanner(ctx)
	if err != nil {
		return fail(err)
	}
	waits = append(waits, lwait, pwait)
	for _, site := range o.Sites {
		if err := p.StartStager(site, ""); err != nil {
			return fail(err)
		}
	}
	for _, w := range waits {
		if err := w(); err != nil {
			return fail(err)
		}
	}
	return p, nil
}

// StartLedger starts the ledger and waits for its HTTP listener (when it
// serves HTTP, and at most until ctx ends); LedgerURL is set then.
func (p *Pipeline) StartLedger(ctx context.Context) error {
	wait, err := p.startLedger(ctx)
	if err != nil {
		return err
	}
	return wait()
}

// StartPlanner starts the planner and waits for its HTTP listener (when it
// serves HTTP, and at most until ctx ends); PlannerURL is set then.
func (p *Pipeline) StartPlanner(ctx context.Context) error {
	wait, err := p.startPlanner(ctx)
	if err != nil {
		return err
	}
	return wait()
}

// StartStager starts a stager of site, named "stager-<site>" or, with an
// instance, "stager-<site>-<instance>" with STAGER_INSTANCE set to instance.
// Its environment is Env("stager-<site>").
func (p *Pipeline) StartStager(site, instance string) error {
	name := "stager-" + site
	set := map[string]string{stager.EnvSite: site}
	if instance != "" {
		set["STAGER_INSTANCE"] = instance
		name += "-" + instance
	}
	cfg, err := stager.ConfigFromEnv(p.getenv("stager-"+site, set))
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	log := p.o.Log.With().Str(logx.Service, "stager").Str(logx.Site, site).Logger()
	return p.run(name, func(ctx context.Context) error { return stager.Run(ctx, cfg, log) })
}

func (p *Pipeline) startLedger(ctx context.Context) (wait func() error, err error) {
	cfg, err := ledger.ConfigFromEnv(p.getenv("ledger", nil))
	if err != nil {
		return nil, fmt.Errorf("ledger: %w", err)
	}
	wait = func() error { return nil }
	if cfg.HTTPAddr != "" {
		var bound func(net.Addr)
		bound, wait = p.listener(ctx, "ledger", &p.LedgerURL)
		cfg.Listening = bound
	}
	log := p.o.Log.With().Str(logx.Service, "ledger").Logger()
	if err := p.run("ledger", func(ctx context.Context) error { return ledger.Run(ctx, cfg, log) }); err != nil {
		return nil, err
	}
	return wait, nil
}

func (p *Pipeline) startPlanner(ctx context.Context) (wait func() error, err error) {
	cfg, err := planner.ConfigFromEnv(p.getenv("planner", nil))
	if err != nil {
		return nil, fmt.Errorf("planner: %w", err)
	}
	wait = func() error { return nil }
	if cfg.HTTPAddr != "" {
		var bound func(net.Addr)
		bound, wait = p.listener(ctx, "planner", &p.PlannerURL)
		cfg.OnHTTP = bound
	}
	log := p.o.Log.With().Str(logx.Service, "planner").Logger()
	if err := p.run("planner", func(ctx context.Context) error { return planner.Run(ctx, cfg, log) }); err != nil {
		return nil, err
	}
	return wait, nil
}

// getenv layers set over the service's Env.
func (p *Pipeline) getenv(service string, set map[string]string) func(string) string {
	env := p.o.Env(service)
	return func(k string) string {
		if v, ok := set[k]; ok {
			return v
		}
		return env[k]
	}
}

// listener returns the callback a service calls with its bound address,
// and a wait that sets *dst from it, or fails when the service stops first,
// does not bind within Options.Within, or ctx ends.
func (p *Pipeline) listener(ctx context.Context, name string, dst *string) (bound func(net.Addr), wait func() error) {
	addr := make(chan net.Addr, 1)
	bound = func(a net.Addr) { addr <- a }
	wait = func() error {
		p.mu.Lock()
		r := p.services[name]
		p.mu.Unlock()
		select {
		case a := <-addr:
			*dst = "http://" + a.String()
			return nil
		case <-r.done:
			return fmt.Errorf("%s stopped at start-up: %w", name, r.err)
		case <-time.After(p.o.Within):
			return fmt.Errorf("%s: HTTP listener not bound within %s", name, p.o.Within)
		case <-ctx.Done():
			return fmt.Errorf("%s: start-up: %w", name, ctx.Err())
		}
	}
	return bound, wait
}

// run starts a service under name.
func (p *Pipeline) run(name string, run func(context.Context) error) error {
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan struct{})}
	p.mu.Lock()
	if _, ok := p.services[name]; ok {
		p.mu.Unlock()
		cancel()
		return fmt.Errorf("%s is already running", name)
	}
	p.services[name] = r
	p.mu.Unlock()
	go func() {
		r.err = run(ctx)
		close(r.done)
		if r.err != nil && ctx.Err() == nil {
			select {
			case p.errc <- fmt.Errorf("%s: %w", name, r.err):
			default: // nobody reads Errors; Failed still reports it
			}
		}
	}()
	return nil
}

// StopService cancels one service and waits (up to Within) for its Run to
// return, returning Run's error.
func (p *Pipeline) StopService(name string) error {
	p.mu.Lock()
	r, ok := p.services[name]
	delete(p.services, name)
	p.mu.Unlock()
	if !ok {
		return nil
	}
	r.cancel()
	select {
	case <-r.done:
		return r.err
	case <-time.After(p.o.Within):
		return fmt.Errorf("%s did not stop within %s", name, p.o.Within)
	}
}

// Failed reports the services whose Run returned while they should be
// running.
func (p *Pipeline) Failed() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for name, r := range p.services {
		select {
		case <-r.done:
			errs = append(errs, fmt.Errorf("%s stopped: %v", name, r.err))
		default:
		}
	}
	return errors.Join(errs...)
}

// Stop ends every service and waits for them (a test's cleanup; StopAll
// says what they returned).
func (p *Pipeline) Stop() {
	_ = p.StopAll()
}

// StopAll is Stop with the services' errors (a service stopped by its
// context returns nil).
func (p *Pipeline) StopAll() error {
	// Cancel every service first: they stop together, as a deployment's
	// processes do on shutdown, rather than one after the other.
	p.mu.Lock()
	names := make([]string, 0, len(p.services))
	for n, r := range p.services {
		names = append(names, n)
		r.cancel()
	}
	p.mu.Unlock()
	var errs []error
	for _, n := range names {
		if err := p.StopService(n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// StartTest starts the pipeline for a test: it fails the test when a
// service does not come up, stops the services in the test's cleanup (so
// register the broker's and the database's cleanups first), and reports a
// service that stops on its own as a test error.
func StartTest(t testing.TB, o Options) *Pipeline {
	t.Helper()
	p, err := Start(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	go func() {
		select {
		case err := <-p.Errors:
			t.Errorf("service stopped: %v", err)
		case <-t.Context().Done():
		}
	}()
	return p
}

// SameEnv gives every service env, and each stager the instance name
// <instance><site>.
func SameEnv(env map[string]string, instance string) func(service string) map[string]string {
	return func(service string) map[string]string {
		e := maps.Clone(env)
		if site, ok := strings.CutPrefix(service, "stager-"); ok {
			e["STAGER_INSTANCE"] = instance + site
		}
		return e
	}
}
