// Package archive reads package tars from long-term archive locations. Every
// backend is the same small interface, so the stager's staging code never
// knows whether the bytes come from a disk, an S3 bucket or a tape recall.
package archive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/fault"
	"github.com/ccatobs/ccat-staging/shared/topology"
)

// Backend reads objects of one archive location by key. Errors are
// classified with shared/fault: a missing object is permanent
// (source_missing), everything else transient unless the backend knows
// better.
type Backend interface {
	// Open streams the object. The caller reads it once, front to back, and
	// closes it.
	Open(ctx context.Context, key string) (io.ReadCloser, error)
	// Size returns the object's length in bytes.
	Size(ctx context.Context, key string) (int64, error)
}

// Credentials are an S3 access key pair; they never appear in logs.
type Credentials struct {
	AccessKeyID     string
	SecretAccessKey string
}

// String hides the secret from every formatter.
func (c Credentials) String() string { return "Credentials{" + c.AccessKeyID + ", ***}" }

// For returns the backend of an archive location. creds are the location's
// S3 credentials (ignored by other storages).
func For(loc topology.Location, creds Credentials) (Backend, error) {
	switch loc.Storage {
	case topology.StorageDisk:
		return Disk{Root: loc.Path}, nil
	case topology.StorageTape:
		if loc.Recall == nil || len(loc.Recall.Command) == 0 {
			// A tape location without a recall command is a disk cache
			// that is always online.
			return Disk{Root: loc.Path}, nil
		}
		return Recall{Disk: Disk{Root: loc.Path}, Command: loc.Recall.Command, Timeout: loc.Recall.Timeout}, nil
	case topology.StorageS3:
		if loc.S3 == nil {
			return nil, fmt.Errorf("location %s: no s3 settings", loc.Name)
		}
		return NewS3(*loc.S3, creds)
	}
	return nil, fmt.Errorf("location %s: unsupported storage %q", loc.Name, loc.Storage)
}

// CleanKey checks that key is a relative slash path without "." or ".."
// elements or NUL, so it cannot name anything outside the location.
func CleanKey(key string) (string, error) {
	bad := key == "" || strings.HasPrefix(key, "/") || strings.ContainsRune(key, 0) ||
		slices.ContainsFunc(strings.Split(key, "/"), func(e string) bool { return e == ".." || e == "." })
	if bad {
		return "", fault.Permanent(event.ReasonBadRequest, fmt.Errorf("archive key %q is not a clean relative path", key))
	}
	return path.Clean(key), nil
}

func missing(key string, err error) error {
	return fault.Permanent(event.ReasonSourceMissing, fmt.Errorf("archive object %q: %w", key, err))
}

func transient(what string, err error) error {
	if err == nil {
		err = errors.New(what)
	}
	return fault.Transient(event.ReasonIOError, fmt.Errorf("%s: %w", what, err))
}
