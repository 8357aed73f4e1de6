-- Repos, uploaded code, runs, jobs and job logs (dstack-api.md §2.7, §2.8, §2.10, §5.2-5.5).
-- Same conventions as 0002: TEXT UUIDs, TEXT RFC 3339 UTC timestamps, enum member names,
-- JSON blobs as TEXT, pipeline lease columns.

CREATE TABLE repos (
    id TEXT PRIMARY KEY NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    info TEXT NOT NULL,
    creds TEXT,
    UNIQUE (project_id, name)
);

CREATE TABLE codes (
    id TEXT PRIMARY KEY NOT NULL,
    repo_id TEXT NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    blob_hash TEXT NOT NULL,
    blob BLOB,
    UNIQUE (repo_id, blob_hash)
);

CREATE TABLE runs (
    id TEXT PRIMARY KEY NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    repo_id TEXT REFERENCES repos (id) ON DELETE SET NULL,
    user_id TEXT NOT NULL,
    fleet_id TEXT,
    run_name TEXT NOT NULL,
    submitted_at TEXT NOT NULL,
    last_processed_at TEXT NOT NULL,
    status TEXT NOT NULL,
    termination_reason TEXT,
    run_spec TEXT NOT NULL,
    deployment_num INTEGER NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT 0,
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    skip_min_processing_interval BOOLEAN NOT NULL DEFAULT FALSE,
    lock_token TEXT,
    lock_expires_at TEXT,
    lock_owner TEXT
);
CREATE INDEX runs_project_name ON runs (project_id, run_name);
CREATE INDEX runs_due ON runs (status, last_processed_at);

CREATE TABLE jobs (
    id TEXT PRIMARY KEY NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    run_name TEXT NOT NULL,
    job_num INTEGER NOT NULL,
    job_name TEXT NOT NULL,
    replica_num INTEGER NOT NULL,
    submission_num INTEGER NOT NULL,
    deployment_num INTEGER NOT NULL DEFAULT 0,
    submitted_at TEXT NOT NULL,
    last_processed_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL,
    termination_reason TEXT,
    termination_reason_message TEXT,
    exit_status INTEGER,
    job_spec_data TEXT NOT NULL,
    job_provisioning_data TEXT,
    job_runtime_data TEXT,
    instance_id TEXT REFERENCES instances (id) ON DELETE SET NULL,
    instance_assigned BOOLEAN NOT NULL DEFAULT FALSE,
    runner_timestamp INTEGER,
    skip_min_processing_interval BOOLEAN NOT NULL DEFAULT FALSE,
    lock_token TEXT,
    lock_expires_at TEXT,
    lock_owner TEXT
);
CREATE INDEX jobs_run ON jobs (run_id, replica_num, job_num, submission_num);
CREATE INDEX jobs_due ON jobs (status, last_processed_at);

CREATE TABLE job_logs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    job_submission_id TEXT NOT NULL,
    log_source TEXT NOT NULL,
    timestamp_us INTEGER NOT NULL,
    message BLOB NOT NULL
);
CREATE INDEX job_logs_submission ON job_logs (job_submission_id, log_source, timestamp_us);
