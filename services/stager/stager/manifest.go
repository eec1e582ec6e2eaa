package stager

import (
	"context"
	"time"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/fault"
	"github.com/ccatobs/ccat-staging/shared/manifest"
)

// manifestFiles returns the request's manifest in whichever form it came:
// the inline list, or the list fetched from MANIFESTS by reference and
// verified (size, sha256, then a streaming parse of every entry) before the
// archive is opened, so a tampered or replaced manifest fails the request
// permanently (bad_manifest) without reading a byte of the package.
func (s *service) manifestFiles(ctx context.Context, a *attempt) ([]event.File, error) {
	ref := a.req.Manifest
	if ref == nil {
		return a.req.Files, nil
	}
	start := time.Now()
	files, err := s.fetchManifest(ctx, a.req.Checksum, *ref)
	outcome := "ok"
	if err != nil {
		outcome = fault.Reason(err, event.ReasonIOError)
	}
	s.m.manifests.WithLabelValues(outcome).Inc()
	log := a.log.With().Int("files", ref.Files).Int64("manifest_bytes", ref.SizeBytes).Dur("took", time.Since(start)).Logger()
	if err != nil {
		log.Warn().Err(err).Msg("manifest by reference not usable")
		return nil, err
	}
	log.Info().Msg("manifest fetched and verified")
	return files, nil
}

func (s *service) fetchManifest(ctx context.Context, checksum string, ref event.ManifestRef) ([]event.File, error) {
	obs, err := manifest.Open(ctx, s.js)
	if err != nil {
		return nil, fault.Transient(event.ReasonIOError, err)
	}
	return manifest.Fetch(ctx, obs, checksum, ref, "")
}
