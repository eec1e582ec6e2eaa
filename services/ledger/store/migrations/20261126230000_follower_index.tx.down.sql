DROP INDEX IF EXISTS job_packages_follower_package;
DROP INDEX IF EXISTS job_packages_follower_job;
