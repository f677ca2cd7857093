//! The reshard job driver: the IO that runs the jobs in the catalog. Every
//! decision is the job machine's ([`Job::next`] / [`Job::done`]) or a pure
//! rule of [`crate::reshard_job`]; this module only does what they say,
//! against the shards' primaries and the catalog, and saves the result.
//!
//! # One task per coordinator
//!
//! [`Driver::run`] wakes every [`DRIVER_TICK`] (and when the Admin service
//! creates or resumes a job), reads the coordinators and the jobs, and runs
//! each job it owns, one after another, for at most [`STEPS_PER_TICK`]
//! actions each.
//!
//! # Claim and self-fencing
//!
//! A job names its `owner` (a coordinator id), written with the job by
//! `save_job`'s compare-and-swap. A driver runs a job only while it owns
//! it, and takes a job over only when the job has no owner or its owner's
//! catalog heartbeat is older than [`crate::COORDINATOR_SILENCE_MAX`] (or
//! its row is gone) — [`claim`]. The owner, for its part, starts an action
//! only if the action's deadline ends before anyone could take the job
//! over: `alive_at + COORDINATOR_SILENCE_MAX`, less [`FENCE_SLACK`], where
//! `alive_at` is when its own heartbeat was last seen stored — [`may_act`].
//! A driver cut off from the catalog therefore stops by itself. Saves are
//! CAS on the row's version: a driver that loses one re-reads; if only an
//! operator's request changed (the `asked` mailbox) it saves its progress
//! over it, otherwise it drops what it knew and plans again next tick.
//! Every step is idempotent at the shards (freeze, thaw, import, abandon,
//! release) or checked first (a flip looks at the stored map), so a step
//! done but not saved is simply done again by whoever runs the job next.
//!
//! # What this module never does
//!
//! - It never decides what a job does next; `Job::next` does.
//! - It never sends a shard request without a deadline, nor an action
//!   while fenced.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, sleep, timeout};
use trellis_proto::shard::v1 as pb;
use trellis_types::{GroupId, SLOTS, TxnId};

use crate::catalog::{CatalogError, CoordinatorRow};
use crate::map::ClusterMap;
use crate::metrics::{Metrics, RESHARD_STATES, unix_ms};
use crate::reshard::{Action, Batch, Control, Done, Job, JobError};
use crate::reshard_job::{
    Claim, DecodeError, JobRecord, claim, decode, encode, may_act, state_name, take_asked,
};
use crate::router::{CatalogRouter, Fault, Router, ShardRpc, classify};
use crate::txn::TxnManager;

/// How often the driver looks at the jobs when nobody wakes it.
pub const DRIVER_TICK: Duration = Duration::from_secs(1);
/// Deadline of every shard RPC the driver sends, and of each message of
/// an export stream. Also the longest action [`may_act`] allows for.
pub const DRIVER_RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of every catalog call the driver makes.
pub const DRIVER_CATALOG_TIMEOUT: Duration = Duration::from_secs(3);
/// Margin for clock drift between this coordinator and the catalog
/// database when fencing (see the module doc).
pub const FENCE_SLACK: Duration = Duration::from_secs(1);
/// Most bytes of copied entries (keys and values) in one `Ingest` call:
/// entries are sent as soon as the next one would pass it.
pub const INGEST_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Most entries in one `Ingest` call (many tiny entries).
pub const INGEST_ENTRIES_MAX: usize = 10_000;
/// Pause between two tries of the cutover's drained copy while prepared
/// transactions remain (`NOT_DRAINED`); the freeze's deadline bounds them.
pub const DRAIN_RETRY: Duration = Duration::from_millis(10);
/// While the drained copy is refused, the prepared transactions on the
/// frozen slots at least this old are settled at their anchors (a decided
/// one finalized, an undecided one aborted there), as a reader settles an
/// in-doubt lock: the pause then waits for the anchors, not for each
/// transaction's coordinator to finalize it. Younger ones are left to
/// finish on their own: most are a commit in flight.
pub const DRAIN_RESOLVE_AGE: Duration = Duration::from_millis(20);
/// Most prepared transactions one try of the drained copy settles.
pub const DRAIN_RESOLVE_MAX: u32 = 256;
/// Actions one job may take in one tick before the next job's turn.
pub const STEPS_PER_TICK: u32 = 64;
/// Backoff after a job's step failed: doubles per failure up to the max.
pub const RETRY_BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// First backoff after a step failed while the batch is frozen (its
/// drained copy saved, its flip not): the write pause runs meanwhile, so
/// it is retried sooner; it doubles as [`RETRY_BACKOFF_MIN`]'s does.
pub const FROZEN_RETRY_MIN: Duration = Duration::from_millis(20);
/// Actions a job may take past [`STEPS_PER_TICK`] to leave a frozen batch
/// (drain, flip): a tick never ends with the source frozen for want of
/// steps (the next tick may be [`DRIVER_TICK`] away), yet a flip that
/// keeps losing the map's compare-and-set still yields.
pub const FROZEN_STEPS_MAX: u32 = 16;
/// Tries to save progress over operators' requests that keep arriving.
pub const SAVE_ATTEMPTS_MAX: u32 = 8;

const _: () = assert!(
    trellis_types::limits::KEY_BYTES_MAX + trellis_types::limits::VALUE_BYTES_MAX
        <= INGEST_BYTES_MAX,
    "the largest entry fits one Ingest"
);
const _: () = assert!(
    INGEST_BYTES_MAX < trellis_types::limits::MESSAGE_BYTES_MAX / 2,
    "an Ingest of INGEST_BYTES_MAX of entries fits a message with room for framing"
);
const _: () = assert!(
    DRIVER_RPC_TIMEOUT.as_millis()
        + FENCE_SLACK.as_millis()
        + crate::MAP_REFRESH_INTERVAL.as_millis()
        < crate::COORDINATOR_SILENCE_MAX.as_millis(),
    "a driver whose heartbeats land every MAP_REFRESH_INTERVAL can always act"
);

/// Why a step did not happen. The job stays as saved; the step is tried
/// again at a later tick (after a backoff), by this driver or its
/// successor.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("{0}")]
    Shard(String),
    #[error("prepared transactions remain on the frozen slots")]
    NotDrained,
    #[error("{what} did not answer within its deadline")]
    Timeout { what: String },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Job(#[from] JobError),
    #[error(
        "this coordinator's heartbeat is too old to act safely (another coordinator may take the job over)"
    )]
    Fenced,
    #[error("job {0} was changed by another coordinator; planning again")]
    Lost(u64),
    #[error("{0}")]
    Invalid(String),
}

/// When a failing job may be tried again.
#[derive(Clone, Copy, Debug)]
struct Retry {
    failures: u32,
    at: Instant,
}

/// The backoff after `failures` failures in a row (1 or more), of a job
/// whose batch is `frozen` ([`Job::frozen`]) or not.
pub fn backoff(failures: u32, frozen: bool) -> Duration {
    let first = if frozen {
        FROZEN_RETRY_MIN
    } else {
        RETRY_BACKOFF_MIN
    };
    let doubled = first.saturating_mul(1 << failures.saturating_sub(1).min(16));
    doubled.min(RETRY_BACKOFF_MAX)
}

/// Where one job's run in a tick ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ran {
    /// Nothing left to do now (done, paused, waiting).
    Idle,
    /// Out of steps with work left: the next tick comes at once.
    More,
}

/// What the driver measured of the cutover it is running (freeze to
/// flip), logged with the flip and observed in
/// `trellis_reshard_cutover_step_seconds`. Lost on a restart: a
/// cutover resumed by another driver logs only what that one saw.
#[derive(Clone, Debug, Default)]
struct Cutover {
    job: u64,
    batch: usize,
    /// The Freeze call (the source logging FREEZE at SYNC).
    freeze_ms: u64,
    /// Catalog saves of the job while frozen.
    saves_ms: u64,
    /// The drained copy, every try (waiting for prepared transactions).
    drain_ms: u64,
    drain_tries: u32,
    /// Prepared transactions the driver settled to drain the batch.
    drain_resolved: u32,
    /// Keys the drained copy moved (the last delta).
    delta_keys: u64,
    /// The flip: the map's compare-and-set and telling both groups.
    flip_ms: u64,
    flip_tries: u32,
    /// Steps that failed while frozen (each then waited a backoff).
    failures: u32,
}

/// The job driver of one coordinator.
pub struct Driver {
    /// This coordinator's id, as in the catalog's coordinators.
    me: String,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    /// Origin of the local clock the fence reads.
    origin: Instant,
    /// When (local ms) this coordinator's heartbeat was last seen stored.
    alive_at_ms: Option<u64>,
    retries: BTreeMap<u64, Retry>,
    /// Jobs whose state could not be read, logged once each.
    unreadable: BTreeSet<u64>,
    /// The cutover in progress, as this driver saw it.
    cutover: Option<Cutover>,
    /// Drained copies tried by the last `Drain` action.
    drain_tries: u32,
    /// Prepared transactions the last `Drain` action settled.
    drain_resolved: u32,
    /// The coordinator's transaction manager: settles the prepared
    /// transactions that keep a batch from draining.
    txns: Arc<TxnManager>,
}

impl Driver {
    /// A driver acting through the coordinator's transaction manager
    /// (its router, its metrics, and its resolver for the drain).
    pub fn new(me: String, txns: Arc<TxnManager>, wake: Arc<Notify>) -> Self {
        Driver {
            me,
            router: txns.router().clone(),
            metrics: txns.metrics().clone(),
            wake,
            origin: Instant::now(),
            alive_at_ms: None,
            retries: BTreeMap::new(),
            unreadable: BTreeSet::new(),
            cutover: None,
            drain_tries: 0,
            drain_resolved: 0,
            txns,
        }
    }

    /// Runs forever.
    pub async fn run(mut self) {
        let mut wait = DRIVER_TICK;
        loop {
            tokio::select! {
                () = sleep(wait) => {}
                () = self.wake.notified() => {}
            }
            wait = self.tick().await;
        }
    }

    fn local_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Reads the coordinators, noting when this one's heartbeat was stored.
    async fn coordinators(&mut self) -> Result<Vec<CoordinatorRow>, DriverError> {
        let asked_at = self.local_ms();
        let rows = catalog_call(
            "listing the coordinators",
            self.router.catalog().coordinators(),
        )
        .await?;
        if let Some(mine) = rows.iter().find(|c| c.id == self.me) {
            let alive = asked_at.saturating_sub(mine.heartbeat_age_ms);
            self.alive_at_ms = Some(self.alive_at_ms.map_or(alive, |a| a.max(alive)));
        }
        Ok(rows)
    }

    /// Self-fencing before an action: re-reads the heartbeat if the last
    /// proof is too old, and refuses if it still is.
    async fn fence(&mut self) -> Result<(), DriverError> {
        let allowed = |d: &Driver| {
            may_act(
                d.alive_at_ms,
                d.local_ms(),
                DRIVER_RPC_TIMEOUT.as_millis() as u64,
                crate::COORDINATOR_SILENCE_MAX.as_millis() as u64,
                FENCE_SLACK.as_millis() as u64,
            )
        };
        if allowed(self) {
            return Ok(());
        }
        self.coordinators().await?;
        if allowed(self) {
            Ok(())
        } else {
            Err(DriverError::Fenced)
        }
    }

    /// One look at every job. Answers how long to wait before the next:
    /// [`DRIVER_TICK`], nothing if a job ran out of steps with work left,
    /// less if a job's retry comes sooner.
    pub async fn tick(&mut self) -> Duration {
        let coordinators = match self.coordinators().await {
            Ok(rows) => rows,
            Err(err) => {
                tracing::warn!(%err, "reshard driver cannot read the catalog; acting on no job");
                return DRIVER_TICK;
            }
        };
        let rows =
            match catalog_call("listing the reshard jobs", self.router.catalog().jobs()).await {
                Ok(rows) => rows,
                Err(err) => {
                    tracing::warn!(%err, "reshard driver cannot list the jobs");
                    return DRIVER_TICK;
                }
            };
        let mut counts = [0u64; 4];
        let mut runnable = Vec::new();
        for row in rows {
            let record = match decode(row.id, &row.state) {
                Ok(record) => record,
                Err(err) => {
                    if self.unreadable.insert(row.id) {
                        tracing::error!(%err, job = row.id, "cannot read a reshard job; leaving it alone");
                    }
                    continue;
                }
            };
            let state = state_name(&record.job.control);
            if let Some(i) = RESHARD_STATES.iter().position(|s| *s == state) {
                counts[i] += 1;
            }
            if record.active() {
                runnable.push((row.id, row.version, record));
            }
        }
        for (count, gauge) in counts.iter().zip(&self.metrics.reshard_jobs) {
            gauge.store(*count, Relaxed);
        }
        let silence_ms = crate::COORDINATOR_SILENCE_MAX.as_millis() as u64;
        self.retries
            .retain(|id, _| runnable.iter().any(|(job, _, _)| job == id));
        let mut more = false;
        for (id, mut version, mut record) in runnable {
            // Backing off after a failure: only an operator's request is
            // applied (it needs no shard), no action is tried.
            let backing_off = self.retries.get(&id).is_some_and(|r| Instant::now() < r.at);
            if backing_off && record.asked.is_none() {
                continue;
            }
            let owner_age = coordinators
                .iter()
                .find(|c| c.id == record.owner)
                .map(|c| c.heartbeat_age_ms);
            match claim(&record.owner, &self.me, owner_age, silence_ms) {
                Claim::Leave => continue,
                Claim::Mine => {}
                Claim::Take => {
                    // A fenced driver takes nothing it could not run.
                    if self.fence().await.is_err() {
                        continue;
                    }
                    let before = record.owner.clone();
                    record.owner = self.me.clone();
                    match self.save(id, version, &record).await {
                        Ok(Some(v)) => {
                            version = v;
                            tracing::info!(job = id, previous_owner = %before, "claimed reshard job");
                        }
                        Ok(None) => continue,
                        Err(err) => {
                            tracing::warn!(%err, job = id, "cannot claim a reshard job");
                            continue;
                        }
                    }
                }
            }
            match self.run_job(id, version, &mut record, !backing_off).await {
                Ok(_) if backing_off => {}
                Ok(ran) => {
                    more |= ran == Ran::More;
                    self.retries.remove(&id);
                }
                Err(err) => {
                    let failures = self.retries.get(&id).map_or(1, |r| r.failures + 1);
                    let frozen = record.job.frozen();
                    let wait = backoff(failures, frozen);
                    if frozen && let Some(cutover) = &mut self.cutover {
                        cutover.failures += 1;
                    }
                    tracing::warn!(%err, job = id, failures, frozen, retry_in = ?wait, "reshard step failed; retrying later");
                    self.retries.insert(
                        id,
                        Retry {
                            failures,
                            at: Instant::now() + wait,
                        },
                    );
                }
            }
        }
        if more {
            return Duration::ZERO;
        }
        // Only retries still to come: one already due belongs to a job this
        // driver left (another owns it now) and must not make it spin.
        let now = Instant::now();
        self.retries
            .values()
            .filter(|r| r.at > now)
            .map(|r| r.at - now)
            .fold(DRIVER_TICK, Duration::min)
    }

    /// CAS save; `Some(new version)` if it won.
    async fn save(
        &self,
        id: u64,
        version: u64,
        record: &JobRecord,
    ) -> Result<Option<u64>, DriverError> {
        let won = catalog_call(
            "saving a reshard job",
            self.router.catalog().save_job(id, version, &encode(record)),
        )
        .await?;
        Ok(won.then_some(version + 1))
    }

    /// Saves `record` (progress made from `before`); on a lost CAS, saves
    /// over a row that differs from `before` only by an operator's request.
    async fn save_progress(
        &self,
        id: u64,
        version: &mut u64,
        before: &JobRecord,
        record: &mut JobRecord,
    ) -> Result<(), DriverError> {
        for _ in 0..SAVE_ATTEMPTS_MAX {
            if let Some(v) = self.save(id, *version, record).await? {
                *version = v;
                self.metrics.reshard_progress();
                return Ok(());
            }
            let rows =
                catalog_call("reading the reshard jobs", self.router.catalog().jobs()).await?;
            let row = rows
                .into_iter()
                .find(|r| r.id == id)
                .ok_or(DriverError::Lost(id))?;
            let fresh = decode(id, &row.state)?;
            if fresh.owner != self.me || fresh.job != before.job {
                return Err(DriverError::Lost(id));
            }
            record.asked = fresh.asked;
            *version = row.version;
        }
        Err(DriverError::Lost(id))
    }

    /// Runs one owned job for up to [`STEPS_PER_TICK`] actions (more to
    /// leave a frozen batch, up to [`FROZEN_STEPS_MAX`]); with `act`
    /// false, only applies an operator's waiting request. `record` is left
    /// as last changed (saved or not), for the caller's backoff.
    async fn run_job(
        &mut self,
        id: u64,
        mut version: u64,
        record: &mut JobRecord,
        act: bool,
    ) -> Result<Ran, DriverError> {
        let mut steps = 0;
        loop {
            if steps >= STEPS_PER_TICK + FROZEN_STEPS_MAX
                || (steps >= STEPS_PER_TICK && !record.job.frozen())
            {
                return Ok(Ran::More);
            }
            steps += 1;
            let before = record.clone();
            if let Some(applied) = take_asked(record) {
                match applied {
                    Ok(asked) => tracing::info!(job = id, ?asked, "applying an operator's request"),
                    Err(err) => tracing::info!(%err, job = id, "dropping an operator's request"),
                }
                self.save_progress(id, &mut version, &before, record)
                    .await?;
                continue;
            }
            if !act {
                return Ok(Ran::Idle);
            }
            let Some(action) = record.job.next(unix_ms()) else {
                log_end(record);
                return Ok(Ran::Idle);
            };
            let Some(batch) = record.job.current().cloned() else {
                return Err(DriverError::Invalid(format!(
                    "job {id} asks {action:?} past its last batch"
                )));
            };
            let started_ms = unix_ms();
            let started = Instant::now();
            let done = self.act(&record.job, &batch, &action).await?;
            let took_ms = started.elapsed().as_millis() as u64;
            self.note_step(&record.job, &action, done, took_ms);
            let Some(done) = done else {
                continue; // nothing to report: ask `next` again
            };
            let now = unix_ms();
            if action == Action::Flip {
                let pause_ms = before
                    .job
                    .frozen_at_ms
                    .map_or(0, |at| now.saturating_sub(at));
                record.pause_max_ms = record.pause_max_ms.max(pause_ms);
                self.metrics.reshard_pause.observe(pause_ms as f64 / 1000.0);
                self.metrics
                    .reshard_slots_moved
                    .add(u64::from(batch.slots.len()));
                self.log_cutover(&record.job, &batch, pause_ms);
            }
            // The pause starts when the freeze is asked: the source may
            // refuse writes from then on.
            let at = if action == Action::Freeze {
                started_ms
            } else {
                now
            };
            record.job.done(&action, at, done)?;
            let saving = Instant::now();
            self.save_progress(id, &mut version, &before, record)
                .await?;
            if record.job.frozen()
                && let Some(cutover) = &mut self.cutover
            {
                cutover.saves_ms += saving.elapsed().as_millis() as u64;
            }
        }
    }

    /// Notes how long a cutover's step took ([`Cutover`]).
    fn note_step(&mut self, job: &Job, action: &Action, done: Option<Done>, took_ms: u64) {
        if *action == Action::Freeze {
            if done.is_some() {
                self.cutover = Some(Cutover {
                    job: job.id,
                    batch: job.batch,
                    freeze_ms: took_ms,
                    ..Cutover::default()
                });
                self.metrics.reshard_cutover_steps[0].observe(took_ms as f64 / 1000.0);
            }
            return;
        }
        if !matches!(action, Action::Drain { .. } | Action::Flip) {
            return;
        }
        if self
            .cutover
            .as_ref()
            .is_none_or(|c| c.job != job.id || c.batch != job.batch)
        {
            // Frozen by another driver (or before a restart).
            self.cutover = Some(Cutover {
                job: job.id,
                batch: job.batch,
                ..Cutover::default()
            });
        }
        let Some(cutover) = &mut self.cutover else {
            return;
        };
        match action {
            Action::Drain { .. } => {
                cutover.drain_ms += took_ms;
                cutover.drain_tries += self.drain_tries;
                cutover.drain_resolved += self.drain_resolved;
                if let Some(Done::Copied { keys, .. }) = done {
                    cutover.delta_keys += keys;
                    self.metrics.reshard_cutover_steps[1].observe(cutover.drain_ms as f64 / 1000.0);
                }
            }
            _ => {
                cutover.flip_ms += took_ms;
                cutover.flip_tries += 1;
                if done.is_some() {
                    self.metrics.reshard_cutover_steps[2].observe(cutover.flip_ms as f64 / 1000.0);
                }
            }
        }
    }

    /// Logs a handed-over batch with where its pause went.
    fn log_cutover(&mut self, job: &Job, batch: &Batch, pause_ms: u64) {
        let c = self
            .cutover
            .take()
            .filter(|c| c.job == job.id && c.batch == job.batch)
            .unwrap_or_default();
        let accounted = c.freeze_ms + c.saves_ms + c.drain_ms + c.flip_ms;
        tracing::info!(
            job = job.id,
            index = job.batch,
            %batch,
            pause_ms,
            freeze_ms = c.freeze_ms,
            saves_ms = c.saves_ms,
            drain_ms = c.drain_ms,
            drain_tries = c.drain_tries,
            drain_resolved = c.drain_resolved,
            delta_keys = c.delta_keys,
            flip_ms = c.flip_ms,
            flip_tries = c.flip_tries,
            failures = c.failures,
            between_ms = pause_ms.saturating_sub(accounted),
            "batch handed over"
        );
    }

    /// Does one action; `None` when there is nothing to report (a flip
    /// that lost the map's CAS, a drain past its deadline).
    async fn act(
        &mut self,
        job: &Job,
        batch: &Batch,
        action: &Action,
    ) -> Result<Option<Done>, DriverError> {
        let slots = batch.slots.to_bytes();
        self.drain_tries = 0;
        self.drain_resolved = 0;
        let mut settled_before = false;
        let step = |op: pb::SlotOp, peer: GroupId| pb::MoveSlotsRequest {
            op: op as i32,
            slots: slots.clone(),
            peer_group: peer,
            map_epoch: 0,
            owned: Vec::new(),
        };
        match action {
            Action::BeginImport => {
                self.move_slots(batch.to, step(pb::SlotOp::BeginImport, batch.from))
                    .await?;
            }
            Action::AbandonImport => {
                self.move_slots(batch.to, step(pb::SlotOp::AbandonImport, batch.from))
                    .await?;
            }
            Action::Freeze => {
                self.move_slots(batch.from, step(pb::SlotOp::Freeze, batch.to))
                    .await?;
            }
            Action::Thaw => {
                self.move_slots(batch.from, step(pb::SlotOp::Thaw, batch.to))
                    .await?;
            }
            Action::CopyBase => {
                if trellis_types::failpoint::armed("reshard_copy_hold") {
                    sleep(crate::failpoint::RESHARD_COPY_HOLD).await;
                }
                return self.copy(batch, 0, false).await.map(Some);
            }
            Action::CopyDelta { above } => return self.copy(batch, *above, false).await.map(Some),
            Action::Drain { above, deadline_ms } => loop {
                self.drain_tries += 1;
                // The try after a settle comes at once, but only once in a
                // row: a lock a settle cannot lift (a read hold, an anchor
                // that does not answer) is waited for at DRAIN_RETRY.
                let settled_last = std::mem::take(&mut settled_before);
                match self.copy(batch, *above, true).await {
                    Ok(done) => return Ok(Some(done)),
                    Err(err) => {
                        let now_ms = unix_ms();
                        if now_ms + DRAIN_RETRY.as_millis() as u64 >= *deadline_ms {
                            tracing::info!(job = job.id, %err, "the cutover did not drain in time; thawing");
                            // Past the deadline, so that the job's next
                            // action is the thaw: another drain action in
                            // the last DRAIN_RETRY would spend a step each
                            // try, and the tick's steps could run out with
                            // the batch still frozen.
                            sleep(Duration::from_millis(
                                deadline_ms.saturating_sub(now_ms) + 1,
                            ))
                            .await;
                            return Ok(None);
                        }
                        if matches!(err, DriverError::NotDrained) {
                            let until = Instant::now()
                                + Duration::from_millis(deadline_ms.saturating_sub(unix_ms()))
                                    .min(DRIVER_RPC_TIMEOUT);
                            match self.settle_frozen(batch, until).await {
                                Ok(0) => {}
                                Ok(settled) => {
                                    self.drain_resolved += settled;
                                    if !settled_last {
                                        settled_before = true;
                                        continue; // try again at once
                                    }
                                }
                                Err(err) => {
                                    tracing::debug!(job = job.id, %err, "could not settle the frozen slots' prepared transactions");
                                }
                            }
                        } else {
                            tracing::debug!(job = job.id, %err, "drained copy failed; retrying");
                        }
                        sleep(DRAIN_RETRY).await;
                    }
                }
            },
            Action::Flip => return self.flip(batch).await,
            Action::Release => {
                let map = self.load().await?;
                let mut request = step(pb::SlotOp::Release, batch.to);
                request.map_epoch = map.map_epoch;
                request.owned = map.slots_of(batch.from).to_bytes();
                self.move_slots(batch.from, request).await?;
            }
        }
        Ok(Some(Done::Ok))
    }

    /// Settles the prepared transactions on `batch`'s frozen slots that are
    /// at least [`DRAIN_RESOLVE_AGE`] old, at most [`DRAIN_RESOLVE_MAX`],
    /// by `until`. Returns how many it settled. Safe at any time: it is
    /// what a reader meeting an in-doubt lock does (the anchor's record
    /// decides; an undecided transaction is aborted there first).
    async fn settle_frozen(&self, batch: &Batch, until: Instant) -> Result<u32, DriverError> {
        let (source_map, mut source) = self.client(batch.from)?;
        let request = pb::ListPreparedRequest {
            older_than_ms: DRAIN_RESOLVE_AGE.as_millis() as u64,
            limit: DRAIN_RESOLVE_MAX,
            records: false,
            slots: batch.slots.to_bytes(),
        };
        let listed = match timeout(DRIVER_RPC_TIMEOUT, source.list_prepared(request)).await {
            Ok(Ok(response)) => response.into_inner().txns,
            Ok(Err(status)) => {
                return Err(self.shard_error(batch.from, &source_map, &status).await);
            }
            Err(_) => {
                return Err(DriverError::Timeout {
                    what: format!("ListPrepared at group {}", batch.from),
                });
            }
        };
        let settles = listed.iter().filter_map(|prepared| {
            let txn = TxnId::from_bytes(&prepared.txn_id).ok()?;
            let participants = prepared.participants.clone();
            Some(async move {
                let settled = self
                    .txns
                    .resolve(txn, prepared.anchor_group, &participants, until)
                    .await;
                if let Err(err) = &settled {
                    tracing::debug!(%txn, %err, "could not settle a prepared transaction on a frozen slot");
                }
                settled.is_ok()
            })
        });
        let settled = futures::future::join_all(settles)
            .await
            .into_iter()
            .filter(|ok| *ok)
            .count();
        self.metrics.reshard_drain_settled.add(settled as u64);
        Ok(settled as u32)
    }

    /// The catalog's map, installed in the router.
    async fn load(&self) -> Result<Arc<ClusterMap>, DriverError> {
        let map = catalog_call("reading the slot map", self.router.catalog().load()).await?;
        self.router.install(map);
        Ok(self.router.map())
    }

    /// Stores the map with the batch's slots on the target (unless a
    /// resumed flip already did), then tells both groups at once.
    async fn flip(&mut self, batch: &Batch) -> Result<Option<Done>, DriverError> {
        let map = self.load().await?;
        let moving: Vec<u32> = (0..SLOTS).filter(|s| batch.slots.contains(*s)).collect();
        let owner = |s: u32| map.slots[s as usize];
        if !moving.iter().all(|s| owner(*s) == batch.to) {
            if let Some(s) = moving.iter().find(|s| owner(**s) != batch.from) {
                return Err(DriverError::Invalid(format!(
                    "cannot flip {batch}: slot {s} is owned by group {}",
                    owner(*s)
                )));
            }
            let mut slots = map.slots.clone();
            for s in &moving {
                slots[*s as usize] = batch.to;
            }
            let won = catalog_call(
                "storing the flipped slot map",
                self.router.catalog().cas_slot_map(map.map_epoch, &slots),
            )
            .await?;
            if !won {
                return Ok(None); // another map change came first: look again
            }
        }
        let map = self.load().await?;
        let follow = |group: GroupId| pb::MoveSlotsRequest {
            op: pb::SlotOp::FollowMap as i32,
            slots: Vec::new(),
            peer_group: 0,
            map_epoch: map.map_epoch,
            owned: map.slots_of(group).to_bytes(),
        };
        // Best effort: replicas poll the map anyway.
        let (to, from) = tokio::join!(
            self.call_move_slots(batch.to, follow(batch.to)),
            self.call_move_slots(batch.from, follow(batch.from)),
        );
        for (group, result) in [(batch.to, to), (batch.from, from)] {
            if let Err(err) = result {
                tracing::info!(group, %err, map_epoch = map.map_epoch, "could not tell a group the new map at once; it polls");
            }
        }
        Ok(Some(Done::Ok))
    }

    /// A client for `group`'s primary.
    fn client(&self, group: GroupId) -> Result<(Arc<ClusterMap>, ShardRpc), DriverError> {
        let map = self.router.map();
        match self.router.client(&map, group) {
            Ok(client) => Ok((map, client)),
            Err(fault) => Err(DriverError::Shard(fault_text(&fault))),
        }
    }

    /// Turns a shard's refusal into an error, refreshing the map when it
    /// says the primary moved or is unreachable.
    async fn shard_error(
        &self,
        group: GroupId,
        map: &ClusterMap,
        status: &tonic::Status,
    ) -> DriverError {
        let reason = trellis_proto::error::error_info(status).map(|i| i.reason);
        if reason.as_deref() == Some(pb::ErrorReason::NotDrained.as_str_name()) {
            return DriverError::NotDrained;
        }
        let fault = classify(group, status);
        if matches!(fault, Fault::Route(_) | Fault::Unavailable(_)) {
            self.router.refresh(map).await;
        }
        DriverError::Shard(fault_text(&fault))
    }

    async fn move_slots(
        &mut self,
        group: GroupId,
        request: pb::MoveSlotsRequest,
    ) -> Result<(), DriverError> {
        self.fence().await?;
        self.call_move_slots(group, request).await
    }

    async fn call_move_slots(
        &self,
        group: GroupId,
        request: pb::MoveSlotsRequest,
    ) -> Result<(), DriverError> {
        let (map, mut client) = self.client(group)?;
        let what = format!(
            "MoveSlots {:?} at group {group}",
            pb::SlotOp::try_from(request.op).unwrap_or(pb::SlotOp::Unspecified)
        );
        match timeout(DRIVER_RPC_TIMEOUT, client.move_slots(request)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(self.shard_error(group, &map, &status).await),
            Err(_) => Err(DriverError::Timeout { what }),
        }
    }

    /// Copies the batch's entries above `above` from the source primary
    /// to the target primary, [`INGEST_BYTES_MAX`] at most per `Ingest`.
    async fn copy(
        &mut self,
        batch: &Batch,
        above: u64,
        drained: bool,
    ) -> Result<Done, DriverError> {
        self.fence().await?;
        let (source_map, mut source) = self.client(batch.from)?;
        let request = pb::ExportSlotsRequest {
            slots: batch.slots.to_bytes(),
            above_version: above,
            drained,
            peer_group: batch.to,
        };
        let what = || DriverError::Timeout {
            what: format!("ExportSlots at group {}", batch.from),
        };
        let mut stream = match timeout(DRIVER_RPC_TIMEOUT, source.export_slots(request)).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => {
                return Err(self.shard_error(batch.from, &source_map, &status).await);
            }
            Err(_) => return Err(what()),
        };
        let (mut keys, mut bytes) = (0u64, 0u64);
        let mut pending: Vec<pb::ExportEntry> = Vec::new();
        let mut pending_bytes = 0usize;
        loop {
            let chunk = match timeout(DRIVER_RPC_TIMEOUT, stream.message()).await {
                Ok(Ok(Some(chunk))) => chunk,
                Ok(Ok(None)) => {
                    return Err(DriverError::Shard(format!(
                        "group {}: the export of {batch} ended before its last message",
                        batch.from
                    )));
                }
                Ok(Err(status)) => {
                    return Err(self.shard_error(batch.from, &source_map, &status).await);
                }
                Err(_) => return Err(what()),
            };
            for entry in chunk.entries {
                let size = entry.key.len() + entry.value.len();
                if !pending.is_empty()
                    && (pending_bytes + size > INGEST_BYTES_MAX
                        || pending.len() >= INGEST_ENTRIES_MAX)
                {
                    self.ingest(batch, std::mem::take(&mut pending)).await?;
                    pending_bytes = 0;
                }
                keys += 1;
                bytes += size as u64;
                pending_bytes += size;
                pending.push(entry);
            }
            if chunk.last {
                if !pending.is_empty() {
                    self.ingest(batch, pending).await?;
                }
                return Ok(Done::Copied {
                    version: chunk.complete_version,
                    keys,
                    bytes,
                    behind: keys,
                });
            }
        }
    }

    async fn ingest(
        &mut self,
        batch: &Batch,
        entries: Vec<pb::ExportEntry>,
    ) -> Result<(), DriverError> {
        self.fence().await?;
        let (map, mut target) = self.client(batch.to)?;
        let (keys, bytes) = (
            entries.len() as u64,
            entries
                .iter()
                .map(|e| (e.key.len() + e.value.len()) as u64)
                .sum::<u64>(),
        );
        let request = pb::IngestRequest {
            from_group: batch.from,
            entries,
        };
        match timeout(DRIVER_RPC_TIMEOUT, target.ingest(request)).await {
            Ok(Ok(_)) => {
                self.metrics.reshard_keys_copied.add(keys);
                self.metrics.reshard_bytes_copied.add(bytes);
                Ok(())
            }
            Ok(Err(status)) => Err(self.shard_error(batch.to, &map, &status).await),
            Err(_) => Err(DriverError::Timeout {
                what: format!("Ingest at group {}", batch.to),
            }),
        }
    }
}

/// Logs how a job ended, when it did (paused, cancelled, done).
fn log_end(record: &JobRecord) {
    let job = &record.job;
    match &job.control {
        Control::Paused {
            reason: Some(reason),
        } => {
            tracing::warn!(job = job.id, %reason, "reshard job paused itself");
        }
        Control::Running => {}
        other => tracing::debug!(
            job = job.id,
            state = state_name(other),
            "reshard job stopped"
        ),
    }
}

fn fault_text(fault: &Fault) -> String {
    match fault {
        Fault::Route(t)
        | Fault::Unavailable(t)
        | Fault::Ambiguous(t)
        | Fault::Invalid(t)
        | Fault::Denied(_, t)
        | Fault::Other(t) => t.clone(),
    }
}

/// A catalog call bounded by [`DRIVER_CATALOG_TIMEOUT`]. A write that
/// times out may still land (the catalog finishes it in a task of its
/// own); every write here is a CAS the next tick re-reads.
async fn catalog_call<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, CatalogError>>,
) -> Result<T, DriverError> {
    match timeout(DRIVER_CATALOG_TIMEOUT, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(DriverError::Timeout {
            what: format!("the catalog ({what})"),
        }),
    }
}

/// The slots `map` gives each group after `batches` moved: for the
/// "how even" figures of a new job.
pub fn map_after(current: &[GroupId], batches: &[Batch]) -> Vec<GroupId> {
    let mut after = current.to_vec();
    for b in batches {
        for s in (0..SLOTS).filter(|s| b.slots.contains(*s)) {
            after[s as usize] = b.to;
        }
    }
    after
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reshard::SLOTS_PER_BATCH;
    use trellis_types::SlotSet;

    #[test]
    fn backoff_doubles_to_its_bound() {
        assert_eq!(backoff(1, false), RETRY_BACKOFF_MIN);
        assert_eq!(backoff(2, false), RETRY_BACKOFF_MIN * 2);
        assert_eq!(backoff(40, false), RETRY_BACKOFF_MAX);
        // While frozen the pause runs: retried sooner, to the same bound.
        assert_eq!(backoff(1, true), FROZEN_RETRY_MIN);
        assert_eq!(backoff(3, true), FROZEN_RETRY_MIN * 4);
        assert!(backoff(1, true) < backoff(1, false));
        assert_eq!(backoff(40, true), RETRY_BACKOFF_MAX);
    }

    /// Story, over an in-memory catalog in tokio's paused time, with no
    /// shard registered (so every shard step fails and backs off): the
    /// driver claims a job nobody owns and leaves one whose owner
    /// heartbeats; an operator's pause reaches the claimed job although it
    /// is backing off; once the other owner has been silent past
    /// `COORDINATOR_SILENCE_MAX`, its job is taken over.
    #[tokio::test(start_paused = true)]
    async fn a_driver_claims_free_jobs_applies_requests_and_takes_over_silent_owners() {
        use crate::catalog::Catalog;
        use crate::reshard::{Control, plan_move};
        use crate::reshard_job::{Asked, ask};

        let catalog = Catalog::in_memory();
        let map = catalog.bootstrap(2).await.expect("bootstrap");
        for (id, addr) in [("me", "127.0.0.1:1"), ("other", "127.0.0.1:2")] {
            catalog
                .register_coordinator(id, addr, "")
                .await
                .expect("register");
        }
        let from = map.slots[0];
        let to = if from == 1 { 2 } else { 1 };
        let batches = plan_move(
            &map.slots,
            &[1, 2],
            from,
            to,
            &SlotSet::parse("0").expect("slot"),
        )
        .expect("plan");
        let mut record = JobRecord::new(Job::new(0, batches), 0);
        let free = catalog.create_job(&encode(&record)).await.expect("job");
        record.owner = "other".into();
        let theirs = catalog.create_job(&encode(&record)).await.expect("job");
        let router = Arc::new(Router::new(catalog.clone(), map));
        let metrics = Arc::new(Metrics::default());
        let mut driver = Driver::new(
            "me".into(),
            TxnManager::new(router, metrics.clone()),
            Arc::new(Notify::new()),
        );
        let stored = |catalog: Catalog, id: u64| async move {
            let row = catalog
                .jobs()
                .await
                .expect("jobs")
                .into_iter()
                .find(|r| r.id == id)
                .expect("row");
            (row.version, decode(id, &row.state).expect("decode"))
        };

        driver.tick().await;
        let (version, mine) = stored(catalog.clone(), free).await;
        assert_eq!(mine.owner, "me", "a free job is claimed");
        assert_eq!(
            mine.job.phase,
            crate::reshard::Phase::Import,
            "no shard: no step"
        );
        assert_eq!(stored(catalog.clone(), theirs).await.1.owner, "other");
        assert_eq!(metrics.reshard_jobs[0].load(Relaxed), 2, "two running");

        let mut paused = mine.clone();
        ask(&mut paused, Asked::Pause).expect("pause");
        assert!(
            catalog
                .save_job(free, version, &encode(&paused))
                .await
                .expect("save")
        );
        driver.tick().await;
        let (_, mine) = stored(catalog.clone(), free).await;
        assert_eq!(mine.job.control, Control::Paused { reason: None });
        assert_eq!(mine.asked, None, "applied and cleared");

        tokio::time::advance(crate::COORDINATOR_SILENCE_MAX / 2).await;
        catalog
            .heartbeat_coordinator("me", "127.0.0.1:1", "")
            .await
            .expect("heartbeat");
        driver.tick().await;
        assert_eq!(
            stored(catalog.clone(), theirs).await.1.owner,
            "other",
            "its owner may still be alive"
        );
        tokio::time::advance(crate::COORDINATOR_SILENCE_MAX).await;
        catalog
            .heartbeat_coordinator("me", "127.0.0.1:1", "")
            .await
            .expect("heartbeat");
        driver.tick().await;
        assert_eq!(stored(catalog.clone(), theirs).await.1.owner, "me");
    }

    /// Story: a driver whose own heartbeat is old acts on nothing: it does
    /// not even claim a free job.
    #[tokio::test(start_paused = true)]
    async fn a_driver_with_an_old_heartbeat_is_fenced() {
        use crate::catalog::Catalog;

        let catalog = Catalog::in_memory();
        let map = catalog.bootstrap(2).await.expect("bootstrap");
        catalog
            .register_coordinator("me", "127.0.0.1:1", "")
            .await
            .expect("register");
        let batches = vec![Batch {
            from: 1,
            to: 2,
            slots: SlotSet::parse("0").expect("slot"),
        }];
        let free = catalog
            .create_job(&encode(&JobRecord::new(Job::new(0, batches), 0)))
            .await
            .expect("job");
        let router = Arc::new(Router::new(catalog.clone(), map));
        let mut driver = Driver::new(
            "me".into(),
            TxnManager::new(router, Arc::new(Metrics::default())),
            Arc::new(Notify::new()),
        );
        tokio::time::advance(crate::COORDINATOR_SILENCE_MAX).await;
        driver.tick().await;
        let row = catalog.jobs().await.expect("jobs");
        let record = decode(free, &row[0].state).expect("decode");
        assert_eq!(record.owner, "", "not claimed while fenced");
        assert!(matches!(driver.fence().await, Err(DriverError::Fenced)));
        catalog
            .heartbeat_coordinator("me", "127.0.0.1:1", "")
            .await
            .expect("heartbeat");
        driver
            .fence()
            .await
            .expect("a fresh heartbeat lifts the fence");
    }

    /// A stand-in for a group's primary that records the resharding calls
    /// it gets, exports three entries of `VALUE_BYTES` each, and refuses
    /// the first `not_drained` drained exports as NOT_DRAINED. Every other
    /// call answers UNIMPLEMENTED. (The real shard side is built apart; a
    /// real-process test covers the two together.)
    #[derive(Clone, Default)]
    struct FakeShard {
        calls: Arc<std::sync::Mutex<Vec<String>>>,
        /// Entries and bytes of each Ingest.
        ingests: Arc<std::sync::Mutex<Vec<(usize, usize)>>>,
        releases: Arc<std::sync::Mutex<Vec<pb::MoveSlotsRequest>>>,
        not_drained: Arc<std::sync::atomic::AtomicU32>,
    }

    const VALUE_BYTES: usize = 800 * 1024;
    const EXPORTED_VERSION: u64 = 42;

    #[tonic::async_trait]
    impl pb::shard_server::Shard for FakeShard {
        async fn read(
            &self,
            _request: tonic::Request<pb::ReadRequest>,
        ) -> Result<tonic::Response<pb::ReadResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake shard"))
        }

        async fn scan(
            &self,
            _request: tonic::Request<pb::ScanRequest>,
        ) -> Result<tonic::Response<pb::ScanResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake shard"))
        }

        async fn commit_local(
            &self,
            _request: tonic::Request<pb::CommitLocalRequest>,
        ) -> Result<tonic::Response<pb::CommitLocalResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake shard"))
        }

        async fn prepare(
            &self,
            _request: tonic::Request<pb::PrepareRequest>,
        ) -> Result<tonic::Response<pb::PrepareResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake shard"))
        }

        async fn decide(
            &self,
            _request: tonic::Request<pb::DecideRequest>,
        ) -> Result<tonic::Response<pb::DecideResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake shard"))
        }

        async fn finalize(
            &self,
            _request: tonic::Request<pb::FinalizeRequest>,
        ) -> Result<tonic::Response<pb::FinalizeResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake shard"))
        }

        async fn finalize_batch(
            &self,
            _request: tonic::Request<pb::FinalizeBatchRequest>,
        ) -> Result<tonic::Response<pb::FinalizeBatchResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake shard"))
        }

        async fn resolve(
            &self,
            _request: tonic::Request<pb::ResolveRequest>,
        ) -> Result<tonic::Response<pb::ResolveResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake shard"))
        }

        async fn fence(
            &self,
            _request: tonic::Request<pb::FenceRequest>,
        ) -> Result<tonic::Response<pb::FenceResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake shard"))
        }

        async fn forget(
            &self,
            _request: tonic::Request<pb::ForgetRequest>,
        ) -> Result<tonic::Response<pb::ForgetResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake shard"))
        }

        async fn list_prepared(
            &self,
            _request: tonic::Request<pb::ListPreparedRequest>,
        ) -> Result<tonic::Response<pb::ListPreparedResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake shard"))
        }

        async fn lookup(
            &self,
            _request: tonic::Request<pb::LookupRequest>,
        ) -> Result<tonic::Response<pb::LookupResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake shard"))
        }

        async fn validate(
            &self,
            _request: tonic::Request<pb::ValidateRequest>,
        ) -> Result<tonic::Response<pb::ValidateResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake shard"))
        }

        async fn release(
            &self,
            _request: tonic::Request<pb::ReleaseRequest>,
        ) -> Result<tonic::Response<pb::ReleaseResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake shard"))
        }

        async fn shard_status(
            &self,
            _request: tonic::Request<pb::ShardStatusRequest>,
        ) -> Result<tonic::Response<pb::ShardStatusResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake shard"))
        }

        async fn transfer_primary(
            &self,
            _request: tonic::Request<pb::TransferPrimaryRequest>,
        ) -> Result<tonic::Response<pb::TransferPrimaryResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake shard"))
        }

        type ReplicateStream = tokio_stream::Empty<Result<pb::ReplicaBatch, tonic::Status>>;

        async fn replicate(
            &self,
            _request: tonic::Request<tonic::Streaming<pb::ReplicaAck>>,
        ) -> Result<tonic::Response<Self::ReplicateStream>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake shard"))
        }

        async fn move_slots(
            &self,
            request: tonic::Request<pb::MoveSlotsRequest>,
        ) -> Result<tonic::Response<pb::MoveSlotsResponse>, tonic::Status> {
            let request = request.into_inner();
            let op = pb::SlotOp::try_from(request.op).expect("a known op");
            self.calls
                .lock()
                .expect("calls")
                .push(op.as_str_name().to_string());
            if op == pb::SlotOp::Release {
                self.releases
                    .lock()
                    .expect("releases")
                    .push(request.clone());
            }
            Ok(tonic::Response::new(pb::MoveSlotsResponse {
                map_epoch: request.map_epoch,
            }))
        }

        type ExportSlotsStream =
            tokio_stream::Iter<std::vec::IntoIter<Result<pb::ExportChunk, tonic::Status>>>;

        async fn export_slots(
            &self,
            request: tonic::Request<pb::ExportSlotsRequest>,
        ) -> Result<tonic::Response<Self::ExportSlotsStream>, tonic::Status> {
            let request = request.into_inner();
            if request.drained
                && self
                    .not_drained
                    .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
                    .is_ok()
            {
                return Err(trellis_proto::error::status(
                    tonic::Code::FailedPrecondition,
                    "prepared transactions remain",
                    pb::ErrorReason::NotDrained.as_str_name(),
                    None,
                ));
            }
            self.calls.lock().expect("calls").push(format!(
                "EXPORT above {} drained {}",
                request.above_version, request.drained
            ));
            let entry = |i: u8| pb::ExportEntry {
                key: vec![i],
                value: vec![i; VALUE_BYTES],
                deleted: false,
                version: u64::from(i),
            };
            let chunks = vec![
                Ok(pb::ExportChunk {
                    entries: vec![entry(1), entry(2)],
                    last: false,
                    complete_version: 0,
                }),
                Ok(pb::ExportChunk {
                    entries: vec![entry(3)],
                    last: true,
                    complete_version: EXPORTED_VERSION,
                }),
            ];
            Ok(tonic::Response::new(tokio_stream::iter(chunks)))
        }

        async fn ingest(
            &self,
            request: tonic::Request<pb::IngestRequest>,
        ) -> Result<tonic::Response<pb::IngestResponse>, tonic::Status> {
            let request = request.into_inner();
            let bytes = request
                .entries
                .iter()
                .map(|e| e.key.len() + e.value.len())
                .sum();
            self.calls
                .lock()
                .expect("calls")
                .push(format!("INGEST from {}", request.from_group));
            self.ingests
                .lock()
                .expect("ingests")
                .push((request.entries.len(), bytes));
            Ok(tonic::Response::new(pb::IngestResponse { version: 100 }))
        }

        type FeedStream = tokio_stream::Empty<Result<pb::FeedBatch, tonic::Status>>;

        async fn feed(
            &self,
            _request: tonic::Request<pb::FeedRequest>,
        ) -> Result<tonic::Response<Self::FeedStream>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake shard"))
        }
    }

    /// Serves `fake` on 127.0.0.1:0; its address.
    async fn serve_fake(fake: FakeShard) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(
                    pb::shard_server::ShardServer::new(fake)
                        .max_decoding_message_size(trellis_types::limits::MESSAGE_BYTES_MAX)
                        .max_encoding_message_size(trellis_types::limits::MESSAGE_BYTES_MAX),
                )
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    /// Two groups served by stand-ins (the source refusing its first
    /// `not_drained` drained exports), a registered coordinator `me`, and
    /// a job moving one slot of group 1 to group 2.
    struct Setup {
        catalog: crate::catalog::Catalog,
        source: FakeShard,
        target: FakeShard,
        id: u64,
        metrics: Arc<Metrics>,
        driver: Driver,
        map: ClusterMap,
        slot: u32,
    }

    async fn setup(not_drained: u32) -> Setup {
        setup_slots(not_drained, 1).await
    }

    /// [`setup`] with a job moving the first `slots` slots of group 1.
    async fn setup_slots(not_drained: u32, slots: usize) -> Setup {
        use crate::catalog::Catalog;
        use crate::reshard::plan_move;

        let catalog = Catalog::in_memory();
        catalog.bootstrap(2).await.expect("bootstrap");
        let (source, target) = (FakeShard::default(), FakeShard::default());
        source.not_drained.store(not_drained, Relaxed);
        for (group, fake) in [(1, &source), (2, &target)] {
            let addr = serve_fake(fake.clone()).await;
            catalog
                .register_member(group, &addr, 1)
                .await
                .expect("register");
        }
        catalog
            .register_coordinator("me", "127.0.0.1:1", "")
            .await
            .expect("register");
        let map = catalog.load().await.expect("load");
        let mut moving = SlotSet::empty();
        (0..SLOTS)
            .filter(|s| map.slots[*s as usize] == 1)
            .take(slots)
            .for_each(|s| moving.insert(s));
        let slot = (0..SLOTS)
            .find(|s| moving.contains(*s))
            .expect("a slot of 1");
        let batches = plan_move(&map.slots, &[1, 2], 1, 2, &moving).expect("plan");
        let id = catalog
            .create_job(&encode(&JobRecord::new(Job::new(0, batches), unix_ms())))
            .await
            .expect("job");
        let metrics = Arc::new(Metrics::default());
        let router = Arc::new(Router::new(catalog.clone(), map.clone()));
        let driver = Driver::new(
            "me".into(),
            TxnManager::new(router, metrics.clone()),
            Arc::new(Notify::new()),
        );
        Setup {
            catalog,
            source,
            target,
            id,
            metrics,
            driver,
            map,
            slot,
        }
    }

    /// Story: the source's prepared transactions never drain. Each
    /// cutover thaws the source once the freeze's bound has passed and
    /// catches up again; after `FREEZE_ATTEMPTS_MAX` tries the job pauses
    /// itself with the reason, and the map never changed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cutover_that_never_drains_thaws_then_the_job_pauses() {
        let Setup {
            catalog,
            source,
            target,
            id,
            mut driver,
            map,
            ..
        } = setup(u32::MAX).await;
        let started = std::time::Instant::now();
        driver.tick().await;
        let took = started.elapsed();

        let row = catalog.jobs().await.expect("jobs").remove(0);
        let record = decode(id, &row.state).expect("decode");
        match &record.job.control {
            Control::Paused {
                reason: Some(reason),
            } => assert!(reason.contains("did not drain"), "{reason}"),
            other => panic!("expected a paused job, got {other:?}"),
        }
        let calls = source.calls.lock().expect("calls").clone();
        let attempts = crate::reshard::FREEZE_ATTEMPTS_MAX as usize;
        assert_eq!(calls.iter().filter(|c| *c == "FREEZE").count(), attempts);
        assert_eq!(calls.iter().filter(|c| *c == "THAW").count(), attempts);
        assert_eq!(calls.last().map(String::as_str), Some("THAW"), "{calls:?}");
        assert!(
            took >= (crate::reshard::FREEZE_MAX - DRAIN_RETRY) * attempts as u32,
            "each freeze lasted about its bound: {took:?}"
        );
        assert!(
            !target
                .calls
                .lock()
                .expect("calls")
                .contains(&"FOLLOW_MAP".to_string())
        );
        assert_eq!(catalog.load().await.expect("load"), map, "nothing flipped");
    }

    /// Story: a job moving one slot between two groups whose primaries
    /// are stand-ins runs to its end in one tick: the target begins the
    /// import, the base copy reaches it in Ingest calls of at most
    /// `INGEST_BYTES_MAX` bytes, the source freezes, its drained export is
    /// refused twice (prepared transactions) and then succeeds within the
    /// freeze's bound, the catalog's map gives the slot to the target at
    /// the next epoch, both groups are told the map, and the source
    /// releases the slot under that epoch. The job is saved done, with
    /// what it copied, and the metrics count the move.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_runs_every_step_against_the_groups_primaries() {
        let Setup {
            catalog,
            source,
            target,
            id,
            metrics,
            mut driver,
            map,
            slot,
        } = setup(2).await;

        driver.tick().await;

        let row = catalog.jobs().await.expect("jobs").remove(0);
        let record = decode(id, &row.state).expect("decode");
        assert_eq!(record.job.control, Control::Done, "{record:?}");
        assert_eq!(record.job.slots_progress(), (1, 1));
        assert_eq!(record.job.keys_copied, 6, "three keys, twice");
        assert_eq!(record.job.bytes_copied, 6 * (1 + VALUE_BYTES as u64));
        assert!(
            record.pause_max_ms < FREEZE_MAX_MS,
            "{}",
            record.pause_max_ms
        );
        let after = catalog.load().await.expect("load");
        assert_eq!(after.map_epoch, map.map_epoch + 1);
        assert_eq!(after.slots[slot as usize], 2, "the slot moved");
        assert_eq!(
            after.slots.iter().filter(|g| **g == 2).count(),
            map.slots.iter().filter(|g| **g == 2).count() + 1,
            "and nothing else"
        );

        let calls = |fake: &FakeShard| fake.calls.lock().expect("calls").clone();
        assert_eq!(
            calls(&target),
            [
                "BEGIN_IMPORT",
                "INGEST from 1",
                "INGEST from 1",
                "INGEST from 1",
                "INGEST from 1",
                "FOLLOW_MAP"
            ]
        );
        assert_eq!(
            calls(&source),
            [
                "EXPORT above 0 drained false",
                "FREEZE",
                &format!("EXPORT above {EXPORTED_VERSION} drained true"),
                "FOLLOW_MAP",
                "RELEASE"
            ]
        );
        for (entries, bytes) in target.ingests.lock().expect("ingests").iter() {
            assert!(
                *entries > 0 && *bytes <= INGEST_BYTES_MAX,
                "{entries} entries, {bytes} bytes"
            );
        }
        let release = source.releases.lock().expect("releases")[0].clone();
        assert_eq!(release.map_epoch, after.map_epoch);
        assert_eq!(release.owned, after.slots_of(1).to_bytes());
        assert_eq!(
            release.slots,
            SlotSet::parse(&slot.to_string()).expect("slot").to_bytes()
        );

        assert_eq!(metrics.reshard_slots_moved.get(), 1);
        assert_eq!(metrics.reshard_keys_copied.get(), 6);
        assert!(
            metrics
                .render()
                .text()
                .contains("trellis_reshard_pause_seconds_count 1")
        );
    }

    /// Story: a job of many batches runs out of its tick's steps with a
    /// batch frozen (every batch takes six actions: the budget ends just
    /// after a drained copy). The tick still flips that batch before it
    /// stops, and asks for the next tick at once: no cutover waits for a
    /// later tick, where it used to wait a whole `DRIVER_TICK` frozen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tick_out_of_steps_never_leaves_a_batch_frozen() {
        const ACTIONS_PER_BATCH: u32 = 6;
        let batches = STEPS_PER_TICK / ACTIONS_PER_BATCH + 1;
        assert_eq!(
            STEPS_PER_TICK % ACTIONS_PER_BATCH,
            4,
            "the budget ends after a batch's fourth action, its drain"
        );
        let Setup {
            catalog,
            id,
            mut driver,
            ..
        } = setup_slots(0, (batches * SLOTS_PER_BATCH) as usize).await;
        // Heartbeats as the refresher would: the ticks take real time on a
        // busy machine, and a driver with an old heartbeat fences itself.
        let beating = catalog.clone();
        let heartbeats = tokio::spawn(async move {
            loop {
                let _ = beating.heartbeat_coordinator("me", "127.0.0.1:1", "").await;
                sleep(Duration::from_millis(200)).await;
            }
        });

        let wait = driver.tick().await;

        let row = catalog.jobs().await.expect("jobs").remove(0);
        let record = decode(id, &row.state).expect("decode");
        assert!(
            !record.job.frozen(),
            "stored at {:?} of batch {}",
            record.job.phase,
            record.job.batch
        );
        assert_eq!(record.job.control, Control::Running, "batches are left");
        assert_eq!(
            record.job.batch as u32,
            STEPS_PER_TICK / ACTIONS_PER_BATCH,
            "every batch begun was flipped"
        );
        assert_eq!(wait, Duration::ZERO, "the next tick comes at once");
        driver.tick().await;
        let row = catalog.jobs().await.expect("jobs").remove(0);
        let record = decode(id, &row.state).expect("decode");
        assert_eq!(record.job.control, Control::Done, "{record:?}");
        heartbeats.abort();
    }

    const FREEZE_MAX_MS: u64 = crate::reshard::FREEZE_MAX.as_millis() as u64 + 1_000;

    #[test]
    fn map_after_moves_only_the_batches_slots() {
        let current = vec![1; SLOTS as usize];
        let batch = Batch {
            from: 1,
            to: 2,
            slots: SlotSet::parse("3-4").expect("slots"),
        };
        let after = map_after(&current, &[batch]);
        assert_eq!(after[3], 2);
        assert_eq!(after[4], 2);
        assert_eq!(after[5], 1);
        assert_eq!(after.iter().filter(|g| **g == 2).count(), 2);
    }
}
