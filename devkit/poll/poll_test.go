package poll

import (
	"errors"
	"testing"
	"time"
)

func TestWait(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name   string
		passOn int // the call that passes; 0: never
		within time.Duration
		want   error
	}{
		{"passes at once", 1, time.Second, nil},
		{"passes on the fourth call", 4, 5 * time.Second, nil},
		{"never passes: the last error", 0, 50 * time.Millisecond, boom},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			err := wait(t.Context().Done(), tc.within, func() error {
				calls++
				if calls == tc.passOn {
					return nil
				}
				return boom
			})
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("wait = %v, want %v", err, tc.want)
			}
			if tc.passOn > 0 && calls != tc.passOn {
				t.Errorf("%d calls, want %d", calls, tc.passOn)
			}
		})
	}
}

func TestWaitEndsWithTheTest(t *testing.T) {
	done := make(chan struct{})
	close(done)
	err := wait(done, time.Hour, func() error { return errNotYet })
	if !errors.Is(err, errNotYet) {
		t.Fatalf("wait = %v, want the check's error and an early end", err)
	}
}

func TestTrue(t *testing.T) {
	if err := True(func() bool { return true })(); err != nil {
		t.Errorf("True(true) = %v", err)
	}
	if err := True(func() bool { return false })(); err == nil {
		t.Error("True(false) = nil")
	}
}
