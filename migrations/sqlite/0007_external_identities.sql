-- Accounts signed in through an identity provider are linked by the provider's (issuer, subject),
-- the one identifier it guarantees stable and unique, not by email: an email a user can change
-- at the provider, or one a careless provider reports as verified, must not take over an account
-- already linked to someone else there.
CREATE TABLE external_identities (
    issuer TEXT NOT NULL,
    subject TEXT NOT NULL,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    linked_at INTEGER NOT NULL,
    PRIMARY KEY (issuer, subject)
);
-- One identity per provider per account.
CREATE UNIQUE INDEX external_identities_user ON external_identities (user_id, issuer);
