package ledger

import (
	"context"
	"fmt"
	"time"

	"github.com/ccatobs/ccat-staging/services/ledger/consume"
	"github.com/ccatobs/ccat-staging/services/ledger/store"
	"github.com/ccatobs/ccat-staging/shared/bus"
	"github.com/ccatobs/ccat-staging/shared/db"
	"github.com/ccatobs/ccat-staging/shared/subject"
	"github.com/ccatobs/ccat-staging/shared/topology"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// RebuildStats says what a rebuild replayed.
type RebuildStats struct {
	Messages int
	Took     time.Duration
}

// Rebuild drops the projection, recreates the schema and replays ARCHIVE and
// STAGING_EVENTS from their first message into it, with the same code the
// live consumers use. Stop the ledgers first: they would fail on the dropped
// tables (and then retry their batches, harmlessly, once it is back). The
// durables are left where they are; what they redeliver afterwards is
// already in the event log and changes nothing.
func Rebuild(ctx context.Context, cfg Config, log zerolog.Logger) (RebuildStats, error) {
	start := time.Now()
	var stats RebuildStats
	if err := db.EnsureDatabase(ctx, cfg.DatabaseURL); err != nil {
		return stats, err
	}
	bdb, err := db.Open(ctx, cfg.DatabaseURL, cfg.DBMaxConns)
	if err != nil {
		return stats, err
	}
	defer bdb.Close()
	st := store.New(bdb)
	if err := st.Reset(ctx); err != nil {
		return stats, fmt.Errorf("drop projection: %w", err)
	}
	if _, err := st.Migrate(ctx); err != nil {
		return stats, err
	}
	if cfg.TopologyFile != "" {
		t, err := topology.Load(cfg.TopologyFile)
		if err != nil {
			return stats, err
		}
		if err := st.SeedTopology(ctx, t); err != nil {
			return stats, err
		}
	}
	nc, js, err := bus.Connect(ctx, cfg.NATSURL, "ledger-rebuild", log)
	if err != nil {
		return stats, err
	}
	defer nc.Close()
	for _, name := range []string{subject.ArchiveStream, subject.EventsStream} {
		n, err := replay(ctx, js, st, name, cfg.BatchSize)
		stats.Messages += n
		if err != nil {
			return stats, err
		}
		log.Info().Str("stream", name).Int("messages", n).Msg("stream replayed")
	}
	stats.Took = time.Since(start)
	return stats, nil
}

// replay applies every message of a stream up to its last sequence at the
// time replay starts.
func replay(ctx context.Context, js jetstream.JetStream, st *store.Store, name string, batch int) (int, error) {
	s, err := js.Stream(ctx, name)
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", name, err)
	}
	last := s.CachedInfo().State.LastSeq
	if s.CachedInfo().State.Msgs == 0 {
		return 0, nil
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		return 0, fmt.Errorf("replay consumer on %s: %w", name, err)
	}
	n := 0
	for {
		b, err := cons.Fetch(batch, jetstream.FetchMaxWait(500*time.Millisecond))
		if err != nil {
			return n, fmt.Errorf("replay %s: %w", name, err)
		}
		var msgs []jetstream.Msg
		var seq uint64
		for m := range b.Messages() {
			msgs = append(msgs, m)
			if md, err := m.Metadata(); err == nil {
				seq = md.Sequence.Stream
			}
		}
		if len(msgs) > 0 {
			events, poison := consume.Sort(name, msgs)
			if _, err := st.Apply(ctx, events, poison); err != nil {
				return n, fmt.Errorf("replay %s: %w", name, err)
			}
			n += len(msgs)
		}
		if seq >= last {
			return n, nil
		}
		if ctx.Err() != nil {
			return n, ctx.Err()
		}
	}
}
