//! The coordinator's transaction decisions, pure: the plan of a commit
//! (which path, which participants, which anchor), the tally of PREPARE
//! votes, the mapping of what the shards said to the client's answer, and
//! the rules of status, in-doubt resolution and forgetting.
//!
//! No IO, no clock, no `pb::` types: [`crate::txn`] sends the RPCs, turns
//! each reply into the domain types here at its edge, and acts on what
//! these functions say. That is what lets each rule be unit-tested below
//! without a cluster.
//!
//! # The rules
//! - [`plan`]: one group → one-phase (`CommitLocal`); several groups and no
//!   writes → read-only validation; otherwise two-phase, anchored at the
//!   group of the smallest written key. Keys keep request order within each
//!   participant. Duplicate and empty transactions never get here: the
//!   service edge rejects them (`trellis_types::validate::txn`).
//! - [`Tally::of`]: COMMIT is asked of the anchor only if every participant
//!   voted YES (or had already finalized COMMIT). The first refusal in group
//!   order gives the abort reason; later refusals for the same reason add
//!   their keys. A participant that gave no vote aborts the transaction as
//!   `PARTICIPANT_UNAVAILABLE` unless a refusal came first.
//! - [`Tally::committed_in_parallel`]: every participant voted YES and the
//!   anchor's YES says this execution's PREPARE made its prepared state:
//!   the transaction is committed now (parallel commit); the anchor's
//!   record is not waited for. Anyone else who would ABORT it first fences
//!   the participants that did not vote YES ([`Tally::to_fence`],
//!   [`fenced_commit`]): a fenced participant can never prepare it.
//! - [`decided`]: the anchor's answer is the outcome, whatever was asked
//!   (first decision wins); a decide whose answer was lost is *outcome
//!   unknown*, never success or failure.
//! - [`Tally::to_learn`] / [`Tally::outcome`]: a commit decided by another
//!   execution is finalized now at the participants whose version is not
//!   known; each written key is answered with its participant's version.
//! - [`unknown_if_ambiguous`], [`read_only_outcome`], [`state_of`]: the
//!   one-phase, read-only and status rules.
//! - [`Resolution::of`], [`finalize_batches`], [`forgettable`]: what to
//!   finalize after a resolve or in a batch, and when an anchor's record may
//!   be forgotten (only once every participant it names finalized).

use std::collections::{BTreeMap, BTreeSet};

use trellis_types::{GroupId, Key, TxnId, Value, Version};

/// A transaction as the client sends it.
#[derive(Clone, Debug)]
pub struct CommitRequest {
    pub txn: TxnId,
    /// `trellis.v1.Durability` as its number: 0 SYNC, 1 SEMI_SYNC, 2 ASYNC.
    pub durability: u32,
    pub reads: Vec<(Key, Version)>,
    /// `None` deletes.
    pub writes: Vec<(Key, Option<Value>)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortReason {
    Conflict,
    Locked,
    ResolvedAbort,
    ParticipantUnavailable,
    /// A participant no longer owned some of the keys when PREPARE came
    /// (slots moved after the plan): retryable with a new id.
    SlotsMoved,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Abort {
    pub reason: AbortReason,
    pub keys: Vec<Key>,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Every written key with its new version.
    Committed {
        written: Vec<(Key, Version)>,
    },
    Aborted(Abort),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TxnError {
    #[error("{0}")]
    Invalid(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error(
        "outcome unknown: transaction {txn} may or may not have committed ({detail}); \
         ask TxnStatus with its id"
    )]
    OutcomeUnknown { txn: TxnId, detail: String },
    #[error("deadline exceeded: {0}")]
    Deadline(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// A shard did not know the caller (a routing client with auth on).
    #[error("{0}")]
    Unauthenticated(String),
    /// A shard refused the caller's user a grant it lacks.
    #[error("{0}")]
    PermissionDenied(String),
    /// Keys routed to `group` belong to another group under the newer map
    /// `map_epoch`: nothing was done at `group`; route them again. Never
    /// sent to a client (the coordinator re-plans; past its attempts it
    /// answers `Unavailable`).
    #[error("keys routed to group {group} moved to another group under map epoch {map_epoch}")]
    Moved { group: GroupId, map_epoch: u64 },
}

/// A transaction's state as TxnStatus reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnState {
    Committed,
    Aborted,
    Unknown,
}

// ------------------------------------------------------------------ plan

/// How a commit runs, borrowed from its request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan<'a> {
    /// Every key in one group: one `CommitLocal` there.
    OnePhase { group: GroupId },
    /// Several groups, nothing written: validate the reads at each group
    /// (holding them), then release. Nothing is logged.
    ReadOnly {
        reads: BTreeMap<GroupId, Vec<&'a (Key, Version)>>,
    },
    /// Several groups with writes.
    TwoPhase(TwoPhase<'a>),
}

/// The plan of a two-phase commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TwoPhase<'a> {
    /// Where the decision is recorded: the group of the smallest written
    /// key, so every execution of the same transaction (a client retry,
    /// another coordinator) picks the same one under the same map.
    pub anchor: GroupId,
    /// Every participant (a group with a read or a write) and its share,
    /// in group order. A group with reads only still prepares: its reads
    /// are validated and held like any other.
    pub parts: BTreeMap<GroupId, Part<'a>>,
    /// Every written key in request order, with its group: the answer
    /// lists them in this order.
    pub written: Vec<(&'a Key, GroupId)>,
}

/// One participant's share of a two-phase commit, in request order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Part<'a> {
    pub reads: Vec<&'a (Key, Version)>,
    pub writes: Vec<&'a (Key, Option<Value>)>,
}

impl TwoPhase<'_> {
    /// The participants, in group order (what PREPARE and DECIDE name).
    pub fn participants(&self) -> Vec<GroupId> {
        self.parts.keys().copied().collect()
    }
}

/// Plans `req` with `group_of` (the current map's key → group). A
/// transaction with no keys (rejected at the service edge) plans as
/// read-only with nothing to validate.
pub fn plan(req: &CommitRequest, group_of: impl Fn(&[u8]) -> GroupId) -> Plan<'_> {
    let mut groups: BTreeSet<GroupId> = BTreeSet::new();
    for (k, _) in &req.reads {
        groups.insert(group_of(k));
    }
    for (k, _) in &req.writes {
        groups.insert(group_of(k));
    }
    if groups.len() == 1 {
        let group = *groups.first().expect("one group");
        return Plan::OnePhase { group };
    }
    if req.writes.is_empty() {
        let mut reads: BTreeMap<GroupId, Vec<&(Key, Version)>> = BTreeMap::new();
        for read in &req.reads {
            reads.entry(group_of(&read.0)).or_default().push(read);
        }
        return Plan::ReadOnly { reads };
    }
    let anchor = req
        .writes
        .iter()
        .map(|(k, _)| k)
        .min()
        .map(|k| group_of(k))
        .expect("a two-phase commit has writes: checked just above");
    let mut parts: BTreeMap<GroupId, Part<'_>> = BTreeMap::new();
    for read in &req.reads {
        parts.entry(group_of(&read.0)).or_default().reads.push(read);
    }
    let mut written = Vec::with_capacity(req.writes.len());
    for write in &req.writes {
        let group = group_of(&write.0);
        parts.entry(group).or_default().writes.push(write);
        written.push((&write.0, group));
    }
    Plan::TwoPhase(TwoPhase {
        anchor,
        parts,
        written,
    })
}

// ----------------------------------------------------------------- tally

/// What a participant said to PREPARE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Vote {
    /// Prepared: its writes get `version` if the transaction commits.
    /// `owner`: this execution's PREPARE made the prepared state there.
    Yes { version: Version, owner: bool },
    /// Refused (conflict, lock, or an earlier abort of this transaction).
    No(Abort),
    /// Already finalized there (this is a retry).
    Finalized { commit: bool, version: Version },
}

/// The PREPARE votes added up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tally {
    /// What to ask the anchor to decide.
    pub commit: bool,
    /// Why not, if a participant refused or gave no vote.
    pub abort: Option<Abort>,
    /// The version each participant's writes get if the transaction
    /// commits, as far as known.
    pub versions: BTreeMap<GroupId, Version>,
    /// The participants that voted YES.
    pub prepared: BTreeSet<GroupId>,
    /// Those whose YES said this execution made their prepared state.
    pub owned: BTreeSet<GroupId>,
}

impl Tally {
    /// Adds up each participant's reply (its vote, or why it gave none), in
    /// group order.
    pub fn of(replies: &[(GroupId, Result<Vote, TxnError>)]) -> Tally {
        let mut commit = true;
        let mut abort: Option<Abort> = None;
        let mut versions = BTreeMap::new();
        let mut prepared = BTreeSet::new();
        let mut owned = BTreeSet::new();
        for (group, reply) in replies {
            match reply {
                Ok(Vote::Yes { version, owner }) => {
                    versions.insert(*group, *version);
                    prepared.insert(*group);
                    if *owner {
                        owned.insert(*group);
                    }
                }
                Ok(Vote::Finalized {
                    commit: finalized,
                    version,
                }) => {
                    commit &= *finalized;
                    if *finalized {
                        versions.insert(*group, *version);
                    }
                }
                Ok(Vote::No(this)) => {
                    commit = false;
                    match &mut abort {
                        Some(existing) if existing.reason == this.reason => {
                            existing.keys.extend(this.keys.iter().cloned())
                        }
                        Some(_) => {}
                        None => abort = Some(this.clone()),
                    }
                }
                Err(TxnError::Moved { .. }) => {
                    commit = false;
                    abort.get_or_insert(Abort {
                        reason: AbortReason::SlotsMoved,
                        keys: Vec::new(),
                        message: format!(
                            "group {group} no longer owns some of the keys (slots moved while the transaction committed); retry the transaction"
                        ),
                    });
                }
                Err(err) => {
                    commit = false;
                    abort.get_or_insert(Abort {
                        reason: AbortReason::ParticipantUnavailable,
                        keys: Vec::new(),
                        message: format!("group {group} could not prepare: {err}"),
                    });
                }
            }
        }
        Tally {
            commit,
            abort,
            versions,
            prepared,
            owned,
        }
    }

    /// Committed now, without the anchor's record: every participant voted
    /// YES, and the anchor's YES was this execution's own. No one else can
    /// record ABORT at the anchor without first fencing a participant that
    /// had not prepared — and there is none.
    pub fn committed_in_parallel(&self, anchor: GroupId, participants: &[GroupId]) -> bool {
        self.owned.contains(&anchor) && participants.iter().all(|g| self.prepared.contains(g))
    }

    /// The participants to fence before this execution may ABORT at an
    /// anchor another execution prepared: those whose vote did not say
    /// prepared or committed.
    pub fn to_fence(&self, participants: &[GroupId]) -> Vec<GroupId> {
        participants
            .iter()
            .copied()
            .filter(|g| !self.versions.contains_key(g))
            .collect()
    }

    /// The participants to finalize now, in order, to learn the versions
    /// of a commit (`decided`) whose votes did not all say them: another
    /// execution decided COMMIT while this one wanted abort.
    pub fn to_learn(&self, decided: bool, participants: &[GroupId]) -> Vec<GroupId> {
        if !decided || self.versions.len() >= participants.len() {
            return Vec::new();
        }
        participants
            .iter()
            .copied()
            .filter(|g| !self.versions.contains_key(g))
            .collect()
    }

    /// A version learned by finalizing `group` (see [`Tally::to_learn`]).
    pub fn learned(&mut self, group: GroupId, version: Version) {
        self.versions.insert(group, version);
    }

    /// The answer to the client once `decided` stands: each written key at
    /// its participant's version (0 if it stayed unknown: the participant
    /// had no record of committing it), or the abort with its reason.
    pub fn outcome(self, txn: TxnId, plan: &TwoPhase<'_>, decided: bool) -> CommitOutcome {
        if decided {
            let written = plan
                .written
                .iter()
                .map(|(k, group)| ((*k).clone(), self.versions.get(group).copied().unwrap_or(0)))
                .collect();
            return CommitOutcome::Committed { written };
        }
        CommitOutcome::Aborted(self.abort.unwrap_or_else(|| Abort {
            reason: AbortReason::ResolvedAbort,
            keys: Vec::new(),
            message: format!(
                "transaction {txn} was aborted by an in-doubt resolution that came first"
            ),
        }))
    }
}

/// What a participant said to a fence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fenced {
    /// Prepared there: its writes get `version` if it commits.
    Prepared { version: Version },
    /// Finalized there (ABORT if by this fence).
    Finalized { commit: bool, version: Version },
}

/// The decision a fencer asks for once every participant it had to fence
/// answered: COMMIT if any had committed it (a decision stands somewhere)
/// or every one had prepared it (it may have committed in parallel); ABORT
/// otherwise — one of them can now never prepare it, so it never committed
/// in parallel.
pub fn fenced_commit(answers: &[(GroupId, Fenced)]) -> bool {
    answers
        .iter()
        .any(|(_, a)| matches!(a, Fenced::Finalized { commit: true, .. }))
        || answers
            .iter()
            .all(|(_, a)| matches!(a, Fenced::Prepared { .. }))
}

/// The decision that stands, from the anchor's answer to DECIDE. A lost
/// answer is *outcome unknown*: another execution of the same transaction
/// (a client retry) could have decided either way.
pub fn decided(
    txn: TxnId,
    anchor: GroupId,
    answer: Result<bool, TxnError>,
) -> Result<bool, TxnError> {
    answer.map_err(|err| TxnError::OutcomeUnknown {
        txn,
        detail: format!("deciding at anchor group {anchor}: {err}"),
    })
}

/// A commit decided by another execution whose version at `group` could not
/// be learned: committed, but the answer cannot say at which versions, so
/// *outcome unknown* (TxnStatus says COMMITTED), never a plain UNAVAILABLE,
/// which a client may answer by running the transaction again.
pub fn unlearned(txn: TxnId, group: GroupId, err: &TxnError) -> TxnError {
    TxnError::OutcomeUnknown {
        txn,
        detail: format!(
            "committed by another execution; group {group} could not be finalized to learn its version: {err}"
        ),
    }
}

// ------------------------------------------------- one-phase, read-only

/// The answer to a one-phase commit the shard committed at `version`.
pub fn one_phase_committed(writes: &[(Key, Option<Value>)], version: Version) -> CommitOutcome {
    CommitOutcome::Committed {
        written: writes.iter().map(|(k, _)| (k.clone(), version)).collect(),
    }
}

/// A one-phase commit whose request may have reached the shard has an
/// unknown outcome when we give up on it.
pub fn unknown_if_ambiguous(txn: TxnId, err: TxnError) -> TxnError {
    match err {
        TxnError::Unavailable(detail) | TxnError::Deadline(detail) => {
            TxnError::OutcomeUnknown { txn, detail }
        }
        other => other,
    }
}

/// The answer to a read-only commit, from each group's validation (in
/// group order: a refusal, or none) and whether each release found its
/// holds still live. A failed validation is the error; the first refusal
/// aborts; a release that failed or found a hold gone leaves no instant at
/// which every read was current, so the transaction aborts as LOCKED.
pub fn read_only_outcome(
    validations: Vec<Result<Option<Abort>, TxnError>>,
    released: &[Result<bool, TxnError>],
) -> Result<CommitOutcome, TxnError> {
    for validation in validations {
        if let Some(abort) = validation? {
            return Ok(CommitOutcome::Aborted(abort));
        }
    }
    if !released.iter().all(|r| matches!(r, Ok(true))) {
        return Ok(CommitOutcome::Aborted(Abort {
            reason: AbortReason::Locked,
            keys: Vec::new(),
            message: format!(
                "a read hold lapsed before validation finished (READ_HOLD_MAX {:?}); retry the transaction",
                trellis_types::limits::READ_HOLD_MAX
            ),
        }));
    }
    Ok(CommitOutcome::Committed {
        written: Vec::new(),
    })
}

// ------------------------------------------------- status, resolution

/// What one group knows of a transaction, for TxnStatus.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lookup {
    /// The anchor's record, if this group holds one: COMMIT (`true`) or
    /// ABORT.
    pub record: Option<bool>,
    /// The outcome this group applied, if it remembers one.
    pub outcome: Option<bool>,
    /// Prepared here (not finalized): the anchor and participants its
    /// PREPARE names.
    pub prepared: Option<(GroupId, Vec<GroupId>)>,
}

/// What TxnStatus answers once every group said what it knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatusStep {
    /// The answer ([`state_of`]).
    Known(TxnState),
    /// Nothing decided or applied anywhere, but prepared somewhere: a
    /// commit in flight, or a parallel commit whose client may already
    /// have been told COMMITTED (every participant prepared, nothing
    /// finalized yet). Only the anchor can say which, by deciding it if
    /// nobody has (first decision wins): settle it there, as a resolver
    /// does, and answer that. Reading "every participant prepared" alone
    /// would not do: the execution that prepared it may still record
    /// ABORT at the anchor without fencing.
    Settle {
        anchor: GroupId,
        participants: Vec<GroupId>,
    },
}

/// TxnStatus's rule: [`state_of`], unless that is UNKNOWN while some group
/// holds the transaction prepared ([`StatusStep::Settle`], naming the
/// first such group's view of the anchor and the participants).
pub fn status_step(lookups: Vec<Lookup>) -> StatusStep {
    let prepared = lookups.iter().find_map(|l| l.prepared.clone());
    match (state_of(lookups), prepared) {
        (TxnState::Unknown, Some((anchor, participants))) => StatusStep::Settle {
            anchor,
            participants,
        },
        (state, _) => StatusStep::Known(state),
    }
}

/// A transaction's state from every group's [`Lookup`]: an anchor's record
/// wins; else any participant that committed it says COMMITTED; else one
/// that aborted it says ABORTED. Nothing known is UNKNOWN, never
/// committed.
pub fn state_of(lookups: impl IntoIterator<Item = Lookup>) -> TxnState {
    let mut record = None;
    let mut outcome = None;
    for lookup in lookups {
        if lookup.record.is_some() {
            record = lookup.record;
        }
        match lookup.outcome {
            Some(true) => outcome = Some(true),
            Some(false) if outcome.is_none() => outcome = Some(false),
            _ => {}
        }
    }
    match record.or(outcome) {
        Some(true) => TxnState::Committed,
        Some(false) => TxnState::Aborted,
        None => TxnState::Unknown,
    }
}

/// What to do once the anchor answered a resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// Every group to finalize: those the caller knows and those the
    /// record names, in group order.
    pub finalize: Vec<GroupId>,
    /// Whether that is every participant, so the record may be forgotten
    /// once all finalized. A caller that met one lock knows one group; the
    /// record names all (unless it is a presumed abort written by this
    /// resolve, which names none).
    pub complete: bool,
}

impl Resolution {
    /// From the participants the caller knows and those the anchor's
    /// record names.
    pub fn of(known: &[GroupId], named: &[GroupId]) -> Resolution {
        let mut all: BTreeSet<GroupId> = known.iter().copied().collect();
        all.extend(named.iter().copied());
        Resolution {
            finalize: all.into_iter().collect(),
            complete: !named.is_empty() || known.len() > 1,
        }
    }
}

// --------------------------------------------------------------- finalize

/// A decided transaction whose participants still have to apply or
/// discard it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalizeJob {
    pub txn: TxnId,
    pub anchor: GroupId,
    pub participants: Vec<GroupId>,
    pub commit: bool,
    /// Committed in parallel: the anchor holds no record, its own prepared
    /// state stands for one. It is finalized last, only once every other
    /// participant has finalized (a resolver finds it pending until then),
    /// and there is nothing to forget.
    pub anchor_last: bool,
}

/// A batch of decided transactions as one finalize per participant group:
/// for each group, its transactions and decisions in batch order. The
/// anchors of parallel commits wait for [`anchor_round`].
pub fn finalize_batches(jobs: &[FinalizeJob]) -> BTreeMap<GroupId, Vec<(TxnId, bool)>> {
    let mut by_group: BTreeMap<GroupId, Vec<(TxnId, bool)>> = BTreeMap::new();
    for job in jobs {
        for group in &job.participants {
            if job.anchor_last && *group == job.anchor {
                continue;
            }
            by_group
                .entry(*group)
                .or_default()
                .push((job.txn, job.commit));
        }
    }
    by_group
}

/// The second round of a batch: the anchor of each parallel commit whose
/// other participants all finalized in the first (`finalized[group]`).
/// One left out stays prepared at its anchor; the in-doubt sweeper finds
/// it pending there and finishes it.
pub fn anchor_round(
    jobs: &[FinalizeJob],
    finalized: &BTreeMap<GroupId, bool>,
) -> BTreeMap<GroupId, Vec<(TxnId, bool)>> {
    let mut by_anchor: BTreeMap<GroupId, Vec<(TxnId, bool)>> = BTreeMap::new();
    for job in jobs.iter().filter(|j| j.anchor_last) {
        let others_done = job
            .participants
            .iter()
            .filter(|g| **g != job.anchor)
            .all(|g| finalized.get(g).copied().unwrap_or(false));
        if others_done {
            by_anchor
                .entry(job.anchor)
                .or_default()
                .push((job.txn, job.commit));
        }
    }
    by_anchor
}

/// Whether the record of `txn` lingers: the previous sweep listed it at
/// its anchor too, so its own finalize-and-forget did not come in time.
pub fn lingering(previous: &std::collections::BTreeSet<TxnId>, txn: &TxnId) -> bool {
    previous.contains(txn)
}

/// Whether a lingering record may be forgotten, from each participant's
/// answer (`Some(prepared)`, `None` when it did not answer): every one
/// answered, and none has the transaction prepared any more.
pub fn record_done(answers: impl IntoIterator<Item = Option<bool>>) -> bool {
    answers.into_iter().all(|a| a == Some(false))
}

/// The anchors' records that may be forgotten after a batch, by anchor: a
/// transaction's record goes only once every one of its participants
/// finalized (`finalized[group]` is true). Forgotten earlier, a resolve
/// could find neither record nor outcome at the anchor and presume abort
/// for a transaction a participant has yet to commit.
pub fn forgettable(
    jobs: &[FinalizeJob],
    finalized: &BTreeMap<GroupId, bool>,
) -> BTreeMap<GroupId, Vec<TxnId>> {
    let mut forget: BTreeMap<GroupId, Vec<TxnId>> = BTreeMap::new();
    for job in jobs.iter().filter(|j| !j.anchor_last) {
        if job
            .participants
            .iter()
            .all(|g| finalized.get(g).copied().unwrap_or(false))
        {
            forget.entry(job.anchor).or_default().push(job.txn);
        }
    }
    forget
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Groups by the first byte of the key: `a…` → 1, `b…` → 2, `c…` → 3.
    fn group_of(key: &[u8]) -> GroupId {
        GroupId::from(key[0] - b'a' + 1)
    }

    fn txn() -> TxnId {
        TxnId::from_bytes(&[7; 16]).expect("16 bytes")
    }

    fn req(reads: &[&str], writes: &[&str]) -> CommitRequest {
        CommitRequest {
            txn: txn(),
            durability: 0,
            reads: reads.iter().map(|k| (k.as_bytes().to_vec(), 1)).collect(),
            writes: writes
                .iter()
                .map(|k| (k.as_bytes().to_vec(), Some(b"v".to_vec())))
                .collect(),
        }
    }

    fn two_phase<'a>(req: &'a CommitRequest) -> TwoPhase<'a> {
        match plan(req, group_of) {
            Plan::TwoPhase(p) => p,
            other => panic!("expected two-phase, got {other:?}"),
        }
    }

    fn no(reason: AbortReason, keys: &[&str]) -> Result<Vote, TxnError> {
        Ok(Vote::No(Abort {
            reason,
            keys: keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
            message: format!("{reason:?}"),
        }))
    }

    #[test]
    fn one_group_is_one_phase_even_with_reads_and_writes() {
        let r = req(&["a1", "a2"], &["a3"]);
        assert_eq!(plan(&r, group_of), Plan::OnePhase { group: 1 });
        let r = req(&["b1", "b2"], &[]);
        assert_eq!(plan(&r, group_of), Plan::OnePhase { group: 2 });
    }

    #[test]
    fn several_groups_without_writes_validate_read_only() {
        let r = req(&["b1", "a1", "b2"], &[]);
        let Plan::ReadOnly { reads } = plan(&r, group_of) else {
            panic!("expected read-only");
        };
        let keys = |g| -> Vec<&[u8]> { reads[&g].iter().map(|(k, _)| k.as_slice()).collect() };
        assert_eq!(keys(1), vec![b"a1".as_slice()]);
        assert_eq!(keys(2), vec![b"b1".as_slice(), b"b2".as_slice()]);
    }

    #[test]
    fn an_empty_transaction_plans_as_read_only_with_nothing_to_do() {
        assert_eq!(
            plan(&req(&[], &[]), group_of),
            Plan::ReadOnly {
                reads: BTreeMap::new()
            }
        );
    }

    #[test]
    fn the_anchor_is_the_group_of_the_smallest_written_key() {
        // Written in request order c, b: the smallest is "b9", group 2,
        // though group 1 (a read) and group 3 (written first) participate.
        let r = req(&["a1"], &["c1", "b9"]);
        let p = two_phase(&r);
        assert_eq!(p.anchor, 2);
        assert_eq!(p.participants(), vec![1, 2, 3]);
        // The smallest key wins by bytes, not by length or request order.
        let r = req(&[], &["b", "ab", "c"]);
        assert_eq!(two_phase(&r).anchor, 1);
    }

    #[test]
    fn a_read_only_group_in_a_two_phase_commit_participates_without_writes() {
        let r = req(&["a1", "b1"], &["b2"]);
        let p = two_phase(&r);
        assert_eq!(p.anchor, 2);
        assert!(p.parts[&1].writes.is_empty());
        assert_eq!(p.parts[&1].reads.len(), 1);
        assert_eq!(p.parts[&2].reads.len(), 1);
        assert_eq!(p.parts[&2].writes.len(), 1);
    }

    #[test]
    fn the_anchor_may_be_the_only_writer() {
        let r = req(&["b1", "c1"], &["a1", "a2"]);
        let p = two_phase(&r);
        assert_eq!(p.anchor, 1);
        assert_eq!(p.participants(), vec![1, 2, 3]);
        let written: Vec<_> = p.written.iter().map(|(k, g)| (k.as_slice(), *g)).collect();
        assert_eq!(written, vec![(b"a1".as_slice(), 1), (b"a2".as_slice(), 1)]);
    }

    #[test]
    fn parts_keep_request_order_within_a_group() {
        let r = req(&[], &["b3", "a1", "b1", "b2"]);
        let p = two_phase(&r);
        let writes: Vec<&[u8]> = p.parts[&2]
            .writes
            .iter()
            .map(|(k, _)| k.as_slice())
            .collect();
        assert_eq!(writes, vec![b"b3".as_slice(), b"b1", b"b2"]);
        let written: Vec<&[u8]> = p.written.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(written, vec![b"b3".as_slice(), b"a1", b"b1", b"b2"]);
    }

    #[test]
    fn all_yes_commits_each_key_at_its_participants_version() {
        let r = req(&[], &["b1", "a1", "a2"]);
        let p = two_phase(&r);
        let tally = Tally::of(&[
            (
                1,
                Ok(Vote::Yes {
                    version: 10,
                    owner: true,
                }),
            ),
            (
                2,
                Ok(Vote::Yes {
                    version: 20,
                    owner: true,
                }),
            ),
        ]);
        assert!(tally.commit);
        assert_eq!(tally.abort, None);
        assert!(tally.to_learn(true, &p.participants()).is_empty());
        assert_eq!(
            tally.outcome(txn(), &p, true),
            CommitOutcome::Committed {
                written: vec![
                    (b"b1".to_vec(), 20),
                    (b"a1".to_vec(), 10),
                    (b"a2".to_vec(), 10)
                ]
            }
        );
    }

    #[test]
    fn a_finalized_commit_counts_as_yes_with_its_version() {
        let tally = Tally::of(&[
            (
                1,
                Ok(Vote::Finalized {
                    commit: true,
                    version: 5,
                }),
            ),
            (
                2,
                Ok(Vote::Yes {
                    version: 6,
                    owner: true,
                }),
            ),
        ]);
        assert!(tally.commit);
        assert_eq!(tally.versions, BTreeMap::from([(1, 5), (2, 6)]));
    }

    #[test]
    fn a_finalized_abort_aborts_as_resolved_without_a_refusal() {
        let r = req(&[], &["a1", "b1"]);
        let p = two_phase(&r);
        let tally = Tally::of(&[
            (
                1,
                Ok(Vote::Finalized {
                    commit: false,
                    version: 0,
                }),
            ),
            (
                2,
                Ok(Vote::Yes {
                    version: 6,
                    owner: true,
                }),
            ),
        ]);
        assert!(!tally.commit);
        assert_eq!(tally.abort, None);
        let CommitOutcome::Aborted(abort) = tally.outcome(txn(), &p, false) else {
            panic!("aborted");
        };
        assert_eq!(abort.reason, AbortReason::ResolvedAbort);
    }

    #[test]
    fn the_first_refusal_gives_the_reason_and_same_reason_refusals_add_keys() {
        let tally = Tally::of(&[
            (1, no(AbortReason::Conflict, &["a1"])),
            (2, no(AbortReason::Locked, &["b1"])),
            (3, no(AbortReason::Conflict, &["c1", "c2"])),
        ]);
        assert!(!tally.commit);
        let abort = tally.abort.expect("refused");
        assert_eq!(abort.reason, AbortReason::Conflict);
        assert_eq!(
            abort.keys,
            vec![b"a1".to_vec(), b"c1".to_vec(), b"c2".to_vec()]
        );
        assert_eq!(abort.message, "Conflict");
    }

    #[test]
    fn mixed_votes_yes_and_no_abort_with_the_refusal() {
        let r = req(&[], &["a1", "b1"]);
        let p = two_phase(&r);
        let tally = Tally::of(&[
            (
                1,
                Ok(Vote::Yes {
                    version: 3,
                    owner: true,
                }),
            ),
            (2, no(AbortReason::Locked, &["b1"])),
        ]);
        assert!(!tally.commit);
        assert_eq!(
            tally.clone().outcome(txn(), &p, false),
            CommitOutcome::Aborted(tally.abort.clone().expect("refused"))
        );
    }

    #[test]
    fn a_lingering_record_is_forgotten_only_when_every_participant_answers_not_prepared() {
        let t = txn();
        let previous: std::collections::BTreeSet<TxnId> = [t].into();
        assert!(lingering(&previous, &t));
        assert!(!lingering(&Default::default(), &t), "first seen: not yet");
        assert!(record_done([Some(false), Some(false)]));
        assert!(
            record_done([]),
            "a presumed-abort record names no participant"
        );
        assert!(
            !record_done([Some(false), Some(true)]),
            "still prepared somewhere"
        );
        assert!(
            !record_done([Some(false), None]),
            "a participant did not answer"
        );
    }

    #[test]
    fn a_participant_whose_keys_moved_aborts_the_attempt_saying_so() {
        let moved = Err(TxnError::Moved {
            group: 2,
            map_epoch: 3,
        });
        let tally = Tally::of(&[
            (
                1,
                Ok(Vote::Yes {
                    version: 5,
                    owner: true,
                }),
            ),
            (2, moved),
        ]);
        assert!(!tally.commit);
        let abort = tally.abort.expect("an abort");
        assert_eq!(abort.reason, AbortReason::SlotsMoved);
        assert!(
            abort.message.contains("no longer owns"),
            "{}",
            abort.message
        );
        assert!(
            abort.message.contains("retry the transaction"),
            "{}",
            abort.message
        );
    }

    #[test]
    fn an_unavailable_participant_aborts_unless_a_refusal_came_first() {
        let down = || Err(TxnError::Unavailable("gone".into()));
        let tally = Tally::of(&[
            (
                1,
                Ok(Vote::Yes {
                    version: 3,
                    owner: true,
                }),
            ),
            (2, down()),
        ]);
        assert!(!tally.commit);
        let abort = tally.abort.expect("unavailable");
        assert_eq!(abort.reason, AbortReason::ParticipantUnavailable);
        assert_eq!(
            abort.message,
            "group 2 could not prepare: unavailable: gone"
        );

        // A refusal before it keeps its reason ...
        let tally = Tally::of(&[(1, no(AbortReason::Conflict, &["a1"])), (2, down())]);
        assert_eq!(tally.abort.expect("refused").reason, AbortReason::Conflict);
        // ... and one after it adds nothing.
        let tally = Tally::of(&[(1, down()), (2, no(AbortReason::Conflict, &["b1"]))]);
        let abort = tally.abort.expect("unavailable");
        assert_eq!(abort.reason, AbortReason::ParticipantUnavailable);
        assert!(abort.keys.is_empty());
    }

    #[test]
    fn a_commit_decided_elsewhere_learns_the_missing_versions() {
        // We voted to abort (group 2 was down); another execution decided
        // COMMIT. Group 2's version is learned by finalizing it.
        let r = req(&[], &["a1", "b1", "c1"]);
        let p = two_phase(&r);
        let mut tally = Tally::of(&[
            (
                1,
                Ok(Vote::Yes {
                    version: 3,
                    owner: true,
                }),
            ),
            (2, Err(TxnError::Deadline("slow".into()))),
            (
                3,
                Ok(Vote::Finalized {
                    commit: true,
                    version: 9,
                }),
            ),
        ]);
        assert!(!tally.commit);
        assert!(tally.to_learn(false, &p.participants()).is_empty());
        assert_eq!(tally.to_learn(true, &p.participants()), vec![2]);
        tally.learned(2, 4);
        assert_eq!(
            tally.outcome(txn(), &p, true),
            CommitOutcome::Committed {
                written: vec![
                    (b"a1".to_vec(), 3),
                    (b"b1".to_vec(), 4),
                    (b"c1".to_vec(), 9)
                ]
            }
        );
    }

    #[test]
    fn a_version_never_learned_is_answered_as_zero() {
        // The participant finalized but had no commit to report: the key
        // is answered at version 0 (as before this module existed).
        let r = req(&[], &["a1", "b1"]);
        let p = two_phase(&r);
        let tally = Tally::of(&[
            (
                1,
                Ok(Vote::Yes {
                    version: 3,
                    owner: true,
                }),
            ),
            (2, no(AbortReason::Locked, &[])),
        ]);
        assert_eq!(
            tally.outcome(txn(), &p, true),
            CommitOutcome::Committed {
                written: vec![(b"a1".to_vec(), 3), (b"b1".to_vec(), 0)]
            }
        );
    }

    #[test]
    fn the_anchors_answer_stands_and_a_lost_answer_is_outcome_unknown() {
        assert_eq!(decided(txn(), 1, Ok(false)), Ok(false));
        assert_eq!(decided(txn(), 1, Ok(true)), Ok(true));
        let lost = decided(txn(), 4, Err(TxnError::Unavailable("x".into())));
        assert!(matches!(
            lost,
            Err(TxnError::OutcomeUnknown { detail, .. }) if detail.contains("anchor group 4")
        ));
        assert!(matches!(
            unlearned(txn(), 2, &TxnError::Deadline("d".into())),
            TxnError::OutcomeUnknown { .. }
        ));
    }

    #[test]
    fn a_one_phase_commit_given_up_is_unknown_only_if_it_may_have_landed() {
        let unknown = |e| {
            matches!(
                unknown_if_ambiguous(txn(), e),
                TxnError::OutcomeUnknown { .. }
            )
        };
        assert!(unknown(TxnError::Unavailable("u".into())));
        assert!(unknown(TxnError::Deadline("d".into())));
        assert!(!unknown(TxnError::Invalid("i".into())));
        assert!(!unknown(TxnError::Internal("i".into())));
        let r = req(&[], &["a1", "a2"]);
        assert_eq!(
            one_phase_committed(&r.writes, 8),
            CommitOutcome::Committed {
                written: vec![(b"a1".to_vec(), 8), (b"a2".to_vec(), 8)]
            }
        );
    }

    #[test]
    fn read_only_commits_only_if_every_read_validated_and_every_hold_lasted() {
        let committed = Ok(CommitOutcome::Committed { written: vec![] });
        assert_eq!(
            read_only_outcome(vec![Ok(None), Ok(None)], &[Ok(true), Ok(true)]),
            committed
        );
        // A refusal aborts with its reason, even if a hold lapsed too.
        let refused = Abort {
            reason: AbortReason::Conflict,
            keys: vec![b"a".to_vec()],
            message: "m".into(),
        };
        assert_eq!(
            read_only_outcome(
                vec![Ok(None), Ok(Some(refused.clone()))],
                &[Ok(false), Ok(true)]
            ),
            Ok(CommitOutcome::Aborted(refused))
        );
        // A failed validation is the error.
        let err = TxnError::Unavailable("u".into());
        assert_eq!(
            read_only_outcome(vec![Err(err.clone()), Ok(None)], &[Ok(true), Ok(true)]),
            Err(err.clone())
        );
        // A lapsed hold or a failed release aborts as LOCKED.
        for released in [[Ok(true), Ok(false)], [Err(err.clone()), Ok(true)]] {
            let Ok(CommitOutcome::Aborted(abort)) =
                read_only_outcome(vec![Ok(None), Ok(None)], &released)
            else {
                panic!("aborted");
            };
            assert_eq!(abort.reason, AbortReason::Locked);
        }
    }

    #[test]
    fn status_prefers_the_record_then_any_commit_then_any_abort() {
        let l = |record, outcome| Lookup {
            record,
            outcome,
            prepared: None,
        };
        assert_eq!(state_of([]), TxnState::Unknown);
        assert_eq!(state_of([l(None, None), l(None, None)]), TxnState::Unknown);
        assert_eq!(
            state_of([l(None, Some(false)), l(None, Some(true))]),
            TxnState::Committed
        );
        assert_eq!(
            state_of([l(None, Some(true)), l(None, Some(false))]),
            TxnState::Committed
        );
        assert_eq!(state_of([l(None, Some(false))]), TxnState::Aborted);
        // The anchor's record wins over what a participant applied.
        assert_eq!(
            state_of([l(Some(false), None), l(None, Some(true))]),
            TxnState::Aborted
        );
        assert_eq!(
            state_of([l(None, Some(false)), l(Some(true), None)]),
            TxnState::Committed
        );
    }

    #[test]
    fn status_settles_only_what_is_prepared_with_nothing_known() {
        let known = |record, outcome| Lookup {
            record,
            outcome,
            prepared: None,
        };
        let prepared = Lookup {
            prepared: Some((2, vec![1, 2])),
            ..Lookup::default()
        };
        assert_eq!(
            status_step(vec![known(None, None), known(None, None)]),
            StatusStep::Known(TxnState::Unknown),
            "found nowhere: unknown, nothing to settle"
        );
        assert_eq!(
            status_step(vec![known(None, None), prepared.clone()]),
            StatusStep::Settle {
                anchor: 2,
                participants: vec![1, 2]
            }
        );
        // Anything decided or applied answers by itself, even with a
        // participant still prepared (its finalize is on its way).
        for decided in [
            known(Some(true), None),
            known(None, Some(true)),
            known(None, Some(false)),
        ] {
            let step = status_step(vec![prepared.clone(), decided.clone()]);
            assert_eq!(step, StatusStep::Known(state_of([decided])));
        }
    }

    #[test]
    fn resolution_finalizes_the_union_and_forgets_only_a_complete_set() {
        // A reader met one lock and the record names every participant.
        let r = Resolution::of(&[2], &[1, 2, 3]);
        assert_eq!(r.finalize, vec![1, 2, 3]);
        assert!(r.complete);
        // A reader met one lock; presumed abort names nobody: group 2 alone
        // may not be every participant, so the record stays.
        let r = Resolution::of(&[2], &[]);
        assert_eq!(r.finalize, vec![2]);
        assert!(!r.complete);
        // The sweeper knows the participants from the prepared entry.
        let r = Resolution::of(&[3, 1], &[]);
        assert_eq!(r.finalize, vec![1, 3]);
        assert!(r.complete);
    }

    fn job(id: u8, anchor: GroupId, participants: &[GroupId], commit: bool) -> FinalizeJob {
        FinalizeJob {
            txn: TxnId::from_bytes(&[id; 16]).expect("16 bytes"),
            anchor,
            participants: participants.to_vec(),
            commit,
            anchor_last: false,
        }
    }

    fn parallel(id: u8, anchor: GroupId, participants: &[GroupId]) -> FinalizeJob {
        FinalizeJob {
            anchor_last: true,
            ..job(id, anchor, participants, true)
        }
    }

    #[test]
    fn only_every_yes_with_the_anchors_own_commits_in_parallel() {
        let yes = |version, owner| Ok(Vote::Yes { version, owner });
        let all = Tally::of(&[(1, yes(3, true)), (2, yes(4, false))]);
        assert!(all.committed_in_parallel(1, &[1, 2]));
        assert!(
            !all.committed_in_parallel(2, &[1, 2]),
            "the anchor's prepared state was another execution's"
        );
        assert!(
            !all.committed_in_parallel(1, &[1, 2, 3]),
            "a participant that gave no vote"
        );
        let finalized = Tally::of(&[
            (1, yes(3, true)),
            (
                2,
                Ok(Vote::Finalized {
                    commit: true,
                    version: 9,
                }),
            ),
        ]);
        assert!(finalized.commit);
        assert!(
            !finalized.committed_in_parallel(1, &[1, 2]),
            "decided elsewhere: the anchor's record answers"
        );
        let refused = Tally::of(&[(1, yes(3, true)), (2, no(AbortReason::Conflict, &["b"]))]);
        assert!(!refused.committed_in_parallel(1, &[1, 2]));
        assert_eq!(refused.to_fence(&[1, 2]), vec![2]);
        let down = Tally::of(&[
            (1, Err(TxnError::Unavailable("down".into()))),
            (2, yes(4, true)),
        ]);
        assert_eq!(down.to_fence(&[1, 2]), vec![1]);
        assert_eq!(finalized.to_fence(&[1, 2]), Vec::<GroupId>::new());
    }

    #[test]
    fn a_fencer_commits_only_if_every_fenced_participant_had_prepared_or_committed() {
        let prepared = Fenced::Prepared { version: 4 };
        let aborted = Fenced::Finalized {
            commit: false,
            version: 0,
        };
        let committed = Fenced::Finalized {
            commit: true,
            version: 7,
        };
        assert!(fenced_commit(&[(2, prepared), (3, prepared)]));
        assert!(!fenced_commit(&[(2, prepared), (3, aborted)]));
        assert!(fenced_commit(&[(2, committed), (3, prepared)]));
        assert!(fenced_commit(&[]), "nothing to fence: all prepared");
    }

    #[test]
    fn a_parallel_commit_finalizes_its_anchor_last_and_forgets_nothing() {
        let jobs = [parallel(1, 1, &[1, 2, 3]), job(2, 2, &[1, 2], true)];
        let first = finalize_batches(&jobs);
        assert_eq!(first[&1], vec![(jobs[1].txn, true)], "anchor 1 waits");
        assert_eq!(first[&2], vec![(jobs[0].txn, true), (jobs[1].txn, true)]);
        assert_eq!(first[&3], vec![(jobs[0].txn, true)]);
        let all = BTreeMap::from([(1, true), (2, true), (3, true)]);
        assert_eq!(
            anchor_round(&jobs, &all),
            BTreeMap::from([(1, vec![(jobs[0].txn, true)])])
        );
        let three_failed = BTreeMap::from([(1, true), (2, true), (3, false)]);
        assert!(
            anchor_round(&jobs, &three_failed).is_empty(),
            "left prepared at its anchor for the sweeper"
        );
        assert_eq!(
            forgettable(&jobs, &all),
            BTreeMap::from([(2, vec![jobs[1].txn])]),
            "no record to forget for the parallel commit"
        );
    }

    #[test]
    fn a_batch_finalizes_once_per_group_in_batch_order() {
        let jobs = [job(1, 1, &[1, 2], true), job(2, 2, &[2, 3], false)];
        let batches = finalize_batches(&jobs);
        assert_eq!(batches.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(batches[&1], vec![(jobs[0].txn, true)]);
        assert_eq!(batches[&2], vec![(jobs[0].txn, true), (jobs[1].txn, false)]);
        assert_eq!(batches[&3], vec![(jobs[1].txn, false)]);
    }

    #[test]
    fn a_record_is_forgotten_only_once_every_participant_finalized() {
        let jobs = [
            job(1, 1, &[1, 2], true),
            job(2, 2, &[2, 3], false),
            job(3, 1, &[1, 2], false),
        ];
        // Group 3 failed (and group 4 was never asked): only the jobs
        // within groups 1 and 2 are forgotten, at their anchor.
        let finalized = BTreeMap::from([(1, true), (2, true), (3, false)]);
        let forget = forgettable(&jobs, &finalized);
        assert_eq!(
            forget,
            BTreeMap::from([(1, vec![jobs[0].txn, jobs[2].txn])])
        );
        let unasked = [job(4, 1, &[1, 4], true)];
        assert!(forgettable(&unasked, &finalized).is_empty());
    }
}
