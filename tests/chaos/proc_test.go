package chaos

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// binaries builds the real service commands and a nats-server once per test
// binary run, into a temp dir that outlives the tests that use it.
var binaries = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "ccat-chaos-bin-")
	if err != nil {
		return "", err
	}
	builtDir = dir
	cmd := exec.Command("go", "build", "-o", dir+string(filepath.Separator),
		"github.com/ccatobs/ccat-staging/services/planner",
		"github.com/ccatobs/ccat-staging/services/stager",
		"github.com/ccatobs/ccat-staging/services/ledger",
		"github.com/ccatobs/ccat-staging/services/stagectl",
		"github.com/nats-io/nats-server/v2")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build: %w\n%s", err, out.String())
	}
	return dir, nil
})

// builtDir is set once binaries has made its directory.
var builtDir string

// TestMain removes the built binaries after the run.
func TestMain(m *testing.M) {
	code := m.Run()
	if builtDir != "" {
		os.RemoveAll(builtDir)
	}
	os.Exit(code)
}

func bin(t *testing.T, name string) string {
	t.Helper()
	dir, err := binaries()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, name)
}

// proc is one service process that can be killed and started again with
// the same arguments and environment, its output appended to one log file.
type proc struct {
	t    *testing.T
	name string
	path string
	args []string
	env  []string
	log  string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	// restarts counts exits nobody asked for, after which the process was
	// started again, as systemd's Restart=always would.
	restarts int
}

func newProc(t *testing.T, dir, name, path string, args []string, env map[string]string) *proc {
	p := &proc{t: t, name: name, path: path, args: args, log: filepath.Join(dir, name+".log")}
	for k, v := range env {
		p.env = append(p.env, k+"="+v)
	}
	// Children must not inherit the test's view of where Postgres or NATS is.
	p.env = append(p.env, "PATH="+os.Getenv("PATH"), "HOME="+os.Getenv("HOME"))
	t.Cleanup(p.stop)
	return p
}

func (p *proc) start() {
	p.t.Helper()
	if err := p.launch(); err != nil {
		p.t.Fatal(err)
	}
}

func (p *proc) launch() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(f, "=== start %s at %s\n", p.name, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.path, p.args...)
	cmd.Env = p.env
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(done)
		p.supervise(cmd)
	}()
	p.cmd, p.done = cmd, done
	return nil
}

// supervise starts the process again a second after it exited on its own
// (a service refuses to start while the broker is down, for instance),
// like the process supervisor of a real deployment; exits caused by
// signal, kill9 or stop are not restarted.
func (p *proc) supervise(exited *exec.Cmd) {
	time.Sleep(time.Second)
	p.mu.Lock()
	own := p.cmd == exited
	if own {
		p.restarts++
		p.cmd = nil
	}
	p.mu.Unlock()
	if own && p.t.Context().Err() == nil {
		if err := p.launch(); err != nil {
			p.t.Errorf("restart: %v", err)
		}
	}
}

// signal sends sig to the running process and waits for it to exit.
func (p *proc) signal(sig syscall.Signal, within time.Duration) error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
		return nil
	case <-time.After(within):
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("%s did not exit within %s of %v", p.name, within, sig)
	}
}

func (p *proc) kill9() { _ = p.signal(syscall.SIGKILL, 10*time.Second) }

// stop ends the process gracefully, the way an operator would.
func (p *proc) stop() {
	if err := p.signal(syscall.SIGTERM, 30*time.Second); err != nil {
		p.t.Log(err)
	}
}

func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// tail returns the last n bytes of the log, for failure reports.
func (p *proc) tail(n int64) string {
	f, err := os.Open(p.log)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	st, _ := f.Stat()
	if st.Size() > n {
		f.Seek(st.Size()-n, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// Ports for the processes of the fault suite come from below the kernel's
// ephemeral range (32768-60999 here) and are never handed out twice in one
// test process. A port taken from the ephemeral range ("listen on :0, close,
// reuse") is free only for a moment: while a broker is down for a restart,
// the kernel can give its port to another scenario's listener or to any
// outgoing connection, and the broker then cannot come back (seen: a
// nats-server failing to bind 95 times while its scenario's jobs stalled).
var (
	portMu   sync.Mutex
	nextPort = 20000 + (os.Getpid()%500)*20
)

// freePort returns a loopback port below the ephemeral range that is free
// now and that no other caller in this process got.
func freePort(t *testing.T) int {
	t.Helper()
	portMu.Lock()
	defer portMu.Unlock()
	for range 10000 {
		p := nextPort
		nextPort++
		if nextPort >= 32000 {
			nextPort = 20000
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		l.Close()
		return p
	}
	t.Fatal("no free port below the ephemeral range")
	return 0
}

// waitTCP waits until something accepts connections on addr.
func waitTCP(t *testing.T, addr string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not accepting connections after %s: %v", addr, within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// proxy forwards loopback TCP connections to a target and can cut them:
// a network partition between one client and the server.
type proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]bool
	// held black-holes traffic: nothing passes either way, and every
	// connection stays open (a half-open link, a silent firewall).
	held bool
	cond *sync.Cond
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	p.cond = sync.NewCond(&p.mu)
	t.Cleanup(func() { ln.Close(); p.partition() })
	go p.serve()
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.DialTimeout("tcp", p.target, 2*time.Second)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c], p.conns[up] = true, true
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			_, _ = io.Copy(holdWriter{p, dst}, src)
			dst.Close()
			src.Close()
			p.mu.Lock()
			delete(p.conns, dst)
			delete(p.conns, src)
			p.mu.Unlock()
		}
		go pipe(up, c)
		go pipe(c, up)
	}
}

// partition drops every connection and refuses new ones until heal.
func (p *proxy) partition() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	p.held = false
	p.cond.Broadcast()
	for c := range p.conns {
		c.Close()
	}
}

func (p *proxy) heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
	p.held = false
	p.cond.Broadcast()
}

// blackhole holds every byte in both directions without closing anything,
// until heal.
func (p *proxy) blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.held = true
}

// holdWriter writes through to w unless its proxy holds traffic, then
// waits until it no longer does.
type holdWriter struct {
	p *proxy
	w net.Conn
}

func (h holdWriter) Write(b []byte) (int, error) {
	h.p.mu.Lock()
	for h.p.held {
		h.p.cond.Wait()
	}
	h.p.mu.Unlock()
	return h.w.Write(b)
}
