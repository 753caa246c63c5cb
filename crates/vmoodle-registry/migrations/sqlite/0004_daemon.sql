-- The daemon. Jobs record who started them, the request behind them (so a failed one can be
-- retried; never a password), the bulk run they belong to, a cancel request from any node, and
-- log lines. Administrators, their sessions and API tokens (only hashes are stored). The daemons
-- of each node with their heartbeat (a job of a node whose heartbeat stopped is recovered by
-- another), scheduled work claimed by one node at a time, and a generation number that every
-- change of instances or database servers bumps, which each node polls to keep its host files
-- in step with the register.
ALTER TABLE jobs ADD COLUMN started_by TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN parent INTEGER;
ALTER TABLE jobs ADD COLUMN params TEXT;
ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN log TEXT NOT NULL DEFAULT '';
CREATE INDEX jobs_parent ON jobs (parent);
CREATE INDEX jobs_target ON jobs (target);
CREATE INDEX jobs_kind ON jobs (kind);

CREATE TABLE admins (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_login INTEGER
);

CREATE TABLE api_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    admin_id INTEGER NOT NULL REFERENCES admins (id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL UNIQUE,
    scope TEXT NOT NULL CHECK (scope IN ('read', 'write')),
    created_at INTEGER NOT NULL,
    last_used INTEGER
);

CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY,
    admin_id INTEGER NOT NULL REFERENCES admins (id) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX sessions_expires ON sessions (expires_at);

CREATE TABLE nodes (
    owner TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    listen TEXT NOT NULL DEFAULT '',
    started_at INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);

CREATE TABLE schedule (
    name TEXT PRIMARY KEY,
    next_run INTEGER NOT NULL,
    last_run INTEGER,
    last_owner TEXT,
    last_result TEXT
);

CREATE TABLE generation (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n INTEGER NOT NULL
);
INSERT INTO generation (id, n) VALUES (1, 0);

CREATE TRIGGER instances_gen_ins AFTER INSERT ON instances BEGIN UPDATE generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER instances_gen_upd AFTER UPDATE ON instances BEGIN UPDATE generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER instances_gen_del AFTER DELETE ON instances BEGIN UPDATE generation SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER db_servers_gen_upd AFTER UPDATE ON db_servers BEGIN UPDATE generation SET n = n + 1 WHERE id = 1; END;
