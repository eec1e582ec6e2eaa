package bus

import (
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/shared/config"
	"github.com/ccatobs/ccat-staging/shared/event"
)

func TestRetryPolicy(t *testing.T) {
	r := Retry{Base: time.Second, Max: 10 * time.Second, NoSpace: 30 * time.Second, Jitter: 0.2}
	tests := []struct {
		n      int
		reason string
		want   time.Duration
	}{
		{1, "", time.Second},
		{2, event.ReasonIOError, 2 * time.Second},
		{4, "", 8 * time.Second},
		{5, "", 10 * time.Second}, // capped
		{50, "", 10 * time.Second},
		{0, "", time.Second},
		{1, event.ReasonNoSpace, 30 * time.Second}, // fixed, not doubled
		{7, event.ReasonNoSpace, 30 * time.Second},
	}
	for _, tc := range tests {
		if got := r.Nominal(tc.n, tc.reason); got != tc.want {
			t.Errorf("Nominal(%d, %q) = %s, want %s", tc.n, tc.reason, got, tc.want)
		}
		for range 20 {
			got := r.Delay(tc.n, tc.reason)
			lo, hi := time.Duration(float64(tc.want)*0.8), time.Duration(float64(tc.want)*1.2)
			if got < lo || got > hi {
				t.Fatalf("Delay(%d, %q) = %s, want within ±20 %% of %s", tc.n, tc.reason, got, tc.want)
			}
		}
	}
	if (Retry{}).Nominal(1, event.ReasonNoSpace) != DefaultRetry().NoSpace {
		t.Error("the zero Retry is not the default policy")
	}
}

// The stagers, the ledger and stagectl read the policy from the same
// variables.
func TestRetryFromEnv(t *testing.T) {
	e := config.NewEnv(func(k string) string {
		return map[string]string{EnvRetryBase: "2s", EnvRetryMax: "1m", EnvNoSpaceDelay: "45s"}[k]
	})
	r := RetryFromEnv(e)
	if err := e.Err(); err != nil {
		t.Fatal(err)
	}
	if r.Base != 2*time.Second || r.Max != time.Minute || r.NoSpace != 45*time.Second || r.Jitter != 0.2 {
		t.Errorf("RetryFromEnv = %+v", r)
	}
	bad := config.NewEnv(func(k string) string { return map[string]string{EnvRetryMax: "soon"}[k] })
	RetryFromEnv(bad)
	if bad.Err() == nil {
		t.Error("a malformed STAGER_RETRY_MAX is not reported")
	}
}
