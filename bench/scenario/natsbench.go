package scenario

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/ccatobs/ccat-staging/devkit/natsembed"
)

// toolsDir finds the repository's tools module (where `go tool nats` is
// declared) by walking up from the working directory.
func toolsDir() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "tools", "go.mod")); err == nil {
			return filepath.Join(dir, "tools"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no tools/go.mod above the working directory: run from the repository")
		}
		dir = parent
	}
}

// natsBench is one `nats bench js` run of the broker alone: async publish
// into a fresh file-storage stream, then a durable consumer with explicit
// acks, on an embedded server of its own. It returns msgs/s of both.
func natsBench(ctx context.Context, dir string, msgs, size int) (pub, consume float64, err error) {
	tools, err := toolsDir()
	if err != nil {
		return 0, 0, err
	}
	ns, err := natsembed.Start(natsembed.Options{StoreDir: filepath.Join(dir, "store"), Name: "natsbench", MaxStore: 8 << 30})
	if err != nil {
		return 0, 0, err
	}
	defer func() {
		ns.Shutdown()
		ns.WaitForShutdown()
		_ = os.RemoveAll(filepath.Join(dir, "store"))
	}()
	run := func(name string, args ...string) (float64, error) {
		out := filepath.Join(dir, name+".csv")
		_ = os.Remove(out)
		full := append([]string{"-C", tools, "tool", "nats", "-s", ns.ClientURL(), "bench", "js"}, args...)
		full = append(full, "--msgs", strconv.Itoa(msgs), "--size", strconv.Itoa(size), "--no-progress", "--csv", out)
		cmd := exec.CommandContext(ctx, "go", full...)
		if b, err := cmd.CombinedOutput(); err != nil {
			return 0, fmt.Errorf("nats bench js %s: %w: %s", strings.Join(args, " "), err, b)
		}
		return csvRate(out)
	}
	if pub, err = run("pub", "pub", "async", "bench.subj", "--create", "--storage", "file", "--replicas", "1", "--batch", "500"); err != nil {
		return 0, 0, err
	}
	if consume, err = run("consume", "consume", "--acks", "explicit", "--batch", "500"); err != nil {
		return 0, 0, err
	}
	return pub, consume, nil
}

// csvRate reads the MsgsPerSec column of a `nats bench --csv` file.
func csvRate(path string) (float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	recs, err := csv.NewReader(f).ReadAll()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	if len(recs) < 2 {
		return 0, fmt.Errorf("%s: no data row", path)
	}
	col := -1
	for i, h := range recs[0] {
		if h == "MsgsPerSec" {
			col = i
		}
	}
	if col < 0 || col >= len(recs[1]) {
		return 0, fmt.Errorf("%s: no MsgsPerSec column", path)
	}
	return strconv.ParseFloat(recs[1][col], 64)
}
