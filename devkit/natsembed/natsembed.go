// Package natsembed runs a nats-server with JetStream inside the process: the
// one-process demo uses it, and so do the tests (through bustest), so both
// exercise a real server rather than a fake.
package natsembed

import (
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/rs/zerolog"
)

// Options configure an embedded server. The zero value is a server on a free
// loopback port storing JetStream data under StoreDir.
type Options struct {
	StoreDir string // required: JetStream keeps its files under StoreDir/jetstream
	Port     int    // 0 picks a free port
	Name     string
	MaxStore int64 // bytes of file storage; 0 means 1 GiB
	Log      *zerolog.Logger
}

// Start starts a server and waits until it accepts connections. The caller
// stops it with Shutdown then WaitForShutdown before removing StoreDir.
func Start(o Options) (*server.Server, error) {
	if o.StoreDir == "" {
		return nil, fmt.Errorf("natsembed: StoreDir is required")
	}
	port := o.Port
	if port == 0 {
		port = server.RANDOM_PORT
	}
	if o.MaxStore == 0 {
		o.MaxStore = 1 << 30
	}
	if o.Name == "" {
		o.Name = "embedded"
	}
	ns, err := server.NewServer(&server.Options{
		ServerName:         o.Name,
		Host:               "127.0.0.1",
		Port:               port,
		JetStream:          true,
		StoreDir:           o.StoreDir,
		JetStreamMaxMemory: 64 << 20,
		JetStreamMaxStore:  o.MaxStore,
		// As deploy/nats/nats-server.conf: events may be up to
		// event.MaxSize (a 10,000-package plan is ~2.5 MB), more than the
		// server's 1 MB default.
		MaxPayload: 8 << 20,
		// The server must not take SIGINT/SIGTERM from the process that embeds
		// it: that process owns its own shutdown.
		NoSigs: true,
	})
	if err != nil {
		return nil, fmt.Errorf("natsembed: new server: %w", err)
	}
	if o.Log != nil {
		ns.SetLoggerV2(logger{o.Log.With().Str("component", "nats-server").Logger()}, false, false, false)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("natsembed: server not ready after 10s")
	}
	return ns, nil
}

// logger adapts zerolog to the server's logger interface.
type logger struct{ l zerolog.Logger }

func (l logger) Noticef(f string, v ...any) { l.l.Debug().Msgf(f, v...) }
func (l logger) Warnf(f string, v ...any)   { l.l.Warn().Msgf(f, v...) }
func (l logger) Fatalf(f string, v ...any)  { l.l.Error().Msgf(f, v...) }
func (l logger) Errorf(f string, v ...any)  { l.l.Error().Msgf(f, v...) }
func (l logger) Debugf(f string, v ...any)  { l.l.Trace().Msgf(f, v...) }
func (l logger) Tracef(f string, v ...any)  { l.l.Trace().Msgf(f, v...) }
