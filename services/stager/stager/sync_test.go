package stager_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/services/stager/stager"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/rs/zerolog"
)

// TestSyncModes stages a package into a processing location set to each
// sync mode: the package is in place, complete, and the wait for it to
// become durable is counted under the location's mode, and its commit as a
// batch of one. (That the sync
// comes before the commit and the done event is unpack's TestSyncOrder.)
func TestSyncModes(t *testing.T) {
	for _, tc := range []struct{ setting, mode string }{
		{"", "file"},
		{"sync: file", "file"},
		{"sync: filesystem", "filesystem"},
	} {
		t.Run(tc.mode+"/"+tc.setting, func(t *testing.T) {
			w := newWorld(t)
			if tc.setting != "" {
				w.setProcPerms(tc.setting)
			}
			cfg := w.config()
			cfg.HTTPAddr = "127.0.0.1:0"
			addr := make(chan net.Addr, 1)
			ctx, cancel := context.WithCancel(context.Background())
			errc := make(chan error, 1)
			go func() {
				errc <- stager.RunReady(ctx, cfg, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel), func(a net.Addr) { addr <- a })
			}()
			defer func() {
				cancel()
				if err := <-errc; err != nil {
					t.Errorf("Run = %v", err)
				}
			}()
			var base string
			select {
			case a := <-addr:
				base = "http://" + a.String()
			case <-time.After(10 * time.Second):
				t.Fatal("no listener")
			}
			p := w.put(w.archive, "sync-1", samplePackage(t))
			done := waitID[event.Done](t, w.rec, "done:"+w.submit(request("job-sync", p)))
			if done.AlreadyPresent || done.Files == 0 {
				t.Fatalf("done %+v, want a fresh copy", done)
			}
			n := 0
			err := filepath.WalkDir(done.Path, func(_ string, d os.DirEntry, err error) error {
				if err == nil && d.Type().IsRegular() {
					n++
				}
				return err
			})
			if err != nil || n != done.Files {
				t.Errorf("%d files in place (%v), done says %d", n, err, done.Files)
			}
			resp, err := http.Get(base + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if want := `stager_sync_wait_seconds_count{location="proc",mode="` + tc.mode + `"} 1`; !strings.Contains(string(b), want) {
				t.Errorf("/metrics lacks %s", want)
			}
			// The one commit was a batch of its own (the group commit's
			// batches are dest's TestGroupCommit).
			for _, want := range []string{`stager_commit_batch_size_count{location="proc"} 1`, `stager_commit_batch_size_sum{location="proc"} 1`} {
				if !strings.Contains(string(b), want) {
					t.Errorf("/metrics lacks %s", want)
				}
			}
		})
	}
}
