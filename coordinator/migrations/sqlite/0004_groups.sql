-- Adding and removing shard groups on a running cluster. Keep it
-- equivalent to ../postgres/0004_groups.sql.
--
-- `groups_created` is how many groups the cluster was created with: what
-- `--groups N` must match on a later start once groups have been added or
-- removed (the group count alone no longer says). Until now groups could
-- not change, so an existing cluster was created with as many as it has.
ALTER TABLE cluster ADD COLUMN groups_created INTEGER NOT NULL DEFAULT 0 CHECK (groups_created >= 0);
UPDATE cluster SET groups_created = (SELECT COUNT(*) FROM shard_groups);
