package archive

import (
	"bytes"
	"context"
	"errors"
	"github.com/ccatobs/ccat-staging/devkit/poll"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/s3test"
	"github.com/ccatobs/ccat-staging/shared/fault"
	"github.com/ccatobs/ccat-staging/shared/topology"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
)

const testBucket = "parts"

// testS3 is a backend on srv (or on a proxy in front of it) with the given
// parts and part size.
func testS3(t *testing.T, endpoint string, parts int, partSize int64) *S3 {
	t.Helper()
	b, err := NewS3(topology.S3{Endpoint: endpoint, Bucket: testBucket, Region: "us-east-1", Parts: parts, PartSize: partSize},
		Credentials{AccessKeyID: s3test.AccessKey, SecretAccessKey: s3test.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 17))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestS3PartsReassemble(t *testing.T) {
	srv := s3test.Start(t)
	const ps = 64 << 10
	tests := []struct {
		name  string
		size  int
		parts int
	}{
		{"empty", 0, 3},
		{"one byte", 1, 3},
		{"part-1", ps - 1, 3},
		{"part", ps, 3},
		{"part+1", ps + 1, 3},
		{"fewer parts than workers", 2*ps + 5, 3},
		{"many parts", 13*ps + 7, 3},
		{"many parts, one at a time", 5*ps + 1, 1},
		{"exact multiple", 6 * ps, 4},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := randomBytes(tt.size, uint64(i))
			srv.Put(testBucket, tt.name, data)
			b := testS3(t, srv.Endpoint, tt.parts, ps)
			r, err := b.Open(t.Context(), tt.name)
			if err != nil {
				t.Fatal(err)
			}
			// Odd-sized reads cross part boundaries at every offset.
			got, err := io.ReadAll(io.LimitReader(readerFunc(func(p []byte) (int, error) { return r.Read(p[:min(len(p), 7777)]) }), 1<<30))
			if err != nil {
				t.Fatal(err)
			}
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("read %d bytes, want %d, equal prefix %d", len(got), len(data), commonPrefix(got, data))
			}
			nparts := (tt.size + ps - 1) / ps
			if g := b.stats.gets.Load(); g != int64(nparts) {
				t.Errorf("%d GETs for %d parts", g, nparts)
			}
			if n := b.stats.buffers.Load(); n > int64(min(tt.parts, nparts)) {
				t.Errorf("%d buffers allocated, want at most %d", n, min(tt.parts, nparts))
			}
			if w := b.stats.workers.Load(); w != 0 {
				t.Errorf("%d workers left after Close", w)
			}
		})
	}
}

// A reader that reads nothing must not make the workers fetch more than one
// part each: memory stays within parts × part size however slow the disk.
func TestS3PartsBoundedAhead(t *testing.T) {
	srv := s3test.Start(t)
	const ps, parts = 16 << 10, 3
	srv.Put(testBucket, "big", randomBytes(40*ps, 1))
	b := testS3(t, srv.Endpoint, parts, ps)
	r, err := b.Open(t.Context(), "big")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	poll.Until(t, 20*time.Second, "every part fetched into its buffer", poll.True(func() bool { return b.stats.bytes.Load() == parts*ps }))
	time.Sleep(200 * time.Millisecond) // room to overrun, were there no bound
	if g, n := b.stats.gets.Load(), b.stats.buffers.Load(); g != parts || n != parts {
		t.Fatalf("nothing consumed: %d GETs and %d buffers, want %d each", g, n, parts)
	}
	// Consuming one part frees exactly one slot.
	if _, err := io.ReadFull(r, make([]byte, ps+1)); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 20*time.Second, "one more GET after one part was read", poll.True(func() bool { return b.stats.gets.Load() == parts+1 }))
	time.Sleep(200 * time.Millisecond)
	if g, n := b.stats.gets.Load(), b.stats.buffers.Load(); g != parts+1 || n != parts {
		t.Fatalf("one part consumed: %d GETs and %d buffers, want %d and %d", g, n, parts+1, parts)
	}
}

func TestS3ObjectReplacedMidRead(t *testing.T) {
	srv := s3test.Start(t)
	const ps = 64 << 10
	old, repl := randomBytes(16*ps, 1), randomBytes(16*ps, 2)
	srv.Put(testBucket, "pkg.tar", old)
	b := testS3(t, srv.Endpoint, 2, ps)
	r, err := b.Open(t.Context(), "pkg.tar")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	head := make([]byte, ps)
	if _, err := io.ReadFull(r, head); err != nil {
		t.Fatal(err)
	}
	srv.Put(testBucket, "pkg.tar", repl) // same key, same size, other bytes
	rest, err := io.ReadAll(r)
	if !errors.Is(err, ErrObjectChanged) {
		t.Fatalf("read after replacement: %v, want ErrObjectChanged", err)
	}
	if fault.IsPermanent(err) {
		t.Errorf("a replaced object fails the attempt permanently: %v", err)
	}
	got := append(head, rest...)
	if !bytes.Equal(got, old[:len(got)]) {
		t.Fatalf("the %d bytes read are not all the old version's (equal prefix %d)", len(got), commonPrefix(got, old))
	}
	t.Logf("read %d of %d bytes, then: %v", len(got), len(old), err)
}

func TestS3PartRetried(t *testing.T) {
	srv := s3test.Start(t)
	const ps = 256 << 10
	data := randomBytes(8*ps, 3)
	srv.Put(testBucket, "pkg.tar", data)
	tests := []struct {
		name    string
		cuts    int // connections cut mid-body; -1: every one
		wantErr bool
	}{
		{"one reset connection", 1, false},
		{"two reset connections", 2, false},
		{"every connection reset", -1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A real connection reset mid-body: the proxy forwards 100 KiB
			// of a response, then closes both sides.
			p := startProxy(t, srv.Endpoint)
			p.set(func() { p.cutAfter, p.cutsLeft = 100<<10, tt.cuts })
			b := testS3(t, p.addr(), 2, ps)
			var logs bytes.Buffer
			r, err := b.Open(zerolog.New(&logs).WithContext(t.Context()), "pkg.tar")
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(r)
			r.Close()
			retries := b.stats.retries.Load()
			if tt.wantErr {
				if err == nil || fault.IsPermanent(err) {
					t.Fatalf("ReadAll = %v, want a transient error", err)
				}
				// Each part gets partAttempts GETs, then the read fails.
				if retries < partAttempts-1 || retries > 2*(partAttempts-1) {
					t.Errorf("%d retries, want %d per failing part, at most 2 parts", retries, partAttempts-1)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("read differs from the object (equal prefix %d of %d)", commonPrefix(got, data), len(data))
			}
			if retries < 1 {
				t.Errorf("the connection was cut but no part was retried")
			}
			if !bytes.Contains(logs.Bytes(), []byte(`"part_attempt":1`)) {
				t.Errorf("no retry logged with its part attempt: %s", logs.Bytes())
			}
			reg := prometheus.NewPedanticRegistry()
			reg.MustRegister(b.Collectors("s3lta")...)
			if n := testutil.ToFloat64(b.Collectors("s3lta")[2]); n != float64(retries) {
				t.Errorf("stager_s3_part_retries_total = %v, want %d", n, retries)
			}
			if _, err := reg.Gather(); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestS3CancelStopsEveryPart(t *testing.T) {
	srv := s3test.Start(t)
	const ps, parts = 64 << 10, 4
	srv.Put(testBucket, "pkg.tar", randomBytes(32*ps, 4))
	p := startProxy(t, srv.Endpoint)
	b := testS3(t, p.addr(), parts, ps)
	ctx, cancel := context.WithCancel(t.Context())
	r, err := b.Open(ctx, "pkg.tar") // the stat passes; then the link stalls
	if err != nil {
		t.Fatal(err)
	}
	p.set(func() { p.stalled = true })
	defer p.set(func() { p.stalled = false })
	done := make(chan error, 1)
	go func() { _, err := io.ReadAll(r); done <- err }()
	poll.Until(t, 20*time.Second, "one GET per worker, no more", poll.True(func() bool { return b.stats.gets.Load() == parts }))
	if w := b.stats.workers.Load(); w > parts {
		t.Fatalf("%d workers for %d parts in flight", w, parts)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("read after cancel: %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second): // a hang guard, not a speed check
		t.Fatal("read still blocked 10s after cancel")
	}
	r.Close()
	if w := b.stats.workers.Load(); w != 0 {
		t.Fatalf("%d workers still running after Close", w)
	}
}

// proxy is a TCP proxy in front of the S3 server that causes real network
// faults: it can cut connections part-way through a response, or stall.
type proxy struct {
	t  *testing.T
	ln net.Listener
	to string

	mu       sync.Mutex
	cond     *sync.Cond
	cutAfter int64 // cut a connection once it has sent this many bytes back
	cutsLeft int   // connections still to cut; -1: all
	stalled  bool  // hold every byte coming back
}

func startProxy(t *testing.T, to string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, ln: ln, to: to}
	p.cond = sync.NewCond(&p.mu)
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		p.set(func() { p.stalled = false })
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { p.serve(c) })
		}
	})
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) set(f func()) {
	p.mu.Lock()
	f()
	p.mu.Unlock()
	p.cond.Broadcast()
}

func (p *proxy) serve(c net.Conn) {
	defer c.Close()
	up, err := net.Dial("tcp", p.to)
	if err != nil {
		return
	}
	defer up.Close()
	go func() { _, _ = io.Copy(up, c); up.Close() }()
	buf := make([]byte, 16<<10)
	var sent int64
	for {
		n, err := up.Read(buf)
		if n > 0 {
			p.mu.Lock()
			for p.stalled {
				p.cond.Wait()
			}
			cut := p.cutAfter > 0 && sent+int64(n) > p.cutAfter && p.cutsLeft != 0
			if cut && p.cutsLeft > 0 {
				p.cutsLeft--
			}
			p.mu.Unlock()
			if cut {
				_, _ = c.Write(buf[:p.cutAfter-sent])
				return
			}
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
			sent += int64(n)
		}
		if err != nil {
			return
		}
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

func commonPrefix(a, b []byte) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

func TestNewS3Parts(t *testing.T) {
	tests := []struct {
		name      string
		parts     int
		partSize  int64
		wantParts int
		wantSize  int64
		wantErr   bool
	}{
		{"defaults", 0, 0, DefaultParts, DefaultPartSize, false},
		{"set", 16, 4 << 20, 16, 4 << 20, false},
		{"negative parts", -1, 0, 0, 0, true},
		{"negative size", 0, -1, 0, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := NewS3(topology.S3{Endpoint: "127.0.0.1:1", Bucket: "b", Parts: tt.parts, PartSize: tt.partSize}, Credentials{AccessKeyID: "a", SecretAccessKey: "s"})
			if tt.wantErr {
				if err == nil {
					t.Fatal("accepted")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if b.parts != tt.wantParts || b.partSize != tt.wantSize {
				t.Fatalf("NewS3 = %d × %d, want %d × %d", b.parts, b.partSize, tt.wantParts, tt.wantSize)
			}
		})
	}
}
