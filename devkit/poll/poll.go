// Package poll is the tests' one way to wait for something that happens
// asynchronously (a message consumed, a row projected, a file staged):
// call a check until it passes, and fail the test with what was awaited
// and the check's last word when it does not pass in time.
//
// A deadline, not a sleep: a test waits only as long as the system needs, and
// a slow machine stretches it up to within instead of failing.
package poll

import (
	"errors"
	"testing"
	"time"
)

// Polling starts at first and backs off to at most most: a check that
// passes at once costs nothing, and a long wait does not query the system
// under test a hundred times a second.
const (
	first = 10 * time.Millisecond
	most  = 100 * time.Millisecond
)

// Until calls check until it returns nil, and fails t (Fatalf, so call it
// from the test's goroutine) when check still fails after within, naming
// what it waited for and check's last error. A cancelled test context ends
// the wait early, as a failure.
func Until(t testing.TB, within time.Duration, what string, check func() error) {
	t.Helper()
	if err := wait(t.Context().Done(), within, check); err != nil {
		t.Fatalf("waiting for %s: still failing after %s: %v", what, within, err)
	}
}

// True adapts a condition for Until, for checks that have nothing to say
// but yes or no.
func True(cond func() bool) func() error {
	return func() error {
		if cond() {
			return nil
		}
		return errNotYet
	}
}

var errNotYet = errors.New("not yet")

// wait is Until without the test: it returns nil once check passes, or
// check's last error after within or when done closes.
func wait(done <-chan struct{}, within time.Duration, check func() error) error {
	deadline := time.Now().Add(within)
	interval := first
	for {
		err := check()
		if err == nil {
			return nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return err
		}
		select {
		case <-done:
			return errors.Join(err, errors.New("test ended"))
		case <-time.After(min(interval, left)):
		}
		interval = min(2*interval, most)
	}
}
