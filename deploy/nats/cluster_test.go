package natscluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/deploy/provision"
	"github.com/ccatobs/ccat-staging/devkit/poll"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/heartbeat"
	"github.com/ccatobs/ccat-staging/shared/lease"
	"github.com/ccatobs/ccat-staging/shared/manifest"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Test passwords: the config reads every password from the environment.
var passwords = map[string]string{
	"admin":          "admin-test-pw",
	"planner":        "planner-test-pw",
	"ledger":         "ledger-test-pw",
	"upstream":       "upstream-test-pw",
	"operator":       "operator-test-pw",
	"stager-cologne": "stager-cologne-test-pw",
	"stager-us":      "stager-us-test-pw",
	"sys":            "sys-test-pw",
}

// testAckWait replaces the stagers' 60 s AckWait so that a message whose
// DoubleAck was lost in the failover comes back within the test's time.
const testAckWait = 3 * time.Second

type node struct {
	name        string
	clientPort  int
	clusterPort int
	monitorPort int
	storeDir    string
	ns          *server.Server
	log         *serverLog
}

type cluster struct {
	nodes []*node
}

// urls lists every node with user's credentials, so a client fails over to
// the next node the way a service with a multi-URL NATS_URL does.
func (c *cluster) urls(user string) string {
	var us []string
	for _, n := range c.nodes {
		us = append(us, fmt.Sprintf("nats://%s:%s@127.0.0.1:%d", user, passwords[user], n.clientPort))
	}
	return strings.Join(us, ",")
}

func (c *cluster) byName(name string) *node {
	for _, n := range c.nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

// processConfig parses conf the way nats-server does on a node, with env
// as the node's environment. The environment is the process's, so parses
// are serialised and env is removed again before the next one; the tests
// that start clusters can then run in parallel.
func processConfig(t *testing.T, conf string, env map[string]string) *server.Options {
	t.Helper()
	envMu.Lock()
	defer envMu.Unlock()
	for k, v := range env {
		old, had := os.LookupEnv(k)
		if err := os.Setenv(k, v); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if had {
				os.Setenv(k, old)
			} else {
				os.Unsetenv(k)
			}
		}()
	}
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatalf("process %s: %v", conf, err)
	}
	return opts
}

var envMu sync.Mutex

// startCluster runs nats-server.conf three times, as nats-1..3 on free
// loopback ports, and waits until JetStream has a meta leader.
func startCluster(t *testing.T) *cluster {
	t.Helper()
	conf, err := filepath.Abs("nats-server.conf")
	if err != nil {
		t.Fatal(err)
	}
	return startClusterFrom(t, conf)
}

// startClusterFrom runs the config file conf (which includes accounts.conf
// from its own directory). Ports are picked free just before the servers
// bind them, so another process on the machine can take one in between;
// such a start is retried on new ports.
func startClusterFrom(t *testing.T, conf string) *cluster {
	t.Helper()
	var errs []error
	for attempt := 1; attempt <= 3; attempt++ {
		c, err := tryCluster(t, conf)
		if err == nil {
			return c
		}
		t.Logf("cluster start, attempt %d: %v", attempt, err)
		errs = append(errs, err)
	}
	t.Fatalf("cluster did not start: %v", errors.Join(errs...))
	return nil
}

// freePorts holds every listener until all n ports are chosen, so none is
// handed out twice.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// serverLog keeps what a server reports at warning level and above, to
// explain a start that fails.
type serverLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *serverLog) add(level, f string, v ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, level+" "+fmt.Sprintf(f, v...))
}

func (l *serverLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines[max(0, len(l.lines)-5):], "; ")
}

func (l *serverLog) Noticef(string, ...any)    {}
func (l *serverLog) Debugf(string, ...any)     {}
func (l *serverLog) Tracef(string, ...any)     {}
func (l *serverLog) Warnf(f string, v ...any)  { l.add("WRN", f, v...) }
func (l *serverLog) Errorf(f string, v ...any) { l.add("ERR", f, v...) }
func (l *serverLog) Fatalf(f string, v ...any) { l.add("FTL", f, v...) }

func tryCluster(t *testing.T, conf string) (*cluster, error) {
	t.Helper()
	c := &cluster{}
	ports := freePorts(t, 9)
	for i := range 3 {
		c.nodes = append(c.nodes, &node{
			name:        fmt.Sprintf("nats-%d", i+1),
			clientPort:  ports[3*i],
			clusterPort: ports[3*i+1],
			monitorPort: ports[3*i+2],
			storeDir:    t.TempDir(),
			log:         &serverLog{},
		})
	}
	stop := func() {
		for _, n := range c.nodes {
			if n.ns != nil {
				n.ns.Shutdown()
				n.ns.WaitForShutdown()
			}
		}
	}
	common := map[string]string{
		"NATS_HOST":           "127.0.0.1",
		"NATS_MAX_FILE_STORE": "1GB",
		"NATS_ROUTE_PASSWORD": "route-test-pw",
	}
	for user, pw := range passwords {
		common["NATS_"+strings.ToUpper(strings.ReplaceAll(user, "-", "_"))+"_PASSWORD"] = pw
	}
	for i, n := range c.nodes {
		common[fmt.Sprintf("NATS_ROUTE_%d", i+1)] = fmt.Sprintf("nats-route://route:route-test-pw@127.0.0.1:%d", n.clusterPort)
	}
	for _, n := range c.nodes {
		env := maps.Clone(common)
		env["NATS_SERVER_NAME"] = n.name
		env["NATS_PORT"] = fmt.Sprint(n.clientPort)
		env["NATS_CLUSTER_PORT"] = fmt.Sprint(n.clusterPort)
		env["NATS_MONITOR_PORT"] = fmt.Sprint(n.monitorPort)
		env["NATS_STORE_DIR"] = n.storeDir
		opts := processConfig(t, conf, env)
		// The test process owns its signals.
		opts.NoSigs = true
		ns, err := server.NewServer(opts)
		if err != nil {
			t.Fatalf("%s: %v", n.name, err)
		}
		ns.SetLoggerV2(n.log, false, false, false)
		n.ns = ns
		ns.Start()
	}
	for _, n := range c.nodes {
		if !n.ns.ReadyForConnections(10 * time.Second) {
			stop()
			return nil, fmt.Errorf("%s not ready for connections (%s)", n.name, n.log)
		}
	}
	// Registered after TempDir, so it runs before the stores are removed.
	t.Cleanup(stop)
	nc, js := connect(t, c, "admin")
	defer nc.Close()
	poll.Until(t, 20*time.Second, "JetStream on the admin connection", func() error {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		_, err := js.AccountInfo(ctx)
		return err
	})
	return c, nil
}

func connect(t *testing.T, c *cluster, user string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	opts = append([]nats.Option{nats.Name("test-" + user), nats.MaxReconnects(-1), nats.ReconnectWait(100 * time.Millisecond)}, opts...)
	nc, err := nats.Connect(c.urls(user), opts...)
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// ev builds an event with event.New and checks it against its schema, as
// every event published by ccat-staging must be.
func ev(t *testing.T, id string, d event.Data) event.Envelope {
	t.Helper()
	e, err := event.New("ccat-staging/deploy-test", id, "", d)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := event.Validate(raw); err != nil {
		t.Fatalf("event %s does not validate: %v", id, err)
	}
	return e
}

const sum = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

func request(job, pkg, site, priority string) event.Request {
	return event.Request{JobID: job, PackageID: pkg, Generation: 1, Priority: priority,
		Source:      event.Source{Location: site + "-lta", Site: site, Storage: "disk", Key: pkg + ".tar"},
		Destination: event.Target{Site: site, Location: site + "-proc"},
		SizeBytes:   10240, Checksum: sum, Format: "tar"}
}

func outcome(site string) event.Outcome {
	return event.Outcome{JobID: "job-1", PackageID: "pkg-1", Site: site, Location: site + "-proc", Attempt: 1,
		RequestID: "request:job-1:pkg-1:1", Instance: "i1"}
}

// Operations the permission table runs. Each takes the caller's connection.
type client struct {
	nc *nats.Conn
	js jetstream.JetStream
}

type op func(ctx context.Context, t *testing.T, c client) error

func publish(subj string, mk func(t *testing.T) event.Envelope) op {
	return func(ctx context.Context, t *testing.T, c client) error {
		_, err := bus.Publish(ctx, c.js, subj, mk(t))
		return err
	}
}

// rawNext asks a durable for one message straight on its MSG.NEXT subject:
// js.Consumer would first need CONSUMER.INFO, and the point here is that
// pulling itself is refused.
func rawNext(stream, durable string) op {
	return func(ctx context.Context, _ *testing.T, c client) error {
		subj := fmt.Sprintf("$JS.API.CONSUMER.MSG.NEXT.%s.%s", stream, durable)
		_, err := c.nc.RequestWithContext(ctx, subj, []byte(`{"batch":1,"no_wait":true}`))
		return err
	}
}

// fetchAck pulls one message from a durable and DoubleAcks it.
func fetchAck(stream, durable string) op {
	return func(ctx context.Context, _ *testing.T, c client) error {
		cons, err := c.js.Consumer(ctx, stream, durable)
		if err != nil {
			return err
		}
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(3*time.Second))
		if err != nil {
			return err
		}
		n := 0
		for m := range batch.Messages() {
			n++
			if err := m.DoubleAck(ctx); err != nil {
				return err
			}
		}
		if err := batch.Error(); err != nil {
			return err
		}
		if n != 1 {
			return fmt.Errorf("fetched %d messages from %s, want 1", n, durable)
		}
		return nil
	}
}

func consumerInfo(stream, durable string) op {
	return func(ctx context.Context, _ *testing.T, c client) error {
		cons, err := c.js.Consumer(ctx, stream, durable)
		if err != nil {
			return err
		}
		_, err = cons.Info(ctx)
		return err
	}
}

func streamInfo(names ...string) op {
	return func(ctx context.Context, _ *testing.T, c client) error {
		for _, name := range names {
			if _, err := c.js.Stream(ctx, name); err != nil {
				return err
			}
		}
		return nil
	}
}

func kvPut(bucket, key string) op {
	return func(ctx context.Context, _ *testing.T, c client) error {
		kv, err := c.js.KeyValue(ctx, bucket)
		if err != nil {
			return err
		}
		b, _ := json.Marshal(heartbeat.Beat{Site: strings.Split(key, ".")[0], Instance: key, Workers: 1, At: time.Now()})
		_, err = kv.Put(ctx, key, b)
		return err
	}
}

// kvGet only gets key, as a stager reads CANCELLED.
func kvGet(bucket, key string) op {
	return func(ctx context.Context, _ *testing.T, c client) error {
		kv, err := c.js.KeyValue(ctx, bucket)
		if err != nil {
			return err
		}
		for {
			_, err := kv.Get(ctx, key)
			if err == nil {
				return nil
			}
			if !errors.Is(err, jetstream.ErrKeyNotFound) || ctx.Err() != nil {
				return fmt.Errorf("get %s: %w", key, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// kvRead gets key and lists the bucket's keys (a watch: ordered consumer).
func kvRead(bucket, key string) op {
	return func(ctx context.Context, _ *testing.T, c client) error {
		kv, err := c.js.KeyValue(ctx, bucket)
		if err != nil {
			return err
		}
		// Direct gets may be answered by a follower that has not yet applied
		// a put made a moment ago (KV in an R3 cluster does not promise
		// read-your-writes), so a miss is retried for a moment.
		for {
			_, err := kv.Get(ctx, key)
			if err == nil {
				break
			}
			if !errors.Is(err, jetstream.ErrKeyNotFound) || ctx.Err() != nil {
				return fmt.Errorf("get %s: %w", key, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		keys, err := kv.ListKeys(ctx)
		if err != nil {
			return fmt.Errorf("keys: %w", err)
		}
		n := 0
		for range keys.Keys() {
			n++
		}
		if n == 0 {
			return fmt.Errorf("bucket %s lists no keys", bucket)
		}
		return nil
	}
}

// manifestFiles is the list every manifest case stores: small, since only
// the rights are tested, not the size.
var manifestFiles = []event.File{{Path: "a.fits", SizeBytes: 1, SHA256: strings.Repeat("ab", 32)}}

// manifestSum is a package checksum under which a manifest is stored.
func manifestSum(n int) string { return fmt.Sprintf("sha256:%064x", n) }

// objPut stores manifestFiles in MANIFESTS under checksum, as stagectl
// archive announce and the planner do.
func objPut(checksum string) op {
	return func(ctx context.Context, t *testing.T, c client) error {
		obs, err := manifest.Open(ctx, c.js)
		if err != nil {
			return err
		}
		_, err = manifest.Store(ctx, obs, checksum, manifestFiles, t.TempDir())
		return err
	}
}

// objGet fetches and verifies the manifest under checksum, as the stager
// and stagectl verify do.
func objGet(checksum string) op {
	return func(ctx context.Context, t *testing.T, c client) error {
		var buf bytes.Buffer
		ref, err := manifest.Encode(&buf, manifestFiles)
		if err != nil {
			return err
		}
		obs, err := manifest.Open(ctx, c.js)
		if err != nil {
			return err
		}
		// Like KV gets, a direct get may reach a follower that has not yet
		// applied a put made a moment ago.
		for {
			_, err = manifest.Fetch(ctx, obs, checksum, ref, t.TempDir())
			if err == nil || !strings.Contains(err.Error(), "not found") || ctx.Err() != nil {
				return err
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// changeStreams provisions with a configuration that differs from the
// deployed one, so EnsureStream has to update the streams.
func changeStreams(ctx context.Context, _ *testing.T, c client) error {
	return bus.Provision(ctx, c.js, bus.StreamConfig{Replicas: 3, EventsMaxAge: 400 * 24 * time.Hour})
}

// adminStream creates and deletes a stream of its own, so that running in
// parallel with the others it changes nothing they rely on.
func adminStream(ctx context.Context, _ *testing.T, c client) error {
	if _, err := c.js.CreateStream(ctx, jetstream.StreamConfig{Name: "ADMIN_TEST", Subjects: []string{"admin.test"}, Replicas: 3}); err != nil {
		return err
	}
	return c.js.DeleteStream(ctx, "ADMIN_TEST")
}

func provisionStager(site string) op {
	return func(ctx context.Context, _ *testing.T, c client) error {
		_, err := bus.ProvisionStager(ctx, c.js, site, bus.StagerConsumerConfig{AckWait: testAckWait})
		return err
	}
}

// changeStagersBucket asks for an R1 STAGERS bucket where an R3 one exists.
func changeStagersBucket(ctx context.Context, _ *testing.T, c client) error {
	_, err := heartbeat.Bucket(ctx, c.js, 1)
	return err
}

func subscribe(subj string) op {
	return func(ctx context.Context, _ *testing.T, c client) error {
		sub, err := c.nc.SubscribeSync(subj)
		if err != nil {
			return err
		}
		defer sub.Unsubscribe()
		if err := c.nc.FlushWithContext(ctx); err != nil {
			return err
		}
		// A refused subscription surfaces here (PermissionErrOnSubscribe).
		if _, err := sub.NextMsg(200 * time.Millisecond); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return err
		}
		return nil
	}
}

func apiCall(subj string) op {
	return func(ctx context.Context, _ *testing.T, c client) error {
		_, err := c.nc.RequestWithContext(ctx, subj, nil)
		return err
	}
}

func then(ops ...op) op {
	return func(ctx context.Context, t *testing.T, c client) error {
		for _, o := range ops {
			if err := o(ctx, t, c); err != nil {
				return err
			}
		}
		return nil
	}
}

// fixture is what setup left for the table to work on.
type fixture struct {
	// deadSeq is a request of cologne that a stager moves to its dead letters.
	deadSeq uint64
	// otherSeq is a request the planner tries to move to cologne's dead
	// letters. It is not deadSeq: the stager's case, running in parallel,
	// deletes that one, and the planner's would then fail on its read
	// before the refused publish.
	otherSeq uint64
}

// setup provisions as the deployment does: the admin runs ccat-provision's
// Provision, then the planner creates its own buckets. It seeds one message
// for every consumer the table pulls from.
func setup(t *testing.T, c *cluster) fixture {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	anc, ajs := connect(t, c, "admin")
	defer anc.Close()
	// R3 placement can fail until every node has joined the meta group.
	poll.Until(t, 20*time.Second, "the streams provisioned", func() error {
		return provision.Provision(ctx, ajs, []string{"cologne", "us"}, streams, zerolog.Nop())
	})
	// Short AckWait for the failover (see testAckWait).
	for _, site := range []string{"cologne", "us"} {
		if err := provisionStager(site)(ctx, t, client{anc, ajs}); err != nil {
			t.Fatal(err)
		}
	}
	nc, js := connect(t, c, "planner")
	defer nc.Close()
	if err := plannerBuckets(ctx, t, client{nc, js}); err != nil {
		t.Fatalf("planner creates its buckets: %v", err)
	}
	if err := kvPut(subject.CancelledBucket, "job-cancelled")(ctx, t, client{nc, js}); err != nil {
		t.Fatalf("planner records a cancelled job: %v", err)
	}
	if err := kvPut(subject.PlannerRefsBucket, "cologne.cologne-proc.pkg-1")(ctx, t, client{nc, js}); err != nil {
		t.Fatalf("planner records a reference: %v", err)
	}
	if _, err := bus.Publish(ctx, js, subject.Cleanup("cologne"), ev(t, "cleanup:cologne-proc:pkg-1:1", cleanupItem("cologne"))); err != nil {
		t.Fatal(err)
	}
	for _, site := range []string{"cologne", "us"} {
		id := "request:job-seed:pkg-" + site + ":1"
		if _, err := bus.Publish(ctx, js, subject.Request(site, "normal"), ev(t, id, request("job-seed", "pkg-"+site, site, "normal"))); err != nil {
			t.Fatal(err)
		}
	}
	ack, err := bus.Publish(ctx, js, subject.Request("cologne", "high"), ev(t, "request:job-dead:pkg-1:1", request("job-dead", "pkg-1", "cologne", "high")))
	if err != nil {
		t.Fatal(err)
	}
	if err := objPut(manifestSum(0))(ctx, t, client{nc, js}); err != nil {
		t.Fatalf("planner stores a manifest: %v", err)
	}
	unc, ujs := connect(t, c, "upstream")
	defer unc.Close()
	if _, err := bus.Publish(ctx, ujs, subject.Submit, ev(t, "submit-seed", event.Submit{JobID: "job-seed", Packages: []string{"pkg-1"}, Destination: event.Destination{Site: "cologne"}, RequestedBy: "test"})); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.Publish(ctx, ujs, subject.Archived, ev(t, "archived-seed", archived("pkg-seed"))); err != nil {
		t.Fatal(err)
	}
	// A live stager for the ledger to read.
	if err := kvPut(subject.StagerBucket, "cologne.i0")(ctx, t, client{anc, ajs}); err != nil {
		t.Fatal(err)
	}
	other, err := bus.Publish(ctx, js, subject.Request("us", "low"), ev(t, "request:job-dead:pkg-2:1", request("job-dead", "pkg-2", "us", "low")))
	if err != nil {
		t.Fatal(err)
	}
	return fixture{deadSeq: ack.Sequence, otherSeq: other.Sequence}
}

// streams is the clustered stream configuration (STREAM_REPLICAS=3).
var streams = bus.StreamConfig{Replicas: 3}

func plannerBuckets(ctx context.Context, _ *testing.T, c client) error {
	for _, b := range []string{subject.CatalogBucket, subject.PlannerJobsBucket, subject.PlannerInflightBucket, subject.PlannerReissuesBucket, subject.CancelledBucket, subject.PlannerRefsBucket} {
		if _, err := c.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: b, Replicas: 3, Storage: jetstream.FileStorage}); err != nil {
			return err
		}
	}
	return nil
}

// plannerStart does what the planner does at start-up.
func plannerStart(ctx context.Context, t *testing.T, c client) error {
	if err := bus.Provision(ctx, c.js, streams); err != nil {
		return err
	}
	for _, site := range []string{"cologne", "us"} {
		if err := provisionStager(site)(ctx, t, c); err != nil {
			return err
		}
	}
	if err := plannerBuckets(ctx, t, c); err != nil {
		return err
	}
	if err := bus.ProvisionCleanup(ctx, c.js, streams); err != nil {
		return err
	}
	for _, site := range []string{"cologne", "us"} {
		if _, err := c.js.CreateOrUpdateConsumer(ctx, subject.CleanupStream, bus.StagerCleanupConsumer(site)); err != nil {
			return err
		}
	}
	for _, cc := range []struct {
		stream string
		cfg    jetstream.ConsumerConfig
	}{
		{subject.ArchiveStream, jetstream.ConsumerConfig{Durable: subject.PlannerCatalog, AckPolicy: jetstream.AckExplicitPolicy}},
		{subject.EventsStream, jetstream.ConsumerConfig{Durable: subject.PlannerSubmit, FilterSubject: subject.Submit, AckPolicy: jetstream.AckExplicitPolicy}},
		{subject.EventsStream, jetstream.ConsumerConfig{Durable: subject.PlannerOutcomes, FilterSubjects: []string{subject.Done, subject.Failed, subject.Stalled}, AckPolicy: jetstream.AckExplicitPolicy}},
		{subject.EventsStream, jetstream.ConsumerConfig{Durable: subject.PlannerCancel, FilterSubject: subject.Cancel, AckPolicy: jetstream.AckExplicitPolicy}},
		{subject.EventsStream, jetstream.ConsumerConfig{Durable: subject.PlannerRelease, FilterSubject: subject.Release, AckPolicy: jetstream.AckExplicitPolicy}},
	} {
		if _, err := c.js.CreateOrUpdateConsumer(ctx, cc.stream, cc.cfg); err != nil {
			return err
		}
	}
	return nil
}

// stagerStart does what a stager of site does at start-up.
func stagerStart(site string) op {
	return func(ctx context.Context, t *testing.T, c client) error {
		if err := bus.Provision(ctx, c.js, streams); err != nil {
			return err
		}
		if err := bus.ProvisionDeadLetter(ctx, c.js, streams); err != nil {
			return err
		}
		if err := provisionStager(site)(ctx, t, c); err != nil {
			return err
		}
		if err := advisoryConsumer(site)(ctx, t, c); err != nil {
			return err
		}
		if err := bus.ProvisionCleanup(ctx, c.js, streams); err != nil {
			return err
		}
		if _, err := c.js.CreateOrUpdateConsumer(ctx, subject.CleanupStream, bus.StagerCleanupConsumer(site)); err != nil {
			return err
		}
		if _, err := heartbeat.Bucket(ctx, c.js, streams.Replicas); err != nil {
			return err
		}
		_, err := lease.Open(ctx, c.js, lease.Options{Instance: "i1", Replicas: streams.Replicas})
		return err
	}
}

// takeLease takes, confirms and releases a copy's lease, as a stager does
// around staging or deleting it.
func takeLease(site string) op {
	return func(ctx context.Context, _ *testing.T, c client) error {
		st, err := lease.Open(ctx, c.js, lease.Options{Instance: "i1", Replicas: streams.Replicas})
		if err != nil {
			return err
		}
		l, cur, err := st.TryAcquire(ctx, lease.Key(site, site+"-proc", "pkg-1"), lease.Holder{Purpose: lease.PurposeStage})
		if err != nil {
			return err
		}
		if l == nil {
			return fmt.Errorf("lease held by %+v", cur)
		}
		if err := l.Confirm(ctx); err != nil {
			return err
		}
		return l.Release(ctx)
	}
}

func advisoryConsumer(site string) op {
	return func(ctx context.Context, _ *testing.T, c client) error {
		_, err := c.js.CreateOrUpdateConsumer(ctx, subject.AdvisoryStream, bus.StagerAdvisoryConsumer(site))
		return err
	}
}

// moveToDead is the stager's dead-letter move: get the request by
// sequence, copy it to staging.dead.<site>, delete it from the work queue.
func moveToDead(site string, seq func() uint64) op {
	return func(ctx context.Context, _ *testing.T, c client) error {
		s, err := c.js.Stream(ctx, subject.RequestsStream)
		if err != nil {
			return err
		}
		raw, err := s.GetMsg(ctx, seq())
		if err != nil {
			return fmt.Errorf("get: %w", err)
		}
		m := nats.NewMsg(subject.Dead(site))
		m.Data = raw.Data
		m.Header.Set(jetstream.MsgIDHeader, "dead:"+raw.Header.Get(jetstream.MsgIDHeader))
		if _, err := c.js.PublishMsg(ctx, m); err != nil {
			return fmt.Errorf("publish: %w", err)
		}
		if err := s.DeleteMsg(ctx, seq()); err != nil {
			return fmt.Errorf("delete: %w", err)
		}
		return nil
	}
}

// ledgerStart does what the ledger does at start-up, then reads one message
// of each of its durables.
func ledgerStart(ctx context.Context, t *testing.T, c client) error {
	if err := bus.Provision(ctx, c.js, streams); err != nil {
		return err
	}
	for _, d := range []struct{ stream, durable, filter string }{
		{subject.EventsStream, subject.LedgerEvents, subject.EventsAll},
		{subject.ArchiveStream, subject.LedgerArchive, subject.ArchiveAll},
	} {
		if _, err := c.js.CreateOrUpdateConsumer(ctx, d.stream, jetstream.ConsumerConfig{
			Durable: d.durable, FilterSubject: d.filter, AckPolicy: jetstream.AckExplicitPolicy, DeliverPolicy: jetstream.DeliverAllPolicy,
		}); err != nil {
			return err
		}
		if err := fetchAck(d.stream, d.durable)(ctx, t, c); err != nil {
			return err
		}
	}
	return nil
}

// replay reads a stream from the start with an ordered consumer, as a
// ledger rebuild and `stagectl verify` do.
func replay(stream string) op {
	return func(ctx context.Context, _ *testing.T, c client) error {
		// In a busy cluster the stream lookup that creates the ordered
		// consumer, or the first pull on it, can find no responder for a
		// moment (seen about once in 20 runs on 2 cores, with every case in
		// parallel, at both steps); stagectl reads through a Messages
		// iterator, which pulls again by itself. Permissions are judged by
		// the violation, not by this error.
		for {
			cons, err := c.js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy})
			if err == nil {
				_, err = cons.Next(jetstream.FetchMaxWait(3 * time.Second))
			}
			if !errors.Is(err, nats.ErrNoResponders) || ctx.Err() != nil {
				return err
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

func cleanupItem(site string) event.Cleanup {
	return event.Cleanup{PackageID: "pkg-1", Site: site, Location: site + "-proc", RefsKey: site + "." + site + "-proc.pkg-1", RefsRevision: 1, EmptiedAt: time.Now().UTC()}
}

func archived(pkg string) event.PackageArchived {
	return event.PackageArchived{PackageID: pkg, Location: "cologne-lta", Key: "obs/" + pkg + ".tar", SizeBytes: 10240, Checksum: sum, Format: "tar",
		Files: []event.File{{Path: "a/b.fits", SizeBytes: 5, SHA256: strings.TrimPrefix(sum, "sha256:")}}}
}

type permCase struct {
	user string
	name string
	do   op
	// denied is the subject the server must refuse (or its start, when the
	// client generates the rest); "" means the operation must succeed
	// without any permissions violation.
	denied string
	// cleanup is a subject an allowed operation may be refused on its way
	// out without failing: an ordered consumer deleting itself, which the
	// server does anyway once the consumer is inactive.
	cleanup string
}

func permissionCases(fx fixture) []permCase {
	started := func(site string) func(*testing.T) event.Envelope {
		return func(t *testing.T) event.Envelope {
			return ev(t, "started:request:job-1:pkg-1:1:1:"+site, event.Started{Outcome: outcome(site)})
		}
	}
	done := func(site string) func(*testing.T) event.Envelope {
		return func(t *testing.T) event.Envelope {
			return ev(t, "done:request:job-1:pkg-1:1:"+site, event.Done{Outcome: outcome(site), Path: "/proc/pkg-1", SizeBytes: 10240, Files: 1, DurationSeconds: 1})
		}
	}
	failed := func(t *testing.T) event.Envelope {
		return ev(t, "failed:request:job-1:pkg-1:1:1", event.Failed{Outcome: outcome("cologne"), Reason: event.ReasonChecksumMismatch, Message: "x", Permanent: true})
	}
	stalled := func(t *testing.T) event.Envelope {
		return ev(t, "stalled:request:job-1:pkg-1:4:stalled", event.Stalled{JobID: "job-1", PackageID: "pkg-1", Site: "cologne",
			Location: "cologne-proc", RequestID: "request:job-1:pkg-1:4", Reason: event.ReasonStalled, Message: "lost", Reissues: 3})
	}
	progress := func(t *testing.T) event.Envelope {
		return ev(t, "progress:request:job-1:pkg-1:1:1:1", event.Progress{Outcome: outcome("cologne"), BytesDone: 1, BytesTotal: 2, RateBytesPerSecond: 1})
	}
	planned := func(t *testing.T) event.Envelope {
		return ev(t, "planned:job-1", event.Planned{JobID: "job-1", RequestedBy: "t", Priority: "normal", Destination: event.Target{Site: "cologne", Location: "cologne-proc"},
			Packages: []event.PlannedPackage{{PackageID: "pkg-1", Status: "scheduled", RequestID: "request:job-1:pkg-1:1", SizeBytes: 1, Checksum: sum,
				Source: &event.Source{Location: "cologne-lta", Site: "cologne", Storage: "disk", Key: "k.tar"}}}})
	}
	rejected := func(t *testing.T) event.Envelope {
		return ev(t, "rejected:s1", event.Rejected{JobID: "job-2", SubmitID: "s1", Reason: event.ReasonUnknownSite, Message: "no site"})
	}
	submit := func(t *testing.T) event.Envelope {
		return ev(t, "submit-"+t.Name(), event.Submit{JobID: "job-3", Packages: []string{"pkg-1"}, Destination: event.Destination{Site: "cologne"}, RequestedBy: "t"})
	}
	req := func(site, prio string) func(*testing.T) event.Envelope {
		return func(t *testing.T) event.Envelope {
			return ev(t, "request:job-p:pkg-1:1:"+site+prio, request("job-p", "pkg-1", site, prio))
		}
	}
	arch := func(t *testing.T) event.Envelope { return ev(t, "archived-"+t.Name(), archived("pkg-up")) }

	const rq, evs, ar = subject.RequestsStream, subject.EventsStream, subject.ArchiveStream
	cancelEv := func(t *testing.T) event.Envelope {
		return ev(t, "cancel:job-1", event.Cancel{JobID: "job-1", Reason: "test", RequestedBy: "op"})
	}
	releaseEv := func(t *testing.T) event.Envelope {
		return ev(t, "release:job-1", event.Release{JobID: "job-1", RequestedBy: "op"})
	}
	deadSeq := func() uint64 { return fx.deadSeq }
	otherSeq := func() uint64 { return fx.otherSeq }
	released := func(t *testing.T) event.Envelope {
		return ev(t, "released:cologne-proc:pkg-1:1", event.Released{PackageID: "pkg-1", Site: "cologne", Location: "cologne-proc", Path: "/proc/pkg-1", BytesFreed: 1, RefsRevision: 1})
	}
	cleanup := func(site string) func(*testing.T) event.Envelope {
		return func(t *testing.T) event.Envelope { return ev(t, "cleanup:"+site+"-proc:pkg-9:1", cleanupItem(site)) }
	}
	const cl = subject.CleanupStream
	return []permCase{
		// A stager of cologne: its site's work, its outcomes, its heartbeat.
		{"stager-cologne", "starts like a stager (streams, dead letters, durables, STAGERS)", stagerStart("cologne"), "", ""},
		{"stager-cologne", "fetches and acks from stager-cologne-normal", fetchAck(rq, "stager-cologne-normal"), "", ""},
		{"stager-cologne", "reads its consumer info", consumerInfo(rq, "stager-cologne-high"), "", ""},
		{"stager-cologne", "publishes staging.started", publish(subject.Started, started("cologne")), "", ""},
		{"stager-cologne", "publishes staging.done", publish(subject.Done, done("cologne")), "", ""},
		{"stager-cologne", "publishes staging.failed", publish(subject.Failed, failed), "", ""},
		{"stager-cologne", "publishes staging.progress", publish(subject.Progress, progress), "", ""},
		{"stager-cologne", "puts heartbeat cologne.i1", kvPut(subject.StagerBucket, "cologne.i1"), "", ""},
		{"stager-cologne", "reads its dead-letter advisories", rawNext(subject.AdvisoryStream, subject.StagerAdvisoryDurable("cologne")), "", ""},
		{"stager-cologne", "moves a request to staging.dead.cologne", moveToDead("cologne", deadSeq), "", ""},
		{"stager-cologne", "reads CANCELLED", kvGet(subject.CancelledBucket, "job-cancelled"), "", ""},
		{"stager-cologne", "writes CANCELLED", kvPut(subject.CancelledBucket, "job-x"), "$KV.CANCELLED.job-x", ""},
		{"stager-cologne", "fetches and acks from stager-cologne-cleanup", fetchAck(cl, subject.StagerCleanupDurable("cologne")), "", ""},
		{"stager-cologne", "publishes staging.released", publish(subject.Released, released), "", ""},
		{"stager-cologne", "reads a manifest", objGet(manifestSum(0)), "", ""},
		{"stager-cologne", "stores a manifest", objPut(manifestSum(2)), "$O.MANIFESTS.", ""},
		{"stager-cologne", "reads and claims its site's PLANNER_REFS entry", then(kvGet(subject.PlannerRefsBucket, "cologne.cologne-proc.pkg-1"), kvPut(subject.PlannerRefsBucket, "cologne.cologne-proc.pkg-2")), "", ""},
		{"stager-cologne", "takes, renews and releases a lease of its site's copy", takeLease("cologne"), "", ""},
		{"stager-cologne", "takes a lease of another site's copy", takeLease("us"), "$KV.STAGER_LEASES.us.us-proc.pkg-1", ""},
		{"stager-cologne", "claims another site's PLANNER_REFS entry", kvPut(subject.PlannerRefsBucket, "us.us-proc.pkg-1"), "$KV.PLANNER_REFS.us.us-proc.pkg-1", ""},
		{"stager-cologne", "fetches from stager-us-cleanup", rawNext(cl, subject.StagerCleanupDurable("us")), "$JS.API.CONSUMER.MSG.NEXT.STAGING_CLEANUP.stager-us-cleanup", ""},
		{"stager-cologne", "publishes deletion work", publish(subject.Cleanup("cologne"), cleanup("cologne")), "staging.cleanup.cologne", ""},
		{"stager-cologne", "fetches from stager-us-normal", rawNext(rq, "stager-us-normal"), "$JS.API.CONSUMER.MSG.NEXT.STAGING_REQUESTS.stager-us-normal", ""},
		{"stager-cologne", "reads another site's consumer", consumerInfo(rq, "stager-us-normal"), "$JS.API.CONSUMER.INFO.STAGING_REQUESTS.stager-us-normal", ""},
		{"stager-cologne", "acks another site's message", apiCall("$JS.ACK.STAGING_REQUESTS.stager-us-normal.1.1.1.1.0"), "$JS.ACK.STAGING_REQUESTS.stager-us-normal.1.1.1.1.0", ""},
		{"stager-cologne", "provisions another site's durables", provisionStager("us"), "$JS.API.CONSUMER.CREATE.STAGING_REQUESTS.stager-us-high.staging.request.us.high", ""},
		{"stager-cologne", "creates another site's advisory durable", advisoryConsumer("us"), "$JS.API.CONSUMER.CREATE.STAGING_ADVISORIES.stager-us-dead", ""},
		{"stager-cologne", "publishes staging.planned", publish(subject.Planned, planned), "staging.planned", ""},
		{"stager-cologne", "publishes staging.request.cologne.normal", publish(subject.Request("cologne", "normal"), req("cologne", "normal")), "staging.request.cologne.normal", ""},
		{"stager-cologne", "publishes staging.request.us.high", publish(subject.Request("us", "high"), req("us", "high")), "staging.request.us.high", ""},
		{"stager-cologne", "publishes staging.submit", publish(subject.Submit, submit), "staging.submit", ""},
		{"stager-cologne", "publishes staging.dead.us", apiCall("staging.dead.us"), "staging.dead.us", ""},
		{"stager-cologne", "puts heartbeat us.i1", kvPut(subject.StagerBucket, "us.i1"), "$KV.STAGERS.us.i1", ""},
		{"stager-cologne", "changes the streams", changeStreams, "$JS.API.STREAM.UPDATE.ARCHIVE", ""},
		{"stager-cologne", "changes the STAGERS bucket", changeStagersBucket, "$JS.API.STREAM.UPDATE.KV_STAGERS", ""},
		{"stager-cologne", "deletes its durable", apiCall("$JS.API.CONSUMER.DELETE.STAGING_REQUESTS.stager-cologne-normal"), "$JS.API.CONSUMER.DELETE.STAGING_REQUESTS.stager-cologne-normal", ""},
		{"stager-cologne", "purges the work queue", apiCall("$JS.API.STREAM.PURGE.STAGING_REQUESTS"), "$JS.API.STREAM.PURGE.STAGING_REQUESTS", ""},
		{"stager-cologne", "subscribes to staging.request.>", subscribe("staging.request.>"), "staging.request.>", ""},
		{"stager-us", "starts like a stager", stagerStart("us"), "", ""},
		{"stager-us", "fetches and acks from stager-us-normal", fetchAck(rq, "stager-us-normal"), "", ""},
		{"stager-us", "publishes staging.done", publish(subject.Done, done("us")), "", ""},
		{"stager-us", "puts heartbeat cologne.i9", kvPut(subject.StagerBucket, "cologne.i9"), "$KV.STAGERS.cologne.i9", ""},
		{"stager-us", "fetches from stager-cologne-high", rawNext(rq, "stager-cologne-high"), "$JS.API.CONSUMER.MSG.NEXT.STAGING_REQUESTS.stager-cologne-high", ""},
		{"stager-us", "reads cologne's dead-letter advisories", rawNext(subject.AdvisoryStream, subject.StagerAdvisoryDurable("cologne")), "$JS.API.CONSUMER.MSG.NEXT.STAGING_ADVISORIES.stager-cologne-dead", ""},

		// The planner: provisions, plans, hands out work; no outcomes.
		{"planner", "starts like the planner (streams, every site's durables, buckets, own durables) and consumes planner-submit", then(plannerStart, fetchAck(evs, subject.PlannerSubmit)), "", ""},
		{"planner", "publishes staging.request.cologne.normal", publish(subject.Request("cologne", "normal"), req("cologne", "normal")), "", ""},
		{"planner", "publishes staging.planned", publish(subject.Planned, planned), "", ""},
		{"planner", "publishes staging.rejected", publish(subject.Rejected, rejected), "", ""},
		{"planner", "writes and reads CATALOG", then(kvPut(subject.CatalogBucket, "pkg-1"), kvRead(subject.CatalogBucket, "pkg-1")), "", ""},
		{"planner", "writes and reads PLANNER_JOBS", then(kvPut(subject.PlannerJobsBucket, "job-1"), kvRead(subject.PlannerJobsBucket, "job-1")), "", ""},
		{"planner", "writes and reads PLANNER_INFLIGHT", then(kvPut(subject.PlannerInflightBucket, "loc.pkg-1"), kvRead(subject.PlannerInflightBucket, "loc.pkg-1")), "", ""},
		{"planner", "writes and reads PLANNER_REISSUES", then(kvPut(subject.PlannerReissuesBucket, "job-1.pkg-1"), kvRead(subject.PlannerReissuesBucket, "job-1.pkg-1")), "", ""},
		{"planner", "writes and reads CANCELLED", then(kvPut(subject.CancelledBucket, "job-1"), kvRead(subject.CancelledBucket, "job-1")), "", ""},
		{"planner", "publishes staging.stalled", publish(subject.Stalled, stalled), "", ""},
		{"planner", "writes and reads PLANNER_REFS", then(kvPut(subject.PlannerRefsBucket, "us.us-proc.pkg-1"), kvRead(subject.PlannerRefsBucket, "us.us-proc.pkg-1")), "", ""},
		{"planner", "stores and reads a manifest in MANIFESTS", then(objPut(manifestSum(1)), objGet(manifestSum(1))), "", ""},
		{"planner", "publishes staging.cleanup.us", publish(subject.Cleanup("us"), cleanup("us")), "", ""},
		{"planner", "publishes staging.released", publish(subject.Released, released), "staging.released", ""},
		{"planner", "reads a site's backlog", consumerInfo(rq, "stager-us-high"), "", ""},
		{"planner", "publishes staging.done", publish(subject.Done, done("cologne")), "staging.done", ""},
		{"planner", "publishes staging.failed", publish(subject.Failed, failed), "staging.failed", ""},
		{"planner", "publishes staging.started", publish(subject.Started, started("cologne")), "staging.started", ""},
		{"planner", "publishes staging.progress", publish(subject.Progress, progress), "staging.progress", ""},
		{"planner", "publishes staging.submit", publish(subject.Submit, submit), "staging.submit", ""},
		{"planner", "fetches a site's work", rawNext(rq, "stager-cologne-normal"), "$JS.API.CONSUMER.MSG.NEXT.STAGING_REQUESTS.stager-cologne-normal", ""},
		{"planner", "puts a stager heartbeat", kvPut(subject.StagerBucket, "cologne.fake"), "$KV.STAGERS.cologne.fake", ""},
		{"planner", "changes the STAGERS bucket", changeStagersBucket, "$JS.API.STREAM.UPDATE.KV_STAGERS", ""},
		{"planner", "deletes a stream", apiCall("$JS.API.STREAM.DELETE.STAGING_EVENTS"), "$JS.API.STREAM.DELETE.STAGING_EVENTS", ""},
		// It may get a request (the reconciler looks for lost ones), but not move or delete it.
		{"planner", "moves a dead letter", moveToDead("cologne", otherSeq), "staging.dead.cologne", ""},

		// The ledger: reads everything it projects; publishes nothing.
		{"ledger", "starts like the ledger and consumes ledger-events and ledger-archive", ledgerStart, "", ""},
		{"ledger", "replays STAGING_EVENTS (rebuild)", replay(evs), "", "$JS.API.CONSUMER.DELETE.STAGING_EVENTS."},
		{"ledger", "reads stager backlogs", then(consumerInfo(rq, "stager-us-normal"), consumerInfo(rq, "stager-cologne-low")), "", ""},
		{"ledger", "reads live stagers", kvRead(subject.StagerBucket, "cologne.i0"), "", ""},
		{"ledger", "reads stream info", streamInfo(ar, evs, rq), "", ""},
		{"ledger", "publishes staging.done", publish(subject.Done, done("cologne")), "staging.done", ""},
		{"ledger", "publishes staging.planned", publish(subject.Planned, planned), "staging.planned", ""},
		{"ledger", "publishes staging.submit", publish(subject.Submit, submit), "staging.submit", ""},
		{"ledger", "publishes archive.package.archived", publish(subject.Archived, arch), "archive.package.archived", ""},
		{"ledger", "publishes staging.request.us.normal", publish(subject.Request("us", "normal"), req("us", "normal")), "staging.request.us.normal", ""},
		{"ledger", "puts a stager heartbeat", kvPut(subject.StagerBucket, "cologne.i0"), "$KV.STAGERS.cologne.i0", ""},
		{"ledger", "fetches a site's work", rawNext(rq, "stager-cologne-normal"), "$JS.API.CONSUMER.MSG.NEXT.STAGING_REQUESTS.stager-cologne-normal", ""},
		{"ledger", "changes the streams", changeStreams, "$JS.API.STREAM.UPDATE.ARCHIVE", ""},
		{"ledger", "reads a manifest", objGet(manifestSum(0)), "$JS.API.DIRECT.GET.OBJ_MANIFESTS", ""},

		// Upstream clients: submit and announce, nothing else.
		{"upstream", "publishes staging.submit", publish(subject.Submit, submit), "", ""},
		{"upstream", "publishes archive.package.archived", publish(subject.Archived, arch), "", ""},
		{"upstream", "stores and reads a manifest (announce by reference)", then(objPut(manifestSum(3)), objGet(manifestSum(3))), "", ""},
		{"upstream", "publishes staging.done", publish(subject.Done, done("cologne")), "staging.done", ""},
		{"upstream", "publishes staging.planned", publish(subject.Planned, planned), "staging.planned", ""},
		{"upstream", "publishes staging.cancel", publish(subject.Cancel, cancelEv), "staging.cancel", ""},
		{"upstream", "publishes staging.request.cologne.high", publish(subject.Request("cologne", "high"), req("cologne", "high")), "staging.request.cologne.high", ""},
		{"upstream", "reads stream info", streamInfo(evs), "$JS.API.STREAM.INFO.STAGING_EVENTS", ""},
		{"upstream", "fetches ledger-events", rawNext(evs, subject.LedgerEvents), "$JS.API.CONSUMER.MSG.NEXT.STAGING_EVENTS.ledger-events", ""},
		{"upstream", "subscribes to staging.>", subscribe("staging.>"), "staging.>", ""},
		{"upstream", "reads CATALOG", kvRead(subject.CatalogBucket, "pkg-1"), "$JS.API.STREAM.INFO.KV_CATALOG", ""},

		// Operators (stagectl): upstream's rights, control events, archive history.
		{"operator", "publishes staging.submit", publish(subject.Submit, submit), "", ""},
		{"operator", "publishes staging.cancel", publish(subject.Cancel, cancelEv), "", ""},
		{"operator", "publishes staging.release", publish(subject.Release, releaseEv), "", ""},
		{"operator", "stores and reads a manifest (announce, verify)", then(objPut(manifestSum(4)), objGet(manifestSum(4))), "", ""},
		{"operator", "replays ARCHIVE (stagectl verify)", replay(ar), "", "$JS.API.CONSUMER.DELETE.ARCHIVE."},
		{"operator", "publishes staging.done", publish(subject.Done, done("cologne")), "staging.done", ""},
		{"operator", "replays STAGING_EVENTS", replay(evs), "$JS.API.CONSUMER.CREATE.STAGING_EVENTS", ""},

		// The admin can do anything.
		{"admin", "publishes staging.done and reads streams", then(publish(subject.Done, done("us")), streamInfo(ar, evs, rq)), "", ""},
		{"admin", "creates and deletes a stream", adminStream, "", ""},
	}
}

// run executes o as user and reports its error and the first permissions
// violation the server sent. A refused request gets no reply, so the
// violation, not a timeout, ends a denied case.
func run(t *testing.T, c *cluster, user string, o op) (error, error) {
	violations := make(chan error, 16)
	nc, js := connect(t, c, user, nats.PermissionErrOnSubscribe(true), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		if errors.Is(err, nats.ErrPermissionViolation) {
			select {
			case violations <- err:
			default:
			}
		}
	}))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var violation error
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case violation = <-violations:
			cancel()
		case <-stop:
		}
	}()
	err := o(ctx, t, client{nc, js})
	if err == nil {
		// A violation arrives before the PONG of a flush; give its async
		// handler a moment to run.
		if ferr := nc.FlushTimeout(5 * time.Second); ferr != nil {
			err = ferr
		}
		select {
		case <-watched:
		case <-time.After(200 * time.Millisecond):
		}
	}
	close(stop)
	<-watched
	if violation == nil {
		if le := nc.LastError(); errors.Is(le, nats.ErrPermissionViolation) {
			violation = le
		}
	}
	return err, violation
}

func TestCluster(t *testing.T) {
	t.Parallel()
	c := startCluster(t)
	fx := setup(t, c)

	t.Run("permissions", func(t *testing.T) {
		for _, tc := range permissionCases(fx) {
			t.Run(tc.user+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				err, violation := run(t, c, tc.user, tc.do)
				if tc.denied == "" {
					if violation != nil && tc.cleanup != "" && strings.Contains(violation.Error(), `"`+tc.cleanup) {
						t.Logf("tolerated on the way out: %v", violation)
						violation = nil
					}
					if err != nil || violation != nil {
						t.Fatalf("want allowed; err = %v, violation = %v", err, violation)
					}
					return
				}
				if violation == nil {
					t.Fatalf("want refused on %q; err = %v and no permissions violation", tc.denied, err)
				}
				// denied is the refused subject or, for a generated consumer name, its prefix.
				if !strings.Contains(violation.Error(), `"`+tc.denied) {
					t.Errorf("refused on the wrong subject: %v, want %q", violation, tc.denied)
				}
				if err == nil {
					t.Errorf("operation succeeded despite %v", violation)
				}
			})
		}
	})

	t.Run("authentication", func(t *testing.T) {
		for _, tc := range []struct{ name, url string }{
			{"wrong password", fmt.Sprintf("nats://planner:wrong@127.0.0.1:%d", c.nodes[0].clientPort)},
			{"unknown user", fmt.Sprintf("nats://mallory:x@127.0.0.1:%d", c.nodes[1].clientPort)},
			{"no credentials", fmt.Sprintf("nats://127.0.0.1:%d", c.nodes[2].clientPort)},
		} {
			t.Run(tc.name, func(t *testing.T) {
				nc, err := nats.Connect(tc.url, nats.MaxReconnects(0))
				if err == nil {
					nc.Close()
					t.Fatal("connected")
				}
				if !errors.Is(err, nats.ErrAuthorization) {
					t.Errorf("err = %v, want %v", err, nats.ErrAuthorization)
				}
			})
		}
	})

	t.Run("leader failover", func(t *testing.T) { testFailover(t, c) })
}
