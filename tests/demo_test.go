package tests

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/dbtest"
)

// TestDemoOnce runs the README's demo command the way CI and users do, with
// DEMO_ONCE=1, against a fresh database, and expects it to stage everything
// and exit 0.
func TestDemoOnce(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "demo")
	build := exec.CommandContext(t.Context(), "go", "build", "-o", bin, "./services/demo")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build demo: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Env = append(os.Environ(),
		"DEMO_ONCE=1",
		"DATABASE_URL="+dbtest.New(t),
		"LEDGER_HTTP_ADDR=127.0.0.1:0", // 8080 may be taken on a CI machine
		"DEMO_DIR="+t.TempDir(),
		"DEMO_PACKAGES=4",
		"DEMO_PACKAGE_MB=1",
	)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	for _, want := range []string{"COMPLETED", "DEMO_ONCE: all jobs completed", "go -C tools tool nats --server nats://127.0.0.1:", "stream ls", "cologne-processing", "us-processing"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out.String())
		}
	}
}
