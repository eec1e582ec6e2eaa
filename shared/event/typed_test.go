package event_test

import (
	"encoding/json"
	"errors"
	"io/fs"
	"reflect"
	"strings"
	"testing"

	"github.com/ccatobs/ccat-staging/schemas"
	"github.com/ccatobs/ccat-staging/shared/event"
)

// Every type with a schema has a Go data type in the table, and every sample
// decodes to itself, naming its job and package.
func TestEveryTypeDecodes(t *testing.T) {
	names, err := fs.Glob(schemas.FS, "*.json")
	if err != nil || len(names) == 0 {
		t.Fatalf("schemas: %v %v", names, err)
	}
	sampled := map[string]bool{}
	for _, d := range samples {
		sampled[d.EventType()] = true
	}
	for _, name := range names {
		typ := "ccat." + strings.TrimSuffix(name, ".json")
		if !sampled[typ] {
			t.Errorf("%s: no sample", typ)
		}
	}
	for _, d := range samples {
		typ := d.EventType()
		raw, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		got, err := event.DecodeTyped(typ, raw)
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		if !reflect.DeepEqual(got.Data, d) {
			t.Errorf("%s: decoded %+v, want %+v", typ, got.Data, d)
		}
		job, pkg := wantIDs(t, d)
		if got.JobID != job || got.PackageID != pkg {
			t.Errorf("%s: names job %q package %q, want %q %q", typ, got.JobID, got.PackageID, job, pkg)
		}
	}
}

// wantIDs reads the job and package ids a sample names from its JSON, so the
// test does not repeat the table it checks.
func wantIDs(t *testing.T, d event.Data) (string, string) {
	t.Helper()
	raw, _ := json.Marshal(d)
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	job, _ := m["job_id"].(string)
	pkg, _ := m["package_id"].(string)
	return job, pkg
}

func TestDecodeTypedRefuses(t *testing.T) {
	for _, c := range []struct {
		name, typ, raw string
		unknown        bool
	}{
		{"unknown type", "ccat.staging.nothing.v1", `{}`, true},
		{"float for an integer", event.TypeDone, `{"job_id":"j","package_id":"p","attempt":1.5}`, false},
		{"not JSON", event.TypeSubmit, `{`, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := event.DecodeTyped(c.typ, []byte(c.raw))
			if err == nil {
				t.Fatal("decoded")
			}
			if errors.Is(err, event.ErrNoDataType) != c.unknown {
				t.Fatalf("ErrNoDataType = %v, want %v: %v", !c.unknown, c.unknown, err)
			}
		})
	}
}
