-- Durable jobs: who runs a job (node, pid, process start time), its undo records (written
-- before each change is made), the plan a job needs to be finished forward, and what
-- recovery or a failure undid.
ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN undo TEXT NOT NULL DEFAULT '[]';
ALTER TABLE jobs ADD COLUMN forward TEXT;
ALTER TABLE jobs ADD COLUMN undone TEXT NOT NULL DEFAULT '[]';
ALTER TABLE jobs ADD COLUMN updated_at BIGINT NOT NULL DEFAULT 0;
CREATE INDEX jobs_started ON jobs (started_at);
