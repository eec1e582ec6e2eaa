package store

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/uptrace/bun/migrate"
)

// RedoMigrationsFrom runs the down of every applied migration from the
// newest back to the named one, then migrates again: an upgrade of a
// projection written before that migration.
func (s *Store) RedoMigrationsFrom(ctx context.Context, name string) error {
	m, err := s.migrator()
	if err != nil {
		return err
	}
	ms, err := m.MigrationsWithStatus(ctx)
	if err != nil {
		return err
	}
	applied := slices.Clone(ms.Applied())
	slices.SortFunc(applied, func(a, b migrate.Migration) int { return strings.Compare(b.Name, a.Name) })
	if !slices.ContainsFunc(applied, func(mg migrate.Migration) bool { return mg.Name == name }) {
		return fmt.Errorf("migration %s is not applied", name)
	}
	for _, mg := range applied {
		if err := mg.Down(ctx, m, &mg); err != nil {
			return fmt.Errorf("%s: down: %w", mg.Name, err)
		}
		if err := m.MarkUnapplied(ctx, &mg); err != nil {
			return err
		}
		if mg.Name == name {
			break
		}
	}
	_, err = s.Migrate(ctx)
	return err
}
