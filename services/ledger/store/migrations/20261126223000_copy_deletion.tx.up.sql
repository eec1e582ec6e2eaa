-- Staged copies end deleted (or deletion_failed) when a stager reports
-- staging.released. deleted_at tells a deletion from a later re-staging of
-- the same package at the same location, in whatever order they arrive.
ALTER TABLE staged_copies ADD COLUMN deleted_at timestamptz;
ALTER TABLE staged_copies ADD COLUMN bytes_freed bigint NOT NULL DEFAULT 0;
ALTER TABLE staged_copies ADD COLUMN deletion_reason text NOT NULL DEFAULT '';
