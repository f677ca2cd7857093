-- Replication: each group's primary epoch, and which members are part of
-- the configuration (in sync) rather than learners catching up. Keep it
-- equivalent to ../postgres/0002_replication.sql.
ALTER TABLE shard_groups ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0 CHECK (epoch >= 0);
ALTER TABLE members ADD COLUMN in_sync INTEGER NOT NULL DEFAULT 1 CHECK (in_sync IN (0, 1));
