package bus_test

import (
	"context"
	"testing"
	"time"

	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/internal/jstest"
	"github.com/nats-io/nats.go/jetstream"
)

// countingJS counts the calls that change a stream.
type countingJS struct {
	jetstream.StreamManager
	creates, updates int
}

func (c *countingJS) CreateStream(ctx context.Context, sc jetstream.StreamConfig) (jetstream.Stream, error) {
	c.creates++
	return c.StreamManager.CreateStream(ctx, sc)
}

func (c *countingJS) UpdateStream(ctx context.Context, sc jetstream.StreamConfig) (jetstream.Stream, error) {
	c.updates++
	return c.StreamManager.UpdateStream(ctx, sc)
}

func TestEnsureStreamChangesOnlyWhatDiffers(t *testing.T) {
	srv := jstest.New(t)
	base := bus.Streams(bus.StreamConfig{})
	longer := bus.Streams(bus.StreamConfig{EventsMaxAge: 400 * 24 * time.Hour})
	for _, tc := range []struct {
		name             string
		streams          []jetstream.StreamConfig
		creates, updates int
	}{
		{"missing streams are created", base, len(base), 0},
		{"matching streams are left alone", base, 0, 0},
		{"a differing setting is updated", longer, 0, 2}, // ARCHIVE and STAGING_EVENTS keep events
		{"and then left alone", longer, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			js := &countingJS{StreamManager: srv.JS}
			for _, sc := range tc.streams {
				s, err := bus.EnsureStream(t.Context(), js, sc)
				if err != nil {
					t.Fatal(err)
				}
				if d := bus.StreamDiff(s.CachedInfo().Config, sc); d != "" {
					t.Errorf("%s: %s differs after EnsureStream", sc.Name, d)
				}
			}
			if js.creates != tc.creates || js.updates != tc.updates {
				t.Errorf("creates, updates = %d, %d; want %d, %d", js.creates, js.updates, tc.creates, tc.updates)
			}
		})
	}
}
