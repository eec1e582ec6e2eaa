package bus

import (
	"context"
	"fmt"
	"time"

	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
)

// CleanupStream is the work queue of deletion items (staging.cleanup.<site>):
// a stream of its own, so a deletion never waits behind staging requests and
// the request stream's consumers never see one.
func CleanupStream(c StreamConfig) jetstream.StreamConfig {
	c = c.withDefaults()
	return jetstream.StreamConfig{
		Name:        subject.CleanupStream,
		Description: "staging.cleanup.<site>: deletion of staged copies nobody references, removed when settled",
		Subjects:    []string{subject.CleanupAll},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    c.Replicas,
		MaxBytes:    c.MaxBytes,
		Duplicates:  c.DuplicateWindow,
		Discard:     jetstream.DiscardNew,
	}
}

// ProvisionCleanup creates or updates the cleanup stream (idempotent, like
// Provision; an existing matching stream is only looked at).
func ProvisionCleanup(ctx context.Context, js jetstream.StreamManager, c StreamConfig) error {
	sc := CleanupStream(c)
	if _, err := EnsureStream(ctx, js, sc); err != nil {
		return fmt.Errorf("provision stream %s: %w", sc.Name, err)
	}
	return nil
}

// StagerCleanupConsumer is the durable consumer of a site's deletion items.
// Planner and stager provision it with this one definition.
func StagerCleanupConsumer(site string) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       subject.StagerCleanupDurable(site),
		Description:   "deletion of unreferenced staged copies for the stagers of site " + site,
		FilterSubject: subject.Cleanup(site),
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait:       2 * time.Minute,
		MaxDeliver:    5,
		MaxAckPending: 16,
	}
}
