package httpapi_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/services/ledger/httpapi"
	"github.com/ccatobs/ccat-staging/shared/heartbeat"
	"github.com/ccatobs/ccat-staging/shared/ledgerapi"
)

// wireTypes maps every schema component of openapi.json to the Go type the
// ledger encodes and its clients decode. A component without a Go type
// fails TestWireTypesMatchOpenAPI, so a new one cannot be left out.
var wireTypes = map[string]reflect.Type{
	"Place":       reflect.TypeFor[ledgerapi.Place](),
	"Counts":      reflect.TypeFor[ledgerapi.Counts](),
	"JobSummary":  reflect.TypeFor[ledgerapi.JobSummary](),
	"Progress":    reflect.TypeFor[ledgerapi.Progress](),
	"Source":      reflect.TypeFor[ledgerapi.Source](),
	"Package":     reflect.TypeFor[ledgerapi.Package](),
	"Job":         reflect.TypeFor[ledgerapi.Job](),
	"JobList":     reflect.TypeFor[ledgerapi.JobList](),
	"LogEntry":    reflect.TypeFor[ledgerapi.LogEntry](),
	"JobEvents":   reflect.TypeFor[ledgerapi.JobEvents](),
	"Explanation": reflect.TypeFor[ledgerapi.Explanation](),
	"ArchiveCopy": reflect.TypeFor[ledgerapi.ArchiveCopy](),
	"StagedCopy":  reflect.TypeFor[ledgerapi.StagedCopy](),
	"PackageInfo": reflect.TypeFor[ledgerapi.PackageInfo](),
	"Backlog":     reflect.TypeFor[ledgerapi.Backlog](),
	"Heartbeat":   reflect.TypeFor[heartbeat.Beat](), // the STAGERS bucket's value, served as it is
	"Location":    reflect.TypeFor[ledgerapi.Location](),
	"Site":        reflect.TypeFor[ledgerapi.Site](),
	"SiteList":    reflect.TypeFor[ledgerapi.SiteList](),
	"Poison":      reflect.TypeFor[ledgerapi.Poison](),
	"PoisonList":  reflect.TypeFor[ledgerapi.PoisonList](),
	"Problem":     reflect.TypeFor[ledgerapi.Problem](),
}

// TestWireTypesMatchOpenAPI checks the Go wire types against openapi.json by
// reflection: the same JSON field names; required exactly when not
// omitempty; nullable exactly when a pointer; the same enum (the Go side
// states it in an `enum:"a,b"` tag); a compatible JSON type; and $ref'd
// components typed by their own Go type. The answers' schema test only sees
// the fields a fixture happens to fill; this one sees every field.
func TestWireTypesMatchOpenAPI(t *testing.T) {
	var doc struct {
		Components struct {
			Schemas map[string]map[string]any `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(httpapi.OpenAPI, &doc); err != nil {
		t.Fatal(err)
	}
	schemas := doc.Components.Schemas
	for _, name := range slices.Sorted(maps.Keys(schemas)) {
		t.Run(name, func(t *testing.T) {
			typ, ok := wireTypes[name]
			if !ok {
				t.Fatalf("schema component %s has no Go type in wireTypes", name)
			}
			for _, msg := range compareObject(schemas, name, schemas[name], typ) {
				t.Error(msg)
			}
		})
	}
	for name := range wireTypes {
		if _, ok := schemas[name]; !ok {
			t.Errorf("wireTypes maps %s, which openapi.json does not define", name)
		}
	}
}

// TestWireTypesCheckCatchesDrift makes sure the comparison is not vacuous:
// each mutation of a correct pair must be reported.
func TestWireTypesCheckCatchesDrift(t *testing.T) {
	schemas := map[string]map[string]any{}
	place := map[string]any{"type": "object",
		"properties": map[string]any{"site": map[string]any{"type": "string"}, "location": map[string]any{"type": "string"}},
		"required":   []any{"site", "location"}}
	type goPlace struct {
		Site     string `json:"site"`
		Location string `json:"location"`
	}
	if msgs := compareObject(schemas, "Place", place, reflect.TypeFor[goPlace]()); len(msgs) != 0 {
		t.Fatalf("a matching pair is reported: %v", msgs)
	}
	status := func(enum ...any) map[string]any {
		return map[string]any{"type": "object", "properties": map[string]any{"status": map[string]any{"type": "string", "enum": enum}},
			"required": []any{"status"}}
	}
	tests := []struct {
		name   string
		schema map[string]any
		typ    reflect.Type
	}{
		{"field only in Go", place, reflect.TypeFor[struct {
			Site     string `json:"site"`
			Location string `json:"location"`
			Extra    string `json:"extra"`
		}]()},
		{"field only in the schema", place, reflect.TypeFor[struct {
			Site string `json:"site"`
		}]()},
		{"required but omitempty", place, reflect.TypeFor[struct {
			Site     string `json:"site"`
			Location string `json:"location,omitempty"`
		}]()},
		{"not nullable but a pointer", place, reflect.TypeFor[struct {
			Site     string  `json:"site"`
			Location *string `json:"location"`
		}]()},
		{"wrong JSON type", place, reflect.TypeFor[struct {
			Site     string `json:"site"`
			Location int    `json:"location"`
		}]()},
		{"enum missing in Go", status("a", "b"), reflect.TypeFor[struct {
			Status string `json:"status"`
		}]()},
		{"enum differs", status("a", "b"), reflect.TypeFor[struct {
			Status string `json:"status" enum:"a,c"`
		}]()},
		{"enum only in Go", status(), reflect.TypeFor[struct {
			Status string `json:"status" enum:"a"`
		}]()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name == "enum only in Go" {
				delete(tt.schema["properties"].(map[string]any)["status"].(map[string]any), "enum")
			}
			if msgs := compareObject(schemas, "X", tt.schema, tt.typ); len(msgs) == 0 {
				t.Error("not reported")
			}
		})
	}
}

// goField is one JSON field of a Go struct as encoding/json sees it.
type goField struct {
	typ       reflect.Type
	omitempty bool
	enum      []string
}

// jsonFields lists a struct's JSON fields, flattening embedded structs as
// encoding/json does.
func jsonFields(t reflect.Type) map[string]goField {
	out := map[string]goField{}
	for f := range t.Fields() {
		tag := f.Tag.Get("json")
		if tag == "-" || !f.IsExported() && !f.Anonymous {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
			maps.Copy(out, jsonFields(f.Type))
			continue
		}
		if name == "" {
			name = f.Name
		}
		g := goField{typ: f.Type, omitempty: slices.Contains(strings.Split(opts, ","), "omitempty")}
		if e, ok := f.Tag.Lookup("enum"); ok {
			g.enum = strings.Split(e, ",")
		}
		out[name] = g
	}
	return out
}

// flatten resolves $ref and merges allOf into one object schema.
func flatten(schemas map[string]map[string]any, s map[string]any) (props map[string]any, required []string) {
	props = map[string]any{}
	if ref, ok := s["$ref"].(string); ok {
		return flatten(schemas, schemas[strings.TrimPrefix(ref, "#/components/schemas/")])
	}
	for _, part := range asSlice(s["allOf"]) {
		p, r := flatten(schemas, part.(map[string]any))
		maps.Copy(props, p)
		required = append(required, r...)
	}
	if p, ok := s["properties"].(map[string]any); ok {
		maps.Copy(props, p)
	}
	for _, r := range asSlice(s["required"]) {
		required = append(required, r.(string))
	}
	return props, required
}

func asSlice(v any) []any {
	s, _ := v.([]any)
	return s
}

// compareObject reports every difference between an object schema and a Go
// struct type; where names the object in the messages.
func compareObject(schemas map[string]map[string]any, where string, s map[string]any, typ reflect.Type) []string {
	var msgs []string
	if typ.Kind() != reflect.Struct {
		return []string{fmt.Sprintf("%s: Go type %s is not a struct", where, typ)}
	}
	props, required := flatten(schemas, s)
	fields := jsonFields(typ)
	for _, name := range slices.Sorted(maps.Keys(props)) {
		f, ok := fields[name]
		if !ok {
			msgs = append(msgs, fmt.Sprintf("%s.%s is in openapi.json but not in Go type %s", where, name, typ))
			continue
		}
		ps := props[name].(map[string]any)
		if req := slices.Contains(required, name); req == f.omitempty {
			msgs = append(msgs, fmt.Sprintf("%s.%s: required in openapi.json is %v, but omitempty in Go is %v", where, name, req, f.omitempty))
		}
		types := schemaTypes(ps)
		nullable := slices.Contains(types, "null")
		if ptr := f.typ.Kind() == reflect.Pointer; ptr != nullable {
			msgs = append(msgs, fmt.Sprintf("%s.%s: nullable in openapi.json is %v, but a pointer in Go is %v", where, name, nullable, ptr))
		}
		var enum []string
		for _, e := range asSlice(ps["enum"]) {
			enum = append(enum, fmt.Sprint(e))
		}
		if !slices.Equal(enum, f.enum) {
			msgs = append(msgs, fmt.Sprintf("%s.%s: enum %v in openapi.json, %v in Go (enum tag)", where, name, enum, f.enum))
		}
		msgs = append(msgs, compareValue(schemas, where+"."+name, ps, f.typ)...)
	}
	for _, name := range slices.Sorted(maps.Keys(fields)) {
		if _, ok := props[name]; !ok {
			msgs = append(msgs, fmt.Sprintf("%s.%s is in Go type %s but not in openapi.json", where, name, typ))
		}
	}
	return msgs
}

func schemaTypes(s map[string]any) []string {
	switch v := s["type"].(type) {
	case string:
		return []string{v}
	case []any:
		var out []string
		for _, x := range v {
			out = append(out, x.(string))
		}
		return out
	}
	return nil
}

var timeType = reflect.TypeFor[time.Time]()

// compareValue checks that a Go type encodes to what a property schema
// allows: $ref'd components by their own Go type, arrays and maps by their
// elements, inline objects field by field.
func compareValue(schemas map[string]map[string]any, where string, s map[string]any, typ reflect.Type) []string {
	if typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	if ref, ok := s["$ref"].(string); ok {
		name := strings.TrimPrefix(ref, "#/components/schemas/")
		if want := wireTypes[name]; typ != want {
			return []string{fmt.Sprintf("%s: refers to %s, whose Go type is %v, but is %s in Go", where, name, want, typ)}
		}
		return nil // the component is compared on its own
	}
	types := slices.DeleteFunc(schemaTypes(s), func(t string) bool { return t == "null" })
	if len(types) == 0 {
		return nil // any JSON value (LogEntry.data)
	}
	k := typ.Kind()
	ok := false
	switch types[0] {
	case "string":
		ok = k == reflect.String || typ == timeType
		if s["format"] == "date-time" {
			ok = typ == timeType
		}
	case "integer":
		ok = k >= reflect.Int && k <= reflect.Uint64
	case "number":
		ok = k == reflect.Float64 || k == reflect.Float32
	case "boolean":
		ok = k == reflect.Bool
	case "array":
		if k != reflect.Slice {
			break
		}
		return compareValue(schemas, where+"[]", s["items"].(map[string]any), typ.Elem())
	case "object":
		if ap, isMap := s["additionalProperties"].(map[string]any); isMap {
			if k != reflect.Map || typ.Key().Kind() != reflect.String {
				break
			}
			return compareValue(schemas, where+"{}", ap, typ.Elem())
		}
		if k == reflect.Struct {
			return compareObject(schemas, where, s, typ)
		}
	}
	if !ok {
		return []string{fmt.Sprintf("%s: %v in openapi.json, %s in Go", where, types, typ)}
	}
	return nil
}
