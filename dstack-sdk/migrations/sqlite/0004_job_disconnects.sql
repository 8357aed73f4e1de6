-- When the server last lost contact with a running job's agent (NULL while connected).
-- A job whose agent stays unreachable past the disconnect timeout fails with
-- `instance_unreachable` (dstack-api.md §4.2).
ALTER TABLE jobs ADD COLUMN disconnected_at TEXT;
