-- The change feed: a row for every write of what the dashboard's live pages and the CLI's
-- `--follow` show (apps, their releases and release events, replica placements, hosts), appended
-- by triggers inside the writing transaction, so that no write path can forget it. Every
-- instance reads the rows after the last it saw and tells its open streams, which read again
-- only what changed; the leader deletes rows older than an hour.
CREATE TABLE changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('app', 'host')),
    team_id INTEGER,
    app_id INTEGER
);
CREATE INDEX changes_at ON changes (at);

CREATE TRIGGER apps_inserted_change AFTER INSERT ON apps BEGIN
    INSERT INTO changes (at, kind, team_id, app_id)
    VALUES (CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER), 'app', NEW.team_id, NEW.id);
END;
CREATE TRIGGER apps_updated_change AFTER UPDATE ON apps BEGIN
    INSERT INTO changes (at, kind, team_id, app_id)
    VALUES (CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER), 'app', NEW.team_id, NEW.id);
END;
CREATE TRIGGER apps_deleted_change AFTER DELETE ON apps BEGIN
    INSERT INTO changes (at, kind, team_id, app_id)
    VALUES (CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER), 'app', OLD.team_id, OLD.id);
END;

CREATE TRIGGER releases_inserted_change AFTER INSERT ON releases BEGIN
    INSERT INTO changes (at, kind, team_id, app_id)
    VALUES (CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER), 'app',
            (SELECT team_id FROM apps WHERE id = NEW.app_id), NEW.app_id);
END;
CREATE TRIGGER releases_updated_change AFTER UPDATE ON releases BEGIN
    INSERT INTO changes (at, kind, team_id, app_id)
    VALUES (CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER), 'app',
            (SELECT team_id FROM apps WHERE id = NEW.app_id), NEW.app_id);
END;

CREATE TRIGGER release_events_inserted_change AFTER INSERT ON release_events BEGIN
    INSERT INTO changes (at, kind, team_id, app_id)
    SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER), 'app', apps.team_id, apps.id
    FROM releases JOIN apps ON apps.id = releases.app_id WHERE releases.id = NEW.release_id;
END;

CREATE TRIGGER replicas_inserted_change AFTER INSERT ON replicas BEGIN
    INSERT INTO changes (at, kind, team_id, app_id)
    VALUES (CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER), 'app',
            (SELECT team_id FROM apps WHERE id = NEW.app_id), NEW.app_id);
END;
CREATE TRIGGER replicas_updated_change AFTER UPDATE ON replicas BEGIN
    INSERT INTO changes (at, kind, team_id, app_id)
    VALUES (CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER), 'app',
            (SELECT team_id FROM apps WHERE id = NEW.app_id), NEW.app_id);
END;
CREATE TRIGGER replicas_deleted_change AFTER DELETE ON replicas BEGIN
    INSERT INTO changes (at, kind, team_id, app_id)
    VALUES (CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER), 'app',
            (SELECT team_id FROM apps WHERE id = OLD.app_id), OLD.app_id);
END;

-- Hosts: not when only `last_seen` moves (a heartbeat is not a change worth a page's read).
CREATE TRIGGER hosts_inserted_change AFTER INSERT ON hosts BEGIN
    INSERT INTO changes (at, kind) VALUES (CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER), 'host');
END;
CREATE TRIGGER hosts_updated_change AFTER UPDATE ON hosts
WHEN OLD.name IS NOT NEW.name OR OLD.address IS NOT NEW.address OR OLD.labels IS NOT NEW.labels
    OR OLD.cpu_millis IS NOT NEW.cpu_millis OR OLD.memory_mb IS NOT NEW.memory_mb
    OR OLD.state IS NOT NEW.state OR OLD.is_local IS NOT NEW.is_local
BEGIN
    INSERT INTO changes (at, kind) VALUES (CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER), 'host');
END;
CREATE TRIGGER hosts_deleted_change AFTER DELETE ON hosts BEGIN
    INSERT INTO changes (at, kind) VALUES (CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER), 'host');
END;
