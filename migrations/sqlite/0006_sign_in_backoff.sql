-- Failed sign-ins are counted per (email, client address): repeated failures slow that address
-- down for that email with a doubling backoff, instead of locking the account for everyone (any
-- stranger could lock out the admin with five wrong passwords). Keyed by the email as typed, so an
-- unknown address behaves exactly like a known one.
CREATE TABLE login_failures (
    email TEXT NOT NULL,
    address TEXT NOT NULL,
    failures INTEGER NOT NULL,
    blocked_until INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (email, address)
);
CREATE INDEX login_failures_updated ON login_failures (updated_at);

ALTER TABLE users DROP COLUMN failed_logins;
ALTER TABLE users DROP COLUMN locked_until;
