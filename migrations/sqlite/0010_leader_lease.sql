-- Leadership among control-plane instances sharing one database: one lease row. The instance
-- holding an unexpired lease runs the orchestrator. `term` grows by one at every change of holder,
-- and each write of a leader's store handle checks its term in its transaction, so an old leader
-- that was paused past its lease writes nothing once it resumes. Times are the database's clock.
CREATE TABLE leader_lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    holder TEXT NOT NULL DEFAULT '',
    address TEXT NOT NULL DEFAULT '',
    term INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER NOT NULL DEFAULT 0
);
INSERT INTO leader_lease (id) VALUES (1);
