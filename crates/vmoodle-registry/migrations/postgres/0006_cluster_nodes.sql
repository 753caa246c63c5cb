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
