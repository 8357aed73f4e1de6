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

-- Users' own SSH public keys (`/api/users/public_keys/*`), one per fingerprint per user.
CREATE TABLE user_public_keys (
    id TEXT PRIMARY KEY NOT NULL,
    created_at TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    key TEXT NOT NULL,
    UNIQUE (user_id, fingerprint)
);
