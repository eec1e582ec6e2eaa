package scenario

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// buildServices compiles the services' main packages into dir, so a
// scenario can run each as its own process and read its own RSS.
func buildServices(ctx context.Context, dir string, names ...string) (map[string]string, error) {
	tools, err := toolsDir()
	if err != nil {
		return nil, err
	}
	root := filepath.Dir(tools)
	out := map[string]string{}
	for _, n := range names {
		bin := filepath.Join(dir, n)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./services/"+n)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("build %s: %w: %s", n, err, b)
		}
		out[n] = bin
	}
	return out, nil
}

// child is a service running as a process of its own.
type child struct {
	name   string
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	done   chan error
}

func startChild(name, bin string, env []string) (*child, error) {
	c := &child{name: name, cmd: exec.Command(bin), stderr: &bytes.Buffer{}, done: make(chan error, 1)}
	c.cmd.Env = append(os.Environ(), env...)
	c.cmd.Stdout = nil
	c.cmd.Stderr = c.stderr
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { c.done <- c.cmd.Wait() }()
	return c, nil
}

// Exited reports a child that stopped on its own.
func (c *child) Exited() error {
	select {
	case err := <-c.done:
		c.done <- err
		tail := c.stderr.String()
		if len(tail) > 600 {
			tail = tail[len(tail)-600:]
		}
		return fmt.Errorf("%s exited: %v: %s", c.name, err, tail)
	default:
		return nil
	}
}

// Stop sends SIGTERM and waits for a graceful exit (SIGKILL after 30 s).
func (c *child) Stop() {
	if c.Exited() != nil {
		return
	}
	_ = c.cmd.Process.Signal(os.Interrupt)
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// RSS is the child's resident set size in MB (10^6 bytes), from /proc.
func (c *child) RSS() (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for l := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				break
			}
			kb, err := strconv.ParseFloat(f[0], 64)
			if err != nil {
				return 0, err
			}
			return kb * 1024 / 1e6, nil
		}
	}
	return 0, fmt.Errorf("%s: no VmRSS", c.name)
}
