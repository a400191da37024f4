-- The change feed: a row for every write of what the dashboard's live pages and the CLI's
-- `--follow` show (apps, their releases and release events, replica placements, hosts), appended
-- by triggers inside the writing transaction, so that no write path can forget it. Every
-- instance reads the rows after the last it saw and tells its open streams, which read again
-- only what changed; the leader deletes rows older than an hour. Ids are taken in the writing
-- transaction and may become visible out of order: readers allow for it (`berth_control::feed`).
CREATE TABLE changes (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('app', 'host')),
    team_id BIGINT,
    app_id BIGINT
);
CREATE INDEX changes_at ON changes (at);

CREATE FUNCTION note_app_change(app BIGINT) RETURNS VOID LANGUAGE SQL AS $$
    INSERT INTO changes (at, kind, team_id, app_id)
    VALUES (CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT), 'app',
            (SELECT team_id FROM apps WHERE id = app), app);
$$;

CREATE FUNCTION apps_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO changes (at, kind, team_id, app_id)
        VALUES (CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT), 'app', OLD.team_id, OLD.id);
    ELSE
        INSERT INTO changes (at, kind, team_id, app_id)
        VALUES (CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT), 'app', NEW.team_id, NEW.id);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER apps_change AFTER INSERT OR UPDATE OR DELETE ON apps
    FOR EACH ROW EXECUTE FUNCTION apps_changed();

-- Releases and replicas (both carry `app_id`).
CREATE FUNCTION app_rows_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM note_app_change(OLD.app_id);
    ELSE
        PERFORM note_app_change(NEW.app_id);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER releases_change AFTER INSERT OR UPDATE ON releases
    FOR EACH ROW EXECUTE FUNCTION app_rows_changed();
CREATE TRIGGER replicas_change AFTER INSERT OR UPDATE OR DELETE ON replicas
    FOR EACH ROW EXECUTE FUNCTION app_rows_changed();

CREATE FUNCTION release_events_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM note_app_change((SELECT app_id FROM releases WHERE id = NEW.release_id));
    RETURN NULL;
END $$;
CREATE TRIGGER release_events_change AFTER INSERT ON release_events
    FOR EACH ROW EXECUTE FUNCTION release_events_changed();

-- Hosts: not when only `last_seen` moves (a heartbeat is not a change worth a page's read).
CREATE FUNCTION hosts_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO changes (at, kind) VALUES (CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT), 'host');
    RETURN NULL;
END $$;
CREATE TRIGGER hosts_change_rows AFTER INSERT OR DELETE ON hosts
    FOR EACH ROW EXECUTE FUNCTION hosts_changed();
CREATE TRIGGER hosts_change_columns AFTER UPDATE ON hosts
    FOR EACH ROW WHEN ((OLD.name, OLD.address, OLD.labels, OLD.cpu_millis, OLD.memory_mb, OLD.state, OLD.is_local)
                       IS DISTINCT FROM
                       (NEW.name, NEW.address, NEW.labels, NEW.cpu_millis, NEW.memory_mb, NEW.state, NEW.is_local))
    EXECUTE FUNCTION hosts_changed();
