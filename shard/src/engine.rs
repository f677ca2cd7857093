//! One replica: recovery, and the participant operations, each durable
//! before it answers.
//!
//! Every mutation follows one shape: take the state lock, check, append the
//! record to the log (which gives it its LSN), apply it, release the lock,
//! then wait until the record is durable before answering. Appending under
//! the lock makes LSN order equal apply order; waiting outside it lets many
//! operations share one `fdatasync`.
//!
//! Readers never see a value before it is durable: a value's version is the
//! LSN that wrote it, so a read that finds a version above the durable LSN
//! waits for it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use std::time::Duration;

use tokio::time::Instant;
use trellis_types::{GroupId, Key, Lsn, MapEpoch, SlotSet, TxnId, Version, slot_of};

use crate::fsio::{self, File};
use crate::metrics::Metrics;
use crate::record::*;
use crate::repl::{Level, Repl, Role};
use crate::snapshot;
use crate::state::{
    Check, Decide, KeyView, Misuse, Outcome, Refused, Resolve, State, StateGuard, TxnRecord,
};
use crate::wal::{self, Wal, WalError};

/// A snapshot is taken once this many bytes were logged since the last one.
/// Bounds recovery time: at most this much log is replayed after the
/// snapshot.
pub const SNAPSHOT_LOG_BYTES: u64 = 64 * 1024 * 1024;
/// How often the background task checks whether a snapshot is due.
pub const SNAPSHOT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

const LOCK_FILE: &str = "LOCK";
const META_FILE: &str = "shard.meta";

/// Log of a replica kept on disk after a snapshot covers it, by default:
/// a backup away for a while catches up from it instead of by snapshot.
pub const LOG_RETAIN_BYTES: u64 = 256 * 1024 * 1024;

/// Most bytes of log kept on disk beyond the retained log for catch-ups in
/// progress (see [`Shard::pin_log`]); past it, a backup that still needs
/// older records gets a snapshot instead. Bounds the disk a slow backup can
/// cost its primary.
pub const LOG_PINNED_BYTES_MAX: u64 = 1024 * 1024 * 1024;

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
    pub data_dir: PathBuf,
    pub group_id: GroupId,
    /// Slot ownership until the coordinator hands out slot maps.
    pub map_epoch: MapEpoch,
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
    pub log: LogConfig,
}

/// Longest a change waits for the durability it asked for before the
/// caller is told the outcome is unknown here (a dead backup is taken out
/// of the configuration well before this).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often [`Shard::log_failed`] looks again at which log is current (a
/// snapshot install replaces it).
pub const LOG_WATCH_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("key of slot {slot} is not owned by group {group} under map epoch {map_epoch}")]
    WrongShard {
        key: Key,
        slot: u32,
        group: GroupId,
        map_epoch: MapEpoch,
    },
    #[error("request routed with map epoch {got}, but this shard knows only epoch {map_epoch}")]
    StaleMap { got: MapEpoch, map_epoch: MapEpoch },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Busy(String),
    #[error("cannot open data directory {path}: {detail}")]
    Open { path: PathBuf, detail: String },
    #[error(
        "this replica is not the serving primary of group {group} (it is {role} at epoch {epoch}); ask the group's primary"
    )]
    NotPrimary {
        group: GroupId,
        role: &'static str,
        epoch: u64,
    },
    #[error("{0}")]
    Unavailable(String),
}

impl From<Misuse> for ShardError {
    fn from(m: Misuse) -> Self {
        ShardError::Invalid(m.0)
    }
}

struct SlotConfig {
    map_epoch: MapEpoch,
    slots: SlotSet,
}

/// A prepare's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vote {
    /// Prepared; if it commits, its writes here get this version.
    Yes {
        version: Version,
    },
    No(Refused),
    /// Already finalized here: the outcome.
    Finalized(Outcome),
}

/// A snapshot of a replica's counters for status reports.
#[derive(Debug, Clone)]
pub struct ShardStatus {
    pub group_id: GroupId,
    pub map_epoch: MapEpoch,
    pub slots_owned: u32,
    pub last_lsn: Lsn,
    pub durable_lsn: Lsn,
    pub keys: u64,
    pub prepared: u64,
    pub txn_records: u64,
}

/// What recovery did, for the start-up log line and tests.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    pub snapshot_lsn: Lsn,
    pub replayed: u64,
    pub last_lsn: Lsn,
    pub torn_bytes: u64,
    pub took: Duration,
}

pub struct Shard {
    config: ShardConfig,
    state: State,
    wal: RwLock<Wal>,
    pub repl: Repl,
    slots: RwLock<SlotConfig>,
    metrics: Arc<Metrics>,
    snapshot_running: AtomicBool,
    /// `metrics.append_bytes` when the last snapshot was taken.
    snapshot_mark_bytes: AtomicU64,
    recovery: Recovery,
    /// Paces catch-up traffic to backups.
    pub catch_up: crate::pacer::Pacer,
    /// Log positions streams to backups still need from disk.
    log_pins: std::sync::Mutex<LogPins>,
    /// When recovery finished (the process's uptime in the cluster status).
    opened_at: Instant,
    _lock: File,
}

#[derive(Default)]
struct LogPins {
    next_id: u64,
    /// By pin: the first record it needs.
    from: std::collections::BTreeMap<u64, Lsn>,
}

/// Keeps the log on disk from a record on (within
/// [`LOG_PINNED_BYTES_MAX`]) while a stream to a backup may need it: a
/// backup sent a snapshot, or a backlog, must get the records after it even
/// when snapshots come meanwhile. Released when dropped.
pub struct LogPin {
    shard: Arc<Shard>,
    id: u64,
}

impl LogPin {
    /// The stream now needs records from `from` on.
    pub fn advance(&self, from: Lsn) {
        let mut pins = self.shard.log_pins.lock().expect("log pins lock poisoned");
        if let Some(at) = pins.from.get_mut(&self.id) {
            *at = from;
        }
    }
}

impl Drop for LogPin {
    fn drop(&mut self) {
        self.shard
            .log_pins
            .lock()
            .expect("log pins lock poisoned")
            .from
            .remove(&self.id);
    }
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
    /// Opens (or creates) the replica in `config.data_dir`: loads the newest
    /// snapshot, replays the log after it, cuts a torn tail, and starts the
    /// log writer. Refuses to start on corruption, naming file and offset.
    pub fn open(config: ShardConfig, metrics: Arc<Metrics>) -> Result<Arc<Shard>, ShardError> {
        let started = std::time::Instant::now();
        let dir = &config.data_dir;
        fsio::create_dir_all(dir).map_err(|e| open_err(dir, e))?;
        let lock = fsio::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(|e| open_err(dir, e))?;
        // flock; a no-op inside a simulation, where each host has a
        // filesystem of its own (see fsio::File::try_lock).
        lock.try_lock().map_err(|_| {
            open_err(
                dir,
                "another process holds its LOCK file (is a shard already running on it?)",
            )
        })?;
        check_meta(dir, config.group_id)?;

        let state = State::default();
        let now = Instant::now();
        let mut recovery = Recovery::default();
        if let Some((lsn, path)) = snapshot::list(dir)?.into_iter().next() {
            let capture = snapshot::read(&path)?;
            state
                .lock()
                .restore(capture, now)
                .map_err(|e| open_err(&path, format!("snapshot cannot be loaded: {e}")))?;
            recovery.snapshot_lsn = lsn;
        }
        let repl = Repl::new(!config.replicated, config.feed_bytes_max, now);
        let replay = {
            let mut guard = state.lock();
            wal::replay(dir, recovery.snapshot_lsn, |raw| {
                let record = Record::decode(raw.kind, raw.payload)?;
                guard.apply(raw.lsn, &record, now)?;
                // What backups may need next is what was logged last.
                repl.feed.push(raw.lsn, raw.kind, raw.payload);
                Ok(())
            })?
        };
        if replay.last_lsn > 0 && replay.records == 0 {
            repl.feed.reset(replay.last_lsn);
        }
        recovery.replayed = replay.records;
        recovery.last_lsn = replay.last_lsn;
        recovery.torn_bytes = replay.torn_bytes;
        recovery.took = started.elapsed();

        metrics
            .keys
            .store(state.index.len() as u64, Ordering::Relaxed);
        metrics
            .prepared
            .store(state.lock().core().prepared.len() as u64, Ordering::Relaxed);
        let wal = Wal::open_with(
            dir,
            replay.last_lsn,
            metrics.clone(),
            config.log.segment_bytes,
        )?;
        let slots = RwLock::new(SlotConfig {
            map_epoch: config.map_epoch,
            slots: config.slots.clone(),
        });
        let catch_up = crate::pacer::Pacer::new(config.catch_up_bytes_per_sec);
        Ok(Arc::new(Shard {
            catch_up,
            config,
            state,
            wal: RwLock::new(wal),
            repl,
            slots,
            metrics,
            snapshot_running: AtomicBool::new(false),
            snapshot_mark_bytes: AtomicU64::new(0),
            recovery,
            log_pins: std::sync::Mutex::new(LogPins::default()),
            opened_at: Instant::now(),
            _lock: lock,
        }))
    }

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
        let mut marks = self.repl.subscribe_marks();
        let generation = marks.borrow().generation;
        self.wal().wait_durable(lsn).await?;
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

    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Every metric of this replica in the Prometheus text format: the
    /// counters and histograms, and the replication gauges.
    pub fn render_metrics(&self) -> String {
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

    pub fn group_id(&self) -> GroupId {
        self.config.group_id
    }

    /// Checks that every key belongs to a slot this shard owns under the
    /// epoch the request was routed with.
    pub fn check_owned<'a>(
        &self,
        map_epoch: MapEpoch,
        keys: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), ShardError> {
        let slots = self.slots.read().expect("slot config lock poisoned");
        if map_epoch > slots.map_epoch {
            return Err(ShardError::StaleMap {
                got: map_epoch,
                map_epoch: slots.map_epoch,
            });
        }
        for key in keys {
            let slot = slot_of(key);
            if !slots.slots.contains(slot) {
                self.metrics.wrong_shard.fetch_add(1, Ordering::Relaxed);
                return Err(ShardError::WrongShard {
                    key: key.to_vec(),
                    slot,
                    group: self.config.group_id,
                    map_epoch: slots.map_epoch,
                });
            }
        }
        Ok(())
    }

    /// Installs a newer slot map. Older or equal epochs are ignored.
    pub fn set_slots(&self, map_epoch: MapEpoch, slots: SlotSet) -> bool {
        let mut config = self.slots.write().expect("slot config lock poisoned");
        if map_epoch <= config.map_epoch {
            return false;
        }
        *config = SlotConfig { map_epoch, slots };
        true
    }

    /// Appends `record` and applies it, under the state lock the caller
    /// holds. Returns its LSN; the caller waits for durability after
    /// releasing the lock.
    fn log(&self, guard: &mut StateGuard<'_>, record: &Record) -> Result<Lsn, ShardError> {
        let payload = record.encode();
        let lsn = self.wal().append(record.kind(), &payload)?;
        self.repl.feed.push(lsn, record.kind(), &payload);
        if let Err(detail) = guard.apply(lsn, record, Instant::now()) {
            // The record was checked before it was logged; failing here is a
            // bug, and continuing would let memory and log disagree.
            panic!("state machine refused record {lsn} it was just given: {detail}");
        }
        Ok(lsn)
    }

    fn after_write(&self) {
        self.metrics
            .keys
            .store(self.state.index.len() as u64, Ordering::Relaxed);
    }

    /// Reads keys: the committed value and version of each, and the write
    /// lock of a prepared transaction if one holds the key. Waits until
    /// what it returns is durable.
    pub async fn read(&self, keys: &[Key]) -> Result<Vec<KeyView>, ShardError> {
        let views: Vec<KeyView> = keys.iter().map(|k| self.state.view(k)).collect();
        self.metrics
            .reads
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        let newest = views
            .iter()
            .filter_map(|v| v.entry.as_ref().map(|e| e.version()))
            .max()
            .unwrap_or(0);
        if newest > self.repl.marks().sync {
            self.metrics.read_lock_waits.fetch_add(1, Ordering::Relaxed);
        }
        // Never show a value a failover could lose.
        self.settle(newest, Level::Sync).await?;
        Ok(views)
    }

    /// Keys starting with `prefix`, in key order, at most `limit`. Returns
    /// whether more matched. Scans the whole index: O(keys).
    pub async fn scan(
        &self,
        prefix: &[u8],
        limit: usize,
    ) -> Result<(Vec<(Key, KeyView)>, bool), ShardError> {
        let mut keys: Vec<Key> = self
            .state
            .index
            .iter()
            .filter(|e| e.key().starts_with(prefix) && e.value().value().is_some())
            .map(|e| e.key().to_vec())
            .chain(
                self.state
                    .locks
                    .iter()
                    .filter(|l| l.key().starts_with(prefix) && l.writer.is_some())
                    .map(|l| l.key().to_vec()),
            )
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let truncated = keys.len() > limit;
        keys.truncate(limit);
        let views = self.read(&keys).await?;
        Ok((keys.into_iter().zip(views).collect(), truncated))
    }

    /// One-phase commit: validate every read version, refuse locked keys,
    /// append one record, apply, answer once durable. Idempotent by `txn`.
    pub async fn commit_local(
        &self,
        txn: TxnId,
        reads: Vec<ReadRec>,
        writes: Vec<WriteRec>,
        level: Level,
    ) -> Result<Outcome, ShardError> {
        self.wal().reserve().await?;
        let outcome = {
            let mut guard = self.state.lock_at(Instant::now());
            match guard.check_commit_local(&txn, &reads, &writes)? {
                Check::Proceed => {
                    let record = Record::CommitLocal(CommitLocalRec {
                        txn_id: txn.as_bytes().to_vec(),
                        writes,
                    });
                    self.log(&mut guard, &record)?;
                    self.metrics.commits_local.fetch_add(1, Ordering::Relaxed);
                    guard
                        .outcome(&txn)
                        .cloned()
                        .expect("apply records the outcome")
                }
                Check::Done(outcome) => outcome,
                Check::Refused(refused) => {
                    self.count_refusal(&refused);
                    guard.remember_refusal(txn, refused.clone());
                    Outcome::Aborted {
                        refused: Box::new(refused),
                        lsn: 0,
                    }
                }
                Check::AlreadyPrepared { .. } => {
                    unreachable!("commit_local never answers AlreadyPrepared")
                }
            }
        };
        self.after_write();
        self.settle(outcome.lsn(), level).await?;
        Ok(outcome)
    }

    fn count_refusal(&self, refused: &Refused) {
        let counter = match refused.reason {
            crate::state::Refusal::Conflict => &self.metrics.refusals_conflict,
            _ => &self.metrics.refusals_locked,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// 2PC prepare: validate, lock, append a PREPARE record, vote YES once
    /// it is durable. Idempotent by transaction id.
    pub async fn prepare(&self, rec: PrepareRec, level: Level) -> Result<Vote, ShardError> {
        let txn = TxnId::from_bytes(&rec.txn_id).map_err(|e| ShardError::Invalid(e.to_string()))?;
        self.wal().reserve().await?;
        let (vote, lsn) = {
            let mut guard = self.state.lock_at(Instant::now());
            match guard.check_prepare(&txn, &rec.reads, &rec.writes) {
                Check::Proceed => {
                    let lsn = self.log(&mut guard, &Record::Prepare(rec))?;
                    self.metrics.prepares.fetch_add(1, Ordering::Relaxed);
                    self.metrics
                        .prepared
                        .store(guard.core().prepared.len() as u64, Ordering::Relaxed);
                    (Vote::Yes { version: lsn }, lsn)
                }
                Check::AlreadyPrepared { lsn } => (Vote::Yes { version: lsn }, lsn),
                Check::Done(outcome) => {
                    let lsn = outcome.lsn();
                    (Vote::Finalized(outcome), lsn)
                }
                Check::Refused(refused) => {
                    self.count_refusal(&refused);
                    (Vote::No(refused), 0)
                }
            }
        };
        self.settle(lsn, level.max(Level::Semi)).await?;
        Ok(vote)
    }

    /// Records the decision at the anchor unless one stands already (the
    /// rules: [`StateGuard::check_decide`]); returns the decision that
    /// stands (true = commit) once durable.
    pub async fn decide(
        &self,
        txn: TxnId,
        commit: bool,
        participants: Vec<GroupId>,
        level: Level,
    ) -> Result<bool, ShardError> {
        self.wal().reserve().await?;
        let (commit, lsn) = {
            let mut guard = self.state.lock();
            match guard.check_decide(&txn, commit) {
                Ok(Decide::Stands { commit, lsn }) => (commit, lsn),
                Ok(Decide::Record { commit }) => {
                    let record = Record::Decide(DecideRec {
                        txn_id: txn.as_bytes().to_vec(),
                        commit,
                        participants,
                    });
                    let lsn = self.log(&mut guard, &record)?;
                    self.metrics.decisions.fetch_add(1, Ordering::Relaxed);
                    (commit, lsn)
                }
                Err(refused) => return Err(ShardError::Busy(refused.message)),
            }
        };
        self.settle(lsn, level.max(Level::Semi)).await?;
        Ok(commit)
    }

    /// The anchor's answer for an in-doubt transaction: the recorded
    /// decision, or a durable ABORT if none exists (presumed abort).
    ///
    /// The anchor is always a participant (it owns the smallest written
    /// key), so once its record is forgotten its own finalized outcome still
    /// answers: a committed transaction is never presumed aborted while this
    /// replica remembers it ([`crate::state::OUTCOMES_MAX`]).
    pub async fn resolve(&self, txn: TxnId) -> Result<TxnRecord, ShardError> {
        let check = self.state.lock().check_resolve(&txn);
        if let Resolve::Committed { lsn } = check {
            self.settle(lsn, Level::Sync).await?;
            return Ok(TxnRecord {
                commit: true,
                participants: Vec::new(),
                lsn,
            });
        }
        let commit = self.decide(txn, false, Vec::new(), Level::Semi).await?;
        Ok(self.state.lock().resolved(&txn, commit))
    }

    /// Applies (commit) or discards (abort) a prepared transaction and
    /// releases its locks. `None` when nothing is known of it here (never
    /// prepared, or forgotten long ago) and the decision is commit.
    pub async fn finalize(&self, txn: TxnId, commit: bool) -> Result<Option<Outcome>, ShardError> {
        let mut outcomes = self.finalize_many(&[(txn, commit)]).await?;
        Ok(outcomes.pop().expect("one outcome per transaction"))
    }

    /// [`Shard::finalize`] for many transactions at once: one pass under the
    /// state lock and one wait for durability.
    pub async fn finalize_many(
        &self,
        txns: &[(TxnId, bool)],
    ) -> Result<Vec<Option<Outcome>>, ShardError> {
        self.wal().reserve().await?;
        let outcomes: Vec<Option<Outcome>> = {
            let mut guard = self.state.lock();
            let mut out = Vec::with_capacity(txns.len());
            for (txn, commit) in txns {
                let outcome = if let Some(outcome) = guard.outcome(txn).cloned() {
                    Some(outcome)
                } else if guard.prepared(txn).is_some() || !commit {
                    let record = Record::Finalize(FinalizeRec {
                        txn_id: txn.as_bytes().to_vec(),
                        commit: *commit,
                    });
                    self.log(&mut guard, &record)?;
                    self.metrics.finalizes.fetch_add(1, Ordering::Relaxed);
                    guard.outcome(txn).cloned()
                } else {
                    None
                };
                out.push(outcome);
            }
            self.metrics
                .prepared
                .store(guard.core().prepared.len() as u64, Ordering::Relaxed);
            out
        };
        self.after_write();
        let newest = outcomes
            .iter()
            .flatten()
            .map(Outcome::lsn)
            .max()
            .unwrap_or(0);
        self.settle(newest, Level::Semi).await?;
        Ok(outcomes)
    }

    /// Drops transaction records (every participant has finalized).
    pub async fn forget(&self, txns: Vec<TxnId>) -> Result<u32, ShardError> {
        self.wal().reserve().await?;
        let (count, lsn) = {
            let mut guard = self.state.lock();
            let known: Vec<TxnId> = txns
                .into_iter()
                .filter(|t| guard.record(t).is_some())
                .collect();
            if known.is_empty() {
                return Ok(0);
            }
            let record = Record::Forget(ForgetRec {
                txn_ids: known.iter().map(|t| t.as_bytes().to_vec()).collect(),
            });
            (known.len() as u32, self.log(&mut guard, &record)?)
        };
        self.settle(lsn, Level::Local).await?;
        Ok(count)
    }

    /// Prepared transactions at least `older_than` old, oldest first.
    pub fn list_prepared(
        &self,
        older_than: Duration,
        limit: usize,
    ) -> Vec<(TxnId, PrepareRec, Duration)> {
        let now = Instant::now();
        let guard = self.state.lock();
        let mut out: Vec<_> = guard
            .core()
            .prepared
            .iter()
            .map(|(txn, p)| (*txn, p.rec.clone(), now.saturating_duration_since(p.since)))
            .filter(|(_, _, age)| *age >= older_than)
            .collect();
        out.sort_by_key(|t| std::cmp::Reverse(t.2));
        out.truncate(limit);
        out
    }

    /// What this replica knows of `txn`: (recorded decision as anchor,
    /// remembered outcome, prepared here). Waits until what it reports is
    /// durable.
    pub async fn lookup(
        &self,
        txn: TxnId,
    ) -> Result<(Option<bool>, Option<bool>, bool), ShardError> {
        let (record, outcome, prepared, lsn) = {
            let guard = self.state.lock();
            let record = guard.record(&txn).map(|r| (r.commit, r.lsn));
            let outcome = guard
                .outcome(&txn)
                .map(|o| (matches!(o, Outcome::Committed { .. }), o.lsn()));
            let prepared = guard.prepared(&txn).map(|p| p.lsn);
            let lsn = [record.map(|r| r.1), outcome.map(|o| o.1), prepared]
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(0);
            (
                record.map(|r| r.0),
                outcome.map(|o| o.0),
                prepared.is_some(),
                lsn,
            )
        };
        self.settle(lsn, Level::Sync).await?;
        Ok((record, outcome, prepared))
    }

    /// Read-only validation: every read version is current and not
    /// write-locked by another transaction. Logs nothing.
    ///
    /// With `hold`, the reads are also held against writers until
    /// [`Shard::release_holds`] or [`trellis_types::limits::READ_HOLD_MAX`],
    /// so a coordinator validating at several groups gets one instant at
    /// which every read was current.
    pub fn validate_reads(&self, txn: TxnId, reads: &[ReadRec], hold: bool) -> Result<(), Refused> {
        let now = Instant::now();
        let mut guard = self.state.lock_at(now);
        if hold {
            guard.hold_reads(&txn, reads, now)
        } else {
            guard.validate(&txn, reads, &[])
        }
    }

    /// Drops the read holds `txn` took on `keys`; whether they were all
    /// still held (see [`crate::state::StateGuard::release_holds`]).
    pub fn release_holds(&self, txn: TxnId, keys: &[Key]) -> bool {
        self.state.lock_at(Instant::now()).release_holds(&txn, keys)
    }

    pub fn status(&self) -> ShardStatus {
        let slots = self.slots.read().expect("slot config lock poisoned");
        let guard = self.state.lock();
        ShardStatus {
            group_id: self.config.group_id,
            map_epoch: slots.map_epoch,
            slots_owned: slots.slots.len(),
            last_lsn: self.wal().last_lsn(),
            durable_lsn: self.wal().durable_lsn(),
            keys: self.state.index.len() as u64,
            prepared: guard.core().prepared.len() as u64,
            txn_records: guard.core().records.len() as u64,
        }
    }

    /// Keeps the log from `from` on (see [`LogPin`]).
    pub fn pin_log(self: &Arc<Self>, from: Lsn) -> LogPin {
        let mut pins = self.log_pins.lock().expect("log pins lock poisoned");
        let id = pins.next_id;
        pins.next_id += 1;
        pins.from.insert(id, from);
        LogPin {
            shard: self.clone(),
            id,
        }
    }

    /// The first record any stream still needs from disk.
    fn lowest_log_pin(&self) -> Option<Lsn> {
        let pins = self.log_pins.lock().expect("log pins lock poisoned");
        pins.from.values().copied().min()
    }

    /// Writes a snapshot of the current state, then deletes older snapshots
    /// and the log segments it covers. Returns the snapshot's LSN, or
    /// `None` if one is already being written.
    pub async fn snapshot(self: &Arc<Self>) -> Result<Option<Lsn>, ShardError> {
        if self.snapshot_running.swap(true, Ordering::AcqRel) {
            return Ok(None);
        }
        let result = self.snapshot_inner().await;
        self.snapshot_running.store(false, Ordering::Release);
        result.map(Some)
    }

    async fn snapshot_inner(self: &Arc<Self>) -> Result<Lsn, ShardError> {
        let mark = self.metrics.append_bytes.load(Ordering::Relaxed);
        let capture = self.state.lock().capture();
        let lsn = capture.lsn;
        // Never put in a snapshot what the log could still lose.
        self.wal().wait_durable(lsn).await?;
        let this = self.clone();
        fsio::blocking(move || -> Result<(), ShardError> {
            let dir = &this.config.data_dir;
            snapshot::write(dir, &capture)?;
            snapshot::delete_older(dir, lsn)?;
            let wal = this.wal();
            let retain = this.config.log.retain_bytes;
            match this.lowest_log_pin() {
                None => {
                    wal.delete_through(lsn, retain)?;
                }
                Some(pin) => {
                    // What streams still need stays, up to a bound.
                    wal.delete_through(lsn.min(pin.saturating_sub(1)), retain)?;
                    wal.delete_through(lsn, retain.saturating_add(LOG_PINNED_BYTES_MAX))?;
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| ShardError::Invalid(format!("snapshot task failed: {e}")))??;
        self.snapshot_mark_bytes.store(mark, Ordering::Relaxed);
        self.metrics.snapshots.fetch_add(1, Ordering::Relaxed);
        tracing::info!(lsn, "snapshot written");
        Ok(lsn)
    }

    /// Runs forever: takes a snapshot whenever
    /// [`LogConfig::snapshot_every_bytes`] were logged since the last one.
    pub async fn snapshot_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SNAPSHOT_CHECK_INTERVAL);
        loop {
            tick.tick().await;
            let purged = self.state.lock().purge_expired_holds(Instant::now());
            if purged > 0 {
                tracing::debug!(purged, "dropped expired read holds");
            }
            let logged = self.metrics.append_bytes.load(Ordering::Relaxed);
            if logged.saturating_sub(self.snapshot_mark_bytes.load(Ordering::Relaxed))
                >= self.config.log.snapshot_every_bytes
                && let Err(err) = self.snapshot().await
            {
                tracing::error!(%err, "snapshot failed; the log keeps growing until one succeeds");
            }
        }
    }

    /// Resolves, with the reason, once the log writer has failed (an IO
    /// error or a full disk). From then on this replica acknowledges nothing
    /// again; the process should stop (fail-stop) so that a supervisor
    /// restarts it and recovery decides what is durable, as PostgreSQL does
    /// after a failed fsync. Meanwhile the backups take over the group.
    pub async fn log_failed(&self) -> String {
        loop {
            let mut durable = self.wal().subscribe();
            match tokio::time::timeout(LOG_WATCH_INTERVAL, durable.wait_for(|d| d.failed.is_some()))
                .await
            {
                Ok(Ok(seen)) => return seen.failed.clone().unwrap_or_default(),
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

    /// A reader of this replica's log on disk from `from` on; `None` when
    /// the log no longer reaches back that far (a snapshot covered it and
    /// its segments were deleted).
    pub async fn log_reader(&self, from: Lsn) -> Result<Option<wal::LogReader>, ShardError> {
        let dir = self.config.data_dir.clone();
        fsio::blocking(move || wal::LogReader::open(&dir, from))
            .await
            .map_err(|e| ShardError::Invalid(format!("log reader task failed: {e}")))?
            .map_err(ShardError::from)
    }

    pub fn durable_lsn(&self) -> Lsn {
        self.wal().durable_lsn()
    }

    pub fn last_lsn(&self) -> Lsn {
        self.wal().last_lsn()
    }

    pub fn config(&self) -> &ShardConfig {
        &self.config
    }

    /// Where each primary epoch starts in this replica's log.
    pub fn epochs(&self) -> Vec<(u64, Lsn)> {
        self.state.lock().core().epochs.clone()
    }

    /// Becomes the group's primary at `epoch`: logs the epoch's start (so
    /// backups can tell where their logs part from this one) and starts
    /// serving once the backups grant a lease.
    pub fn become_primary(
        &self,
        epoch: u64,
        config: crate::role::GroupConfig,
    ) -> Result<(), ShardError> {
        let mut guard = self.state.lock();
        // The role first, under the state lock: from here no record of the
        // old primary is applied (see apply_replicated).
        self.repl.set_role(
            Role::Primary,
            epoch,
            Some(config),
            self.durable_lsn(),
            Instant::now(),
        );
        if guard.core().epochs.last().is_none_or(|(e, _)| *e < epoch) {
            self.log(&mut guard, &Record::NewEpoch(NewEpochRec { epoch }))?;
        }
        drop(guard);
        self.metrics.promotions.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Backup: appends and applies records streamed by the primary, in
    /// order. Returns the last LSN appended.
    pub fn apply_replicated(
        &self,
        records: &[trellis_proto::shard::v1::ReplicaRecord],
    ) -> Result<Lsn, ShardError> {
        let wal = self.wal();
        let mut guard = self.state.lock();
        // Under the state lock: a replica that became primary (which it
        // does under this lock) takes no more records from the old one.
        let (role, _) = self.repl.role();
        if !matches!(role, Role::Backup | Role::Learner) {
            return Err(ShardError::Invalid(format!(
                "a {} takes no replicated records",
                role.name()
            )));
        }
        let mut last = wal.last_lsn();
        for r in records {
            if r.lsn != last + 1 {
                return Err(ShardError::Invalid(format!(
                    "the primary sent record {} but this log ends at {last}",
                    r.lsn
                )));
            }
            let kind = u8::try_from(r.kind)
                .map_err(|_| ShardError::Invalid(format!("record kind {} out of range", r.kind)))?;
            let record = Record::decode(kind, &r.payload).map_err(ShardError::Invalid)?;
            let lsn = wal.append(kind, &r.payload)?;
            debug_assert_eq!(lsn, r.lsn, "appends happen only under the state lock");
            if let Err(detail) = guard.apply(lsn, &record, Instant::now()) {
                panic!("state machine refused replicated record {lsn}: {detail}");
            }
            self.repl.feed.push(lsn, kind, &r.payload);
            last = lsn;
        }
        drop(guard);
        self.after_write();
        self.metrics.prepared.store(
            self.state.lock().core().prepared.len() as u64,
            Ordering::Relaxed,
        );
        Ok(last)
    }

    /// Backup: waits until `lsn` is durable here.
    pub async fn wait_durable(&self, lsn: Lsn) -> Result<(), ShardError> {
        Ok(self.wal().wait_durable(lsn).await?)
    }

    /// The whole state, for a backup that needs a snapshot.
    pub fn capture(&self) -> crate::state::Capture {
        self.state.lock().capture()
    }

    /// Backup: replaces everything with the primary's snapshot. The old log
    /// and snapshots are deleted first, then the new snapshot is written
    /// and the log restarts after it. (A crash in between leaves an empty
    /// replica, which catches up again; never a mix of old and new.)
    pub fn install_snapshot(&self, capture: crate::state::Capture) -> Result<(), ShardError> {
        // Not while a local snapshot is being written: it would delete the
        // installed one as older (or keep old segments). The backup retries.
        if self.snapshot_running.swap(true, Ordering::AcqRel) {
            return Err(ShardError::Unavailable(
                "a local snapshot is being written; installing the primary's later".into(),
            ));
        }
        let result = self.install_snapshot_inner(capture);
        self.snapshot_running.store(false, Ordering::Release);
        result
    }

    fn install_snapshot_inner(&self, capture: crate::state::Capture) -> Result<(), ShardError> {
        let dir = self.config.data_dir.clone();
        let lsn = capture.lsn;
        let mut guard = self.state.lock();
        let mut wal_slot = self.wal.write().expect("wal lock poisoned");
        wal_slot.shutdown();
        for segment in wal::list_segments(&dir)? {
            fsio::remove_file(&segment.path).map_err(|e| open_err(&segment.path, e))?;
        }
        for (_, path) in snapshot::list(&dir)? {
            fsio::remove_file(&path).map_err(|e| open_err(&path, e))?;
        }
        wal::sync_dir(&dir)?;
        snapshot::write(&dir, &capture)?;
        *wal_slot = Wal::open_with(
            &dir,
            lsn,
            self.metrics.clone(),
            self.config.log.segment_bytes,
        )?;
        drop(wal_slot);
        guard.reset();
        guard
            .restore(capture, Instant::now())
            .map_err(|e| ShardError::Invalid(format!("snapshot from the primary: {e}")))?;
        self.repl.feed.reset(lsn);
        drop(guard);
        self.after_write();
        self.metrics
            .snapshot_installs
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(lsn, "installed a snapshot from the primary");
        Ok(())
    }
}

/// Records which group a data directory belongs to, and refuses to open it
/// as another group's.
fn check_meta(dir: &Path, group_id: GroupId) -> Result<(), ShardError> {
    let path = dir.join(META_FILE);
    match fsio::read_to_string(&path) {
        Ok(text) => {
            let found = text
                .lines()
                .find_map(|l| l.strip_prefix("group_id="))
                .and_then(|v| v.trim().parse::<GroupId>().ok())
                .ok_or_else(|| open_err(&path, "unreadable shard.meta"))?;
            if found != group_id {
                return Err(open_err(
                    dir,
                    format!(
                        "it holds group {found}'s data, not group {group_id}'s; pass --group {found} or use another directory"
                    ),
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = dir.join("shard.meta.tmp");
            fsio::write(&tmp, format!("group_id={group_id}\n"))
                .and_then(|()| File::open(&tmp)?.sync_all())
                .and_then(|()| fsio::rename(&tmp, &path))
                .map_err(|e| open_err(&path, e))?;
            wal::sync_dir(dir)?;
            Ok(())
        }
        Err(e) => Err(open_err(&path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> ShardConfig {
        ShardConfig {
            data_dir: dir.to_path_buf(),
            group_id: 1,
            map_epoch: 1,
            slots: SlotSet::all(),
            replicated: false,
            feed_bytes_max: crate::repl::FEED_BYTES_MAX,
            catch_up_bytes_per_sec: crate::pacer::CATCH_UP_BYTES_PER_SEC,
            log: LogConfig::default(),
        }
    }

    fn put(k: &str, v: &str) -> WriteRec {
        WriteRec {
            key: k.into(),
            value: Some(v.into()),
        }
    }

    fn txn(n: u32) -> TxnId {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&n.to_le_bytes());
        TxnId(id)
    }

    async fn value_of(shard: &Shard, key: &str) -> Option<(Vec<u8>, u64)> {
        let views = shard.read(&[key.as_bytes().to_vec()]).await.expect("read");
        views[0]
            .entry
            .as_ref()
            .and_then(|e| e.value().map(|v| (v.to_vec(), e.version())))
    }

    #[tokio::test]
    async fn snapshot_plus_replay_equals_live_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = Shard::open(config(dir.path()), Arc::new(Metrics::default())).expect("open");
        for i in 0..200u32 {
            let w = if i % 10 == 9 {
                WriteRec {
                    key: format!("k{}", i % 50).into(),
                    value: None,
                }
            } else {
                put(&format!("k{}", i % 50), &format!("v{i}"))
            };
            shard
                .commit_local(txn(i), vec![], vec![w], Level::Sync)
                .await
                .expect("commit");
            if i == 120 {
                assert!(shard.snapshot().await.expect("snapshot").is_some());
            }
        }
        let prepared = PrepareRec {
            txn_id: txn(1000).0.to_vec(),
            reads: vec![ReadRec {
                key: b"k1".to_vec(),
                version: value_of(&shard, "k1").await.map_or(0, |v| v.1),
            }],
            writes: vec![put("k2", "prepared")],
            anchor: 1,
            participants: vec![1, 2],
        };
        assert!(matches!(
            shard.prepare(prepared, Level::Sync).await.expect("prepare"),
            Vote::Yes { .. }
        ));
        let mut live = Vec::new();
        for i in 0..50 {
            live.push(value_of(&shard, &format!("k{i}")).await);
        }
        let live_status = shard.status();
        shard.shutdown();
        drop(shard);

        let shard = Shard::open(config(dir.path()), Arc::new(Metrics::default())).expect("reopen");
        assert!(shard.recovery().snapshot_lsn > 0);
        assert!(shard.recovery().replayed > 0 && shard.recovery().replayed < 200);
        for (i, expected) in live.iter().enumerate() {
            assert_eq!(&value_of(&shard, &format!("k{i}")).await, expected, "k{i}");
        }
        let status = shard.status();
        assert_eq!(
            (status.last_lsn, status.prepared, status.keys),
            (live_status.last_lsn, 1, live_status.keys)
        );
        let view = shard.read(&[b"k2".to_vec()]).await.expect("read");
        assert_eq!(
            view[0].lock.as_ref().expect("lock survived restart").txn,
            txn(1000)
        );
    }

    #[tokio::test]
    async fn a_log_pin_keeps_what_a_stream_needs_through_snapshots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(dir.path());
        // Small segments, no log kept after a snapshot.
        cfg.log = LogConfig {
            segment_bytes: 4096,
            snapshot_every_bytes: 4096,
            retain_bytes: 0,
        };
        let shard = Shard::open(cfg, Arc::new(Metrics::default())).expect("open");
        let mut i = 0u32;
        let mut write = async |n: u32| {
            for _ in 0..n {
                i += 1;
                shard
                    .commit_local(
                        txn(i),
                        vec![],
                        vec![put(&format!("k{i}"), &"v".repeat(100))],
                        Level::Sync,
                    )
                    .await
                    .expect("commit");
            }
        };
        write(100).await;
        let pin = shard.pin_log(50);
        write(100).await;
        shard.snapshot().await.expect("snapshot");
        assert!(
            shard.log_reader(50).await.expect("reader").is_some(),
            "a snapshot deleted records a pinned stream still needs"
        );
        assert!(
            shard.log_reader(10).await.expect("reader").is_none(),
            "records below every pin were kept"
        );
        pin.advance(150);
        shard.snapshot().await.expect("snapshot");
        assert!(shard.log_reader(150).await.expect("reader").is_some());
        assert!(shard.log_reader(50).await.expect("reader").is_none());
        drop(pin);
        shard.snapshot().await.expect("snapshot");
        assert!(
            shard.log_reader(150).await.expect("reader").is_none(),
            "the log was kept after its pin was dropped"
        );
    }

    #[tokio::test]
    async fn commit_local_is_idempotent_and_conflicts_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = Shard::open(config(dir.path()), Arc::new(Metrics::default())).expect("open");
        let first = shard
            .commit_local(txn(1), vec![], vec![put("a", "1")], Level::Sync)
            .await
            .expect("commit");
        let again = shard
            .commit_local(txn(1), vec![], vec![put("a", "1")], Level::Sync)
            .await
            .expect("retry");
        assert_eq!(first, again);
        assert_eq!(shard.status().last_lsn, 1, "a retry logs nothing");
        let stale = vec![ReadRec {
            key: b"a".to_vec(),
            version: 0,
        }];
        match shard
            .commit_local(txn(2), stale, vec![put("a", "2")], Level::Sync)
            .await
            .expect("commit")
        {
            Outcome::Aborted { refused, .. } => assert_eq!(refused.keys, vec![b"a".to_vec()]),
            other => panic!("stale read committed: {other:?}"),
        }
        shard.shutdown();
        drop(shard);
        // After a restart the retry still returns the first outcome.
        let shard = Shard::open(config(dir.path()), Arc::new(Metrics::default())).expect("reopen");
        let after = shard
            .commit_local(txn(1), vec![], vec![put("a", "1")], Level::Sync)
            .await
            .expect("retry");
        assert_eq!(first, after);
    }

    /// Simulator seed 1035: the coordinator's decide (COMMIT) reached the
    /// anchor late, after a sweeper had resolved the transaction (presumed
    /// ABORT), finalized it everywhere and forgotten its record. The late
    /// decide must answer ABORT, not record a COMMIT whose writes the
    /// participants already discarded — and a late decide after a
    /// committed transaction was forgotten must answer COMMIT.
    #[tokio::test]
    async fn a_late_decide_after_forget_keeps_the_finalized_decision() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = Shard::open(config(dir.path()), Arc::new(Metrics::default())).expect("open");
        for (n, first) in [(21u32, false), (22, true)] {
            let rec = PrepareRec {
                txn_id: txn(n).0.to_vec(),
                reads: vec![],
                writes: vec![put(&format!("late{n}"), "v")],
                anchor: 1,
                participants: vec![1, 2],
            };
            shard.prepare(rec, Level::Sync).await.expect("prepare");
            if first {
                assert!(
                    shard
                        .decide(txn(n), true, vec![1, 2], Level::Sync)
                        .await
                        .expect("decide")
                );
            } else {
                assert!(
                    !shard.resolve(txn(n)).await.expect("resolve").commit,
                    "presumed abort"
                );
            }
            shard.finalize(txn(n), first).await.expect("finalize");
            assert_eq!(shard.forget(vec![txn(n)]).await.expect("forget"), 1);
            let late = shard
                .decide(txn(n), !first, vec![1, 2], Level::Sync)
                .await
                .expect("late decide");
            assert_eq!(
                late, first,
                "txn {n}: a late decide overturned the finalized decision"
            );
            let resolved = shard.resolve(txn(n)).await.expect("late resolve");
            assert_eq!(
                resolved.commit, first,
                "txn {n}: a late resolve overturned it"
            );
            let written = value_of(&shard, &format!("late{n}")).await.is_some();
            assert_eq!(
                written, first,
                "txn {n}: applied {written}, decided {first}"
            );
        }
    }

    #[tokio::test]
    async fn two_phase_participant_flow() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = Shard::open(config(dir.path()), Arc::new(Metrics::default())).expect("open");
        let rec = PrepareRec {
            txn_id: txn(7).0.to_vec(),
            reads: vec![],
            writes: vec![put("x", "1")],
            anchor: 1,
            participants: vec![1, 2],
        };
        let first = shard
            .prepare(rec.clone(), Level::Sync)
            .await
            .expect("prepare");
        let Vote::Yes { version } = first else {
            panic!("voted {first:?}")
        };
        assert_eq!(
            shard
                .prepare(rec.clone(), Level::Sync)
                .await
                .expect("again"),
            first,
            "idempotent"
        );
        // A 1PC on the locked key is refused.
        match shard
            .commit_local(txn(8), vec![], vec![put("x", "2")], Level::Sync)
            .await
            .expect("commit")
        {
            Outcome::Aborted { refused, .. } => {
                assert_eq!(refused.reason, crate::state::Refusal::Locked)
            }
            other => panic!("locked key written: {other:?}"),
        }
        assert!(
            shard
                .decide(txn(7), true, vec![1, 2], Level::Sync)
                .await
                .expect("decide")
        );
        assert!(
            shard
                .decide(txn(7), false, vec![], Level::Sync)
                .await
                .expect("decide again"),
            "first decision wins"
        );
        assert!(shard.resolve(txn(7)).await.expect("resolve").commit);
        let outcome = shard
            .finalize(txn(7), true)
            .await
            .expect("finalize")
            .expect("known");
        assert!(matches!(outcome, Outcome::Committed { version: v, .. } if v == version));
        assert_eq!(value_of(&shard, "x").await.expect("applied").0, b"1");
        assert_eq!(
            shard.finalize(txn(7), true).await.expect("again"),
            Some(outcome)
        );
        // Resolve of an unknown transaction records ABORT: presumed abort.
        assert!(!shard.resolve(txn(9)).await.expect("resolve").commit);
        assert!(
            !shard
                .decide(txn(9), true, vec![], Level::Sync)
                .await
                .expect("late decide")
        );
        assert_eq!(shard.forget(vec![txn(7), txn(9)]).await.expect("forget"), 2);
        assert_eq!(shard.finalize(txn(99), true).await.expect("unknown"), None);
        // Its record forgotten, the anchor's own finalized outcome still
        // answers COMMIT: a late resolve never presumes a commit aborted.
        assert!(shard.resolve(txn(7)).await.expect("resolve").commit);
        assert!(!shard.resolve(txn(9)).await.expect("resolve").commit);
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

    #[tokio::test]
    async fn data_dir_is_locked_and_bound_to_its_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = Shard::open(config(dir.path()), Arc::new(Metrics::default())).expect("open");
        let err =
            Shard::open(config(dir.path()), Arc::new(Metrics::default())).expect_err("locked");
        assert!(err.to_string().contains("LOCK"), "{err}");
        shard.shutdown();
        drop(shard);
        let mut other = config(dir.path());
        other.group_id = 2;
        let err = Shard::open(other, Arc::new(Metrics::default())).expect_err("wrong group");
        assert!(err.to_string().contains("group 1"), "{err}");
    }
}
