package store

import (
	"context"
	"fmt"
)

// RedoMigration runs the down of the named migration (which must be the
// newest applied) and then migrates again: an upgrade of a projection written
// before that migration.
func (s *Store) RedoMigration(ctx context.Context, name string) error {
	m, err := s.migrator()
	if err != nil {
		return err
	}
	ms, err := m.MigrationsWithStatus(ctx)
	if err != nil {
		return err
	}
	applied := ms.Applied()
	if len(applied) == 0 {
		return fmt.Errorf("no migration applied")
	}
	// Applied lists the newest first.
	last := applied[0]
	for _, mg := range applied {
		if mg.Name > last.Name {
			last = mg
		}
	}
	if last.Name != name {
		return fmt.Errorf("newest applied migration is %s, not %s", last.Name, name)
	}
	if err := last.Down(ctx, m, &last); err != nil {
		return fmt.Errorf("%s: down: %w", name, err)
	}
	if err := m.MarkUnapplied(ctx, &last); err != nil {
		return err
	}
	_, err = s.Migrate(ctx)
	return err
}
