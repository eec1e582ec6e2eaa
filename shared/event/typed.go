package event

import (
	"errors"
	"fmt"
)

// Typed is an event's data decoded into its Go type (a value, not a
// pointer: consumers switch on it) with the job and package it is about.
type Typed struct {
	Data      Data
	JobID     string // "" when the type names no job
	PackageID string // "" when the type names no package
}

// ErrNoDataType is DecodeTyped's error for a type without a Go data type.
var ErrNoDataType = errors.New("no Go data type for this event type")

// dataTypes is the one list of event types with a Go data type: how to
// decode each and which job and package it names. A new event type is one
// line here (TestEveryTypeDecodes holds the table to schemas/); consumers
// then switch on Typed.Data instead of on the type string.
var dataTypes = map[string]func([]byte) (Typed, error){
	TypePackageArchived: as(func(v PackageArchived) (string, string) { return "", v.PackageID }),
	TypePackageRemoved:  as(func(v PackageRemoved) (string, string) { return "", v.PackageID }),
	TypeSubmit:          as(func(v Submit) (string, string) { return v.JobID, "" }),
	TypePlanned:         as(func(v Planned) (string, string) { return v.JobID, "" }),
	TypeRejected:        as(func(v Rejected) (string, string) { return v.JobID, "" }),
	TypeRequest:         as(func(v Request) (string, string) { return v.JobID, v.PackageID }),
	TypeStarted:         as(func(v Started) (string, string) { return v.JobID, v.PackageID }),
	TypeProgress:        as(func(v Progress) (string, string) { return v.JobID, v.PackageID }),
	TypeDone:            as(func(v Done) (string, string) { return v.JobID, v.PackageID }),
	TypeFailed:          as(func(v Failed) (string, string) { return v.JobID, v.PackageID }),
	TypeStalled:         as(func(v Stalled) (string, string) { return v.JobID, v.PackageID }),
	TypeCancel:          as(func(v Cancel) (string, string) { return v.JobID, "" }),
	TypeRelease:         as(func(v Release) (string, string) { return v.JobID, "" }),
	TypeCleanup:         as(func(v Cleanup) (string, string) { return "", v.PackageID }),
	TypeReleased:        as(func(v Released) (string, string) { return "", v.PackageID }),
}

// as decodes data of type T with UnmarshalData and names its job and
// package with ids.
func as[T Data](ids func(T) (job, pkg string)) func([]byte) (Typed, error) {
	return func(raw []byte) (Typed, error) {
		var v T
		if err := UnmarshalData(raw, &v); err != nil {
			return Typed{}, err
		}
		job, pkg := ids(v)
		return Typed{Data: v, JobID: job, PackageID: pkg}, nil
	}
}

// DecodeTyped decodes data that ValidateData accepted for typ into its Go
// type. Valid data may still not decode (1.0 for an integer field).
func DecodeTyped(typ string, raw []byte) (Typed, error) {
	dec, ok := dataTypes[typ]
	if !ok {
		return Typed{}, fmt.Errorf("%w: %q", ErrNoDataType, typ)
	}
	return dec(raw)
}
