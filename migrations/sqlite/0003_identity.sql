-- Identity: passwords with lockout, invitations, token kinds, and the audit log.

ALTER TABLE users ADD COLUMN failed_logins INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN locked_until INTEGER;

-- 'personal' (a user's own), 'team' (for CI, narrowed to one team), 'login' (made by signing in;
-- revoked when the password changes).
ALTER TABLE api_tokens ADD COLUMN kind TEXT NOT NULL DEFAULT 'personal' CHECK (kind IN ('personal', 'team', 'login'));

CREATE TABLE invitations (
    id INTEGER PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    team_id INTEGER NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'deployer', 'viewer')),
    email TEXT,
    created_by INTEGER REFERENCES users(id) ON DELETE SET NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER,
    created_at INTEGER NOT NULL
);

CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    user_id INTEGER,
    token_id INTEGER,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    team_id INTEGER,
    team TEXT,
    app TEXT,
    target TEXT,
    address TEXT,
    outcome TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX audit_by_team ON audit_log (team_id, id);
