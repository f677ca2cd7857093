-- What `trellis status` shows of each coordinator: where it serves
-- metrics, and when it started (milliseconds since the Unix epoch by the
-- database's clock; 0 for a row written before this migration). Keep it
-- equivalent to ../sqlite/0003_coordinator_status.sql.
ALTER TABLE coordinators ADD COLUMN metrics_addr TEXT NOT NULL DEFAULT '';
ALTER TABLE coordinators ADD COLUMN started_unix_ms BIGINT NOT NULL DEFAULT 0;
