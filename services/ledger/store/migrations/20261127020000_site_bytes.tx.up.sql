-- Bytes staged per site in the last hour and day, for /v1/sites, without the
-- partial index job_packages_completed_recent: its predicate named status, so
-- every status change of a job package (started, done, failed: most of the
-- stream) was a non-HOT update that wrote a new entry into every index of
-- job_packages (27 against 17 µs per row in a single-statement test; the
-- projection bench could not tell the difference from its noise). No index
-- of job_packages covers a column events change again.
--
-- A job's bytes_staged (its completed packages that were copied: not already
-- present, and not by an earlier job whose request it follows) is derived
-- with its other counters; triggers on jobs append each statement's change
-- of it as a delta row at the job's updated_at, which the
-- derivation sets to its latest package completion: the change is dated to
-- within one batch of the completions that made it. By the job's
-- destination, like the package counts. CompactSiteCounts folds the rows to
-- the minute (to the hour once older than a day).
DROP INDEX IF EXISTS job_packages_completed_recent;

ALTER TABLE jobs ADD COLUMN bytes_staged bigint NOT NULL DEFAULT 0;

CREATE TABLE site_bytes_deltas (
    site  text NOT NULL,
    at    timestamptz NOT NULL,
    bytes bigint NOT NULL
);
CREATE INDEX site_bytes_deltas_at ON site_bytes_deltas (at);

CREATE FUNCTION site_bytes_deltas_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO site_bytes_deltas (site, at, bytes)
        SELECT j.dest_site, j.updated_at, sum(j.bytes_staged)
        FROM new_rows j GROUP BY 1, 2 HAVING sum(j.bytes_staged) <> 0;
    ELSE
        -- Both halves are dated by the new row: what the job had staged
        -- before moves with it, so no window counts it twice.
        INSERT INTO site_bytes_deltas (site, at, bytes)
        SELECT site, at, sum(bytes) FROM (
            SELECT n.dest_site AS site, n.updated_at AS at, n.bytes_staged AS bytes
            FROM new_rows n
            UNION ALL
            SELECT o.dest_site, n.updated_at, -o.bytes_staged
            FROM old_rows o JOIN new_rows n USING (job_id)
        ) d GROUP BY 1, 2 HAVING sum(bytes) <> 0;
    END IF;
    RETURN NULL;
END $$;

-- A deleted job's bytes were staged all the same: no trigger on DELETE.
CREATE TRIGGER jobs_site_bytes_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION site_bytes_deltas_record();
CREATE TRIGGER jobs_site_bytes_update AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION site_bytes_deltas_record();

-- Existing projections: each job's bytes, and its history per package
-- completion (exact, as the index served it). The UPDATE's trigger dates
-- each job's bytes at its updated_at; those rows are replaced by the history.
UPDATE jobs j SET bytes_staged = s.bytes
FROM (SELECT job_id, sum(size_bytes) AS bytes FROM job_packages
      WHERE status = 'completed' AND NOT already_present
        AND NOT (request_id LIKE 'request:%' AND split_part(request_id, ':', 2) <> job_id)
      GROUP BY job_id) s
WHERE s.job_id = j.job_id;
DELETE FROM site_bytes_deltas;
INSERT INTO site_bytes_deltas (site, at, bytes)
SELECT j.dest_site, date_trunc('minute', jp.completed_at), sum(jp.size_bytes)
FROM job_packages jp JOIN jobs j USING (job_id)
WHERE jp.status = 'completed' AND NOT jp.already_present AND jp.completed_at IS NOT NULL
    AND NOT (jp.request_id LIKE 'request:%' AND split_part(jp.request_id, ':', 2) <> jp.job_id)
GROUP BY 1, 2 HAVING sum(jp.size_bytes) <> 0;
