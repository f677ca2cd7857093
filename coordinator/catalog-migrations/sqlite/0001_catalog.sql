-- The cluster: one row. The slot map is SLOTS comma-separated group ids.
CREATE TABLE cluster (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    map_epoch BIGINT NOT NULL,
    slot_map TEXT NOT NULL,
    version BIGINT NOT NULL
);
-- Shard groups; `version` is bumped by every change (compare-and-swap).
CREATE TABLE shard_groups (
    id BIGINT PRIMARY KEY,
    version BIGINT NOT NULL
);
-- Members of each group; position 0 is the primary.
CREATE TABLE members (
    group_id BIGINT NOT NULL REFERENCES shard_groups (id),
    position BIGINT NOT NULL,
    addr TEXT NOT NULL,
    pid BIGINT NOT NULL,
    PRIMARY KEY (group_id, position)
);
CREATE TABLE coordinators (
    id TEXT PRIMARY KEY,
    addr TEXT NOT NULL,
    heartbeat_ms BIGINT NOT NULL
);
