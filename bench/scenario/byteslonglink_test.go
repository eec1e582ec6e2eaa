package scenario

import (
	"io"
	"net"
	"testing"
	"time"
)

// The long link must really hold bytes back: a proxy without its toxics
// would turn bytes-s3-long-link into a second loopback scenario without
// anyone noticing. Lower bounds only (the model's latency and cap), never
// a speed.
func TestLongLinkDelaysAndCapsOneStream(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const n = 2_000_000
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = c.Write(make([]byte, n))
	}()
	addr, stop, err := startLongLink(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	start := time.Now()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := io.Copy(io.Discard, c)
	took := time.Since(start)
	if err != nil || got != n {
		t.Fatalf("read %d bytes through the link, %v", got, err)
	}
	floor := longLinkOneWay + time.Duration(float64(n)/longLinkStreamBytes*float64(time.Second))
	if took < floor*9/10 {
		t.Errorf("%d bytes through the long link in %s, the model allows no less than %s", n, took, floor)
	}
}
