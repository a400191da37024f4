-- The edge: custom domains, certificates (ACME or uploaded; private keys live in files of the
-- data directory, mode 0600, never in the database), ACME state per name, per-app edge settings.

-- JSON `EdgeSettings` (redirect to HTTPS, HSTS).
ALTER TABLE apps ADD COLUMN edge_settings TEXT NOT NULL DEFAULT '{}';

-- A domain belongs to one app, instance-wide.
CREATE TABLE domains (
    name TEXT PRIMARY KEY,
    app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL
);
CREATE INDEX domains_by_app ON domains (app_id);

CREATE TABLE certificates (
    id INTEGER PRIMARY KEY,
    app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    source TEXT NOT NULL CHECK (source IN ('acme', 'uploaded')),
    -- JSON array of the DNS names the certificate covers.
    names TEXT NOT NULL,
    issuer TEXT NOT NULL,
    chain_pem TEXT NOT NULL,
    -- File name of the private key in the data directory's `tls/`.
    key_file TEXT NOT NULL UNIQUE,
    not_after INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX certificates_by_app ON certificates (app_id);

-- Where ACME stands for a name: the last outcome and when to try again.
CREATE TABLE acme_names (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('pending', 'issued', 'failed')),
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
