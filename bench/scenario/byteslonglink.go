package scenario

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/Shopify/toxiproxy/v2"
	"github.com/ccatobs/ccat-staging/bench/fixture"
	"github.com/ccatobs/ccat-staging/bench/harness"
	"github.com/ccatobs/ccat-staging/bench/system"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// The long link's model: what one TCP stream gets on a ~150 ms path (e.g.
// the observatory in Chile to a data centre in Europe). The kernel here has
// no netem, so toxiproxy emulates it in user space, per connection:
//   - 75 ms each way on every byte (RTT 150 ms): every request waits at
//     least one round trip for its first byte;
//   - 16 MB/s per connection: a stream's rate is bounded by window ÷ RTT,
//     and 16 MB/s is a ~2.4 MB effective window at 150 ms — about what
//     Linux's receive-buffer autotuning reaches on such a path with a
//     little loss (Mathis: MSS ÷ (RTT·√p) ≈ 12 MB/s at p = 10⁻⁶). The link
//     itself is assumed wider than any one stream, so parallel streams add
//     up, which is the point of parallel ranged GETs.
//
// Not modelled: slow start (connections are kept alive and reused), loss
// bursts, and a shared bottleneck.
const (
	longLinkOneWay      = 75 * time.Millisecond
	longLinkStreamBytes = 16_000_000 // bytes/s per connection
	longLinkStreams     = 8          // rclone's --multi-thread-streams and the stager's parts
	longLinkPartSize    = 8 << 20
)

// BytesS3LongLink is issue 17's long-link scenario: bytes-s3 through an
// emulated ~150 ms path.
func BytesS3LongLink() harness.Scenario {
	return harness.Scenario{Name: "bytes-s3-long-link", Issue: 17,
		Doc: fmt.Sprintf("A package in a local versitygw v1.8.0 reached through toxiproxy v2.5.0 emulating one TCP stream on a ~150 ms path "+
			"(%d ms each way, %.0f MB/s per connection), staged by the real stager (S3 location with parts %d × %d MiB) against "+
			"`rclone cat | tar -x` (one stream) and `rclone copy --multi-thread-streams %d` + `tar -x` + `rm`, all through the same proxy. "+
			"Every variant ends with `sync`, included in its time.",
			longLinkOneWay.Milliseconds(), longLinkStreamBytes/1e6, longLinkStreams, longLinkPartSize>>20, longLinkStreams),
		Run: runBytesS3LongLink}
}

// startLongLink starts a toxiproxy proxy to upstream with the model's
// toxics and returns its address.
func startLongLink(upstream string) (string, func(), error) {
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	p := toxiproxy.NewProxy(srv, "long-link", "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		return "", nil, fmt.Errorf("toxiproxy: %w", err)
	}
	toxics := []string{
		fmt.Sprintf(`{"name":"rtt-down","type":"latency","stream":"downstream","attributes":{"latency":%d}}`, longLinkOneWay.Milliseconds()),
		fmt.Sprintf(`{"name":"rtt-up","type":"latency","stream":"upstream","attributes":{"latency":%d}}`, longLinkOneWay.Milliseconds()),
		// toxiproxy's rate is in KB/s (10^3 bytes), per connection.
		fmt.Sprintf(`{"name":"window","type":"bandwidth","stream":"downstream","attributes":{"rate":%d}}`, longLinkStreamBytes/1000),
	}
	for _, j := range toxics {
		if _, err := p.Toxics.AddToxicJson(strings.NewReader(j)); err != nil {
			p.Stop()
			return "", nil, fmt.Errorf("toxiproxy toxic %s: %w", j, err)
		}
	}
	return p.Listen, p.Stop, nil
}

func runBytesS3LongLink(ctx context.Context, env harness.Env) ([]harness.Table, error) {
	// A stream at 16 MB/s needs a minute per GB: the package is smaller
	// than bytes-s3's so that the one-stream baseline stays affordable.
	total := int64(1 << 30)
	if env.Short {
		total = 256 << 20
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
	link, stop, err := startLongLink(v.endpoint)
	if err != nil {
		return nil, err
	}
	defer stop()

	rclone, rcloneErr := lookTool("rclone")
	rcEnv := []string{"RCLONE_CONFIG_BENCHS3_TYPE=s3", "RCLONE_CONFIG_BENCHS3_PROVIDER=Other",
		"RCLONE_CONFIG_BENCHS3_ACCESS_KEY_ID=" + s3Access, "RCLONE_CONFIG_BENCHS3_SECRET_ACCESS_KEY=" + s3Secret,
		"RCLONE_CONFIG_BENCHS3_ENDPOINT=http://" + link, "RCLONE_CONFIG_BENCHS3_FORCE_PATH_STYLE=true",
		"RCLONE_CONFIG_BENCHS3_REGION=us-east-1"}
	rcPrefix := strings.Join(rcEnv, " ") + " " + quote(rclone)
	out := filepath.Join(env.WorkDir, "out")
	scratch := filepath.Join(env.WorkDir, "scratch")

	ours, oursErr := newPipelineStager(ctx, env, system.S3LTA, "raw/pkg.tar", info,
		&system.S3{Endpoint: link, Bucket: s3Bucket, AccessKey: s3Access, SecretKey: s3Secret,
			Parts: longLinkStreams, PartSize: longLinkPartSize})
	if ours != nil {
		defer ours.Close()
	}
	variants := []byteVariant{
		{name: "rclone cat | tar -x (one stream)", missing: rcloneErr, run: func(int) (time.Duration, error) {
			return sh(ctx, fmt.Sprintf("mkdir -p %[2]s && %[1]s cat benchs3:%[3]s/raw/pkg.tar | tar -xf - -C %[2]s && sync", rcPrefix, quote(out), s3Bucket))
		}},
		{name: fmt.Sprintf("rclone copy --multi-thread-streams %d, %d MiB chunks + tar -x + rm", longLinkStreams, longLinkPartSize>>20), missing: rcloneErr, run: func(int) (time.Duration, error) {
			return sh(ctx, fmt.Sprintf("mkdir -p %[2]s %[3]s && %[1]s copy --multi-thread-streams %[5]d --multi-thread-chunk-size %[6]dMi --multi-thread-cutoff 1M benchs3:%[4]s/raw/pkg.tar %[3]s && tar -xf %[3]s/pkg.tar -C %[2]s && rm %[3]s/pkg.tar && sync",
				rcPrefix, quote(out), quote(scratch), s3Bucket, longLinkStreams, longLinkPartSize>>20))
		}},
		{name: fmt.Sprintf("ccat-staging stager, %d parts × %d MiB (submit → done, unpack + verify)", longLinkStreams, longLinkPartSize>>20),
			ours: true, missing: oursErr, run: func(i int) (time.Duration, error) { return ours.Stage(ctx, i) }},
	}
	rows, err := measureBytes(ctx, env, "bytes-s3-long-link", variants, out, ours, info.SizeBytes)
	if err != nil {
		return nil, err
	}
	return []harness.Table{{
		Title: fmt.Sprintf("S3 → disk across an emulated ~150 ms link, %.0f MB tar, %d files", float64(info.SizeBytes)/1e6, len(info.Files)),
		Unit:  "MB/s", Rows: rows,
		Notes: []string{
			fmt.Sprintf("link model (toxiproxy, per TCP connection): %d ms each way, %.0f MB/s per connection — one stream's window ÷ RTT on a ~150 ms path; parallel streams add up",
				longLinkOneWay.Milliseconds(), longLinkStreamBytes/1e6),
			"targets: stager ≥ 3× `rclone cat | tar -x` and ≥ 0.8× rclone's multi-threaded copy + `tar -x`",
			"page cache: warm at the server (the object was just uploaded); `sync` after every run is inside the timing",
		}}}, nil
}
