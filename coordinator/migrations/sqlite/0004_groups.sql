-- Adding and removing shard groups on a running cluster, and a table for
-- resharding jobs. Keep it equivalent to ../postgres/0004_groups.sql.
--
-- `groups_created` is how many groups the cluster was created with: what
-- `--groups N` must match on a later start once groups have been added or
-- removed (the group count alone no longer says). Until now groups could
-- not change, so an existing cluster was created with as many as it has.
ALTER TABLE cluster ADD COLUMN groups_created INTEGER NOT NULL DEFAULT 0 CHECK (groups_created >= 0);
UPDATE cluster SET groups_created = (SELECT COUNT(*) FROM shard_groups);

-- Resharding jobs, for the job driver to come (DESIGN.md §8): the catalog
-- stores each job's state as an opaque encoding given by its caller.
-- `version` is the row's compare-and-swap column (every save states the
-- version it read); times are milliseconds since the Unix epoch by the
-- database's clock. `state` is bounded by JOB_STATE_BYTES_MAX (64 KiB).
CREATE TABLE reshard_jobs (
    id INTEGER PRIMARY KEY CHECK (id >= 1),
    version INTEGER NOT NULL CHECK (version >= 1),
    created_unix_ms INTEGER NOT NULL,
    updated_unix_ms INTEGER NOT NULL,
    state BLOB NOT NULL CHECK (length(state) <= 65536)
) STRICT;
