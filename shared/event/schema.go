package event

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"strings"
	"sync"

	"github.com/ccatobs/ccat-staging/schemas"
	"github.com/ccatobs/ccat-staging/shared/event/internal/check"
	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

// SchemaURI returns the dataschema URI of an event type.
func SchemaURI(typ string) string {
	return schemas.BaseURI + strings.TrimPrefix(typ, "ccat.") + ".json"
}

var compiled = sync.OnceValues(compileAll)

// compileAll compiles every embedded schema once per process; schemas are
// immutable, so sharing them is safe.
func compileAll() (map[string]*jsonschema.Schema, error) {
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	names, err := fs.Glob(schemas.FS, "*.json")
	if err != nil {
		return nil, err
	}
	for _, name := range names {
		b, err := fs.ReadFile(schemas.FS, name)
		if err != nil {
			return nil, err
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("schema %s: %w", name, err)
		}
		if err := c.AddResource(schemas.BaseURI+name, doc); err != nil {
			return nil, fmt.Errorf("schema %s: %w", name, err)
		}
	}
	out := make(map[string]*jsonschema.Schema, len(names))
	for _, name := range names {
		s, err := c.Compile(schemas.BaseURI + name)
		if err != nil {
			return nil, fmt.Errorf("compile schema %s: %w", name, err)
		}
		out["ccat."+strings.TrimSuffix(name, ".json")] = s
	}
	return out, nil
}

// Known reports whether typ is an event type with a schema.
func Known(typ string) bool {
	m, err := compiled()
	if err != nil {
		return false
	}
	_, ok := m[typ]
	return ok
}

// ValidateData checks raw data against the schema of typ. Errors wrap
// ErrInvalid with reason unknown_type or invalid_data.
func ValidateData(typ string, raw []byte) error {
	m, err := compiled()
	if err != nil {
		return fmt.Errorf("load schemas: %w", err)
	}
	s, ok := m[typ]
	if !ok {
		return invalid(ReasonUnknownType, "unknown event type %q", typ)
	}
	has, refused := check.Data(typ, raw)
	if has && refused == nil {
		return nil
	}
	// Refused by the check (or no check): the general validator explains
	// why, in its words, or decides alone.
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		return invalid(ReasonInvalidData, "data is not JSON: %v", err)
	}
	if err := s.Validate(inst); err != nil {
		return invalid(ReasonInvalidData, "data does not match %s: %s", SchemaURI(typ), oneLine(err))
	}
	if refused != nil {
		// What only the check refuses: invalid UTF-8, lone surrogates, an
		// invalid earlier value of a name given twice.
		return invalid(ReasonInvalidData, "data is not acceptable JSON: %s", oneLine(refused))
	}
	return nil
}

// oneLine flattens the validator's multi-line report so it fits a log field
// and an event's message.
func oneLine(err error) string {
	s := strings.Join(strings.Fields(err.Error()), " ")
	if len(s) > 1000 {
		s = s[:1000] + "…"
	}
	return s
}

// DataAs validates e's data against the schema of T's type and decodes it.
// It fails with reason unknown_type when e.Type is not T's type.
func DataAs[T Data](e Envelope) (T, error) {
	var v T
	if e.Type != v.EventType() {
		return v, invalid(ReasonUnknownType, "event type %q, want %q", e.Type, v.EventType())
	}
	if err := ValidateData(e.Type, e.Data); err != nil {
		return v, err
	}
	if err := json.Unmarshal(e.Data, &v); err != nil {
		return v, invalid(ReasonInvalidData, "decode %s: %v", e.Type, err)
	}
	return v, nil
}

// Validate decodes a raw event and validates its data against its type's
// schema: the check tests apply to everything a service emits.
func Validate(raw []byte) (Envelope, error) {
	env, err := Decode(raw)
	if err != nil {
		return env, err
	}
	return env, ValidateData(env.Type, env.Data)
}

// UnmarshalData decodes data that ValidateData accepted into v, the way
// encoding/json would (names matched case-insensitively as well, the last of
// a repeated name kept) at a fraction of its cost: the ledger decodes every
// event it applies, and encoding/json was a fifth of its CPU.
// TestUnmarshalDataIsEncodingJSON holds the two to the same result.
func UnmarshalData(raw []byte, v any) error {
	return jsonv2.Unmarshal(raw, v, jsontext.AllowDuplicateNames(true), jsonv2.MatchCaseInsensitiveNames(true))
}
