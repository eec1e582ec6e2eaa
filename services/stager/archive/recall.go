package archive

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Recall is a tape (or HSM) location: before a key is read from the disk
// cache, Command is run with the key's absolute path as its last argument to
// bring the file online. Its exit status and stderr become the error.
type Recall struct {
	Disk
	Command []string
	Timeout time.Duration // 0 = 1 hour
}

func (r Recall) recall(ctx context.Context, key string) error {
	k, err := CleanKey(key)
	if err != nil {
		return err
	}
	d := r.Timeout
	if d <= 0 {
		d = time.Hour
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	args := append(append([]string{}, r.Command[1:]...), filepath.Join(r.Root, filepath.FromSlash(k)))
	cmd := exec.CommandContext(ctx, r.Command[0], args...)
	var stderr bytes.Buffer
	cmd.Stderr = &limited{w: &stderr, n: 4096}
	// The command may start helpers of its own; on timeout the whole
	// process group goes, or they would hold stderr open and the recall
	// would outlive its deadline.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if ctx.Err() == context.DeadlineExceeded {
			return transient(fmt.Sprintf("recall %s: no answer within %s", key, d), err)
		}
		// A recall that fails may well succeed later (drive busy, tape
		// mounted elsewhere); MaxDeliver bounds the attempts.
		return transient(fmt.Sprintf("recall %s: %s", key, msg), err)
	}
	return nil
}

// Open implements Backend.
func (r Recall) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := r.recall(ctx, key); err != nil {
		return nil, err
	}
	return r.Disk.Open(ctx, key)
}

// Size implements Backend; it does not recall, since the stub of a file on
// tape already knows its size.
func (r Recall) Size(ctx context.Context, key string) (int64, error) {
	return r.Disk.Size(ctx, key)
}

// limited keeps the first n bytes written to it and drops the rest, so a
// chatty command cannot fill memory.
type limited struct {
	w io.Writer
	n int
}

func (l *limited) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		l.w.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
}
