-- Builds from git: per-app build settings, build records, webhooks and their deliveries.

-- How the app is built (JSON `BuildSettings`), and the spec its first release will carry when it
-- is created without an image (built from git: the first push makes release 1).
ALTER TABLE apps ADD COLUMN build_settings TEXT NOT NULL DEFAULT '{}';
ALTER TABLE apps ADD COLUMN initial_spec TEXT;

CREATE TABLE builds (
    id INTEGER PRIMARY KEY,
    app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'building', 'releasing', 'succeeded', 'failed', 'canceled', 'timed_out')),
    commit_sha TEXT NOT NULL,
    git_ref TEXT NOT NULL,
    pusher TEXT NOT NULL,
    trigger TEXT NOT NULL CHECK (trigger IN ('push', 'webhook')),
    host TEXT,
    image TEXT NOT NULL,
    release_number INTEGER,
    message TEXT,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    UNIQUE (app_id, number)
);
-- At most one unfinished build per app (its release included), whoever starts it: the store
-- refuses a second one.
CREATE UNIQUE INDEX builds_one_running_per_app ON builds (app_id) WHERE state IN ('queued', 'building', 'releasing');

CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    provider TEXT NOT NULL CHECK (provider IN ('github', 'gitea', 'gitlab')),
    repository TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE webhook_deliveries (
    id INTEGER PRIMARY KEY,
    webhook_id TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    delivery TEXT,
    at INTEGER NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('accepted', 'ignored', 'refused')),
    reason TEXT NOT NULL,
    build_number INTEGER
);
CREATE INDEX webhook_deliveries_by_hook ON webhook_deliveries (webhook_id, id);
-- A provider's delivery id is acted on once (providers redeliver; signatures carry no time).
CREATE UNIQUE INDEX webhook_deliveries_once ON webhook_deliveries (webhook_id, delivery) WHERE verdict = 'accepted';
