-- The control-plane instances sharing this database, and what passes between them.
--
-- `instances`: one row per running `berth server` process (its id is unique per process),
-- refreshed every second; `seen_at` is the database's clock. `routes_applied` is the version of
-- the route table its ingress has applied and drained (the release protocol waits for it).
CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    version TEXT NOT NULL,
    address TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    seen_at INTEGER NOT NULL,
    routes_applied INTEGER NOT NULL DEFAULT 0
);
-- Work asked of the leader by any instance (an app to orchestrate, routes to recompute): the
-- leader takes the rows and does the work; a row waits until a leader takes it.
CREATE TABLE pending_work (
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    requested_at INTEGER NOT NULL,
    PRIMARY KEY (kind, target)
);
-- What the leader publishes for every instance: the route table, the agents' reports. Each
-- publication raises `version`; `term` is the leader's.
CREATE TABLE published (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    term INTEGER NOT NULL,
    body TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
