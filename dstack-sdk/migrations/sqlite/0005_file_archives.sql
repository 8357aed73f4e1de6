-- Archives uploaded for a configuration's `files:` (dstack-api.md §2.7): per user, keyed by
-- the client's content hash, shipped to the runner before a job starts.
CREATE TABLE file_archives (
    id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL,
    blob_hash TEXT NOT NULL,
    blob BLOB NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (user_id, blob_hash)
);
