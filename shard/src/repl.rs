//! Replication state of one replica: its role in the group, the feed of
//! recent log records a primary streams to backups, what each backup has
//! acknowledged, the watermarks writes wait for, and the primary's lease.
//!
//! No IO and no clock here: every method that needs the time takes `now`.
//! [`crate::replica`] drives it (streams, catalog, failover); the rules for
//! changing the group's configuration are in [`crate::role`], the gauges
//! are rendered by [`crate::metrics::render_repl`]. Waiters learn of new
//! watermarks and records through `watch` channels (notification only: a
//! send never blocks).
//!
//! # Rules
//! - Only a primary whose lease is valid serves anything. The lease is
//!   granted by the in-sync backups: each acknowledges the newest batch it
//!   got, and the lease runs [`LEASE`] from when the oldest of those
//!   acknowledged batches was sent. With no in-sync backup the lease never
//!   lapses (nobody else may be promoted).
//! - A backup asks for promotion only after hearing nothing for [`GRACE`]
//!   (longer than [`LEASE`]), so an old primary has stopped serving before
//!   a new one starts.
//! - `sync` watermark: durable on the primary and every in-sync backup.
//!   `semi`: durable on the primary and at least one in-sync backup (or the
//!   primary alone when it has none). Reads wait for `sync`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use prost::bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;
use trellis_types::Lsn;

use crate::freshness::{Decline, Fresh, Freshness, KeyAt, SafePoint};
use crate::role::GroupConfig;

/// How often a primary sends a batch (empty if need be) to each backup.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// How often a primary sends each backup a batch when nothing new is
/// logged: a heartbeat for its lease and a safe point for reads on backups
/// ([`crate::freshness`]), so an idle backup proves itself this fresh
/// (plus a round trip). At most [`HEARTBEAT_INTERVAL`].
pub const SAFE_POINT_INTERVAL: Duration = Duration::from_millis(50);
const _: () = assert!(SAFE_POINT_INTERVAL.as_millis() <= HEARTBEAT_INTERVAL.as_millis());
/// How long an acknowledged batch keeps the primary's lease.
pub const LEASE: Duration = Duration::from_millis(800);
/// Silence after which a backup asks for a new primary. Longer than
/// [`LEASE`] by a margin for clock rate differences.
pub const GRACE: Duration = Duration::from_millis(1200);
/// Silence after which a primary takes an in-sync backup out of the
/// configuration, so SYNC writes and the lease stop waiting for it. Shorter
/// than [`LEASE`], so a dead backup costs no lease.
pub const BACKUP_SILENCE_MAX: Duration = Duration::from_millis(500);
// The order the failure detection rests on: a dead backup is dropped
// before it costs the primary its lease, and a backup asks for a new
// primary only after the old one's lease has lapsed.
const _: () = assert!(BACKUP_SILENCE_MAX.as_millis() < LEASE.as_millis());
const _: () = assert!(LEASE.as_millis() < GRACE.as_millis());
// A backup hears several heartbeats within each of those bounds.
const _: () = assert!(HEARTBEAT_INTERVAL.as_millis() * 2 < BACKUP_SILENCE_MAX.as_millis());

/// Bytes of recent records a replica keeps in memory to stream to backups;
/// a backup further behind gets a snapshot.
pub const FEED_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most bytes of records in one batch to a backup.
pub const BATCH_BYTES_MAX: usize = 1024 * 1024;
/// Heartbeat send times a primary remembers (acknowledgements of older ones
/// renew nothing).
pub const HEARTBEATS_REMEMBERED: usize = 1024;

/// Durability points a primary remembers to tell how long its oldest
/// record not yet on any backup has waited; past this many, the newest
/// point is moved forward instead (its time then overstates the wait of
/// the records it gained, never understates it).
pub const AT_RISK_POINTS_MAX: usize = 4096;

/// What this replica is in its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not configured yet (waiting for the catalog).
    Idle,
    /// A standalone shard (no coordinator): serves, never replicates.
    Standalone,
    Primary,
    /// In the configuration, following the primary.
    Backup,
    /// Following the primary, not yet in the configuration.
    Learner,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Idle => "IDLE",
            Role::Standalone => "PRIMARY",
            Role::Primary => "PRIMARY",
            Role::Backup => "BACKUP",
            Role::Learner => "LEARNER",
        }
    }
}

/// Durability a change waits for before it is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Durable on the primary (ASYNC).
    Local,
    /// And on at least one in-sync backup (SEMI_SYNC).
    Semi,
    /// And on every in-sync backup (SYNC).
    Sync,
}

impl Level {
    /// From `trellis.v1.Durability`'s number; unknown numbers are SYNC.
    pub fn from_durability(d: u32) -> Level {
        match d {
            2 => Level::Local,
            1 => Level::Semi,
            _ => Level::Sync,
        }
    }
}

/// What waiting writes and reads watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Marks {
    pub local: Lsn,
    pub semi: Lsn,
    pub sync: Lsn,
    /// Bumped whenever the role or epoch changes: a waiter that sees a new
    /// generation gives up (the answer is no longer this primary's).
    pub generation: u64,
}

impl Marks {
    pub fn at(&self, level: Level) -> Lsn {
        match level {
            Level::Local => self.local,
            Level::Semi => self.semi,
            Level::Sync => self.sync,
        }
    }
}

/// One record in the feed. The payload is a shared buffer: batches for
/// several backups (and the wire messages built from them) hold the same
/// bytes, never copies.
#[derive(Clone, Debug)]
pub struct FeedRecord {
    pub lsn: Lsn,
    pub kind: u8,
    pub payload: Bytes,
}

#[derive(Default)]
struct FeedInner {
    records: VecDeque<FeedRecord>,
    bytes: usize,
}

/// Recent records in LSN order, bounded in bytes (by default
/// [`FEED_BYTES_MAX`]).
pub struct Feed {
    inner: Mutex<FeedInner>,
    last: watch::Sender<Lsn>,
    bytes_max: usize,
}

/// Why a backup cannot be fed from the feed.
#[derive(Debug, PartialEq, Eq)]
pub enum FeedGap {
    /// The records it needs were dropped from memory: send a snapshot.
    Trimmed,
}

impl Feed {
    fn new(bytes_max: usize) -> Feed {
        Feed {
            inner: Mutex::new(FeedInner::default()),
            last: watch::channel(0).0,
            bytes_max,
        }
    }

    /// Appends the record with the next LSN. Call in LSN order.
    pub fn push(&self, lsn: Lsn, kind: u8, payload: Bytes) {
        let mut inner = self.inner.lock().expect("feed lock poisoned");
        if inner.records.back().is_some_and(|r| r.lsn + 1 != lsn) {
            // Not contiguous (after a snapshot install): start afresh.
            inner.records.clear();
            inner.bytes = 0;
        }
        inner.bytes += payload.len();
        inner.records.push_back(FeedRecord { lsn, kind, payload });
        while inner.bytes > self.bytes_max && inner.records.len() > 1 {
            let dropped = inner.records.pop_front().expect("not empty");
            inner.bytes -= dropped.payload.len();
        }
        drop(inner);
        self.last.send_replace(lsn);
    }

    /// Forgets everything (the state was replaced by a snapshot at `lsn`).
    pub fn reset(&self, lsn: Lsn) {
        let mut inner = self.inner.lock().expect("feed lock poisoned");
        inner.records.clear();
        inner.bytes = 0;
        drop(inner);
        self.last.send_replace(lsn);
    }

    /// Records from `from` on, at most [`BATCH_BYTES_MAX`] (at least one).
    /// Empty when there is nothing new.
    pub fn batch(&self, from: Lsn) -> Result<Vec<FeedRecord>, FeedGap> {
        let inner = self.inner.lock().expect("feed lock poisoned");
        let Some(first) = inner.records.front().map(|r| r.lsn) else {
            return if from > *self.last.borrow() {
                Ok(Vec::new())
            } else {
                Err(FeedGap::Trimmed)
            };
        };
        if from < first {
            return Err(FeedGap::Trimmed);
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        let skip = usize::try_from(from - first).unwrap_or(usize::MAX);
        for record in inner.records.iter().skip(skip) {
            if !out.is_empty() && bytes + record.payload.len() > BATCH_BYTES_MAX {
                break;
            }
            bytes += record.payload.len();
            out.push(record.clone());
        }
        Ok(out)
    }

    /// Whether a backup whose log ends at `last` can be fed from here.
    pub fn can_feed_after(&self, last: Lsn) -> bool {
        let inner = self.inner.lock().expect("feed lock poisoned");
        match inner.records.front() {
            Some(r) => r.lsn <= last + 1,
            None => last >= *self.last.borrow(),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Lsn> {
        self.last.subscribe()
    }
}

/// What a primary knows of one member.
#[derive(Clone, Debug)]
pub struct Peer {
    pub acked: Lsn,
    /// When it last acknowledged anything (or when this primary started,
    /// before it did).
    pub last_ack: Instant,
    /// It acknowledged something to this primary: `last_ack` is a time it
    /// was heard from, not only when tracking began (for the status).
    pub heard: bool,
    /// Send time of the newest batch it acknowledged: its lease grant.
    pub lease_from: Option<Instant>,
    /// Set while its stream is bringing it up to date.
    pub catch_up: Option<CatchUp>,
}

/// How a backup that is behind is being brought up to date.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatchUpMode {
    /// A copy of the primary's state, then the records after it.
    Snapshot,
    /// A backlog of records read back from the log on disk.
    Log,
    /// A backlog of records still in the in-memory feed.
    Feed,
}

impl CatchUpMode {
    pub fn name(self) -> &'static str {
        match self {
            CatchUpMode::Snapshot => "snapshot",
            CatchUpMode::Log => "log",
            CatchUpMode::Feed => "feed",
        }
    }
}

/// Progress of one catch-up, as of the last batch sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CatchUp {
    /// The stream reporting it (a backup that reconnects gets a new one;
    /// the old stream's report must not clear the new one's).
    pub stream: u64,
    pub mode: CatchUpMode,
    /// Bytes of a snapshot, records of a backlog, sent so far.
    pub done: u64,
    /// Bytes of the snapshot, records of the backlog up to the primary's
    /// last record when the batch went out (a backlog's end moves on as
    /// writes arrive).
    pub total: u64,
}

/// The mutable part, under one lock (private: callers read a [`ReplView`]
/// or ask a question; every change goes through a method).
struct Inner {
    role: Role,
    epoch: u64,
    since: Instant,
    /// The configuration this replica acts on (from the catalog).
    config: Option<GroupConfig>,
    /// Primary: every other member, by address. Ordered, so that walking
    /// the peers (watermarks, lease, status) goes the same way every run.
    peers: BTreeMap<String, Peer>,
    heartbeats: VecDeque<(u64, Instant)>,
    next_heartbeat: u64,
    /// Number of the next stream to a backup (catch-up reports).
    next_stream: u64,
    /// Backup: when the primary was last heard from.
    last_heard: Instant,
    /// Primary handing over to another member: serves nothing, keeps
    /// streaming.
    handing_over: bool,
}

/// A consistent copy of a replica's replication state, for the status and
/// the metrics.
#[derive(Clone, Debug)]
pub struct ReplView {
    pub role: Role,
    pub epoch: u64,
    /// The configuration this replica acts on (from the catalog).
    pub config: Option<GroupConfig>,
    /// Primary: what it knows of every other member, by address.
    pub peers: BTreeMap<String, Peer>,
    /// Backup: when the primary was last heard from.
    pub last_heard: Instant,
}

impl ReplView {
    /// Whether `addr` is an in-sync member of the configuration.
    pub fn in_sync(&self, addr: &str) -> bool {
        self.config
            .as_ref()
            .is_some_and(|c| c.members.iter().any(|m| m.addr == addr && m.in_sync))
    }
}

/// Replication state of a replica.
pub struct Repl {
    inner: Mutex<Inner>,
    marks: watch::Sender<Marks>,
    pub feed: Feed,
    /// This replica's own address in the configuration.
    me: Mutex<String>,
    /// Where this replica serves metrics, for the cluster status.
    metrics_addr: Mutex<String>,
    /// The coordinator it reaches the catalog through.
    coordinator: Mutex<Option<String>>,
    /// Primary: when its durable LSN reached each value, for the records
    /// not yet on any backup (oldest first, at most
    /// [`AT_RISK_POINTS_MAX`]).
    durable_at: Mutex<VecDeque<(Lsn, Instant)>>,
    /// Backup: how fresh its data provably is (reads on backups).
    freshness: Mutex<Freshness>,
    /// Bumped whenever `freshness` changes, for reads waiting on it.
    fresh_tx: watch::Sender<u64>,
    /// The origin of this replica's clock tokens (see [`Repl::clock_token`]).
    clock_base: Instant,
}

/// Records durable on a primary and on none of its backups: what an ASYNC
/// commit may lose in a failover.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AtRisk {
    pub records: u64,
    /// How long the oldest of them has been durable here.
    pub oldest: Duration,
}

impl Repl {
    /// A replica's replication state at start-up (`now`).
    pub fn new(standalone: bool, feed_bytes_max: usize, now: Instant) -> Repl {
        Repl {
            inner: Mutex::new(Inner {
                role: if standalone {
                    Role::Standalone
                } else {
                    Role::Idle
                },
                epoch: 0,
                since: now,
                config: None,
                peers: BTreeMap::new(),
                heartbeats: VecDeque::new(),
                next_heartbeat: 1,
                next_stream: 1,
                last_heard: now,
                handing_over: false,
            }),
            marks: watch::channel(Marks::default()).0,
            feed: Feed::new(feed_bytes_max),
            me: Mutex::new(String::new()),
            metrics_addr: Mutex::new(String::new()),
            coordinator: Mutex::new(None),
            durable_at: Mutex::new(VecDeque::new()),
            freshness: Mutex::new(Freshness::new()),
            fresh_tx: watch::channel(0).0,
            clock_base: now,
        }
    }

    // ------------------------------------------------- reads on backups

    /// `now` on this replica's clock as a token a backup sends its primary
    /// with each acknowledgement (microseconds since the replica started,
    /// plus one: 0 means "no token"). Only this replica reads it back.
    pub fn clock_token(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.clock_base).as_micros() as u64 + 1
    }

    /// The instant a token of this replica's stands for.
    fn token_instant(&self, token: u64) -> Instant {
        self.clock_base + Duration::from_micros(token.saturating_sub(1))
    }

    /// Backup: a batch was applied at `now` (the log ends at `applied`);
    /// the primary's commit point and the safe point it sent, if any
    /// (`safe_token` 0: none). See [`crate::freshness`].
    pub fn on_batch(
        &self,
        now: Instant,
        applied: Lsn,
        commit_lsn: Lsn,
        safe_lsn: Lsn,
        safe_token: u64,
    ) {
        let safe = (safe_token > 0).then(|| SafePoint {
            lsn: safe_lsn,
            as_of: self.token_instant(safe_token),
        });
        self.freshness
            .lock()
            .expect("freshness lock poisoned")
            .on_batch(now, applied, commit_lsn, safe);
        self.fresh_tx.send_modify(|g| *g += 1);
    }

    /// Forgets every safe point (a new stream, a snapshot, a role change).
    pub fn reset_freshness(&self) {
        self.freshness
            .lock()
            .expect("freshness lock poisoned")
            .reset();
        self.fresh_tx.send_modify(|g| *g += 1);
    }

    /// Whether this replica, as a backup, may serve a read of `keys` with
    /// staleness bound `bound` and session floor `floor` (an LSN) at `now`.
    pub fn check_fresh(
        &self,
        now: Instant,
        bound: Duration,
        floor: Lsn,
        keys: &[KeyAt],
    ) -> Result<Fresh, Decline> {
        self.freshness
            .lock()
            .expect("freshness lock poisoned")
            .check(now, bound, floor, keys)
    }

    /// Notified whenever what [`Repl::check_fresh`] answers may change.
    pub fn subscribe_fresh(&self) -> watch::Receiver<u64> {
        self.fresh_tx.subscribe()
    }

    /// How long ago the newest provable point was (backup), if there is one.
    pub fn staleness(&self, now: Instant) -> Option<Duration> {
        self.freshness
            .lock()
            .expect("freshness lock poisoned")
            .as_of()
            .map(|at| now.saturating_duration_since(at))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("repl lock poisoned")
    }

    /// A copy of the state, taken under one lock.
    pub fn view(&self) -> ReplView {
        let inner = self.lock();
        ReplView {
            role: inner.role,
            epoch: inner.epoch,
            config: inner.config.clone(),
            peers: inner.peers.clone(),
            last_heard: inner.last_heard,
        }
    }

    /// The configuration this replica acts on.
    pub fn config(&self) -> Option<GroupConfig> {
        self.lock().config.clone()
    }

    /// Backup: when the primary was last heard from.
    pub fn last_heard(&self) -> Instant {
        self.lock().last_heard
    }

    /// Primary: what it knows of every other member, by address.
    pub fn peers(&self) -> BTreeMap<String, Peer> {
        self.lock().peers.clone()
    }

    pub fn set_me(&self, addr: &str) {
        *self.me.lock().expect("me lock poisoned") = addr.to_string();
    }

    /// Where this replica serves metrics (reported by its status).
    pub fn set_metrics_addr(&self, addr: &str) {
        *self
            .metrics_addr
            .lock()
            .expect("metrics_addr lock poisoned") = addr.to_string();
    }

    pub fn metrics_addr(&self) -> String {
        self.metrics_addr
            .lock()
            .expect("metrics_addr lock poisoned")
            .clone()
    }

    pub fn set_coordinator(&self, addr: &str) {
        *self.coordinator.lock().expect("coordinator lock poisoned") = Some(addr.to_string());
    }

    pub fn coordinator(&self) -> Option<String> {
        self.coordinator
            .lock()
            .expect("coordinator lock poisoned")
            .clone()
    }

    pub fn me(&self) -> String {
        self.me.lock().expect("me lock poisoned").clone()
    }

    pub fn role(&self) -> (Role, u64) {
        let inner = self.lock();
        (inner.role, inner.epoch)
    }

    pub fn marks(&self) -> Marks {
        *self.marks.borrow()
    }

    pub fn subscribe_marks(&self) -> watch::Receiver<Marks> {
        self.marks.subscribe()
    }

    /// Whether this replica may answer clients now.
    pub fn serving(&self, now: Instant) -> bool {
        let inner = self.lock();
        match inner.role {
            Role::Standalone => true,
            Role::Primary => {
                !inner.handing_over && lease_until(&inner).is_none_or(|until| now < until)
            }
            _ => false,
        }
    }

    /// Starts (or abandons) a hand-over: no answers meanwhile.
    pub fn set_handing_over(&self, on: bool) {
        self.lock().handing_over = on;
    }

    /// What `addr` acknowledged (primary).
    pub fn acked(&self, addr: &str) -> Option<Lsn> {
        self.lock().peers.get(addr).map(|p| p.acked)
    }

    /// Milliseconds of lease left (primary), `u64::MAX` if it cannot lapse.
    pub fn lease_left(&self, now: Instant) -> u64 {
        let inner = self.lock();
        match inner.role {
            Role::Standalone => u64::MAX,
            Role::Primary => match lease_until(&inner) {
                None => u64::MAX,
                Some(until) => until.saturating_duration_since(now).as_millis() as u64,
            },
            _ => 0,
        }
    }

    /// Changes role and epoch (and the configuration acted on); waiters of
    /// the old generation give up.
    pub fn set_role(
        &self,
        role: Role,
        epoch: u64,
        config: Option<GroupConfig>,
        local: Lsn,
        now: Instant,
    ) {
        let mut inner = self.lock();
        let changed = inner.role != role || inner.epoch != epoch;
        if changed {
            self.reset_freshness();
            inner.handing_over = false;
            inner.role = role;
            inner.epoch = epoch;
            inner.since = now;
            inner.last_heard = now;
            inner.peers.clear();
        }
        if let Some(config) = config {
            inner.config = Some(config);
        }
        if inner.role == Role::Primary {
            let me = self.me();
            let members: Vec<String> = inner
                .config
                .iter()
                .flat_map(|c| c.members.iter())
                .filter(|m| m.addr != me)
                .map(|m| m.addr.clone())
                .collect();
            inner.peers.retain(|addr, _| members.contains(addr));
            for addr in members {
                inner.peers.entry(addr).or_insert(Peer {
                    acked: 0,
                    last_ack: now,
                    heard: false,
                    lease_from: None,
                    catch_up: None,
                });
            }
        }
        self.recompute_locked(&inner, local, changed, now);
    }

    /// Records a backup's acknowledgement, received at `now`.
    pub fn ack(&self, addr: &str, durable: Lsn, heartbeat: u64, local: Lsn, now: Instant) {
        let mut inner = self.lock();
        if inner.role != Role::Primary {
            return;
        }
        let sent = inner
            .heartbeats
            .iter()
            .find(|(seq, _)| *seq == heartbeat)
            .map(|(_, at)| *at);
        if let Some(peer) = inner.peers.get_mut(addr) {
            peer.acked = peer.acked.max(durable);
            peer.last_ack = now;
            peer.heard = true;
            if let Some(sent) = sent
                && peer.lease_from.is_none_or(|l| l < sent)
            {
                peer.lease_from = Some(sent);
            }
        }
        self.recompute_locked(&inner, local, false, now);
    }

    /// A new heartbeat number for a batch about to be sent (`now`); its
    /// send time is remembered for the lease.
    pub fn heartbeat(&self, now: Instant) -> u64 {
        let mut inner = self.lock();
        let seq = inner.next_heartbeat;
        inner.next_heartbeat += 1;
        inner.heartbeats.push_back((seq, now));
        while inner.heartbeats.len() > HEARTBEATS_REMEMBERED {
            inner.heartbeats.pop_front();
        }
        seq
    }

    /// A number for a new stream to a backup, for [`Repl::report_catch_up`].
    pub fn new_stream(&self) -> u64 {
        let mut inner = self.lock();
        let stream = inner.next_stream;
        inner.next_stream += 1;
        stream
    }

    /// Primary: how the stream `stream` to `addr` is catching it up, or
    /// (`None`) that it is not (any more). A report of an older stream to
    /// the same backup never clears a newer one's.
    pub fn report_catch_up(
        &self,
        addr: &str,
        stream: u64,
        progress: Option<(CatchUpMode, u64, u64)>,
    ) {
        let mut inner = self.lock();
        let Some(peer) = inner.peers.get_mut(addr) else {
            return;
        };
        match progress {
            Some((mode, done, total)) => {
                if peer.catch_up.is_none_or(|c| c.stream <= stream) {
                    peer.catch_up = Some(CatchUp {
                        stream,
                        mode,
                        done,
                        total: total.max(done),
                    });
                }
            }
            None => {
                if peer.catch_up.is_some_and(|c| c.stream <= stream) {
                    peer.catch_up = None;
                }
            }
        }
    }

    /// Backup: the primary spoke (at `now`).
    pub fn heard(&self, now: Instant) {
        self.lock().last_heard = now;
    }

    /// Notes that this replica's log is durable up to `local` (called by
    /// every write once durable), for [`Repl::at_risk`].
    pub fn note_durable(&self, local: Lsn, now: Instant) {
        let inner = self.lock();
        self.note_durable_locked(&inner, local, now);
    }

    fn note_durable_locked(&self, inner: &Inner, local: Lsn, now: Instant) {
        let mut points = self.durable_at.lock().expect("durable_at lock poisoned");
        let Some(best) = best_backup_ack(inner) else {
            points.clear();
            return;
        };
        while points.front().is_some_and(|(lsn, _)| *lsn <= best) {
            points.pop_front();
        }
        if local > best && points.back().is_none_or(|(lsn, _)| *lsn < local) {
            if points.len() >= AT_RISK_POINTS_MAX {
                if let Some(back) = points.back_mut() {
                    back.0 = local;
                }
            } else {
                points.push_back((local, now));
            }
        }
    }

    /// Primary: the records durable here (up to `local`) that no backup
    /// has acknowledged, and how long the oldest has waited. Nothing for a
    /// primary without backups (there is nobody to fail over to) or a
    /// replica that is not a primary.
    pub fn at_risk(&self, local: Lsn, now: Instant) -> AtRisk {
        let inner = self.lock();
        let Some(best) = best_backup_ack(&inner) else {
            return AtRisk::default();
        };
        let records = local.saturating_sub(best);
        if records == 0 {
            return AtRisk::default();
        }
        let points = self.durable_at.lock().expect("durable_at lock poisoned");
        let oldest = points
            .iter()
            .find(|(lsn, _)| *lsn > best)
            .map_or(Duration::ZERO, |(_, at)| now.saturating_duration_since(*at));
        AtRisk { records, oldest }
    }

    /// Recomputes the watermarks (the local durable LSN moved, at `now`).
    pub fn recompute(&self, local: Lsn, now: Instant) {
        let inner = self.lock();
        self.recompute_locked(&inner, local, false, now);
    }

    fn recompute_locked(&self, inner: &Inner, local: Lsn, bump: bool, now: Instant) {
        self.note_durable_locked(inner, local, now);
        let in_sync: Vec<Lsn> = match inner.role {
            Role::Primary => in_sync_peers(inner).map(|(_, p)| p.acked).collect(),
            _ => Vec::new(),
        };
        let (semi, sync) = if in_sync.is_empty() {
            (local, local)
        } else {
            (
                local.min(in_sync.iter().copied().max().unwrap_or(0)),
                local.min(in_sync.iter().copied().min().unwrap_or(0)),
            )
        };
        self.marks.send_modify(|m| {
            m.local = local;
            m.semi = semi;
            m.sync = sync;
            if bump {
                m.generation += 1;
            }
        });
    }
}

/// A primary's most up-to-date backup's acknowledged LSN (any member, in
/// sync or not); `None` for a replica that is not a primary or has no
/// backups.
fn best_backup_ack(inner: &Inner) -> Option<Lsn> {
    if inner.role != Role::Primary {
        return None;
    }
    inner.peers.values().map(|p| p.acked).max()
}

/// In-sync members other than the primary, with what this primary knows of
/// them.
fn in_sync_peers(inner: &Inner) -> impl Iterator<Item = (&String, &Peer)> {
    inner.peers.iter().filter(|(addr, _)| {
        inner
            .config
            .as_ref()
            .is_some_and(|c| c.members.iter().any(|m| &m.addr == *addr && m.in_sync))
    })
}

/// When the lease lapses; `None` if it cannot (no in-sync backup).
fn lease_until(inner: &Inner) -> Option<Instant> {
    let mut until: Option<Instant> = None;
    let mut any = false;
    for (_, peer) in in_sync_peers(inner) {
        any = true;
        let end = match peer.lease_from {
            Some(from) => from + LEASE,
            // Never acknowledged: no lease from it.
            None => inner.since,
        };
        until = Some(until.map_or(end, |u: Instant| u.min(end)));
    }
    if any { until } else { None }
}

/// Where the logs of two replicas stop agreeing, from their epoch lists
/// (`(epoch, first lsn)`, ascending) and last LSNs: everything up to the
/// returned LSN is the same on both. Epoch 0 (before any epoch record)
/// starts at LSN 1 on every replica.
pub fn common_prefix(a: &[(u64, Lsn)], a_last: Lsn, b: &[(u64, Lsn)], b_last: Lsn) -> Lsn {
    let with_zero = |list: &[(u64, Lsn)]| {
        let mut v = vec![(0u64, 1 as Lsn)];
        v.extend(list.iter().copied().filter(|(e, _)| *e > 0));
        v
    };
    let (a, b) = (with_zero(a), with_zero(b));
    let end_of = |list: &[(u64, Lsn)], i: usize, last: Lsn| match list.get(i + 1) {
        Some((_, next)) => (next - 1).min(last),
        None => last,
    };
    // The newest epoch both have, starting at the same LSN: one primary
    // wrote it, so both hold a prefix of the same records.
    for (i, (epoch, start)) in a.iter().enumerate().rev() {
        if let Some(j) = b.iter().position(|(e, s)| e == epoch && s == start) {
            let common = end_of(&a, i, a_last).min(end_of(&b, j, b_last));
            return common.max(start.saturating_sub(1));
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefix_follows_epochs() {
        // Same epochs: the shorter log.
        assert_eq!(common_prefix(&[(1, 1)], 10, &[(1, 1)], 8), 8);
        assert_eq!(common_prefix(&[], 5, &[], 9), 5);
        // b kept records of epoch 1 that a never got; a went on in epoch 2.
        assert_eq!(common_prefix(&[(1, 1), (2, 9)], 12, &[(1, 1)], 10), 8);
        // b was primary in epoch 2 from LSN 7 (records a never saw), then a
        // primary of epoch 3 from 9: only epoch 1 up to 6 is common.
        assert_eq!(
            common_prefix(&[(1, 1), (3, 9)], 12, &[(1, 1), (2, 7)], 10),
            6
        );
        // A fresh replica shares nothing but the empty prefix.
        assert_eq!(common_prefix(&[(1, 1)], 12, &[], 0), 0);
    }

    #[test]
    fn feed_serves_contiguous_batches_and_reports_trims() {
        let feed = Feed::new(FEED_BYTES_MAX);
        for lsn in 1..=10 {
            feed.push(lsn, 1, Bytes::from_static(&[0u8; 10]));
        }
        let batch = feed.batch(4).expect("batch");
        assert_eq!(batch.first().map(|r| r.lsn), Some(4));
        assert_eq!(batch.last().map(|r| r.lsn), Some(10));
        assert!(feed.batch(11).expect("nothing new").is_empty());
        assert!(feed.can_feed_after(0));
        feed.reset(20);
        assert!(matches!(feed.batch(5), Err(FeedGap::Trimmed)));
        assert!(feed.batch(21).expect("empty").is_empty());
        assert!(!feed.can_feed_after(3));
        assert!(feed.can_feed_after(20));
    }

    #[test]
    fn every_backup_s_batch_shares_the_feed_s_bytes() {
        let feed = Feed::new(FEED_BYTES_MAX);
        let payload = Bytes::from(vec![7u8; 64]);
        feed.push(1, 1, payload.clone());
        // Two streams (two backups) take the same record: neither copies.
        for _ in 0..2 {
            let batch = feed.batch(1).expect("batch");
            assert_eq!(batch[0].payload, payload);
            assert_eq!(
                batch[0].payload.as_ptr(),
                payload.as_ptr(),
                "a batch copied the record's bytes"
            );
        }
    }

    fn config(members: &[(&str, bool)]) -> GroupConfig {
        GroupConfig {
            group_id: 1,
            version: 1,
            epoch: 1,
            members: members
                .iter()
                .map(|(a, s)| crate::role::Member {
                    addr: a.to_string(),
                    pid: 0,
                    in_sync: *s,
                })
                .collect(),
        }
    }

    #[test]
    fn watermarks_and_lease_follow_acks() {
        let t0 = Instant::now();
        let repl = Repl::new(false, FEED_BYTES_MAX, t0);
        repl.set_me("p");
        assert!(!repl.serving(t0), "idle serves nothing");
        repl.set_role(
            Role::Primary,
            1,
            Some(config(&[
                ("p", true),
                ("b1", true),
                ("b2", true),
                ("l", false),
            ])),
            10,
            t0,
        );
        assert_eq!((repl.marks().semi, repl.marks().sync), (0, 0));
        assert!(!repl.serving(t0), "no lease before the backups acknowledge");
        let sent = t0 + Duration::from_millis(10);
        let hb = repl.heartbeat(sent);
        let acked = sent + Duration::from_millis(1);
        repl.ack("b1", 7, hb, 10, acked);
        assert_eq!((repl.marks().semi, repl.marks().sync), (7, 0));
        repl.ack("l", 10, hb, 10, acked);
        assert_eq!(repl.marks().sync, 0, "a learner does not count");
        assert!(!repl.serving(acked), "b2 has not granted a lease");
        repl.ack("b2", 9, hb, 10, acked);
        assert_eq!((repl.marks().semi, repl.marks().sync), (9, 7));
        assert!(repl.serving(acked));
        // The lease runs LEASE from the heartbeat's send time, not from
        // its acknowledgement, and lapses at exactly that bound.
        assert!(repl.serving(sent + LEASE - Duration::from_millis(1)));
        assert!(!repl.serving(sent + LEASE), "the lease lapses");
        assert_eq!(repl.lease_left(sent), LEASE.as_millis() as u64);
        assert_eq!(repl.lease_left(sent + LEASE), 0);
        // Out of the configuration: b2 no longer holds the mark back.
        repl.set_role(
            Role::Primary,
            1,
            Some(config(&[("p", true), ("b1", true), ("b2", false)])),
            10,
            acked,
        );
        repl.ack("b1", 10, hb, 10, acked);
        assert_eq!(repl.marks().sync, 10);
        let generation = repl.marks().generation;
        repl.set_role(Role::Backup, 2, None, 10, acked);
        assert!(repl.marks().generation > generation);
        assert!(!repl.serving(acked));
    }

    #[test]
    fn lease_follows_the_oldest_grant_and_never_lapses_without_backups() {
        let t0 = Instant::now();
        let repl = Repl::new(false, FEED_BYTES_MAX, t0);
        repl.set_me("p");
        // No in-sync backup: nobody else may be promoted, no lapse.
        repl.set_role(
            Role::Primary,
            1,
            Some(config(&[("p", true), ("l", false)])),
            5,
            t0,
        );
        assert!(repl.serving(t0 + GRACE * 10));
        assert_eq!(repl.lease_left(t0), u64::MAX);
        assert_eq!((repl.marks().semi, repl.marks().sync), (5, 5));
        // Two in-sync backups granting at different times: the older
        // grant bounds the lease.
        repl.set_role(
            Role::Primary,
            1,
            Some(config(&[("p", true), ("b1", true), ("b2", true)])),
            5,
            t0,
        );
        let early = repl.heartbeat(t0);
        let late = repl.heartbeat(t0 + Duration::from_millis(300));
        repl.ack("b1", 5, late, 5, t0 + Duration::from_millis(301));
        repl.ack("b2", 5, early, 5, t0 + Duration::from_millis(301));
        assert!(repl.serving(t0 + LEASE - Duration::from_millis(1)));
        assert!(!repl.serving(t0 + LEASE));
        // An acknowledgement of an older heartbeat renews nothing.
        repl.ack("b2", 5, early, 5, t0 + Duration::from_millis(400));
        assert!(!repl.serving(t0 + LEASE));
        repl.ack("b2", 5, late, 5, t0 + Duration::from_millis(400));
        assert!(repl.serving(t0 + LEASE));
        // A standalone replica serves without any lease.
        let alone = Repl::new(true, FEED_BYTES_MAX, t0);
        assert!(alone.serving(t0 + GRACE * 10));
    }
}
