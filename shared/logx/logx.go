// Package logx builds the one zerolog logger a service uses, with the field
// names every service shares so logs can be joined across services.
package logx

import (
	"io"
	"os"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
)

// Field names used across services.
const (
	JobID     = "job_id"
	PackageID = "package_id"
	Site      = "site"
	Location  = "location"
	Attempt   = "attempt"
	EventID   = "event_id"
	EventType = "event_type"
	Service   = "service"
	Instance  = "instance"
	StreamSeq = "stream_seq"
)

// New returns a JSON logger writing to w at level (debug, info, warn, error;
// anything else means info). format "console" gives human-readable lines;
// "auto" picks console when w is a terminal.
func New(w io.Writer, level, format, service string) zerolog.Logger {
	return Unnamed(w, level, format).With().Str(Service, service).Logger()
}

// Unnamed is New without the service field, for a process that runs several
// services and names each one's logger itself (the in-process launcher).
func Unnamed(w io.Writer, level, format string) zerolog.Logger {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil || level == "" {
		lvl = zerolog.InfoLevel
	}
	if format == "console" || (format == "auto" && isTerminal(w)) {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger()
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && isatty.IsTerminal(f.Fd())
}
