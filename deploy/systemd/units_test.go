package systemdunits

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ccatobs/ccat-staging/shared/topology"
)

// unit is a parsed unit file: section -> key -> values in order. systemd
// keys may repeat (SystemCallFilter=, EnvironmentFile=), and an empty
// assignment resets a list, which is kept as "".
type unit map[string]map[string][]string

func (u unit) get(section, key string) []string { return u[section][key] }

func (u unit) last(section, key string) string {
	v := u[section][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

func parseUnit(t *testing.T, path string) unit {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" || strings.HasSuffix(line, `\`) {
				t.Fatalf("%s:%d: not a key=value in a section: %q", path, n, line)
			}
			k = strings.TrimSpace(k)
			u[section][k] = append(u[section][k], strings.TrimSpace(v))
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

// hardening every unit must carry, with the value it must have.
var hardening = map[string]string{
	"NoNewPrivileges":         "yes",
	"ProtectSystem":           "strict",
	"ProtectHome":             "yes",
	"PrivateTmp":              "yes",
	"PrivateDevices":          "yes",
	"ProtectKernelTunables":   "yes",
	"ProtectKernelModules":    "yes",
	"ProtectKernelLogs":       "yes",
	"ProtectControlGroups":    "yes",
	"RestrictNamespaces":      "yes",
	"RestrictRealtime":        "yes",
	"RestrictSUIDSGID":        "yes",
	"LockPersonality":         "yes",
	"MemoryDenyWriteExecute":  "yes",
	"CapabilityBoundingSet":   "",
	"AmbientCapabilities":     "",
	"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
	"SystemCallArchitectures": "native",
}

func TestUnitsAreHardened(t *testing.T) {
	for _, tc := range []struct {
		file     string
		dynamic  bool     // DynamicUser=yes, else a named non-root User=
		envFiles []string // EnvironmentFile= in order
		// writable is ReadWritePaths= of the unit itself; a stager's come
		// from its site's drop-in.
		writable []string
	}{
		{"ccat-planner.service", true, []string{"/etc/ccat-staging/common.env", "/etc/ccat-staging/planner.env"}, nil},
		{"ccat-ledger.service", true, []string{"/etc/ccat-staging/common.env", "/etc/ccat-staging/ledger.env"}, nil},
		{"ccat-stager@.service", false, []string{"/etc/ccat-staging/common.env", "/etc/ccat-staging/stager.env", "/etc/ccat-staging/stager-%i.env"}, []string{""}},
		{"ccat-provision.service", true, []string{"/etc/ccat-staging/common.env", "/etc/ccat-staging/provision.env"}, nil},
		{"nats-server.service", false, []string{"/etc/nats/node.env"}, []string{"/var/lib/nats"}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			u := parseUnit(t, tc.file)
			for k, want := range hardening {
				if got := u.get("Service", k); len(got) == 0 || u.last("Service", k) != want {
					t.Errorf("%s=%q, want %q", k, got, want)
				}
			}
			if filters := u.get("Service", "SystemCallFilter"); !slices.Contains(filters, "@system-service") || !slices.ContainsFunc(filters, func(f string) bool {
				return strings.HasPrefix(f, "~") && strings.Contains(f, "@privileged")
			}) {
				t.Errorf("SystemCallFilter=%q, want @system-service and a ~@privileged deny list", filters)
			}
			if u.last("Service", "MemoryMax") == "" {
				t.Error("no MemoryMax")
			}
			if tc.dynamic {
				if u.last("Service", "DynamicUser") != "yes" {
					t.Error("want DynamicUser=yes")
				}
			} else if user := u.last("Service", "User"); user == "" || user == "root" || user == "0" {
				t.Errorf("User=%q, want a service user", user)
			}
			if got := u.get("Service", "EnvironmentFile"); !slices.Equal(got, tc.envFiles) {
				t.Errorf("EnvironmentFile=%q, want %q", got, tc.envFiles)
			}
			if got := u.get("Service", "ReadWritePaths"); !slices.Equal(got, tc.writable) {
				t.Errorf("ReadWritePaths=%q, want %q", got, tc.writable)
			}
			if exec := u.last("Service", "ExecStart"); !filepath.IsAbs(strings.Fields(exec + " x")[0]) {
				t.Errorf("ExecStart=%q is not an absolute path", exec)
			}
			if u.last("Service", "Type") != "oneshot" && u.last("Service", "Restart") != "on-failure" {
				t.Error("a long-running service must restart on failure")
			}
			if u.last("Install", "WantedBy") != "multi-user.target" {
				t.Error("not WantedBy=multi-user.target")
			}
		})
	}
}

// Every site of the example topology has a drop-in that opens exactly its
// disk processing roots for writing, and an env file with its own NATS user.
func TestStagerSitesMatchTopology(t *testing.T) {
	topo, err := topology.Load("../topology.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, site := range topo.SiteNames() {
		t.Run(site, func(t *testing.T) {
			var want []string
			for _, l := range topo.Processing(site) {
				if l.Storage == "disk" {
					want = append(want, l.Path)
				}
			}
			u := parseUnit(t, filepath.Join("ccat-stager@"+site+".service.d", "paths.conf"))
			var got []string
			for _, v := range u.get("Service", "ReadWritePaths") {
				got = append(got, strings.Fields(v)...)
			}
			slices.Sort(got)
			slices.Sort(want)
			if len(want) == 0 || !slices.Equal(got, want) {
				t.Errorf("ReadWritePaths %q, want the processing roots %q", got, want)
			}
			env := readEnv(t, filepath.Join("env", "stager-"+site+".env"))
			for _, u := range strings.Split(env["NATS_URL"], ",") {
				if !strings.HasPrefix(u, "nats://stager-"+site+":") {
					t.Errorf("NATS_URL entry %q does not use user stager-%s", u, site)
				}
			}
		})
	}
}

func readEnv(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for n, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.ContainsAny(k, " \t") || strings.HasPrefix(v, `"`) {
			t.Fatalf("%s:%d: want KEY=value (no quotes, no spaces in the key): %q", path, n+1, line)
		}
		env[k] = v
	}
	return env
}

// The examples carry placeholders, never secrets: every password, token and
// key is CHANGE-ME, also inside URLs.
func TestEnvFilesHoldNoSecrets(t *testing.T) {
	files, _ := filepath.Glob("env/*.env")
	files = append(files, "../nats/node.env.example")
	if len(files) < 6 {
		t.Fatalf("found only %q", files)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			for k, v := range readEnv(t, f) {
				secret := strings.Contains(k, "PASSWORD") || strings.Contains(k, "TOKEN") || strings.Contains(k, "SECRET") || strings.HasSuffix(k, "KEY_ID")
				if secret && v != "CHANGE-ME" {
					t.Errorf("%s=%q: an example must hold CHANGE-ME", k, v)
				}
				for _, u := range strings.Split(v, ",") {
					if _, rest, ok := strings.Cut(u, "://"); ok {
						if userinfo, _, ok := strings.Cut(rest, "@"); ok {
							if _, pw, _ := strings.Cut(userinfo, ":"); pw != "CHANGE-ME" {
								t.Errorf("%s: URL %q carries a password other than CHANGE-ME", k, u)
							}
						}
					}
				}
			}
		})
	}
}

// systemd itself reads the units: unknown keys, bad values and sections
// are what it reports. The binaries do not exist here, so ExecStart points
// at this test binary; the stager is instantiated for each example site so
// that its drop-in is read too.
func TestSystemdAnalyzeVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not installed: the INI checks above are all there is")
		return
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	units, _ := filepath.Glob("*.service")
	var args []string
	for _, f := range units {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "ExecStart=") {
				line = "ExecStart=" + self
			}
			out = append(out, line)
		}
		names := []string{f}
		if f == "ccat-stager@.service" {
			names = []string{"ccat-stager@cologne.service", "ccat-stager@us.service"}
		}
		for _, name := range names {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(strings.Join(out, "\n")), 0o644); err != nil {
				t.Fatal(err)
			}
			args = append(args, filepath.Join(dir, name))
		}
	}
	dropins, _ := filepath.Glob("*.service.d")
	for _, d := range dropins {
		if err := os.CopyFS(filepath.Join(dir, d), os.DirFS(d)); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.CommandContext(t.Context(), sa, append([]string{"verify", "--man=no"}, args...)...)
	// The trailing ':' keeps the built-in search path after dir.
	cmd.Env = append(os.Environ(), "SYSTEMD_UNIT_PATH="+dir+":")
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
