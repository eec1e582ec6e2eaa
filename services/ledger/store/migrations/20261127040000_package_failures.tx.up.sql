-- The status page's recent failures sorted every failed job package by
-- completion time: a parallel scan of the whole table per page load (243 ms
-- at a million jobs of three packages, and the page reloads every two
-- seconds). An index over job_packages' status would make every status
-- change a non-HOT update again (migration site_bytes), so row triggers
-- record each package's failure in a small table of its own instead; their
-- WHEN clauses cost the updates that are not failures next to nothing.
CREATE TABLE package_failures (
    job_id     text NOT NULL,
    package_id text NOT NULL,
    failed_at  timestamptz,
    PRIMARY KEY (job_id, package_id)
);
CREATE INDEX package_failures_recent ON package_failures (failed_at DESC NULLS LAST, job_id, package_id);

-- Failed is terminal, so a package leaves the table only with its row; the
-- update trigger still removes one that stops being failed, so the table is
-- exact by construction and the newest failures are its first rows.
CREATE FUNCTION package_failures_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR NEW.status <> 'failed' THEN
        DELETE FROM package_failures WHERE job_id = OLD.job_id AND package_id = OLD.package_id;
    ELSE
        INSERT INTO package_failures (job_id, package_id, failed_at) VALUES (NEW.job_id, NEW.package_id, NEW.completed_at)
        ON CONFLICT (job_id, package_id) DO UPDATE SET failed_at = EXCLUDED.failed_at;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER job_packages_failed_insert AFTER INSERT ON job_packages
    FOR EACH ROW WHEN (NEW.status = 'failed') EXECUTE FUNCTION package_failures_record();
CREATE TRIGGER job_packages_failed_update AFTER UPDATE ON job_packages
    FOR EACH ROW WHEN ((NEW.status = 'failed' AND (OLD.status <> 'failed' OR OLD.completed_at IS DISTINCT FROM NEW.completed_at))
        OR (OLD.status = 'failed' AND NEW.status <> 'failed'))
    EXECUTE FUNCTION package_failures_record();
CREATE TRIGGER job_packages_failed_delete AFTER DELETE ON job_packages
    FOR EACH ROW WHEN (OLD.status = 'failed') EXECUTE FUNCTION package_failures_record();

INSERT INTO package_failures (job_id, package_id, failed_at)
SELECT job_id, package_id, completed_at FROM job_packages WHERE status = 'failed';
