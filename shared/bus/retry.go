package bus

import (
	"math/rand/v2"
	"time"

	"github.com/ccatobs/ccat-staging/shared/config"
	"github.com/ccatobs/ccat-staging/shared/event"
)

// Retry is the one redelivery policy of every consumer: how long a message
// whose handler failed transiently waits before it is delivered again. The
// stagers nak with it, the planner's and the cleanup handlers settle with it
// (Settle), and the ledger's explain reads it to say when a failed package
// is retried, so the prediction is what the stagers do. It is configured in
// one place, the STAGER_RETRY_* variables (RetryFromEnv), read by every
// service that needs it.
type Retry struct {
	// Base is the delay after the first failed delivery; it doubles per
	// delivery up to Max.
	Base, Max time.Duration
	// NoSpace replaces the doubling while the destination is full: space
	// comes back when other packages are released, not by waiting longer.
	NoSpace time.Duration
	// Jitter spreads delays by ±Jitter (0.2 = ±20 %), so a site's failed
	// packages do not all come back in the same second.
	Jitter float64
}

// Environment variables of the retry policy; the names are the stager's
// historic ones, now read by the ledger too.
const (
	EnvRetryBase    = "STAGER_RETRY_BASE"
	EnvRetryMax     = "STAGER_RETRY_MAX"
	EnvNoSpaceDelay = "STAGER_NO_SPACE_DELAY"
)

// DefaultRetry is the policy when nothing is configured: 1 s doubling to
// 5 min, 30 s while the destination is full, ±20 %.
func DefaultRetry() Retry {
	return Retry{Base: time.Second, Max: 5 * time.Minute, NoSpace: 30 * time.Second, Jitter: 0.2}
}

// RetryFromEnv reads the policy; unset variables keep DefaultRetry's values.
// A malformed value is reported through e.Err.
func RetryFromEnv(e *config.Env) Retry {
	d := DefaultRetry()
	return Retry{
		Base:    e.Duration(EnvRetryBase, d.Base),
		Max:     e.Duration(EnvRetryMax, d.Max),
		NoSpace: e.Duration(EnvNoSpaceDelay, d.NoSpace),
		Jitter:  d.Jitter,
	}.WithDefaults()
}

// WithDefaults fills the zero fields from DefaultRetry (Jitter 0 stays 0
// only when Base is set too, so a zero Retry is the default policy).
func (r Retry) WithDefaults() Retry {
	d := DefaultRetry()
	if r == (Retry{}) {
		return d
	}
	if r.Base <= 0 {
		r.Base = d.Base
	}
	if r.Max <= 0 {
		r.Max = d.Max
	}
	if r.NoSpace <= 0 {
		r.NoSpace = d.NoSpace
	}
	r.Max = max(r.Max, r.Base)
	return r
}

// Nominal is the delay after the n-th failed delivery (n >= 1) for reason,
// without jitter: what explain shows as "about".
func (r Retry) Nominal(n int, reason string) time.Duration {
	r = r.WithDefaults()
	if reason == event.ReasonNoSpace {
		return r.NoSpace
	}
	d := r.Base
	for i := 1; i < n && d < r.Max; i++ {
		d *= 2
	}
	return min(d, r.Max)
}

// Delay is Nominal with the policy's jitter.
func (r Retry) Delay(n int, reason string) time.Duration {
	d := r.Nominal(n, reason)
	if r.Jitter <= 0 {
		return d
	}
	return time.Duration(float64(d) * (1 - r.Jitter + 2*r.Jitter*rand.Float64()))
}
