package bus_test

import (
	"context"
	"github.com/ccatobs/ccat-staging/devkit/probe"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/internal/jstest"
	"github.com/rs/zerolog"
)

// A service started before its broker waits for it instead of exiting.
func TestConnectWaitsForTheServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	dir := t.TempDir()
	go func() {
		time.Sleep(700 * time.Millisecond)
		ns, err := jstest.Start(dir, port)
		if err != nil {
			t.Error(err)
			return
		}
		t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	nc, _, err := bus.Connect(ctx, "nats://127.0.0.1:"+strconv.Itoa(port), "t", zerolog.Nop())
	if err != nil {
		t.Fatalf("Connect = %v, want it to wait for the server", err)
	}
	nc.Close()
}

func TestConnectGivesUpWithTheContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 600*time.Millisecond)
	defer cancel()
	if _, _, err := bus.Connect(ctx, "nats://127.0.0.1:1", "t", zerolog.Nop()); err == nil {
		t.Fatal("Connect to nothing succeeded")
	}
}

// A connection that stays open but carries nothing (a black-holed link) is
// found by the pings, logged with the server's name, and re-established
// once traffic passes again.
func TestConnectFindsAHalfOpenLink(t *testing.T) {
	srv := jstest.New(t)
	proxy := probe.NewProxy(t, strings.TrimPrefix(srv.URL, "nats://"))
	var mu sync.Mutex
	var logs strings.Builder
	log := zerolog.New(lockedBuilder{&mu, &logs})
	link := bus.Link{PingInterval: 100 * time.Millisecond, MaxPingsOut: 2, ReconnectWait: 50 * time.Millisecond, ReconnectJitter: 50 * time.Millisecond}
	nc, _, err := bus.ConnectLink(t.Context(), proxy.URL, "t", link, log)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	proxy.Block()
	jstest.Until(t, 10*time.Second, "stale connection noticed", func() bool { return !nc.IsConnected() })
	proxy.Unblock()
	jstest.Until(t, 20*time.Second, "reconnected", func() bool { return nc.IsConnected() })
	jstest.Until(t, 5*time.Second, "logged", func() bool {
		mu.Lock()
		defer mu.Unlock()
		out := logs.String()
		return strings.Contains(out, `"message":"nats disconnected"`) && strings.Contains(out, `"message":"nats reconnected"`) &&
			strings.Count(out, `"server":"shared-test"`) >= 2
	})
}

type lockedBuilder struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (w lockedBuilder) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}
