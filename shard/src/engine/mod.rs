//! One replica: recovery, the participant operations, log retention and
//! replication, each change durable before it answers.
//!
//! Every mutation follows one shape: take the state lock, check, append the
//! record to the log (which gives it its LSN), apply it, release the lock,
//! then wait until the record is durable before answering. Appending under
//! the lock makes LSN order equal apply order; waiting outside it lets many
//! operations share one `fdatasync`.
//!
//! Readers never see a value before it is durable: a value's version is the
//! LSN that wrote it plus the group's version base (0 until it imports
//! data, [`crate::version_base::VersionBase`]), so a read maps the version back to
//! that LSN and waits for it.
//!
//! # Layout
//! One [`Shard`], its methods grouped by concern, each file an `impl Shard`
//! block:
//! - this file: the `Shard` struct, its configuration, [`ShardError`], the
//!   limits, and the shared steps every operation uses (`log`, `settle`),
//!   slot ownership, status;
//! - `recovery`: [`Shard::open`] (the data directory's lock and meta file,
//!   the newest snapshot, log replay) and [`Recovery`];
//! - `participant`: reads, scans, one-phase commit, the 2PC participant and
//!   anchor steps (prepare, decide, resolve, finalize, forget, lookup) and
//!   read holds;
//! - `retention`: snapshots, the snapshot loop, and the [`LogPin`]s that keep
//!   log a stream to a backup still needs;
//! - `replication`: a replica's role changes and what a backup takes from its
//!   primary (records, snapshots); the log reader for backlogs;
//! - `reshard`: the shard's side of moving slots: logged slot steps,
//!   following a map on request, export and ingest.
//!
//! This module never speaks the wire: callers convert `proto` types at the
//! edge (`server`, `replica`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;
use trellis_types::fail_stop::FailStopCause;
use trellis_types::{GroupId, Key, Lsn, MapEpoch, SlotSet, slot_of};

use crate::fail_stop::LogFailure;
use crate::fsio::File;
use crate::metrics::Metrics;
use crate::ownership::{OwnershipError, SlotState};
use crate::record::Record;
use crate::repl::{Level, Repl};
use crate::state::{Misuse, NotServed, State, StateGuard};
use crate::wal::{self, Wal, WalError};

mod feed;
mod participant;
mod recovery;
mod replication;
mod reshard;
mod retention;
#[cfg(test)]
mod test_util;

pub use feed::{
    FEED_BATCHES_BUFFERED_MAX, FEED_READ_BYTES_MAX, FEED_RESOLVED_INTERVAL, FeedBatch, FeedStart,
};
pub use participant::{BACKUP_READ_WAIT_MAX, Decided, Fenced, Resolved, Vote};
pub use recovery::Recovery;
pub use reshard::{
    ENTRY_OVERHEAD_BYTES, EXPORT_CHUNK_BYTES, IMPORTED_VERSION_MAX, INGEST_BYTES_MAX, entry_bytes,
    export_chunks,
};
pub use retention::LogPin;
use retention::LogPins;

/// A snapshot is taken once this many bytes were logged since the last one.
/// Bounds recovery time: at most this much log is replayed after the
/// snapshot.
pub const SNAPSHOT_LOG_BYTES: u64 = 64 * 1024 * 1024;
/// How often the background task checks whether a snapshot is due.
pub const SNAPSHOT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Log of a replica kept on disk after a snapshot covers it, by default:
/// a backup away for a while catches up from it instead of by snapshot.
pub const LOG_RETAIN_BYTES: u64 = 256 * 1024 * 1024;

/// Most bytes of log kept on disk beyond the retained log for catch-ups in
/// progress (see [`Shard::pin_log`]); past it, a backup that still needs
/// older records gets a snapshot instead. Bounds the disk a slow backup can
/// cost its primary.
pub const LOG_PINNED_BYTES_MAX: u64 = 1024 * 1024 * 1024;
const _: () = assert!(
    LOG_PINNED_BYTES_MAX == 1 << 30,
    "FeedHistoryGone's message names the bound"
);

/// How a replica's log is cut into segments, snapshotted and kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// A segment is closed and the next begun past this size.
    pub segment_bytes: u64,
    /// A snapshot is taken once this many bytes were logged since the last.
    pub snapshot_every_bytes: u64,
    /// Bytes of log kept after a snapshot covers them (whole segments).
    pub retain_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: wal::SEGMENT_BYTES_MAX,
            snapshot_every_bytes: SNAPSHOT_LOG_BYTES,
            retain_bytes: LOG_RETAIN_BYTES,
        }
    }
}

/// How a replica is set up.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    /// Where the snapshots, the log, the lock and the meta file live.
    pub data_dir: PathBuf,
    /// The group this replica belongs to; its data directory is bound to it.
    pub group_id: GroupId,
    /// Slot ownership until the coordinator hands out slot maps.
    pub map_epoch: MapEpoch,
    /// The slots owned under `map_epoch`.
    pub slots: SlotSet,
    /// Part of a replicated group (started with a coordinator): serves only
    /// as a primary with a lease. Otherwise a standalone replica that always
    /// serves.
    pub replicated: bool,
    /// Bytes of recent records kept in memory for backups
    /// ([`crate::repl::FEED_BYTES_MAX`] by default); a backup further
    /// behind gets a snapshot.
    pub feed_bytes_max: usize,
    /// Catch-up (snapshots and backlogs sent to backups far behind), all
    /// backups together, in bytes per second; 0 = unpaced
    /// ([`crate::pacer::CATCH_UP_BYTES_PER_SEC`] by default).
    pub catch_up_bytes_per_sec: u64,
    /// How the log is cut into segments, snapshotted and kept.
    pub log: LogConfig,
}

/// Longest a change waits for the durability it asked for before the
/// caller is told the outcome is unknown here (a dead backup is taken out
/// of the configuration well before this).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often [`Shard::log_failed`] looks again at which log is current (a
/// snapshot install replaces it).
pub const LOG_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Why a replica refused or failed an operation; the gRPC edge turns each
/// case into one status (`crate::server::status_of`).
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// The log or a snapshot failed (see [`WalError`]).
    #[error(transparent)]
    Wal(#[from] WalError),
    /// A key's slot is not this group's under the map it knows.
    #[error("key of slot {slot} is not owned by group {group} under map epoch {map_epoch}")]
    WrongShard {
        /// The first key found not owned.
        key: Key,
        /// Its slot.
        slot: u32,
        /// This replica's group.
        group: GroupId,
        /// The slot map this replica knows.
        map_epoch: MapEpoch,
    },
    /// The request was routed with a newer slot map than this replica knows.
    #[error("request routed with map epoch {got}, but this shard knows only epoch {map_epoch}")]
    StaleMap {
        /// The map epoch the request was routed with.
        got: MapEpoch,
        /// The newest this replica knows.
        map_epoch: MapEpoch,
    },
    /// The key's slot is moving between groups (frozen here, or still
    /// being copied here): the caller retries after a short backoff.
    #[error(transparent)]
    SlotMoving(OwnershipError),
    /// A resharding step asked of slots in the wrong state (a freeze of a
    /// slot not owned here, an ingest into a slot not importing, a release
    /// of a slot the map did not move). Nothing was logged.
    #[error(transparent)]
    BadStep(OwnershipError),
    /// The cutover's last copy was asked while prepared transactions or
    /// read holds remain on the frozen slots (or a slot is not frozen
    /// towards the peer): retry until the cutover's deadline.
    #[error("{0}")]
    NotDrained(String),
    /// A STALE read this backup cannot prove fresh enough
    /// ([`crate::freshness::Decline`]): the caller asks the primary.
    #[error("this backup declines the STALE read: {0}")]
    NotFresh(String),
    /// The request (or a record from the primary) is malformed or misused.
    #[error("{0}")]
    Invalid(String),
    /// A limit is reached; the caller may retry later.
    #[error("{0}")]
    Busy(String),
    /// The data directory cannot be opened (locked, another group's, corrupt).
    #[error("cannot open data directory {path}: {detail}")]
    Open {
        /// The directory or file at fault.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// Only the group's serving primary answers this.
    #[error(
        "this replica is not the serving primary of group {group} (it is {role} at epoch {epoch}); ask the group's primary"
    )]
    NotPrimary {
        /// This replica's group.
        group: GroupId,
        /// What this replica is now ([`crate::repl::Role::name`]).
        role: &'static str,
        /// The epoch it knows.
        epoch: u64,
    },
    /// The outcome is unknown here (durability not reached in time,
    /// replication stopped) or the operation must wait; ask again.
    #[error("{0}")]
    Unavailable(String),
    /// A feed asked for records after `after`, and the log (or the version
    /// history that gives their versions) no longer reaches back that far.
    /// `restored`: this replica was restored from its primary's snapshot
    /// and its log started at that record then, past `after + 1`, so it
    /// never held the records before it (the log prefix shipped with the
    /// snapshot was cut short: see ARCHITECTURE.md "Change feed").
    #[error("{}", history_gone_text(*group, *after, *restored))]
    FeedHistoryGone {
        group: GroupId,
        after: Lsn,
        restored: Option<Lsn>,
    },
}

/// FeedHistoryGone's message: why the records are gone and what to do.
fn history_gone_text(group: GroupId, after: Lsn, restored: Option<Lsn>) -> String {
    let why = match restored {
        Some(at) => format!(
            "this replica was restored from its primary's snapshot and its log starts at record \
             {at}: it never held the records before it (a snapshot carries the log registered \
             feeds pin, within LOG_PINNED_BYTES_MAX; a crash during its install, or a feed \
             registered after it, can leave part out)"
        ),
        None => "a group's log keeps --log-retain-bytes past each snapshot, and up to 1 GiB \
                 more (LOG_PINNED_BYTES_MAX) for registered feeds and running streams"
            .to_string(),
    };
    format!(
        "group {group} no longer keeps its log after position {after}; start the feed from now \
         or from a newer cursor ({why})"
    )
}

impl From<Misuse> for ShardError {
    fn from(m: Misuse) -> Self {
        ShardError::Invalid(m.0)
    }
}

/// A snapshot of a replica's counters for status reports.
#[derive(Debug, Clone)]
pub struct ShardStatus {
    /// This replica's group.
    pub group_id: GroupId,
    /// The slot map it knows.
    pub map_epoch: MapEpoch,
    /// How many slots it owns under that map.
    pub slots_owned: u32,
    /// The last record appended to the log.
    pub last_lsn: Lsn,
    /// The last record durable on this replica's disk.
    pub durable_lsn: Lsn,
    /// Entries in the index.
    pub keys: u64,
    /// Transactions prepared and not yet finalized.
    pub prepared: u64,
    /// Transaction records (decisions) kept as anchor.
    pub txn_records: u64,
}

/// One replica of a group: its state machine, its log, and its
/// replication state. Every change is checked and applied under the state
/// lock, and answered once durable at the level asked for.
pub struct Shard {
    config: ShardConfig,
    state: State,
    wal: RwLock<Wal>,
    /// Role, epoch, feed of recent records, watermarks and lease.
    pub repl: Repl,
    metrics: Arc<Metrics>,
    snapshot_running: AtomicBool,
    /// `metrics.append_bytes` when the last snapshot was taken.
    snapshot_mark_bytes: AtomicU64,
    recovery: Recovery,
    /// Paces catch-up traffic to backups.
    pub catch_up: crate::pacer::Pacer,
    /// Log positions streams to backups still need from disk.
    log_pins: std::sync::Mutex<LogPins>,
    /// The first record registered change feeds still need (0: none), as
    /// the coordinator last said.
    feed_keep_from: std::sync::atomic::AtomicU64,
    /// Where the log started after the last snapshot installed from the
    /// primary since this process started (0: none): the first record of
    /// the log prefix that came with it, or the record after the snapshot.
    /// The log before it was never here.
    restored_log_from: std::sync::atomic::AtomicU64,
    /// When recovery finished (the process's uptime in the cluster status).
    opened_at: Instant,
    /// Who may call the client-facing methods (the cluster's auth
    /// settings as a coordinator last handed them over).
    pub gate: Arc<crate::gate::ShardGate>,
    _lock: File,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("config", &self.config)
            .finish()
    }
}

fn open_err(path: &Path, detail: impl std::fmt::Display) -> ShardError {
    ShardError::Open {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

impl Shard {
    /// How long ago this shard finished opening its data.
    pub fn uptime(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.opened_at)
    }

    /// The log (replaced when a backup installs a snapshot).
    fn wal(&self) -> Wal {
        self.wal.read().expect("wal lock poisoned").clone()
    }

    /// Refuses unless this replica may answer clients now (a primary with a
    /// valid lease, or a standalone shard).
    pub fn check_serving(&self) -> Result<(), ShardError> {
        if self.repl.serving(Instant::now()) {
            return Ok(());
        }
        let (role, epoch) = self.repl.role();
        Err(ShardError::NotPrimary {
            group: self.config.group_id,
            role: role.name(),
            epoch,
        })
    }

    /// Waits until the change at `lsn` is durable at `level`, and checks
    /// that this replica is still the serving primary it was.
    async fn settle(&self, lsn: Lsn, level: Level) -> Result<(), ShardError> {
        self.settle_as(lsn, level, true).await
    }

    /// [`Shard::settle`] that does not urge the log writer: for answers
    /// nobody waits on at once (the background finalizer's FINALIZE and
    /// FORGET, appended lazily).
    async fn settle_unurged(&self, lsn: Lsn, level: Level) -> Result<(), ShardError> {
        self.settle_as(lsn, level, false).await
    }

    async fn settle_as(&self, lsn: Lsn, level: Level, urge: bool) -> Result<(), ShardError> {
        let mut marks = self.repl.subscribe_marks();
        let generation = marks.borrow().generation;
        if urge {
            self.wal().wait_durable(lsn).await?;
        } else {
            self.wal().wait_durable_unurged(lsn).await?;
        }
        if level == Level::Local {
            self.repl
                .note_durable(self.wal().durable_lsn(), Instant::now());
        } else {
            self.repl
                .recompute(self.wal().durable_lsn(), Instant::now());
            let waited = tokio::time::timeout(
                SETTLE_TIMEOUT,
                marks.wait_for(|m| m.generation != generation || m.at(level) >= lsn),
            )
            .await;
            match waited {
                Err(_) => {
                    return Err(ShardError::Unavailable(format!(
                        "record {lsn} was not replicated at {level:?} within {SETTLE_TIMEOUT:?}"
                    )));
                }
                Ok(Err(_)) => return Err(ShardError::Unavailable("replication stopped".into())),
                Ok(Ok(m)) if m.generation != generation => {
                    let (role, epoch) = self.repl.role();
                    return Err(ShardError::NotPrimary {
                        group: self.config.group_id,
                        role: role.name(),
                        epoch,
                    });
                }
                Ok(Ok(_)) => {}
            }
        }
        self.check_serving()
    }

    /// What recovery did when this replica opened.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// This replica's counters and histograms.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Every metric of this replica as of now, for one scrape: the
    /// counters and histograms, and the replication gauges.
    pub fn render_metrics(&self) -> crate::metrics::Scrape {
        let mut out = self.metrics.render();
        crate::metrics::render_repl(
            &mut out,
            &self.repl,
            self.durable_lsn(),
            self.last_lsn(),
            Instant::now(),
        );
        out
    }

    /// The version of the last record in this replica's log: no write
    /// here has a newer one.
    pub fn newest_version(&self) -> trellis_types::Version {
        self.state.version_at(self.last_lsn())
    }

    /// The group this replica belongs to.
    pub fn group_id(&self) -> GroupId {
        self.config.group_id
    }

    /// Checks that every key belongs to a slot this shard serves, under the
    /// epoch the request was routed with
    /// ([`crate::ownership::Ownership::check`]), against the copy of the
    /// ownership readers use (outside the state lock). Commits and
    /// prepares check again under the lock.
    pub fn check_owned<'a>(
        &self,
        map_epoch: MapEpoch,
        keys: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), ShardError> {
        let ownership = self.state.serving();
        if map_epoch > ownership.map_epoch() {
            return Err(ShardError::StaleMap {
                got: map_epoch,
                map_epoch: ownership.map_epoch(),
            });
        }
        for key in keys {
            let slot = slot_of(key);
            if let Err(error) = ownership.check(map_epoch, slot, crate::ownership::Access::Serve) {
                return Err(self.not_served(NotServed {
                    key: key.to_vec(),
                    slot,
                    error,
                }));
            }
        }
        Ok(())
    }

    /// The error for a key this replica may not serve.
    fn not_served(&self, not_served: NotServed) -> ShardError {
        match not_served.error {
            OwnershipError::WrongShard { map_epoch, .. } => {
                self.metrics.wrong_shard.inc();
                ShardError::WrongShard {
                    key: not_served.key,
                    slot: not_served.slot,
                    group: self.config.group_id,
                    map_epoch,
                }
            }
            OwnershipError::StaleMap { got, map_epoch } => ShardError::StaleMap { got, map_epoch },
            error @ (OwnershipError::Moving { .. } | OwnershipError::NotHandedOver { .. }) => {
                ShardError::SlotMoving(error)
            }
            error
            @ (OwnershipError::NotImporting { .. } | OwnershipError::BadTransition { .. }) => {
                ShardError::BadStep(error)
            }
        }
    }

    /// Follows a newer slot map
    /// ([`crate::ownership::Ownership::follow_map`]), under the state lock.
    /// Older or equal epochs are ignored; returns whether the map was
    /// taken. Not logged: every replica polls the map itself.
    pub fn set_slots(&self, map_epoch: MapEpoch, slots: SlotSet) -> bool {
        let Some(change) = self.state.lock().follow_map(map_epoch, &slots) else {
            return false;
        };
        if !change.taken.is_empty() {
            // Owned slots taken without a freeze: a map this replica
            // learned late (it never served them under the new map), or a
            // move made outside a job.
            tracing::warn!(
                map_epoch,
                slots = change.taken.len(),
                "slots taken by a newer map without a freeze"
            );
        }
        if !change.given.is_empty() {
            tracing::info!(
                map_epoch,
                slots = change.given.len(),
                "slots given by a newer map without an import"
            );
        }
        true
    }

    /// Appends `record` and applies it, under the state lock the caller
    /// holds. Returns its LSN; the caller waits for durability after
    /// releasing the lock.
    fn log(&self, guard: &mut StateGuard<'_>, record: &Record) -> Result<Lsn, ShardError> {
        let payload = record.encode();
        let kind = record.kind();
        let lsn = if crate::record::is_lazy(kind) {
            self.wal().append_lazy(kind, &payload)?
        } else {
            self.wal().append(kind, &payload)?
        };
        self.repl.feed.push(lsn, kind, payload.into());
        if let Err(detail) = guard.apply(lsn, record, Instant::now()) {
            // The record was checked before it was logged; failing here is a
            // bug, and continuing would let memory and log disagree.
            panic!("state machine refused record {lsn} it was just given: {detail}");
        }
        Ok(lsn)
    }

    /// Refreshes the key-count gauge after a change (counting the index's
    /// keys is skipped too while recording is off).
    fn after_write(&self) {
        if trellis_metrics::recording() {
            self.metrics.keys.set(self.state.index.len() as u64);
        }
    }

    /// This replica's counters now, for status reports.
    pub fn status(&self) -> ShardStatus {
        let guard = self.state.lock();
        let ownership = &guard.core().ownership;
        ShardStatus {
            group_id: self.config.group_id,
            map_epoch: ownership.map_epoch(),
            slots_owned: ownership.in_state(SlotState::Owned).len(),
            last_lsn: self.wal().last_lsn(),
            durable_lsn: self.wal().durable_lsn(),
            keys: self.state.index.len() as u64,
            prepared: guard.core().prepared.len() as u64,
            txn_records: guard.core().records.len() as u64,
        }
    }
    /// Resolves, with the reason, once the log writer has failed (an IO
    /// error or a full disk). From then on this replica acknowledges nothing
    /// again; the process should stop (fail-stop) so that a supervisor
    /// restarts it and recovery decides what is durable, as PostgreSQL does
    /// after a failed fsync. Meanwhile the backups take over the group.
    pub async fn log_failed(&self) -> LogFailure {
        loop {
            let mut durable = self.wal().subscribe();
            match tokio::time::timeout(LOG_WATCH_INTERVAL, durable.wait_for(|d| d.failed.is_some()))
                .await
            {
                Ok(Ok(seen)) => {
                    return LogFailure {
                        cause: seen.failed_cause.unwrap_or(FailStopCause::Io),
                        message: seen.failed.clone().unwrap_or_default(),
                    };
                }
                // That log was replaced (snapshot install): watch the new one.
                Ok(Err(_)) => tokio::time::sleep(LOG_WATCH_INTERVAL).await,
                Err(_) => {}
            }
        }
    }

    /// Makes everything pending durable and stops the log writer.
    pub fn shutdown(&self) {
        self.wal().shutdown();
    }

    /// The last record durable on this replica's disk.
    pub fn durable_lsn(&self) -> Lsn {
        self.wal().durable_lsn()
    }

    /// The last record appended to this replica's log.
    pub fn last_lsn(&self) -> Lsn {
        self.wal().last_lsn()
    }

    /// How this replica was set up.
    pub fn config(&self) -> &ShardConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use trellis_types::{SlotSet, slot_of};

    use super::test_util::config;
    use super::{Shard, ShardError};
    use crate::metrics::Metrics;

    #[test]
    fn history_gone_says_whether_retention_or_a_snapshot_install_lost_it() {
        let cut = ShardError::FeedHistoryGone {
            group: 2,
            after: 75,
            restored: None,
        }
        .to_string();
        assert!(
            cut.contains("group 2 no longer keeps its log after position 75"),
            "{cut}"
        );
        assert!(cut.contains("LOG_PINNED_BYTES_MAX"), "{cut}");
        let restored = ShardError::FeedHistoryGone {
            group: 2,
            after: 75,
            restored: Some(78),
        }
        .to_string();
        assert!(restored.contains("after position 75"), "{restored}");
        assert!(
            restored
                .contains("restored from its primary's snapshot and its log starts at record 78"),
            "{restored}"
        );
    }

    #[tokio::test]
    async fn ownership_is_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(dir.path());
        cfg.slots = SlotSet::parse(&slot_of(b"mine").to_string()).expect("slots");
        let shard = Shard::open(cfg, Arc::new(Metrics::default())).expect("open");
        shard.check_owned(1, [&b"mine"[..]]).expect("owned");
        let other = (0..1000)
            .map(|i| format!("k{i}"))
            .find(|k| slot_of(k.as_bytes()) != slot_of(b"mine"))
            .expect("some key");
        assert!(matches!(
            shard.check_owned(1, [other.as_bytes()]),
            Err(ShardError::WrongShard { .. })
        ));
        assert!(matches!(
            shard.check_owned(2, [&b"mine"[..]]),
            Err(ShardError::StaleMap { .. })
        ));
    }
}
