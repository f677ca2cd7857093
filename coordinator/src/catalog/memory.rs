//! The in-memory backend (`memory:`): the catalog's tables as plain rows in
//! process memory, for the deterministic simulator. Only the storage step
//! of each operation lives here; validation, the compare-and-swap
//! conditions and the checks on what is read back are the SQL backends'
//! (in `mod.rs` and [`super::codec`]).
//!
//! Never random, never iterates an unordered map, and reads tokio's clock
//! (which the simulator controls), never the wall's, so a simulation
//! replays exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use trellis_types::{ClusterId, GroupId};

use super::codec::{
    ClusterRow, CoordinatorListed, FeedListed, JobListed, MapRows, check_groups_exist,
};
use super::{COORDINATOR_ROW_EXPIRY, CatalogError, CoordinatorWrite};
use crate::map::Member;

/// The catalog's tables in process memory, one row type per SQL table and
/// in the same column types, so that reads go through the same checks
/// ([`build_map`](super::codec::build_map),
/// [`to_u64`](super::codec::to_u64)) as rows read from SQL. Ordered maps keyed
/// like the tables' primary keys give `ORDER BY` for free and keep every
/// iteration deterministic.
///
/// Every method is synchronous and checks before it changes anything, so a
/// call either happens whole or not at all; the lock is held for one method
/// call and never across an `.await` (a std `Mutex`: nothing inside waits).
#[derive(Debug)]
pub(super) struct MemoryDb {
    /// `cluster_identity.id`: drawn by the caller (the SQL backends draw it
    /// in their migration), so this stays free of randomness.
    pub(super) cluster_id: i64,
    /// `cluster`: the map epoch and the encoded slot map; `None` until
    /// bootstrapped.
    pub(super) cluster: Option<ClusterRow>,
    /// `cluster.groups_created`: how many groups it was created with (0
    /// until bootstrapped).
    pub(super) groups_created: i64,
    /// `shard_groups`: id → (version, epoch).
    pub(super) groups: BTreeMap<i64, (i64, i64)>,
    /// `members`: (group id, ordinal) → (address, pid, in sync as 0 or 1).
    pub(super) members: BTreeMap<(i64, i64), (String, i64, i64)>,
    /// `coordinators`: id → its row, times by tokio's clock.
    pub(super) coordinators: BTreeMap<String, MemoryCoordinator>,
    /// `reshard_jobs`: id → its row, times by tokio's clock.
    pub(super) jobs: BTreeMap<i64, MemoryJob>,
    /// `feed_cursors`: feed name → (cursor, last save by tokio's clock).
    pub(super) feed_cursors: BTreeMap<String, (Vec<u8>, tokio::time::Instant)>,
    /// `users`: name → password hash.
    pub(super) users: BTreeMap<String, Option<String>>,
    /// `grants`: (user, role, prefix).
    pub(super) grants: BTreeSet<(String, String, Vec<u8>)>,
    /// `auth_settings`: (enabled as 0 or 1, secret); `None` until written.
    pub(super) auth: Option<(i64, Vec<u8>)>,
}

/// A row of the in-memory `reshard_jobs` table.
#[derive(Debug)]
pub(super) struct MemoryJob {
    pub(super) version: i64,
    pub(super) state: Vec<u8>,
    pub(super) created: tokio::time::Instant,
    pub(super) updated: tokio::time::Instant,
}

/// A row of the in-memory `coordinators` table.
#[derive(Debug)]
pub(super) struct MemoryCoordinator {
    pub(super) addr: String,
    pub(super) metrics_addr: String,
    pub(super) heartbeat: tokio::time::Instant,
    pub(super) started: tokio::time::Instant,
}

impl MemoryDb {
    /// An empty catalog of cluster `cluster`.
    pub(super) fn new(cluster: ClusterId) -> MemoryDb {
        MemoryDb {
            cluster_id: i64::try_from(cluster.get()).expect("a ClusterId fits in i64"),
            cluster: None,
            groups_created: 0,
            groups: BTreeMap::new(),
            members: BTreeMap::new(),
            coordinators: BTreeMap::new(),
            jobs: BTreeMap::new(),
            feed_cursors: BTreeMap::new(),
            users: BTreeMap::new(),
            grants: BTreeSet::new(),
            auth: None,
        }
    }

    /// Creates the cluster row and `groups` (version 1, epoch 0) unless the
    /// cluster row exists. Returns whether it created them.
    pub(super) fn bootstrap(
        &mut self,
        slot_map: &[u8],
        groups: &[i64],
    ) -> Result<bool, CatalogError> {
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
        self.groups_created = groups.len() as i64;
        for id in groups {
            self.groups.insert(*id, (1, 0));
        }
        Ok(true)
    }

    /// The rows `load` reads, in the order the SQL reads them.
    pub(super) fn read_map(&self) -> MapRows {
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
    pub(super) fn cas_group(
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

    /// The storage step of `add_group`: inserts group `id` (version 1,
    /// epoch 0) unless it exists. Returns whether it did.
    pub(super) fn add_group(&mut self, id: i64) -> Result<bool, CatalogError> {
        if self.cluster.is_none() {
            return Err(CatalogError::NotBootstrapped);
        }
        if self.groups.contains_key(&id) {
            return Ok(false);
        }
        self.groups.insert(id, (1, 0));
        Ok(true)
    }

    /// The storage step of `remove_group`: deletes group `id` and its
    /// members only if the map epoch is still `map_epoch` and the group's
    /// version still `version`. Returns whether it did.
    pub(super) fn remove_group(&mut self, id: i64, version: i64, map_epoch: i64) -> bool {
        let same_map = self
            .cluster
            .as_ref()
            .is_some_and(|(epoch, _)| *epoch == map_epoch);
        let same_group = self.groups.get(&id).is_some_and(|(v, _)| *v == version);
        if !(same_map && same_group) {
            return false;
        }
        self.groups.remove(&id);
        self.members.retain(|(g, _), _| *g != id);
        true
    }

    /// The lowest and highest group id, if any group exists, and how many
    /// exist.
    pub(super) fn group_range(&self) -> (Option<i64>, Option<i64>, i64) {
        (
            self.groups.keys().next().copied(),
            self.groups.keys().next_back().copied(),
            self.groups.len() as i64,
        )
    }

    /// The storage step of `write_coordinator`, by tokio's clock.
    pub(super) fn write_coordinator(
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
    pub(super) fn list_coordinators(&self) -> Vec<CoordinatorListed> {
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
    pub(super) fn cas_slot_map(
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

    /// How many reshard jobs exist, and the highest id.
    pub(super) fn job_range(&self) -> (i64, Option<i64>) {
        (
            self.jobs.len() as i64,
            self.jobs.keys().next_back().copied(),
        )
    }

    /// The storage step of `create_job`: inserts job `id` at version 1
    /// unless the id is taken. Returns whether it did.
    pub(super) fn insert_job(&mut self, id: i64, state: &[u8]) -> bool {
        if self.jobs.contains_key(&id) {
            return false;
        }
        let now = tokio::time::Instant::now();
        self.jobs.insert(
            id,
            MemoryJob {
                version: 1,
                state: state.to_vec(),
                created: now,
                updated: now,
            },
        );
        true
    }

    /// The storage step of `save_job`: replaces job `id`'s state and bumps
    /// its version only if its version is `version`. Returns whether it did.
    pub(super) fn save_job(
        &mut self,
        id: i64,
        version: i64,
        state: &[u8],
    ) -> Result<bool, CatalogError> {
        let Some(job) = self.jobs.get_mut(&id) else {
            return Ok(false);
        };
        if job.version != version {
            return Ok(false);
        }
        job.version = version.checked_add(1).ok_or_else(|| {
            CatalogError::Invalid(format!(
                "the version {version} of reshard job {id} cannot grow further"
            ))
        })?;
        job.state = state.to_vec();
        job.updated = tokio::time::Instant::now();
        Ok(true)
    }

    /// Jobs by id with the milliseconds since their creation and last
    /// save, by tokio's clock.
    pub(super) fn list_jobs(&self) -> Vec<JobListed> {
        let now = tokio::time::Instant::now();
        let ms = |since: tokio::time::Instant| {
            i64::try_from(now.saturating_duration_since(since).as_millis()).unwrap_or(i64::MAX)
        };
        self.jobs
            .iter()
            .map(|(id, job)| {
                (
                    *id,
                    job.version,
                    job.state.clone(),
                    ms(job.created),
                    ms(job.updated),
                )
            })
            .collect()
    }

    /// The storage step of `save_feed_cursor`: replaces feed `feed`'s
    /// cursor, or inserts it while fewer than `feeds_max` feeds are kept.
    /// Returns whether it stored it.
    pub(super) fn save_feed_cursor(&mut self, feed: &str, cursor: &[u8], feeds_max: u64) -> bool {
        if !self.feed_cursors.contains_key(feed) && self.feed_cursors.len() as u64 >= feeds_max {
            return false;
        }
        self.feed_cursors.insert(
            feed.to_string(),
            (cursor.to_vec(), tokio::time::Instant::now()),
        );
        true
    }

    /// Feeds by name with their cursor and the milliseconds since their
    /// last save, by tokio's clock.
    pub(super) fn list_feed_cursors(&self) -> Vec<FeedListed> {
        let now = tokio::time::Instant::now();
        self.feed_cursors
            .iter()
            .map(|(feed, (cursor, updated))| {
                let age = now.saturating_duration_since(*updated).as_millis();
                (
                    feed.clone(),
                    cursor.clone(),
                    i64::try_from(age).unwrap_or(i64::MAX),
                )
            })
            .collect()
    }
}

/// Locks the in-memory catalog. A panic while it was held may have left a
/// change half made, which the catalog never repairs silently.
pub(super) fn lock_memory(
    memory: &Mutex<MemoryDb>,
) -> Result<MutexGuard<'_, MemoryDb>, CatalogError> {
    memory.lock().map_err(|_| {
        CatalogError::Corrupt(
            "a thread panicked while changing the in-memory catalog; it may be half changed".into(),
        )
    })
}
