package scenario

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ccatobs/ccat-staging/bench/fixture"
	"github.com/ccatobs/ccat-staging/bench/harness"
	"github.com/ccatobs/ccat-staging/bench/system"
)

// BytesS3 is issue scenario 4: the same package read from a local S3 server.
func BytesS3() harness.Scenario {
	return harness.Scenario{Name: "bytes-s3", Issue: 4,
		Doc: "The bytes-disk package uploaded with one PUT to a local versitygw v1.8.0 (posix backend, loopback HTTP), then staged " +
			"by the real stager from an S3 archive location, against `rclone copy` + `tar -x` + `rm`, `rclone cat | tar -x`, and a raw " +
			"GET to /dev/null (curl, SigV4). Every variant ends with `sync`, included in its time.",
		Run: runBytesS3}
}

const (
	s3Access = "benchaccess"
	s3Secret = "benchsecret-0123456789"
	s3Bucket = "bench"
)

// lookTool finds a command on PATH or in $HOME/go/bin, where `go install` puts it.
func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	if home, err := os.UserHomeDir(); err == nil {
		p := filepath.Join(home, "go", "bin", name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found on PATH or in ~/go/bin", name)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// versity runs a versitygw posix gateway as a child process.
type versity struct {
	cmd      *exec.Cmd
	endpoint string // host:port
}

func startVersity(ctx context.Context, root string) (*versity, error) {
	bin, err := lookTool("versitygw")
	if err != nil {
		return nil, fmt.Errorf("%w (go install github.com/versity/versitygw/cmd/versitygw@v1.8.0)", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(root, s3Bucket), 0o755); err != nil {
		return nil, err
	}
	v := &versity{endpoint: "127.0.0.1:" + strconv.Itoa(port)}
	v.cmd = exec.Command(bin, "--port", v.endpoint, "--access", s3Access, "--secret", s3Secret, "posix", root)
	v.cmd.Stdout, v.cmd.Stderr = nil, nil
	if err := v.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start versitygw: %w", err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", v.endpoint, time.Second)
		if err == nil {
			c.Close()
			return v, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			v.Close()
			return nil, errors.New("versitygw did not listen within 20s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (v *versity) Close() {
	if v.cmd.Process != nil {
		_ = v.cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = v.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = v.cmd.Process.Kill()
			<-done
		}
	}
}

// curl is a SigV4-signed curl command line for the gateway; versitygw wants
// the payload hash header even for an unsigned payload.
func (v *versity) curl(args string) string {
	return fmt.Sprintf("curl -sSf --aws-sigv4 aws:amz:us-east-1:s3 --user %s:%s -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' %s",
		s3Access, s3Secret, args)
}

func (v *versity) url(key string) string { return "http://" + v.endpoint + "/" + s3Bucket + "/" + key }

func runBytesS3(ctx context.Context, env harness.Env) ([]harness.Table, error) {
	total := int64(4 << 30)
	if env.Short {
		total = 512 << 20
	}
	spec := fixture.Realistic(total)
	src := filepath.Join(env.WorkDir, "pkg.tar")
	info, err := fixture.Write(src, spec)
	if err != nil {
		return nil, err
	}
	v, err := startVersity(ctx, filepath.Join(env.WorkDir, "s3"))
	if err != nil {
		return nil, err
	}
	defer v.Close()
	if _, err := sh(ctx, v.curl("-T "+quote(src)+" "+quote(v.url("raw/pkg.tar")))); err != nil {
		return nil, fmt.Errorf("upload fixture with one PUT: %w", err)
	}
	if err := os.Remove(src); err != nil {
		return nil, err
	}
	rclone, rcloneErr := lookTool("rclone")
	// rclone reads its remote from the environment, so nothing is written
	// to the user's rclone.conf.
	rcEnv := []string{"RCLONE_CONFIG_BENCHS3_TYPE=s3", "RCLONE_CONFIG_BENCHS3_PROVIDER=Other",
		"RCLONE_CONFIG_BENCHS3_ACCESS_KEY_ID=" + s3Access, "RCLONE_CONFIG_BENCHS3_SECRET_ACCESS_KEY=" + s3Secret,
		"RCLONE_CONFIG_BENCHS3_ENDPOINT=http://" + v.endpoint, "RCLONE_CONFIG_BENCHS3_FORCE_PATH_STYLE=true",
		"RCLONE_CONFIG_BENCHS3_REGION=us-east-1"}
	rcPrefix := strings.Join(rcEnv, " ") + " " + quote(rclone)
	out := filepath.Join(env.WorkDir, "out")
	scratch := filepath.Join(env.WorkDir, "scratch")

	ours, oursErr := newPipelineStager(ctx, env, system.S3LTA, "raw/pkg.tar", info,
		&system.S3{Endpoint: v.endpoint, Bucket: s3Bucket, AccessKey: s3Access, SecretKey: s3Secret})
	if ours != nil {
		defer ours.Close()
	}
	variants := []byteVariant{
		{name: "raw GET → /dev/null (curl)", run: func(int) (time.Duration, error) {
			return sh(ctx, v.curl("-o /dev/null "+quote(v.url("raw/pkg.tar")))+"; sync")
		}},
		{name: "rclone copy + tar -x + rm", missing: rcloneErr, run: func(int) (time.Duration, error) {
			return sh(ctx, fmt.Sprintf("mkdir -p %[2]s %[3]s && %[1]s copy benchs3:%[4]s/raw/pkg.tar %[3]s && tar -xf %[3]s/pkg.tar -C %[2]s && rm %[3]s/pkg.tar && sync",
				rcPrefix, quote(out), quote(scratch), s3Bucket))
		}},
		{name: "rclone cat | tar -x (one pass, no verify)", missing: rcloneErr, run: func(int) (time.Duration, error) {
			return sh(ctx, fmt.Sprintf("mkdir -p %[2]s && %[1]s cat benchs3:%[3]s/raw/pkg.tar | tar -xf - -C %[2]s && sync", rcPrefix, quote(out), s3Bucket))
		}},
		{name: "ccat-staging stager from S3 (submit → done, unpack + verify)", ours: true, missing: oursErr, run: func(i int) (time.Duration, error) {
			return ours.Stage(ctx, i)
		}},
	}
	rows, err := measureBytes(ctx, env, "bytes-s3", variants, out, ours, info.SizeBytes)
	if err != nil {
		return nil, err
	}
	return []harness.Table{{
		Title: fmt.Sprintf("S3 → disk, %.0f MB tar, %d files", float64(info.SizeBytes)/1e6, len(info.Files)),
		Unit:  "MB/s", Rows: rows,
		Notes: []string{"page cache: warm (the object was just uploaded and is read by every run); `sync` after every run is inside the timing",
			"fixture uploaded with a single PUT (versitygw v1.8.0 fails multipart uploads with many small parts)"},
	}}, nil
}
