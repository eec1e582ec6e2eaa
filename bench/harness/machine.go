package harness

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

// Machine describes where the figures were measured.
type Machine struct {
	CPU    string
	Cores  int
	MemGiB float64
	Kernel string
	Go     string
	Commit string // git HEAD, with "+dirty" when the tree has changes
	Tools  map[string]string
	// Load is /proc/loadavg when the run started: other work on the machine
	// moves every figure, so the report says how busy it was.
	Load    string
	Started time.Time
}

// DescribeMachine gathers the machine facts; fields it cannot read say so.
func DescribeMachine(ctx context.Context) Machine {
	m := Machine{CPU: "unknown", Cores: runtime.NumCPU(), Kernel: "unknown", Go: runtime.Version(),
		Commit: "unknown", Tools: map[string]string{}, Started: time.Now().UTC()}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = "Linux " + strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		m.Load = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb float64
		for l := range strings.Lines(string(b)) {
			if strings.HasPrefix(l, "MemTotal:") {
				f := strings.Fields(l)
				if len(f) >= 2 {
					for _, c := range f[1] {
						kb = kb*10 + float64(c-'0')
					}
				}
			}
		}
		m.MemGiB = kb / (1 << 20)
	}
	if out := Output(ctx, "git", "rev-parse", "--short=12", "HEAD"); out != "" {
		m.Commit = out
		if st := Output(ctx, "git", "status", "--porcelain", "--untracked-files=no"); st != "" {
			m.Commit += "+dirty"
		}
	}
	m.Tools["openssl"] = Output(ctx, "openssl", "version")
	if v := Output(ctx, "tar", "--version"); v != "" {
		m.Tools["tar"], _, _ = strings.Cut(v, "\n")
	}
	return m
}

// Output runs a command and returns its trimmed stdout, "" on any error.
func Output(ctx context.Context, name string, args ...string) string {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	b, err := exec.CommandContext(ctx, name, args...).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
