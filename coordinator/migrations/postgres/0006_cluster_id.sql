-- The cluster's identity (issue 22): a random id drawn once, when the
-- catalog is created (or migrated), and never changed. Every feed cursor
-- carries it, so a cursor of another cluster is refused even when it names
-- the same groups. Keep it equivalent to ../sqlite/0006_cluster_id.sql.
--
-- One row (`one` = 1); `id` is 1 to 2^63 - 1 (positive in both SQLite's
-- INTEGER and PostgreSQL's BIGINT; 0 means "no cluster" in a cursor).
CREATE TABLE cluster_identity (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    id BIGINT NOT NULL CHECK (id > 0)
);

-- Two random() draws (each a double in [0, 1)) give 31 + 32 random bits;
-- GREATEST rules out 0. sqlx runs this under its migration lock, once.
INSERT INTO cluster_identity (one, id)
VALUES (1, GREATEST(1,
    (floor(random() * 2147483648)::bigint << 32)
    | floor(random() * 4294967296)::bigint));
