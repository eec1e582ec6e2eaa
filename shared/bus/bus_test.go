package bus_test

import (
	"context"
	"net"
	"strconv"
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
