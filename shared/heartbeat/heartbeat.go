// Package heartbeat is how stager instances announce that they are alive:
// each puts a Beat under "<site>.<instance>" in the STAGERS KV bucket every
// Interval, and the bucket forgets keys after TTL, so a key that exists is a
// live instance (CCAT's health:* keys, done with JetStream).
package heartbeat

import (
	"context"
	"fmt"
	"time"

	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/nats-io/nats.go/jetstream"
)

// Interval between beats, and TTL after which a silent instance is gone.
const (
	Interval = 10 * time.Second
	TTL      = 30 * time.Second
)

// Beat is one instance's announcement.
type Beat struct {
	Site      string    `json:"site"`
	Instance  string    `json:"instance"`
	Version   string    `json:"version"`
	Workers   int       `json:"workers"`
	Busy      int       `json:"busy"`       // packages in flight
	FreeBytes int64     `json:"free_bytes"` // free space of the site's processing locations
	StartedAt time.Time `json:"started_at"`
	At        time.Time `json:"at"`
}

// Key is the KV key of an instance.
func Key(site, instance string) string { return site + "." + instance }

// Bucket creates or updates the STAGERS bucket and returns it.
func Bucket(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	if replicas == 0 {
		replicas = 1
	}
	// Look before changing anything: under the least-privilege permissions
	// of deploy/nats a stager may put its own keys but not update the bucket,
	// and a refused update only times out.
	if kv, err := js.KeyValue(ctx, subject.StagerBucket); err == nil {
		if st, err := kv.Status(ctx); err == nil {
			c := st.Config()
			if c.TTL == TTL && c.History == 1 && c.Replicas == replicas && c.Storage == jetstream.FileStorage {
				return kv, nil
			}
		}
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      subject.StagerBucket,
		Description: "live stager instances: <site>.<instance> -> heartbeat.Beat",
		TTL:         TTL,
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("kv bucket %s: %w", subject.StagerBucket, err)
	}
	return kv, nil
}
