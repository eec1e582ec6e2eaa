// Package pg creates and drops the throwaway PostgreSQL databases the
// benchmarks run against, so no run touches a real ledger.
package pg

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
)

// ServerURL is the PostgreSQL server the benchmarks use: CCAT_BENCH_PG_URL,
// or the local server with trust auth.
func ServerURL() string {
	if u := os.Getenv("CCAT_BENCH_PG_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// CreateDB creates an empty database bench_<random> and returns its URL and name.
func CreateDB(ctx context.Context) (string, string, error) {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := "bench_" + hex.EncodeToString(b)
	admin, err := pgx.Connect(ctx, ServerURL())
	if err != nil {
		return "", "", fmt.Errorf("connect to postgres: %w", err)
	}
	defer admin.Close(context.WithoutCancel(ctx))
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", "", fmt.Errorf("create database: %w", err)
	}
	u, err := url.Parse(ServerURL())
	if err != nil {
		return "", "", err
	}
	u.Path = "/" + name
	return u.String(), name, nil
}

// DropDB drops a database made by CreateDB, whoever is still connected.
func DropDB(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, ServerURL())
	if err != nil {
		return fmt.Errorf("connect to drop %s: %w", name, err)
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop %s: %w", name, err)
	}
	return nil
}
