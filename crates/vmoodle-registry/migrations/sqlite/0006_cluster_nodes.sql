-- Cluster nodes: machines running `vmoodle agent`, reached over HTTPS. The agent's certificate is
-- pinned when the node is registered (its fingerprint is what the operator compared); the token
-- the control node presents is sealed with the home's key.
CREATE TABLE cluster_nodes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    address TEXT NOT NULL,
    agent_port INTEGER NOT NULL,
    token TEXT NOT NULL,
    cert_pem TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (address, agent_port)
);

-- A database server that became a cluster: primary, replicas and proxies (nodes), the virtual
-- IP, and the endpoint the server had before (what `cluster destroy` and undo point back to).
-- The replication account's password is sealed.
CREATE TABLE clusters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    dbserver_id INTEGER NOT NULL UNIQUE REFERENCES db_servers (id) ON DELETE RESTRICT,
    state TEXT NOT NULL CHECK (state IN ('building', 'active', 'destroying')),
    vip TEXT NOT NULL,
    interface TEXT NOT NULL,
    writer_port INTEGER NOT NULL,
    reader_port INTEGER NOT NULL,
    max_lag INTEGER NOT NULL,
    orig_host TEXT NOT NULL,
    orig_port INTEGER NOT NULL,
    orig_socket TEXT,
    repl_user TEXT NOT NULL,
    repl_password TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE cluster_members (
    cluster_id INTEGER NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    node_id INTEGER NOT NULL REFERENCES cluster_nodes (id) ON DELETE RESTRICT,
    role TEXT NOT NULL CHECK (role IN ('primary', 'replica', 'proxy')),
    -- MariaDB: the replica's server_id; PostgreSQL: its replication slot on the primary.
    server_id INTEGER,
    slot TEXT,
    PRIMARY KEY (cluster_id, node_id, role)
);

-- Where reads go when the server is a cluster (Moodle's dboptions['readonly']).
ALTER TABLE db_servers ADD COLUMN reader_host TEXT;
ALTER TABLE db_servers ADD COLUMN reader_port INTEGER;
