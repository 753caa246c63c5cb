-- MNET peerings vmoodle made: which side's mnet_host row vmoodle created (and may remove).
CREATE TABLE mnet_links (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    a_id BIGINT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    b_id BIGINT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    a_made BIGINT NOT NULL DEFAULT 0,
    b_made BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    UNIQUE (a_id, b_id)
);
