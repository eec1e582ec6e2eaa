ALTER TABLE staged_copies DROP COLUMN IF EXISTS deletion_reason;
ALTER TABLE staged_copies DROP COLUMN IF EXISTS bytes_freed;
ALTER TABLE staged_copies DROP COLUMN IF EXISTS deleted_at;
