// Package config reads service settings from the environment. Every service
// uses the same variable names, so one env file can configure a host.
package config

import (
	"fmt"
	"strconv"
	"time"
)

// Env reads typed values through getenv (os.Getenv in production, a map in
// tests) and remembers the first malformed one.
type Env struct {
	getenv func(string) string
	err    error
}

// NewEnv wraps getenv.
func NewEnv(getenv func(string) string) *Env { return &Env{getenv: getenv} }

// Err returns the first malformed value seen, if any.
func (e *Env) Err() error { return e.err }

// String returns the variable or def when it is unset or empty.
func (e *Env) String(name, def string) string {
	if v := e.getenv(name); v != "" {
		return v
	}
	return def
}

// Int returns the variable as an int, or def.
func (e *Env) Int(name string, def int) int {
	v := e.getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil && e.err == nil {
		e.err = fmt.Errorf("%s=%q is not an integer", name, v)
	}
	if err != nil {
		return def
	}
	return n
}

// Float returns the variable as a float64, or def.
func (e *Env) Float(name string, def float64) float64 {
	v := e.getenv(name)
	if v == "" {
		return def
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		if e.err == nil {
			e.err = fmt.Errorf("%s=%q is not a number", name, v)
		}
		return def
	}
	return f
}

// Duration returns the variable as a time.Duration ("90s", "5m"), or def.
func (e *Env) Duration(name string, def time.Duration) time.Duration {
	v := e.getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		if e.err == nil {
			e.err = fmt.Errorf("%s=%q is not a duration: %v", name, v, err)
		}
		return def
	}
	return d
}

// Bool returns the variable as a bool ("1", "true", "0", "false"), or def.
func (e *Env) Bool(name string, def bool) bool {
	v := e.getenv(name)
	if v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		if e.err == nil {
			e.err = fmt.Errorf("%s=%q is not a boolean", name, v)
		}
		return def
	}
	return b
}

// Common variable names.
const (
	NATSURL     = "NATS_URL"
	DatabaseURL = "DATABASE_URL"
	Topology    = "TOPOLOGY_FILE"
	LogLevel    = "LOG_LEVEL"
	LogFormat   = "LOG_FORMAT"
	// StreamReplicas sets the replicas of every stream (1, or 3 in a cluster).
	StreamReplicas = "STREAM_REPLICAS"
	// EventsMaxAge bounds how long events are kept (and so what a rebuild replays).
	EventsMaxAge = "EVENTS_MAX_AGE"
)
