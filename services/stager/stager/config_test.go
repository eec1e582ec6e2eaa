package stager_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/services/stager/stager"
)

func TestConfigFromEnv(t *testing.T) {
	dir := t.TempDir()
	topo := filepath.Join(dir, "t.yaml")
	yaml := `sites:
  - name: cologne
    locations:
      - name: cologne-lta
        type: long_term_archive
        storage: s3
        s3: {endpoint: "s3.example:9000", bucket: b}
      - {name: cologne-proc, type: processing, storage: disk, path: /scratch}
  - name: empty
    locations:
      - {name: empty-lta, type: long_term_archive, storage: disk, path: /a}
`
	if err := os.WriteFile(topo, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	base := map[string]string{"TOPOLOGY_FILE": topo, "STAGER_SITE": "cologne", "STAGER_INSTANCE": "host-1"}
	tests := []struct {
		name    string
		env     map[string]string
		wantErr string
		check   func(t *testing.T, c stager.Config)
	}{
		{"defaults", nil, "", func(t *testing.T, c stager.Config) {
			if c.NATSURL != "nats://127.0.0.1:4222" || c.Workers != 2 || c.HTTPAddr != "127.0.0.1:9102" ||
				c.AckWait != 60*time.Second || c.MaxDeliver != 5 || c.FreeSpaceFactor != 1.1 || c.Topology == nil {
				t.Errorf("config = %+v", c)
			}
		}},
		{"knobs", map[string]string{"STAGER_WORKERS": "8", "STAGER_HTTP_ADDR": "off", "STAGER_ACK_WAIT": "30s",
			"STAGER_READ_RATE": "1e8", "CCAT_S3_COLOGNE_LTA_ACCESS_KEY_ID": "AK", "CCAT_S3_COLOGNE_LTA_SECRET_ACCESS_KEY": "SK"}, "",
			func(t *testing.T, c stager.Config) {
				cr := c.S3Credentials["cologne-lta"]
				if c.Workers != 8 || c.HTTPAddr != "" || c.AckWait != 30*time.Second || c.ReadRate != 1e8 || cr.AccessKeyID != "AK" || cr.SecretAccessKey != "SK" {
					t.Errorf("config = %+v", c)
				}
				if strings.Contains(cr.String(), "SK") {
					t.Errorf("credentials print their secret: %s", cr)
				}
			}},
		{"no topology", map[string]string{"TOPOLOGY_FILE": ""}, "TOPOLOGY_FILE is required", nil},
		{"no site", map[string]string{"STAGER_SITE": ""}, "STAGER_SITE is required", nil},
		{"unknown site", map[string]string{"STAGER_SITE": "mars"}, "not a site", nil},
		{"site without processing", map[string]string{"STAGER_SITE": "empty"}, "no active processing location", nil},
		{"bad number", map[string]string{"STAGER_WORKERS": "many"}, "not an integer", nil},
		{"bad duration", map[string]string{"STAGER_ACK_WAIT": "soon"}, "not a duration", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range base {
				env[k] = v
			}
			for k, v := range tt.env {
				env[k] = v
			}
			c, err := stager.ConfigFromEnv(func(k string) string { return env[k] })
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}
