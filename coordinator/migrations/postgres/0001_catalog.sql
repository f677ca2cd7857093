-- The catalog schema, PostgreSQL dialect. Keep it equivalent to
-- ../sqlite/0001_catalog.sql: the two differ only in type names.
-- Never edit a migration that has shipped (sqlx checks its checksum on
-- every start); add a new numbered file instead.

-- The cluster: exactly one row once bootstrapped. `map_epoch` is the row's
-- compare-and-swap column: every slot map change stores epoch + 1 only if
-- the epoch is still the one the writer read. `slot_map` is SLOTS (4096)
-- group ids as little-endian u32, 16384 bytes.
CREATE TABLE cluster (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    map_epoch BIGINT NOT NULL CHECK (map_epoch >= 1),
    slot_map BYTEA NOT NULL CHECK (octet_length(slot_map) = 16384)
);

-- Shard groups. `version` is bumped by every change to the group or its
-- members, by a conditional update on the version the writer read.
CREATE TABLE shard_groups (
    id BIGINT PRIMARY KEY CHECK (id >= 1),
    version BIGINT NOT NULL CHECK (version >= 1)
);

-- Members of each group, in order: ordinal 0 is the primary.
CREATE TABLE members (
    group_id BIGINT NOT NULL REFERENCES shard_groups (id),
    ordinal BIGINT NOT NULL CHECK (ordinal >= 0),
    addr TEXT NOT NULL CHECK (addr <> ''),
    pid BIGINT NOT NULL CHECK (pid BETWEEN 0 AND 4294967295),
    PRIMARY KEY (group_id, ordinal)
);

-- Coordinators and their last heartbeat, in milliseconds since the Unix
-- epoch by the database's clock (the one clock all coordinators share).
CREATE TABLE coordinators (
    id TEXT PRIMARY KEY CHECK (id <> ''),
    addr TEXT NOT NULL CHECK (addr <> ''),
    heartbeat_unix_ms BIGINT NOT NULL
);
