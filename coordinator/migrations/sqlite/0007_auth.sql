-- Users, their grants and the cluster's auth switch (issue 23). Keep it
-- equivalent to ../postgres/0007_auth.sql.
--
-- `name` follows the certificate name rules (1 to 64 bytes of
-- [A-Za-z0-9._-], checked by the catalog before it writes): a client
-- certificate trellis://client/NAME is user NAME. `password_hash` is a PHC
-- string (argon2id), NULL for a user who logs in by certificate only.
CREATE TABLE users (
    name TEXT PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 64),
    password_hash TEXT CHECK (password_hash IS NULL OR length(password_hash) <= 512)
) STRICT;

-- One row per (user, role, prefix); the empty prefix is every key; `admin`
-- only on the empty prefix. A user's grants are deleted with the user, by
-- the catalog (in one transaction), not by a foreign key: SQLite enforces
-- those only when asked per connection.
CREATE TABLE grants (
    user_name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('read', 'write', 'admin')),
    prefix BLOB NOT NULL CHECK (length(prefix) <= 256),
    PRIMARY KEY (user_name, role, prefix)
) STRICT;

-- One row (`one` = 1), written the first time it is needed: whether
-- requests must authenticate, and the secret that signs the cluster's
-- tokens (32 random bytes drawn by the coordinator that writes the row).
CREATE TABLE auth_settings (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    enabled INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    secret BLOB NOT NULL CHECK (length(secret) = 32)
) STRICT;
