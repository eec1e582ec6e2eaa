package event_test

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"reflect"
	"strings"
	"testing"

	"github.com/ccatobs/ccat-staging/schemas"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/go-json-experiment/json/jsontext"
)

// Every schema must compile into a check: a schema with a keyword the
// check compiler does not know would silently fall back to the general
// validator and make the ledger several times slower.
func TestEverySchemaHasACheck(t *testing.T) {
	names, err := fs.Glob(schemas.FS, "*.json")
	if err != nil || len(names) == 0 {
		t.Fatalf("schemas: %v %v", names, err)
	}
	for _, name := range names {
		typ := "ccat." + strings.TrimSuffix(name, ".json")
		if ok, _ := event.CheckData(typ, []byte(`{}`)); !ok {
			b, _ := fs.ReadFile(schemas.FS, name)
			t.Errorf("%s has no check: %v", name, event.CompileCheck(b))
		}
	}
}

// The check compiler refuses what it does not implement rather than
// ignoring it.
func TestCheckRefusesUnknownKeywords(t *testing.T) {
	for _, doc := range []string{
		`{"type":"object","uniqueItems":true}`,
		`{"oneOf":[{"type":"string"}]}`,
		`{"properties":{"a":{"$ref":"#/$defs/x","minLength":1}},"$defs":{"x":{}}}`,
		`{"$ref":"other.json"}`,
		`{"enum":[1,2]}`,
		`{"exclusiveMinimum":0}`,
		`{"patternProperties":{"^a":{}}}`,
	} {
		if err := event.CompileCheck([]byte(doc)); err == nil {
			t.Errorf("%s compiled", doc)
		}
	}
}

// agree fails t unless the check and the general validator give raw the
// same verdict. The check may refuse more only for what it is documented
// to refuse: duplicate names and text jsonb cannot hold.
func agree(t *testing.T, typ string, raw []byte) {
	t.Helper()
	ok, got := event.CheckData(typ, raw)
	if !ok {
		t.Fatalf("%s has no check", typ)
	}
	want := event.ReferenceData(typ, raw)
	switch {
	case got == nil && want != nil:
		t.Errorf("%s: check accepts what the reference refuses (%v):\n%s", typ, oneLine(want), raw)
	case got != nil && want == nil && strictJSON(raw):
		t.Errorf("%s: check refuses what the reference accepts (%v):\n%s", typ, got, raw)
	}
}

func oneLine(err error) string { return strings.Join(strings.Fields(err.Error()), " ") }

// strictJSON reports whether raw has no duplicate names, invalid UTF-8 or
// lone surrogates: where the two validators must agree both ways.
func strictJSON(raw []byte) bool {
	dec := jsontext.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.ReadValue(); err != nil {
		return false
	}
	return true
}

// Every sample, and thousands of variations of each (every property
// dropped, replaced by values of every kind at and around the schemas'
// limits, an unknown property added, at every depth), gets the same verdict
// from the check as from the general validator.
func TestCheckAgreesWithReference(t *testing.T) {
	cases := 0
	for _, d := range samples {
		raw, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		agree(t, d.EventType(), raw)
		for _, m := range variations(t, raw) {
			agree(t, d.EventType(), m)
			cases++
		}
	}
	if cases < 1000 {
		t.Fatalf("only %d variations", cases)
	}
}

// palette holds values of every kind, at and around the schemas' limits.
var palette = []string{
	`null`, `true`, `false`, `0`, `-0`, `1`, `-1`, `1.0`, `1.5`, `-0.5`, `1e2`, `1E-2`, `0.01`,
	`1000000`, `1000001`, `9007199254740991`, `9007199254740992`, `-9007199254740992`, `123456789012345678901234567890`,
	`1e400`, `""`, `"a"`, `"A"`, `"-a"`, `"a/b"`, `"../x"`, `"a/../b"`, `"a/./b"`, `"/abs"`, `"é"`, `"a\u0000b"`,
	`"` + strings.Repeat("a", 128) + `"`, `"` + strings.Repeat("a", 129) + `"`, `"` + strings.Repeat("é", 64) + `"`,
	`"sha256:` + strings.Repeat("0", 64) + `"`, `"` + strings.Repeat("f", 64) + `"`, `"` + strings.Repeat("F", 64) + `"`,
	`"cologne"`, `"Cologne"`, `"tar"`, `"zip"`, `"scheduled"`, `"failed"`, `"high"`, `"normal"`, `"2026-01-01T00:00:00Z"`, `"yesterday"`,
	`[]`, `["a"]`, `[1]`, `[null]`, `{}`, `{"a":1}`, `{"site":"cologne"}`,
}

// variations returns mutated copies of a JSON object.
func variations(t *testing.T, raw []byte) [][]byte {
	t.Helper()
	var root any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&root); err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	emit := func() {
		b, err := json.Marshal(root)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	values := make([]any, len(palette))
	for i, p := range palette {
		d := json.NewDecoder(strings.NewReader(p))
		d.UseNumber()
		if err := d.Decode(&values[i]); err != nil {
			t.Fatalf("palette %s: %v", p, err)
		}
	}
	// walk visits every value, calling set to replace it in place.
	var walk func(v any, set func(any))
	walk = func(v any, set func(any)) {
		for _, p := range values {
			set(p)
			emit()
		}
		set(v)
		switch x := v.(type) {
		case map[string]any:
			x["unknown_property"] = "x"
			emit()
			delete(x, "unknown_property")
			for k, child := range x {
				delete(x, k)
				emit()
				x[k] = child
				walk(child, func(nv any) { x[k] = nv })
			}
		case []any:
			set([]any{})
			emit()
			set(append(append([]any{}, x...), x...))
			emit()
			set(x)
			for i, child := range x {
				walk(child, func(nv any) { x[i] = nv })
			}
		}
	}
	walk(root, func(nv any) { root = nv })
	return out
}

// FuzzCheck: for any data, of any type, the check and the general validator
// agree (both ways where the data is strict JSON). Seeds: one sample of each
// type and testdata/fuzz/FuzzCheck.
func FuzzCheck(f *testing.F) {
	types := make([]string, 0, len(samples))
	for _, d := range samples {
		raw, err := json.Marshal(d)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(len(types)), raw)
		types = append(types, d.EventType())
	}
	f.Add(uint8(0), []byte(`{"package_id":"a","files":[{"path":"a/../b","size_bytes":1,"sha256":"x"}]}`))
	f.Add(uint8(6), []byte(`{"job_id":"j","attempt":1.0,"size_bytes":1e2,"duration_seconds":-0.0}`))
	f.Fuzz(func(t *testing.T, typ uint8, raw []byte) {
		if !json.Valid(raw) {
			return
		}
		agree(t, types[int(typ)%len(types)], raw)
	})
}

// UnmarshalData decodes everything ValidateData accepts exactly as
// encoding/json does: every sample and every valid variation of it.
func TestUnmarshalDataIsEncodingJSON(t *testing.T) {
	cases, refused := 0, 0
	for _, d := range samples {
		raw, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		typ := reflect.TypeOf(d)
		for _, m := range append(variations(t, raw), raw, []byte(`{"JOB_ID":"x","job_id":"y","Job_Id":"z"}`)) {
			if event.ValidateData(d.EventType(), m) != nil {
				continue
			}
			want, got := reflect.New(typ), reflect.New(typ)
			errWant := json.Unmarshal(m, want.Interface())
			errGot := event.UnmarshalData(m, got.Interface())
			if (errWant == nil) != (errGot == nil) {
				t.Fatalf("%s: encoding/json: %v, UnmarshalData: %v\n%s", d.EventType(), errWant, errGot, m)
			}
			if errGot != nil {
				// Valid but not decodable into the Go type (1.0 for an
				// integer): refused either way.
				refused++
				continue
			}
			if !reflect.DeepEqual(want.Interface(), got.Interface()) {
				t.Fatalf("%s: decoded differently:\nencoding/json %+v\nUnmarshalData %+v\n%s", d.EventType(), want.Elem(), got.Elem(), m)
			}
			cases++
		}
	}
	if cases < 500 {
		t.Fatalf("only %d valid variations", cases)
	}
	t.Logf("%d valid variations decoded alike, %d refused by both", cases, refused)
}
