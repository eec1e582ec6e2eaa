package chaos

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pgCluster is a private PostgreSQL server (initdb into a temp dir, its own
// port and socket dir) that a scenario may stop, crash and start again on
// the same data, which the machine's shared server must never suffer.
type pgCluster struct {
	t    *testing.T
	bin  string // the server's bin dir (initdb, pg_ctl)
	dir  string // socket dir and log; the data dir is dir/data
	port int
	// owner runs the server: postgres when the test runs as root (the
	// server refuses to run as root), else the current user.
	owner string
}

// pgBinDir finds the newest installed server's bin dir.
func pgBinDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_ctl")
	if len(dirs) == 0 {
		if p, err := exec.LookPath("pg_ctl"); err == nil {
			return filepath.Dir(p), nil
		}
		return "", errors.New("no PostgreSQL server installed (no /usr/lib/postgresql/*/bin/pg_ctl, no pg_ctl in PATH)")
	}
	sort.Slice(dirs, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(dirs[i]))))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(dirs[j]))))
		return vi < vj
	})
	return filepath.Dir(dirs[len(dirs)-1]), nil
}

// startPG creates and starts a private cluster; it is stopped (immediate
// mode) and its files removed when the test ends.
func startPG(t *testing.T) *pgCluster {
	t.Helper()
	bin, err := pgBinDir()
	if err != nil {
		t.Fatal(err)
	}
	// Not t.TempDir: that is 0700 and owned by root, and the server runs as
	// postgres. /tmp itself is world-traversable.
	dir, err := os.MkdirTemp("", "ccat-chaos-pg-")
	if err != nil {
		t.Fatal(err)
	}
	c := &pgCluster{t: t, bin: bin, dir: dir, port: freePort(t)}
	t.Cleanup(func() {
		if err := c.ctl("stop", "-m", "immediate", "-w", "-t", "30"); err != nil && c.running() {
			t.Errorf("stop the private PostgreSQL: %v", err)
		}
		if t.Failed() {
			t.Logf("--- tail of postgres:\n%s", c.tail(4000))
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove the private PostgreSQL's files: %v", err)
		}
	})
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		c.owner = "postgres"
		u, err := user.Lookup(c.owner)
		if err != nil {
			t.Fatalf("running as root, the private PostgreSQL needs the postgres user: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	if out, err := c.run(filepath.Join(bin, "initdb"), "-D", c.data(), "-A", "trust", "-U", "postgres", "-E", "UTF8",
		"--no-sync"); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	if err := c.start(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("private PostgreSQL on 127.0.0.1:%d (%s) ready in %s", c.port, dir, time.Since(start).Round(time.Millisecond))
	return c
}

func (c *pgCluster) data() string    { return filepath.Join(c.dir, "data") }
func (c *pgCluster) logFile() string { return filepath.Join(c.dir, "log") }

// url is a database on the cluster; the ledger creates it when missing.
func (c *pgCluster) url(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.port, db)
}

// run runs a server tool as the cluster's owner.
func (c *pgCluster) run(name string, args ...string) ([]byte, error) {
	var cmd *exec.Cmd
	if c.owner != "" {
		q := make([]string, 0, len(args)+1)
		for _, a := range append([]string{name}, args...) {
			q = append(q, "'"+strings.ReplaceAll(a, "'", `'\''`)+"'")
		}
		cmd = exec.Command("su", c.owner, "-c", strings.Join(q, " "))
	} else {
		cmd = exec.Command(name, args...)
	}
	// pg_ctl start is always given -l: a server left writing to this pipe
	// would keep Run waiting for its end.
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.Bytes(), err
}

func (c *pgCluster) ctl(args ...string) error {
	out, err := c.run(filepath.Join(c.bin, "pg_ctl"), append([]string{"-D", c.data()}, args...)...)
	if err != nil {
		return fmt.Errorf("pg_ctl %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// start starts the server on its data dir and waits until it accepts
// connections. After a crash the old server's backends may still hold the
// shared memory for a moment, and crash recovery takes a while: it tries
// again until within is over. fsync is off: the faults are process
// crashes, after which the kernel still has every write, and the shared
// 2-core machine is spared the flushes.
func (c *pgCluster) start(within time.Duration) error {
	deadline := time.Now().Add(within)
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50", c.port, c.dir)
	for {
		err := c.ctl("start", "-w", "-t", "30", "-l", c.logFile(), "-o", opts)
		if err == nil {
			waitTCP(c.t, fmt.Sprintf("127.0.0.1:%d", c.port), 10*time.Second)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("start the private PostgreSQL: %w\n%s", err, c.tail(2000))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// stop shuts the server down in mode (fast: roll back and disconnect
// clients, checkpoint; immediate: quit at once, crash recovery on start).
func (c *pgCluster) stop(mode string) error {
	return c.ctl("stop", "-m", mode, "-w", "-t", "30")
}

// postmaster is the server's pid from postmaster.pid.
func (c *pgCluster) postmaster() (int, error) {
	b, err := os.ReadFile(filepath.Join(c.data(), "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return strconv.Atoi(strings.TrimSpace(line))
}

func (c *pgCluster) running() bool {
	pid, err := c.postmaster()
	return err == nil && alive(pid)
}

// kill9 crashes the server: SIGKILL to the postmaster, then waits until it
// and the backends it had (which notice their parent's death and quit)
// are gone.
func (c *pgCluster) kill9() error {
	pid, err := c.postmaster()
	if err != nil {
		return fmt.Errorf("postmaster pid: %w", err)
	}
	kids := children(pid)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill -9 %d: %w", pid, err)
	}
	// Until init has reaped them, too: a new postmaster refuses to start
	// while the pid in postmaster.pid exists, even as a zombie.
	deadline := time.Now().Add(30 * time.Second)
	for _, p := range append([]int{pid}, kids...) {
		for exists(p) {
			if time.Now().After(deadline) {
				return fmt.Errorf("postgres process %d still there 30 s after kill -9 of the postmaster", p)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

// alive reports whether pid is a process that has not exited (a zombie
// counts as gone).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || (s[i+2] != 'Z' && s[i+2] != 'X')
}

func exists(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return err == nil
}

// children lists the processes whose parent is pid.
func children(pid int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, p)
		}
	}
	return out
}

// tail returns the last n bytes of the server's log.
func (c *pgCluster) tail(n int64) string {
	f, err := os.Open(c.logFile())
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	st, _ := f.Stat()
	if st.Size() > n {
		f.Seek(st.Size()-n, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// restartPostgres: stop the ledger's PostgreSQL and start it again on the
// same data dir while jobs flow: a fast shutdown, an immediate one (crash
// recovery on start) or kill -9 of the postmaster, each once per three
// trials in random order. One job is submitted before the fault and one
// while the server is down, so events reach the ledger while it cannot
// store them.
func restartPostgres(t *testing.T, s *system, trials int, rng *rand.Rand) string {
	pkgs := s.archive(trials*6, 4, 256<<10)
	modes := []string{"fast", "immediate", "kill9"}
	count := map[string]int{}
	var down, longest time.Duration
	for i := range trials {
		if err := s.submit(t.Context(), fmt.Sprintf("pr-%03d-0", i), pkgs[6*i:6*i+3]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(jitter(rng, 50*time.Millisecond, 600*time.Millisecond))
		// Every mode once per round of three, in random order.
		if i%len(modes) == 0 {
			rng.Shuffle(len(modes), func(a, b int) { modes[a], modes[b] = modes[b], modes[a] })
		}
		mode := modes[i%len(modes)]
		count[mode]++
		start := time.Now()
		var err error
		if mode == "kill9" {
			err = s.pg.kill9()
		} else {
			err = s.pg.stop(mode)
		}
		if err != nil {
			t.Fatalf("trial %d (%s): %v", i, mode, err)
		}
		if err := s.submit(t.Context(), fmt.Sprintf("pr-%03d-1", i), pkgs[6*i+3:6*i+6]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(jitter(rng, 500*time.Millisecond, 2*time.Second))
		if err := s.pg.start(60 * time.Second); err != nil {
			t.Fatalf("trial %d: %v", i, err)
		}
		d := time.Since(start)
		down += d
		longest = max(longest, d)
	}
	return fmt.Sprintf("database down %.1f s in all, at most %.1f s at a time (%d fast stops, %d immediate stops, %d kill -9 of the postmaster)",
		down.Seconds(), longest.Seconds(), count["fast"], count["immediate"], count["kill9"])
}

// failedBatches counts the batches the ledger handed back because the
// database failed them, with the longest delay it asked for (the ledger
// backs off by its failures in a row, up to 5 s: this is what bounds the
// time to recover), and the crash recoveries in the
// server's log (evidence that the immediate stops and kills crashed it).
func failedBatches(s *system) string {
	b, err := os.ReadFile(s.ledger.log)
	if err != nil {
		return err.Error()
	}
	pg, err := os.ReadFile(s.pg.logFile())
	if err != nil {
		return err.Error()
	}
	n, longest := 0, 0.0
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.Contains(line, `"message":"apply batch failed; handing it back"`) {
			continue
		}
		n++
		var v struct {
			RetryIn float64 `json:"retry_in"` // milliseconds
		}
		if json.Unmarshal([]byte(line), &v) == nil {
			longest = max(longest, v.RetryIn)
		}
	}
	return fmt.Sprintf("%d ledger batches failed and were handed back, for at most %.0f s; %d crash recoveries in the server's log",
		n, longest/1000, strings.Count(string(pg), "automatic recovery in progress"))
}
