-- Fleets and instances (dstack-api.md §7), with the pipeline lease columns (§5.1).
-- Portable SQL: TEXT UUIDs, TEXT RFC 3339 UTC timestamps, enum member names (uppercase),
-- JSON blobs as TEXT.

CREATE TABLE fleets (
    id TEXT PRIMARY KEY NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL,
    last_processed_at TEXT NOT NULL,
    status TEXT NOT NULL,
    status_message TEXT,
    spec TEXT NOT NULL,
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    deleted_at TEXT,
    consolidation_attempt INTEGER NOT NULL DEFAULT 0,
    skip_min_processing_interval BOOLEAN NOT NULL DEFAULT FALSE,
    lock_token TEXT,
    lock_expires_at TEXT,
    lock_owner TEXT
);
CREATE INDEX fleets_project_name ON fleets (project_id, name);
CREATE INDEX fleets_due ON fleets (deleted, last_processed_at);

CREATE TABLE instances (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    instance_num INTEGER NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    fleet_id TEXT REFERENCES fleets (id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    last_processed_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    status TEXT NOT NULL,
    unreachable BOOLEAN NOT NULL DEFAULT FALSE,
    health TEXT NOT NULL DEFAULT 'HEALTHY',
    termination_policy TEXT,
    termination_idle_time INTEGER,
    termination_reason TEXT,
    termination_reason_message TEXT,
    backend TEXT,
    region TEXT,
    price REAL,
    offer TEXT,
    job_provisioning_data TEXT,
    remote_connection_info TEXT,
    total_blocks INTEGER,
    busy_blocks INTEGER NOT NULL DEFAULT 0,
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    deleted_at TEXT,
    skip_min_processing_interval BOOLEAN NOT NULL DEFAULT FALSE,
    lock_token TEXT,
    lock_expires_at TEXT,
    lock_owner TEXT
);
CREATE INDEX instances_fleet ON instances (fleet_id);
CREATE INDEX instances_project ON instances (project_id, created_at);
CREATE INDEX instances_due ON instances (deleted, status, last_processed_at);
