-- Followers (job packages whose request_id names another job's request) are
-- rare; syncFollowers looks them up after every batch by job and by package.
-- Partial indexes over just them keep that lookup an index scan whose cost
-- does not grow with the projection, whatever the statistics say.
CREATE INDEX job_packages_follower_job ON job_packages (job_id)
    WHERE request_id LIKE 'request:%' AND split_part(request_id, ':', 2) <> job_id;
CREATE INDEX job_packages_follower_package ON job_packages (package_id)
    WHERE request_id LIKE 'request:%' AND split_part(request_id, ':', 2) <> job_id;
