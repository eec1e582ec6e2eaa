// Package event is the contract between ccat-staging's services: the
// CloudEvents 1.0 structured-mode JSON envelope, the typed data of every event
// type, their stable reason codes, and validation against the JSON Schemas in
// the repository's schemas/ directory.
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
	"maps"
	"mime"
	"regexp"
	"strings"
	"time"
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

// core lists the attributes the spec defines; everything else is an extension.
var core = map[string]bool{
	"specversion": true, "id": true, "source": true, "type": true, "subject": true,
	"time": true, "datacontenttype": true, "dataschema": true, "data": true, "data_base64": true,
}

// Decode parses and checks a structured-mode CloudEvent. It does not look at
// the data beyond requiring it to be JSON; use DataAs for that. Errors wrap
// ErrInvalid.
func Decode(raw []byte) (Envelope, error) {
	var env Envelope
	if len(raw) > MaxSize {
		return env, invalid(ReasonInvalidEnvelope, "event is %d bytes, more than the %d allowed", len(raw), MaxSize)
	}
	var attrs map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&attrs); err != nil {
		return env, invalid(ReasonInvalidEnvelope, "not a JSON object: %v", err)
	}
	if dec.More() {
		return env, invalid(ReasonInvalidEnvelope, "trailing data after the JSON object")
	}
	if attrs == nil {
		return env, invalid(ReasonInvalidEnvelope, "not a JSON object")
	}
	str := func(name string, required bool) (string, error) {
		v, ok := attrs[name]
		if !ok || string(v) == "null" {
			if required {
				return "", invalid(ReasonInvalidEnvelope, "missing required attribute %q", name)
			}
			return "", nil
		}
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return "", invalid(ReasonInvalidEnvelope, "attribute %q is not a string", name)
		}
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
	if env.DataContentType != "" {
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
	if _, ok := attrs["data_base64"]; ok {
		return env, invalid(ReasonInvalidEnvelope, "data_base64 is not accepted: data must be JSON")
	}
	data, ok := attrs["data"]
	if !ok || string(data) == "null" {
		return env, invalid(ReasonInvalidEnvelope, "missing data")
	}
	env.Data = data
	for name, v := range attrs {
		if core[name] {
			continue
		}
		if !attrName.MatchString(name) {
			return env, invalid(ReasonInvalidEnvelope, "attribute name %q is not valid (lower-case letters and digits, at most 20)", name)
		}
		var x any
		if err := json.Unmarshal(v, &x); err != nil {
			return env, invalid(ReasonInvalidEnvelope, "extension %q: %v", name, err)
		}
		if env.Extensions == nil {
			env.Extensions = map[string]any{}
		}
		env.Extensions[name] = x
	}
	return env, nil
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
