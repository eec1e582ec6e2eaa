package planner

import (
	"context"
	"errors"

	"github.com/ccatobs/ccat-staging/services/planner/catalog"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/fault"
	"github.com/ccatobs/ccat-staging/shared/logx"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Reason codes the catalog terminates archive messages with (they show in
// the MSG_TERMINATED advisory and the logs; no event is defined for them).
const (
	reasonCatalogConflict = "catalog_conflict"
)

// handleArchive records archive announcements in the catalog. Announcements
// are facts about the archive, not requests, so nothing is published back:
// a malformed or conflicting one is logged, counted and terminated.
func (s *service) handleArchive(ctx context.Context, m jetstream.Msg) {
	log := s.log.With().Str("consumer", "planner-catalog").Logger()
	if md, err := m.Metadata(); err == nil {
		log = log.With().Uint64(logx.StreamSeq, md.Sequence.Stream).Uint64("delivered", md.NumDelivered).Logger()
	}
	// The logger travels in ctx and gains the event's ids as archive
	// learns them, so the settle below logs them too.
	ctx = log.WithContext(ctx)
	err := s.archive(ctx, m)
	bus.Settle(ctx, m, err, *zerolog.Ctx(ctx))
}

func (s *service) archive(ctx context.Context, m jetstream.Msg) error {
	log := zerolog.Ctx(ctx)
	env, err := event.Decode(m.Data())
	if err != nil {
		s.m.catalog.WithLabelValues("invalid").Inc()
		return fault.Permanent(event.ReasonInvalidEnvelope, err)
	}
	log.UpdateContext(func(c zerolog.Context) zerolog.Context {
		return c.Str(logx.EventID, env.ID).Str(logx.EventType, env.Type)
	})
	switch env.Type {
	case event.TypePackageArchived:
		a, err := event.DataAs[event.PackageArchived](env)
		if err != nil {
			s.m.catalog.WithLabelValues("invalid").Inc()
			return fault.Permanent(reasonOf(err), err)
		}
		log.UpdateContext(func(c zerolog.Context) zerolog.Context {
			return c.Str(logx.PackageID, a.PackageID).Str(logx.Location, a.Location)
		})
		if a, err = s.byReference(ctx, a, log); err != nil {
			return err
		}
		res, err := s.catalog.Add(ctx, a.PackageID, catalog.FromArchived(a))
		if errors.Is(err, catalog.ErrConflict) {
			s.m.catalog.WithLabelValues("conflict").Inc()
			return fault.Permanent(reasonCatalogConflict, err)
		}
		if err != nil {
			return err
		}
		s.m.catalog.WithLabelValues(string(res)).Inc()
		log.Debug().Str("result", string(res)).Msg("catalog updated")
		return nil
	case event.TypePackageRemoved:
		r, err := event.DataAs[event.PackageRemoved](env)
		if err != nil {
			s.m.catalog.WithLabelValues("invalid").Inc()
			return fault.Permanent(reasonOf(err), err)
		}
		log.UpdateContext(func(c zerolog.Context) zerolog.Context {
			return c.Str(logx.PackageID, r.PackageID).Str(logx.Location, r.Location)
		})
		res, err := s.catalog.Remove(ctx, r.PackageID, r.Location)
		if err != nil {
			return err
		}
		s.m.catalog.WithLabelValues(string(res)).Inc()
		log.Info().Str("result", string(res)).Str("why", r.Reason).Msg("catalog copy removed")
		return nil
	default:
		// Other archive.* events may be added for other consumers; they are
		// not the catalog's business and must not be redelivered.
		s.m.catalog.WithLabelValues("ignored").Inc()
		log.Debug().Msg("ignoring archive event of another type")
		return nil
	}
}

// reasonOf returns the event package's reason code of a validation error.
func reasonOf(err error) string {
	if ie, ok := errors.AsType[*event.InvalidError](err); ok {
		return ie.Reason
	}
	return event.ReasonInvalidData
}
