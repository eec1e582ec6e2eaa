package archive_test

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/services/stager/archive"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/fault"
)

func TestDisk(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "archive")
	must(t, os.MkdirAll(filepath.Join(root, "a"), 0o755))
	must(t, os.WriteFile(filepath.Join(root, "a", "p.tar"), []byte("tar bytes"), 0o644))
	must(t, os.WriteFile(filepath.Join(base, "secret"), []byte("outside"), 0o644))
	must(t, os.Symlink("../../secret", filepath.Join(root, "a", "escape.tar")))
	d := archive.Disk{Root: root}
	tests := []struct {
		key, reason, body string
		permanent         bool
	}{
		{"a/p.tar", "", "tar bytes", false},
		{"a/none.tar", event.ReasonSourceMissing, "", true},
		{"a", event.ReasonSourceMissing, "", true}, // a directory
		{"../secret", event.ReasonBadRequest, "", true},
		{"/etc/passwd", event.ReasonBadRequest, "", true},
		{"a/./p.tar", event.ReasonBadRequest, "", true},
		{"a/escape.tar", event.ReasonBadRequest, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			r, err := d.Open(t.Context(), tt.key)
			if tt.reason == "" {
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(r)
				r.Close()
				if string(b) != tt.body {
					t.Errorf("read %q", b)
				}
				return
			}
			if fault.Reason(err, "") != tt.reason || fault.IsPermanent(err) != tt.permanent {
				t.Errorf("Open = %v (reason %q), want %s", err, fault.Reason(err, ""), tt.reason)
			}
		})
	}
}

func TestRecall(t *testing.T) {
	root := t.TempDir()
	must(t, os.WriteFile(filepath.Join(root, "p.tar"), []byte("online"), 0o644))
	tests := []struct {
		name    string
		command []string
		timeout time.Duration
		want    string // substring of the error; "" = success
	}{
		{"succeeds", []string{"sh", "-c", `test -f "$0"`}, time.Second, ""},
		{"fails with stderr", []string{"sh", "-c", `echo "tape 42 offline" >&2; exit 2`}, time.Second, "tape 42 offline"},
		{"times out", []string{"sh", "-c", "sleep 10"}, 200 * time.Millisecond, "no answer within"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := archive.Recall{Disk: archive.Disk{Root: root}, Command: tt.command, Timeout: tt.timeout}
			rc, err := r.Open(t.Context(), "p.tar")
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				rc.Close()
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) || fault.IsPermanent(err) {
				t.Errorf("Open = %v, want transient error with %q", err, tt.want)
			}
		})
	}
}

func TestCredentialsFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "creds")
	must(t, os.WriteFile(f, []byte("[default]\naws_access_key_id = AK\nsecret_access_key=SK\n"), 0o600))
	c, err := archive.ReadCredentialsFile(f)
	if err != nil || c.AccessKeyID != "AK" || c.SecretAccessKey != "SK" {
		t.Errorf("ReadCredentialsFile = %+v, %v", c, err)
	}
	must(t, os.WriteFile(f, []byte("access_key_id = AK\n"), 0o600))
	if _, err := archive.ReadCredentialsFile(f); err == nil {
		t.Errorf("incomplete credentials accepted")
	}
}

func TestThrottle(t *testing.T) {
	data := strings.Repeat("x", 300_000)
	start := time.Now()
	r := archive.Throttle(t.Context(), io.NopCloser(strings.NewReader(data)), 1_000_000)
	b, err := io.ReadAll(r)
	if err != nil || len(b) != len(data) {
		t.Fatalf("read %d, %v", len(b), err)
	}
	// 300 kB at 1 MB/s cannot take less than about 0.2 s (the first read is free).
	if el := time.Since(start); el < 200*time.Millisecond {
		t.Errorf("throttled read took %s", el)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
