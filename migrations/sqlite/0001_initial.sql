-- Berth's store: desired state (apps, releases, replicas) and identity (users, teams, tokens).
-- Observed container state is not stored: agents report it and the control plane keeps it in memory.

CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    is_instance_admin INTEGER NOT NULL DEFAULT 0,
    password_hash TEXT,
    disabled INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);

CREATE TABLE teams (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

CREATE TABLE memberships (
    team_id INTEGER NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'deployer', 'viewer')),
    PRIMARY KEY (team_id, user_id)
);

-- Bearer tokens, stored as SHA-256 of the secret. A token acts as its user, optionally narrowed to
-- one team and a role no higher than the user's own there.
CREATE TABLE api_tokens (
    id INTEGER PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    team_id INTEGER REFERENCES teams(id) ON DELETE CASCADE,
    role TEXT CHECK (role IS NULL OR role IN ('owner', 'admin', 'deployer', 'viewer')),
    expires_at INTEGER,
    revoked_at INTEGER,
    last_used_at INTEGER,
    created_at INTEGER NOT NULL
);

CREATE TABLE hosts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    address TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- App names are unique across the instance because they are the first label of the app's host name.
CREATE TABLE apps (
    id INTEGER PRIMARY KEY,
    team_id INTEGER NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    name TEXT NOT NULL UNIQUE,
    serving_release INTEGER,
    deleting INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);

CREATE TABLE releases (
    id INTEGER PRIMARY KEY,
    app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'in_progress', 'serving', 'superseded', 'failed')),
    message TEXT,
    rollback_of INTEGER,
    created_at INTEGER NOT NULL,
    finished_at INTEGER,
    UNIQUE (app_id, number)
);

CREATE TABLE release_events (
    id INTEGER PRIMARY KEY,
    release_id INTEGER NOT NULL REFERENCES releases(id) ON DELETE CASCADE,
    at INTEGER NOT NULL,
    phase TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX release_events_by_release ON release_events (release_id, id);

-- Desired replicas: one row per container the control plane wants, placed on a host.
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    release_id INTEGER NOT NULL REFERENCES releases(id) ON DELETE CASCADE,
    host TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX replicas_by_app ON replicas (app_id);
