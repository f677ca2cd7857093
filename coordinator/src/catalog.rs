//! The catalog: cluster metadata in SQL through sqlx, or in process memory.
//! It owns the shard groups and their members, the slot map and its epoch,
//! and the list of coordinators with their heartbeats. SQLite (a file,
//! `sqlite://PATH`) serves one coordinator; PostgreSQL (`postgres://...`)
//! serves several that share it; memory (`memory:`, [`Catalog::in_memory`])
//! serves the coordinators of one process, and exists for the deterministic
//! simulator, which runs the whole cluster on one thread in simulated time
//! where sqlx's driver threads cannot run.
//!
//! Every change is a conditional update on a version column (a group's
//! `version`, the cluster's `map_epoch`): a writer states the version it
//! read, and the update matches no row if anyone changed it since. Two
//! coordinators can therefore never both win. Schema changes are sqlx
//! migrations embedded from `coordinator/migrations/<backend>/` and run on
//! connect.
//!
//! The memory backend keeps the same tables as plain rows (`MemoryDb`) and
//! goes through the same code: validation, the compare-and-swap conditions,
//! the checks on what is read back (`build_map`) and the errors are shared;
//! only the storage step of each operation differs, written next to the SQL
//! one in `with_pool!`. Its steps are synchronous (lock, change, unlock),
//! never random, and iterate only ordered maps, so a simulation replays
//! exactly; its heartbeats use tokio's clock, which the simulator controls,
//! where SQL uses the database's.
//!
//! The catalog never talks to shards, holds no transaction state, never
//! caches (every call reads the database), and never repairs what it reads:
//! a row that breaks an invariant is an error naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use trellis_types::placement::assign_slots;
use trellis_types::{GroupId, SLOTS};

use crate::map::{ClusterMap, Group, Member};

/// Connections each coordinator keeps to the catalog database. The catalog
/// is read every few seconds and written rarely; a few suffice.
pub const POOL_CONNECTIONS_MAX: u32 = 4;
/// How long to wait for a pooled connection (and, when connecting, for the
/// database to accept one) before failing.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long SQLite waits on a database file locked by another writer
/// before failing with "database is locked".
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts of one read-modify-compare-and-swap cycle that keeps losing to
/// concurrent writers before giving up with [`CatalogError::Conflict`].
pub const REGISTER_ATTEMPTS_MAX: u32 = 16;
/// Attempts at running the SQLite migrations. sqlx takes no lock around
/// SQLite migrations, so two processes opening a new file at once can both
/// try to apply the first one; the loser's transaction fails, rolls back,
/// and the retry finds it applied.
pub const MIGRATE_ATTEMPTS_MAX: u32 = 3;
/// Most shard groups a cluster may have.
pub const GROUPS_MAX: u32 = 1024;
/// Longest member or coordinator address (`host:port`), in bytes.
pub const ADDR_BYTES_MAX: usize = 256;
/// Most replicas one group may have.
pub const MEMBERS_MAX: usize = 7;
/// Longest coordinator id, in bytes.
pub const COORDINATOR_ID_BYTES_MAX: usize = 256;
/// Age of a coordinator's heartbeat after which its row is deleted (by any
/// coordinator's heartbeat): a coordinator gone this long is not coming
/// back under that id (ids carry the process id), and a restart on the
/// same address replaces its row at once anyway. Until then the row shows
/// as dead in the status.
pub const COORDINATOR_ROW_EXPIRY: Duration = Duration::from_secs(10 * 60);

/// The URL of an in-memory catalog (nothing may follow it).
pub const MEMORY_URL: &str = "memory:";

/// Bytes of a stored slot map: one little-endian `u32` group id per slot.
const SLOT_MAP_BYTES: usize = SLOTS as usize * 4;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// Why a catalog operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(
        "refusing catalog URL `{url}`: {reason}; use sqlite://PATH, postgres://USER@HOST:PORT/DB or memory: (this process only)"
    )]
    BadUrl { url: String, reason: &'static str },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Database {
        context: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("{context}: {source}")]
    Migrate {
        context: String,
        #[source]
        source: MigrateError,
    },
    #[error("the catalog holds no cluster yet: start a coordinator with --groups N to create one")]
    NotBootstrapped,
    /// `bootstrap` asked for a cluster other than the one that exists.
    #[error("{0}")]
    Mismatch(String),
    #[error("group {group} does not exist: this cluster has groups {first} to {last}")]
    UnknownGroup {
        group: GroupId,
        first: GroupId,
        last: GroupId,
    },
    /// An argument the catalog refuses (out of range, wrong length).
    #[error("{0}")]
    Invalid(String),
    #[error(
        "lost the compare-and-swap to other writers {REGISTER_ATTEMPTS_MAX} times in a row; retry"
    )]
    Conflict,
    /// A stored row breaks an invariant. Never repaired silently.
    #[error("the catalog holds invalid data: {0}")]
    Corrupt(String),
}

/// Wraps an sqlx error with what we were doing.
fn db(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> CatalogError {
    move |source| CatalogError::Database {
        context: context.into(),
        source,
    }
}

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
    /// Shared by clones, like a pool: every clone sees the same catalog.
    Memory(Arc<Mutex<MemoryDb>>),
}

/// The catalog's tables in process memory, one row type per SQL table and
/// in the same column types, so that reads go through the same checks
/// ([`build_map`], [`to_u64`]) as rows read from SQL. Ordered maps keyed
/// like the tables' primary keys give `ORDER BY` for free and keep every
/// iteration deterministic.
///
/// Every method is synchronous and checks before it changes anything, so a
/// call either happens whole or not at all; the lock is held for one method
/// call and never across an `.await` (a std `Mutex`: nothing inside waits).
#[derive(Debug, Default)]
struct MemoryDb {
    /// `cluster`: the map epoch and the encoded slot map; `None` until
    /// bootstrapped.
    cluster: Option<ClusterRow>,
    /// `shard_groups`: id → (version, epoch).
    groups: BTreeMap<i64, (i64, i64)>,
    /// `members`: (group id, ordinal) → (address, pid, in sync as 0 or 1).
    members: BTreeMap<(i64, i64), (String, i64, i64)>,
    /// `coordinators`: id → its row, times by tokio's clock.
    coordinators: BTreeMap<String, MemoryCoordinator>,
}

/// A row of the in-memory `coordinators` table.
#[derive(Debug)]
struct MemoryCoordinator {
    addr: String,
    metrics_addr: String,
    heartbeat: tokio::time::Instant,
    started: tokio::time::Instant,
}

/// A coordinator as the catalog lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoordinatorRow {
    pub id: String,
    pub addr: String,
    /// Where it serves metrics; empty if it did not say.
    pub metrics_addr: String,
    /// Milliseconds since its last heartbeat (the database's clock; in
    /// memory, tokio's).
    pub heartbeat_age_ms: u64,
    /// Milliseconds since it registered at start-up; `None` for a row
    /// written before start times were kept.
    pub uptime_ms: Option<u64>,
}

/// How a coordinator's row is written: at start-up (which also forgets
/// older rows of the same address and starts its uptime) or as a periodic
/// heartbeat (which also deletes rows older than
/// [`COORDINATOR_ROW_EXPIRY`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoordinatorWrite {
    StartUp,
    Heartbeat,
}

impl MemoryDb {
    /// Creates the cluster row and `groups` (version 1, epoch 0) unless the
    /// cluster row exists. Returns whether it created them.
    fn bootstrap(&mut self, slot_map: &[u8], groups: &[i64]) -> Result<bool, CatalogError> {
        if self.cluster.is_some() {
            return Ok(false);
        }
        // SQL refuses these inserts on the primary key; check before
        // changing anything.
        if let Some(id) = groups.iter().find(|id| self.groups.contains_key(id)) {
            return Err(CatalogError::Corrupt(format!(
                "shard group {id} exists but the cluster does not"
            )));
        }
        self.cluster = Some((1, slot_map.to_vec()));
        for id in groups {
            self.groups.insert(*id, (1, 0));
        }
        Ok(true)
    }

    /// The rows `load` reads, in the order the SQL reads them.
    fn read_map(&self) -> MapRows {
        let group_rows = self
            .groups
            .iter()
            .map(|(id, (version, epoch))| (*id, *version, *epoch))
            .collect();
        let member_rows = self
            .members
            .iter()
            .map(|((group, ordinal), (addr, pid, in_sync))| {
                (*group, *ordinal, addr.clone(), *pid, *in_sync)
            })
            .collect();
        (self.cluster.clone(), group_rows, member_rows)
    }

    /// The conditional update of `cas_group`: replaces the group's epoch and
    /// members only if its version is `version` and its epoch at most
    /// `epoch`, and bumps the version. Returns whether it did.
    fn cas_group(
        &mut self,
        group: i64,
        version: i64,
        epoch: i64,
        members: &[Member],
    ) -> Result<bool, CatalogError> {
        let Some(row) = self.groups.get_mut(&group) else {
            return Ok(false);
        };
        if row.0 != version || row.1 > epoch {
            return Ok(false);
        }
        let next = version.checked_add(1).ok_or_else(|| {
            CatalogError::Invalid(format!(
                "the version {version} of group {group} cannot grow further"
            ))
        })?;
        *row = (next, epoch);
        self.members.retain(|(g, _), _| *g != group);
        // At most MEMBERS_MAX ordinals (checked by the caller), as in SQL.
        for (ordinal, m) in members.iter().enumerate() {
            self.members.insert(
                (group, ordinal as i64),
                (m.addr.clone(), i64::from(m.pid), i64::from(m.in_sync)),
            );
        }
        Ok(true)
    }

    /// The lowest and highest group id, if any group exists.
    fn group_range(&self) -> (Option<i64>, Option<i64>) {
        (
            self.groups.keys().next().copied(),
            self.groups.keys().next_back().copied(),
        )
    }

    /// The storage step of `write_coordinator`, by tokio's clock.
    fn write_coordinator(
        &mut self,
        id: &str,
        addr: &str,
        metrics_addr: &str,
        how: CoordinatorWrite,
    ) {
        let now = tokio::time::Instant::now();
        match how {
            CoordinatorWrite::StartUp => self
                .coordinators
                .retain(|other, row| other == id || row.addr != addr),
            CoordinatorWrite::Heartbeat => self.coordinators.retain(|other, row| {
                other == id
                    || now.saturating_duration_since(row.heartbeat) <= COORDINATOR_ROW_EXPIRY
            }),
        }
        let started = match (how, self.coordinators.get(id)) {
            (CoordinatorWrite::Heartbeat, Some(row)) => row.started,
            _ => now,
        };
        self.coordinators.insert(
            id.to_string(),
            MemoryCoordinator {
                addr: addr.to_string(),
                metrics_addr: metrics_addr.to_string(),
                heartbeat: now,
                started,
            },
        );
    }

    /// Coordinators by id with the milliseconds since their heartbeat and
    /// start, by tokio's clock.
    fn list_coordinators(&self) -> Vec<CoordinatorListed> {
        let now = tokio::time::Instant::now();
        let ms = |since: tokio::time::Instant| {
            i64::try_from(now.saturating_duration_since(since).as_millis()).unwrap_or(i64::MAX)
        };
        self.coordinators
            .iter()
            .map(|(id, row)| {
                (
                    id.clone(),
                    row.addr.clone(),
                    row.metrics_addr.clone(),
                    ms(row.heartbeat),
                    ms(row.started),
                )
            })
            .collect()
    }

    /// The storage step of `cas_slot_map`: refuses a map naming a group
    /// that does not exist, then stores `slot_map` with epoch `next` only if
    /// the stored epoch is `expected`. Returns whether it did.
    fn cas_slot_map(
        &mut self,
        named: &BTreeSet<GroupId>,
        expected: i64,
        next: i64,
        slot_map: &[u8],
    ) -> Result<bool, CatalogError> {
        let existing: Vec<i64> = self.groups.keys().copied().collect();
        check_groups_exist(named, existing)?;
        match &mut self.cluster {
            Some((epoch, stored)) if *epoch == expected => {
                *epoch = next;
                *stored = slot_map.to_vec();
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// Locks the in-memory catalog. A panic while it was held may have left a
/// change half made, which the catalog never repairs silently.
fn lock_memory(memory: &Mutex<MemoryDb>) -> Result<MutexGuard<'_, MemoryDb>, CatalogError> {
    memory.lock().map_err(|_| {
        CatalogError::Corrupt(
            "a thread panicked while changing the in-memory catalog; it may be half changed".into(),
        )
    })
}

/// Refuses a slot map naming groups that do not exist, given the ids that
/// do; no group at all means no cluster.
fn check_groups_exist(named: &BTreeSet<GroupId>, existing: Vec<i64>) -> Result<(), CatalogError> {
    if existing.is_empty() {
        return Err(CatalogError::NotBootstrapped);
    }
    let existing: BTreeSet<GroupId> = existing
        .into_iter()
        .map(|id| to_u64(id, "a group id"))
        .collect::<Result<_, _>>()?;
    if let Some(missing) = named.difference(&existing).next() {
        return Err(CatalogError::Invalid(format!(
            "refusing a slot map that names group {missing}, which does not exist"
        )));
    }
    Ok(())
}

/// The statements whose text differs between the two dialects. Everything
/// else is written once: SQLite accepts PostgreSQL's `$n` placeholders.
struct Dialect {
    /// Starts a transaction that will write. SQLite: `IMMEDIATE` takes the
    /// write lock up front (waiting up to the busy timeout), because a
    /// transaction that reads first and upgrades later fails at once with
    /// "database is locked" if another writer committed in between.
    begin_write: &'static str,
    /// Starts a transaction that only reads, seeing one snapshot across all
    /// its statements. PostgreSQL's default (READ COMMITTED) takes a new
    /// snapshot per statement, so a map read as three SELECTs could mix a
    /// group's old version with its new members.
    begin_read: &'static str,
    /// Upserts a coordinator ($1 id, $2 address, $3 metrics address) with
    /// the database's clock as its heartbeat and start.
    start_coordinator: &'static str,
    /// The same, keeping the start of a row that exists.
    heartbeat_coordinator: &'static str,
    /// Deletes the rows of address $1 but id $2's.
    forget_coordinator_addr: &'static str,
    /// Deletes the rows but id $1's whose heartbeat is older than $2
    /// milliseconds.
    expire_coordinators: &'static str,
    /// Lists coordinators with the milliseconds since their heartbeat and
    /// since their start (-1: unknown), by the database's clock.
    list_coordinators: &'static str,
}

/// Rows as `list_coordinators` returns them: id, address, metrics address,
/// heartbeat age and uptime in milliseconds.
type CoordinatorListed = (String, String, String, i64, i64);

/// The database's clock in milliseconds since the Unix epoch, per dialect
/// (a macro so that `concat!` can build the statements from it).
macro_rules! sqlite_now_ms {
    () => {
        "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
    };
}
macro_rules! postgres_now_ms {
    () => {
        "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
    };
}

static SQLITE: Dialect = Dialect {
    begin_write: "BEGIN IMMEDIATE",
    begin_read: "BEGIN",
    start_coordinator: concat!(
        "INSERT INTO coordinators (id, addr, metrics_addr, heartbeat_unix_ms, started_unix_ms) \
         VALUES ($1, $2, $3, ",
        sqlite_now_ms!(),
        ", ",
        sqlite_now_ms!(),
        ") ON CONFLICT (id) DO UPDATE SET addr = excluded.addr, \
         metrics_addr = excluded.metrics_addr, \
         heartbeat_unix_ms = excluded.heartbeat_unix_ms, \
         started_unix_ms = excluded.started_unix_ms"
    ),
    heartbeat_coordinator: concat!(
        "INSERT INTO coordinators (id, addr, metrics_addr, heartbeat_unix_ms, started_unix_ms) \
         VALUES ($1, $2, $3, ",
        sqlite_now_ms!(),
        ", ",
        sqlite_now_ms!(),
        ") ON CONFLICT (id) DO UPDATE SET addr = excluded.addr, \
         metrics_addr = excluded.metrics_addr, \
         heartbeat_unix_ms = excluded.heartbeat_unix_ms"
    ),
    forget_coordinator_addr: "DELETE FROM coordinators WHERE addr = $1 AND id <> $2",
    expire_coordinators: concat!(
        "DELETE FROM coordinators WHERE id <> $1 AND heartbeat_unix_ms < ",
        sqlite_now_ms!(),
        " - $2"
    ),
    list_coordinators: concat!(
        "SELECT id, addr, metrics_addr, ",
        sqlite_now_ms!(),
        " - heartbeat_unix_ms, \
         CASE WHEN started_unix_ms > 0 THEN ",
        sqlite_now_ms!(),
        " - started_unix_ms ELSE -1 END \
         FROM coordinators ORDER BY id"
    ),
};

static POSTGRES: Dialect = Dialect {
    begin_write: "BEGIN",
    begin_read: "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    start_coordinator: concat!(
        "INSERT INTO coordinators (id, addr, metrics_addr, heartbeat_unix_ms, started_unix_ms) \
         VALUES ($1, $2, $3, ",
        postgres_now_ms!(),
        ", ",
        postgres_now_ms!(),
        ") ON CONFLICT (id) DO UPDATE SET addr = excluded.addr, \
         metrics_addr = excluded.metrics_addr, \
         heartbeat_unix_ms = excluded.heartbeat_unix_ms, \
         started_unix_ms = excluded.started_unix_ms"
    ),
    heartbeat_coordinator: concat!(
        "INSERT INTO coordinators (id, addr, metrics_addr, heartbeat_unix_ms, started_unix_ms) \
         VALUES ($1, $2, $3, ",
        postgres_now_ms!(),
        ", ",
        postgres_now_ms!(),
        ") ON CONFLICT (id) DO UPDATE SET addr = excluded.addr, \
         metrics_addr = excluded.metrics_addr, \
         heartbeat_unix_ms = excluded.heartbeat_unix_ms"
    ),
    forget_coordinator_addr: "DELETE FROM coordinators WHERE addr = $1 AND id <> $2",
    expire_coordinators: concat!(
        "DELETE FROM coordinators WHERE id <> $1 AND heartbeat_unix_ms < ",
        postgres_now_ms!(),
        " - $2"
    ),
    list_coordinators: concat!(
        "SELECT id, addr, metrics_addr, ",
        postgres_now_ms!(),
        " - heartbeat_unix_ms, \
         CASE WHEN started_unix_ms > 0 THEN ",
        postgres_now_ms!(),
        " - started_unix_ms ELSE -1 END \
         FROM coordinators ORDER BY id"
    ),
};

/// A connection pool to the catalog database. Cheap to clone (the pool is
/// shared).
#[derive(Clone)]
pub struct Catalog {
    pool: Pool,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Catalog({})", self.backend())
    }
}

/// Runs a catalog operation that opens a transaction in a task of its own
/// and waits for it, so the transaction always ends (committed or rolled
/// back) even if our caller is dropped midway.
///
/// Why: sqlx 0.8's `begin_with` on SQLite is not cancel-safe — after the
/// BEGIN has run it awaits once more, and a future dropped there (a gRPC
/// handler whose client gave up, a timeout) leaves the BEGIN open on a
/// connection that goes back to the pool. That connection then refuses
/// every later `begin_with` ("non-zero transaction depth") and, after a
/// `BEGIN IMMEDIATE`, holds SQLite's write lock against every process
/// sharing the file. A spawned task is never dropped midway.
async fn to_completion<T, F>(op: F) -> Result<T, CatalogError>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, CatalogError>> + Send + 'static,
{
    match tokio::spawn(op).await {
        Ok(result) => result,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        // Only when the runtime shuts down.
        Err(err) => Err(CatalogError::Io {
            context: "running a catalog operation".to_string(),
            source: std::io::Error::other(err.to_string()),
        }),
    }
}

/// Runs the storage step of an operation: `$sql` with `$p` bound to the
/// concrete pool (and `$d`, if named, to its [`Dialect`]), or `$memory` with
/// `$m` bound to the locked [`MemoryDb`]. The SQL body is written once and
/// type-checked against each driver, which keeps the two from drifting
/// apart without sqlx's `Any` driver (which would lose `BYTEA`/`BLOB`
/// typing). The memory body holds a std lock, so it must not `.await`
/// (clippy's `await_holding_lock` refuses it, and the future would not be
/// `Send`). Used in functions returning `Result<_, CatalogError>`: a
/// poisoned lock is returned as an error.
macro_rules! with_pool {
    ($catalog:expr, $p:ident $(, $d:ident)? => $sql:expr, $m:ident => $memory:expr) => {
        match &$catalog.pool {
            Pool::Sqlite($p) => {
                $(let $d: &'static Dialect = &SQLITE;)?
                $sql
            }
            Pool::Postgres($p) => {
                $(let $d: &'static Dialect = &POSTGRES;)?
                $sql
            }
            Pool::Memory(memory) => {
                let mut guard = lock_memory(memory)?;
                let $m: &mut MemoryDb = &mut guard;
                $memory
            }
        }
    };
}

/// Converts an id, version or epoch for a `BIGINT` column.
fn to_i64(value: u64, what: &str) -> Result<i64, CatalogError> {
    i64::try_from(value)
        .map_err(|_| CatalogError::Invalid(format!("{what} {value} does not fit a BIGINT")))
}

/// Converts a stored `BIGINT` back; a negative value is a corrupt row.
fn to_u64(value: i64, what: &str) -> Result<u64, CatalogError> {
    u64::try_from(value).map_err(|_| CatalogError::Corrupt(format!("{what} is negative ({value})")))
}

/// Encodes a slot map as `SLOTS` little-endian `u32` group ids.
fn encode_slots(slots: &[GroupId]) -> Result<Vec<u8>, CatalogError> {
    if slots.len() != SLOTS as usize {
        return Err(CatalogError::Invalid(format!(
            "refusing a slot map of {} entries: a slot map has exactly {SLOTS}",
            slots.len()
        )));
    }
    let mut out = Vec::with_capacity(SLOT_MAP_BYTES);
    for (slot, group) in slots.iter().enumerate() {
        let group = u32::try_from(*group).map_err(|_| {
            CatalogError::Invalid(format!(
                "refusing a slot map that gives slot {slot} to group {group}: group ids are at most {}",
                u32::MAX
            ))
        })?;
        out.extend_from_slice(&group.to_le_bytes());
    }
    Ok(out)
}

/// Decodes a stored slot map; anything but exactly `SLOTS` ids is corrupt.
fn decode_slots(bytes: &[u8]) -> Result<Vec<GroupId>, CatalogError> {
    if bytes.len() != SLOT_MAP_BYTES {
        return Err(CatalogError::Corrupt(format!(
            "the slot map is {} bytes, expected {SLOT_MAP_BYTES} ({SLOTS} slots of 4 bytes)",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| GroupId::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect())
}

/// Refuses an empty or over-long text argument.
fn check_text(what: &str, value: &str, max: usize) -> Result<(), CatalogError> {
    if value.is_empty() {
        return Err(CatalogError::Invalid(format!("{what} is empty")));
    }
    if value.len() > max {
        return Err(CatalogError::Invalid(format!(
            "{what} is {} bytes, more than the limit of {max}",
            value.len()
        )));
    }
    Ok(())
}

/// The row of `cluster`: map epoch, encoded slot map.
type ClusterRow = (i64, Vec<u8>);
/// One row of `shard_groups`: id, version, epoch.
type GroupRow = (i64, i64, i64);
/// One row of `members`: group id, ordinal, address, pid, in sync.
type MemberRow = (i64, i64, String, i64, i64);
/// What one consistent read of the map returns.
type MapRows = (Option<ClusterRow>, Vec<GroupRow>, Vec<MemberRow>);

/// Builds and checks a map from the rows of one consistent read.
fn build_map(
    epoch: i64,
    slot_map: &[u8],
    group_rows: Vec<GroupRow>,
    member_rows: Vec<MemberRow>,
) -> Result<ClusterMap, CatalogError> {
    let map_epoch = to_u64(epoch, "the map epoch")?;
    if map_epoch == 0 {
        return Err(CatalogError::Corrupt("the map epoch is 0".into()));
    }
    let mut groups = BTreeMap::new();
    for (id, version, epoch) in group_rows {
        let id = to_u64(id, "a group id")?;
        let version = to_u64(version, &format!("the version of group {id}"))?;
        let epoch = to_u64(epoch, &format!("the epoch of group {id}"))?;
        groups.insert(
            id,
            Group {
                id,
                members: Vec::new(),
                version,
                epoch,
            },
        );
    }
    if groups.is_empty() {
        return Err(CatalogError::Corrupt(
            "the cluster exists but has no groups".into(),
        ));
    }
    for (group, ordinal, addr, pid, in_sync) in member_rows {
        let group = to_u64(group, "a member's group id")?;
        let entry = groups.get_mut(&group).ok_or_else(|| {
            CatalogError::Corrupt(format!(
                "member {addr} belongs to group {group}, which does not exist"
            ))
        })?;
        // Rows come ordered by ordinal: a gap means a member went missing.
        if usize::try_from(ordinal).ok() != Some(entry.members.len()) {
            return Err(CatalogError::Corrupt(format!(
                "group {group} has member {addr} at position {ordinal}, expected position {}",
                entry.members.len()
            )));
        }
        let pid = u32::try_from(pid).map_err(|_| {
            CatalogError::Corrupt(format!(
                "member {addr} of group {group} has pid {pid}, not a u32"
            ))
        })?;
        entry.members.push(Member {
            addr,
            pid,
            in_sync: in_sync != 0,
        });
    }
    let slots = decode_slots(slot_map)?;
    if let Some((slot, group)) = slots
        .iter()
        .enumerate()
        .find(|(_, g)| !groups.contains_key(g))
    {
        return Err(CatalogError::Corrupt(format!(
            "the slot map gives slot {slot} to group {group}, which does not exist"
        )));
    }
    Ok(ClusterMap {
        map_epoch,
        slots,
        groups,
    })
}

impl Catalog {
    /// Connects and runs the migrations. Accepts `sqlite://PATH` (relative
    /// or absolute; the file and its directory are created if missing),
    /// `postgres://...` / `postgresql://...`, and `memory:`, which returns a
    /// new, empty [`Catalog::in_memory`] on every call.
    pub async fn connect(url: &str) -> Result<Catalog, CatalogError> {
        let bad = |reason| CatalogError::BadUrl {
            url: url.to_string(),
            reason,
        };
        let pool = if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(bad("it names no file"));
            }
            if path.starts_with(":memory:") {
                // Each pooled connection would get its own empty database.
                return Err(bad(
                    "an in-memory SQLite database cannot hold a catalog (for one in process memory, use memory:)",
                ));
            }
            Pool::Sqlite(connect_sqlite(Path::new(path)).await?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Pool::Postgres(connect_postgres(url).await?)
        } else if let Some(rest) = url.strip_prefix(MEMORY_URL) {
            if !rest.is_empty() {
                return Err(bad("an in-memory catalog takes nothing after `memory:`"));
            }
            return Ok(Catalog::in_memory());
        } else {
            return Err(bad("it names neither SQLite, PostgreSQL nor memory"));
        };
        Ok(Catalog { pool })
    }

    /// A new, empty catalog in process memory, independent of every other;
    /// its clones share it. Needs no database and no thread of its own: the
    /// backend of the deterministic simulator. Lost when the last clone is
    /// dropped.
    pub fn in_memory() -> Catalog {
        Catalog {
            pool: Pool::Memory(Arc::new(Mutex::new(MemoryDb::default()))),
        }
    }

    /// Which backend: `"sqlite"`, `"postgres"` or `"memory"`.
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
            Pool::Memory(_) => "memory",
        }
    }

    /// Creates the cluster if the catalog is empty: groups `1..=groups`
    /// without members, the ring's slot map, map epoch 1. If a cluster with
    /// as many groups exists, returns it unchanged, so coordinators may race
    /// here: exactly one creates it and the others read it. A cluster with
    /// a different number of groups is [`CatalogError::Mismatch`].
    pub async fn bootstrap(&self, groups: u32) -> Result<ClusterMap, CatalogError> {
        let this = self.clone();
        to_completion(async move { this.bootstrap_now(groups).await }).await
    }

    async fn bootstrap_now(&self, groups: u32) -> Result<ClusterMap, CatalogError> {
        if groups == 0 || groups > GROUPS_MAX {
            return Err(CatalogError::Invalid(format!(
                "refusing to create a cluster of {groups} groups: a cluster has 1 to {GROUPS_MAX}"
            )));
        }
        let ids: Vec<GroupId> = (1..=GroupId::from(groups)).collect();
        let slot_map = encode_slots(&assign_slots(&ids))?;
        let id_values = ids
            .iter()
            .map(|id| to_i64(*id, "group id"))
            .collect::<Result<Vec<_>, _>>()?;
        // The cluster row and the groups are created in one transaction, and
        // only by the writer whose insert of the single cluster row took
        // effect: a racing writer's insert does nothing (PostgreSQL makes it
        // wait for the first to commit; SQLite serializes writers), and it
        // goes on to read what the winner wrote.
        let created = with_pool!(self, pool, dialect => {
            let mut tx = pool
                .begin_with(dialect.begin_write)
                .await
                .map_err(db("starting the bootstrap"))?;
            let created = sqlx::query(
                "INSERT INTO cluster (id, map_epoch, slot_map) VALUES (1, 1, $1) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&slot_map)
            .execute(&mut *tx)
            .await
            .map_err(db("creating the cluster row"))?
            .rows_affected()
                == 1;
            if created {
                for id in &id_values {
                    sqlx::query("INSERT INTO shard_groups (id, version) VALUES ($1, 1)")
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .map_err(db(format!("creating shard group {id}")))?;
                }
            }
            tx.commit().await.map_err(db("committing the bootstrap"))?;
            created
        }, memory => memory.bootstrap(&slot_map, &id_values)?);
        if created {
            tracing::info!(
                groups,
                backend = self.backend(),
                "created the cluster in the catalog"
            );
        }
        let map = self.load_now().await?;
        if map.groups.len() != ids.len() {
            return Err(CatalogError::Mismatch(format!(
                "the catalog already holds a cluster of {} groups, not {groups}: \
                 adding groups later needs resharding, which is not supported yet",
                map.groups.len()
            )));
        }
        Ok(map)
    }

    /// Reads the whole map (epoch, slot map, groups with members and
    /// versions) in one consistent snapshot. [`CatalogError::NotBootstrapped`]
    /// if there is no cluster yet.
    pub async fn load(&self) -> Result<ClusterMap, CatalogError> {
        let this = self.clone();
        to_completion(async move { this.load_now().await }).await
    }

    async fn load_now(&self) -> Result<ClusterMap, CatalogError> {
        let (cluster, group_rows, member_rows) = with_pool!(self, pool, dialect => {
            let mut tx = pool
                .begin_with(dialect.begin_read)
                .await
                .map_err(db("starting a read of the map"))?;
            let cluster: Option<ClusterRow> =
                sqlx::query_as("SELECT map_epoch, slot_map FROM cluster WHERE id = 1")
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db("reading the slot map"))?;
            let group_rows: Vec<GroupRow> =
                sqlx::query_as("SELECT id, version, epoch FROM shard_groups ORDER BY id")
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db("reading the shard groups"))?;
            let member_rows: Vec<MemberRow> = sqlx::query_as(
                "SELECT group_id, ordinal, addr, pid, in_sync FROM members ORDER BY group_id, ordinal",
            )
            .fetch_all(&mut *tx)
            .await
            .map_err(db("reading the group members"))?;
            tx.commit().await.map_err(db("finishing a read of the map"))?;
            (cluster, group_rows, member_rows)
        }, memory => memory.read_map());
        let (epoch, slot_map) = cluster.ok_or(CatalogError::NotBootstrapped)?;
        build_map(epoch, &slot_map, group_rows, member_rows)
    }

    /// Records that a replica of `group` serves at `addr` with process id
    /// `pid`, and returns the map as it stands afterwards:
    /// - a group without members gets it as primary, epoch + 1;
    /// - its recorded primary (restarted) stays primary with epoch + 1, so
    ///   everything its earlier incarnation sent is fenced off;
    /// - a known backup keeps its place (only its pid changes);
    /// - anyone else joins as a learner (not in sync) that the primary adds
    ///   to the configuration once it has caught up.
    ///
    /// A conditional update on the group's version, retried up to
    /// [`REGISTER_ATTEMPTS_MAX`] times if another writer got in between.
    pub async fn register_member(
        &self,
        group: GroupId,
        addr: &str,
        pid: u32,
    ) -> Result<ClusterMap, CatalogError> {
        let this = self.clone();
        let addr = addr.to_string();
        to_completion(async move { this.register_member_now(group, &addr, pid).await }).await
    }

    async fn register_member_now(
        &self,
        group: GroupId,
        addr: &str,
        pid: u32,
    ) -> Result<ClusterMap, CatalogError> {
        check_text("the member address", addr, ADDR_BYTES_MAX)?;
        for _ in 0..REGISTER_ATTEMPTS_MAX {
            let map = self.load_now().await?;
            let Some(current) = map.groups.get(&group) else {
                return Err(self.unknown_group(group).await);
            };
            let mut members = current.members.clone();
            let mut epoch = current.epoch;
            match members.iter().position(|m| m.addr == addr) {
                None if members.is_empty() => {
                    epoch += 1;
                    members.push(Member {
                        addr: addr.to_string(),
                        pid,
                        in_sync: true,
                    });
                }
                None => members.push(Member {
                    addr: addr.to_string(),
                    pid,
                    in_sync: false,
                }),
                Some(0) => {
                    epoch += 1;
                    members[0].pid = pid;
                }
                Some(i) => members[i].pid = pid,
            }
            if self
                .cas_group_now(group, current.version, epoch, &members)
                .await?
            {
                return self.load_now().await;
            }
        }
        Err(CatalogError::Conflict)
    }

    /// Replaces `group`'s epoch and members (the first is the primary) if
    /// the group's version is still `expected_version`; bumps the version.
    /// Returns whether this writer won. Refuses an epoch that goes back, an
    /// empty member list, a duplicate address, or a primary not in sync.
    pub async fn cas_group(
        &self,
        group: GroupId,
        expected_version: u64,
        epoch: u64,
        members: &[Member],
    ) -> Result<bool, CatalogError> {
        let this = self.clone();
        let members = members.to_vec();
        to_completion(async move {
            this.cas_group_now(group, expected_version, epoch, &members)
                .await
        })
        .await
    }

    async fn cas_group_now(
        &self,
        group: GroupId,
        expected_version: u64,
        epoch: u64,
        members: &[Member],
    ) -> Result<bool, CatalogError> {
        if members.is_empty() {
            return Err(CatalogError::Invalid(format!(
                "refusing an empty configuration for group {group}"
            )));
        }
        if !members[0].in_sync {
            return Err(CatalogError::Invalid(format!(
                "refusing group {group}'s configuration: its primary {} is not in sync",
                members[0].addr
            )));
        }
        if members.len() > MEMBERS_MAX {
            return Err(CatalogError::Invalid(format!(
                "refusing {} members for group {group}: at most {MEMBERS_MAX}",
                members.len()
            )));
        }
        for (i, m) in members.iter().enumerate() {
            check_text("the member address", &m.addr, ADDR_BYTES_MAX)?;
            if members[..i].iter().any(|o| o.addr == m.addr) {
                return Err(CatalogError::Invalid(format!(
                    "refusing group {group}'s configuration: {} is listed twice",
                    m.addr
                )));
            }
        }
        let Ok(id) = i64::try_from(group) else {
            return Err(self.unknown_group(group).await);
        };
        let version = to_i64(expected_version, "group version")?;
        let epoch_value = to_i64(epoch, "epoch")?;
        let won = with_pool!(self, pool, dialect => {
            let mut tx = pool
                .begin_with(dialect.begin_write)
                .await
                .map_err(db("starting a configuration change"))?;
            let won = sqlx::query(
                "UPDATE shard_groups SET version = version + 1, epoch = $3 \
                 WHERE id = $1 AND version = $2 AND epoch <= $3",
            )
            .bind(id)
            .bind(version)
            .bind(epoch_value)
            .execute(&mut *tx)
            .await
            .map_err(db(format!("bumping the version of group {group}")))?
            .rows_affected()
                == 1;
            if won {
                sqlx::query("DELETE FROM members WHERE group_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db(format!("removing the old members of group {group}")))?;
                for (ordinal, m) in members.iter().enumerate() {
                    sqlx::query(
                        "INSERT INTO members (group_id, ordinal, addr, pid, in_sync) \
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(id)
                    .bind(ordinal as i64)
                    .bind(&m.addr)
                    .bind(i64::from(m.pid))
                    .bind(i64::from(m.in_sync))
                    .execute(&mut *tx)
                    .await
                    .map_err(db(format!("recording {} in group {group}", m.addr)))?;
                }
                tx.commit()
                    .await
                    .map_err(db(format!("committing group {group}'s configuration")))?;
            } else {
                tx.rollback()
                    .await
                    .map_err(db("rolling back a lost configuration change"))?;
            }
            won
        }, memory => memory.cas_group(id, version, epoch_value, members)?);
        if !won && !self.load_now().await?.groups.contains_key(&group) {
            return Err(self.unknown_group(group).await);
        }
        Ok(won)
    }

    /// The error for a group that does not exist: names the valid range, or
    /// says there is no cluster at all.
    async fn unknown_group(&self, group: GroupId) -> CatalogError {
        match self.group_range().await {
            Ok((Some(first), Some(last))) => {
                match (to_u64(first, "a group id"), to_u64(last, "a group id")) {
                    (Ok(first), Ok(last)) => CatalogError::UnknownGroup { group, first, last },
                    (Err(err), _) | (_, Err(err)) => err,
                }
            }
            Ok(_) => CatalogError::NotBootstrapped,
            Err(err) => err,
        }
    }

    /// The lowest and highest group id, if any group exists.
    async fn group_range(&self) -> Result<(Option<i64>, Option<i64>), CatalogError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as("SELECT MIN(id), MAX(id) FROM shard_groups")
                .fetch_one(pool)
                .await
                .map_err(db("reading the range of group ids"))?
        }, memory => memory.group_range()))
    }

    /// Records a coordinator at start-up: its row (a known id gets its
    /// address replaced) with now as heartbeat and start, by the database's
    /// clock (in memory, by tokio's). Rows of other ids at the same address
    /// are deleted: one address serves one process, so they are earlier
    /// runs (a restart, which gets a new id) and would only show as dead.
    pub async fn register_coordinator(
        &self,
        id: &str,
        addr: &str,
        metrics_addr: &str,
    ) -> Result<(), CatalogError> {
        self.write_coordinator(id, addr, metrics_addr, CoordinatorWrite::StartUp)
            .await
    }

    /// A coordinator's periodic heartbeat: its row gets now as heartbeat
    /// (and is re-created if it was deleted meanwhile), and rows of other
    /// coordinators silent for longer than [`COORDINATOR_ROW_EXPIRY`] are
    /// deleted, so the list stays bounded across restarts.
    pub async fn heartbeat_coordinator(
        &self,
        id: &str,
        addr: &str,
        metrics_addr: &str,
    ) -> Result<(), CatalogError> {
        self.write_coordinator(id, addr, metrics_addr, CoordinatorWrite::Heartbeat)
            .await
    }

    async fn write_coordinator(
        &self,
        id: &str,
        addr: &str,
        metrics_addr: &str,
        how: CoordinatorWrite,
    ) -> Result<(), CatalogError> {
        check_text("the coordinator id", id, COORDINATOR_ID_BYTES_MAX)?;
        check_text("the coordinator address", addr, ADDR_BYTES_MAX)?;
        if metrics_addr.len() > ADDR_BYTES_MAX {
            return Err(CatalogError::Invalid(format!(
                "the coordinator's metrics address is {} bytes; at most {ADDR_BYTES_MAX} are allowed",
                metrics_addr.len()
            )));
        }
        let expiry_ms = to_i64(COORDINATOR_ROW_EXPIRY.as_millis() as u64, "the row expiry")?;
        // Two statements, each complete on its own: a failure between them
        // leaves a row that the next heartbeat writes again.
        with_pool!(self, pool, dialect => {
            let (forget, forget_what) = match how {
                CoordinatorWrite::StartUp => (
                    sqlx::query(dialect.forget_coordinator_addr).bind(addr).bind(id),
                    format!("deleting earlier coordinators at {addr}"),
                ),
                CoordinatorWrite::Heartbeat => (
                    sqlx::query(dialect.expire_coordinators).bind(id).bind(expiry_ms),
                    "deleting coordinators silent for too long".to_string(),
                ),
            };
            forget.execute(pool).await.map_err(db(forget_what))?;
            let upsert = match how {
                CoordinatorWrite::StartUp => dialect.start_coordinator,
                CoordinatorWrite::Heartbeat => dialect.heartbeat_coordinator,
            };
            sqlx::query(upsert)
                .bind(id)
                .bind(addr)
                .bind(metrics_addr)
                .execute(pool)
                .await
                .map_err(db(format!("recording coordinator {id} at {addr}")))?;
        }, memory => memory.write_coordinator(id, addr, metrics_addr, how));
        Ok(())
    }

    /// Coordinators by id, with the age of their heartbeat and their
    /// uptime by the database's clock (in memory, by tokio's).
    pub async fn coordinators(&self) -> Result<Vec<CoordinatorRow>, CatalogError> {
        let rows: Vec<CoordinatorListed> = with_pool!(self, pool, dialect => {
            sqlx::query_as(dialect.list_coordinators)
                .fetch_all(pool)
                .await
                .map_err(db("listing the coordinators"))?
        }, memory => memory.list_coordinators());
        Ok(rows
            .into_iter()
            .map(
                |(id, addr, metrics_addr, age_ms, uptime_ms)| CoordinatorRow {
                    id,
                    addr,
                    metrics_addr,
                    // A heartbeat "in the future" means the database clock
                    // stepped back; it is as fresh as can be.
                    heartbeat_age_ms: u64::try_from(age_ms).unwrap_or(0),
                    uptime_ms: u64::try_from(uptime_ms).ok(),
                },
            )
            .collect())
    }

    /// Compare-and-swap of the slot map: stores `slots` with map epoch
    /// `expected_epoch + 1` only if the stored epoch is `expected_epoch`.
    /// `Ok(false)` if another writer changed it first (nothing is written).
    /// A map of the wrong length or naming a group that does not exist is
    /// refused.
    pub async fn cas_slot_map(
        &self,
        expected_epoch: u64,
        slots: &[GroupId],
    ) -> Result<bool, CatalogError> {
        let this = self.clone();
        let slots = slots.to_vec();
        to_completion(async move { this.cas_slot_map_now(expected_epoch, &slots).await }).await
    }

    async fn cas_slot_map_now(
        &self,
        expected_epoch: u64,
        slots: &[GroupId],
    ) -> Result<bool, CatalogError> {
        let slot_map = encode_slots(slots)?;
        // No stored epoch exceeds i64::MAX, so a larger one is merely stale.
        let Ok(expected) = i64::try_from(expected_epoch) else {
            return Ok(false);
        };
        // The new epoch is computed here, not as `map_epoch + 1` in SQL, so
        // that an exhausted epoch is an error instead of an overflow (SQLite
        // would silently turn it into a float).
        let next = expected.checked_add(1).ok_or_else(|| {
            CatalogError::Invalid(format!(
                "the map epoch {expected_epoch} cannot grow further"
            ))
        })?;
        let named: BTreeSet<GroupId> = slots.iter().copied().collect();
        let won = with_pool!(self, pool, dialect => {
            let mut tx = pool
                .begin_with(dialect.begin_write)
                .await
                .map_err(db("starting a slot map change"))?;
            // Checked inside the transaction that writes the map, so that
            // the groups it names are the groups that exist when it lands.
            let existing: Vec<i64> = sqlx::query_scalar("SELECT id FROM shard_groups")
                .fetch_all(&mut *tx)
                .await
                .map_err(db("reading the shard groups"))?;
            check_groups_exist(&named, existing)?;
            let won = sqlx::query(
                "UPDATE cluster SET map_epoch = $1, slot_map = $2 WHERE id = 1 AND map_epoch = $3",
            )
            .bind(next)
            .bind(&slot_map)
            .bind(expected)
            .execute(&mut *tx)
            .await
            .map_err(db(format!("replacing the slot map of epoch {expected_epoch}")))?
            .rows_affected()
                == 1;
            tx.commit().await.map_err(db("committing the slot map change"))?;
            won
        }, memory => memory.cas_slot_map(&named, expected, next, &slot_map)?);
        if won {
            tracing::info!(map_epoch = next, "stored a new slot map");
        }
        Ok(won)
    }
}

/// Opens (creating if missing) the SQLite catalog at `path` and migrates it.
async fn connect_sqlite(path: &Path) -> Result<SqlitePool, CatalogError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|source| CatalogError::Io {
                context: format!("creating the catalog directory {}", parent.display()),
                source,
            })?;
    }
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        // WAL: readers (every coordinator's map refresh) never block the
        // writer, nor it them.
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: a committed epoch bump survives power loss; losing one would
        // let the next writer hand out the same epoch for a different map.
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(POOL_CONNECTIONS_MAX)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(db(format!("opening the SQLite catalog {}", path.display())))?;
    let mut attempt = 1;
    loop {
        match SQLITE_MIGRATIONS.run(&pool).await {
            Ok(()) => return Ok(pool),
            Err(err) if attempt < MIGRATE_ATTEMPTS_MAX => {
                tracing::debug!(%err, attempt, "migrating the SQLite catalog failed; retrying");
                attempt += 1;
            }
            Err(source) => {
                return Err(CatalogError::Migrate {
                    context: format!("migrating the SQLite catalog {}", path.display()),
                    source,
                });
            }
        }
    }
}

/// Connects to the PostgreSQL catalog and migrates it. sqlx holds an
/// advisory lock while migrating PostgreSQL, so racing coordinators apply
/// each migration once.
async fn connect_postgres(url: &str) -> Result<PgPool, CatalogError> {
    let options: PgConnectOptions = url.parse().map_err(|source| CatalogError::Database {
        context: "parsing the PostgreSQL catalog URL".into(),
        source,
    })?;
    // Named without the URL, which may carry a password.
    let place = format!(
        "{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("(default database)")
    );
    let pool = PgPoolOptions::new()
        .max_connections(POOL_CONNECTIONS_MAX)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(db(format!("connecting to the PostgreSQL catalog {place}")))?;
    POSTGRES_MIGRATIONS
        .run(&pool)
        .await
        .map_err(|source| CatalogError::Migrate {
            context: format!("migrating the PostgreSQL catalog {place}"),
            source,
        })?;
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use sqlx::Connection as _;

    use super::*;

    /// One PostgreSQL connection without a pool, to create and drop schemas.
    async fn pg_connection(url: &str) -> Result<sqlx::PgConnection, sqlx::Error> {
        sqlx::PgConnection::connect(url).await
    }

    /// Where a test's catalog lives; cleaned up on drop, also after a panic.
    struct Place {
        target: Target,
        /// Held for its `Drop`: removes the SQLite file's directory.
        _dir: Option<tempfile::TempDir>,
        /// Held for its `Drop`: drops the PostgreSQL schema.
        _schema: Option<PgSchema>,
    }

    /// How to open a test's catalog again, also from a spawned task: by URL
    /// (each connect is a new pool on the same database), or a clone of the
    /// one in-memory catalog (connecting to `memory:` would make a new,
    /// empty one).
    #[derive(Clone)]
    enum Target {
        Url(String),
        Memory(Catalog),
    }

    impl Target {
        async fn connect(&self) -> Catalog {
            match self {
                Target::Url(url) => Catalog::connect(url).await.expect("connect to the catalog"),
                Target::Memory(catalog) => catalog.clone(),
            }
        }
    }

    /// A schema created for one test; dropped with everything in it.
    struct PgSchema {
        base: String,
        name: String,
    }

    impl Drop for PgSchema {
        fn drop(&mut self) {
            // Drop runs inside the test's runtime, which cannot be blocked
            // on; a thread with its own runtime can.
            let (base, name) = (self.base.clone(), self.name.clone());
            let dropped = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime for dropping a test schema");
                runtime.block_on(async {
                    let mut conn = pg_connection(&base).await?;
                    sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                        .execute(&mut conn)
                        .await?;
                    conn.close().await
                })
            })
            .join();
            if let Ok(Err(err)) = dropped {
                eprintln!("cannot drop test schema {}: {err}", self.name);
            }
        }
    }

    /// How long a test waits for PostgreSQL to accept a connection before
    /// calling it unreachable.
    const PG_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
    const PG_DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

    /// CI always has PostgreSQL: there a missing server is a failure, not a
    /// skip.
    fn in_ci() -> bool {
        std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
    }

    impl Place {
        async fn sqlite() -> Option<Place> {
            let dir = tempfile::tempdir().expect("temp dir");
            // A directory that does not exist yet: connect must create it.
            let path = dir.path().join("not/yet/catalog.db");
            Some(Place {
                target: Target::Url(format!("sqlite://{}", path.display())),
                _dir: Some(dir),
                _schema: None,
            })
        }

        async fn postgres() -> Option<Place> {
            let base = std::env::var("TRELLIS_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| PG_DEFAULT_URL.to_string());
            let probe = tokio::time::timeout(PG_PROBE_TIMEOUT, pg_connection(&base)).await;
            let mut conn = match probe {
                Ok(Ok(conn)) => conn,
                Ok(Err(err)) => return skip_or_fail(&base, &err.to_string()),
                Err(_) => {
                    return skip_or_fail(&base, &format!("no answer within {PG_PROBE_TIMEOUT:?}"));
                }
            };
            let name = format!("t_catalog_{:016x}", rand::random::<u64>());
            sqlx::query(&format!("CREATE SCHEMA {name}"))
                .execute(&mut conn)
                .await
                .expect("create test schema");
            conn.close().await.expect("close");
            let sep = if base.contains('?') { '&' } else { '?' };
            Some(Place {
                target: Target::Url(format!("{base}{sep}options=-c%20search_path%3D{name}")),
                _dir: None,
                _schema: Some(PgSchema { base, name }),
            })
        }

        async fn memory() -> Option<Place> {
            Some(Place {
                target: Target::Memory(Catalog::in_memory()),
                _dir: None,
                _schema: None,
            })
        }

        async fn connect(&self) -> Catalog {
            self.target.connect().await
        }
    }

    fn skip_or_fail(base: &str, why: &str) -> Option<Place> {
        assert!(
            !in_ci(),
            "PostgreSQL catalog tests: cannot connect to {base} and CI is set (CI must provide it): {why}"
        );
        eprintln!("SKIPPED: PostgreSQL catalog tests: cannot connect to {base}: {why}");
        None
    }

    /// Behind the catalog's back (to age or corrupt rows), on any backend:
    /// runs `sql`, or `memory` on the in-memory tables.
    async fn tamper(catalog: &Catalog, sql: &'static str, memory: impl FnOnce(&mut MemoryDb)) {
        let tampered: Result<(), CatalogError> = async {
            with_pool!(catalog, pool => {
                sqlx::query(sql).execute(pool).await.expect(sql);
            }, tables => memory(tables));
            Ok(())
        }
        .await;
        tampered.expect("tamper with the catalog");
    }

    fn moved_map(map: &ClusterMap, from: GroupId, to: GroupId) -> Vec<GroupId> {
        map.slots
            .iter()
            .map(|g| if *g == from { to } else { *g })
            .collect()
    }

    /// The suite both backends run: each case gets a fresh, empty catalog.
    mod cases {
        use super::*;

        pub async fn load_before_bootstrap_is_not_bootstrapped(place: &Place) {
            let catalog = place.connect().await;
            let err = catalog.load().await.expect_err("empty catalog");
            assert!(matches!(err, CatalogError::NotBootstrapped), "{err:?}");
            assert!(
                err.to_string().contains("--groups"),
                "says how to create one: {err}"
            );
            let err = catalog
                .register_member(1, "127.0.0.1:1", 1)
                .await
                .expect_err("register");
            assert!(matches!(err, CatalogError::NotBootstrapped), "{err:?}");
            let slots = vec![1; SLOTS as usize];
            let err = catalog.cas_slot_map(1, &slots).await.expect_err("cas");
            assert!(matches!(err, CatalogError::NotBootstrapped), "{err:?}");
        }

        pub async fn bootstrap_creates_groups_and_full_slot_map(place: &Place) {
            let catalog = place.connect().await;
            let map = catalog.bootstrap(3).await.expect("bootstrap");
            assert_eq!(map.map_epoch, 1);
            assert_eq!(map.slots, assign_slots(&[1, 2, 3]));
            assert_eq!(map.slots.len(), SLOTS as usize);
            assert_eq!(
                map.groups.keys().copied().collect::<Vec<_>>(),
                vec![1, 2, 3]
            );
            for (id, group) in &map.groups {
                assert_eq!(group.id, *id);
                assert!(group.members.is_empty(), "group {id} has no members yet");
                assert!(!map.slots_of(*id).is_empty(), "group {id} owns slots");
            }
            assert_eq!(
                catalog.load().await.expect("load"),
                map,
                "load reads what bootstrap wrote"
            );
            // A new connection (a restarted coordinator) reads it back.
            assert_eq!(place.connect().await.load().await.expect("reload"), map);
        }

        pub async fn bootstrap_again_is_idempotent(place: &Place) {
            let catalog = place.connect().await;
            let map = catalog.bootstrap(4).await.expect("bootstrap");
            let registered = catalog
                .register_member(2, "127.0.0.1:7000", 7)
                .await
                .expect("register");
            assert_eq!(
                catalog.bootstrap(4).await.expect("again"),
                registered,
                "returns what exists"
            );
            let other = place.connect().await;
            assert_eq!(
                other.bootstrap(4).await.expect("from another connection"),
                registered
            );
            assert_eq!(registered.map_epoch, map.map_epoch, "no epoch bump");
        }

        pub async fn bootstrap_with_other_group_count_is_mismatch(place: &Place) {
            let catalog = place.connect().await;
            let map = catalog.bootstrap(3).await.expect("bootstrap");
            for groups in [2, 4] {
                let err = catalog.bootstrap(groups).await.expect_err("other count");
                assert!(matches!(err, CatalogError::Mismatch(_)), "{err:?}");
                let text = err.to_string();
                assert!(
                    text.contains("3 groups") && text.contains("resharding"),
                    "{text}"
                );
            }
            assert_eq!(
                catalog.load().await.expect("load"),
                map,
                "a mismatch changes nothing"
            );
        }

        pub async fn bootstrap_refuses_zero_or_too_many_groups(place: &Place) {
            let catalog = place.connect().await;
            for groups in [0, GROUPS_MAX + 1] {
                let err = catalog.bootstrap(groups).await.expect_err("out of range");
                assert!(matches!(err, CatalogError::Invalid(_)), "{err:?}");
            }
            assert!(matches!(
                catalog.load().await,
                Err(CatalogError::NotBootstrapped)
            ));
        }

        pub async fn register_member_shows_in_load(place: &Place) {
            let catalog = place.connect().await;
            let map = catalog.bootstrap(3).await.expect("bootstrap");
            let after = catalog
                .register_member(2, "127.0.0.1:4000", 42)
                .await
                .expect("register");
            let expected = vec![Member {
                addr: "127.0.0.1:4000".into(),
                pid: 42,
                in_sync: true,
            }];
            assert_eq!(after.groups[&2].members, expected);
            assert_eq!(
                after.groups[&2].epoch, 1,
                "the first member is primary at epoch 1"
            );
            assert_eq!(
                after.groups[&2].version,
                map.groups[&2].version + 1,
                "version bumped"
            );
            assert_eq!(after.primary(2), Some("127.0.0.1:4000"));
            assert_eq!(after.groups[&1], map.groups[&1], "other groups untouched");
            assert_eq!(after.groups[&3], map.groups[&3], "other groups untouched");
            assert_eq!((after.map_epoch, &after.slots), (map.map_epoch, &map.slots));
            assert_eq!(catalog.load().await.expect("load"), after);

            // Another replica joins as a learner behind the primary.
            let again = catalog
                .register_member(2, "127.0.0.1:4001", 43)
                .await
                .expect("again");
            assert_eq!(
                again.groups[&2].members,
                vec![
                    expected[0].clone(),
                    Member {
                        addr: "127.0.0.1:4001".into(),
                        pid: 43,
                        in_sync: false,
                    }
                ]
            );
            assert_eq!(again.groups[&2].version, map.groups[&2].version + 2);
            assert_eq!(again.groups[&2].epoch, 1, "no new primary");
            assert_eq!(catalog.load().await.expect("load"), again);

            // The primary restarted: same place, a new epoch fences its old
            // incarnation. A restarted learner keeps its place.
            let restarted = catalog
                .register_member(2, "127.0.0.1:4000", 44)
                .await
                .expect("restart");
            assert_eq!(restarted.groups[&2].epoch, 2);
            assert_eq!(restarted.groups[&2].members[0].pid, 44);
            let learner = catalog
                .register_member(2, "127.0.0.1:4001", 45)
                .await
                .expect("restart");
            assert_eq!(learner.groups[&2].epoch, 2);
            assert!(!learner.groups[&2].members[1].in_sync);
        }

        pub async fn cas_group_is_conditional_and_checked(place: &Place) {
            let catalog = place.connect().await;
            catalog.bootstrap(2).await.expect("bootstrap");
            let map = catalog
                .register_member(1, "127.0.0.1:5000", 1)
                .await
                .expect("register");
            let group = &map.groups[&1];
            let member = |addr: &str, in_sync| Member {
                addr: addr.into(),
                pid: 7,
                in_sync,
            };
            let promoted = vec![
                member("127.0.0.1:5001", true),
                member("127.0.0.1:5000", false),
            ];
            assert!(
                catalog
                    .cas_group(1, group.version, group.epoch + 1, &promoted)
                    .await
                    .expect("cas")
            );
            // A second writer with the same expected version loses.
            assert!(
                !catalog
                    .cas_group(
                        1,
                        group.version,
                        group.epoch + 1,
                        &[member("127.0.0.1:5000", true)]
                    )
                    .await
                    .expect("cas")
            );
            let now = catalog.load().await.expect("load");
            assert_eq!(now.groups[&1].members, promoted);
            assert_eq!(now.groups[&1].epoch, group.epoch + 1);
            assert_eq!(now.primary(1), Some("127.0.0.1:5001"));
            // The epoch never goes back, even with the right version.
            assert!(
                !catalog
                    .cas_group(1, now.groups[&1].version, 0, &promoted)
                    .await
                    .expect("cas")
            );
            for (what, members) in [
                ("empty", vec![]),
                ("learner primary", vec![member("a:1", false)]),
                ("duplicate", vec![member("a:1", true), member("a:1", false)]),
            ] {
                let err = catalog
                    .cas_group(1, now.groups[&1].version, 9, &members)
                    .await
                    .expect_err(what);
                assert!(matches!(err, CatalogError::Invalid(_)), "{what}: {err:?}");
            }
            assert!(matches!(
                catalog.cas_group(9, 1, 1, &promoted).await,
                Err(CatalogError::UnknownGroup { .. })
            ));
        }

        pub async fn register_unknown_group_or_bad_address_fails(place: &Place) {
            let catalog = place.connect().await;
            let map = catalog.bootstrap(3).await.expect("bootstrap");
            for group in [0, 4, GroupId::MAX] {
                let err = catalog
                    .register_member(group, "127.0.0.1:1", 1)
                    .await
                    .expect_err("unknown");
                assert!(matches!(err, CatalogError::UnknownGroup { .. }), "{err:?}");
                let text = err.to_string();
                assert!(
                    text.contains(&format!("group {group} ")) && text.contains("1 to 3"),
                    "{text}"
                );
            }
            let long = "x".repeat(ADDR_BYTES_MAX + 1);
            for addr in ["", long.as_str()] {
                let err = catalog
                    .register_member(1, addr, 1)
                    .await
                    .expect_err("bad address");
                assert!(matches!(err, CatalogError::Invalid(_)), "{err:?}");
            }
            assert_eq!(
                catalog.load().await.expect("load"),
                map,
                "failures change nothing"
            );
        }

        pub async fn cas_slot_map_bumps_epoch_and_stale_loses(place: &Place) {
            let catalog = place.connect().await;
            let map = catalog.bootstrap(3).await.expect("bootstrap");
            let moved = moved_map(&map, 3, 1);
            assert!(
                catalog.cas_slot_map(1, &moved).await.expect("cas"),
                "the right epoch wins"
            );
            let loaded = catalog.load().await.expect("load");
            assert_eq!((loaded.map_epoch, &loaded.slots), (2, &moved));
            assert_eq!(loaded.groups, map.groups, "groups untouched");

            for stale in [0, 1, 3, u64::MAX] {
                assert!(
                    !catalog.cas_slot_map(stale, &map.slots).await.expect("cas"),
                    "epoch {stale}"
                );
            }
            assert_eq!(
                catalog.load().await.expect("load"),
                loaded,
                "a lost CAS changes nothing"
            );

            assert!(
                catalog.cas_slot_map(2, &map.slots).await.expect("cas"),
                "the next epoch wins"
            );
            let back = catalog.load().await.expect("load");
            assert_eq!((back.map_epoch, &back.slots), (3, &map.slots));
        }

        pub async fn cas_slot_map_refuses_bad_maps(place: &Place) {
            let catalog = place.connect().await;
            let map = catalog.bootstrap(3).await.expect("bootstrap");
            let short = vec![1; SLOTS as usize - 1];
            let unknown = moved_map(&map, 3, 9);
            let huge = moved_map(&map, 3, GroupId::from(u32::MAX) + 1);
            for (what, slots) in [
                ("short", short),
                ("unknown group", unknown),
                ("huge id", huge),
            ] {
                let err = catalog.cas_slot_map(1, &slots).await.expect_err(what);
                assert!(matches!(err, CatalogError::Invalid(_)), "{what}: {err:?}");
            }
            assert_eq!(
                catalog.load().await.expect("load"),
                map,
                "a refused map changes nothing"
            );
        }

        pub async fn concurrent_bootstraps_agree(place: &Place) {
            // Fresh catalog, separate connections: the racers also race to
            // create the file or tables and to run the migrations.
            const RACERS: usize = 8;
            let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(RACERS));
            let racers: Vec<_> = (0..RACERS)
                .map(|_| {
                    let target = place.target.clone();
                    let barrier = barrier.clone();
                    tokio::spawn(async move {
                        barrier.wait().await;
                        let catalog = target.connect().await;
                        catalog.bootstrap(5).await.expect("bootstrap")
                    })
                })
                .collect();
            let mut maps = Vec::new();
            for racer in racers {
                maps.push(racer.await.expect("racer"));
            }
            assert_eq!(maps[0].map_epoch, 1);
            assert_eq!(maps[0].groups.len(), 5);
            assert!(
                maps.iter().all(|m| *m == maps[0]),
                "every racer sees the same map"
            );
            assert_eq!(place.connect().await.load().await.expect("load"), maps[0]);
        }

        pub async fn concurrent_cas_exactly_one_wins(place: &Place) {
            const RACERS: u32 = 8;
            let map = place
                .connect()
                .await
                .bootstrap(RACERS)
                .await
                .expect("bootstrap");
            let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(RACERS as usize));
            let racers: Vec<_> = (1..=GroupId::from(RACERS))
                .map(|g| {
                    // Each racer proposes a different map: all slots to `g`.
                    let slots = vec![g; SLOTS as usize];
                    let target = place.target.clone();
                    let barrier = barrier.clone();
                    tokio::spawn(async move {
                        let catalog = target.connect().await;
                        barrier.wait().await;
                        (
                            g,
                            catalog
                                .cas_slot_map(map.map_epoch, &slots)
                                .await
                                .expect("cas"),
                        )
                    })
                })
                .collect();
            let mut winners = Vec::new();
            for racer in racers {
                let (g, won) = racer.await.expect("racer");
                if won {
                    winners.push(g);
                }
            }
            assert_eq!(winners.len(), 1, "exactly one CAS wins: {winners:?}");
            let loaded = place.connect().await.load().await.expect("load");
            assert_eq!(loaded.map_epoch, map.map_epoch + 1);
            assert_eq!(
                loaded.slots,
                vec![winners[0]; SLOTS as usize],
                "the winner's map is stored"
            );
        }

        pub async fn concurrent_registrations_all_land(place: &Place) {
            const RACERS: u32 = 6;
            let catalog = place.connect().await;
            let map = catalog.bootstrap(2).await.expect("bootstrap");
            let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(RACERS as usize));
            let racers: Vec<_> = (0..RACERS)
                .map(|i| {
                    let target = place.target.clone();
                    let barrier = barrier.clone();
                    tokio::spawn(async move {
                        let catalog = target.connect().await;
                        barrier.wait().await;
                        let addr = format!("127.0.0.1:{}", 5000 + i);
                        catalog
                            .register_member(1, &addr, i)
                            .await
                            .expect("register")
                    })
                })
                .collect();
            for racer in racers {
                racer.await.expect("racer");
            }
            let loaded = catalog.load().await.expect("load");
            let group = &loaded.groups[&1];
            assert_eq!(
                group.version,
                map.groups[&1].version + u64::from(RACERS),
                "each one landed once"
            );
            assert_eq!(
                group.members.len(),
                RACERS as usize,
                "every one is a member"
            );
            assert_eq!(
                group.members.iter().filter(|m| m.in_sync).count(),
                1,
                "one primary, the rest learners"
            );
            assert_eq!(group.epoch, 1);
            for member in &group.members {
                assert!(
                    member.pid < RACERS
                        && member.addr == format!("127.0.0.1:{}", 5000 + member.pid)
                );
            }
            assert_eq!(loaded.groups[&2], map.groups[&2]);
        }

        pub async fn coordinators_register_and_list(place: &Place) {
            let catalog = place.connect().await;
            assert!(catalog.coordinators().await.expect("list").is_empty());
            catalog
                .register_coordinator("c2", "127.0.0.1:50052", "127.0.0.1:9102")
                .await
                .expect("c2");
            catalog
                .register_coordinator("c1", "127.0.0.1:50051", "")
                .await
                .expect("c1");
            catalog
                .heartbeat_coordinator("c1", "127.0.0.1:50061", "127.0.0.1:9101")
                .await
                .expect("c1 again");
            let list = catalog.coordinators().await.expect("list");
            let names: Vec<_> = list
                .iter()
                .map(|c| (c.id.as_str(), c.addr.as_str(), c.metrics_addr.as_str()))
                .collect();
            assert_eq!(
                names,
                [
                    ("c1", "127.0.0.1:50061", "127.0.0.1:9101"),
                    ("c2", "127.0.0.1:50052", "127.0.0.1:9102")
                ]
            );
            assert!(
                list.iter()
                    .all(|c| c.heartbeat_age_ms <= 5000 && c.uptime_ms.is_some_and(|u| u <= 5000)),
                "fresh heartbeats and starts: {list:?}"
            );

            tamper(
                &catalog,
                "UPDATE coordinators SET heartbeat_unix_ms = heartbeat_unix_ms - 90000, \
                 started_unix_ms = started_unix_ms - 90000 WHERE id = 'c2'",
                |db| {
                    let row = db.coordinators.get_mut("c2").expect("c2");
                    for at in [&mut row.heartbeat, &mut row.started] {
                        *at = at
                            .checked_sub(Duration::from_secs(90))
                            .expect("the clock has run for more than 90 s");
                    }
                },
            )
            .await;
            let list = catalog.coordinators().await.expect("list");
            assert!(
                (90_000..=95_000).contains(&list[1].heartbeat_age_ms),
                "age of a 90 s old heartbeat: {list:?}"
            );
            catalog
                .heartbeat_coordinator("c2", "127.0.0.1:50052", "127.0.0.1:9102")
                .await
                .expect("heartbeat");
            let c2 = catalog.coordinators().await.expect("list")[1].clone();
            assert!(c2.heartbeat_age_ms <= 5000, "heartbeat refreshed: {c2:?}");
            assert!(
                c2.uptime_ms.is_some_and(|u| u >= 90_000),
                "a heartbeat keeps the start: {c2:?}"
            );

            for (id, addr) in [("", "a:1"), ("c3", "")] {
                let err = catalog
                    .register_coordinator(id, addr, "")
                    .await
                    .expect_err("empty");
                assert!(matches!(err, CatalogError::Invalid(_)), "{err:?}");
            }
        }

        /// A restarted coordinator (a new id: ids carry the pid) replaces
        /// the rows of earlier runs on its address at start-up, and a
        /// heartbeat deletes rows silent for longer than the expiry, so
        /// restarts do not pile up dead coordinators in the status.
        pub async fn coordinators_replace_and_expire(place: &Place) {
            let catalog = place.connect().await;
            for id in ["a/1", "a/2"] {
                catalog
                    .register_coordinator(id, "127.0.0.1:50051", "")
                    .await
                    .expect("register");
            }
            catalog
                .register_coordinator("b/1", "127.0.0.1:50052", "")
                .await
                .expect("register b");
            let ids =
                |list: Vec<CoordinatorRow>| list.into_iter().map(|c| c.id).collect::<Vec<_>>();
            assert_eq!(
                ids(catalog.coordinators().await.expect("list")),
                ["a/2", "b/1"],
                "a/2 replaced a/1 on the same address"
            );
            // b/1 died long ago: 601 s, past the expiry.
            const SILENT: Duration = Duration::from_secs(601);
            assert!(
                SILENT > COORDINATOR_ROW_EXPIRY,
                "the SQL below ages it enough"
            );
            let sql = "UPDATE coordinators SET heartbeat_unix_ms = heartbeat_unix_ms - 601000 \
                       WHERE id = 'b/1'";
            tamper(&catalog, sql, |db| {
                let row = db.coordinators.get_mut("b/1").expect("b/1");
                row.heartbeat = row
                    .heartbeat
                    .checked_sub(SILENT)
                    .expect("the clock has run for longer than the expiry");
            })
            .await;
            assert_eq!(
                ids(catalog.coordinators().await.expect("list")),
                ["a/2", "b/1"],
                "listing deletes nothing"
            );
            catalog
                .heartbeat_coordinator("a/2", "127.0.0.1:50051", "")
                .await
                .expect("heartbeat");
            assert_eq!(
                ids(catalog.coordinators().await.expect("list")),
                ["a/2"],
                "the heartbeat expired b/1"
            );
        }

        /// Callers dropped midway (a cancelled RPC: a map refresh, a
        /// registration) leave no transaction open on a pooled connection:
        /// afterwards every call works, here and from another connection.
        /// Found by the nemesis (bank, seed 2): a refresh cancelled inside
        /// sqlx's `begin_with` left a BEGIN open, and the catalog refused
        /// every later transaction ("non-zero transaction depth", "database
        /// is locked"), so a restarted shard could never register again.
        pub async fn cancelled_calls_leave_no_transaction_open(place: &Place) {
            let catalog = place.connect().await;
            catalog.bootstrap(2).await.expect("bootstrap");
            for i in 0..300u32 {
                let cut = Duration::from_micros(u64::from(i % 30) * 20);
                let _ = tokio::time::timeout(cut, catalog.load()).await;
                let _ =
                    tokio::time::timeout(cut, catalog.register_member(1, "127.0.0.1:1", i)).await;
            }
            // Every pooled connection gets used again.
            for _ in 0..POOL_CONNECTIONS_MAX * 2 {
                tokio::time::timeout(Duration::from_secs(30), async {
                    catalog.load().await.expect("load after cancellations");
                    catalog
                        .register_member(2, "127.0.0.1:2", 1)
                        .await
                        .expect("register after cancellations");
                })
                .await
                .expect("no call hangs");
            }
            let other = place.connect().await;
            tokio::time::timeout(
                Duration::from_secs(30),
                other.register_member(1, "127.0.0.1:3", 2),
            )
            .await
            .expect("no call hangs")
            .expect("another connection writes");
        }

        pub async fn load_refuses_corrupt_rows(place: &Place) {
            let catalog = place.connect().await;
            catalog.bootstrap(3).await.expect("bootstrap");
            catalog
                .register_member(1, "127.0.0.1:1", 1)
                .await
                .expect("register");
            // A member after a gap in the ordinals.
            tamper(
                &catalog,
                "INSERT INTO members (group_id, ordinal, addr, pid) VALUES (1, 5, 'x:1', 1)",
                |db| {
                    db.members.insert((1, 5), ("x:1".into(), 1, 1));
                },
            )
            .await;
            let err = catalog.load().await.expect_err("gap");
            assert!(
                matches!(err, CatalogError::Corrupt(_)) && err.to_string().contains("position 5"),
                "{err}"
            );
            tamper(&catalog, "DELETE FROM members WHERE ordinal = 5", |db| {
                db.members.retain(|(_, ordinal), _| *ordinal != 5);
            })
            .await;
            catalog.load().await.expect("whole again");
            // A group the slot map still names.
            tamper(&catalog, "DELETE FROM shard_groups WHERE id = 3", |db| {
                db.groups.remove(&3);
            })
            .await;
            let err = catalog.load().await.expect_err("missing group");
            assert!(
                matches!(err, CatalogError::Corrupt(_)) && err.to_string().contains("group 3"),
                "{err}"
            );
        }
    }

    /// One test per case and backend, so each failure names both.
    macro_rules! backend_suite {
        ($backend:ident, $place:expr) => {
            mod $backend {
                use super::*;
                backend_suite!(@cases $backend, $place;
                    load_before_bootstrap_is_not_bootstrapped,
                    bootstrap_creates_groups_and_full_slot_map,
                    bootstrap_again_is_idempotent,
                    bootstrap_with_other_group_count_is_mismatch,
                    bootstrap_refuses_zero_or_too_many_groups,
                    register_member_shows_in_load,
                    cas_group_is_conditional_and_checked,
                    register_unknown_group_or_bad_address_fails,
                    cas_slot_map_bumps_epoch_and_stale_loses,
                    cas_slot_map_refuses_bad_maps,
                    concurrent_bootstraps_agree,
                    concurrent_cas_exactly_one_wins,
                    concurrent_registrations_all_land,
                    coordinators_register_and_list,
                    coordinators_replace_and_expire,
                    load_refuses_corrupt_rows,
                    cancelled_calls_leave_no_transaction_open,
                );
            }
        };
        (@cases $backend:ident, $place:expr; $($case:ident),* $(,)?) => {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(place) = $place.await else { return };
                    assert_eq!(place.connect().await.backend(), stringify!($backend));
                    cases::$case(&place).await;
                }
            )*
        };
    }

    backend_suite!(sqlite, Place::sqlite());
    backend_suite!(postgres, Place::postgres());
    backend_suite!(memory, Place::memory());

    #[tokio::test]
    async fn bad_urls_name_the_accepted_forms() {
        for url in [
            "",
            "catalog.db",
            "sqlite:catalog.db",
            "sqlite://",
            "sqlite://:memory:",
            "mysql://root@localhost/trellis",
            "postgres:/localhost/trellis",
            "memory:catalog",
            "memory://",
            "memory",
        ] {
            let err = Catalog::connect(url).await.expect_err(url);
            assert!(matches!(err, CatalogError::BadUrl { .. }), "{url}: {err:?}");
            let text = err.to_string();
            assert!(
                text.contains("sqlite://PATH")
                    && text.contains("postgres://")
                    && text.contains("memory:"),
                "{text}"
            );
            assert!(text.contains(&format!("`{url}`")), "names the URL: {text}");
        }
    }

    /// Every in-memory catalog starts empty and stands alone, like a new
    /// database; its clones share it, like a pool's.
    #[tokio::test]
    async fn memory_catalogs_are_independent_and_clones_share() {
        let first = Catalog::in_memory();
        let map = first.bootstrap(2).await.expect("bootstrap");
        let clone = first.clone();
        assert_eq!(clone.load().await.expect("a clone sees it"), map);
        clone
            .register_member(1, "127.0.0.1:1", 1)
            .await
            .expect("register");
        assert_eq!(
            first.load().await.expect("load").groups[&1].members.len(),
            1,
            "and its changes are seen through the original"
        );
        for other in [
            Catalog::in_memory(),
            Catalog::connect(MEMORY_URL).await.expect("memory:"),
        ] {
            assert_eq!(other.backend(), "memory");
            assert_eq!(format!("{other:?}"), "Catalog(memory)");
            assert!(
                matches!(other.load().await, Err(CatalogError::NotBootstrapped)),
                "a new one is empty"
            );
        }
    }

    /// Under the simulator time is tokio's, paused and advanced by the
    /// simulation: an in-memory heartbeat ages by that clock, not the
    /// wall's.
    #[tokio::test(start_paused = true)]
    async fn memory_heartbeats_age_in_tokio_time() {
        const AGE: Duration = Duration::from_secs(90);
        let catalog = Catalog::in_memory();
        catalog
            .register_coordinator("c1", "127.0.0.1:50051", "")
            .await
            .expect("register");
        assert_eq!(
            catalog.coordinators().await.expect("list")[0].heartbeat_age_ms,
            0
        );
        tokio::time::advance(AGE).await;
        assert_eq!(
            catalog.coordinators().await.expect("list")[0].heartbeat_age_ms,
            AGE.as_millis() as u64
        );
        catalog
            .heartbeat_coordinator("c1", "127.0.0.1:50061", "127.0.0.1:9100")
            .await
            .expect("heartbeat");
        assert_eq!(
            catalog.coordinators().await.expect("list"),
            [CoordinatorRow {
                id: "c1".to_string(),
                addr: "127.0.0.1:50061".to_string(),
                metrics_addr: "127.0.0.1:9100".to_string(),
                heartbeat_age_ms: 0,
                uptime_ms: Some(AGE.as_millis() as u64),
            }]
        );
    }

    #[tokio::test]
    async fn sqlite_creates_file_and_directory_in_wal_mode() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("a/b/catalog.db");
        let catalog = Catalog::connect(&format!("sqlite://{}", path.display()))
            .await
            .expect("connect");
        assert!(path.is_file(), "the file was created");
        let Pool::Sqlite(pool) = &catalog.pool else {
            panic!("not SQLite: {catalog:?}")
        };
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(pool)
            .await
            .expect("mode");
        assert_eq!(mode, "wal");
        let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(pool)
            .await
            .expect("busy");
        assert_eq!(busy, SQLITE_BUSY_TIMEOUT.as_millis() as i64);
        // Migrations applied once survive a reconnect (checksums match).
        catalog.bootstrap(1).await.expect("bootstrap");
        drop(catalog);
        let again = Catalog::connect(&format!("sqlite://{}", path.display()))
            .await
            .expect("reopen");
        assert_eq!(again.load().await.expect("load").groups.len(), 1);
    }

    #[test]
    fn slot_map_round_trips_and_bad_bytes_are_corrupt() {
        let slots = assign_slots(&[1, 2, 3, 1000]);
        let bytes = encode_slots(&slots).expect("encode");
        assert_eq!(bytes.len(), SLOT_MAP_BYTES);
        assert_eq!(decode_slots(&bytes).expect("decode"), slots);
        for len in [
            0,
            SLOT_MAP_BYTES - 4,
            SLOT_MAP_BYTES + 4,
            SLOT_MAP_BYTES - 1,
        ] {
            let err = decode_slots(&vec![0; len]).expect_err("wrong length");
            assert!(matches!(err, CatalogError::Corrupt(_)), "{len}: {err:?}");
        }
    }

    #[test]
    fn build_map_refuses_broken_invariants() {
        let slots = encode_slots(&assign_slots(&[1, 2])).expect("encode");
        let groups = || vec![(1, 1, 0), (2, 1, 0)];
        build_map(1, &slots, groups(), vec![]).expect("a whole map");
        let cases: Vec<(&str, Result<ClusterMap, CatalogError>)> = vec![
            ("epoch 0", build_map(0, &slots, groups(), vec![])),
            ("negative epoch", build_map(-1, &slots, groups(), vec![])),
            ("no groups", build_map(1, &slots, vec![], vec![])),
            (
                "missing group",
                build_map(1, &slots, vec![(1, 1, 0)], vec![]),
            ),
            (
                "negative version",
                build_map(1, &slots, vec![(1, -1, 0), (2, 1, 0)], vec![]),
            ),
            (
                "member of unknown group",
                build_map(1, &slots, groups(), vec![(7, 0, "a:1".into(), 1, 1)]),
            ),
            (
                "pid beyond u32",
                build_map(1, &slots, groups(), vec![(1, 0, "a:1".into(), 1 << 40, 1)]),
            ),
            (
                "gap in ordinals",
                build_map(1, &slots, groups(), vec![(1, 1, "a:1".into(), 1, 1)]),
            ),
        ];
        for (what, result) in cases {
            assert!(
                matches!(result, Err(CatalogError::Corrupt(_))),
                "{what}: {result:?}"
            );
        }
    }
}
