-- MNET peerings vmoodle made: which side's mnet_host row vmoodle created (and may remove).
CREATE TABLE mnet_links (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    a_id INTEGER NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    b_id INTEGER NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    a_made INTEGER NOT NULL DEFAULT 0,
    b_made INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    UNIQUE (a_id, b_id)
);
