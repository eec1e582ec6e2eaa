package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ccatobs/ccat-staging/shared/event"
	"github.com/ccatobs/ccat-staging/shared/subject"
)

// archivedManifests reads every archive.package.archived event in the ARCHIVE
// stream and returns the latest announcement of each package in want (all
// packages when want is nil). The ledger's job answers carry no manifests, so
// the stream, which keeps every announcement, is the record to read.
func archivedManifests(ctx context.Context, js jetstream.JetStream, want map[string]bool) (map[string]event.PackageArchived, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, subject.ArchiveStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subject.Archived},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("read stream %s: %w", subject.ArchiveStream, err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("read stream %s: %w", subject.ArchiveStream, err)
	}
	out := map[string]event.PackageArchived{}
	if info.NumPending == 0 {
		return out, nil
	}
	it, err := cons.Messages()
	if err != nil {
		return nil, fmt.Errorf("read stream %s: %w", subject.ArchiveStream, err)
	}
	defer it.Stop()
	go func() { <-ctx.Done(); it.Stop() }()
	for {
		m, err := it.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) && ctx.Err() != nil {
				err = ctx.Err()
			}
			return nil, fmt.Errorf("read stream %s: %w", subject.ArchiveStream, err)
		}
		if a, ok := decodeArchived(m.Data()); ok && (want == nil || want[a.PackageID]) {
			out[a.PackageID] = a // later announcements replace earlier ones
		}
		md, err := m.Metadata()
		if err != nil || md.NumPending == 0 {
			return out, nil
		}
	}
}

// decodeArchived skips what is not a valid announcement: the audit reads
// history, where a bad event was already refused by the services.
func decodeArchived(raw []byte) (event.PackageArchived, bool) {
	env, err := event.Decode(raw)
	if err != nil {
		return event.PackageArchived{}, false
	}
	a, err := event.DataAs[event.PackageArchived](env)
	return a, err == nil
}
