DROP INDEX IF EXISTS job_packages_completed_recent;
DROP TRIGGER IF EXISTS jobs_site_counts_delete ON jobs;
DROP TRIGGER IF EXISTS jobs_site_counts_update ON jobs;
DROP TRIGGER IF EXISTS jobs_site_counts_insert ON jobs;
DROP FUNCTION IF EXISTS site_count_deltas_record();
DROP FUNCTION IF EXISTS job_status_counts(jobs);
DROP TABLE IF EXISTS site_count_deltas;
