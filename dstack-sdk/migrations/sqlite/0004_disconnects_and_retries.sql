-- When the server last lost contact with a running job's agent (NULL while connected).
-- A job whose agent stays unreachable past the disconnect timeout fails with
-- `instance_unreachable` (dstack-api.md §4.2).
ALTER TABLE jobs ADD COLUMN disconnected_at TEXT;

-- How many times a run was resubmitted by its retry policy (drives the back-off:
-- 15 s, 30 s, 1 min, 2 min, 5 min, then 10 min).
ALTER TABLE runs ADD COLUMN resubmission_attempt INTEGER NOT NULL DEFAULT 0;
