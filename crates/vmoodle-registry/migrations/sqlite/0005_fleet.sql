-- Operations across the fleet. A lock per site and purpose (cron, upgrade), held by one process
-- of one node at a time with a lease that its holder renews (a dead holder's lock expires), so an
-- overlapping cron pass skips a busy site and no site's cron ever runs twice at once, even with
-- several daemons on one register. Each cron run of each site (start, duration, exit status,
-- tail of its output). What vmoodle last read of each site's Moodle (version, release) for the
-- pool and the upgrade planner. The upgrade of each site: where it is, its pre-upgrade snapshot,
-- its log, so a failed or interrupted upgrade is reported and can be rolled back or resumed.
CREATE TABLE site_locks (
    instance_id INTEGER NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    purpose TEXT NOT NULL,
    owner TEXT NOT NULL,
    acquired_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (instance_id, purpose)
);

CREATE TABLE cron_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id INTEGER NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    started_at INTEGER NOT NULL,
    finished_at INTEGER,
    duration_ms INTEGER,
    status TEXT NOT NULL CHECK (status IN ('running', 'ok', 'failed', 'timeout', 'interrupted')),
    exit_code INTEGER,
    output_tail TEXT NOT NULL DEFAULT '',
    owner TEXT NOT NULL,
    started_by TEXT NOT NULL DEFAULT '',
    log_path TEXT NOT NULL DEFAULT ''
);
CREATE INDEX cron_runs_instance ON cron_runs (instance_id, id);

CREATE TABLE site_facts (
    instance_id INTEGER PRIMARY KEY REFERENCES instances (id) ON DELETE CASCADE,
    moodle_version TEXT NOT NULL DEFAULT '',
    moodle_release TEXT NOT NULL DEFAULT '',
    checked_at INTEGER NOT NULL
);

CREATE TABLE upgrades (
    instance_id INTEGER PRIMARY KEY REFERENCES instances (id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    step TEXT NOT NULL DEFAULT '',
    from_version TEXT NOT NULL DEFAULT '',
    to_version TEXT NOT NULL DEFAULT '',
    snapshot TEXT,
    log_path TEXT NOT NULL DEFAULT '',
    error TEXT,
    owner TEXT NOT NULL DEFAULT '',
    job_id INTEGER,
    started_at INTEGER NOT NULL,
    finished_at INTEGER
);
