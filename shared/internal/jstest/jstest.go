// Package jstest gives shared/'s own tests an embedded JetStream server.
// It is devkit/bustest in small: shared cannot import devkit (devkit
// imports shared, and a module cycle would tie their versions together), and
// being internal it adds nothing to shared's production surface.
package jstest

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Server is a running test server and a client connected to it.
type Server struct {
	URL string
	NC  *nats.Conn
	JS  jetstream.JetStream
}

// Start starts a server on 127.0.0.1:port (0: a free port) storing under
// dir, and waits until it accepts connections. The caller shuts it down.
func Start(dir string, port int) (*server.Server, error) {
	if port == 0 {
		port = server.RANDOM_PORT
	}
	ns, err := server.NewServer(&server.Options{
		ServerName: "shared-test", Host: "127.0.0.1", Port: port, JetStream: true,
		StoreDir: dir, JetStreamMaxMemory: 64 << 20, JetStreamMaxStore: 1 << 30,
		// As deploy/nats/nats-server.conf: events may be up to event.MaxSize.
		MaxPayload: 8 << 20,
		NoSigs:     true,
	})
	if err != nil {
		return nil, fmt.Errorf("jstest: new server: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("jstest: server not ready after 10s")
	}
	return ns, nil
}

// New starts a server that lives as long as t, and connects to it.
func New(t testing.TB) *Server {
	t.Helper()
	ns, err := Start(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		ns.Shutdown()
		t.Fatalf("jstest: connect: %v", err)
	}
	// Registered after TempDir, so it runs before the directory is removed.
	t.Cleanup(func() {
		nc.Close()
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jstest: %v", err)
	}
	return &Server{URL: ns.ClientURL(), NC: nc, JS: js}
}

// Until polls cond until it holds, failing t after within with what it
// waited for: devkit/poll.Until for shared's own tests.
func Until(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for interval := 10 * time.Millisecond; !cond(); interval = min(2*interval, 100*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not reached within %s", what, within)
		}
		time.Sleep(interval)
	}
}
