-- Per-team quotas, set by instance admins; NULL is unlimited. They bound what a team's apps are
-- declared to run (each app's latest release that did not fail, or the initial spec of an app
-- not built yet), checked whenever a release would change it.
ALTER TABLE teams ADD COLUMN max_replicas INTEGER;
ALTER TABLE teams ADD COLUMN max_cpu_millis INTEGER;
ALTER TABLE teams ADD COLUMN max_memory_mb INTEGER;
