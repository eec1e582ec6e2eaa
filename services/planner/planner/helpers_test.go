package planner_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/bustest"
	"github.com/ccatobs/ccat-staging/devkit/poll"
	"github.com/ccatobs/ccat-staging/services/planner/planner"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

const sum = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

// testTopology: cologne and us have archives and processing; chile has
// only inactive locations.
const testTopology = `
sites:
  - name: cologne
    locations:
      - {name: cologne-lta, type: long_term_archive, storage: s3, priority: 2, s3: {endpoint: "127.0.0.1:9000", bucket: lta}}
      - {name: cologne-proc, type: processing, storage: disk, priority: 1, path: /proc}
      - {name: cologne-spare, type: processing, storage: disk, priority: 2, path: /spare}
      - {name: cologne-old, type: processing, storage: disk, priority: 1, path: /old, active: false}
  - name: us
    locations:
      - {name: us-lta, type: long_term_archive, storage: disk, priority: 1, path: /archive}
      - {name: us-proc, type: processing, storage: disk, priority: 1, path: /hpc}
  - name: chile
    locations:
      - {name: chile-lta, type: long_term_archive, storage: disk, priority: 1, path: /lta, active: false}
      - {name: chile-proc, type: processing, storage: disk, priority: 1, path: /p, active: false}
`

// harness is one planner running in-process against its own JetStream.
type harness struct {
	t        *testing.T
	srv      *bustest.Server
	js       jetstream.JetStream
	topoFile string
	httpAddr string
}

// start runs a planner until the test ends; mod adjusts its config.
func start(t *testing.T, topo string, mod func(*planner.Config)) *harness {
	t.Helper()
	srv := bustest.New(t)
	h := &harness{t: t, srv: srv, js: srv.JS, topoFile: filepath.Join(t.TempDir(), "topology.yaml")}
	if err := os.WriteFile(h.topoFile, []byte(topo), 0o644); err != nil {
		t.Fatal(err)
	}
	h.run(mod)
	return h
}

// run starts one more planner on the harness's server and returns its HTTP
// address ("" without one).
func (h *harness) run(mod func(*planner.Config)) string {
	t := h.t
	t.Helper()
	ready := make(chan struct{})
	addr := make(chan net.Addr, 1)
	cfg := planner.Config{
		NATSURL: h.srv.URL, TopologyFile: h.topoFile, HTTPAddr: "127.0.0.1:0",
		UnknownPackageDelay: 20 * time.Millisecond, TopologyPoll: -1,
		OnReady: func() { close(ready) },
		OnHTTP:  func(a net.Addr) { addr <- a },
	}
	if mod != nil {
		mod(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel).With().Timestamp().Logger()
	go func() { done <- planner.Run(ctx, cfg, log) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v after cancel", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Run = %v before ready", err)
	case <-time.After(10 * time.Second):
		t.Fatal("planner not ready after 10s")
	}
	if cfg.HTTPAddr != "" && cfg.OnHTTP != nil {
		select {
		case a := <-addr:
			if h.httpAddr == "" {
				h.httpAddr = a.String()
			}
			return a.String()
		case <-time.After(5 * time.Second):
			t.Fatal("no HTTP listener after 5s")
		}
	}
	return ""
}

func (h *harness) publish(subj string, ev event.Envelope) {
	h.t.Helper()
	if _, err := bus.Publish(h.t.Context(), h.js, subj, ev); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) archived(pkg, loc string) {
	h.t.Helper()
	ev, err := event.New("test", "archived:"+loc+":"+pkg, pkg, event.PackageArchived{
		PackageID: pkg, Location: loc, Key: "obs/" + pkg + ".tar", SizeBytes: 10240, Checksum: sum, Format: "tar",
		Files: []event.File{{Path: pkg + "/a.fits", SizeBytes: 10240, SHA256: sum[7:]}},
	})
	if err != nil {
		h.t.Fatal(err)
	}
	h.publish(subject.Archived, ev)
}

func (h *harness) submit(id string, s event.Submit) {
	h.t.Helper()
	ev, err := event.New("test", id, "", s)
	if err != nil {
		h.t.Fatal(err)
	}
	h.publish(subject.Submit, ev)
}

// submitRaw publishes bytes as a submit with id as Nats-Msg-Id.
func (h *harness) submitRaw(id string, raw []byte) {
	h.t.Helper()
	m := nats.NewMsg(subject.Submit)
	m.Data = raw
	m.Header.Set(jetstream.MsgIDHeader, id)
	if _, err := h.js.PublishMsg(h.t.Context(), m); err != nil {
		h.t.Fatal(err)
	}
}

// msg is one stored message, validated against its schema.
type msg struct {
	Subject string
	MsgID   string
	Env     event.Envelope
}

// messages returns the stream's messages whose subject matches filter
// (exact, or a prefix when it ends in ">"), each checked with event.Validate.
func (h *harness) messages(stream, filter string) []msg {
	h.t.Helper()
	ctx := h.t.Context()
	st, err := h.js.Stream(ctx, stream)
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []msg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		raw, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			h.t.Fatal(err)
		}
		if !match(filter, raw.Subject) {
			continue
		}
		env, err := event.Validate(raw.Data)
		if err != nil {
			h.t.Fatalf("message %d on %s does not validate: %v\n%s", seq, raw.Subject, err, raw.Data)
		}
		if id := raw.Header.Get(jetstream.MsgIDHeader); id != env.ID {
			h.t.Errorf("message %d: Nats-Msg-Id %q, event id %q", seq, id, env.ID)
		}
		out = append(out, msg{raw.Subject, raw.Header.Get(jetstream.MsgIDHeader), env})
	}
	return out
}

func match(filter, subj string) bool {
	if p, ok := strings.CutSuffix(filter, ">"); ok {
		return strings.HasPrefix(subj, p)
	}
	return filter == subj
}

// event waits for the event with id on subj and returns it.
func (h *harness) event(subj, id string) event.Envelope {
	h.t.Helper()
	var got event.Envelope
	poll.Until(h.t, 10*time.Second, "the event", func() error {
		for _, m := range h.messages(subject.EventsStream, subj) {
			if m.Env.ID == id {
				got = m.Env
				return nil
			}
		}
		return fmt.Errorf("no event %s on %s", id, subj)
	})
	return got
}

// settled waits until the durable has acknowledged (or terminated) every
// message of its subjects stored so far, which for the planner's consumers
// means every message got its final reply; redelivered reports how many
// were delivered more than once. It compares the ack floor with the last
// stored sequence because the consumer's pending counts lag behind the
// stream a little.
func (h *harness) settled(stream, durable string) (redelivered int) {
	h.t.Helper()
	ctx := h.t.Context()
	poll.Until(h.t, 10*time.Second, "the consumer settled", func() error {
		c, err := h.js.Consumer(ctx, stream, durable)
		if err != nil {
			return err
		}
		info, err := c.Info(ctx)
		if err != nil {
			return err
		}
		st, err := h.js.Stream(ctx, stream)
		if err != nil {
			return err
		}
		var last uint64
		filters := info.Config.FilterSubjects
		if info.Config.FilterSubject != "" {
			filters = append(filters, info.Config.FilterSubject)
		}
		if len(filters) == 0 {
			si, err := st.Info(ctx)
			if err != nil {
				return err
			}
			last = si.State.LastSeq
		}
		for _, f := range filters {
			m, err := st.GetLastMsgForSubject(ctx, f)
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			last = max(last, m.Sequence)
		}
		if info.AckFloor.Stream < last || info.NumAckPending != 0 {
			return fmt.Errorf("%s: ack floor %d of %d, %d awaiting ack", durable, info.AckFloor.Stream, last, info.NumAckPending)
		}
		redelivered = info.NumRedelivered
		return nil
	})
	return redelivered
}

func (h *harness) metrics() string {
	h.t.Helper()
	return h.metricsOf(h.httpAddr)
}

func (h *harness) metricsOf(addr string) string {
	h.t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func dataOf[T event.Data](t *testing.T, env event.Envelope) T {
	t.Helper()
	v, err := event.DataAs[T](env)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// submitRawTo publishes raw bytes on any subject with id as Nats-Msg-Id.
func (h *harness) submitRawTo(subj, id string, raw []byte) {
	h.t.Helper()
	m := nats.NewMsg(subj)
	m.Data = raw
	m.Header.Set(jetstream.MsgIDHeader, id)
	if _, err := h.js.PublishMsg(h.t.Context(), m); err != nil {
		h.t.Fatal(err)
	}
}
