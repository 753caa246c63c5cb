-- The register: database servers, instances, templates and jobs.
CREATE TABLE db_servers (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('mariadb', 'mysql', 'pgsql')),
    host TEXT NOT NULL,
    port BIGINT NOT NULL,
    socket TEXT,
    admin_user TEXT NOT NULL,
    admin_password TEXT NOT NULL,
    -- 'standalone' today; a cluster (primary, replicas, proxies, virtual IP) later stands here.
    topology TEXT NOT NULL DEFAULT 'standalone',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE instances (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    shortname TEXT NOT NULL UNIQUE,
    host TEXT NOT NULL UNIQUE,
    wwwroot TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    is_master BIGINT NOT NULL DEFAULT 0,
    enabled BIGINT NOT NULL DEFAULT 1,
    dbserver_id BIGINT NOT NULL REFERENCES db_servers(id) ON DELETE RESTRICT,
    dbtype TEXT NOT NULL,
    dbname TEXT NOT NULL,
    dbuser TEXT NOT NULL,
    dbpass TEXT NOT NULL,
    prefix TEXT NOT NULL,
    dbpersist BIGINT NOT NULL DEFAULT 0,
    dataroot TEXT NOT NULL UNIQUE,
    mnet BIGINT NOT NULL DEFAULT -1,
    template TEXT,
    config TEXT NOT NULL DEFAULT '{}',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (dbserver_id, dbname, prefix)
);
CREATE UNIQUE INDEX instances_one_master ON instances (is_master) WHERE is_master = 1;

CREATE TABLE templates (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    path TEXT NOT NULL,
    manifest TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE jobs (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL,
    journal TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    started_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX jobs_state ON jobs (state);
