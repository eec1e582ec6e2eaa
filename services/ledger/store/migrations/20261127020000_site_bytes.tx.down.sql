DROP TRIGGER IF EXISTS jobs_site_bytes_update ON jobs;
DROP TRIGGER IF EXISTS jobs_site_bytes_insert ON jobs;
DROP FUNCTION IF EXISTS site_bytes_deltas_record();
DROP TABLE IF EXISTS site_bytes_deltas;
ALTER TABLE jobs DROP COLUMN IF EXISTS bytes_staged;
CREATE INDEX IF NOT EXISTS job_packages_completed_recent ON job_packages (completed_at)
    WHERE status = 'completed' AND NOT already_present;
