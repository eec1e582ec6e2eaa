package store

import (
	"errors"
	"fmt"
	"time"

	"github.com/ccatobs/ccat-staging/shared/event"
)

// Decoding: an event's data into its Go type (shared/event's table), once,
// when the consumer classifies it.

// Event is one valid event to apply, with where it came from.
type Event struct {
	Env       event.Envelope
	Stream    string
	StreamSeq uint64
	// Time is the event's time attribute, or the stream's timestamp when the
	// producer left it out; either way a replay gives the same value.
	Time time.Time

	// The typed data, once Decode has run, and the raw data it came from:
	// an Event whose Env is replaced afterwards is decoded again.
	typed        bool
	from         []byte
	data         any
	jobID, pkgID string
}

// ErrNoProjection is Decode's error for a known event type that has no place
// in the projection (a work item, say): it is recorded as poison.
var ErrNoProjection = errors.New("no projection for this event type")

// Decode decodes e's data into its Go type, once: Apply then uses it, and a
// consumer can tell data that validates but does not decode (1.0 for an
// integer; a type the projection has no place for) before it reaches a
// batch, which would fail on every delivery.
func (e *Event) Decode() error {
	d, err := decode(*e)
	if err != nil {
		return err
	}
	e.typed, e.from, e.data, e.jobID, e.pkgID = true, e.Env.Data, d.data, d.jobID, d.pkgID
	return nil
}

// decodedFrom reports whether the typed data was decoded from e.Env.Data.
func (e *Event) decodedFrom() bool {
	a, b := e.from, e.Env.Data
	return e.typed && len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// JobID is the job the decoded event is about ("" for none, or before
// Decode).
func (e *Event) JobID() string { return e.jobID }

// PackageID is the package the decoded event is about ("" for none, or
// before Decode).
func (e *Event) PackageID() string { return e.pkgID }

// decoded is an event with its typed data.
type decoded struct {
	Event
	data  any
	jobID string
	pkgID string
	// mergedStart is the time of a started of the same attempt folded into
	// this done (mergeStarts).
	mergedStart time.Time
}

// decode returns e with its typed data: what Decode stored, or decoded now
// (an Event built without Decode, or whose data was replaced since).
func decode(e Event) (decoded, error) {
	d := decoded{Event: e}
	if e.decodedFrom() {
		d.data, d.jobID, d.pkgID = e.data, e.jobID, e.pkgID
		return d, nil
	}
	// A cleanup is a work item for one site's stagers: it has a Go type
	// but no place in the projection. (A request, the other work item, is
	// logged on its job's timeline and otherwise ignored.)
	if e.Env.Type == event.TypeCleanup {
		return d, fmt.Errorf("%w: %q", ErrNoProjection, e.Env.Type)
	}
	t, err := event.DecodeTyped(e.Env.Type, e.Env.Data)
	if errors.Is(err, event.ErrNoDataType) {
		return d, fmt.Errorf("%w: %q", ErrNoProjection, e.Env.Type)
	}
	if err != nil {
		return d, fmt.Errorf("decode %s: %w", e.Env.Type, err)
	}
	d.data, d.jobID, d.pkgID = t.Data, t.JobID, t.PackageID
	return d, nil
}

// touchesJob reports whether the event changes its job's row. A rejection
// for a job id conflict is about another submit and must leave the existing
// job alone.
func (d decoded) touchesJob() bool {
	if d.jobID == "" {
		return false
	}
	if r, ok := d.data.(event.Rejected); ok && r.Reason == event.ReasonJobIDConflict {
		return false
	}
	_, isReq := d.data.(event.Request)
	return !isReq
}
