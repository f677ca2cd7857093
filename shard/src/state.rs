//! The state machine of one replica: the index of committed values, the lock
//! table of prepared transactions, transaction records (at the anchor) and
//! the bounded memory of recent outcomes.
//!
//! No IO and no clock here: callers pass `now`. Checks (`check_*`) look at the
//! state and say whether an operation may proceed; [`StateGuard::apply`]
//! performs one logged [`Record`]. Live operation and recovery call the same
//! `apply`, which is what makes replay rebuild exactly the live state.
//!
//! Readers use the index and lock table (`DashMap`s) without the state lock;
//! every mutation happens under it, so check-then-apply is atomic.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, RwLock};

use triomphe::ThinArc;

use dashmap::DashMap;
use tokio::time::Instant;
use trellis_types::{GroupId, Key, Lsn, MapEpoch, Slot, SlotSet, TxnId, Version, slot_of};

use crate::ownership::{Access, Ownership, OwnershipError, SlotState, SlotStep};
use crate::record::*;
pub use crate::version_base::{VERSION_POINTS_MAX, VersionBase};

/// Most transactions prepared (holding locks) at once on one replica; more
/// prepares are refused until some finalize.
pub const PREPARED_MAX: usize = 100_000;
/// Most transaction records kept at an anchor. New COMMIT decisions are
/// refused past it (presumed-abort records are always accepted).
pub const TXN_RECORDS_MAX: usize = 1_000_000;
/// Most remembered outcomes (for idempotent retries of Commit and Finalize).
/// The oldest are forgotten first; a retry older than that re-validates.
pub const OUTCOMES_MAX: usize = 65_536;
/// Most bytes of keys held by remembered outcomes.
pub const OUTCOMES_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Marks a tombstone in the version word of an [`Entry`]. Versions are LSNs
/// plus the version base ([`VersionBase`]) and stay far below 2^63.
const TOMBSTONE_BIT: u64 = 1 << 63;

/// A committed value (or tombstone) and its version, in one allocation
/// behind a thin, reference-counted pointer (8 bytes in the index): the
/// index is most of a replica's memory, so its entries are kept small.
/// Cloning shares the bytes.
#[derive(Clone)]
pub struct Entry(ThinArc<u64, u8>);

impl Entry {
    /// A value (`Some`) or a tombstone (`None`) written at `version`.
    pub fn new(version: Version, value: Option<&[u8]>) -> Entry {
        debug_assert!(version < TOMBSTONE_BIT);
        match value {
            Some(value) => Entry(ThinArc::from_header_and_slice(version, value)),
            None => Entry(ThinArc::from_header_and_slice(version | TOMBSTONE_BIT, &[])),
        }
    }

    /// The version of the record that wrote it (tombstones included): its
    /// LSN plus the version base ([`VersionBase`]), or the source group's
    /// version for an imported entry.
    pub fn version(&self) -> Version {
        self.0.header.header & !TOMBSTONE_BIT
    }

    /// The value; `None` for a tombstone. Tombstones keep their version so
    /// readers can wait for the delete to be durable; snapshots keep them
    /// too (nothing purges them yet).
    pub fn value(&self) -> Option<&[u8]> {
        if self.0.header.header & TOMBSTONE_BIT != 0 {
            None
        } else {
            Some(&self.0.slice)
        }
    }

    /// The version a client sees: 0 for absent.
    pub fn visible_version(&self) -> Version {
        if self.value().is_some() {
            self.version()
        } else {
            0
        }
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        self.version() == other.version() && self.value() == other.value()
    }
}

impl Eq for Entry {}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("version", &self.version())
            .field("value_bytes", &self.value().map(<[u8]>::len))
            .finish()
    }
}

/// Hasher of the index, lock table and outcome memory: fast, seeded per
/// process. Nothing iterates these maps where order matters (snapshots and
/// scans sort).
pub type FastHash = foldhash::fast::RandomState;

/// A digest of a transaction's written keys: a retry under the same id must
/// write the same keys.
pub fn writes_digest(writes: &[WriteRec]) -> u64 {
    writes.iter().fold(writes.len() as u64, |digest, write| {
        (digest.rotate_left(23) ^ xxhash_rust::xxh3::xxh3_64(&write.key))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
    })
}

/// A prepared transaction's lock on a key, and where to ask about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockHolder {
    pub txn: TxnId,
    pub anchor: GroupId,
    pub since: Instant,
}

/// A read hold: a read-only transaction over several groups, being
/// validated, keeps writers off a key for at most
/// [`trellis_types::limits::READ_HOLD_MAX`]. In memory only: holds protect
/// no durable state, and a restart drops them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub txn: TxnId,
    pub since: Instant,
}

/// Locks on one key: at most one writer, any number of readers and holds.
#[derive(Clone, Debug, Default)]
pub struct KeyLock {
    pub writer: Option<LockHolder>,
    pub readers: Vec<LockHolder>,
    pub holds: Vec<Hold>,
}

impl KeyLock {
    fn is_free(&self) -> bool {
        self.writer.is_none() && self.readers.is_empty() && self.holds.is_empty()
    }
}

/// A transaction prepared here: it holds locks until finalized.
#[derive(Clone, Debug)]
pub struct PreparedTxn {
    pub rec: PrepareRec,
    pub lsn: Lsn,
    /// The version its writes get if it commits: its PREPARE's.
    pub version: Version,
    pub since: Instant,
}

/// The outcome at the anchor, decided once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnRecord {
    pub commit: bool,
    pub participants: Vec<GroupId>,
    pub lsn: Lsn,
}

/// Why an operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A read version is no longer current.
    Conflict,
    /// A key is locked by another prepared transaction.
    Locked,
    /// The transaction was already decided ABORT (prepare after resolve).
    AlreadyAborted,
    /// A bound of this replica ([`PREPARED_MAX`], [`TXN_RECORDS_MAX`]).
    Busy,
}

/// A refusal with the keys at fault and a message for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub reason: Refusal,
    pub keys: Vec<Key>,
    pub message: String,
    /// With `Locked`: the transactions holding the locks (one entry each),
    /// so the caller can resolve old ones through their anchors.
    pub holders: Vec<LockHolder>,
}

/// What happened to a transaction here, remembered for retries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Committed by the record at `lsn`; every written key's new version is
    /// `version`: the version ([`VersionBase::version`]) of the one-phase
    /// commit record, or of the PREPARE record of a two-phase commit (known
    /// when the participant votes, and
    /// still above every earlier version of the keys, which were locked from
    /// then on). `digest` is [`writes_digest`] of the writes.
    Committed {
        lsn: Lsn,
        version: Version,
        digest: u64,
    },
    /// Refused (1PC) or finalized ABORT (2PC). `lsn` is 0 when nothing was
    /// logged.
    Aborted { refused: Box<Refused>, lsn: Lsn },
}

impl Outcome {
    pub fn lsn(&self) -> Lsn {
        match self {
            Outcome::Committed { lsn, .. } | Outcome::Aborted { lsn, .. } => *lsn,
        }
    }

    fn key_bytes(&self) -> usize {
        match self {
            Outcome::Committed { .. } => 0,
            Outcome::Aborted { refused, .. } => {
                refused.keys.iter().map(Vec::len).sum::<usize>() + refused.message.len()
            }
        }
    }
}

/// Bounded FIFO memory of outcomes.
#[derive(Default)]
pub struct Outcomes {
    map: HashMap<TxnId, Outcome, FastHash>,
    order: VecDeque<TxnId>,
    bytes: usize,
}

impl Outcomes {
    pub fn get(&self, txn: &TxnId) -> Option<&Outcome> {
        self.map.get(txn)
    }

    pub fn insert(&mut self, txn: TxnId, outcome: Outcome) {
        self.bytes += outcome.key_bytes();
        if let Some(old) = self.map.insert(txn, outcome) {
            self.bytes -= old.key_bytes();
        } else {
            self.order.push_back(txn);
        }
        while self.map.len() > OUTCOMES_MAX || self.bytes > OUTCOMES_BYTES_MAX {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(old) = self.map.remove(&oldest) {
                self.bytes -= old.key_bytes();
            }
        }
    }

    /// Oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (&TxnId, &Outcome)> {
        self.order
            .iter()
            .filter_map(|t| self.map.get(t).map(|o| (t, o)))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The part of the state only touched under the state lock.
pub struct Core {
    pub prepared: BTreeMap<TxnId, PreparedTxn>,
    pub records: BTreeMap<TxnId, TxnRecord>,
    pub outcomes: Outcomes,
    /// LSN of the last applied record.
    pub applied_lsn: Lsn,
    /// Where each primary epoch starts (its NEW_EPOCH record), ascending.
    pub epochs: Vec<(u64, Lsn)>,
    /// Which slots this group serves: the map's word (followed, not
    /// logged) plus the logged in-between states. Commits and prepares
    /// check it here, under the lock, so a freeze is strictly before or
    /// after each of them.
    pub ownership: Ownership,
}

impl Core {
    fn new(ownership: Ownership) -> Core {
        Core {
            prepared: BTreeMap::new(),
            records: BTreeMap::new(),
            outcomes: Outcomes::default(),
            applied_lsn: 0,
            epochs: Vec::new(),
            ownership,
        }
    }
}

/// The whole state of a replica.
pub struct State {
    pub index: DashMap<Box<[u8]>, Entry, FastHash>,
    pub locks: DashMap<Box<[u8]>, KeyLock, FastHash>,
    core: Mutex<Core>,
    /// A copy of `Core::ownership`, replaced under the state lock whenever
    /// it changes, for reads and scans, which check outside the lock: a
    /// read that passed just before a freeze is ordered before it, and the
    /// target serves nothing until the flip.
    serving: RwLock<Ownership>,
    /// The version base, written under the state lock, read by readers
    /// mapping a version back to the LSN they wait for.
    versions: RwLock<VersionBase>,
}

impl Default for State {
    /// A state that owns every slot at map epoch 0 (tests, and the
    /// starting point recovery fills).
    fn default() -> State {
        State::new(Ownership::new(0, &SlotSet::all()))
    }
}

/// A key a request may not touch here, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotServed {
    pub key: Key,
    pub slot: Slot,
    pub error: OwnershipError,
}

/// Why an export was refused. Nothing was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportRefusal {
    /// A slot is not this group's to export (not owned or frozen here).
    NotHeld(OwnershipError),
    /// The drained export asked for a slot not frozen towards the peer.
    NotFrozen { slot: Slot, state: SlotState },
    /// Prepared transactions or read holds remain on the slots' keys.
    NotDrained { locked_keys: usize },
}

/// What an export takes under the state lock: every entry of the slots
/// above the asked version, and the version up to which that is complete.
#[derive(Debug, Default)]
pub struct Export {
    /// Sorted by key.
    pub entries: Vec<(Box<[u8]>, Entry)>,
    /// Every entry of the slots with a version up to this one is in
    /// `entries` or at or below the asked version: versions still to come
    /// (new records, prepared transactions finalized later) are above it.
    pub complete_version: Version,
}

/// What a read of one key sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyView {
    pub entry: Option<Entry>,
    pub lock: Option<LockHolder>,
}

/// Result of checking a one-phase commit or prepare.
#[derive(Debug)]
pub enum Check {
    /// May proceed: log the record and apply it.
    Proceed,
    /// A key's slot is not served here (not owned, frozen, importing).
    NotServed(NotServed),
    /// Already done (a retry): answer this.
    Done(Outcome),
    /// Prepare only: already prepared here (a retry, or another execution
    /// of the same transaction): vote YES again. `exec` is the execution
    /// whose PREPARE made the prepared state.
    AlreadyPrepared {
        lsn: Lsn,
        version: Version,
        exec: u64,
    },
    /// Refused.
    Refused(Refused),
}

/// What the anchor does with a decide ([`StateGuard::check_decide`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decide {
    /// Nothing is decided here yet: log a DECIDE record with this decision.
    Record { commit: bool },
    /// A decision stands already: answer it once `lsn` is durable, and log
    /// nothing. It may differ from the one asked for.
    Stands { commit: bool, lsn: Lsn },
    /// Nothing recorded: ABORT was asked, unfenced, while the transaction is
    /// prepared here by another execution, which may have committed it in
    /// parallel (every participant voted YES to it). The caller fences the
    /// participants that did not vote YES and asks again.
    FenceFirst,
}

/// What the anchor does with a resolve ([`StateGuard::check_resolve`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolve {
    /// Committed and finalized here, its record forgotten: answer COMMIT once
    /// `lsn` is durable on every in-sync member.
    Committed { lsn: Lsn },
    /// Prepared here and nothing decided: a parallel commit in flight or
    /// abandoned. It committed iff every one of `participants` prepared it;
    /// the resolver fences the others and decides. Answer once `lsn` (the
    /// PREPARE) is durable.
    Pending {
        lsn: Lsn,
        participants: Vec<GroupId>,
    },
    /// Decide ABORT (presumed abort) through [`StateGuard::check_decide`],
    /// which keeps any decision that stands.
    PresumeAbort,
}

/// What a participant does with a fence ([`StateGuard::check_fence`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fence {
    /// Prepared here: answer so once `lsn` is durable; nothing changes.
    Prepared { lsn: Lsn, version: Version },
    /// Finalized here before: answer its outcome.
    Done(Outcome),
    /// Unknown here: log a FINALIZE ABORT, so that its PREPARE is refused
    /// from now on (while the outcome is remembered, [`OUTCOMES_MAX`]).
    Record,
}

/// Misuse by the caller (not a conflict): answered as INVALID_ARGUMENT or
/// FAILED_PRECONDITION.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Misuse(pub String);

impl State {
    /// An empty state with `ownership` (the map this replica starts with).
    pub fn new(ownership: Ownership) -> State {
        State {
            index: DashMap::default(),
            locks: DashMap::default(),
            serving: RwLock::new(ownership.clone()),
            core: Mutex::new(Core::new(ownership)),
            versions: RwLock::new(VersionBase::default()),
        }
    }

    /// The ownership as of the last change, for checks outside the lock.
    pub fn serving(&self) -> std::sync::RwLockReadGuard<'_, Ownership> {
        self.serving.read().expect("ownership lock poisoned")
    }

    /// The version the record at `lsn` has (or will have, for the next),
    /// outside the state lock.
    pub fn version_at(&self, lsn: Lsn) -> Version {
        self.versions
            .read()
            .expect("version lock poisoned")
            .version(lsn)
    }

    /// A copy of the version base (the change feed maps the LSNs it reads
    /// with it).
    pub fn version_base(&self) -> VersionBase {
        self.versions.read().expect("version lock poisoned").clone()
    }

    /// The LSN a reader of an entry at `version` waits for
    /// ([`VersionBase::lsn_of`]).
    pub fn lsn_of(&self, version: Version) -> Lsn {
        self.versions
            .read()
            .expect("version lock poisoned")
            .lsn_of(version)
    }

    /// What an export of `slots` above `above_version` sends
    /// ([`StateGuard::export_plan`] for what is checked and how complete it
    /// is). Only the checks and the complete version are taken under the
    /// state lock; the walk of the index, O(keys held), runs outside it, so
    /// commits on other slots do not wait for it. That is sound because
    /// the index is only ever added to or replaced in while the slots stay
    /// held: an entry at or below the complete version was applied before
    /// the lock was released, and one replaced during the walk is newer
    /// than the complete version, so the next export above that version
    /// copies it again (the receiver keeps the newer of two). A release or
    /// abandon of the slots that raced the walk (a stale driver's step)
    /// would have dropped their entries midway: the ownership is checked
    /// again under the lock after the walk, and the export refused then.
    pub fn export(
        &self,
        slots: &SlotSet,
        above_version: Version,
        drained: Option<GroupId>,
        now: Instant,
    ) -> Result<Export, ExportRefusal> {
        let complete_version = self.lock_at(now).export_plan(slots, drained)?;
        let entries = self.export_entries(slots, above_version);
        self.lock_at(now).check_exportable(slots, drained)?;
        Ok(Export {
            entries,
            complete_version,
        })
    }

    /// Every entry of `slots` with a version above `above_version`, sorted
    /// by key, read from the index without the state lock.
    pub fn export_entries(
        &self,
        slots: &SlotSet,
        above_version: Version,
    ) -> Vec<(Box<[u8]>, Entry)> {
        let mut entries: Vec<(Box<[u8]>, Entry)> = self
            .index
            .iter()
            .filter(|e| e.value().version() > above_version && slots.contains(slot_of(e.key())))
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        entries
    }

    /// Takes the state lock. Never hold it across an `.await`. Without a
    /// time, read holds never expire (the conservative reading).
    pub fn lock(&self) -> StateGuard<'_> {
        StateGuard {
            state: self,
            core: self.core.lock().expect("state lock poisoned"),
            now: None,
        }
    }

    /// Takes the state lock at time `now`, against which read holds expire.
    pub fn lock_at(&self, now: Instant) -> StateGuard<'_> {
        StateGuard {
            now: Some(now),
            ..self.lock()
        }
    }

    /// Reads one key without the state lock: the lock first, then the entry,
    /// so a finalize that lands in between is seen as either still locked
    /// or already applied, never as neither.
    pub fn view(&self, key: &[u8]) -> KeyView {
        let lock = self.locks.get(key).and_then(|l| l.writer.clone());
        let entry = self.index.get(key).map(|e| e.clone());
        KeyView { entry, lock }
    }
}

pub struct StateGuard<'a> {
    state: &'a State,
    core: MutexGuard<'a, Core>,
    now: Option<Instant>,
}

fn parse_txn(bytes: &[u8]) -> Result<TxnId, String> {
    TxnId::from_bytes(bytes).map_err(|e| e.to_string())
}

impl StateGuard<'_> {
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// The version the record at `lsn` has (or will have, for the next).
    pub fn version(&self, lsn: Lsn) -> Version {
        self.state
            .versions
            .read()
            .expect("version lock poisoned")
            .version(lsn)
    }

    /// Drops version-base points below `lsn` (see
    /// [`VersionBase::prune_below`]).
    pub fn prune_versions(&mut self, lsn: Lsn) {
        self.state
            .versions
            .write()
            .expect("version lock poisoned")
            .prune_below(lsn);
    }

    /// Publishes the ownership to readers after a change.
    fn publish_ownership(&self) {
        *self.state.serving.write().expect("ownership lock poisoned") = self.core.ownership.clone();
    }

    /// Checks, under the lock, that a request routed with `map_epoch` may
    /// serve every key ([`Ownership::check`]).
    pub fn check_serve<'k>(
        &self,
        map_epoch: MapEpoch,
        keys: impl IntoIterator<Item = &'k [u8]>,
    ) -> Result<(), NotServed> {
        for key in keys {
            let slot = slot_of(key);
            if let Err(error) = self.core.ownership.check(map_epoch, slot, Access::Serve) {
                return Err(NotServed {
                    key: key.to_vec(),
                    slot,
                    error,
                });
            }
        }
        Ok(())
    }

    /// Follows the catalog's map ([`Ownership::follow_map`]; not logged:
    /// every replica polls the map itself).
    pub fn follow_map(
        &mut self,
        map_epoch: MapEpoch,
        owned: &SlotSet,
    ) -> Option<crate::ownership::MapChange> {
        if map_epoch <= self.core.ownership.map_epoch() {
            return None;
        }
        let change = self.core.ownership.follow_map(map_epoch, owned);
        self.publish_ownership();
        Some(change)
    }

    /// The primary's check of a slot step before logging it: the slots it
    /// changes (empty: done already, log nothing), or why it does not fit.
    pub fn plan_step(&self, step: SlotStep, slots: &SlotSet) -> Result<SlotSet, OwnershipError> {
        self.core.ownership.plan(step, slots)
    }

    /// Checks that every copied entry's slot is importing from `from`.
    pub fn check_ingest(&self, from: GroupId, entries: &[SnapEntry]) -> Result<(), NotServed> {
        for entry in entries {
            let slot = slot_of(&entry.key);
            let refused = match self.core.ownership.state(slot) {
                SlotState::Importing { from: f } if f == from => continue,
                SlotState::Importing { .. } => OwnershipError::BadTransition {
                    action: "take copied data from another group into",
                    slot,
                    state: "importing from another group",
                },
                _ => match self.core.ownership.check(0, slot, Access::Ingest) {
                    Err(error) => error,
                    Ok(()) => unreachable!("only an importing slot takes copied data"),
                },
            };
            return Err(NotServed {
                key: entry.key.clone(),
                slot,
                error: refused,
            });
        }
        Ok(())
    }

    /// The checks and the complete version of an export of `slots`, taken
    /// under the lock (the walk of the index is [`State::export_entries`],
    /// outside it; [`State::export`] does both). `drained` (the cutover's
    /// last copy) names the peer every slot must be frozen towards, with no
    /// prepared transaction or live read hold left on the slots' keys.
    ///
    /// The copy is complete up to the smaller of the version of the last
    /// applied record and one below the lowest version of a transaction
    /// still prepared with a write in the slots: a two-phase write's
    /// version is its PREPARE's, but it enters the index only at finalize,
    /// so a delta taken above a version past it would skip it.
    pub fn export_plan(
        &self,
        slots: &SlotSet,
        drained: Option<GroupId>,
    ) -> Result<Version, ExportRefusal> {
        self.check_exportable(slots, drained)?;
        if drained.is_some() {
            let locked_keys = self
                .state
                .locks
                .iter()
                .filter(|l| slots.contains(slot_of(l.key())))
                .filter(|l| {
                    l.writer.is_some()
                        || !l.readers.is_empty()
                        || l.holds.iter().any(|h| self.hold_live(h))
                })
                .count();
            if locked_keys > 0 {
                return Err(ExportRefusal::NotDrained { locked_keys });
            }
        }
        let prepared_floor = self
            .core
            .prepared
            .values()
            .filter(|p| p.rec.writes.iter().any(|w| slots.contains(slot_of(&w.key))))
            .map(|p| p.version.saturating_sub(1))
            .min();
        let applied = self.version(self.core.applied_lsn);
        Ok(prepared_floor.map_or(applied, |floor| floor.min(applied)))
    }

    /// Whether every slot may be exported: owned or frozen here, or, for
    /// the drained export, frozen towards `drained`.
    fn check_exportable(
        &self,
        slots: &SlotSet,
        drained: Option<GroupId>,
    ) -> Result<(), ExportRefusal> {
        for slot in (0..trellis_types::SLOTS).filter(|s| slots.contains(*s)) {
            let state = self.core.ownership.state(slot);
            match (state, drained) {
                (SlotState::Frozen { to }, Some(peer)) if to == peer => {}
                (_, Some(_)) => return Err(ExportRefusal::NotFrozen { slot, state }),
                (SlotState::Owned | SlotState::Frozen { .. }, None) => {}
                (_, None) => {
                    let error = self
                        .core
                        .ownership
                        .check(0, slot, Access::Serve)
                        .expect_err("neither owned nor frozen");
                    return Err(ExportRefusal::NotHeld(error));
                }
            }
        }
        Ok(())
    }

    fn hold_live(&self, hold: &Hold) -> bool {
        self.now.is_none_or(|now| {
            now.saturating_duration_since(hold.since) < trellis_types::limits::READ_HOLD_MAX
        })
    }

    /// Validates a read-only transaction's reads and, if they are current,
    /// holds the keys against writers (in memory, see [`Hold`]).
    pub fn hold_reads(
        &mut self,
        txn: &TxnId,
        reads: &[ReadRec],
        now: Instant,
    ) -> Result<(), Refused> {
        self.validate(txn, reads, &[])?;
        for read in reads {
            self.state
                .locks
                .entry(read.key.clone().into_boxed_slice())
                .or_default()
                .holds
                .push(Hold {
                    txn: *txn,
                    since: now,
                });
        }
        Ok(())
    }

    /// Drops `txn`'s read holds on `keys`. Returns whether every one of them
    /// was still there and live: only then were writers kept off every key
    /// from its validation until now (a restart or expiry loses holds).
    pub fn release_holds(&mut self, txn: &TxnId, keys: &[Key]) -> bool {
        let mut all_held = true;
        for key in keys {
            let free = match self.state.locks.get_mut(key.as_slice()) {
                Some(mut lock) => {
                    let live = lock
                        .holds
                        .iter()
                        .any(|h| h.txn == *txn && self.hold_live(h));
                    all_held &= live;
                    lock.holds.retain(|h| h.txn != *txn);
                    lock.is_free()
                }
                None => {
                    all_held = false;
                    false
                }
            };
            if free {
                self.state
                    .locks
                    .remove_if(key.as_slice(), |_, l| l.is_free());
            }
        }
        all_held
    }

    /// Drops every expired read hold (left by a coordinator that never
    /// released them). Returns how many.
    pub fn purge_expired_holds(&mut self, now: Instant) -> usize {
        let expired = |h: &Hold| {
            now.saturating_duration_since(h.since) >= trellis_types::limits::READ_HOLD_MAX
        };
        let keys: Vec<Box<[u8]>> = self
            .state
            .locks
            .iter()
            .filter(|l| l.holds.iter().any(expired))
            .map(|l| l.key().clone())
            .collect();
        let mut purged = 0;
        for key in keys {
            if let Some(mut lock) = self.state.locks.get_mut(&key) {
                let before = lock.holds.len();
                lock.holds.retain(|h| !expired(h));
                purged += before - lock.holds.len();
            }
            self.state.locks.remove_if(&key, |_, l| l.is_free());
        }
        purged
    }

    fn current_version(&self, key: &[u8]) -> Version {
        self.state
            .index
            .get(key)
            .map(|e| e.visible_version())
            .unwrap_or(0)
    }

    /// Validates reads and locks for a transaction that will write `writes`:
    /// every read version is current and not write-locked by another
    /// transaction; no written key is locked by another transaction.
    pub fn validate(
        &self,
        txn: &TxnId,
        reads: &[ReadRec],
        writes: &[WriteRec],
    ) -> Result<(), Refused> {
        let mut conflicts = Vec::new();
        let mut locked = Vec::new();
        let mut holders: Vec<LockHolder> = Vec::new();
        let mut note = |holder: &LockHolder| {
            if !holders.iter().any(|h| h.txn == holder.txn) {
                holders.push(holder.clone());
            }
        };
        for read in reads {
            if let Some(lock) = self.state.locks.get(read.key.as_slice())
                && let Some(writer) = lock.writer.as_ref().filter(|w| w.txn != *txn)
            {
                note(writer);
                locked.push(read.key.clone());
                continue;
            }
            if self.current_version(&read.key) != read.version {
                conflicts.push(read.key.clone());
            }
        }
        for write in writes {
            if let Some(lock) = self.state.locks.get(write.key.as_slice()) {
                if lock
                    .holds
                    .iter()
                    .any(|h| h.txn != *txn && self.hold_live(h))
                {
                    locked.push(write.key.clone());
                }
                let others: Vec<&LockHolder> = lock
                    .writer
                    .iter()
                    .chain(lock.readers.iter())
                    .filter(|h| h.txn != *txn)
                    .collect();
                if !others.is_empty() {
                    others.into_iter().for_each(&mut note);
                    locked.push(write.key.clone());
                }
            }
        }
        if !conflicts.is_empty() {
            return Err(Refused {
                reason: Refusal::Conflict,
                message: format!(
                    "{} read version(s) are no longer current; re-read and retry the transaction",
                    conflicts.len()
                ),
                keys: conflicts,
                holders: Vec::new(),
            });
        }
        if !locked.is_empty() {
            locked.sort();
            locked.dedup();
            return Err(Refused {
                reason: Refusal::Locked,
                message: format!(
                    "{} key(s) are locked by another transaction being committed; retry",
                    locked.len()
                ),
                keys: locked,
                holders,
            });
        }
        Ok(())
    }

    /// May this one-phase commit, routed with `map_epoch`, proceed?
    pub fn check_commit_local(
        &self,
        map_epoch: MapEpoch,
        txn: &TxnId,
        reads: &[ReadRec],
        writes: &[WriteRec],
    ) -> Result<Check, Misuse> {
        if let Some(outcome) = self.core.outcomes.get(txn) {
            if let Outcome::Committed { digest, .. } = outcome
                && *digest != writes_digest(writes)
            {
                return Err(Misuse(format!(
                    "transaction id {txn} was already committed with other writes; use a fresh id per transaction"
                )));
            }
            return Ok(Check::Done(outcome.clone()));
        }
        if self.core.prepared.contains_key(txn) {
            return Err(Misuse(format!(
                "transaction {txn} is prepared here by two-phase commit; it cannot also commit in one phase"
            )));
        }
        if let Err(not_served) = self.check_serve(map_epoch, txn_keys(reads, writes)) {
            return Ok(Check::NotServed(not_served));
        }
        Ok(match self.validate(txn, reads, writes) {
            Ok(()) => Check::Proceed,
            Err(refused) => Check::Refused(refused),
        })
    }

    /// Remembers a refusal (in memory only) so a retry answers the same.
    pub fn remember_refusal(&mut self, txn: TxnId, refused: Refused) {
        self.core.outcomes.insert(
            txn,
            Outcome::Aborted {
                refused: Box::new(refused),
                lsn: 0,
            },
        );
    }

    /// May this prepare, routed with `map_epoch`, proceed? A frozen slot
    /// refuses it (checked here, under the lock, so every prepare is
    /// strictly before or after a freeze).
    pub fn check_prepare(
        &self,
        map_epoch: MapEpoch,
        txn: &TxnId,
        reads: &[ReadRec],
        writes: &[WriteRec],
    ) -> Check {
        // A recorded ABORT refuses first, even a transaction still prepared
        // here: no execution may count this YES towards a parallel commit.
        if self.core.records.get(txn).is_some_and(|r| !r.commit) {
            return Check::Refused(Refused {
                reason: Refusal::AlreadyAborted,
                keys: Vec::new(),
                message: format!("transaction {txn} was already decided ABORT"),
                holders: Vec::new(),
            });
        }
        if let Some(prepared) = self.core.prepared.get(txn) {
            return Check::AlreadyPrepared {
                lsn: prepared.lsn,
                version: prepared.version,
                exec: prepared.rec.exec,
            };
        }
        if let Some(outcome) = self.core.outcomes.get(txn) {
            return Check::Done(outcome.clone());
        }
        if self.core.prepared.len() >= PREPARED_MAX {
            return Check::Refused(Refused {
                reason: Refusal::Busy,
                keys: Vec::new(),
                message: format!(
                    "PREPARED_MAX ({PREPARED_MAX}) transactions are already prepared here"
                ),
                holders: Vec::new(),
            });
        }
        if let Err(not_served) = self.check_serve(map_epoch, txn_keys(reads, writes)) {
            return Check::NotServed(not_served);
        }
        match self.validate(txn, reads, writes) {
            Ok(()) => Check::Proceed,
            Err(refused) => Check::Refused(refused),
        }
    }

    /// What a decide of `txn` does at its anchor. The rules, in order:
    ///
    /// 1. A decision recorded here wins (the first decision wins, live as in
    ///    replay).
    /// 2. A decision finalized here after its record was forgotten wins too:
    ///    the anchor is always a participant, so its own outcome memory
    ///    still knows. A late decide of the first coordinator, after a
    ///    sweeper resolved (presumed abort), finalized and forgot the
    ///    transaction, must not record the opposite decision (simulator seed
    ///    1035: a COMMIT recorded after the participants had discarded the
    ///    writes).
    /// 3. An unfenced ABORT from anyone but the execution that prepared the
    ///    transaction here is not recorded ([`Decide::FenceFirst`]): that
    ///    execution may have seen every participant vote YES and answered
    ///    COMMIT (parallel commit). `exec` 0 (a resolver) is never that
    ///    execution.
    /// 4. Otherwise the decision asked for is recorded, unless it is COMMIT
    ///    and [`TXN_RECORDS_MAX`] records are held (ABORT always may: it is
    ///    what frees the anchor).
    pub fn check_decide(
        &self,
        txn: &TxnId,
        commit: bool,
        exec: u64,
        fenced: bool,
    ) -> Result<Decide, Refused> {
        if let Some(record) = self.core.records.get(txn) {
            return Ok(Decide::Stands {
                commit: record.commit,
                lsn: record.lsn,
            });
        }
        match self.core.outcomes.get(txn) {
            Some(Outcome::Committed { lsn, .. }) => Ok(Decide::Stands {
                commit: true,
                lsn: *lsn,
            }),
            Some(Outcome::Aborted { lsn, .. }) => Ok(Decide::Stands {
                commit: false,
                lsn: *lsn,
            }),
            None if !commit
                && !fenced
                && self
                    .core
                    .prepared
                    .get(txn)
                    .is_some_and(|p| p.rec.exec == 0 || p.rec.exec != exec) =>
            {
                Ok(Decide::FenceFirst)
            }
            None if commit && self.records_full() => Err(Refused {
                reason: Refusal::Busy,
                keys: Vec::new(),
                message: format!(
                    "TXN_RECORDS_MAX ({TXN_RECORDS_MAX}) transaction records are held at this anchor"
                ),
                holders: Vec::new(),
            }),
            None => Ok(Decide::Record { commit }),
        }
    }

    /// What a resolve of an in-doubt `txn` does at its anchor: the recorded
    /// decision if any, else a durable ABORT (presumed abort) — except for a
    /// transaction committed and finalized here whose record is forgotten,
    /// which stays committed (simulator seed 2033: a late resolve of such a
    /// transaction). A committed transaction is never presumed aborted
    /// while this replica remembers its outcome ([`OUTCOMES_MAX`]).
    ///
    /// Prepared here with nothing decided is [`Resolve::Pending`]: under
    /// parallel commit every participant's YES may already have been
    /// answered as COMMIT, so the anchor cannot presume abort for it.
    pub fn check_resolve(&self, txn: &TxnId) -> Resolve {
        match (self.core.records.get(txn), self.core.outcomes.get(txn)) {
            (None, Some(Outcome::Committed { lsn, .. })) => Resolve::Committed { lsn: *lsn },
            (None, None) => match self.core.prepared.get(txn) {
                Some(prepared) => Resolve::Pending {
                    lsn: prepared.lsn,
                    participants: prepared.rec.participants.clone(),
                },
                None => Resolve::PresumeAbort,
            },
            _ => Resolve::PresumeAbort,
        }
    }

    /// What a fence of `txn` does at a participant (for a resolver of a
    /// pending parallel commit): prepared stays prepared, a finalized one
    /// answers its outcome, an unknown one is aborted here for good.
    pub fn check_fence(&self, txn: &TxnId) -> Fence {
        if let Some(prepared) = self.core.prepared.get(txn) {
            return Fence::Prepared {
                lsn: prepared.lsn,
                version: prepared.version,
            };
        }
        match self.core.outcomes.get(txn) {
            Some(outcome) => Fence::Done(outcome.clone()),
            None => Fence::Record,
        }
    }

    /// The answer to a resolve once `commit` was decided: the record, or
    /// (finalized here and forgotten) the decision without one.
    pub fn resolved(&self, txn: &TxnId, commit: bool) -> TxnRecord {
        match self.core.records.get(txn) {
            Some(record) => record.clone(),
            None => TxnRecord {
                commit,
                participants: Vec::new(),
                lsn: self.core.outcomes.get(txn).map_or(0, Outcome::lsn),
            },
        }
    }

    /// The recorded decision, if any.
    pub fn record(&self, txn: &TxnId) -> Option<&TxnRecord> {
        self.core.records.get(txn)
    }

    /// May a COMMIT decision be recorded? (ABORT always may.)
    pub fn records_full(&self) -> bool {
        self.core.records.len() >= TXN_RECORDS_MAX
    }

    pub fn prepared(&self, txn: &TxnId) -> Option<&PreparedTxn> {
        self.core.prepared.get(txn)
    }

    pub fn outcome(&self, txn: &TxnId) -> Option<&Outcome> {
        self.core.outcomes.get(txn)
    }

    /// Applies one logged record. `lsn` must be the next LSN. Records were
    /// checked before they were logged; applying never refuses, and an
    /// error here means the log holds something this code cannot have
    /// written.
    pub fn apply(&mut self, lsn: Lsn, record: &Record, now: Instant) -> Result<(), String> {
        if self.core.applied_lsn != 0 && lsn != self.core.applied_lsn + 1 {
            return Err(format!(
                "record {lsn} applied after {} (LSNs must follow each other)",
                self.core.applied_lsn
            ));
        }
        match record {
            Record::CommitLocal(rec) => {
                let txn = parse_txn(&rec.txn_id)?;
                let version = self.version(lsn);
                self.write_all(&rec.writes, version);
                let digest = writes_digest(&rec.writes);
                self.core.outcomes.insert(
                    txn,
                    Outcome::Committed {
                        lsn,
                        version,
                        digest,
                    },
                );
            }
            Record::Prepare(rec) => {
                let txn = parse_txn(&rec.txn_id)?;
                for read in &rec.reads {
                    self.state
                        .locks
                        .entry(read.key.clone().into_boxed_slice())
                        .or_default()
                        .readers
                        .push(LockHolder {
                            txn,
                            anchor: rec.anchor,
                            since: now,
                        });
                }
                for write in &rec.writes {
                    self.state
                        .locks
                        .entry(write.key.clone().into_boxed_slice())
                        .or_default()
                        .writer = Some(LockHolder {
                        txn,
                        anchor: rec.anchor,
                        since: now,
                    });
                }
                let version = self.version(lsn);
                self.core.prepared.insert(
                    txn,
                    PreparedTxn {
                        rec: rec.clone(),
                        lsn,
                        version,
                        since: now,
                    },
                );
            }
            Record::Decide(rec) => {
                let txn = parse_txn(&rec.txn_id)?;
                // First decision wins, in replay as live.
                self.core.records.entry(txn).or_insert(TxnRecord {
                    commit: rec.commit,
                    participants: rec.participants.clone(),
                    lsn,
                });
            }
            Record::Finalize(rec) => {
                let txn = parse_txn(&rec.txn_id)?;
                if let Some(prepared) = self.core.prepared.remove(&txn) {
                    let outcome = if rec.commit {
                        // Apply before unlocking: a reader checks the lock
                        // first, then the value.
                        self.write_all(&prepared.rec.writes, prepared.version);
                        let digest = writes_digest(&prepared.rec.writes);
                        Outcome::Committed {
                            lsn,
                            version: prepared.version,
                            digest,
                        }
                    } else {
                        aborted(&txn, lsn)
                    };
                    self.unlock(&txn, &prepared.rec);
                    self.core.outcomes.insert(txn, outcome);
                } else if !rec.commit {
                    // Abort of a transaction never prepared here: remember
                    // it so a late prepare is refused.
                    self.core.outcomes.insert(txn, aborted(&txn, lsn));
                }
            }
            Record::Forget(rec) => {
                for txn in &rec.txn_ids {
                    let txn = parse_txn(txn)?;
                    self.core.records.remove(&txn);
                }
            }
            Record::NewEpoch(rec) => {
                if self
                    .core
                    .epochs
                    .last()
                    .is_some_and(|(e, _)| *e >= rec.epoch)
                {
                    return Err(format!(
                        "epoch {} starts at {lsn} after epoch {:?}",
                        rec.epoch,
                        self.core.epochs.last()
                    ));
                }
                self.core.epochs.push((rec.epoch, lsn));
            }
            Record::Slots(rec) => {
                let step = slot_step(rec)?;
                let slots = SlotSet::from_bytes(&rec.slots)?;
                let ignored = self.core.ownership.apply_step(step, &slots);
                if !ignored.is_empty() {
                    // The map (not logged) moved these slots past the step
                    // before this replica applied it: replay from an older
                    // map, or a backup that followed a newer one.
                    tracing::debug!(
                        lsn,
                        step = step.name(),
                        ignored = ignored.len(),
                        "slot step ignored for slots the map moved past"
                    );
                }
                if step.drops_data() {
                    self.drop_slots(&slots);
                }
                self.publish_ownership();
            }
            Record::Ingest(rec) => {
                let mut highest = 0;
                for e in &rec.entries {
                    highest = highest.max(e.version);
                    if e.version == 0 || e.version >= TOMBSTONE_BIT {
                        return Err(format!("ingested version {} out of range", e.version));
                    }
                    let newer = self
                        .state
                        .index
                        .get(e.key.as_slice())
                        .is_some_and(|held| held.version() >= e.version);
                    if !newer {
                        self.state.index.insert(
                            Box::from(e.key.as_slice()),
                            Entry::new(e.version, e.value.as_deref()),
                        );
                    }
                }
                self.state
                    .versions
                    .write()
                    .expect("version lock poisoned")
                    .raise(lsn, highest);
            }
        }
        self.core.applied_lsn = lsn;
        Ok(())
    }

    /// Deletes every index entry whose key is in `slots` (O(index)).
    fn drop_slots(&mut self, slots: &SlotSet) {
        self.state
            .index
            .retain(|key, _| !slots.contains(slot_of(key)));
    }

    fn write_all(&mut self, writes: &[WriteRec], version: Version) {
        for write in writes {
            let entry = Entry::new(version, write.value.as_deref());
            self.state
                .index
                .insert(Box::from(write.key.as_slice()), entry);
        }
    }

    fn unlock(&mut self, txn: &TxnId, rec: &PrepareRec) {
        let keys = rec
            .reads
            .iter()
            .map(|r| &r.key)
            .chain(rec.writes.iter().map(|w| &w.key));
        for key in keys {
            let now_empty = match self.state.locks.get_mut(key.as_slice()) {
                Some(mut lock) => {
                    lock.readers.retain(|r| r.txn != *txn);
                    if lock.writer.as_ref().is_some_and(|w| w.txn == *txn) {
                        lock.writer = None;
                    }
                    lock.is_free()
                }
                None => false,
            };
            if now_empty {
                self.state
                    .locks
                    .remove_if(key.as_slice(), |_, l| l.is_free());
            }
        }
    }

    /// A consistent copy of everything a snapshot needs, as of the last
    /// applied LSN. Values are shared (`Arc`), not copied.
    pub fn capture(&self) -> Capture {
        let mut entries: Vec<(Box<[u8]>, Entry)> = self
            .state
            .index
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Capture {
            lsn: self.core.applied_lsn,
            epochs: self.core.epochs.clone(),
            entries,
            prepared: self
                .core
                .prepared
                .values()
                .map(|p| SnapPrepared {
                    rec: Some(p.rec.clone()),
                    lsn: p.lsn,
                    version: p.version,
                })
                .collect(),
            decisions: self
                .core
                .records
                .iter()
                .map(|(txn, r)| SnapDecision {
                    rec: Some(DecideRec {
                        txn_id: txn.as_bytes().to_vec(),
                        commit: r.commit,
                        participants: r.participants.clone(),
                    }),
                    lsn: r.lsn,
                })
                .collect(),
            outcomes: self
                .core
                .outcomes
                .iter()
                .map(|(txn, outcome)| outcome_to_snap(txn, outcome))
                .collect(),
            moving: self
                .core
                .ownership
                .moving()
                .into_iter()
                .filter_map(|(slot, state)| match state {
                    SlotState::Frozen { to } => Some(SnapSlot {
                        slot,
                        frozen: true,
                        peer: to,
                    }),
                    SlotState::Importing { from } => Some(SnapSlot {
                        slot,
                        frozen: false,
                        peer: from,
                    }),
                    SlotState::Owned | SlotState::NotOwned => None,
                })
                .collect(),
            version_points: self
                .state
                .versions
                .read()
                .expect("version lock poisoned")
                .points()
                .to_vec(),
        }
    }

    /// Empties the state (before a snapshot from the primary replaces it).
    /// The ownership keeps the map's word and forgets the in-between
    /// states, which the snapshot brings.
    pub fn reset(&mut self) {
        self.state.index.clear();
        self.state.locks.clear();
        let mut ownership = self.core.ownership.clone();
        ownership.settle_moving();
        *self.core = Core::new(ownership);
        *self.state.versions.write().expect("version lock poisoned") = VersionBase::default();
        self.publish_ownership();
    }

    /// Loads a snapshot's contents into an empty state.
    ///
    /// The in-between slot states are applied leniently over the ownership
    /// the map gave (see [`Ownership::apply_step`]): a frozen slot stays
    /// frozen across a restart, so a job in its drain never sees the
    /// source serve writes again.
    pub fn restore(&mut self, capture: Capture, now: Instant) -> Result<(), String> {
        for (key, entry) in capture.entries {
            self.state.index.insert(key, entry);
        }
        *self.state.versions.write().expect("version lock poisoned") =
            VersionBase::from_points(capture.version_points)?;
        for p in capture.prepared {
            let rec = p.rec.ok_or("prepared entry without its record")?;
            let txn = parse_txn(&rec.txn_id)?;
            self.core.applied_lsn = p.lsn - 1;
            self.apply(p.lsn, &Record::Prepare(rec), now)?;
            // Its version as it was logged: the points the snapshot kept
            // may no longer reach back to its LSN.
            let prepared = self.core.prepared.get_mut(&txn).expect("just applied");
            prepared.version = if p.version == 0 { p.lsn } else { p.version };
        }
        for m in capture.moving {
            let mut slots = SlotSet::empty();
            if m.slot >= trellis_types::SLOTS {
                return Err(format!("snapshot names slot {} out of range", m.slot));
            }
            slots.insert(m.slot);
            let step = if m.frozen {
                SlotStep::Freeze { to: m.peer }
            } else {
                SlotStep::BeginImport { from: m.peer }
            };
            if !self.core.ownership.apply_step(step, &slots).is_empty() {
                tracing::debug!(
                    slot = m.slot,
                    "snapshot slot state ignored: the map moved past it"
                );
            }
        }
        self.publish_ownership();
        for d in capture.decisions {
            let rec = d.rec.ok_or("decision entry without its record")?;
            let txn = parse_txn(&rec.txn_id)?;
            self.core.records.insert(
                txn,
                TxnRecord {
                    commit: rec.commit,
                    participants: rec.participants,
                    lsn: d.lsn,
                },
            );
        }
        for o in capture.outcomes {
            let (txn, outcome) = outcome_from_snap(o)?;
            self.core.outcomes.insert(txn, outcome);
        }
        self.core.applied_lsn = capture.lsn;
        self.core.epochs = capture.epochs;
        Ok(())
    }
}

/// What a snapshot holds.
#[derive(Default, Debug)]
pub struct Capture {
    pub lsn: Lsn,
    pub epochs: Vec<(u64, Lsn)>,
    pub entries: Vec<(Box<[u8]>, Entry)>,
    pub prepared: Vec<SnapPrepared>,
    pub decisions: Vec<SnapDecision>,
    pub outcomes: Vec<SnapOutcome>,
    /// Slots importing or frozen here.
    pub moving: Vec<SnapSlot>,
    /// The version base's points.
    pub version_points: Vec<(Lsn, u64)>,
}

/// The keys a transaction reads or writes.
fn txn_keys<'a>(reads: &'a [ReadRec], writes: &'a [WriteRec]) -> impl Iterator<Item = &'a [u8]> {
    reads
        .iter()
        .map(|r| r.key.as_slice())
        .chain(writes.iter().map(|w| w.key.as_slice()))
}

/// The step a SLOTS record logs.
pub fn slot_step(rec: &SlotsRec) -> Result<SlotStep, String> {
    Ok(match rec.op {
        slot_op::BEGIN_IMPORT => SlotStep::BeginImport { from: rec.peer },
        slot_op::ABANDON_IMPORT => SlotStep::AbandonImport,
        slot_op::FREEZE => SlotStep::Freeze { to: rec.peer },
        slot_op::THAW => SlotStep::Thaw,
        slot_op::RELEASE => SlotStep::Release,
        other => return Err(format!("unknown slot step {other}")),
    })
}

/// The SLOTS record of `step` on `slots`.
pub fn slots_rec(step: SlotStep, slots: &SlotSet) -> SlotsRec {
    let (op, peer) = match step {
        SlotStep::BeginImport { from } => (slot_op::BEGIN_IMPORT, from),
        SlotStep::AbandonImport => (slot_op::ABANDON_IMPORT, 0),
        SlotStep::Freeze { to } => (slot_op::FREEZE, to),
        SlotStep::Thaw => (slot_op::THAW, 0),
        SlotStep::Release => (slot_op::RELEASE, 0),
    };
    SlotsRec {
        op,
        slots: slots.to_bytes(),
        peer,
    }
}

/// The outcome of a transaction finalized ABORT here at `lsn`.
fn aborted(txn: &TxnId, lsn: Lsn) -> Outcome {
    Outcome::Aborted {
        refused: Box::new(Refused {
            reason: Refusal::AlreadyAborted,
            keys: Vec::new(),
            message: format!("transaction {txn} was aborted"),
            holders: Vec::new(),
        }),
        lsn,
    }
}

fn refusal_code(r: Refusal) -> i32 {
    match r {
        Refusal::Conflict => 1,
        Refusal::Locked => 2,
        Refusal::AlreadyAborted => 3,
        Refusal::Busy => 4,
    }
}

fn refusal_from_code(code: i32) -> Refusal {
    match code {
        1 => Refusal::Conflict,
        2 => Refusal::Locked,
        4 => Refusal::Busy,
        _ => Refusal::AlreadyAborted,
    }
}

fn outcome_to_snap(txn: &TxnId, outcome: &Outcome) -> SnapOutcome {
    match outcome {
        Outcome::Committed {
            lsn,
            version,
            digest,
        } => SnapOutcome {
            txn_id: txn.as_bytes().to_vec(),
            commit: true,
            keys: Vec::new(),
            lsn: *lsn,
            refusal: 0,
            message: String::new(),
            digest: *digest,
            version: *version,
        },
        Outcome::Aborted { refused, lsn } => SnapOutcome {
            txn_id: txn.as_bytes().to_vec(),
            commit: false,
            keys: refused
                .keys
                .iter()
                .map(|k| ReadRec {
                    key: k.clone(),
                    version: 0,
                })
                .collect(),
            lsn: *lsn,
            refusal: refusal_code(refused.reason),
            message: refused.message.clone(),
            digest: 0,
            version: 0,
        },
    }
}

fn outcome_from_snap(o: SnapOutcome) -> Result<(TxnId, Outcome), String> {
    let txn = parse_txn(&o.txn_id)?;
    let outcome = if o.commit {
        Outcome::Committed {
            lsn: o.lsn,
            version: o.version,
            digest: o.digest,
        }
    } else {
        Outcome::Aborted {
            refused: Box::new(Refused {
                reason: refusal_from_code(o.refusal),
                keys: o.keys.into_iter().map(|r| r.key).collect(),
                message: o.message,
                holders: Vec::new(),
            }),
            lsn: o.lsn,
        }
    };
    Ok((txn, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(n: u8) -> TxnId {
        TxnId([n; 16])
    }
    fn put(k: &str, v: &str) -> WriteRec {
        WriteRec {
            key: k.into(),
            value: Some(v.into()),
        }
    }
    fn read(k: &str, version: u64) -> ReadRec {
        ReadRec {
            key: k.into(),
            version,
        }
    }
    fn prepare(t: TxnId, reads: Vec<ReadRec>, writes: Vec<WriteRec>) -> Record {
        Record::Prepare(PrepareRec {
            txn_id: t.0.to_vec(),
            reads,
            writes,
            anchor: 1,
            participants: vec![1, 2],
            exec: 7,
        })
    }

    #[test]
    fn one_phase_commit_validates_versions_and_is_idempotent() {
        let state = State::default();
        let now = Instant::now();
        let mut g = state.lock();
        assert!(matches!(
            g.check_commit_local(0, &txn(1), &[read("a", 0)], &[put("a", "1")]),
            Ok(Check::Proceed)
        ));
        g.apply(
            1,
            &Record::CommitLocal(CommitLocalRec {
                txn_id: txn(1).0.to_vec(),
                writes: vec![put("a", "1")],
            }),
            now,
        )
        .expect("apply");
        assert_eq!(state.view(b"a").entry.expect("written").version(), 1);
        // The same transaction again: the first outcome.
        match g.check_commit_local(0, &txn(1), &[read("a", 0)], &[put("a", "1")]) {
            Ok(Check::Done(Outcome::Committed { lsn: 1, .. })) => {}
            other => panic!("expected the first outcome, got {other:?}"),
        }
        // The same id with other writes is misuse, not a retry.
        assert!(
            g.check_commit_local(0, &txn(1), &[], &[put("b", "1")])
                .is_err()
        );
        // Another transaction that read the old version conflicts.
        match g.check_commit_local(0, &txn(2), &[read("a", 0)], &[put("a", "2")]) {
            Ok(Check::Refused(r)) => {
                assert_eq!(r.reason, Refusal::Conflict);
                assert_eq!(r.keys, vec![b"a".to_vec()]);
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    #[test]
    fn prepared_locks_conflict_and_release_on_finalize() {
        let state = State::default();
        let now = Instant::now();
        let mut g = state.lock();
        assert!(matches!(
            g.check_prepare(0, &txn(1), &[read("r", 0)], &[put("w", "1")]),
            Check::Proceed
        ));
        g.apply(
            1,
            &prepare(txn(1), vec![read("r", 0)], vec![put("w", "1")]),
            now,
        )
        .expect("apply");
        assert!(matches!(
            g.check_prepare(0, &txn(1), &[], &[]),
            Check::AlreadyPrepared { lsn: 1, .. }
        ));

        // Writing a key another transaction read-locked: LOCKED.
        let Ok(Check::Refused(r)) = g.check_commit_local(0, &txn(2), &[], &[put("r", "x")]) else {
            panic!("read lock ignored")
        };
        assert_eq!((r.reason, r.keys), (Refusal::Locked, vec![b"r".to_vec()]));
        // Reading a write-locked key: LOCKED. Reading a read-locked key: fine.
        let Check::Refused(r) = g.check_prepare(0, &txn(3), &[read("w", 0)], &[]) else {
            panic!("write lock ignored")
        };
        assert_eq!(r.reason, Refusal::Locked);
        assert!(matches!(
            g.check_prepare(0, &txn(4), &[read("r", 0)], &[]),
            Check::Proceed
        ));
        assert_eq!(state.view(b"w").lock.expect("locked").txn, txn(1));
        assert!(
            state.view(b"w").entry.is_none(),
            "a prepared write is not visible"
        );

        g.apply(
            2,
            &Record::Finalize(FinalizeRec {
                txn_id: txn(1).0.to_vec(),
                commit: true,
            }),
            now,
        )
        .expect("apply");
        let view = state.view(b"w");
        assert!(view.lock.is_none());
        // A two-phase write's version is its PREPARE record's LSN.
        assert_eq!(view.entry.expect("applied").version(), 1);
        assert!(state.locks.is_empty(), "every lock released");
        assert!(matches!(
            g.check_commit_local(0, &txn(2), &[], &[put("r", "x")]),
            Ok(Check::Proceed)
        ));
        // A late prepare of a finalized transaction returns its outcome.
        assert!(matches!(
            g.check_prepare(0, &txn(1), &[], &[]),
            Check::Done(Outcome::Committed { .. })
        ));
    }

    fn decide_rec(t: TxnId, commit: bool) -> Record {
        Record::Decide(DecideRec {
            txn_id: t.0.to_vec(),
            commit,
            participants: vec![1, 2],
        })
    }
    fn finalize_rec(t: TxnId, commit: bool) -> Record {
        Record::Finalize(FinalizeRec {
            txn_id: t.0.to_vec(),
            commit,
        })
    }
    fn forget_rec(t: TxnId) -> Record {
        Record::Forget(ForgetRec {
            txn_ids: vec![t.0.to_vec()],
        })
    }

    #[test]
    fn decide_records_once_and_the_first_decision_wins() {
        let state = State::default();
        let now = Instant::now();
        let mut g = state.lock();
        assert_eq!(
            g.check_decide(&txn(1), true, 0, true),
            Ok(Decide::Record { commit: true })
        );
        g.apply(1, &decide_rec(txn(1), true), now).expect("apply");
        // A retry, and a late opposite decide (a sweeper's presumed abort):
        // the recorded decision stands and nothing more is logged.
        for asked in [true, false] {
            assert_eq!(
                g.check_decide(&txn(1), asked, 0, true),
                Ok(Decide::Stands {
                    commit: true,
                    lsn: 1
                })
            );
        }
    }

    #[test]
    fn a_late_decide_after_finalize_and_forget_keeps_the_finalized_outcome() {
        // Simulator seed 1035: the coordinator's decide COMMIT is delayed; a
        // sweeper resolves (presumed abort), the anchor finalizes ABORT and
        // forgets the record; then the late decide arrives.
        let state = State::default();
        let now = Instant::now();
        let mut g = state.lock();
        g.apply(1, &prepare(txn(1), vec![], vec![put("a", "1")]), now)
            .expect("apply");
        // Prepared here, nothing decided: pending (it may have committed in
        // parallel). The sweeper fences the other participant, finds it not
        // prepared, and decides ABORT, fenced.
        assert!(matches!(
            g.check_resolve(&txn(1)),
            Resolve::Pending { lsn: 1, .. }
        ));
        assert_eq!(
            g.check_decide(&txn(1), false, 0, false),
            Ok(Decide::FenceFirst),
            "unfenced"
        );
        assert_eq!(
            g.check_decide(&txn(1), false, 0, true),
            Ok(Decide::Record { commit: false })
        );
        g.apply(2, &decide_rec(txn(1), false), now).expect("apply");
        g.apply(3, &finalize_rec(txn(1), false), now)
            .expect("apply");
        g.apply(4, &forget_rec(txn(1)), now).expect("apply");
        assert!(g.record(&txn(1)).is_none());
        assert_eq!(
            g.check_decide(&txn(1), true, 0, true),
            Ok(Decide::Stands {
                commit: false,
                lsn: 3
            }),
            "a COMMIT recorded now would be lost: the writes were discarded"
        );
        // Resolve agrees: the finalized ABORT, without a record.
        assert_eq!(g.check_resolve(&txn(1)), Resolve::PresumeAbort);
        assert_eq!(
            g.resolved(&txn(1), false),
            TxnRecord {
                commit: false,
                participants: vec![],
                lsn: 3
            }
        );
    }

    #[test]
    fn a_late_resolve_after_commit_finalize_and_forget_answers_committed() {
        // Simulator seed 2033: a resolve arrives after the anchor committed,
        // finalized and forgot the transaction; presuming abort would
        // contradict the writes already applied.
        let state = State::default();
        let now = Instant::now();
        let mut g = state.lock();
        g.apply(1, &prepare(txn(2), vec![], vec![put("b", "1")]), now)
            .expect("apply");
        g.apply(2, &decide_rec(txn(2), true), now).expect("apply");
        assert_eq!(g.check_resolve(&txn(2)), Resolve::PresumeAbort);
        assert_eq!(g.resolved(&txn(2), true).lsn, 2, "the record answers");
        g.apply(3, &finalize_rec(txn(2), true), now).expect("apply");
        g.apply(4, &forget_rec(txn(2)), now).expect("apply");
        assert_eq!(g.check_resolve(&txn(2)), Resolve::Committed { lsn: 3 });
        assert_eq!(
            g.check_decide(&txn(2), false, 0, true),
            Ok(Decide::Stands {
                commit: true,
                lsn: 3
            })
        );
    }

    #[test]
    fn resolve_of_an_unknown_transaction_presumes_abort() {
        let state = State::default();
        let g = state.lock();
        assert_eq!(g.check_resolve(&txn(3)), Resolve::PresumeAbort);
        assert_eq!(
            g.check_decide(&txn(3), false, 0, true),
            Ok(Decide::Record { commit: false })
        );
        assert_eq!(
            g.resolved(&txn(3), false),
            TxnRecord {
                commit: false,
                participants: vec![],
                lsn: 0
            },
            "nothing known: an ABORT without a record yet"
        );
    }

    #[test]
    fn a_full_anchor_refuses_commit_decisions_but_never_aborts() {
        let state = State::default();
        let mut g = state.lock();
        for n in 0..TXN_RECORDS_MAX {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(n as u64).to_le_bytes());
            g.core.records.insert(
                TxnId(id),
                TxnRecord {
                    commit: true,
                    participants: vec![],
                    lsn: 1,
                },
            );
        }
        let refused = g.check_decide(&txn(9), true, 0, true).expect_err("full");
        assert_eq!(refused.reason, Refusal::Busy);
        assert!(refused.message.contains("TXN_RECORDS_MAX"));
        assert_eq!(
            g.check_decide(&txn(9), false, 0, true),
            Ok(Decide::Record { commit: false })
        );
    }

    #[test]
    fn abort_discards_and_late_prepare_after_abort_is_refused() {
        let state = State::default();
        let now = Instant::now();
        let mut g = state.lock();
        g.apply(1, &prepare(txn(1), vec![], vec![put("w", "1")]), now)
            .expect("apply");
        g.apply(
            2,
            &Record::Finalize(FinalizeRec {
                txn_id: txn(1).0.to_vec(),
                commit: false,
            }),
            now,
        )
        .expect("apply");
        assert!(state.view(b"w").entry.is_none() && state.view(b"w").lock.is_none());
        // Anchor presumed abort, then the coordinator's prepare arrives late.
        g.apply(
            3,
            &Record::Decide(DecideRec {
                txn_id: txn(5).0.to_vec(),
                commit: false,
                participants: vec![],
            }),
            now,
        )
        .expect("apply");
        let Check::Refused(r) = g.check_prepare(0, &txn(5), &[], &[put("z", "1")]) else {
            panic!("late prepare accepted")
        };
        assert_eq!(r.reason, Refusal::AlreadyAborted);
        // First decision wins, even in replay.
        g.apply(
            4,
            &Record::Decide(DecideRec {
                txn_id: txn(5).0.to_vec(),
                commit: true,
                participants: vec![],
            }),
            now,
        )
        .expect("apply");
        assert!(!g.record(&txn(5)).expect("recorded").commit);
    }

    #[test]
    fn outcomes_are_bounded() {
        let mut outcomes = Outcomes::default();
        for i in 0..(OUTCOMES_MAX + 10) {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(i as u64).to_le_bytes());
            outcomes.insert(
                TxnId(id),
                Outcome::Committed {
                    lsn: 1,
                    version: 1,
                    digest: 0,
                },
            );
        }
        assert_eq!(outcomes.len(), OUTCOMES_MAX);
        assert!(
            outcomes.get(&TxnId([0; 16])).is_none(),
            "oldest forgotten first"
        );
    }

    #[test]
    fn read_holds_block_writers_until_released_or_expired() {
        let state = State::default();
        let t0 = Instant::now();
        let mut g = state.lock_at(t0);
        g.hold_reads(&txn(1), &[read("h", 0)], t0).expect("hold");
        let Ok(Check::Refused(r)) = g.check_commit_local(0, &txn(2), &[], &[put("h", "x")]) else {
            panic!("a held key was written")
        };
        assert_eq!(r.reason, Refusal::Locked);
        assert!(matches!(
            g.check_prepare(0, &txn(3), &[], &[put("h", "x")]),
            Check::Refused(_)
        ));
        // Reads are not blocked by a hold.
        assert!(matches!(
            g.check_prepare(0, &txn(3), &[read("h", 0)], &[]),
            Check::Proceed
        ));
        assert!(
            g.release_holds(&txn(1), &[b"h".to_vec()]),
            "held until released"
        );
        assert!(state.locks.is_empty(), "released");
        assert!(
            !g.release_holds(&txn(1), &[b"h".to_vec()]),
            "a hold released twice was not held"
        );
        drop(g);

        let mut g = state.lock_at(t0);
        g.hold_reads(&txn(4), &[read("h", 0)], t0).expect("hold");
        drop(g);
        let later = t0 + trellis_types::limits::READ_HOLD_MAX;
        let mut g = state.lock_at(later);
        assert!(
            matches!(
                g.check_commit_local(0, &txn(5), &[], &[put("h", "x")]),
                Ok(Check::Proceed)
            ),
            "an expired hold no longer blocks writers"
        );
        g.hold_reads(&txn(8), &[read("h", 0)], t0)
            .expect("an old hold, for the release check");
        assert!(
            !g.release_holds(&txn(8), &[b"h".to_vec()]),
            "an expired hold does not count as held"
        );
        assert_eq!(g.purge_expired_holds(later), 1);
        assert!(state.locks.is_empty());
        // A stale read cannot be held.
        g.apply(
            1,
            &Record::CommitLocal(CommitLocalRec {
                txn_id: txn(6).0.to_vec(),
                writes: vec![put("h", "1")],
            }),
            later,
        )
        .expect("apply");
        assert!(g.hold_reads(&txn(7), &[read("h", 0)], later).is_err());
    }

    #[test]
    fn apply_refuses_lsn_gaps() {
        let state = State::default();
        let mut g = state.lock();
        let rec = Record::Forget(ForgetRec { txn_ids: vec![] });
        g.apply(1, &rec, Instant::now()).expect("first");
        assert!(g.apply(3, &rec, Instant::now()).is_err());
    }
    fn snap(k: &str, v: Option<&str>, version: u64) -> SnapEntry {
        SnapEntry {
            key: k.into(),
            value: v.map(Into::into),
            version,
        }
    }

    fn slots_of(keys: &[&str]) -> SlotSet {
        let mut set = SlotSet::empty();
        for k in keys {
            set.insert(slot_of(k.as_bytes()));
        }
        set
    }

    fn all_but(set: &SlotSet) -> SlotSet {
        let mut out = SlotSet::empty();
        for s in (0..trellis_types::SLOTS).filter(|s| !set.contains(*s)) {
            out.insert(s);
        }
        out
    }

    /// Everything replay must rebuild: the index, the ownership, the base.
    fn fingerprint(state: &State) -> (Vec<(Vec<u8>, Entry)>, Ownership, VersionBase) {
        let mut index: Vec<_> = state
            .index
            .iter()
            .map(|e| (e.key().to_vec(), e.value().clone()))
            .collect();
        index.sort_by(|a, b| a.0.cmp(&b.0));
        let g = state.lock();
        let versions = state.versions.read().expect("versions").clone();
        (index, g.core.ownership.clone(), versions)
    }

    #[test]
    fn slot_steps_and_ingests_apply_the_same_live_and_in_replay() {
        let now = Instant::now();
        // Group 2, importing one slot from group 1 and giving another away.
        let moving = slots_of(&["m", "m2"]);
        let leaving = slots_of(&["l"]);
        assert!(!moving.contains(slot_of(b"l")) && !moving.contains(slot_of(b"x")));
        let owned = all_but(&moving);
        let records = [
            Record::CommitLocal(CommitLocalRec {
                txn_id: txn(1).0.to_vec(),
                writes: vec![put("l", "mine")],
            }),
            Record::Slots(slots_rec(SlotStep::BeginImport { from: 1 }, &moving)),
            Record::Ingest(IngestRec {
                from_group: 1,
                entries: vec![snap("m", Some("copied"), 40), snap("m2", None, 30)],
            }),
            // A later copy of an older version changes nothing.
            Record::Ingest(IngestRec {
                from_group: 1,
                entries: vec![snap("m", Some("older"), 35)],
            }),
            Record::Slots(slots_rec(SlotStep::Freeze { to: 3 }, &leaving)),
            Record::CommitLocal(CommitLocalRec {
                txn_id: txn(2).0.to_vec(),
                writes: vec![put("x", "after")],
            }),
        ];
        let live = State::new(Ownership::new(1, &owned));
        let replayed = State::new(Ownership::new(1, &owned));
        for state in [&live, &replayed] {
            let mut g = state.lock();
            for (i, record) in records.iter().enumerate() {
                g.apply(i as u64 + 1, record, now).expect("apply");
            }
        }
        assert!(fingerprint(&live) == fingerprint(&replayed));
        let g = live.lock();
        assert_eq!(
            live.view(b"m").entry.expect("copied").value(),
            Some(&b"copied"[..])
        );
        assert_eq!(live.view(b"m").entry.expect("copied").version(), 40);
        assert_eq!(live.view(b"m2").entry.expect("tombstone").value(), None);
        assert_eq!(
            live.view(b"x").entry.expect("written").version(),
            43,
            "the ingest at LSN 3 (up to version 40) sets offset 37: LSN 6 writes at 43"
        );
        assert_eq!(live.lsn_of(40), 3);
        assert!(matches!(
            g.check_serve(1, [&b"l"[..]]),
            Err(NotServed {
                error: OwnershipError::Moving { to: 3, .. },
                ..
            })
        ));
        assert!(matches!(
            g.check_serve(1, [&b"m"[..]]),
            Err(NotServed {
                error: OwnershipError::NotHandedOver { from: 1, .. },
                ..
            })
        ));
        // A snapshot restores the same, over the map's ownership.
        let capture = g.capture();
        drop(g);
        let restored = State::new(Ownership::new(1, &owned));
        restored.lock().restore(capture, now).expect("restore");
        assert!(fingerprint(&restored) == fingerprint(&live));
        assert_eq!(
            *restored.serving(),
            fingerprint(&live).1,
            "readers see it too"
        );

        // Abandoning the import drops what was copied, and only that.
        let mut g = live.lock();
        g.apply(
            7,
            &Record::Slots(slots_rec(SlotStep::AbandonImport, &moving)),
            now,
        )
        .expect("apply");
        assert!(live.view(b"m").entry.is_none() && live.view(b"m2").entry.is_none());
        assert!(live.view(b"l").entry.is_some() && live.view(b"x").entry.is_some());
        assert_eq!(g.core.ownership.state(slot_of(b"m")), SlotState::NotOwned);
    }

    #[test]
    fn slot_steps_the_map_moved_past_apply_leniently_on_backups() {
        // The primary froze a slot under map 1; this backup already follows
        // map 2, under which the slot is not its group's: the freeze still
        // freezes it (serving nothing is the safe side), the release that
        // follows drops the data; a thaw the map moved past is ignored.
        let now = Instant::now();
        let slot = slots_of(&["k"]);
        let state = State::new(Ownership::new(1, &SlotSet::all()));
        let mut g = state.lock();
        g.apply(
            1,
            &Record::CommitLocal(CommitLocalRec {
                txn_id: txn(1).0.to_vec(),
                writes: vec![put("k", "v")],
            }),
            now,
        )
        .expect("apply");
        assert!(g.follow_map(2, &all_but(&slot)).is_some());
        g.apply(
            2,
            &Record::Slots(slots_rec(SlotStep::Freeze { to: 2 }, &slot)),
            now,
        )
        .expect("apply");
        assert_eq!(
            g.core.ownership.state(slot_of(b"k")),
            SlotState::Frozen { to: 2 }
        );
        g.apply(3, &Record::Slots(slots_rec(SlotStep::Release, &slot)), now)
            .expect("apply");
        assert!(state.view(b"k").entry.is_none(), "released data dropped");
        assert_eq!(g.core.ownership.state(slot_of(b"k")), SlotState::NotOwned);
        g.apply(4, &Record::Slots(slots_rec(SlotStep::Thaw, &slot)), now)
            .expect("a step that does not fit is not an error");
        assert_eq!(g.core.ownership.state(slot_of(b"k")), SlotState::NotOwned);
        // The primary, by contrast, refuses a step that does not fit.
        assert!(g.plan_step(SlotStep::Freeze { to: 2 }, &slot).is_err());
        assert!(matches!(
            g.check_ingest(1, &[snap("k", Some("v"), 5)]),
            Err(NotServed {
                error: OwnershipError::NotImporting { .. },
                ..
            })
        ));
    }

    #[test]
    fn an_export_is_complete_only_below_transactions_still_prepared() {
        let now = Instant::now();
        let state = State::default();
        let slot = slots_of(&["a"]);
        let sibling = (0..)
            .map(|i| format!("a{i}"))
            .find(|k| slot_of(k.as_bytes()) == slot_of(b"a"))
            .expect("a key in the same slot");
        state
            .lock_at(now)
            .apply(
                1,
                &Record::CommitLocal(CommitLocalRec {
                    txn_id: txn(1).0.to_vec(),
                    writes: vec![put("a", "1"), put("b", "1")],
                }),
                now,
            )
            .expect("apply");
        // Prepared at LSN 2 (its writes get version 2 at finalize), then a
        // later commit at LSN 3 on the same slot.
        state
            .lock_at(now)
            .apply(2, &prepare(txn(2), vec![], vec![put(&sibling, "2pc")]), now)
            .expect("apply");
        state
            .lock_at(now)
            .apply(
                3,
                &Record::CommitLocal(CommitLocalRec {
                    txn_id: txn(3).0.to_vec(),
                    writes: vec![put("a", "3")],
                }),
                now,
            )
            .expect("apply");
        let export = state.export(&slot, 0, None, now).expect("export");
        assert_eq!(
            export.complete_version, 1,
            "the prepared write (version 2) is not in the index yet"
        );
        assert!(
            export
                .entries
                .iter()
                .all(|(k, _)| slot_of(k) == slot_of(b"a"))
        );
        assert_eq!(export.entries.len(), 1, "{:?}", export.entries);
        // Not frozen, and locked: the drained export is refused.
        assert!(matches!(
            state.export(&slot, 0, Some(2), now),
            Err(ExportRefusal::NotFrozen { .. })
        ));
        state
            .lock_at(now)
            .apply(
                4,
                &Record::Slots(slots_rec(SlotStep::Freeze { to: 2 }, &slot)),
                now,
            )
            .expect("apply");
        assert_eq!(
            state.export(&slot, 0, Some(2), now).expect_err("locked"),
            ExportRefusal::NotDrained { locked_keys: 1 }
        );
        state
            .lock_at(now)
            .apply(5, &finalize_rec(txn(2), true), now)
            .expect("apply");
        let drained = state
            .export(&slot, export.complete_version, Some(2), now)
            .expect("drained");
        assert_eq!(drained.complete_version, 5);
        let versions: Vec<u64> = drained.entries.iter().map(|(_, e)| e.version()).collect();
        assert!(
            versions.contains(&2) && versions.contains(&3),
            "{versions:?}"
        );
        // A slot neither owned nor frozen here is not ours to export.
        let none = State::new(Ownership::new(1, &SlotSet::empty()));
        assert!(matches!(
            none.export(&slot, 0, None, now),
            Err(ExportRefusal::NotHeld(OwnershipError::WrongShard { .. }))
        ));
    }

    #[test]
    fn an_export_whose_slots_were_released_during_the_walk_is_refused() {
        let now = Instant::now();
        let state = State::default();
        let slot = slots_of(&["a"]);
        state
            .lock_at(now)
            .apply(
                1,
                &Record::CommitLocal(CommitLocalRec {
                    txn_id: txn(1).0.to_vec(),
                    writes: vec![put("a", "1")],
                }),
                now,
            )
            .expect("apply");
        // The steps of `State::export`, with a stale driver's freeze and
        // release landing between the walk and the check after it.
        let complete = state.lock_at(now).export_plan(&slot, None).expect("owned");
        assert_eq!(complete, 1);
        let entries = state.export_entries(&slot, 0);
        assert_eq!(entries.len(), 1, "the walk saw the entry");
        for (lsn, step) in [(2, SlotStep::Freeze { to: 2 }), (3, SlotStep::Release)] {
            state
                .lock_at(now)
                .apply(lsn, &Record::Slots(slots_rec(step, &slot)), now)
                .expect("apply");
        }
        assert!(
            state.export_entries(&slot, 0).is_empty(),
            "the release dropped the slot's entries"
        );
        assert!(matches!(
            state.export(&slot, 0, None, now),
            Err(ExportRefusal::NotHeld(_))
        ));
        assert!(matches!(
            state.lock_at(now).check_exportable(&slot, None),
            Err(ExportRefusal::NotHeld(_))
        ));
    }
}
