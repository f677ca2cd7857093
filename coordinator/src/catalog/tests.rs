//! The backend-parametrised suite (every case on SQLite, PostgreSQL and
//! memory), URL parsing, and what is particular to one backend.

use sqlx::Connection as _;
use trellis_types::SLOTS;

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
        let err = catalog.add_group(1).await.expect_err("add a group");
        assert!(matches!(err, CatalogError::NotBootstrapped), "{err:?}");
        let err = catalog.remove_group(1).await.expect_err("remove a group");
        assert!(matches!(err, CatalogError::NotBootstrapped), "{err:?}");
        assert!(matches!(
            catalog.load().await,
            Err(CatalogError::NotBootstrapped)
        ));
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
                member.pid < RACERS && member.addr == format!("127.0.0.1:{}", 5000 + member.pid)
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
        let ids = |list: Vec<CoordinatorRow>| list.into_iter().map(|c| c.id).collect::<Vec<_>>();
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
            let _ = tokio::time::timeout(cut, catalog.register_member(1, "127.0.0.1:1", i)).await;
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

    /// A new group is empty: no members, no slots, nothing else changed;
    /// its replicas register as in any group; the same id twice, or one
    /// out of range, is refused; and a restart with the `--groups` the
    /// cluster was created with is still no mismatch.
    pub async fn add_group_registers_an_empty_group(place: &Place) {
        let catalog = place.connect().await;
        let map = catalog.bootstrap(2).await.expect("bootstrap");
        let added = catalog.add_group(3).await.expect("add group 3");
        assert_eq!(
            added.groups.keys().copied().collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let group = &added.groups[&3];
        assert!(group.members.is_empty(), "no members yet: {group:?}");
        assert_eq!((group.version, group.epoch), (1, 0));
        assert_eq!(added.slots_of(3).len(), 0, "a new group owns nothing");
        assert_eq!(
            (added.map_epoch, &added.slots),
            (map.map_epoch, &map.slots),
            "the slot map and its epoch are untouched"
        );
        assert_eq!(added.groups[&1], map.groups[&1]);
        assert_eq!(added.groups[&2], map.groups[&2]);
        assert_eq!(catalog.load().await.expect("load"), added);
        assert_eq!(place.connect().await.load().await.expect("reload"), added);

        for (what, group, exists) in [
            ("existing", 3, true),
            ("bootstrapped", 1, true),
            ("zero", 0, false),
            ("too high", GroupId::from(GROUPS_MAX) + 1, false),
            ("huge", GroupId::MAX, false),
        ] {
            let err = catalog.add_group(group).await.expect_err(what);
            if exists {
                assert!(
                    matches!(err, CatalogError::GroupExists { group: g } if g == group),
                    "{what}: {err:?}"
                );
                assert!(err.to_string().contains("already exists"), "{err}");
            } else {
                assert!(matches!(err, CatalogError::Invalid(_)), "{what}: {err:?}");
                assert!(
                    err.to_string().contains(&format!("1 to {GROUPS_MAX}")),
                    "{err}"
                );
            }
        }
        assert_eq!(
            catalog.load().await.expect("load"),
            added,
            "refusals change nothing"
        );
        catalog
            .add_group(GroupId::from(GROUPS_MAX))
            .await
            .expect("the highest id");

        let registered = catalog
            .register_member(3, "127.0.0.1:4300", 9)
            .await
            .expect("a replica of the new group registers");
        assert_eq!(registered.primary(3), Some("127.0.0.1:4300"));
        assert_eq!(registered.groups[&3].epoch, 1);

        // Slots may now move to it.
        let moved = moved_map(&map, 2, 3);
        assert!(
            catalog
                .cas_slot_map(map.map_epoch, &moved)
                .await
                .expect("cas")
        );
        assert_eq!(
            catalog.load().await.expect("load").slots_of(3).len(),
            map.slots_of(2).len()
        );

        // A restart with the count it was created with still starts.
        let again = catalog.bootstrap(2).await.expect("bootstrap as created");
        assert_eq!(again.groups.len(), 4);
        let err = catalog.bootstrap(4).await.expect_err("not as created");
        assert!(matches!(err, CatalogError::Mismatch(_)), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("created with 2 groups (it has 4 now)") && text.contains("add-group"),
            "{text}"
        );
    }

    /// A group that owns slots, or does not exist, is refused; an empty
    /// one is forgotten with its members, at the same map epoch, and its
    /// replicas can no longer register.
    pub async fn remove_group_refuses_owners_and_forgets_empty_groups(place: &Place) {
        let catalog = place.connect().await;
        let map = catalog.bootstrap(3).await.expect("bootstrap");
        let err = catalog.remove_group(2).await.expect_err("owns slots");
        let owned = map.slots_of(2).len();
        assert!(
            matches!(err, CatalogError::GroupOwnsSlots { group: 2, slots } if slots == owned),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("trellis admin drain-group --group 2"),
            "says to drain it first: {err}"
        );
        for group in [9, 0, GroupId::MAX] {
            let err = catalog.remove_group(group).await.expect_err("unknown");
            assert!(
                matches!(err, CatalogError::UnknownGroup { .. }),
                "{group}: {err:?}"
            );
        }
        assert_eq!(
            catalog.load().await.expect("load"),
            map,
            "refusals change nothing"
        );

        // An added group with replicas but no slots goes, members and all.
        catalog.add_group(4).await.expect("add");
        catalog
            .register_member(4, "127.0.0.1:4400", 1)
            .await
            .expect("register");
        catalog
            .register_member(4, "127.0.0.1:4401", 2)
            .await
            .expect("register");
        let removed = catalog.remove_group(4).await.expect("remove");
        assert_eq!(removed, map, "back to the map before the add");
        catalog
            .add_group(6)
            .await
            .expect("add group 6, leaving a gap");
        let err = catalog.remove_group(4).await.expect_err("gone");
        assert!(
            err.to_string()
                .contains("has 4 groups from 1 to 6 (not every id between)"),
            "{err}"
        );
        catalog.remove_group(6).await.expect("remove group 6");
        let err = catalog
            .register_member(4, "127.0.0.1:4400", 3)
            .await
            .expect_err("a removed group's replica");
        assert!(
            matches!(err, CatalogError::UnknownGroup { group: 4, .. }),
            "{err:?}"
        );
        let err = catalog.remove_group(4).await.expect_err("twice");
        assert!(matches!(err, CatalogError::UnknownGroup { .. }), "{err:?}");
        // Added again, it starts afresh.
        let again = catalog.add_group(4).await.expect("add again");
        assert!(again.groups[&4].members.is_empty());
        assert_eq!(again.groups[&4].version, 1);

        // Once its slots have moved away, a bootstrapped group goes too.
        assert!(
            catalog
                .cas_slot_map(map.map_epoch, &moved_map(&map, 3, 1))
                .await
                .expect("cas")
        );
        let after = catalog.remove_group(3).await.expect("remove group 3");
        assert_eq!(
            after.groups.keys().copied().collect::<Vec<_>>(),
            vec![1, 2, 4]
        );
        assert_eq!(
            after.map_epoch,
            map.map_epoch + 1,
            "only the slot move bumped it"
        );
        assert_eq!(catalog.load().await.expect("load"), after);
    }

    /// Of racers adding the same group, exactly one wins; the others are
    /// told it exists.
    pub async fn concurrent_add_group_exactly_one_wins(place: &Place) {
        const RACERS: usize = 8;
        place.connect().await.bootstrap(2).await.expect("bootstrap");
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(RACERS));
        let racers: Vec<_> = (0..RACERS)
            .map(|_| {
                let target = place.target.clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    let catalog = target.connect().await;
                    barrier.wait().await;
                    catalog.add_group(5).await
                })
            })
            .collect();
        let mut won = 0;
        for racer in racers {
            match racer.await.expect("racer") {
                Ok(map) => {
                    won += 1;
                    assert!(map.groups.contains_key(&5));
                }
                Err(CatalogError::GroupExists { group: 5 }) => {}
                Err(err) => panic!("unexpected: {err:?}"),
            }
        }
        assert_eq!(won, 1, "exactly one add wins");
        let loaded = place.connect().await.load().await.expect("load");
        assert_eq!(
            loaded.groups.keys().copied().collect::<Vec<_>>(),
            vec![1, 2, 5]
        );
    }

    /// A removal racing a slot map that gives slots to the group being
    /// removed: one of them wins, the other is refused, and the catalog
    /// never ends up with slots of a group that does not exist. On
    /// PostgreSQL this fails within a few rounds if `cas_slot_map` checks
    /// the groups before its update of the cluster row (READ COMMITTED
    /// lets the removal slip in between).
    pub async fn remove_group_races_slot_map_change(place: &Place) {
        const ROUNDS: u64 = 20;
        let catalog = place.connect().await;
        catalog.bootstrap(2).await.expect("bootstrap");
        for round in 0..ROUNDS {
            let map = catalog.add_group(3).await.expect("add group 3");
            let to_three = moved_map(&map, 2, 3);
            let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
            let remover = {
                let (target, barrier) = (place.target.clone(), barrier.clone());
                tokio::spawn(async move {
                    let catalog = target.connect().await;
                    barrier.wait().await;
                    catalog.remove_group(3).await
                })
            };
            let mover = {
                let (target, barrier) = (place.target.clone(), barrier.clone());
                let epoch = map.map_epoch;
                tokio::spawn(async move {
                    let catalog = target.connect().await;
                    barrier.wait().await;
                    catalog.cas_slot_map(epoch, &to_three).await
                })
            };
            let removed = remover.await.expect("remover");
            let moved = mover.await.expect("mover");
            let loaded = catalog.load().await.expect("the catalog stays whole");
            match (&removed, &moved) {
                (Ok(_), Ok(false) | Err(CatalogError::Invalid(_))) => {
                    assert!(!loaded.groups.contains_key(&3), "round {round}");
                }
                (Err(CatalogError::GroupOwnsSlots { group: 3, .. }), Ok(true)) => {
                    assert!(!loaded.slots_of(3).is_empty(), "round {round}");
                    // Give the slots back and remove it for the next round.
                    assert!(
                        catalog
                            .cas_slot_map(loaded.map_epoch, &moved_map(&loaded, 3, 2))
                            .await
                            .expect("cas back")
                    );
                    catalog.remove_group(3).await.expect("remove after");
                }
                other => panic!("round {round}: exactly one must win: {other:?}"),
            }
        }
    }

    /// Reshard jobs: created at version 1 with the caller's bytes, saved
    /// only at the version read, listed by id with fresh ages; an unknown
    /// job or an oversized state is refused and changes nothing.
    pub async fn jobs_are_created_saved_and_listed(place: &Place) {
        let catalog = place.connect().await;
        assert!(catalog.jobs().await.expect("no jobs").is_empty());
        let first = catalog.create_job(b"plan-a").await.expect("create");
        let second = catalog.create_job(&[]).await.expect("an empty state");
        assert_eq!((first, second), (1, 2));
        assert!(
            catalog
                .save_job(first, 1, b"plan-a:copying")
                .await
                .expect("save")
        );
        assert!(
            !catalog
                .save_job(first, 1, b"stale")
                .await
                .expect("stale save"),
            "a save at a version already saved over loses"
        );
        assert!(!catalog.save_job(first, u64::MAX, b"x").await.expect("huge"));
        let jobs = catalog.jobs().await.expect("list");
        let seen = |jobs: &[JobRow]| -> Vec<(u64, u64, Vec<u8>)> {
            jobs.iter()
                .map(|j| (j.id, j.version, j.state.clone()))
                .collect()
        };
        assert_eq!(
            seen(&jobs),
            [(1, 2, b"plan-a:copying".to_vec()), (2, 1, vec![])]
        );
        assert!(
            jobs.iter()
                .all(|j| j.created_age_ms <= 5000 && j.updated_age_ms <= j.created_age_ms),
            "{jobs:?}"
        );
        for id in [3, 0, u64::MAX] {
            let err = catalog.save_job(id, 1, b"x").await.expect_err("unknown");
            assert!(
                matches!(err, CatalogError::UnknownJob { .. }),
                "{id}: {err:?}"
            );
        }
        let big = vec![7; JOB_STATE_BYTES_MAX + 1];
        for err in [
            catalog.create_job(&big).await.expect_err("too big"),
            catalog.save_job(2, 1, &big).await.expect_err("too big"),
        ] {
            assert!(matches!(err, CatalogError::Invalid(_)), "{err:?}");
        }
        assert_eq!(
            seen(&catalog.jobs().await.expect("list")),
            seen(&jobs),
            "refusals change nothing"
        );
        catalog
            .create_job(&big[..JOB_STATE_BYTES_MAX])
            .await
            .expect("the largest state");
        // A new connection (a restarted coordinator) reads them back.
        assert_eq!(place.connect().await.jobs().await.expect("reload").len(), 3);
    }

    /// Racing creators get distinct ids; of racing savers at one version,
    /// exactly one wins.
    pub async fn concurrent_jobs_get_ids_and_one_save_wins(place: &Place) {
        const RACERS: u64 = 6;
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(RACERS as usize));
        let creators: Vec<_> = (0..RACERS)
            .map(|i| {
                let (target, barrier) = (place.target.clone(), barrier.clone());
                tokio::spawn(async move {
                    let catalog = target.connect().await;
                    barrier.wait().await;
                    catalog.create_job(&i.to_le_bytes()).await.expect("create")
                })
            })
            .collect();
        let mut ids = Vec::new();
        for creator in creators {
            ids.push(creator.await.expect("creator"));
        }
        ids.sort_unstable();
        assert_eq!(ids, (1..=RACERS).collect::<Vec<_>>(), "distinct ids");
        let savers: Vec<_> = (0..RACERS)
            .map(|i| {
                let (target, barrier) = (place.target.clone(), barrier.clone());
                tokio::spawn(async move {
                    let catalog = target.connect().await;
                    barrier.wait().await;
                    (i, catalog.save_job(1, 1, &[i as u8]).await.expect("save"))
                })
            })
            .collect();
        let mut winners = Vec::new();
        for saver in savers {
            let (i, won) = saver.await.expect("saver");
            if won {
                winners.push(i);
            }
        }
        assert_eq!(winners.len(), 1, "exactly one save wins: {winners:?}");
        let job = place.connect().await.jobs().await.expect("list")[0].clone();
        assert_eq!((job.version, job.state), (2, vec![winners[0] as u8]));
    }

    /// A feed's cursor is saved, read back (also by a new connection: a
    /// restarted `trellis cdc`), replaced, listed and deleted; feeds are
    /// independent, and a feed never saved has none. Saving needs no
    /// cluster: the catalog may be empty.
    /// The cluster id exists from the first connect (before a bootstrap),
    /// is the one id every racing first connect sees, survives reopening
    /// and a bootstrap, and is not another catalog's.
    pub async fn cluster_id_is_drawn_once_and_kept(place: &Place) {
        let racing: Vec<ClusterId> = futures::future::join_all((0..4).map(|_| async {
            place
                .connect()
                .await
                .cluster_id()
                .await
                .expect("cluster id")
        }))
        .await;
        let id = racing[0];
        assert!(racing.iter().all(|r| *r == id), "{racing:?}");
        let catalog = place.connect().await;
        catalog.bootstrap(2).await.expect("bootstrap");
        drop(catalog);
        let reopened = place.connect().await;
        assert_eq!(reopened.cluster_id().await.expect("cluster id"), id);
        // Another catalog of the same backend (kept alive while read).
        let other_place = match &place.target {
            Target::Memory(_) => Place::memory().await,
            Target::Url(url) if url.starts_with("sqlite:") => Place::sqlite().await,
            Target::Url(_) => Place::postgres().await,
        }
        .expect("another catalog of a backend that answered");
        let other = other_place.connect().await;
        assert_ne!(
            other.cluster_id().await.expect("cluster id"),
            id,
            "each catalog draws its own"
        );
        // A missing row is an error that says so, never a new id.
        tamper(&reopened, "DELETE FROM cluster_identity", |_| {}).await;
        if reopened.backend() != "memory" {
            let err = reopened.cluster_id().await.expect_err("no row");
            assert!(matches!(err, CatalogError::Corrupt(_)), "{err:?}");
        }
    }

    pub async fn feed_cursors_are_saved_loaded_and_replaced(place: &Place) {
        let catalog = place.connect().await;
        assert_eq!(
            catalog.load_feed_cursor("orders").await.expect("load"),
            None
        );
        assert!(catalog.feed_cursors().await.expect("list").is_empty());
        catalog
            .save_feed_cursor("orders", b"\x0a\x04\x08\x01\x10\x78")
            .await
            .expect("save");
        catalog
            .save_feed_cursor("cache.sync-2", b"")
            .await
            .expect("an empty cursor is a cursor");
        assert_eq!(
            catalog.load_feed_cursor("orders").await.expect("load"),
            Some(b"\x0a\x04\x08\x01\x10\x78".to_vec())
        );
        catalog
            .save_feed_cursor("orders", b"later")
            .await
            .expect("replace");
        let again = place.connect().await;
        assert_eq!(
            again.load_feed_cursor("orders").await.expect("reload"),
            Some(b"later".to_vec()),
            "the last save wins and survives a reconnect"
        );
        assert_eq!(
            again.load_feed_cursor("cache.sync-2").await.expect("load"),
            Some(vec![])
        );
        assert_eq!(
            again.load_feed_cursor("Orders").await.expect("load"),
            None,
            "names are case-sensitive"
        );
        let rows = again.feed_cursors().await.expect("list");
        let seen: Vec<(&str, &[u8])> = rows
            .iter()
            .map(|r| (r.feed.as_str(), r.cursor.as_slice()))
            .collect();
        assert_eq!(
            seen,
            [("cache.sync-2", &b""[..]), ("orders", &b"later"[..])]
        );
        assert!(rows.iter().all(|r| r.updated_age_ms <= 5000), "{rows:?}");
        assert!(again.delete_feed_cursor("orders").await.expect("delete"));
        assert!(
            !again
                .delete_feed_cursor("orders")
                .await
                .expect("delete again")
        );
        assert_eq!(
            catalog.load_feed_cursor("orders").await.expect("load"),
            None
        );
        let largest = vec![0xab; FEED_CURSOR_BYTES_MAX];
        catalog
            .save_feed_cursor("orders", &largest)
            .await
            .expect("the largest cursor");
        assert_eq!(
            catalog.load_feed_cursor("orders").await.expect("load"),
            Some(largest)
        );
    }

    /// Bad names and oversized cursors are refused with what is wrong, and
    /// change nothing.
    pub async fn feed_cursors_refuse_bad_names_and_sizes(place: &Place) {
        let catalog = place.connect().await;
        catalog.save_feed_cursor("f", b"kept").await.expect("save");
        let long = "x".repeat(FEED_NAME_CHARS_MAX + 1);
        for name in ["", "a b", "feed/1", "caf\u{e9}", long.as_str()] {
            for err in [
                catalog.save_feed_cursor(name, b"x").await.expect_err(name),
                catalog.load_feed_cursor(name).await.expect_err(name),
                catalog.delete_feed_cursor(name).await.expect_err(name),
            ] {
                assert!(matches!(err, CatalogError::Invalid(_)), "{name:?}: {err:?}");
                assert!(err.to_string().contains("A-Z, a-z, 0-9"), "{err}");
            }
        }
        let big = vec![1; FEED_CURSOR_BYTES_MAX + 1];
        let err = catalog.save_feed_cursor("f", &big).await.expect_err("big");
        assert!(
            matches!(err, CatalogError::Invalid(_)) && err.to_string().contains("65536"),
            "{err}"
        );
        assert_eq!(
            catalog.load_feed_cursor("f").await.expect("load"),
            Some(b"kept".to_vec()),
            "refusals change nothing"
        );
        assert_eq!(catalog.feed_cursors().await.expect("list").len(), 1);
    }

    /// Past FEEDS_MAX a new feed is refused with a way out, while the feeds
    /// kept can still save; deleting one makes room.
    pub async fn feed_cursors_are_bounded(place: &Place) {
        let catalog = place.connect().await;
        for i in 0..FEEDS_MAX {
            catalog
                .save_feed_cursor(&format!("feed-{i:04}"), &i.to_le_bytes())
                .await
                .expect("save");
        }
        let err = catalog
            .save_feed_cursor("one-too-many", b"x")
            .await
            .expect_err("full");
        assert!(
            matches!(err, CatalogError::Invalid(_))
                && err.to_string().contains(&FEEDS_MAX.to_string())
                && err.to_string().contains("delete"),
            "{err}"
        );
        assert_eq!(
            catalog
                .load_feed_cursor("one-too-many")
                .await
                .expect("load"),
            None
        );
        catalog
            .save_feed_cursor("feed-0007", b"moved on")
            .await
            .expect("a kept feed still saves");
        assert!(
            catalog
                .delete_feed_cursor("feed-0000")
                .await
                .expect("delete")
        );
        catalog
            .save_feed_cursor("one-too-many", b"x")
            .await
            .expect("room again");
        let rows = catalog.feed_cursors().await.expect("list");
        assert_eq!(rows.len() as u64, FEEDS_MAX);
        assert_eq!(rows[6].feed, "feed-0007");
        assert_eq!(rows[6].cursor, b"moved on");
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

    /// Users come and go with their grants; every refusal names what is
    /// wrong and changes nothing; the auth row is written once, with one
    /// secret that stays.
    pub async fn users_grants_and_the_auth_switch(place: &Place) {
        use trellis_txn::authz::{GRANTS_PER_USER_MAX, Grant, Role};
        let catalog = place.connect().await;
        let read_a = Grant::new(Role::Read, b"a/".to_vec()).expect("grant");
        let admin = Grant::new(Role::Admin, Vec::new()).expect("grant");
        assert_eq!(catalog.users().await.expect("users"), []);
        catalog
            .add_user("root", Some("$argon2id$fake"))
            .await
            .expect("add root");
        catalog.add_user("bob", None).await.expect("add bob");
        let err = catalog.add_user("bob", None).await.expect_err("twice");
        assert!(err.to_string().contains("already exists"), "{err}");
        let err = catalog
            .add_user("bad name", None)
            .await
            .expect_err("a space");
        assert!(err.to_string().contains("has ` `"), "{err}");
        catalog.grant("root", &admin).await.expect("grant admin");
        catalog.grant("bob", &read_a).await.expect("grant read");
        catalog
            .grant("bob", &read_a)
            .await
            .expect("granting again changes nothing");
        let err = catalog.grant("carol", &read_a).await.expect_err("unknown");
        assert!(
            err.to_string().contains("user `carol` does not exist"),
            "{err}"
        );
        let users = catalog.users().await.expect("users");
        assert_eq!(
            users
                .iter()
                .map(|u| (
                    u.name.as_str(),
                    u.password_hash.as_deref(),
                    u.grants.clone()
                ))
                .collect::<Vec<_>>(),
            [
                ("bob", None, vec![read_a.clone()]),
                ("root", Some("$argon2id$fake"), vec![admin.clone()]),
            ]
        );
        assert!(
            !format!("{users:?}").contains("argon2"),
            "Debug shows no hash"
        );
        catalog
            .set_password("bob", Some("$argon2id$other"))
            .await
            .expect("passwd");
        assert_eq!(
            catalog
                .user("bob")
                .await
                .expect("bob")
                .expect("exists")
                .password_hash
                .as_deref(),
            Some("$argon2id$other")
        );
        assert!(catalog.set_password("carol", None).await.is_err());

        // Bounded grants.
        for i in 1..GRANTS_PER_USER_MAX {
            let g = Grant::new(Role::Write, vec![b'p', i as u8]).expect("grant");
            catalog.grant("bob", &g).await.expect("within the bound");
        }
        let over = Grant::new(Role::Write, b"over".to_vec()).expect("grant");
        let err = catalog.grant("bob", &over).await.expect_err("too many");
        assert!(
            err.to_string().contains("the most one user may hold"),
            "{err}"
        );
        let err = catalog.revoke("bob", &over).await.expect_err("not held");
        assert!(
            err.to_string()
                .contains("does not hold write on prefix `over`"),
            "{err}"
        );
        catalog.revoke("bob", &read_a).await.expect("revoke");
        let bob = catalog.user("bob").await.expect("bob").expect("exists");
        assert_eq!(bob.grants.len(), GRANTS_PER_USER_MAX - 1);
        assert!(!bob.grants.contains(&read_a));

        // Removing a user takes its grants: a new user of that name holds none.
        catalog.remove_user("bob").await.expect("rm");
        assert!(catalog.remove_user("bob").await.is_err());
        catalog.add_user("bob", None).await.expect("add again");
        assert_eq!(
            catalog
                .user("bob")
                .await
                .expect("bob")
                .expect("exists")
                .grants,
            []
        );

        let first = catalog.auth_settings().await.expect("settings");
        assert!(!first.enabled);
        assert_ne!(first.secret, [0; 32]);
        catalog.set_auth_enabled(true).await.expect("enable");
        let again = place
            .connect()
            .await
            .auth_settings()
            .await
            .expect("settings");
        assert!(again.enabled);
        assert_eq!(again.secret, first.secret, "one secret, kept");
        catalog.set_auth_enabled(false).await.expect("disable");
        assert!(!catalog.auth_settings().await.expect("settings").enabled);
    }

    /// Sequentially: the catalog itself keeps an admin while auth is on,
    /// whoever calls it, and a refusal changes nothing.
    pub async fn the_catalog_keeps_the_last_admin(place: &Place) {
        use crate::auth::LockOut;
        use trellis_txn::authz::{Grant, Role};
        let catalog = place.connect().await;
        let admin = Grant::new(Role::Admin, Vec::new()).expect("grant");
        let write = Grant::new(Role::Write, Vec::new()).expect("grant");
        catalog.add_user("root", None).await.expect("add root");
        catalog.grant("root", &write).await.expect("grant write");
        let err = catalog.set_auth_enabled(true).await.expect_err("no admin");
        assert!(
            matches!(err, CatalogError::LockOut(LockOut::NoAdmin)),
            "{err:?}"
        );
        assert!(err.to_string().contains("no user holds admin"), "{err}");
        assert!(!catalog.auth_settings().await.expect("settings").enabled);

        catalog.grant("root", &admin).await.expect("grant admin");
        catalog.set_auth_enabled(true).await.expect("enable");
        let err = catalog.remove_user("root").await.expect_err("last admin");
        assert_last_admin(&err, "root");
        assert!(
            err.to_string()
                .contains("`root` is the last user holding admin"),
            "{err}"
        );
        let err = catalog
            .revoke("root", &admin)
            .await
            .expect_err("last admin");
        assert_last_admin(&err, "root");
        assert_eq!(
            catalog
                .user("root")
                .await
                .expect("root")
                .expect("kept")
                .grants,
            [write.clone(), admin.clone()]
        );
        // What cannot lock anyone out still goes through.
        catalog.revoke("root", &write).await.expect("revoke write");
        catalog.set_auth_enabled(true).await.expect("enable again");
        // With auth off, the last admin may go.
        catalog.set_auth_enabled(false).await.expect("disable");
        catalog.revoke("root", &admin).await.expect("revoke admin");
        catalog.remove_user("root").await.expect("rm root");
        assert_eq!(catalog.users().await.expect("users"), []);
    }

    /// Two admins, each through its own coordinator (a pool of its own on
    /// the same database), remove each other at the same moment, round
    /// after round: one removal wins, the other is refused as the last
    /// admin's, and exactly one admin is left.
    pub async fn concurrent_removals_of_the_last_two_admins_leave_one(place: &Place) {
        use trellis_txn::authz::{Grant, Role};
        let admin = Grant::new(Role::Admin, Vec::new()).expect("grant");
        let setup = place.connect().await;
        let (one, two) = (place.connect().await, place.connect().await);
        for user in ["root", "ops"] {
            setup.add_user(user, None).await.expect("add");
            setup.grant(user, &admin).await.expect("grant admin");
        }
        setup.set_auth_enabled(true).await.expect("enable");
        for round in 0..LOCK_OUT_ROUNDS {
            let (by_root, by_ops) = race(
                {
                    let one = one.clone();
                    async move { one.remove_user("ops").await }
                },
                {
                    let two = two.clone();
                    async move { two.remove_user("root").await }
                },
            )
            .await;
            let (removed, kept) = match (by_root, by_ops) {
                (Ok(()), Err(err)) => {
                    assert_last_admin(&err, "root");
                    ("ops", "root")
                }
                (Err(err), Ok(())) => {
                    assert_last_admin(&err, "ops");
                    ("root", "ops")
                }
                other => panic!("round {round}: exactly one removal must win: {other:?}"),
            };
            assert_eq!(admins(&setup).await, [kept], "round {round}");
            assert!(setup.auth_settings().await.expect("settings").enabled);
            setup.add_user(removed, None).await.expect("add back");
            setup.grant(removed, &admin).await.expect("grant back");
        }
    }

    /// The same race by revoking `admin` instead of removing the user.
    pub async fn concurrent_revokes_of_the_last_two_admins_leave_one(place: &Place) {
        use trellis_txn::authz::{Grant, Role};
        let admin = Grant::new(Role::Admin, Vec::new()).expect("grant");
        let setup = place.connect().await;
        let (one, two) = (place.connect().await, place.connect().await);
        for user in ["root", "ops"] {
            setup.add_user(user, None).await.expect("add");
            setup.grant(user, &admin).await.expect("grant admin");
        }
        setup.set_auth_enabled(true).await.expect("enable");
        for round in 0..LOCK_OUT_ROUNDS {
            let (by_root, by_ops) = race(
                {
                    let (one, admin) = (one.clone(), admin.clone());
                    async move { one.revoke("ops", &admin).await }
                },
                {
                    let (two, admin) = (two.clone(), admin.clone());
                    async move { two.revoke("root", &admin).await }
                },
            )
            .await;
            let (revoked, kept) = match (by_root, by_ops) {
                (Ok(()), Err(err)) => {
                    assert_last_admin(&err, "root");
                    ("ops", "root")
                }
                (Err(err), Ok(())) => {
                    assert_last_admin(&err, "ops");
                    ("root", "ops")
                }
                other => panic!("round {round}: exactly one revocation must win: {other:?}"),
            };
            assert_eq!(admins(&setup).await, [kept], "round {round}");
            setup.grant(revoked, &admin).await.expect("grant back");
        }
    }

    /// `auth enable` through one coordinator while the only admin's
    /// `admin` is revoked through another: one wins and the other is
    /// refused, never both — auth is never on with no admin.
    pub async fn enable_races_revoking_the_only_admin(place: &Place) {
        use crate::auth::LockOut;
        use trellis_txn::authz::{Grant, Role};
        let admin = Grant::new(Role::Admin, Vec::new()).expect("grant");
        let setup = place.connect().await;
        let (one, two) = (place.connect().await, place.connect().await);
        setup.add_user("root", None).await.expect("add");
        setup.grant("root", &admin).await.expect("grant admin");
        let mut seen = [0usize; 2];
        for round in 0..LOCK_OUT_ROUNDS {
            let (enabled, revoked) = race(
                {
                    let one = one.clone();
                    async move { one.set_auth_enabled(true).await }
                },
                {
                    let (two, admin) = (two.clone(), admin.clone());
                    async move { two.revoke("root", &admin).await }
                },
            )
            .await;
            let on = setup.auth_settings().await.expect("settings").enabled;
            match (enabled, revoked) {
                (Ok(()), Err(err)) => {
                    assert_last_admin(&err, "root");
                    assert!(on, "round {round}");
                    assert_eq!(admins(&setup).await, ["root"], "round {round}");
                    seen[0] += 1;
                    setup.set_auth_enabled(false).await.expect("disable");
                }
                (Err(err), Ok(())) => {
                    assert!(
                        matches!(err, CatalogError::LockOut(LockOut::NoAdmin)),
                        "round {round}: {err:?}"
                    );
                    assert!(!on, "round {round}");
                    assert_eq!(admins(&setup).await, [""; 0], "round {round}");
                    seen[1] += 1;
                    setup.grant("root", &admin).await.expect("grant back");
                }
                other => panic!("round {round}: exactly one change must win: {other:?}"),
            }
        }
        assert_eq!(seen.iter().sum::<usize>(), LOCK_OUT_ROUNDS, "{seen:?}");
    }
}

/// Rounds of each lock-out race: each round is a fresh race of two tasks
/// released together.
const LOCK_OUT_ROUNDS: usize = 8;

/// Runs `a` and `b` at once, each in a task of its own, released together
/// by a barrier; returns both results.
async fn race<A, B>(a: A, b: B) -> (A::Output, B::Output)
where
    A: std::future::Future + Send + 'static,
    A::Output: Send + 'static,
    B: std::future::Future + Send + 'static,
    B::Output: Send + 'static,
{
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
    let (at_a, at_b) = (barrier.clone(), barrier);
    let a = tokio::spawn(async move {
        at_a.wait().await;
        a.await
    });
    let b = tokio::spawn(async move {
        at_b.wait().await;
        b.await
    });
    (a.await.expect("racer a"), b.await.expect("racer b"))
}

/// Asserts that `err` refuses to take away `user` as the last admin.
fn assert_last_admin(err: &CatalogError, user: &str) {
    use crate::auth::LockOut;
    assert!(
        matches!(err, CatalogError::LockOut(LockOut::LastAdmin { user: u }) if u == user),
        "expected `{user}` refused as the last admin: {err:?}"
    );
}

/// The names of the users holding `admin`, by name.
async fn admins(catalog: &Catalog) -> Vec<String> {
    use trellis_txn::authz::Role;
    catalog
        .users()
        .await
        .expect("users")
        .into_iter()
        .filter(|u| u.grants.iter().any(|g| g.role() == Role::Admin))
        .map(|u| u.name)
        .collect()
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
                add_group_registers_an_empty_group,
                remove_group_refuses_owners_and_forgets_empty_groups,
                concurrent_add_group_exactly_one_wins,
                remove_group_races_slot_map_change,
                jobs_are_created_saved_and_listed,
                concurrent_jobs_get_ids_and_one_save_wins,
                feed_cursors_are_saved_loaded_and_replaced,
                feed_cursors_refuse_bad_names_and_sizes,
                feed_cursors_are_bounded,
                cluster_id_is_drawn_once_and_kept,
                users_grants_and_the_auth_switch,
                the_catalog_keeps_the_last_admin,
                concurrent_removals_of_the_last_two_admins_leave_one,
                concurrent_revokes_of_the_last_two_admins_leave_one,
                enable_races_revoking_the_only_admin,
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

#[test]
fn feed_names_are_checked() {
    for good in [
        "a",
        "orders",
        "cache.sync-2",
        "A_b.C-9",
        &"x".repeat(FEED_NAME_CHARS_MAX),
    ] {
        assert_eq!(check_feed_name(good), Ok(()), "{good:?}");
    }
    let long = "x".repeat(FEED_NAME_CHARS_MAX + 1);
    for (bad, says) in [
        ("", "empty"),
        ("a b", "' '"),
        ("feed/1", "'/'"),
        ("caf\u{e9}", "'\u{e9}'"),
        ("tab\t", "'\\t'"),
        (long.as_str(), "129 characters"),
    ] {
        let err = check_feed_name(bad).expect_err(bad);
        assert!(err.contains(says), "{bad:?}: {err}");
        assert!(err.contains("1 to 128 characters"), "{err}");
    }
}

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
