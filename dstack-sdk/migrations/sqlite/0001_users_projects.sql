-- Users, projects, members, backends and secrets (dstack-api.md §7).
-- Portable SQL: TEXT UUIDs (lowercase, hyphenated), TEXT RFC 3339 UTC timestamps,
-- BOOLEAN columns; the same statements run on Postgres.

CREATE TABLE users (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL,
    token TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    global_role TEXT NOT NULL,
    email TEXT,
    active BOOLEAN NOT NULL DEFAULT TRUE,
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    original_name TEXT,
    ssh_private_key TEXT,
    ssh_public_key TEXT,
    projects_quota INTEGER
);
CREATE UNIQUE INDEX users_name_lower ON users (lower(name));
CREATE UNIQUE INDEX users_token_hash ON users (token_hash);

CREATE TABLE projects (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL,
    owner_id TEXT NOT NULL REFERENCES users (id),
    is_public BOOLEAN NOT NULL DEFAULT FALSE,
    templates_repo TEXT,
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    original_name TEXT,
    ssh_private_key TEXT NOT NULL,
    ssh_public_key TEXT NOT NULL
);
CREATE UNIQUE INDEX projects_name_lower ON projects (lower(name));

CREATE TABLE members (
    id TEXT PRIMARY KEY NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    project_role TEXT NOT NULL,
    member_num INTEGER NOT NULL,
    UNIQUE (project_id, user_id)
);

CREATE TABLE backends (
    id TEXT PRIMARY KEY NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    type TEXT NOT NULL,
    config TEXT NOT NULL,
    auth TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (project_id, type)
);

CREATE TABLE secrets (
    id TEXT PRIMARY KEY NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (project_id, name)
);
