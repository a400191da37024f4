-- A replica whose host went down gets a replacement on another host, and its row stays, pointing
-- at the replacement: if the host comes back and the replica is ready again before the
-- replacement is, the replacement is dropped; if the replacement is ready first, the replica is
-- retired (drained and stopped if its host is back, forgotten if not). A blip costs no restart.
ALTER TABLE replicas ADD COLUMN replaced_by TEXT;
