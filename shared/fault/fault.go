// Package fault sorts errors into the two kinds a message consumer acts on.
// A permanent error fails the same way on every delivery, so retrying it only
// burns attempts; anything not marked permanent is treated as transient,
// because a wrongly transient error costs a few retries while a wrongly
// permanent one drops work.
package fault

import "errors"

// Error is a classified error: a stable reason code for events and metrics
// plus whether retrying can help.
type Error struct {
	Reason    string // stable code, e.g. "checksum_mismatch"
	Permanent bool
	Err       error
}

func (e *Error) Error() string {
	if e.Err == nil {
		return e.Reason
	}
	return e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Permanent marks err as not worth retrying, with a reason code.
// Permanent(reason, nil) still returns an error carrying the reason.
func Permanent(reason string, err error) error {
	return &Error{Reason: reason, Permanent: true, Err: err}
}

// Transient marks err as worth retrying, with a reason code for the record.
func Transient(reason string, err error) error {
	return &Error{Reason: reason, Err: err}
}

// IsPermanent reports whether any error in err's tree was marked Permanent.
func IsPermanent(err error) bool {
	e, ok := errors.AsType[*Error](err)
	return ok && e.Permanent
}

// Reason returns the reason code of the outermost classified error in err's
// tree, or def when there is none.
func Reason(err error, def string) string {
	if e, ok := errors.AsType[*Error](err); ok && e.Reason != "" {
		return e.Reason
	}
	return def
}
