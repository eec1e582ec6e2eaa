// Command bench measures the stager's one-pass staging (read → sha256 →
// extract → fsync → rename) of a large package, disk→disk and S3→disk,
// against the CCAT way (cp the tar, openssl dgst -sha256, tar -x, rm) and a
// bare tar -x, all in the same run and all ending with the data synced: the
// shell methods fsync every file and directory they extracted (sync FILE…),
// as the stager does, rather than the whole file system, which on a shared
// machine would also wait for other processes' writes.
//
//	go run ./bench/cmd/stagerbench -size 1GiB -dir /scratch/bench
//
// It is a benchmark, not a test: it prints figures and asserts nothing.
package main

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"github.com/ccatobs/ccat-staging/bench/fixture"
	"github.com/ccatobs/ccat-staging/devkit/s3test"
	"github.com/ccatobs/ccat-staging/services/stager/archive"
	"github.com/ccatobs/ccat-staging/services/stager/dest"
	"github.com/ccatobs/ccat-staging/services/stager/unpack"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/topology"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run() error {
	size := flag.String("size", "1GiB", "package size (MiB or GiB suffix)")
	files := flag.Int("files", 16, "files in the package")
	dir := flag.String("dir", "", "work directory (default: a new temp dir, removed afterwards)")
	rounds := flag.Int("rounds", 3, "runs of each method, alternating; the median is reported")
	noS3 := flag.Bool("no-s3", false, "skip S3→disk (needs versitygw, installed on first use)")
	parts := flag.Int("parts", 0, "S3 parts in flight (0: the stager's default)")
	partSize := flag.Int64("part-size", 0, "S3 part size in bytes (0: the stager's default)")
	realistic := flag.Bool("realistic", false, "a realistic package (bench/fixture: a few large files and thousands of 64–512 KiB files, checked against its manifest as the pipeline does) instead of -files equal files")
	diag := flag.Bool("diag", false, "also measure the parts separately: read + sha256 only, the stager with one syncfs instead of per-file fsyncs, tar -x + syncfs")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the in-process stager runs to this file")
	reuse := flag.Bool("reuse", false, "with -dir and -realistic: keep the package an earlier run wrote there (so two builds can be alternated on the same bytes)")
	only := flag.String("only", "", "run only the methods whose name contains this")
	flag.Parse()
	n, err := parseSize(*size)
	if err != nil {
		return err
	}
	work := *dir
	if work == "" {
		if work, err = os.MkdirTemp("", "stager-bench-"); err != nil {
			return err
		}
		defer os.RemoveAll(work)
	}
	archiveDir, procDir := filepath.Join(work, "archive"), filepath.Join(work, "proc")
	for _, d := range []string{archiveDir, procDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	tarPath := filepath.Join(archiveDir, "pkg.tar")
	var sum string
	var manifest []event.File
	if *realistic {
		spec := fixture.Realistic(n)
		infoPath := tarPath + ".info.json"
		var info fixture.Info
		if b, err := os.ReadFile(infoPath); *reuse && err == nil && json.Unmarshal(b, &info) == nil {
			fmt.Printf("reusing the package at %s\n", tarPath)
		} else {
			fmt.Printf("writing a realistic %d MiB package (%d large, %d small files) to %s …\n", n>>20, spec.Large, spec.Small, tarPath)
			if info, err = fixture.Write(tarPath, spec); err != nil {
				return err
			}
			b, _ := json.Marshal(info)
			if err := os.WriteFile(infoPath, b, 0o644); err != nil {
				return err
			}
		}
		sum, manifest = strings.TrimPrefix(info.Checksum, "sha256:"), info.Files
	} else {
		fmt.Printf("writing a %d MiB package of %d files to %s …\n", n>>20, *files, tarPath)
		if sum, err = writeTar(tarPath, *files, n/int64(*files)); err != nil {
			return err
		}
	}
	st, err := os.Stat(tarPath)
	if err != nil {
		return err
	}
	total := st.Size()
	ctx := context.Background()

	type method struct {
		name string
		run  func(i int) error
	}
	// Committer: the stager's commit path (run.go), group commit included.
	loc := dest.Location{Name: "proc", Root: procDir, Instance: "bench", Committer: dest.NewCommitter(nil)}
	if err := loc.Prepare(); err != nil {
		return err
	}
	synced := map[string][]time.Duration{}
	var prof *os.File
	if *cpuprofile != "" {
		if prof, err = os.Create(*cpuprofile); err != nil {
			return err
		}
		defer prof.Close()
	}
	stageSync := func(b archive.Backend, key string, i int, mode unpack.Sync, name string) error {
		pkg := fmt.Sprintf("stager-%d", i)
		r, err := b.Open(ctx, key)
		if err != nil {
			return err
		}
		defer r.Close()
		tmp, err := loc.TempDir(pkg)
		if err != nil {
			return err
		}
		if prof != nil && i == 0 {
			if err := pprof.StartCPUProfile(prof); err == nil {
				defer pprof.StopCPUProfile()
			}
		}
		res, err := unpack.Extract(ctx, r, tmp, unpack.Options{Size: total, SHA256: sum, Files: manifest, Sync: mode})
		if err != nil {
			os.RemoveAll(tmp)
			return err
		}
		synced[name] = append(synced[name], res.Synced)
		_, err = loc.Commit(tmp, pkg, dest.Manifest{PackageID: pkg, Checksum: "sha256:" + sum, SizeBytes: total, List: res.Files})
		return err
	}
	const stagerDisk = "stager disk→disk (one pass)"
	stage := func(b archive.Backend, key string, i int) error {
		return stageSync(b, key, i, unpack.SyncFile, stagerDisk)
	}
	methods := []method{
		{stagerDisk, func(i int) error { return stage(archive.Disk{Root: archiveDir}, "pkg.tar", i) }},
		{"CCAT: cp + openssl dgst -sha256 + tar -x + rm", func(i int) error {
			out := filepath.Join(procDir, fmt.Sprintf("ccat-%d", i))
			return sh(fmt.Sprintf(`set -e; mkdir -p %[1]s; cp %[2]s %[1]s.tar; openssl dgst -sha256 %[1]s.tar >/dev/null; tar -x -f %[1]s.tar -C %[1]s; rm %[1]s.tar; find %[1]s -exec sync {} +`, out, tarPath))
		}},
		{"bare tar -x", func(i int) error {
			out := filepath.Join(procDir, fmt.Sprintf("tar-%d", i))
			return sh(fmt.Sprintf(`set -e; mkdir -p %[1]s; tar -x -f %[2]s -C %[1]s; find %[1]s -exec sync {} +`, out, tarPath))
		}},
	}
	const stagerFS = "stager disk→disk, sync: filesystem"
	if *diag {
		methods = append(methods,
			method{"read + sha256 only (Go, 1 MiB reads)", func(int) error { return hashFile(tarPath) }},
			method{stagerFS, func(i int) error {
				return stageSync(archive.Disk{Root: archiveDir}, "pkg.tar", 200+i, unpack.SyncFilesystem, stagerFS)
			}},
			method{"tar -x + sync -f (syncfs)", func(i int) error {
				out := filepath.Join(procDir, fmt.Sprintf("tarfs-%d", i))
				return sh(fmt.Sprintf(`set -e; mkdir -p %[1]s; tar -x -f %[2]s -C %[1]s; sync -f %[1]s`, out, tarPath))
			}},
			method{"tar -x + sync (all file systems, as bench bytes-disk)", func(i int) error {
				out := filepath.Join(procDir, fmt.Sprintf("tarsync-%d", i))
				return sh(fmt.Sprintf(`set -e; mkdir -p %[1]s; tar -x -f %[2]s -C %[1]s; sync`, out, tarPath))
			}},
			method{"tar -x, no sync", func(i int) error {
				out := filepath.Join(procDir, fmt.Sprintf("tarns-%d", i))
				return sh(fmt.Sprintf(`set -e; mkdir -p %[1]s; tar -x -f %[2]s -C %[1]s`, out, tarPath))
			}})
	}
	if !*noS3 {
		stop, b, err := startS3(ctx, work, tarPath, *parts, *partSize)
		if err != nil {
			return err
		}
		defer stop()
		methods = append(methods, method{"stager S3→disk (versitygw, one pass)", func(i int) error { return stage(b, "pkg.tar", 100+i) }})
	}

	if *only != "" {
		methods = slices.DeleteFunc(methods, func(m method) bool { return !strings.Contains(m.name, *only) })
	}
	// Read the tar once so that every method starts from a warm page cache.
	if err := sh("cat " + tarPath + " >/dev/null"); err != nil {
		return err
	}
	all := map[string][]time.Duration{}
	peak := map[string]float64{}
	for r := range *rounds {
		for _, m := range methods {
			_ = sh("sync")
			t0 := time.Now()
			stopRSS := sampleRSS()
			err := m.run(r)
			d := time.Since(t0)
			peak[m.name] = max(peak[m.name], stopRSS())
			if err != nil {
				return fmt.Errorf("%s: %w", m.name, err)
			}
			all[m.name] = append(all[m.name], d)
			// What an unsynced run left dirty is written back here, outside
			// every timing, so it does not land on the next method's sync.
			if err := cleanProc(procDir); err != nil {
				return err
			}
		}
	}
	base := median(all["bare tar -x"])
	if base == 0 {
		base = 1 // not run (-only): the ratio column is meaningless
	}
	fmt.Printf("\n%d MiB package, median of %d (methods alternate), data synced at the end of each unless said:\n", total>>20, *rounds)
	fmt.Printf("%-48s %10s %10s %14s %14s %10s\n", "method", "seconds", "MB/s", "time ÷ tar -x", "bench RSS MB", "sync s")
	for _, m := range methods {
		d := median(all[m.name])
		sync := "-"
		if s, ok := synced[m.name]; ok {
			sync = fmt.Sprintf("%.2f", median(s).Seconds())
		}
		fmt.Printf("%-48s %10.2f %10.0f %14.2f %14.0f %10s\n", m.name, d.Seconds(), float64(total)/1e6/d.Seconds(), d.Seconds()/base.Seconds(), peak[m.name], sync)
	}
	fmt.Println("sync s: of the stager's time, the wait after the last entry was written until the tree was durable (the fsyncs draining and the directories', or the one syncfs)")
	fmt.Println("bench RSS: the peak resident set of this process (which runs the stager's code in-process; shell methods run in children) sampled every 20 ms")
	return nil
}

func sh(script string) error {
	out, err := exec.Command("sh", "-c", script).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", script, err, out)
	}
	return nil
}

func cleanProc(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.Name() == ".ccat-staging" {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

func parseSize(s string) (int64, error) {
	var n int64
	switch {
	case strings.HasSuffix(s, "GiB"):
		_, err := fmt.Sscan(strings.TrimSuffix(s, "GiB"), &n)
		return n << 30, err
	case strings.HasSuffix(s, "MiB"):
		_, err := fmt.Sscan(strings.TrimSuffix(s, "MiB"), &n)
		return n << 20, err
	}
	return 0, fmt.Errorf("size %q: want e.g. 1GiB or 512MiB", s)
}

// writeTar writes files × each bytes of incompressible data and returns the
// tar's sha256.
func writeTar(path string, files int, each int64) (string, error) {
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<20)
	tw := tar.NewWriter(bw)
	block := make([]byte, 1<<20)
	rng := rand.New(rand.NewPCG(7, 11))
	for i := range block {
		block[i] = byte(rng.Uint32())
	}
	for i := range files {
		if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("data/file-%04d.fits", i), Mode: 0o644, Size: each, Typeflag: tar.TypeReg, ModTime: time.Now()}); err != nil {
			return "", err
		}
		for left := each; left > 0; {
			block[0], block[1] = byte(left), byte(i)
			k := min(left, int64(len(block)))
			if _, err := tw.Write(block[:k]); err != nil {
				return "", err
			}
			left -= k
		}
	}
	if err := tw.Close(); err != nil {
		return "", err
	}
	if err := bw.Flush(); err != nil {
		return "", err
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// startS3 runs versitygw on a posix dir under work and uploads the package.
func startS3(ctx context.Context, work, tarPath string, parts int, partSize int64) (func(), archive.Backend, error) {
	bin, err := s3test.Binary()
	if err != nil {
		return nil, nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	gw := filepath.Join(work, "s3")
	if err := os.MkdirAll(gw, 0o755); err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(bin, "--port", addr, "--quiet", "posix", gw)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY_ID="+s3test.AccessKey, "ROOT_SECRET_ACCESS_KEY="+s3test.SecretKey)
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	stop := func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
	cl, err := minio.New(addr, &minio.Options{Creds: credentials.NewStaticV4(s3test.AccessKey, s3test.SecretKey, ""), BucketLookup: minio.BucketLookupPath})
	if err != nil {
		stop()
		return nil, nil, err
	}
	for deadline := time.Now().Add(20 * time.Second); ; {
		if _, err := cl.ListBuckets(ctx); err == nil {
			break
		} else if time.Now().After(deadline) {
			stop()
			return nil, nil, fmt.Errorf("versitygw not ready: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := cl.MakeBucket(ctx, "lta", minio.MakeBucketOptions{}); err != nil {
		stop()
		return nil, nil, err
	}
	if _, err := cl.FPutObject(ctx, "lta", "pkg.tar", tarPath, minio.PutObjectOptions{}); err != nil {
		stop()
		return nil, nil, err
	}
	b, err := archive.NewS3(topology.S3{Endpoint: addr, Bucket: "lta", Region: "us-east-1", Parts: parts, PartSize: partSize},
		archive.Credentials{AccessKeyID: s3test.AccessKey, SecretAccessKey: s3test.SecretKey})
	if err != nil {
		stop()
		return nil, nil, err
	}
	// Warm the gateway's file in the page cache too.
	if err := sh("cat " + filepath.Join(gw, "lta", "pkg.tar") + " >/dev/null"); err != nil {
		stop()
		return nil, nil, err
	}
	return stop, b, nil
}

// sampleRSS samples this process's resident set every 20 ms until the
// returned function is called, which returns the peak in MB (10^6 bytes).
func sampleRSS() func() float64 {
	stop, done := make(chan struct{}), make(chan float64)
	go func() {
		var peak float64
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			peak = max(peak, rssMB())
			select {
			case <-stop:
				done <- peak
				return
			case <-t.C:
			}
		}
	}()
	return func() float64 { close(stop); return <-done }
}

func rssMB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for l := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			var kb float64
			if _, err := fmt.Sscan(rest, &kb); err == nil {
				return kb * 1024 / 1e6
			}
		}
	}
	return 0
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// hashFile reads path in 1 MiB reads and hashes it: the floor of reading
// and hashing the package on one core, with nothing written.
func hashFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	_, err = io.CopyBuffer(h, f, make([]byte, 1<<20))
	return err
}
