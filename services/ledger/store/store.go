// Package store is the ledger's PostgreSQL side: the versioned schema, the
// projection that applies batches of events in one transaction each, and the
// read queries the HTTP API serves. Every write is idempotent and guarded in
// SQL, so redelivered, duplicated and reordered events end in the same state.
//
// Files, by what they are about:
//
//   - store.go: opening, migrations (migrations/*.sql), topology seed.
//   - tx.go: the write transaction, its statement batches and COPY.
//   - decode.go: an event's data into its Go type (shared/event's table).
//   - apply.go: Apply, the batch coordinator: locks, event log (COPY),
//     dispatch to the families below, then the derived state.
//   - plan.go: submit, planned, rejected.
//   - outcome.go: started, progress, done, failed (set-wise), stalled.
//   - archive.go: archived, removed.
//   - release.go: release, staged copies' status, released.
//   - job.go, job_status.sql: cancel and the job status state machine.
//   - follow.go: cross-job dedup followers.
//   - query.go: the read side (/v1), site counter compaction.
//
// Two SQL layers, each where it fits. bun opens the database, runs the
// migrations (its migrator, under an advisory lock), seeds the topology,
// begins and commits the write transaction, and serves the read side
// (query.go, with the periodic folding of the site counters), where its ?
// placeholders and scanning into structs keep the many small queries short. The write path (the appliers) writes its
// statements as PostgreSQL and pgx take them: $n placeholders and plain Go
// slices for arrays, sent on the transaction's connection as pgx batches
// (one round trip, arguments bound in binary, statements prepared once per
// connection) and COPY; going through bun there would format every array
// into text for PostgreSQL to parse back, one round trip per statement.
package store

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"

	"github.com/ccatobs/ccat-staging/shared/topology"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/migrate"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// ErrNotFound is returned by the read queries when the entity does not exist.
var ErrNotFound = errors.New("not found")

// Store wraps the database. It is safe for concurrent use.
type Store struct {
	db *bun.DB
}

// New returns a Store over db; call Migrate before using it.
func New(db *bun.DB) *Store { return &Store{db: db} }

// DB returns the underlying handle.
func (s *Store) DB() *bun.DB { return s.db }

// migrationLockKey is an arbitrary constant naming the ledger's advisory lock.
const migrationLockKey = 0x6c6564676572 // "ledger"

func (s *Store) migrator() (*migrate.Migrator, error) {
	sub, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		return nil, err
	}
	ms := migrate.NewMigrations()
	if err := ms.Discover(sub); err != nil {
		return nil, fmt.Errorf("discover migrations: %w", err)
	}
	return migrate.NewMigrator(s.db, ms, migrate.WithMarkAppliedOnSuccess(true)), nil
}

// Migrate applies every pending migration. Several ledgers may start at once:
// a session-level advisory lock (held on one dedicated connection) serialises
// them, and bun's own lock table is not used because a crashed holder would
// leave it locked forever, while an advisory lock dies with its session.
func (s *Store) Migrate(ctx context.Context) ([]string, error) {
	m, err := s.migrator()
	if err != nil {
		return nil, err
	}
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("migration connection: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "SELECT pg_advisory_lock(?)", migrationLockKey); err != nil {
		return nil, fmt.Errorf("take migration lock: %w", err)
	}
	defer func() {
		_, _ = conn.ExecContext(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock(?)", migrationLockKey)
	}()
	if err := m.Init(ctx); err != nil {
		return nil, fmt.Errorf("init migrations: %w", err)
	}
	g, err := m.Migrate(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	var names []string
	for _, mg := range g.Migrations {
		names = append(names, mg.Name)
	}
	return names, nil
}

// Pending returns the names of migrations not applied yet (for /readyz).
func (s *Store) Pending(ctx context.Context) ([]string, error) {
	m, err := s.migrator()
	if err != nil {
		return nil, err
	}
	ms, err := m.MigrationsWithStatus(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, mg := range ms.Unapplied() {
		out = append(out, mg.Name)
	}
	return out, nil
}

// Reset drops the projection and the migration bookkeeping, leaving an empty
// database for a rebuild.
func (s *Store) Reset(ctx context.Context) error {
	m, err := s.migrator()
	if err != nil {
		return err
	}
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("reset connection: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "SELECT pg_advisory_lock(?)", migrationLockKey); err != nil {
		return fmt.Errorf("take migration lock: %w", err)
	}
	defer func() {
		_, _ = conn.ExecContext(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock(?)", migrationLockKey)
	}()
	if err := m.Init(ctx); err != nil {
		return fmt.Errorf("init migrations: %w", err)
	}
	for {
		g, err := m.Rollback(ctx)
		if err != nil {
			return fmt.Errorf("roll back: %w", err)
		}
		if g.IsZero() {
			return nil
		}
	}
}

// SeedTopology records the configured sites and locations.
func (s *Store) SeedTopology(ctx context.Context, t *topology.Topology) error {
	return s.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		for _, site := range t.Sites {
			if _, err := tx.ExecContext(ctx, `INSERT INTO sites (name, from_topology) VALUES (?, true)
				ON CONFLICT (name) DO UPDATE SET from_topology = true`, site.Name); err != nil {
				return fmt.Errorf("seed site %s: %w", site.Name, err)
			}
			for _, l := range site.Locations {
				if _, err := tx.ExecContext(ctx, `INSERT INTO locations (name, site, type, storage, priority, active, from_topology)
					VALUES (?, ?, ?, ?, ?, ?, true)
					ON CONFLICT (name) DO UPDATE SET site = EXCLUDED.site, type = EXCLUDED.type, storage = EXCLUDED.storage,
						priority = EXCLUDED.priority, active = EXCLUDED.active, from_topology = true`,
					l.Name, site.Name, l.Type, l.Storage, l.Priority, l.IsActive()); err != nil {
					return fmt.Errorf("seed location %s: %w", l.Name, err)
				}
			}
		}
		return nil
	})
}
