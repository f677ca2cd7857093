//! The SQL text that differs between SQLite and PostgreSQL, one [`Dialect`]
//! each. Every other statement is written once, in `mod.rs`; the
//! coordinator-row, reshard-job and feed-cursor statements are written
//! once here (`dialect!`) and differ only in the expression for the
//! database's clock.

/// The statements whose text differs between the two dialects. Everything
/// else is written once: SQLite accepts PostgreSQL's `$n` placeholders.
pub(super) struct Dialect {
    /// Starts a transaction that will write. SQLite: `IMMEDIATE` takes the
    /// write lock up front (waiting up to the busy timeout), because a
    /// transaction that reads first and upgrades later fails at once with
    /// "database is locked" if another writer committed in between.
    pub(super) begin_write: &'static str,
    /// Starts a transaction that only reads, seeing one snapshot across all
    /// its statements. PostgreSQL's default (READ COMMITTED) takes a new
    /// snapshot per statement, so a map read as three SELECTs could mix a
    /// group's old version with its new members.
    pub(super) begin_read: &'static str,
    /// In a transaction begun with `begin_write`, reads the auth switch
    /// (`enabled`, no row if it was never written) and holds it against
    /// every other change that could leave auth on with no admin, until
    /// the transaction ends. PostgreSQL: `FOR UPDATE` locks the row (under
    /// READ COMMITTED each later statement sees what the previous holder
    /// committed). SQLite: a plain read, as `BEGIN IMMEDIATE` holds the
    /// database's one write lock already.
    pub(super) lock_auth_settings: &'static str,
    /// Upserts a coordinator ($1 id, $2 address, $3 metrics address) with
    /// the database's clock as its heartbeat and start.
    pub(super) start_coordinator: &'static str,
    /// The same, keeping the start of a row that exists.
    pub(super) heartbeat_coordinator: &'static str,
    /// Deletes the rows of address $1 but id $2's.
    pub(super) forget_coordinator_addr: &'static str,
    /// Deletes the rows but id $1's whose heartbeat is older than $2
    /// milliseconds.
    pub(super) expire_coordinators: &'static str,
    /// Lists coordinators with the milliseconds since their heartbeat and
    /// since their start (-1: unknown), by the database's clock.
    pub(super) list_coordinators: &'static str,
    /// Inserts reshard job $1 with state $2 at version 1, created and
    /// updated now, unless the id is taken.
    pub(super) insert_job: &'static str,
    /// Replaces job $1's state with $3 and bumps its version, updated now,
    /// only if its version is $2.
    pub(super) save_job: &'static str,
    /// Lists jobs by id: id, version, state, and the milliseconds since
    /// their creation and their last save, by the database's clock.
    pub(super) list_jobs: &'static str,
    /// Upserts feed $1's cursor $2, updated now. A feed not yet stored is
    /// inserted only while fewer than $3 feeds are: one statement, so the
    /// bound needs no transaction (PostgreSQL writers racing to add the
    /// last feeds may pass it by at most their number).
    pub(super) save_feed_cursor: &'static str,
    /// Lists feeds by name: name, cursor, and the milliseconds since its
    /// last save, by the database's clock.
    pub(super) list_feed_cursors: &'static str,
}

/// The upsert of a coordinator's row ($1 id, $2 address, $3 metrics
/// address) with `now_ms` as heartbeat and start for a new row; a row that
/// exists gets the address, metrics address and heartbeat (its start is
/// kept unless the caller appends that column too).
macro_rules! upsert_coordinator {
    ($now_ms:literal) => {
        concat!(
            "INSERT INTO coordinators (id, addr, metrics_addr, heartbeat_unix_ms, started_unix_ms) \
             VALUES ($1, $2, $3, ",
            $now_ms,
            ", ",
            $now_ms,
            ") ON CONFLICT (id) DO UPDATE SET addr = excluded.addr, \
             metrics_addr = excluded.metrics_addr, \
             heartbeat_unix_ms = excluded.heartbeat_unix_ms"
        )
    };
}

/// Builds a [`Dialect`] from its two BEGIN statements and `now_ms`, the SQL
/// expression for the database's clock in milliseconds since the Unix
/// epoch. The coordinator-row statements are written once here and differ
/// between dialects only in that expression (a literal, so that `concat!`
/// can build each statement at compile time).
macro_rules! dialect {
    (
        begin_write: $begin_write:literal,
        begin_read: $begin_read:literal,
        lock_auth_settings: $lock_auth_settings:literal,
        now_ms: $now_ms:literal $(,)?
    ) => {
        Dialect {
            begin_write: $begin_write,
            begin_read: $begin_read,
            lock_auth_settings: $lock_auth_settings,
            start_coordinator: concat!(
                upsert_coordinator!($now_ms),
                ", started_unix_ms = excluded.started_unix_ms"
            ),
            heartbeat_coordinator: upsert_coordinator!($now_ms),
            forget_coordinator_addr: "DELETE FROM coordinators WHERE addr = $1 AND id <> $2",
            expire_coordinators: concat!(
                "DELETE FROM coordinators WHERE id <> $1 AND heartbeat_unix_ms < ",
                $now_ms,
                " - $2"
            ),
            list_coordinators: concat!(
                "SELECT id, addr, metrics_addr, ",
                $now_ms,
                " - heartbeat_unix_ms, \
                 CASE WHEN started_unix_ms > 0 THEN ",
                $now_ms,
                " - started_unix_ms ELSE -1 END \
                 FROM coordinators ORDER BY id"
            ),
            insert_job: concat!(
                "INSERT INTO reshard_jobs (id, version, created_unix_ms, updated_unix_ms, state) \
                 VALUES ($1, 1, ",
                $now_ms,
                ", ",
                $now_ms,
                ", $2) ON CONFLICT (id) DO NOTHING"
            ),
            save_job: concat!(
                "UPDATE reshard_jobs SET version = version + 1, state = $3, updated_unix_ms = ",
                $now_ms,
                " WHERE id = $1 AND version = $2"
            ),
            list_jobs: concat!(
                "SELECT id, version, state, ",
                $now_ms,
                " - created_unix_ms, ",
                $now_ms,
                " - updated_unix_ms FROM reshard_jobs ORDER BY id"
            ),
            save_feed_cursor: concat!(
                "INSERT INTO feed_cursors (feed, cursor, updated_unix_ms) SELECT $1, $2, ",
                $now_ms,
                " WHERE EXISTS (SELECT 1 FROM feed_cursors WHERE feed = $1) \
                 OR (SELECT COUNT(*) FROM feed_cursors) < $3 \
                 ON CONFLICT (feed) DO UPDATE SET cursor = excluded.cursor, \
                 updated_unix_ms = excluded.updated_unix_ms"
            ),
            list_feed_cursors: concat!(
                "SELECT feed, cursor, ",
                $now_ms,
                " - updated_unix_ms FROM feed_cursors ORDER BY feed"
            ),
        }
    };
}

/// SQLite's statements. Its clock is `julianday('now')`, in days, of which
/// 2440587.5 is the Unix epoch.
pub(super) static SQLITE: Dialect = dialect! {
    begin_write: "BEGIN IMMEDIATE",
    begin_read: "BEGIN",
    lock_auth_settings: "SELECT enabled FROM auth_settings WHERE one = 1",
    now_ms: "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
};

/// PostgreSQL's statements. Its clock is `clock_timestamp()`, the time at
/// evaluation (`now()` would be the transaction's start).
pub(super) static POSTGRES: Dialect = dialect! {
    begin_write: "BEGIN",
    begin_read: "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    lock_auth_settings: "SELECT enabled FROM auth_settings WHERE one = 1 FOR UPDATE",
    now_ms: "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
};
