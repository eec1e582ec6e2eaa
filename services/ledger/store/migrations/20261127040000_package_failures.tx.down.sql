DROP TRIGGER IF EXISTS job_packages_failed_delete ON job_packages;
DROP TRIGGER IF EXISTS job_packages_failed_update ON job_packages;
DROP TRIGGER IF EXISTS job_packages_failed_insert ON job_packages;
DROP FUNCTION IF EXISTS package_failures_record();
DROP TABLE IF EXISTS package_failures;
