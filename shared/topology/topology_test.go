package topology_test

import (
	"io/fs"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/shared/topology"
)

// Retention: absent means the default; an explicit 0s means at once, which
// a time.Duration alone cannot tell apart from absent.
func TestKeepFor(t *testing.T) {
	tests := []struct {
		name, retention string
		want            time.Duration
	}{
		{"absent", "", topology.DefaultRetention},
		{"zero", "retention: 0s", 0},
		{"a week", "retention: 168h", 168 * time.Hour},
		{"an hour", "retention: 1h", time.Hour},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			doc := "sites:\n  - name: s\n    locations:\n      - name: p\n        type: processing\n        storage: disk\n        path: /p\n"
			if tc.retention != "" {
				doc += "        " + tc.retention + "\n"
			}
			topo, err := topology.Parse([]byte(doc))
			if err != nil {
				t.Fatal(err)
			}
			l, ok := topo.Location("p")
			if !ok {
				t.Fatal("no location p")
			}
			if got := l.KeepFor(); got != tc.want {
				t.Errorf("KeepFor = %v, want %v", got, tc.want)
			}
		})
	}
}

// Modes are octal as chmod reads them, quoted or not; modes that lock the
// stager out or carry setuid/sticky are refused.
func TestPerms(t *testing.T) {
	tests := []struct {
		name, extra    string
		dir, file      fs.FileMode
		group, wantErr string
	}{
		{"absent", "", 0, 0, "", ""},
		{"bare numbers", "dir_mode: 2750\n        file_mode: 0640\n        group: proc", fs.ModeSetgid | 0o750, 0o640, "proc", ""},
		{"quoted and 0o", "dir_mode: \"0o755\"\n        file_mode: '644'\n        group: \"1234\"", 0o755, 0o644, "1234", ""},
		{"not octal", "dir_mode: 2790", 0, 0, "", "not an octal mode"},
		{"setuid dir", "dir_mode: 4750", 0, 0, "", "setuid or sticky"},
		{"sticky dir", "dir_mode: 1750", 0, 0, "", "setuid or sticky"},
		{"owner locked out", "dir_mode: 0550", 0, 0, "", "owner (the stager) rwx"},
		{"setgid file", "file_mode: 2640", 0, 0, "", "setuid, setgid or sticky"},
		{"file owner read-only", "file_mode: 0440", 0, 0, "", "owner (the stager) rw"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			doc := "sites:\n  - name: s\n    locations:\n      - name: p\n        type: processing\n        storage: disk\n        path: /p\n"
			if tc.extra != "" {
				doc += "        " + tc.extra + "\n"
			}
			topo, err := topology.Parse([]byte(doc))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse = %v, want error with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			l, _ := topo.Location("p")
			if l.DirMode.Mode() != tc.dir || l.FileMode.Mode() != tc.file || l.Group != tc.group {
				t.Errorf("dir %v file %v group %q, want %v %v %q", l.DirMode.Mode(), l.FileMode.Mode(), l.Group, tc.dir, tc.file, tc.group)
			}
		})
	}
	if _, err := topology.Parse([]byte("sites:\n  - name: s\n    locations:\n      - {name: a, type: long_term_archive, storage: disk, path: /a, group: x}\n")); err == nil {
		t.Error("group on an archive location accepted")
	}
}

// A processing location chooses how packages are made durable; anything
// but file or filesystem, or sync on an archive location, is refused.
func TestSync(t *testing.T) {
	tests := []struct {
		name, loc, want, wantErr string
	}{
		{"absent", "{name: p, type: processing, storage: disk, path: /p}", "", ""},
		{"file", "{name: p, type: processing, storage: disk, path: /p, sync: file}", "file", ""},
		{"filesystem", "{name: p, type: processing, storage: disk, path: /p, sync: filesystem}", "filesystem", ""},
		{"unknown", "{name: p, type: processing, storage: disk, path: /p, sync: never}", "", `sync "never"`},
		{"archive", "{name: p, type: long_term_archive, storage: disk, path: /p, sync: file}", "", "processing locations only"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			topo, err := topology.Parse([]byte("sites:\n  - name: s\n    locations:\n      - " + tc.loc + "\n"))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse = %v, want error with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if l, _ := topo.Location("p"); l.Sync != tc.want {
				t.Errorf("sync %q, want %q", l.Sync, tc.want)
			}
		})
	}
}

// Every mode ParseMode reads, Octal writes back the same, special bits included.
func TestModeRoundTrip(t *testing.T) {
	for _, s := range []string{"0000", "0640", "0750", "2750", "4755", "1777", "7777"} {
		m, err := topology.ParseMode(s)
		if err != nil {
			t.Fatalf("ParseMode(%q): %v", s, err)
		}
		if got := topology.Octal(m); got != s {
			t.Errorf("Octal(ParseMode(%q)) = %q", s, got)
		}
	}
	for _, s := range []string{"", "8", "27500", "rwx", "-1"} {
		if _, err := topology.ParseMode(s); err == nil {
			t.Errorf("ParseMode(%q) accepted", s)
		}
	}
}
