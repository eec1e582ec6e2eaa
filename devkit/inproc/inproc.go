// Package inproc runs ccat-staging's three services inside the calling
// process the way a deployment runs them: each from its ConfigFromEnv and
// Run, with its own environment. The end-to-end, hostile-input and cluster
// tests start the whole pipeline with it against their own JetStream server
// and database.
package inproc

import (
	"context"
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
	Env func(service string) map[string]string
	// Sites gets one stager each.
	Sites []string
	Log   zerolog.Logger
	// Within bounds how long Start waits for the HTTP listeners (0: 60 s).
	Within time.Duration
}

// Pipeline is the running services.
type Pipeline struct {
	// LedgerURL and PlannerURL are their HTTP base URLs ("" when the
	// service serves no HTTP).
	LedgerURL, PlannerURL string
	// Errors receives the error of a service that stopped on its own.
	Errors <-chan error

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Start starts the ledger, the planner and a stager per site, and returns
// once the ledger's and the planner's HTTP listeners are bound (when they
// serve HTTP). Stop ends them.
func Start(o Options) (*Pipeline, error) {
	if o.Within <= 0 {
		o.Within = 60 * time.Second
	}
	errc := make(chan error, 2+len(o.Sites))
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pipeline{Errors: errc, cancel: cancel}
	start := func(name string, run func(context.Context) error) {
		p.wg.Go(func() {
			if err := run(ctx); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		})
	}
	getenv := func(service string, set map[string]string) func(string) string {
		env := o.Env(service)
		return func(k string) string {
			if v, ok := set[k]; ok {
				return v
			}
			return env[k]
		}
	}
	fail := func(err error) (*Pipeline, error) {
		p.Stop()
		return nil, err
	}

	var waits []func() error
	listener := func(name string, dst *string) func(net.Addr) {
		addr := make(chan net.Addr, 1)
		waits = append(waits, func() error {
			select {
			case a := <-addr:
				*dst = "http://" + a.String()
				return nil
			case err := <-errc:
				return err
			case <-time.After(o.Within):
				return fmt.Errorf("%s: HTTP listener not bound within %s", name, o.Within)
			}
		})
		return func(a net.Addr) { addr <- a }
	}

	lcfg, err := ledger.ConfigFromEnv(getenv("ledger", nil))
	if err != nil {
		return fail(fmt.Errorf("ledger: %w", err))
	}
	if lcfg.HTTPAddr != "" {
		lcfg.Listening = listener("ledger", &p.LedgerURL)
	}
	start("ledger", func(ctx context.Context) error {
		return ledger.Run(ctx, lcfg, o.Log.With().Str(logx.Service, "ledger").Logger())
	})

	pcfg, err := planner.ConfigFromEnv(getenv("planner", nil))
	if err != nil {
		return fail(fmt.Errorf("planner: %w", err))
	}
	if pcfg.HTTPAddr != "" {
		pcfg.OnHTTP = listener("planner", &p.PlannerURL)
	}
	start("planner", func(ctx context.Context) error {
		return planner.Run(ctx, pcfg, o.Log.With().Str(logx.Service, "planner").Logger())
	})

	for _, site := range o.Sites {
		name := "stager-" + site
		scfg, err := stager.ConfigFromEnv(getenv(name, map[string]string{stager.EnvSite: site}))
		if err != nil {
			return fail(fmt.Errorf("%s: %w", name, err))
		}
		start(name, func(ctx context.Context) error {
			return stager.Run(ctx, scfg, o.Log.With().Str(logx.Service, "stager").Str(logx.Site, site).Logger())
		})
	}
	for _, w := range waits {
		if err := w(); err != nil {
			return fail(err)
		}
	}
	return p, nil
}

// Stop ends every service and waits for them.
func (p *Pipeline) Stop() {
	p.cancel()
	p.wg.Wait()
}

// StartTest starts the pipeline for a test: it fails the test when a
// service does not come up, stops the services in the test's cleanup (so
// register the broker's and the database's cleanups first), and reports a
// service that stops on its own as a test error.
func StartTest(t testing.TB, o Options) *Pipeline {
	t.Helper()
	p, err := Start(o)
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
