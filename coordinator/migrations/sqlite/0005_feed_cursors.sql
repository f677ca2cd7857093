-- Change-feed cursors (issue 22): where each named feed (`trellis cdc
-- --feed NAME`) last delivered, so a restarted `trellis cdc` resumes
-- there. Keep it equivalent to ../postgres/0005_feed_cursors.sql.
--
-- `cursor` is the caller's encoding (a trellis.v1.FeedCursor), opaque
-- here and bounded by FEED_CURSOR_BYTES_MAX (64 KiB); `feed` is 1 to
-- FEED_NAME_CHARS_MAX (128) characters of [A-Za-z0-9._-], checked by the
-- catalog before it writes; `updated_unix_ms` is milliseconds since the
-- Unix epoch by the database's clock.
CREATE TABLE feed_cursors (
    feed TEXT PRIMARY KEY CHECK (length(feed) BETWEEN 1 AND 128),
    cursor BLOB NOT NULL CHECK (length(cursor) <= 65536),
    updated_unix_ms INTEGER NOT NULL
) STRICT;
