// Package store is the ledger's PostgreSQL side: the versioned schema, the
// projection that applies batches of events in one transaction each, and the
// read queries the HTTP API serves. Every write is idempotent and guarded in
// SQL, so redelivered, duplicated and reordered events end in the same state.
package store

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/ccatobs/ccat-staging/shared/topology"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
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

// retryable reports whether a transaction failed only because it collided
// with a concurrent applier's: a deadlock, a serialization failure, or an
// event the other logged after this one looked (insertLog).
func retryable(err error) bool {
	var pg *pgconn.PgError
	if !errors.As(err, &pg) {
		return false
	}
	return pg.Code == "40P01" || pg.Code == "40001" || isLogConflict(err)
}

// isLogConflict reports whether err is an event already in the event log.
func isLogConflict(err error) bool {
	var pg *pgconn.PgError
	return errors.As(err, &pg) && pg.Code == "23505" && pg.ConstraintName == "event_log_pkey"
}

// inTx runs fn in a transaction, retrying a few times when it collided with
// a concurrent one.
func (s *Store) inTx(ctx context.Context, fn func(ctx context.Context, tx bun.Tx, c txConn) error) error {
	var err error
	for try := range 5 {
		err = s.runTx(ctx, fn)
		if err == nil || !retryable(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(try+1) * 20 * time.Millisecond):
		}
	}
	return err
}

// runTx runs fn in one transaction on a connection of its own, which fn may
// also use through pgx (COPY) within the same transaction.
func (s *Store) runTx(ctx context.Context, fn func(ctx context.Context, tx bun.Tx, c txConn) error) error {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		return fn(ctx, tx, txConn{conn: conn})
	})
}

// txConn is the connection a transaction runs on.
type txConn struct{ conn bun.Conn }

// batch runs statements in one round trip on the transaction's connection
// (pgx batch, statements prepared once per connection and cached) and
// returns the first failure, named.
func (c txConn) batch(ctx context.Context, qs []queued) error {
	return c.conn.Raw(func(dc any) error {
		sc, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("statement batch: driver connection is %T, not pgx", dc)
		}
		b := &pgx.Batch{}
		for _, q := range qs {
			b.Queue(q.sql, q.args...)
		}
		br := sc.Conn().SendBatch(ctx, b)
		for _, q := range qs {
			if _, err := br.Exec(); err != nil {
				_ = br.Close()
				return fmt.Errorf("%s: %w", q.name, err)
			}
		}
		return br.Close()
	})
}

// query runs the statements in pre and then q, whose rows it hands to
// scan one by one, all in one round trip.
func (c txConn) query(ctx context.Context, pre []queued, q queued, scan func(pgx.Rows) error) error {
	return c.conn.Raw(func(dc any) error {
		sc, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("%s: driver connection is %T, not pgx", q.name, dc)
		}
		b := &pgx.Batch{}
		for _, p := range pre {
			b.Queue(p.sql, p.args...)
		}
		b.Queue(q.sql, q.args...)
		br := sc.Conn().SendBatch(ctx, b)
		defer br.Close()
		for _, p := range pre {
			if _, err := br.Exec(); err != nil {
				return fmt.Errorf("%s: %w", p.name, err)
			}
		}
		rows, err := br.Query()
		if err != nil {
			return fmt.Errorf("%s: %w", q.name, err)
		}
		for rows.Next() {
			if err := scan(rows); err != nil {
				rows.Close()
				return fmt.Errorf("%s: %w", q.name, err)
			}
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("%s: %w", q.name, err)
		}
		return br.Close()
	})
}

// copyFrom loads rows with COPY on the transaction's connection, so they
// are part of the transaction. database/sql cannot send COPY; pgx can.
func (c txConn) copyFrom(ctx context.Context, table string, cols []string, rows [][]any) (int64, error) {
	var n int64
	err := c.conn.Raw(func(dc any) error {
		sc, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("copy into %s: driver connection is %T, not pgx", table, dc)
		}
		var err error
		n, err = sc.Conn().CopyFrom(ctx, pgx.Identifier{table}, cols, pgx.CopyFromRows(rows))
		return err
	})
	return n, err
}
