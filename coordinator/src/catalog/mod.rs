//! The catalog: cluster metadata in SQL through sqlx, or in process memory.
//! It owns the shard groups and their members, the slot map and its epoch,
//! the list of coordinators with their heartbeats, the reshard jobs' state,
//! the change feeds' cursors (opaque bytes by feed name, last writer
//! wins), the cluster's identity (a random id drawn once), and its users,
//! their grants and the auth switch with the token secret. SQLite (a file,
//! `sqlite://PATH`) serves one coordinator; PostgreSQL (`postgres://...`)
//! serves several that share it; memory (`memory:`, [`Catalog::in_memory`])
//! serves the coordinators of one process, and exists for the deterministic
//! simulator, which runs the whole cluster on one thread in simulated time
//! where sqlx's driver threads cannot run.
//!
//! Every change is a conditional update on a version column (a group's
//! `version`, the cluster's `map_epoch`): a writer states the version it
//! read, and the update matches no row if anyone changed it since. Two
//! coordinators can therefore never both win. Groups are created with the
//! cluster (`bootstrap`) and may later be added empty (`add_group`: an
//! insert that only takes effect for a free id) or removed while they own
//! no slot (`remove_group`: conditional on the group's version and on the
//! map epoch whose slot map it checked); neither moves a slot, so neither
//! changes `map_epoch`. Schema changes are sqlx
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
//!
//! # Layout
//! - `mod.rs`: [`Catalog`] and its operations (validation, the
//!   compare-and-swap SQL, `with_pool!`), [`CatalogError`], the limits.
//! - `connect`: the URL, the SQLite and PostgreSQL pools, migrations.
//! - `dialect`: the SQL text that differs between SQLite and PostgreSQL.
//! - `memory`: the in-memory backend's tables and storage steps.
//! - `auth`: users, grants, the auth switch.
//! - `codec`: pure conversions between rows and the map: the slot-map
//!   encoding, `BIGINT` conversions, text checks, `build_map`.
//! - `tests`: the suite every backend runs.

mod codec;
mod connect;
mod dialect;
mod memory;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::migrate::MigrateError;
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;
use trellis_types::placement::assign_slots;
use trellis_types::{ClusterId, GroupId};

use self::codec::{
    ClusterRow, CoordinatorListed, FeedListed, GroupRow, JobListed, MemberRow, build_map,
    check_groups_exist, check_text, encode_slots, to_i64, to_u64,
};
use self::memory::MemoryDb;
use crate::map::{ClusterMap, Member};

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

/// Largest encoded state of one reshard job, in bytes (the tables' CHECK
/// says the same).
pub const JOB_STATE_BYTES_MAX: usize = 64 * 1024;
/// Most reshard jobs the catalog keeps. No job is deleted yet (finished
/// ones stay for the status); past this, `create_job` refuses.
pub const JOBS_MAX: u64 = 1024;

/// Longest feed name, in characters (all ASCII: see [`check_feed_name`]);
/// the tables' CHECK says the same.
pub const FEED_NAME_CHARS_MAX: usize = 128;
/// Largest encoded feed cursor, in bytes (the tables' CHECK says the
/// same). A `trellis.v1.FeedCursor` holds one (group, position) pair per
/// group, at most 24 bytes each encoded, so every cluster's fits.
pub const FEED_CURSOR_BYTES_MAX: usize = 64 * 1024;
const _: () = assert!(GROUPS_MAX as usize * 24 <= FEED_CURSOR_BYTES_MAX);
/// Most feeds whose cursors the catalog keeps; past this, saving a new
/// feed's cursor is refused (saving an existing one is not) until one is
/// deleted. Bounds `trellis status`'s list of feeds.
pub const FEEDS_MAX: u64 = 1024;

/// The URL of an in-memory catalog (nothing may follow it).
pub const MEMORY_URL: &str = "memory:";

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
    #[error(
        "group {group} does not exist: this cluster has {}",
        groups_text(*count, *first, *last)
    )]
    UnknownGroup {
        group: GroupId,
        /// How many groups exist, the lowest id and the highest.
        count: u64,
        first: GroupId,
        last: GroupId,
    },
    /// `add_group` of a group that is already registered.
    #[error("group {group} already exists: `trellis status` lists the groups")]
    GroupExists { group: GroupId },
    /// `remove_group` of a group the slot map still gives slots to.
    #[error(
        "group {group} still owns {slots} slots: drain it first with \
         `trellis admin drain-group --group {group} --wait`"
    )]
    GroupOwnsSlots { group: GroupId, slots: u32 },
    /// An argument the catalog refuses (out of range, wrong length).
    #[error("{0}")]
    Invalid(String),
    #[error(
        "lost the compare-and-swap to other writers {REGISTER_ATTEMPTS_MAX} times in a row; retry"
    )]
    Conflict,
    /// `save_job` of a job that does not exist.
    #[error("reshard job {id} does not exist")]
    UnknownJob { id: u64 },
    /// A change to users, grants or the auth switch that would leave auth
    /// on with no admin, refused inside the transaction that would have
    /// made it.
    #[error(transparent)]
    LockOut(#[from] crate::auth::LockOut),
    /// A stored row breaks an invariant. Never repaired silently.
    #[error("the catalog holds invalid data: {0}")]
    Corrupt(String),
}

/// The groups that exist, for a message: `groups 1 to 3`, or with gaps
/// left by removed groups `3 groups from 1 to 5 (not every id between)`.
fn groups_text(count: u64, first: GroupId, last: GroupId) -> String {
    if count == 1 {
        format!("only group {first}")
    } else if last.checked_sub(first).and_then(|d| d.checked_add(1)) == Some(count) {
        format!("groups {first} to {last}")
    } else {
        format!("{count} groups from {first} to {last} (not every id between)")
    }
}

/// A random cluster id for a new in-memory catalog (63 bits, never 0, as
/// the SQL migration draws one).
fn draw_cluster_id() -> ClusterId {
    let id = (1..).find_map(|_| ClusterId::new(trellis_types::rng::u64() >> 1));
    id.expect("an endless range ends only with an id")
}

/// Wraps an sqlx error with what we were doing.
fn db(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> CatalogError {
    move |source| CatalogError::Database {
        context: context.into(),
        source,
    }
}

/// The backend a [`Catalog`] talks to. Cheap to clone: every clone shares
/// the same pool (or in-memory tables).
#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
    /// Shared by clones, like a pool: every clone sees the same catalog.
    Memory(Arc<Mutex<MemoryDb>>),
}

impl Pool {
    /// A new, empty in-memory catalog of cluster `cluster`.
    fn memory(cluster: ClusterId) -> Pool {
        Pool::Memory(Arc::new(Mutex::new(MemoryDb::new(cluster))))
    }
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

/// A reshard job as the catalog stores it: the caller's encoding of its
/// state, opaque here, and the version to state when saving it next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRow {
    pub id: u64,
    /// Bumped by every save (compare-and-swap); 1 when created.
    pub version: u64,
    /// The state as the caller encoded it.
    pub state: Vec<u8>,
    /// Milliseconds since it was created and since it was last saved (the
    /// database's clock; in memory, tokio's).
    pub created_age_ms: u64,
    pub updated_age_ms: u64,
}

/// A feed's cursor as the catalog stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedCursorRow {
    pub feed: String,
    /// The cursor as the caller encoded it.
    pub cursor: Vec<u8>,
    /// Milliseconds since it was last saved (the database's clock; in
    /// memory, tokio's).
    pub updated_age_ms: u64,
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
/// concrete pool (and `$d`, if named, to its
/// [`Dialect`](dialect::Dialect)), or `$memory` with `$m` bound to the
/// locked [`MemoryDb`]. The SQL body is written once and
/// type-checked against each driver, which keeps the two from drifting
/// apart without sqlx's `Any` driver (which would lose `BYTEA`/`BLOB`
/// typing). The memory body holds a std lock, so it must not `.await`
/// (clippy's `await_holding_lock` refuses it, and the future would not be
/// `Send`). Used in functions returning `Result<_, CatalogError>`: a
/// poisoned lock is returned as an error. It names what it uses by
/// `$crate::catalog::` paths, so it expands alike here and in `tests`.
macro_rules! with_pool {
    ($catalog:expr, $p:ident $(, $d:ident)? => $sql:expr, $m:ident => $memory:expr) => {
        match &$catalog.pool {
            $crate::catalog::Pool::Sqlite($p) => {
                $(let $d: &'static $crate::catalog::dialect::Dialect = &$crate::catalog::dialect::SQLITE;)?
                $sql
            }
            $crate::catalog::Pool::Postgres($p) => {
                $(let $d: &'static $crate::catalog::dialect::Dialect = &$crate::catalog::dialect::POSTGRES;)?
                $sql
            }
            $crate::catalog::Pool::Memory(memory) => {
                let mut guard = $crate::catalog::memory::lock_memory(memory)?;
                let $m: &mut $crate::catalog::memory::MemoryDb = &mut guard;
                $memory
            }
        }
    };
}

// After `with_pool!`, which it uses.
mod auth;
pub use self::auth::{AuthSettings, PASSWORD_HASH_BYTES_MAX, USERS_MAX, UserRow};

impl Catalog {
    /// Connects and runs the migrations. Accepts `sqlite://PATH` (relative
    /// or absolute; the file and its directory are created if missing),
    /// `postgres://...` / `postgresql://...`, and `memory:`, which returns a
    /// new, empty [`Catalog::in_memory`] on every call.
    pub async fn connect(url: &str) -> Result<Catalog, CatalogError> {
        Ok(Catalog {
            pool: connect::open(url).await?,
        })
    }

    /// A new, empty catalog in process memory, independent of every other;
    /// its clones share it. Needs no database and no thread of its own: the
    /// backend of the deterministic simulator. Lost when the last clone is
    /// dropped. Its cluster id is drawn like the SQL migration draws one
    /// (from `trellis_types::rng`: on a seeded thread, from the seed).
    pub fn in_memory() -> Catalog {
        Catalog::in_memory_of(draw_cluster_id())
    }

    /// [`Catalog::in_memory`] of a given cluster id (the simulator names
    /// its cluster without drawing from the run's randomness).
    pub fn in_memory_of(cluster: ClusterId) -> Catalog {
        Catalog {
            pool: Pool::memory(cluster),
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
                "INSERT INTO cluster (id, map_epoch, slot_map, groups_created) \
                 VALUES (1, 1, $1, $2) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&slot_map)
            .bind(i64::from(groups))
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
        // Compared with the count the cluster was created with, not the
        // count it has: groups added or removed since then do not make a
        // restart with the same `--groups` a mismatch.
        let created_with = self.groups_created_now().await?;
        if created_with != u64::from(groups) {
            let now = if created_with == map.groups.len() as u64 {
                String::new()
            } else {
                format!(" (it has {} now)", map.groups.len())
            };
            return Err(CatalogError::Mismatch(format!(
                "the catalog already holds a cluster created with {created_with} groups{now}, \
                 not {groups}: --groups only creates a cluster; change the groups of a running \
                 one with `trellis admin add-group` / `remove-group`, and move slots between \
                 them (resharding) with `trellis admin rebalance` / `drain-group`"
            )));
        }
        Ok(map)
    }

    /// How many groups the cluster was created with (`groups_created`).
    async fn groups_created_now(&self) -> Result<u64, CatalogError> {
        let created: Option<i64> = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT groups_created FROM cluster WHERE id = 1")
                .fetch_optional(pool)
                .await
                .map_err(db("reading how many groups the cluster was created with"))?
        }, memory => memory.cluster.as_ref().map(|_| memory.groups_created));
        to_u64(
            created.ok_or(CatalogError::NotBootstrapped)?,
            "the number of groups the cluster was created with",
        )
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

    /// Registers `group` as a new, empty group: no members and no slots
    /// (a group receives slots only when they move to it), version 1,
    /// epoch 0. Its replicas can then register as for any group. Returns
    /// the map as it stands afterwards. Refuses a group id outside 1 to
    /// [`GROUPS_MAX`], a group that exists ([`CatalogError::GroupExists`]),
    /// and a catalog without a cluster.
    ///
    /// Conditional like every change: the insert takes effect only if no
    /// row has the id, so of two coordinators adding the same group one
    /// wins and the other is told it exists. The map epoch does not change
    /// (no slot changes owner; shards follow the epoch only at
    /// registration, so a bump would make them refuse every request as
    /// stale); other coordinators see the group on their next map read.
    pub async fn add_group(&self, group: GroupId) -> Result<ClusterMap, CatalogError> {
        let this = self.clone();
        to_completion(async move { this.add_group_now(group).await }).await
    }

    async fn add_group_now(&self, group: GroupId) -> Result<ClusterMap, CatalogError> {
        if group == 0 || group > GroupId::from(GROUPS_MAX) {
            return Err(CatalogError::Invalid(format!(
                "refusing to add group {group}: group ids run from 1 to {GROUPS_MAX}"
            )));
        }
        let id = to_i64(group, "group id")?;
        let added = with_pool!(self, pool, dialect => {
            let mut tx = pool
                .begin_with(dialect.begin_write)
                .await
                .map_err(db(format!("starting to add group {group}")))?;
            // The cluster row is never deleted, so once read it exists
            // when the insert commits.
            let cluster: Option<i64> = sqlx::query_scalar("SELECT id FROM cluster WHERE id = 1")
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("reading the cluster row"))?;
            if cluster.is_none() {
                return Err(CatalogError::NotBootstrapped);
            }
            let added = sqlx::query(
                "INSERT INTO shard_groups (id, version) VALUES ($1, 1) ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db(format!("adding group {group}")))?
            .rows_affected()
                == 1;
            tx.commit().await.map_err(db(format!("committing group {group}")))?;
            added
        }, memory => memory.add_group(id)?);
        if !added {
            return Err(CatalogError::GroupExists { group });
        }
        tracing::info!(group, "added an empty shard group to the catalog");
        self.load_now().await
    }

    /// Forgets `group` and its members. Returns the map as it stands
    /// afterwards. Refuses a group that does not exist and one that still
    /// owns slots ([`CatalogError::GroupOwnsSlots`]): its slots must move
    /// away first, so every slot always has a group.
    ///
    /// Conditional twice over, and retried up to
    /// [`REGISTER_ATTEMPTS_MAX`] times: the group's row must still be at
    /// the version read (a registration or configuration change in between
    /// makes it retry), and the map epoch must still be the one whose slot
    /// map showed the group owning nothing. The latter is taken as a write
    /// on the cluster row (to the same epoch), which `cas_slot_map` also
    /// writes before it checks the groups, so a new slot map can never
    /// hand slots to a group being removed.
    pub async fn remove_group(&self, group: GroupId) -> Result<ClusterMap, CatalogError> {
        let this = self.clone();
        to_completion(async move { this.remove_group_now(group).await }).await
    }

    async fn remove_group_now(&self, group: GroupId) -> Result<ClusterMap, CatalogError> {
        let Ok(id) = i64::try_from(group) else {
            return Err(self.unknown_group(group).await);
        };
        for _ in 0..REGISTER_ATTEMPTS_MAX {
            let map = self.load_now().await?;
            let Some(current) = map.groups.get(&group) else {
                return Err(self.unknown_group(group).await);
            };
            let slots = map.slots_of(group).len();
            if slots > 0 {
                return Err(CatalogError::GroupOwnsSlots { group, slots });
            }
            let version = to_i64(current.version, "group version")?;
            let map_epoch = to_i64(map.map_epoch, "map epoch")?;
            let won = with_pool!(self, pool, dialect => {
                let mut tx = pool
                    .begin_with(dialect.begin_write)
                    .await
                    .map_err(db(format!("starting to remove group {group}")))?;
                let same_map = sqlx::query(
                    "UPDATE cluster SET map_epoch = map_epoch WHERE id = 1 AND map_epoch = $1",
                )
                .bind(map_epoch)
                .execute(&mut *tx)
                .await
                .map_err(db("holding the slot map"))?
                .rows_affected()
                    == 1;
                let same_group = same_map
                    && sqlx::query(
                        "UPDATE shard_groups SET version = version + 1 \
                         WHERE id = $1 AND version = $2",
                    )
                    .bind(id)
                    .bind(version)
                    .execute(&mut *tx)
                    .await
                    .map_err(db(format!("holding group {group}")))?
                    .rows_affected()
                        == 1;
                if same_group {
                    sqlx::query("DELETE FROM members WHERE group_id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .map_err(db(format!("removing the members of group {group}")))?;
                    sqlx::query("DELETE FROM shard_groups WHERE id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .map_err(db(format!("removing group {group}")))?;
                    tx.commit()
                        .await
                        .map_err(db(format!("committing the removal of group {group}")))?;
                } else {
                    tx.rollback()
                        .await
                        .map_err(db("rolling back a lost group removal"))?;
                }
                same_group
            }, memory => memory.remove_group(id, version, map_epoch));
            if won {
                tracing::info!(group, "removed a shard group from the catalog");
                return self.load_now().await;
            }
        }
        Err(CatalogError::Conflict)
    }

    /// The error for a group that does not exist: names the valid range, or
    /// says there is no cluster at all.
    async fn unknown_group(&self, group: GroupId) -> CatalogError {
        match self.group_range().await {
            Ok((Some(first), Some(last), count)) => match (
                to_u64(first, "a group id"),
                to_u64(last, "a group id"),
                to_u64(count, "the number of groups"),
            ) {
                (Ok(first), Ok(last), Ok(count)) => CatalogError::UnknownGroup {
                    group,
                    count,
                    first,
                    last,
                },
                (Err(err), _, _) | (_, Err(err), _) | (_, _, Err(err)) => err,
            },
            Ok(_) => CatalogError::NotBootstrapped,
            Err(err) => err,
        }
    }

    /// The lowest and highest group id, if any group exists, and how many
    /// exist.
    async fn group_range(&self) -> Result<(Option<i64>, Option<i64>, i64), CatalogError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as("SELECT MIN(id), MAX(id), COUNT(*) FROM shard_groups")
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
            // Checked inside the transaction that writes the map, and after
            // the update, which holds the cluster row: `remove_group` takes
            // that row too, so the groups read here are the groups that
            // exist when the map lands (PostgreSQL reads each statement
            // afresh). A refused map rolls back when `tx` is dropped.
            let existing: Vec<i64> = sqlx::query_scalar("SELECT id FROM shard_groups")
                .fetch_all(&mut *tx)
                .await
                .map_err(db("reading the shard groups"))?;
            check_groups_exist(&named, existing)?;
            tx.commit().await.map_err(db("committing the slot map change"))?;
            won
        }, memory => memory.cas_slot_map(&named, expected, next, &slot_map)?);
        if won {
            tracing::info!(map_epoch = next, "stored a new slot map");
        }
        Ok(won)
    }

    /// Stores a new reshard job with the caller's encoded `state` at
    /// version 1; returns its id (one more than the highest so far).
    /// Conditional: the insert takes effect only for a free id, so racing
    /// creators get distinct ids (a loser retries, up to
    /// [`REGISTER_ATTEMPTS_MAX`] times). Refuses a state over
    /// [`JOB_STATE_BYTES_MAX`] and a catalog already holding [`JOBS_MAX`]
    /// jobs.
    pub async fn create_job(&self, state: &[u8]) -> Result<u64, CatalogError> {
        let this = self.clone();
        let state = state.to_vec();
        to_completion(async move { this.create_job_now(&state).await }).await
    }

    async fn create_job_now(&self, state: &[u8]) -> Result<u64, CatalogError> {
        check_job_state(state)?;
        for _ in 0..REGISTER_ATTEMPTS_MAX {
            let (count, highest): (i64, Option<i64>) = with_pool!(self, pool => {
                sqlx::query_as("SELECT COUNT(*), MAX(id) FROM reshard_jobs")
                    .fetch_one(pool)
                    .await
                    .map_err(db("counting the reshard jobs"))?
            }, memory => memory.job_range());
            if to_u64(count, "the number of reshard jobs")? >= JOBS_MAX {
                return Err(CatalogError::Invalid(format!(
                    "refusing a new reshard job: the catalog holds {JOBS_MAX}, the most it keeps"
                )));
            }
            let id = highest.unwrap_or(0).checked_add(1).ok_or_else(|| {
                CatalogError::Corrupt("the highest reshard job id cannot grow further".into())
            })?;
            let created = with_pool!(self, pool, dialect => {
                sqlx::query(dialect.insert_job)
                    .bind(id)
                    .bind(state)
                    .execute(pool)
                    .await
                    .map_err(db(format!("creating reshard job {id}")))?
                    .rows_affected()
                    == 1
            }, memory => memory.insert_job(id, state));
            if created {
                return to_u64(id, "a reshard job id");
            }
        }
        Err(CatalogError::Conflict)
    }

    /// Replaces job `id`'s state if its version is still
    /// `expected_version`, and bumps the version. `Ok(false)` if another
    /// writer saved it first (nothing is written);
    /// [`CatalogError::UnknownJob`] if there is no such job.
    pub async fn save_job(
        &self,
        id: u64,
        expected_version: u64,
        state: &[u8],
    ) -> Result<bool, CatalogError> {
        let this = self.clone();
        let state = state.to_vec();
        to_completion(async move { this.save_job_now(id, expected_version, &state).await }).await
    }

    async fn save_job_now(
        &self,
        id: u64,
        expected_version: u64,
        state: &[u8],
    ) -> Result<bool, CatalogError> {
        check_job_state(state)?;
        let Ok(id_value) = i64::try_from(id) else {
            return Err(CatalogError::UnknownJob { id });
        };
        // No stored version exceeds i64::MAX, so a larger one is merely stale.
        let Ok(version) = i64::try_from(expected_version) else {
            return match self.jobs().await?.iter().any(|j| j.id == id) {
                true => Ok(false),
                false => Err(CatalogError::UnknownJob { id }),
            };
        };
        let won = with_pool!(self, pool, dialect => {
            sqlx::query(dialect.save_job)
                .bind(id_value)
                .bind(version)
                .bind(state)
                .execute(pool)
                .await
                .map_err(db(format!("saving reshard job {id}")))?
                .rows_affected()
                == 1
        }, memory => memory.save_job(id_value, version, state)?);
        if !won && !self.jobs().await?.iter().any(|j| j.id == id) {
            return Err(CatalogError::UnknownJob { id });
        }
        Ok(won)
    }

    /// Every reshard job, by id.
    pub async fn jobs(&self) -> Result<Vec<JobRow>, CatalogError> {
        let rows: Vec<JobListed> = with_pool!(self, pool, dialect => {
            sqlx::query_as(dialect.list_jobs)
                .fetch_all(pool)
                .await
                .map_err(db("listing the reshard jobs"))?
        }, memory => memory.list_jobs());
        rows.into_iter()
            .map(|(id, version, state, created_ms, updated_ms)| {
                let id = to_u64(id, "a reshard job id")?;
                Ok(JobRow {
                    id,
                    version: to_u64(version, &format!("the version of reshard job {id}"))?,
                    state,
                    // An age "in the future" means the database clock
                    // stepped back; it is as fresh as can be.
                    created_age_ms: u64::try_from(created_ms).unwrap_or(0),
                    updated_age_ms: u64::try_from(updated_ms).unwrap_or(0),
                })
            })
            .collect()
    }

    /// Stores `cursor` as feed `feed`'s, replacing the one saved before
    /// (last writer wins: two `trellis cdc` of one feed name would take
    /// turns). Refuses a bad name ([`check_feed_name`]), a cursor over
    /// [`FEED_CURSOR_BYTES_MAX`], and a new feed while the catalog holds
    /// [`FEEDS_MAX`]. One statement, no transaction: nothing is left open
    /// if the caller is dropped midway.
    pub async fn save_feed_cursor(&self, feed: &str, cursor: &[u8]) -> Result<(), CatalogError> {
        check_feed_name(feed).map_err(CatalogError::Invalid)?;
        if cursor.len() > FEED_CURSOR_BYTES_MAX {
            return Err(CatalogError::Invalid(format!(
                "refusing a cursor of {} bytes for feed {feed}: at most {FEED_CURSOR_BYTES_MAX}",
                cursor.len()
            )));
        }
        let feeds_max = to_i64(FEEDS_MAX, "the most feeds kept")?;
        let saved = with_pool!(self, pool, dialect => {
            sqlx::query(dialect.save_feed_cursor)
                .bind(feed)
                .bind(cursor)
                .bind(feeds_max)
                .execute(pool)
                .await
                .map_err(db(format!("saving the cursor of feed {feed}")))?
                .rows_affected()
                == 1
        }, memory => memory.save_feed_cursor(feed, cursor, FEEDS_MAX));
        if !saved {
            return Err(CatalogError::Invalid(format!(
                "refusing a new feed {feed}: the catalog holds the cursors of {FEEDS_MAX} feeds, \
                 the most it keeps; delete one that is no longer used"
            )));
        }
        Ok(())
    }

    /// Feed `feed`'s saved cursor; `None` if none was saved under that
    /// name. Refuses a bad name ([`check_feed_name`]).
    pub async fn load_feed_cursor(&self, feed: &str) -> Result<Option<Vec<u8>>, CatalogError> {
        check_feed_name(feed).map_err(CatalogError::Invalid)?;
        let cursor: Option<Vec<u8>> = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT cursor FROM feed_cursors WHERE feed = $1")
                .bind(feed)
                .fetch_optional(pool)
                .await
                .map_err(db(format!("loading the cursor of feed {feed}")))?
        }, memory => memory.feed_cursors.get(feed).map(|(cursor, _)| cursor.clone()));
        if let Some(cursor) = &cursor
            && cursor.len() > FEED_CURSOR_BYTES_MAX
        {
            return Err(CatalogError::Corrupt(format!(
                "the cursor of feed {feed} is {} bytes, more than {FEED_CURSOR_BYTES_MAX}",
                cursor.len()
            )));
        }
        Ok(cursor)
    }

    /// Forgets feed `feed`'s cursor; whether there was one. Refuses a bad
    /// name ([`check_feed_name`]).
    pub async fn delete_feed_cursor(&self, feed: &str) -> Result<bool, CatalogError> {
        check_feed_name(feed).map_err(CatalogError::Invalid)?;
        let deleted = with_pool!(self, pool => {
            sqlx::query("DELETE FROM feed_cursors WHERE feed = $1")
                .bind(feed)
                .execute(pool)
                .await
                .map_err(db(format!("deleting the cursor of feed {feed}")))?
                .rows_affected()
                == 1
        }, memory => memory.feed_cursors.remove(feed).is_some());
        if deleted {
            tracing::info!(feed, "deleted a feed's cursor from the catalog");
        }
        Ok(deleted)
    }

    /// The cluster's identity, drawn once when the catalog was created
    /// (migration 0006 for SQL; [`Catalog::in_memory`]) and never changed.
    /// Exists before the cluster is bootstrapped.
    pub async fn cluster_id(&self) -> Result<ClusterId, CatalogError> {
        let id: Option<i64> = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT id FROM cluster_identity WHERE one = 1")
                .fetch_optional(pool)
                .await
                .map_err(db("reading the cluster id"))?
        }, memory => Some(memory.cluster_id));
        let id = id.ok_or_else(|| {
            CatalogError::Corrupt("the cluster_identity table holds no row".to_string())
        })?;
        let id = to_u64(id, "the cluster id")?;
        ClusterId::new(id)
            .ok_or_else(|| CatalogError::Corrupt(format!("the cluster id {id} is out of range")))
    }

    /// Every feed's cursor, by name (at most [`FEEDS_MAX`]).
    pub async fn feed_cursors(&self) -> Result<Vec<FeedCursorRow>, CatalogError> {
        let rows: Vec<FeedListed> = with_pool!(self, pool, dialect => {
            sqlx::query_as(dialect.list_feed_cursors)
                .fetch_all(pool)
                .await
                .map_err(db("listing the feed cursors"))?
        }, memory => memory.list_feed_cursors());
        Ok(rows
            .into_iter()
            .map(|(feed, cursor, updated_ms)| FeedCursorRow {
                feed,
                cursor,
                // An age "in the future" means the database clock stepped
                // back; it is as fresh as can be.
                updated_age_ms: u64::try_from(updated_ms).unwrap_or(0),
            })
            .collect())
    }
}

/// Checks a feed name: 1 to [`FEED_NAME_CHARS_MAX`] characters of
/// `[A-Za-z0-9._-]`, so that it is safe in a log line, a metric label and
/// a command line alike. The error says what is wrong and what is allowed.
pub fn check_feed_name(feed: &str) -> Result<(), String> {
    const ALLOWED: &str = "1 to 128 characters of A-Z, a-z, 0-9, '.', '_' and '-'";
    const _: () = assert!(FEED_NAME_CHARS_MAX == 128, "ALLOWED names the limit");
    if feed.is_empty() {
        return Err(format!("the feed name is empty: use {ALLOWED}"));
    }
    if let Some(bad) = feed
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "the feed name {feed:?} has the character {bad:?}: use {ALLOWED}"
        ));
    }
    // All ASCII now, so bytes are characters.
    if feed.len() > FEED_NAME_CHARS_MAX {
        return Err(format!(
            "the feed name is {} characters long: use {ALLOWED}",
            feed.len()
        ));
    }
    Ok(())
}

/// Refuses a job state larger than [`JOB_STATE_BYTES_MAX`].
fn check_job_state(state: &[u8]) -> Result<(), CatalogError> {
    if state.len() > JOB_STATE_BYTES_MAX {
        return Err(CatalogError::Invalid(format!(
            "refusing a reshard job state of {} bytes: at most {JOB_STATE_BYTES_MAX}",
            state.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
