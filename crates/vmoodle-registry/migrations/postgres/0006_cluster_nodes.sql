-- Cluster nodes: machines running `vmoodle agent`, reached over HTTPS. The agent's certificate is
-- pinned when the node is registered (its fingerprint is what the operator compared); the token
-- the control node presents is sealed with the home's key.
CREATE TABLE cluster_nodes (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    address TEXT NOT NULL,
    agent_port BIGINT NOT NULL,
    token TEXT NOT NULL,
    cert_pem TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (address, agent_port)
);

-- A database server that became a cluster: primary, replicas and proxies (nodes), the virtual
-- IP, and the endpoint the server had before (what `cluster destroy` and undo point back to).
-- The replication account's password is sealed.
CREATE TABLE clusters (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    dbserver_id BIGINT NOT NULL UNIQUE REFERENCES db_servers (id) ON DELETE RESTRICT,
    state TEXT NOT NULL CHECK (state IN ('building', 'active', 'destroying')),
    vip TEXT NOT NULL,
    interface TEXT NOT NULL,
    writer_port BIGINT NOT NULL,
    reader_port BIGINT NOT NULL,
    max_lag BIGINT NOT NULL,
    orig_host TEXT NOT NULL,
    orig_port BIGINT NOT NULL,
    orig_socket TEXT,
    repl_user TEXT NOT NULL,
    repl_password TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE cluster_members (
    cluster_id BIGINT NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    node_id BIGINT NOT NULL REFERENCES cluster_nodes (id) ON DELETE RESTRICT,
    role TEXT NOT NULL CHECK (role IN ('primary', 'replica', 'proxy')),
    -- MariaDB: the replica's server_id; PostgreSQL: its replication slot on the primary.
    server_id BIGINT,
    slot TEXT,
    PRIMARY KEY (cluster_id, node_id, role)
);

-- Where reads go when the server is a cluster (Moodle's dboptions['readonly']).
ALTER TABLE db_servers ADD COLUMN reader_host TEXT;
ALTER TABLE db_servers ADD COLUMN reader_port BIGINT;
