package event_test

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

	"github.com/ccatobs/ccat-staging/shared/event"
)

// FuzzDecode: whatever the bytes, Decode and Validate never panic, and an
// event Decode accepts survives encoding and decoding again unchanged, so a
// service that re-publishes or stores an event cannot alter it.
// Seeds: the f.Add calls below and testdata/fuzz/FuzzDecode.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"specversion":"1.0","id":"a","source":"s","type":"ccat.staging.submit.v1","data":{"job_id":"j","packages":["p"],"destination":{"site":"cologne"},"requested_by":"me"}}`,
		`{"specversion":"1.0","id":"a","source":"s","type":"ccat.staging.submit.v1","time":"2026-01-01T01:00:00+01:00","datacontenttype":"application/cloudevents+json; charset=utf-8","data":{},"traceparent":"00-1-2-01","n":12345678901234567890}`,
		`{"specversion":"1.0","id":"a","source":"s","type":"t","data":null}`,
		`{"specversion":"1.0","id":"a","source":"s","type":"t","data_base64":"AA=="}`,
		`{"specversion":"0.3","id":"a","source":"s","type":"t","data":1}`,
		`{"specversion":"1.0","id":"a\u0000","source":"s","type":"t","data":1}`,
		`{"specversion":"1.0","id":"a","source":"s","type":"t","data":1} {}`,
		`{"specversion":"1.0","id":"a","source":"s","type":"t","data":"\ud800"}`,
		`{"specversion":"1.0","id":"a","source":"s","type":"t","data":1,"BAD":1}`,
		`[]`, `null`, ``, `{`, `"x"`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		_, _ = event.Validate(raw)
		env, err := event.Decode(raw)
		if err != nil {
			return
		}
		again, err := json.Marshal(env)
		if err != nil {
			t.Fatalf("accepted event does not encode: %v", err)
		}
		env2, err := event.Decode(again)
		if err != nil {
			t.Fatalf("re-encoded event refused: %v\n%s", err, again)
		}
		if env.ID != env2.ID || env.Source != env2.Source || env.Type != env2.Type || env.Subject != env2.Subject ||
			env.DataContentType != env2.DataContentType || env.DataSchema != env2.DataSchema || !env.Time.Equal(env2.Time) {
			t.Fatalf("attributes changed:\n%+v\n%+v", env, env2)
		}
		// Encoding may escape differently (& becomes \u0026): compare
		// the values, numbers exactly.
		if !reflect.DeepEqual(jsonValue(t, env.Data), jsonValue(t, env2.Data)) {
			t.Fatalf("data changed: %s -> %s", env.Data, env2.Data)
		}
		if !reflect.DeepEqual(env.Extensions, env2.Extensions) {
			t.Fatalf("extensions changed: %v -> %v", env.Extensions, env2.Extensions)
		}
	})
}

func jsonValue(t *testing.T, raw []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("data %q is not JSON: %v", raw, err)
	}
	return v
}
