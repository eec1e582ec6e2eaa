DROP TABLE IF EXISTS staged_copies, attempts, job_packages, jobs, archive_copies, packages, poison, event_log, locations, sites;
