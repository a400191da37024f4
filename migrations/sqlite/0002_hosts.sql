-- Many hosts: agents join with join tokens and authenticate with per-host credentials.

ALTER TABLE hosts ADD COLUMN credential_hash TEXT;
ALTER TABLE hosts ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
ALTER TABLE hosts ADD COLUMN cpu_millis INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN memory_mb INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN state TEXT NOT NULL DEFAULT 'up' CHECK (state IN ('up', 'down', 'draining'));
ALTER TABLE hosts ADD COLUMN is_local INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN last_seen INTEGER;
CREATE UNIQUE INDEX hosts_by_credential ON hosts (credential_hash);

CREATE TABLE join_tokens (
    id INTEGER PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    uses_left INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    created_by INTEGER REFERENCES users(id) ON DELETE SET NULL,
    created_at INTEGER NOT NULL
);

-- A replica being moved off its host (drain): out of the route table, stopped once drained.
ALTER TABLE replicas ADD COLUMN retiring INTEGER NOT NULL DEFAULT 0;
