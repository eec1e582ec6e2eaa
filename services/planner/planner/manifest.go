package planner

import (
	"context"
	"errors"
	"fmt"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/fault"
	"github.com/ccatobs/ccat-staging/shared/logx"
	"github.com/ccatobs/ccat-staging/shared/manifest"
	"github.com/rs/zerolog"
)

// byReference moves an inline file list larger than manifest.InlineLimit
// into the MANIFESTS bucket and returns the reference in its place. The
// catalog's value holds a package's list once per archive location and a
// request carries it with its own fields, so a list that only just fitted
// the announcement would not fit either of those: stagectl already sends
// such lists by reference, other upstream archivers may not. The object is
// keyed by the checksum and stored only when its bytes differ, so a
// redelivered announcement costs one lookup.
// An announcement that already carries a reference, or a small list, is
// returned as it is.
func (s *service) byReference(ctx context.Context, a event.PackageArchived, log *zerolog.Logger) (event.PackageArchived, error) {
	if len(a.Files) == 0 || manifest.EncodedSize(a.Files) <= manifest.InlineLimit(s.maxPayload) {
		return a, nil
	}
	pkg, checksum, files := a.PackageID, a.Checksum, a.Files
	obs, err := manifest.Open(ctx, s.js)
	if err != nil {
		return a, fault.Transient(event.ReasonIOError, err)
	}
	ref, err := manifest.Store(ctx, obs, checksum, files, "")
	if errors.Is(err, manifest.ErrTooLarge) {
		// The schema admits no such announcement; one that slipped through
		// fails the same way on every delivery.
		return a, fault.Permanent("manifest_too_large", fmt.Errorf("manifest of %s: %w", pkg, err))
	}
	if err != nil {
		return a, fmt.Errorf("manifest of %s: %w", pkg, err)
	}
	s.m.manifests.Inc()
	log.Info().Str(logx.PackageID, pkg).Int("files", ref.Files).Int64("manifest_bytes", ref.SizeBytes).
		Msg("file list stored in MANIFESTS; catalog and requests carry the reference")
	a.Files, a.Manifest = nil, &ref
	return a, nil
}
