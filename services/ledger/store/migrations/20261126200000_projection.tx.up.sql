-- The ledger's projection of STAGING_EVENTS and ARCHIVE. Every table here can
-- be dropped and rebuilt by replaying the streams (ledger rebuild).

CREATE TABLE sites (
    name       text PRIMARY KEY,
    from_topology boolean NOT NULL DEFAULT false
);

CREATE TABLE locations (
    name       text PRIMARY KEY,
    site       text NOT NULL DEFAULT '',
    type       text NOT NULL DEFAULT '',
    storage    text NOT NULL DEFAULT '',
    priority   integer NOT NULL DEFAULT 0,
    active     boolean NOT NULL DEFAULT true,
    from_topology boolean NOT NULL DEFAULT false
);

-- The append-only log of every event applied, keyed by CloudEvent (source, id):
-- the idempotency guard. A redelivered or re-published event conflicts here and
-- changes nothing else.
CREATE TABLE event_log (
    seq         bigserial NOT NULL, -- application order, for the timeline's ties
    source      text NOT NULL,
    id          text NOT NULL,
    type        text NOT NULL,
    subject     text NOT NULL DEFAULT '',
    event_time  timestamptz NOT NULL,
    job_id      text,
    package_id  text,
    stream      text NOT NULL DEFAULT '',
    stream_seq  bigint NOT NULL DEFAULT 0,
    data        jsonb NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, id)
);
CREATE INDEX event_log_job ON event_log (job_id, event_time, seq) WHERE job_id IS NOT NULL;

-- Messages that could not be applied (not a CloudEvent, unknown type, data
-- violating its schema). They are acked after landing here, never redelivered.
CREATE TABLE poison (
    id          bigserial PRIMARY KEY,
    stream      text NOT NULL,
    stream_seq  bigint NOT NULL,
    subject     text NOT NULL,
    reason      text NOT NULL,
    message     text NOT NULL,
    event_id    text NOT NULL DEFAULT '',
    event_type  text NOT NULL DEFAULT '',
    raw         text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream, stream_seq)
);

CREATE TABLE packages (
    package_id  text PRIMARY KEY,
    size_bytes  bigint NOT NULL DEFAULT 0,
    checksum    text NOT NULL DEFAULT '',
    format      text NOT NULL DEFAULT '',
    first_archived_at timestamptz NOT NULL
);

CREATE TABLE archive_copies (
    package_id  text NOT NULL,
    location    text NOT NULL,
    key         text NOT NULL,
    size_bytes  bigint NOT NULL,
    checksum    text NOT NULL,
    format      text NOT NULL,
    files       integer NOT NULL DEFAULT 0,
    archived_at timestamptz NOT NULL,
    -- active, or removed (archive.package.removed newer than the copy).
    status      text NOT NULL DEFAULT 'active',
    removed_at  timestamptz,
    removed_reason text NOT NULL DEFAULT '',
    PRIMARY KEY (package_id, location)
);

CREATE TABLE jobs (
    job_id       text PRIMARY KEY,
    status       text NOT NULL DEFAULT 'pending',
    reason       text NOT NULL DEFAULT '',
    message      text NOT NULL DEFAULT '',
    requested_by text NOT NULL DEFAULT '',
    priority     text NOT NULL DEFAULT '',
    note         text NOT NULL DEFAULT '',
    dest_site    text NOT NULL DEFAULT '',
    dest_location text NOT NULL DEFAULT '',
    -- submit_id is the first submit seen for the job; planned is the
    -- planner's authoritative word on its packages and destination.
    submit_id    text,
    planned      boolean NOT NULL DEFAULT false,
    rejected     boolean NOT NULL DEFAULT false,
    cancelled    boolean NOT NULL DEFAULT false,
    cancelled_at timestamptz,
    cancel_reason text NOT NULL DEFAULT '',
    cancelled_by text NOT NULL DEFAULT '',
    released_at  timestamptz,
    released_by  text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    completed_at timestamptz,
    n_total       integer NOT NULL DEFAULT 0,
    n_pending     integer NOT NULL DEFAULT 0,
    n_scheduled   integer NOT NULL DEFAULT 0,
    n_in_progress integer NOT NULL DEFAULT 0,
    n_completed   integer NOT NULL DEFAULT 0,
    n_failed      integer NOT NULL DEFAULT 0,
    n_cancelled   integer NOT NULL DEFAULT 0,
    bytes_total  bigint NOT NULL DEFAULT 0,
    bytes_done   bigint NOT NULL DEFAULT 0
);
CREATE INDEX jobs_created ON jobs (created_at DESC, job_id DESC);
CREATE INDEX jobs_updated ON jobs (updated_at DESC, job_id DESC);
CREATE INDEX jobs_status_created ON jobs (status, created_at DESC, job_id DESC);
CREATE INDEX jobs_site_created ON jobs (dest_site, created_at DESC, job_id DESC);
CREATE INDEX jobs_site_status_created ON jobs (dest_site, status, created_at DESC, job_id DESC);
CREATE INDEX jobs_requested_by_created ON jobs (requested_by, created_at DESC, job_id DESC);

CREATE TABLE job_packages (
    job_id       text NOT NULL,
    package_id   text NOT NULL,
    status       text NOT NULL DEFAULT 'pending',
    reason       text NOT NULL DEFAULT '',
    message      text NOT NULL DEFAULT '',
    -- attempts is the highest attempt number seen; last_attempt_failed says
    -- whether that attempt ended in a (retryable) failure. Together they make
    -- the status independent of the order events arrive in.
    attempts     integer NOT NULL DEFAULT 0,
    last_attempt_failed boolean NOT NULL DEFAULT false,
    request_id   text NOT NULL DEFAULT '',
    src_location text NOT NULL DEFAULT '',
    src_site     text NOT NULL DEFAULT '',
    src_storage  text NOT NULL DEFAULT '',
    src_key      text NOT NULL DEFAULT '',
    dest_site    text NOT NULL DEFAULT '',
    dest_location text NOT NULL DEFAULT '',
    path         text NOT NULL DEFAULT '',
    size_bytes   bigint NOT NULL DEFAULT 0,
    checksum     text NOT NULL DEFAULT '',
    files        integer NOT NULL DEFAULT 0,
    already_present boolean NOT NULL DEFAULT false,
    planned_at   timestamptz,
    started_at   timestamptz, -- start of the highest attempt seen started
    started_attempt integer NOT NULL DEFAULT 0,
    completed_at timestamptz,
    duration_seconds double precision,
    progress_attempt integer NOT NULL DEFAULT 0,
    progress_bytes_done bigint NOT NULL DEFAULT 0,
    progress_bytes_total bigint NOT NULL DEFAULT 0,
    progress_rate double precision NOT NULL DEFAULT 0,
    progress_updated_at timestamptz,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (job_id, package_id)
) WITH (fillfactor = 80); -- room for HOT updates: no index covers a column events change
CREATE INDEX job_packages_package ON job_packages (package_id);

CREATE TABLE attempts (
    job_id      text NOT NULL,
    package_id  text NOT NULL,
    attempt     integer NOT NULL,
    site        text NOT NULL DEFAULT '',
    location    text NOT NULL DEFAULT '',
    instance    text NOT NULL DEFAULT '',
    request_id  text NOT NULL DEFAULT '',
    outcome     text NOT NULL DEFAULT 'in_progress', -- in_progress | completed | failed
    reason      text NOT NULL DEFAULT '',
    message     text NOT NULL DEFAULT '',
    permanent   boolean NOT NULL DEFAULT false,
    started_at  timestamptz,
    ended_at    timestamptz,
    PRIMARY KEY (job_id, package_id, attempt)
) WITH (fillfactor = 80);

-- Staged copies with CCAT's statuses (staged, deletion_scheduled, deleted,
-- deletion_failed); only "staged" is produced by today's events.
CREATE TABLE staged_copies (
    package_id  text NOT NULL,
    location    text NOT NULL,
    site        text NOT NULL,
    path        text NOT NULL,
    status      text NOT NULL DEFAULT 'staged',
    job_id      text NOT NULL,
    size_bytes  bigint NOT NULL DEFAULT 0,
    files       integer NOT NULL DEFAULT 0,
    staged_at   timestamptz NOT NULL,
    PRIMARY KEY (package_id, location)
);
