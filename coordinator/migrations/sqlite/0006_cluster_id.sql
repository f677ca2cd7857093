-- The cluster's identity (issue 22): a random id drawn once, when the
-- catalog is created (or migrated), and never changed. Every feed cursor
-- carries it, so a cursor of another cluster is refused even when it names
-- the same groups. Keep it equivalent to ../postgres/0006_cluster_id.sql.
--
-- One row (`one` = 1); `id` is 1 to 2^63 - 1 (positive in both SQLite's
-- INTEGER and PostgreSQL's BIGINT; 0 means "no cluster" in a cursor).
CREATE TABLE cluster_identity (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    id INTEGER NOT NULL CHECK (id > 0)
) STRICT;

-- random() is 64 random bits; the mask keeps 63 of them, max() rules out 0.
INSERT INTO cluster_identity (one, id)
VALUES (1, max(1, random() & 9223372036854775807));
