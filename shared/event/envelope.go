// Package event is the contract between ccat-staging's services: the
// CloudEvents 1.0 structured-mode JSON envelope, the typed data of every event
// type, their stable reason codes, and validation against the JSON Schemas in
// the repository's schemas/ directory. DecodeTyped turns valid data into its
// Go type through one table of every type (typed.go).
//
// Consumers accept any valid CloudEvents 1.0 structured event: optional
// attributes may be absent and unknown extension attributes are kept, because
// upstream producers use other languages and other SDKs.
package event

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime"
	"regexp"
	"strings"
	"time"

	"github.com/go-json-experiment/json/jsontext"
)

// SpecVersion is the only CloudEvents version accepted.
const SpecVersion = "1.0"

// MaxSize is the largest event accepted, in bytes. A 100,000-package submit
// is about 4 MB; anything larger is refused before it is parsed.
const MaxSize = 8 << 20

// Envelope is one CloudEvents 1.0 event in structured JSON mode. Data holds the
// raw JSON of the data attribute; DataAs decodes and validates it.
type Envelope struct {
	ID              string
	Source          string
	Type            string
	Subject         string
	Time            time.Time // zero when absent
	DataContentType string
	DataSchema      string
	Data            json.RawMessage
	// Extensions holds every attribute the spec does not define, as decoded JSON.
	Extensions map[string]any
}

// ErrInvalid is wrapped by every envelope or data validation error, so callers
// can tell malformed input from other failures with errors.Is.
var ErrInvalid = errors.New("invalid event")

// InvalidError describes why an event was refused; Reason is a stable code.
type InvalidError struct {
	Reason string // invalid_envelope, unknown_type, invalid_data
	Msg    string
}

func (e *InvalidError) Error() string { return e.Msg }
func (e *InvalidError) Unwrap() error { return ErrInvalid }

func invalid(reason, format string, args ...any) error {
	return &InvalidError{Reason: reason, Msg: fmt.Sprintf(format, args...)}
}

// Reason codes for refused events.
const (
	ReasonInvalidEnvelope = "invalid_envelope"
	ReasonUnknownType     = "unknown_type"
	ReasonInvalidData     = "invalid_data"
)

var attrName = regexp.MustCompile(`^[a-z0-9]{1,20}$`)

// Decode parses and checks a structured-mode CloudEvent. It does not look at
// the data beyond requiring it to be JSON; use DataAs for that. Errors wrap
// ErrInvalid.
//
// The event is read in one pass with a streaming tokenizer (jsontext): it is
// the first thing every consumer does to every message, and decoding into a
// map of raw values and then each attribute again cost the ledger more than
// its schema checks. The tokenizer is strict where encoding/json is lenient,
// and the ledger depends on that: invalid UTF-8 and lone UTF-16 surrogates
// (\ud800) are refused here, at every depth of data, as PostgreSQL's jsonb
// refuses them too (an event that cannot be stored would fail its batch on
// every delivery). A name given twice is taken as its last value, as
// encoding/json and jsonb do.
func Decode(raw []byte) (Envelope, error) {
	var env Envelope
	if len(raw) > MaxSize {
		return env, invalid(ReasonInvalidEnvelope, "event is %d bytes, more than the %d allowed", len(raw), MaxSize)
	}
	var a attrs
	if err := a.read(raw); err != nil {
		return env, invalid(ReasonInvalidEnvelope, "not a JSON object: %v", err)
	}
	str := func(name string, required bool) (string, error) {
		v := a.strs[coreIndex[name]]
		if !v.present || v.null {
			if required {
				return "", invalid(ReasonInvalidEnvelope, "missing required attribute %q", name)
			}
			return "", nil
		}
		if !v.isString {
			return "", invalid(ReasonInvalidEnvelope, "attribute %q is not a string", name)
		}
		s := v.s
		if required && s == "" {
			return "", invalid(ReasonInvalidEnvelope, "attribute %q is empty", name)
		}
		if strings.ContainsRune(s, 0) {
			return "", invalid(ReasonInvalidEnvelope, "attribute %q contains NUL", name)
		}
		return s, nil
	}
	spec, err := str("specversion", true)
	if err != nil {
		return env, err
	}
	if spec != SpecVersion {
		return env, invalid(ReasonInvalidEnvelope, "specversion %q is not supported (want %q)", spec, SpecVersion)
	}
	if env.ID, err = str("id", true); err != nil {
		return env, err
	}
	if env.Source, err = str("source", true); err != nil {
		return env, err
	}
	if env.Type, err = str("type", true); err != nil {
		return env, err
	}
	if env.Subject, err = str("subject", false); err != nil {
		return env, err
	}
	if env.DataSchema, err = str("dataschema", false); err != nil {
		return env, err
	}
	if env.DataContentType, err = str("datacontenttype", false); err != nil {
		return env, err
	}
	if env.DataContentType != "" && env.DataContentType != "application/json" {
		mt, _, err := mime.ParseMediaType(env.DataContentType)
		if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
			return env, invalid(ReasonInvalidEnvelope, "datacontenttype %q is not JSON", env.DataContentType)
		}
	}
	ts, err := str("time", false)
	if err != nil {
		return env, err
	}
	if ts != "" {
		if env.Time, err = time.Parse(time.RFC3339Nano, ts); err != nil {
			return env, invalid(ReasonInvalidEnvelope, "time %q is not RFC 3339", ts)
		}
	}
	if a.base64 {
		return env, invalid(ReasonInvalidEnvelope, "data_base64 is not accepted: data must be JSON")
	}
	if a.data == nil || string(a.data) == "null" {
		return env, invalid(ReasonInvalidEnvelope, "missing data")
	}
	env.Data = a.data
	for _, x := range a.ext {
		if !attrName.MatchString(x.name) {
			return env, invalid(ReasonInvalidEnvelope, "attribute name %q is not valid (lower-case letters and digits, at most 20)", x.name)
		}
		var v any
		if err := json.Unmarshal(x.raw, &v); err != nil {
			return env, invalid(ReasonInvalidEnvelope, "extension %q: %v", x.name, err)
		}
		if env.Extensions == nil {
			env.Extensions = map[string]any{}
		}
		env.Extensions[x.name] = v
	}
	return env, nil
}

// attr is a core string attribute as read: a string, null, or something else.
type attr struct {
	s        string
	present  bool
	isString bool
	null     bool
}

// coreIndex numbers the spec's string attributes, for attrs.strs.
var coreIndex = map[string]int{"specversion": 0, "id": 1, "source": 2, "type": 3, "subject": 4, "time": 5,
	"datacontenttype": 6, "dataschema": 7}

// attrs is a structured event's top level, read once.
type attrs struct {
	strs   [8]attr // by coreIndex
	data   []byte  // raw JSON of data (its own copy), nil when absent
	base64 bool
	ext    []extension
}

type extension struct {
	name string
	raw  []byte
}

func (a *attrs) read(raw []byte) error {
	dec := jsontext.NewDecoder(bytes.NewBuffer(raw), jsontext.AllowDuplicateNames(true))
	tok, err := dec.ReadToken()
	if err != nil {
		return err
	}
	if tok.Kind() != '{' {
		return fmt.Errorf("found %s", tok.Kind())
	}
	for dec.PeekKind() != '}' {
		name, err := dec.ReadValue()
		if err != nil {
			return err
		}
		q, err := unquote(name)
		if err != nil {
			return err
		}
		switch string(q) { // q is the decoder's buffer, valid until its next read
		case "data":
			v, err := dec.ReadValue()
			if err != nil {
				return err
			}
			a.data = bytes.Clone(v)
		case "data_base64":
			if _, err := dec.ReadValue(); err != nil {
				return err
			}
			a.base64 = true
		case "specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema":
			at := &a.strs[coreIndex[string(q)]]
			switch dec.PeekKind() {
			case '"':
				v, err := dec.ReadToken()
				if err != nil {
					return err
				}
				*at = attr{s: v.String(), present: true, isString: true}
			case 'n':
				if _, err := dec.ReadToken(); err != nil {
					return err
				}
				*at = attr{present: true, null: true}
			default:
				if _, err := dec.ReadValue(); err != nil {
					return err
				}
				*at = attr{present: true}
			}
		default:
			n := string(q)
			v, err := dec.ReadValue()
			if err != nil {
				return err
			}
			a.ext = append(a.ext, extension{name: n, raw: bytes.Clone(v)})
		}
	}
	if _, err := dec.ReadToken(); err != nil { // '}'
		return err
	}
	if _, err := dec.ReadToken(); err != io.EOF {
		if err == nil {
			return errors.New("trailing data after the JSON object")
		}
		return err
	}
	return nil
}

// MarshalJSON writes the structured-mode form with extensions inlined.
func (e Envelope) MarshalJSON() ([]byte, error) {
	m := make(map[string]any, 9+len(e.Extensions))
	maps.Copy(m, e.Extensions)
	m["specversion"] = SpecVersion
	m["id"] = e.ID
	m["source"] = e.Source
	m["type"] = e.Type
	if e.Subject != "" {
		m["subject"] = e.Subject
	}
	if !e.Time.IsZero() {
		m["time"] = e.Time.UTC().Format(time.RFC3339Nano)
	}
	if e.DataContentType != "" {
		m["datacontenttype"] = e.DataContentType
	}
	if e.DataSchema != "" {
		m["dataschema"] = e.DataSchema
	}
	if e.Data != nil {
		m["data"] = e.Data
	}
	return json.Marshal(m)
}

// UnmarshalJSON is Decode, so an Envelope embedded in other JSON is checked too.
func (e *Envelope) UnmarshalJSON(b []byte) error {
	env, err := Decode(b)
	if err != nil {
		return err
	}
	*e = env
	return nil
}

// New builds an envelope for data of a known type. id must identify the event
// (not the entity): it is also the Nats-Msg-Id, so a re-publication of the
// same event is deduplicated while a new attempt is not.
func New[T Data](source, id, subject string, data T) (Envelope, error) {
	raw, err := json.Marshal(data)
	if err != nil {
		return Envelope{}, fmt.Errorf("encode %s: %w", data.EventType(), err)
	}
	return Envelope{
		ID:              id,
		Source:          source,
		Type:            data.EventType(),
		Subject:         subject,
		Time:            time.Now().UTC(),
		DataContentType: "application/json",
		DataSchema:      SchemaURI(data.EventType()),
		Data:            raw,
	}, nil
}

// unquote returns a JSON string token's contents, sharing raw's memory when
// it has no escapes (the common case for attribute names). The schema
// checker in internal/check has its own copy: envelope decoding should not
// depend on the checker.
func unquote(raw []byte) ([]byte, error) {
	if bytes.IndexByte(raw, '\\') < 0 {
		return raw[1 : len(raw)-1], nil
	}
	return jsontext.AppendUnquote(nil, raw)
}
