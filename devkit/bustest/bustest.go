// Package bustest gives a test its own JetStream server: an embedded
// nats-server on a free loopback port with its store in the test's temp dir,
// shut down when the test ends. Production code never imports it.
package bustest

import (
	"testing"

	"github.com/ccatobs/ccat-staging/devkit/natsembed"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Server is a running test server and a client connected to it.
type Server struct {
	NS  *server.Server
	URL string
	NC  *nats.Conn
	JS  jetstream.JetStream
}

// New starts a server that lives as long as t.
func New(t testing.TB) *Server {
	t.Helper()
	ns, err := natsembed.Start(natsembed.Options{StoreDir: t.TempDir(), Name: "test"})
	if err != nil {
		t.Fatalf("bustest: %v", err)
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		ns.Shutdown()
		t.Fatalf("bustest: connect: %v", err)
	}
	// Registered after TempDir, so it runs before the directory is removed.
	t.Cleanup(func() {
		nc.Close()
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("bustest: %v", err)
	}
	return &Server{NS: ns, URL: ns.ClientURL(), NC: nc, JS: js}
}
