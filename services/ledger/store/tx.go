package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/uptrace/bun"
)

// The write path's transaction: bun opens it (BEGIN, COMMIT, ROLLBACK) on a
// connection of its own; every statement inside goes to pgx directly on that
// connection, in $n notation with Go slices, batched into round trips.

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
func (s *Store) inTx(ctx context.Context, fn func(ctx context.Context, c txConn) error) error {
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
func (s *Store) runTx(ctx context.Context, fn func(ctx context.Context, c txConn) error) error {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.RunInTx(ctx, nil, func(ctx context.Context, _ bun.Tx) error {
		return fn(ctx, txConn{conn: conn})
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

// queued is a statement waiting for flush, in PostgreSQL's placeholders.
type queued struct {
	name, sql string
	args      []any
}
