package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/devkit/bustest"
	"github.com/ccatobs/ccat-staging/devkit/poll"
	"github.com/ccatobs/ccat-staging/shared/subject"
)

func TestRun(t *testing.T) {
	t.Run("missing topology", func(t *testing.T) {
		var stderr bytes.Buffer
		err := run(t.Context(), []string{"planner"}, func(string) string { return "" }, &bytes.Buffer{}, &stderr)
		if err == nil || !strings.Contains(err.Error(), "TOPOLOGY_FILE") {
			t.Fatalf("run = %v, want a TOPOLOGY_FILE error", err)
		}
	})
	t.Run("serves until cancelled", func(t *testing.T) {
		srv := bustest.New(t)
		topo := filepath.Join(t.TempDir(), "t.yaml")
		if err := os.WriteFile(topo, []byte("sites:\n  - name: s\n    locations:\n      - {name: s-proc, type: processing, storage: disk, path: /p}\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		env := map[string]string{"NATS_URL": srv.URL, "TOPOLOGY_FILE": topo, "PLANNER_HTTP_ADDR": "off", "LOG_LEVEL": "warn"}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		var stderr bytes.Buffer
		go func() {
			done <- run(ctx, []string{"planner"}, func(k string) string { return env[k] }, &bytes.Buffer{}, &stderr)
		}()
		poll.Until(t, 10*time.Second, "planner-submit provisioned", func() error {
			_, err := srv.JS.Consumer(t.Context(), subject.EventsStream, subject.PlannerSubmit)
			return err
		})
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("run = %v after cancel", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("run did not return after cancel")
		}
	})
}
