-- Edge-only ingress nodes (`berth ingress --join`): each joined with a join token and holds a
-- credential (stored hashed) to fetch the route table and the certificates with, from any
-- instance. While it runs it reports in `instances` as well (`kind` 'ingress', id
-- `ingress/<name>`), so the release protocol waits for its acknowledgement like a server's.
CREATE TABLE ingress_nodes (
    name TEXT COLLATE "C" PRIMARY KEY,
    credential_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
ALTER TABLE instances ADD COLUMN kind TEXT NOT NULL DEFAULT 'server';
-- What a join token lets join: a host (`berth agent`), or an ingress node, which receives the
-- certificates' private keys; tokens made before ingress nodes existed stay host tokens.
ALTER TABLE join_tokens ADD COLUMN kind TEXT NOT NULL DEFAULT 'host' CHECK (kind IN ('host', 'ingress'));
