package bus

import (
	"context"
	"fmt"
	"time"

	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
)

// DeadLetterStreams returns the advisory-capture and dead-letter streams.
// Advisories are kept a week: long enough for any stager outage, short
// enough that the stream never matters for disk.
func DeadLetterStreams(c StreamConfig) []jetstream.StreamConfig {
	c = c.withDefaults()
	return []jetstream.StreamConfig{
		{
			Name:        subject.AdvisoryStream,
			Description: "MAX_DELIVERIES advisories of STAGING_REQUESTS, kept until a stager moves the request to STAGING_DEAD",
			Subjects:    []string{subject.RequestAdvisoriesAll},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    c.Replicas,
			MaxAge:      7 * 24 * time.Hour,
			MaxBytes:    c.MaxBytes,
			Discard:     jetstream.DiscardOld,
		},
		{
			Name:        subject.DeadStream,
			Description: "staging.dead.<site>: requests that ran out of deliveries, for inspection and resubmission",
			Subjects:    []string{subject.DeadAll},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    c.Replicas,
			MaxAge:      c.EventsMaxAge,
			MaxBytes:    c.MaxBytes,
			Duplicates:  c.DuplicateWindow,
			Discard:     jetstream.DiscardOld,
		},
	}
}

// ProvisionDeadLetter creates or updates the dead-letter streams; it is
// idempotent like Provision.
func ProvisionDeadLetter(ctx context.Context, js jetstream.StreamManager, c StreamConfig) error {
	for _, sc := range DeadLetterStreams(c) {
		if _, err := EnsureStream(ctx, js, sc); err != nil {
			return fmt.Errorf("provision stream %s: %w", sc.Name, err)
		}
	}
	return nil
}

// StagerAdvisoryConsumer is the durable through which a site's stagers read
// the MAX_DELIVERIES advisories of the site's request consumers.
func StagerAdvisoryConsumer(site string) jetstream.ConsumerConfig {
	filters := make([]string, 0, len(subject.Priorities))
	for _, p := range subject.Priorities {
		filters = append(filters, subject.MaxDeliveries(subject.StagerDurable(site, p)))
	}
	return jetstream.ConsumerConfig{
		Durable:        subject.StagerAdvisoryDurable(site),
		Description:    "MAX_DELIVERIES advisories of the stagers of site " + site,
		FilterSubjects: filters,
		AckPolicy:      jetstream.AckExplicitPolicy,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		AckWait:        30 * time.Second,
		MaxDeliver:     -1,
		MaxAckPending:  16,
	}
}
