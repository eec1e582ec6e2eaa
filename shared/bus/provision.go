package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
)

// StreamConfig holds the knobs an operator sets per deployment. The zero value
// is a single-node setup that keeps events for a year.
type StreamConfig struct {
	Replicas int // 1 (default) or 3 in a cluster
	// EventsMaxAge bounds STAGING_EVENTS and ARCHIVE. The ledger can be rebuilt
	// only from what the streams still hold, so keep it at least as long as
	// the history you want a rebuild to reproduce. 0 = 365 days.
	EventsMaxAge time.Duration
	// DuplicateWindow is how long a Nats-Msg-Id is remembered; 0 = 2 minutes.
	DuplicateWindow time.Duration
	// MaxBytes caps each stream; 0 = unlimited.
	MaxBytes int64
}

func (c StreamConfig) withDefaults() StreamConfig {
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.EventsMaxAge == 0 {
		c.EventsMaxAge = 365 * 24 * time.Hour
	}
	if c.DuplicateWindow == 0 {
		c.DuplicateWindow = 2 * time.Minute
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = -1
	}
	return c
}

// Streams returns the configuration of every stream, for provisioning and
// for docs and tests that check what is deployed.
func Streams(c StreamConfig) []jetstream.StreamConfig {
	c = c.withDefaults()
	return []jetstream.StreamConfig{
		{
			Name:        subject.ArchiveStream,
			Description: "archive.* events: which package copies exist where",
			Subjects:    []string{subject.ArchiveAll},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    c.Replicas,
			MaxAge:      c.EventsMaxAge,
			MaxBytes:    c.MaxBytes,
			Duplicates:  c.DuplicateWindow,
			Discard:     jetstream.DiscardOld,
		},
		{
			Name:        subject.EventsStream,
			Description: "staging.<event>: submits, plans and outcomes; the ledger's source",
			Subjects:    []string{subject.EventsAll},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    c.Replicas,
			MaxAge:      c.EventsMaxAge,
			MaxBytes:    c.MaxBytes,
			Duplicates:  c.DuplicateWindow,
			Discard:     jetstream.DiscardOld,
		},
		{
			Name:        subject.RequestsStream,
			Description: "staging.request.<site>: one work item per package, removed when settled",
			Subjects:    []string{subject.RequestsAll},
			Retention:   jetstream.WorkQueuePolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    c.Replicas,
			MaxBytes:    c.MaxBytes,
			Duplicates:  c.DuplicateWindow,
			// New work is refused rather than old work silently dropped.
			Discard: jetstream.DiscardNew,
			// The planner's reconciler reads the queue in batched direct
			// gets (a work queue admits no second consumer on its
			// subjects). StreamDiff ignores it: only the planner turns it on
			// in a stream created before.
			AllowDirect: true,
		},
	}
}

// Manifests returns the configuration of the MANIFESTS object store: file
// manifests too large to travel inline, keyed by package checksum.
//
// Retention: none by age or size. A manifest is referred to by the
// announcement in ARCHIVE, by the planner's catalog entry (KV CATALOG, kept
// until the package is forgotten) and by requests; any of them may be
// read long after the announcement, so a manifest must live at least as long
// as the catalog entry that refers to it and is never expired behind its
// back. Manifests are small next to the packages they describe (about 140
// bytes per file: 140 MB for a 1,000,000-file package of many GB), one per
// distinct package content, and compressed at rest. Removing one is an
// operator's act (`nats object rm MANIFESTS <checksum>`) once no catalog
// entry refers to it.
func Manifests(c StreamConfig) jetstream.ObjectStoreConfig {
	c = c.withDefaults()
	return jetstream.ObjectStoreConfig{
		Bucket:      subject.ManifestsBucket,
		Description: "package checksum -> file manifest (JSON array of files) too large for one message",
		Storage:     jetstream.FileStorage,
		Replicas:    c.Replicas,
		Compression: true,
	}
}

// Provisioner is what Provision needs: streams and object stores.
type Provisioner interface {
	jetstream.StreamManager
	jetstream.ObjectStoreManager
}

// Provision creates or updates every stream and the MANIFESTS object store.
// It is idempotent, so every service calls it at start-up and the first one
// to run sets things up. A stream or bucket that already matches is left
// alone (EnsureStream, ensureObjectStore), so a service without the right
// to change streams starts once they are provisioned.
func Provision(ctx context.Context, js Provisioner, c StreamConfig) error {
	for _, sc := range Streams(c) {
		if _, err := EnsureStream(ctx, js, sc); err != nil {
			return fmt.Errorf("provision stream %s: %w", sc.Name, err)
		}
	}
	if err := ensureObjectStore(ctx, js, Manifests(c)); err != nil {
		return fmt.Errorf("provision object store %s: %w", subject.ManifestsBucket, err)
	}
	return nil
}

// ensureObjectStore creates the bucket when missing and updates it only when
// its replicas or compression differ, like EnsureStream.
func ensureObjectStore(ctx context.Context, js jetstream.ObjectStoreManager, oc jetstream.ObjectStoreConfig) error {
	obs, err := js.ObjectStore(ctx, oc.Bucket)
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound):
		_, err = js.CreateObjectStore(ctx, oc)
		return err
	case err != nil:
		return err
	}
	st, err := obs.Status(ctx)
	if err != nil {
		return err
	}
	if st.Replicas() != oc.Replicas || st.IsCompressed() != oc.Compression {
		_, err = js.UpdateObjectStore(ctx, oc)
	}
	return err
}

// StagerConsumerConfig tunes a site's work consumer.
type StagerConsumerConfig struct {
	// AckWait is how long a stager may stay silent on a message before the
	// server redelivers it; stagers send InProgress well inside it. 0 = 60s.
	AckWait time.Duration
	// MaxDeliver bounds attempts per request; 0 = 5.
	MaxDeliver int
	// MaxAckPending bounds the packages in flight at the site; 0 = 64.
	MaxAckPending int
}

// StagerConsumer returns the durable consumer config of a site's stagers at
// one priority. Planner and stager both provision it with this one
// definition, so a CreateOrUpdate from either never fights the other.
func StagerConsumer(site, priority string, c StagerConsumerConfig) jetstream.ConsumerConfig {
	if c.AckWait == 0 {
		c.AckWait = 60 * time.Second
	}
	if c.MaxDeliver == 0 {
		c.MaxDeliver = 5
	}
	if c.MaxAckPending == 0 {
		c.MaxAckPending = 64
	}
	return jetstream.ConsumerConfig{
		Durable:       subject.StagerDurable(site, priority),
		Description:   priority + "-priority requests for the stagers of site " + site,
		FilterSubject: subject.Request(site, priority),
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait:       c.AckWait,
		MaxDeliver:    c.MaxDeliver,
		MaxAckPending: c.MaxAckPending,
	}
}

// ProvisionStager creates or updates the durable consumers of a site, one per
// priority, and returns them highest priority first (subject.Priorities).
func ProvisionStager(ctx context.Context, js jetstream.JetStream, site string, c StagerConsumerConfig) ([]jetstream.Consumer, error) {
	out := make([]jetstream.Consumer, 0, len(subject.Priorities))
	for _, p := range subject.Priorities {
		cons, err := js.CreateOrUpdateConsumer(ctx, subject.RequestsStream, StagerConsumer(site, p, c))
		if err != nil {
			return nil, fmt.Errorf("provision consumer %s: %w", subject.StagerDurable(site, p), err)
		}
		out = append(out, cons)
	}
	return out, nil
}

// StreamNamed returns the configuration of the stream called name among
// every stream this package defines (events, dead letters, cleanup), so a
// Runner can provision a durable's stream again; ok is false for a stream
// defined elsewhere (a KV bucket's).
func StreamNamed(c StreamConfig, name string) (jetstream.StreamConfig, bool) {
	all := append(Streams(c), DeadLetterStreams(c)...)
	all = append(all, CleanupStream(c))
	for _, sc := range all {
		if sc.Name == name {
			return sc, true
		}
	}
	return jetstream.StreamConfig{}, false
}

// DurableOn is the Durable of consumer cc on the stream called stream, with
// the stream's configuration from StreamNamed.
func DurableOn(c StreamConfig, stream string, cc jetstream.ConsumerConfig) Durable {
	sc, ok := StreamNamed(c, stream)
	if !ok {
		sc = jetstream.StreamConfig{Name: stream}
	}
	return Durable{Stream: sc, Consumer: cc}
}
