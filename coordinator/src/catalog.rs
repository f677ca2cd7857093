//! The catalog: cluster metadata in SQL through sqlx — shard groups, their
//! members, the slot map and its epoch, coordinators. SQLite (a file,
//! `sqlite://PATH`) for one coordinator; PostgreSQL (`postgres://...`) when
//! several share it.
//!
//! Every change is a conditional update on a version column (or the map
//! epoch), so two coordinators can never both win. Schema changes are sqlx
//! migrations (`coordinator/catalog-migrations/<backend>/`), run on connect.
//!
//! The catalog never talks to shards and holds no transaction state.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use trellis_types::{GroupId, SLOTS};

use crate::map::{ClusterMap, Group, Member, assign_slots};

/// Connections per coordinator to the catalog database.
pub const POOL_CONNECTIONS_MAX: u32 = 4;
/// How long to wait for a pooled connection.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long SQLite waits on a locked database file before failing.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts of a read-modify-CAS cycle that loses to concurrent writers.
pub const REGISTER_ATTEMPTS_MAX: u32 = 16;
/// Most shard groups a cluster may have.
pub const GROUPS_MAX: u32 = 1024;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./catalog-migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator =
    sqlx::migrate!("./catalog-migrations/postgres");

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(
        "catalog URL `{0}` is not supported: use sqlite://PATH or postgres://USER@HOST:PORT/DB"
    )]
    BadUrl(String),
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
        source: sqlx::migrate::MigrateError,
    },
    #[error("the catalog holds no cluster yet: start a coordinator with --groups N to create one")]
    NotBootstrapped,
    #[error("{0}")]
    Mismatch(String),
    #[error("lost a compare-and-swap to another coordinator {REGISTER_ATTEMPTS_MAX} times; retry")]
    Conflict,
    #[error("catalog holds invalid data: {0}")]
    Corrupt(String),
}

fn db(context: &str) -> impl FnOnce(sqlx::Error) -> CatalogError + '_ {
    move |source| CatalogError::Database {
        context: context.to_string(),
        source,
    }
}

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A connection pool to the catalog database.
#[derive(Clone)]
pub struct Catalog {
    pool: Pool,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Catalog({})", self.backend())
    }
}

/// Runs `$body` with `$p` bound to the concrete pool: each arm type-checks
/// against its own driver.
macro_rules! with_pool {
    ($self:expr, $p:ident => $body:expr) => {
        match &$self.pool {
            Pool::Sqlite($p) => $body,
            Pool::Postgres($p) => $body,
        }
    };
}

/// Queries are written with PostgreSQL's `$n` placeholders; SQLite takes
/// the same numbers as `?n`.
fn sql(pool: &Pool, query: &'static str) -> std::borrow::Cow<'static, str> {
    match pool {
        Pool::Postgres(_) => query.into(),
        Pool::Sqlite(_) => query.replace('$', "?").into(),
    }
}

fn to_i64(value: u64, what: &str) -> Result<i64, CatalogError> {
    i64::try_from(value)
        .map_err(|_| CatalogError::Corrupt(format!("{what} {value} does not fit a BIGINT")))
}

fn to_u64(value: i64, what: &str) -> Result<u64, CatalogError> {
    u64::try_from(value).map_err(|_| CatalogError::Corrupt(format!("{what} is negative ({value})")))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn encode_slots(slots: &[GroupId]) -> String {
    slots
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn decode_slots(text: &str) -> Result<Vec<GroupId>, CatalogError> {
    let slots: Vec<GroupId> = text
        .split(',')
        .map(|s| {
            s.parse::<GroupId>().map_err(|_| {
                CatalogError::Corrupt(format!("slot map entry `{s}` is not a group id"))
            })
        })
        .collect::<Result<_, _>>()?;
    if slots.len() != SLOTS as usize {
        return Err(CatalogError::Corrupt(format!(
            "slot map has {} entries, expected {SLOTS}",
            slots.len()
        )));
    }
    Ok(slots)
}

impl Catalog {
    /// Connects to `sqlite://PATH` (file and directory created if missing)
    /// or `postgres://...`, and runs the migrations.
    pub async fn connect(url: &str) -> Result<Catalog, CatalogError> {
        let pool = if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(CatalogError::BadUrl(url.to_string()));
            }
            let file = std::path::Path::new(path.split('?').next().unwrap_or(path));
            if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| CatalogError::Database {
                    context: format!("creating the catalog directory {}", parent.display()),
                    source: sqlx::Error::Io(e),
                })?;
            }
            let options = SqliteConnectOptions::from_str(url)
                .map_err(db("parsing the SQLite URL"))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(POOL_CONNECTIONS_MAX)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options)
                .await
                .map_err(db("opening the SQLite catalog"))?;
            SQLITE_MIGRATIONS
                .run(&pool)
                .await
                .map_err(|source| CatalogError::Migrate {
                    context: "migrating the SQLite catalog".into(),
                    source,
                })?;
            Pool::Sqlite(pool)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(POOL_CONNECTIONS_MAX)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect(url)
                .await
                .map_err(db("connecting to the PostgreSQL catalog"))?;
            POSTGRES_MIGRATIONS
                .run(&pool)
                .await
                .map_err(|source| CatalogError::Migrate {
                    context: "migrating the PostgreSQL catalog".into(),
                    source,
                })?;
            Pool::Postgres(pool)
        } else {
            return Err(CatalogError::BadUrl(url.to_string()));
        };
        Ok(Catalog { pool })
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    /// Creates the cluster (groups `1..=groups`, the ring's slot map, map
    /// epoch 1) if the catalog is empty; otherwise returns what exists,
    /// which must have the same number of groups.
    pub async fn bootstrap(&self, groups: u32) -> Result<ClusterMap, CatalogError> {
        if groups == 0 || groups > GROUPS_MAX {
            return Err(CatalogError::Mismatch(format!(
                "a cluster has 1 to {GROUPS_MAX} groups, not {groups}"
            )));
        }
        let ids: Vec<GroupId> = (1..=u64::from(groups)).collect();
        let slots = encode_slots(&assign_slots(&ids));
        let insert_cluster = sql(
            &self.pool,
            "INSERT INTO cluster (id, map_epoch, slot_map, version) VALUES (1, 1, $1, 1) ON CONFLICT (id) DO NOTHING",
        );
        let insert_group = sql(
            &self.pool,
            "INSERT INTO shard_groups (id, version) VALUES ($1, 1) ON CONFLICT (id) DO NOTHING",
        );
        with_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(db("starting the bootstrap transaction"))?;
            let created = sqlx::query(&insert_cluster)
                .bind(&slots)
                .execute(&mut *tx)
                .await
                .map_err(db("creating the cluster row"))?
                .rows_affected()
                == 1;
            if created {
                for id in &ids {
                    sqlx::query(&insert_group)
                        .bind(to_i64(*id, "group id")?)
                        .execute(&mut *tx)
                        .await
                        .map_err(db("creating a shard group"))?;
                }
            }
            tx.commit().await.map_err(db("committing the bootstrap"))?;
        });
        let map = self.load().await?;
        if map.groups.len() != groups as usize {
            return Err(CatalogError::Mismatch(format!(
                "the catalog already holds a cluster of {} groups, not {groups}; adding or removing groups needs resharding, which is not supported yet",
                map.groups.len()
            )));
        }
        Ok(map)
    }

    /// Reads the whole shard map.
    pub async fn load(&self) -> Result<ClusterMap, CatalogError> {
        let cluster_q = sql(
            &self.pool,
            "SELECT map_epoch, slot_map FROM cluster WHERE id = 1",
        );
        let groups_q = sql(
            &self.pool,
            "SELECT id, version FROM shard_groups ORDER BY id",
        );
        let members_q = sql(
            &self.pool,
            "SELECT group_id, position, addr, pid FROM members ORDER BY group_id, position",
        );
        let (epoch, slot_map, group_rows, member_rows) = with_pool!(self, pool => {
            let mut tx = pool.begin().await.map_err(db("starting a catalog read"))?;
            let cluster = sqlx::query(&cluster_q)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("reading the cluster row"))?
                .ok_or(CatalogError::NotBootstrapped)?;
            let epoch: i64 = cluster.try_get(0).map_err(db("reading map_epoch"))?;
            let slot_map: String = cluster.try_get(1).map_err(db("reading the slot map"))?;
            let mut group_rows = Vec::new();
            for row in sqlx::query(&groups_q).fetch_all(&mut *tx).await.map_err(db("reading shard groups"))? {
                let id: i64 = row.try_get(0).map_err(db("reading a group id"))?;
                let version: i64 = row.try_get(1).map_err(db("reading a group version"))?;
                group_rows.push((id, version));
            }
            let mut member_rows = Vec::new();
            for row in sqlx::query(&members_q).fetch_all(&mut *tx).await.map_err(db("reading members"))? {
                let group: i64 = row.try_get(0).map_err(db("reading a member's group"))?;
                let addr: String = row.try_get(2).map_err(db("reading a member's address"))?;
                let pid: i64 = row.try_get(3).map_err(db("reading a member's pid"))?;
                member_rows.push((group, addr, pid));
            }
            tx.commit().await.map_err(db("finishing a catalog read"))?;
            (epoch, slot_map, group_rows, member_rows)
        });
        let mut groups = BTreeMap::new();
        for (id, version) in group_rows {
            let id = to_u64(id, "group id")?;
            groups.insert(
                id,
                Group {
                    id,
                    members: Vec::new(),
                    version: to_u64(version, "group version")?,
                },
            );
        }
        for (group, addr, pid) in member_rows {
            let group = to_u64(group, "member group")?;
            let entry = groups
                .get_mut(&group)
                .ok_or_else(|| CatalogError::Corrupt(format!("member of unknown group {group}")))?;
            entry.members.push(Member {
                addr,
                pid: u32::try_from(pid).map_err(|_| CatalogError::Corrupt(format!("pid {pid}")))?,
            });
        }
        let slots = decode_slots(&slot_map)?;
        if let Some(bad) = slots.iter().find(|g| !groups.contains_key(g)) {
            return Err(CatalogError::Corrupt(format!(
                "slot map names group {bad}, which does not exist"
            )));
        }
        Ok(ClusterMap {
            map_epoch: to_u64(epoch, "map epoch")?,
            slots,
            groups,
        })
    }

    /// Records that `group`'s shard serves at `addr` (one member per group
    /// until replication lands: it replaces the member list). A conditional
    /// update on the group's version, retried if a concurrent writer won.
    pub async fn register_member(
        &self,
        group: GroupId,
        addr: &str,
        pid: u32,
    ) -> Result<ClusterMap, CatalogError> {
        let cas = sql(
            &self.pool,
            "UPDATE shard_groups SET version = version + 1 WHERE id = $1 AND version = $2",
        );
        let clear = sql(&self.pool, "DELETE FROM members WHERE group_id = $1");
        let insert = sql(
            &self.pool,
            "INSERT INTO members (group_id, position, addr, pid) VALUES ($1, 0, $2, $3)",
        );
        for _ in 0..REGISTER_ATTEMPTS_MAX {
            let map = self.load().await?;
            let Some(current) = map.groups.get(&group) else {
                return Err(CatalogError::Mismatch(format!(
                    "group {group} does not exist; this cluster has groups 1 to {}",
                    map.groups.len()
                )));
            };
            let id = to_i64(group, "group id")?;
            let version = to_i64(current.version, "group version")?;
            let won = with_pool!(self, pool => {
                let mut tx = pool.begin().await.map_err(db("starting a member registration"))?;
                let won = sqlx::query(&cas)
                    .bind(id)
                    .bind(version)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("bumping the group version"))?
                    .rows_affected()
                    == 1;
                if won {
                    sqlx::query(&clear).bind(id).execute(&mut *tx).await.map_err(db("clearing old members"))?;
                    sqlx::query(&insert)
                        .bind(id)
                        .bind(addr)
                        .bind(i64::from(pid))
                        .execute(&mut *tx)
                        .await
                        .map_err(db("recording the member"))?;
                    tx.commit().await.map_err(db("committing the registration"))?;
                } else {
                    tx.rollback().await.map_err(db("rolling back a lost registration"))?;
                }
                won
            });
            if won {
                return self.load().await;
            }
        }
        Err(CatalogError::Conflict)
    }

    /// Records (or refreshes) a coordinator and its heartbeat.
    pub async fn register_coordinator(&self, id: &str, addr: &str) -> Result<(), CatalogError> {
        let upsert = sql(
            &self.pool,
            "INSERT INTO coordinators (id, addr, heartbeat_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET addr = excluded.addr, heartbeat_ms = excluded.heartbeat_ms",
        );
        with_pool!(self, pool => {
            sqlx::query(&upsert)
                .bind(id)
                .bind(addr)
                .bind(now_ms())
                .execute(pool)
                .await
                .map_err(db("recording a coordinator"))?;
        });
        Ok(())
    }

    /// Coordinators: (id, address, seconds since their last heartbeat).
    pub async fn coordinators(&self) -> Result<Vec<(String, String, u64)>, CatalogError> {
        let q = sql(
            &self.pool,
            "SELECT id, addr, heartbeat_ms FROM coordinators ORDER BY id",
        );
        let now = now_ms();
        let rows = with_pool!(self, pool => {
            let mut out = Vec::new();
            for row in sqlx::query(&q).fetch_all(pool).await.map_err(db("listing coordinators"))? {
                let id: String = row.try_get(0).map_err(db("reading a coordinator id"))?;
                let addr: String = row.try_get(1).map_err(db("reading a coordinator address"))?;
                let beat: i64 = row.try_get(2).map_err(db("reading a heartbeat"))?;
                out.push((id, addr, (now.saturating_sub(beat).max(0) / 1000) as u64));
            }
            out
        });
        Ok(rows)
    }

    /// Replaces the slot map if its epoch is still `expected_epoch`; the new
    /// map gets `expected_epoch + 1`. `Ok(false)` if another writer won.
    pub async fn cas_slot_map(
        &self,
        expected_epoch: u64,
        slots: &[GroupId],
    ) -> Result<bool, CatalogError> {
        if slots.len() != SLOTS as usize {
            return Err(CatalogError::Mismatch(format!(
                "a slot map has {SLOTS} entries, not {}",
                slots.len()
            )));
        }
        let q = sql(
            &self.pool,
            "UPDATE cluster SET map_epoch = map_epoch + 1, slot_map = $1, version = version + 1 WHERE id = 1 AND map_epoch = $2",
        );
        let encoded = encode_slots(slots);
        let expected = to_i64(expected_epoch, "map epoch")?;
        let won = with_pool!(self, pool => {
            sqlx::query(&q)
                .bind(&encoded)
                .bind(expected)
                .execute(pool)
                .await
                .map_err(db("replacing the slot map"))?
                .rows_affected()
                == 1
        });
        Ok(won)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The suite both backends must pass.
    async fn suite(catalog: Catalog, url: &str) {
        assert!(matches!(
            catalog.load().await,
            Err(CatalogError::NotBootstrapped)
        ));
        let map = catalog.bootstrap(3).await.expect("bootstrap");
        assert_eq!(map.map_epoch, 1);
        assert_eq!(map.slots.len(), SLOTS as usize);
        assert_eq!(
            map.groups.keys().copied().collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert!(map.groups.values().all(|g| g.members.is_empty()));
        assert_eq!(
            catalog.bootstrap(3).await.expect("again"),
            map,
            "bootstrap is idempotent"
        );
        let err = catalog.bootstrap(4).await.expect_err("other group count");
        assert!(err.to_string().contains("3 groups"), "{err}");

        // Racing bootstraps from separate connections agree.
        let others: Vec<_> = (0..4)
            .map(|_| {
                let url = url.to_string();
                tokio::spawn(async move {
                    Catalog::connect(&url)
                        .await
                        .expect("connect")
                        .bootstrap(3)
                        .await
                        .expect("bootstrap")
                })
            })
            .collect();
        for other in others {
            assert_eq!(other.await.expect("task"), map);
        }

        let after = catalog
            .register_member(2, "127.0.0.1:4000", 42)
            .await
            .expect("register");
        let group = &after.groups[&2];
        assert_eq!(
            group.members,
            vec![Member {
                addr: "127.0.0.1:4000".into(),
                pid: 42
            }]
        );
        assert!(
            group.version > map.groups[&2].version,
            "registration bumps the version"
        );
        let again = catalog
            .register_member(2, "127.0.0.1:4001", 43)
            .await
            .expect("re-register");
        assert_eq!(
            again.primary(2),
            Some("127.0.0.1:4001"),
            "a restarted shard replaces its old address"
        );
        let err = catalog
            .register_member(9, "x:1", 1)
            .await
            .expect_err("unknown group");
        assert!(err.to_string().contains("1 to 3"), "{err}");

        // Concurrent registrations: all succeed (retrying lost CASes) and
        // the last one wins.
        let racers: Vec<_> = (0..6)
            .map(|i| {
                let catalog = catalog.clone();
                tokio::spawn(async move {
                    catalog
                        .register_member(1, &format!("127.0.0.1:{}", 5000 + i), i)
                        .await
                        .expect("register")
                })
            })
            .collect();
        for racer in racers {
            racer.await.expect("task");
        }
        let loaded = catalog.load().await.expect("load");
        assert_eq!(loaded.groups[&1].members.len(), 1);
        assert!(loaded.groups[&1].version >= map.groups[&1].version + 6);

        // Slot map CAS: one winner per epoch.
        let moved: Vec<GroupId> = map
            .slots
            .iter()
            .map(|g| if *g == 3 { 1 } else { *g })
            .collect();
        let attempts: Vec<_> = (0..4)
            .map(|_| {
                let catalog = catalog.clone();
                let moved = moved.clone();
                tokio::spawn(async move { catalog.cas_slot_map(1, &moved).await.expect("cas") })
            })
            .collect();
        let mut wins = 0;
        for attempt in attempts {
            wins += usize::from(attempt.await.expect("task"));
        }
        assert_eq!(wins, 1, "exactly one CAS wins");
        let loaded = catalog.load().await.expect("load");
        assert_eq!((loaded.map_epoch, &loaded.slots), (2, &moved));
        assert!(
            !catalog
                .cas_slot_map(1, &map.slots)
                .await
                .expect("stale cas"),
            "a stale epoch loses"
        );
        assert_eq!(
            catalog.load().await.expect("load").slots,
            moved,
            "a lost CAS changes nothing"
        );

        catalog
            .register_coordinator("c1", "127.0.0.1:50051")
            .await
            .expect("coordinator");
        catalog
            .register_coordinator("c1", "127.0.0.1:50052")
            .await
            .expect("heartbeat");
        let list = catalog.coordinators().await.expect("list");
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].1, "127.0.0.1:50052");
    }

    #[tokio::test]
    async fn sqlite_catalog() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("sub/catalog.db").display());
        let catalog = Catalog::connect(&url).await.expect("connect");
        assert_eq!(catalog.backend(), "sqlite");
        suite(catalog, &url).await;
    }

    #[tokio::test]
    async fn bad_urls_name_the_accepted_forms() {
        for url in ["mysql://x", "sqlite://", "catalog.db"] {
            let err = Catalog::connect(url).await.expect_err(url);
            assert!(
                err.to_string().contains("sqlite://PATH")
                    && err.to_string().contains("postgres://"),
                "{err}"
            );
        }
    }

    #[tokio::test]
    async fn postgres_catalog() {
        let base = std::env::var("TRELLIS_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let admin = match PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&base)
            .await
        {
            Ok(pool) => pool,
            Err(err) => {
                assert!(
                    std::env::var("CI").is_err(),
                    "PostgreSQL must be reachable in CI at {base}: {err}"
                );
                eprintln!("SKIPPED: PostgreSQL catalog tests: cannot connect to {base}: {err}");
                return;
            }
        };
        let schema = format!(
            "catalog_test_{}",
            std::process::id() as u64 * 1000 + u64::from(rand::random::<u16>()) % 1000
        );
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .expect("create schema");
        let url = format!("{base}?options=-c%20search_path%3D{schema}");
        let catalog = Catalog::connect(&url).await.expect("connect");
        assert_eq!(catalog.backend(), "postgres");
        suite(catalog, &url).await;
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&admin)
            .await
            .expect("drop schema");
    }
}
