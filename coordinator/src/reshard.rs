//! Resharding decisions, pure: which slots move where (the planner) and
//! what a job does next (the job machine). DESIGN.md §8.
//!
//! # The planner
//!
//! - [`plan_rebalance`]: the moves that bring the map to the ring's
//!   assignment over the given groups ([`assign_slots`]). From the ring's
//!   own assignment over N groups, adding an (N+1)-th moves about 1/N+1
//!   of the slots, all to the new group. A map that manual moves took away
//!   from the ring moves back to it.
//! - [`plan_move`]: chosen slots from one group to another.
//! - [`plan_drain`]: every slot of one group, each to the group the ring
//!   over the others would give it.
//! - [`check_remove`]: a group may be forgotten only once it owns nothing.
//!
//! Each refuses bad input with a [`PlanError`] that says what to do, and
//! changes nothing. Moves are cut into [`Batch`]es of at most
//! [`SLOTS_PER_BATCH`] slots between one pair of groups; a batch is the
//! unit of cutover.
//!
//! # The job machine
//!
//! A [`Job`] runs its batches one after another. For each batch the driver
//! asks [`Job::next`] what to do, does it (RPCs to the two groups, a
//! catalog compare-and-set), and reports the result with [`Job::done`]
//! (a step that did not complete is not reported: the driver errs out of
//! its pass or asks [`Job::next`] again):
//!
//! ```text
//! Import → CopyBase → CatchUp ⇄ (Freeze → Drain → Flip) → Release → next batch
//! ```
//!
//! - `CatchUp` repeats until the delta left is under [`CUTOVER_DELTA_MAX`]
//!   keys, so the frozen part is short.
//! - `Drain` waits for the prepared transactions on the frozen slots to be
//!   decided; past [`FREEZE_MAX`] the source thaws and the batch goes back
//!   to `CatchUp` (at most [`FREEZE_ATTEMPTS_MAX`] times, then the job
//!   pauses with the reason). The write pause is therefore bounded by
//!   `FREEZE_MAX` plus one flip.
//! - `Flip` is the catalog compare-and-set of the map to `epoch + 1`; once
//!   it is stored the batch has moved, whatever happens next.
//! - Pause and cancel take effect at safe points: a frozen source is thawed
//!   first; a cancel before the flip abandons the target's import; a batch
//!   already flipped stays moved.
//!
//! # What this module never does
//!
//! - No IO, no clock (`now` is passed in), no randomness.
//! - It never flips a batch that is not frozen and drained.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use trellis_types::placement::assign_slots;
use trellis_types::{GroupId, SLOTS, Slot, SlotSet};

/// Most slots cut over at once. Smaller batches make shorter pauses (less
/// to drain and copy while frozen) and more map epochs.
pub const SLOTS_PER_BATCH: u32 = 64;
/// Most keys changed since the last copy that the cutover copies while
/// the slots are frozen; more and the job catches up once more first.
pub const CUTOVER_DELTA_MAX: u64 = 1_000;
/// Longest a batch stays frozen waiting for prepared transactions to be
/// decided before the source thaws and the batch tries again later.
pub const FREEZE_MAX: Duration = Duration::from_millis(200);
/// Thawed cutovers of one batch after which the job pauses and says why.
pub const FREEZE_ATTEMPTS_MAX: u32 = 5;

/// Why a plan was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("group {0} is not in the catalog (`trellis admin add-group --group {0}` adds it)")]
    UnknownGroup(GroupId),
    #[error("slots cannot move from group {0} to itself")]
    SameGroup(GroupId),
    #[error("slot {slot} is owned by group {owner}, not {from}")]
    NotOwned {
        slot: Slot,
        owner: GroupId,
        from: GroupId,
    },
    #[error("group {group} is the only group; add another before draining it")]
    LastGroup { group: GroupId },
    #[error(
        "group {group} still owns {slots} slots; drain it first (`trellis admin drain-group --group {group}`)"
    )]
    StillOwns { group: GroupId, slots: u32 },
    #[error("slot {slot} is already moving in job {job}; wait for it, or cancel it")]
    Overlaps { slot: Slot, job: u64 },
}

/// A set of slots that moves from one group to another in one cutover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub from: GroupId,
    pub to: GroupId,
    pub slots: SlotSet,
}

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} slots from group {} to group {}",
            self.slots.len(),
            self.from,
            self.to
        )
    }
}

fn check_known(groups: &[GroupId], group: GroupId) -> Result<(), PlanError> {
    if groups.contains(&group) {
        Ok(())
    } else {
        Err(PlanError::UnknownGroup(group))
    }
}

/// Cuts `(slot, from, to)` moves into batches: by pair of groups, in slot
/// order, at most [`SLOTS_PER_BATCH`] each.
fn batches(moves: impl IntoIterator<Item = (Slot, GroupId, GroupId)>) -> Vec<Batch> {
    let mut by_pair: BTreeMap<(GroupId, GroupId), Vec<Slot>> = BTreeMap::new();
    for (slot, from, to) in moves {
        by_pair.entry((from, to)).or_default().push(slot);
    }
    let mut out = Vec::new();
    for ((from, to), slots) in by_pair {
        for chunk in slots.chunks(SLOTS_PER_BATCH as usize) {
            let mut set = SlotSet::empty();
            chunk.iter().for_each(|s| set.insert(*s));
            out.push(Batch {
                from,
                to,
                slots: set,
            });
        }
    }
    out
}

/// The batches that bring `current` (`current[s]` owns slot `s`) to the
/// ring's assignment over `groups`. Empty when it is there already.
pub fn plan_rebalance(current: &[GroupId], groups: &[GroupId]) -> Result<Vec<Batch>, PlanError> {
    for owner in current {
        check_known(groups, *owner)?;
    }
    let target = assign_slots(groups);
    Ok(batches((0..SLOTS).filter_map(|s| {
        let (from, to) = (current[s as usize], target[s as usize]);
        (from != to).then_some((s, from, to))
    })))
}

/// The batches that move `slots` from `from` to `to`.
pub fn plan_move(
    current: &[GroupId],
    groups: &[GroupId],
    from: GroupId,
    to: GroupId,
    slots: &SlotSet,
) -> Result<Vec<Batch>, PlanError> {
    check_known(groups, from)?;
    check_known(groups, to)?;
    if from == to {
        return Err(PlanError::SameGroup(from));
    }
    let mut moves = Vec::new();
    for slot in (0..SLOTS).filter(|s| slots.contains(*s)) {
        let owner = current[slot as usize];
        if owner != from {
            return Err(PlanError::NotOwned { slot, owner, from });
        }
        moves.push((slot, from, to));
    }
    Ok(batches(moves))
}

/// The batches that move every slot off `group`, each to the group the
/// ring over the remaining groups gives it.
pub fn plan_drain(
    current: &[GroupId],
    groups: &[GroupId],
    group: GroupId,
) -> Result<Vec<Batch>, PlanError> {
    check_known(groups, group)?;
    let rest: Vec<GroupId> = groups.iter().copied().filter(|g| *g != group).collect();
    if rest.is_empty() {
        return Err(PlanError::LastGroup { group });
    }
    let target = assign_slots(&rest);
    Ok(batches(
        (0..SLOTS)
            .filter(|s| current[*s as usize] == group)
            .map(|s| (s, group, target[s as usize])),
    ))
}

/// Whether `group` may be forgotten: only once it owns no slot.
pub fn check_remove(
    current: &[GroupId],
    groups: &[GroupId],
    group: GroupId,
) -> Result<(), PlanError> {
    check_known(groups, group)?;
    let slots = current.iter().filter(|g| **g == group).count() as u32;
    if slots > 0 {
        return Err(PlanError::StillOwns { group, slots });
    }
    Ok(())
}

/// Refuses `batches` if any of their slots is in a batch of a job still
/// running (`active`: job id and its batches not yet flipped).
pub fn check_overlap(batches: &[Batch], active: &[(u64, Vec<Batch>)]) -> Result<(), PlanError> {
    for (job, theirs) in active {
        for batch in theirs {
            if let Some(slot) = (0..SLOTS)
                .find(|s| batch.slots.contains(*s) && batches.iter().any(|b| b.slots.contains(*s)))
            {
                return Err(PlanError::Overlaps { slot, job: *job });
            }
        }
    }
    Ok(())
}

/// The fewest and most slots a group owns, over `groups`: how even a map is.
pub fn spread(current: &[GroupId], groups: &[GroupId]) -> (u32, u32) {
    let counts: Vec<u32> = groups
        .iter()
        .map(|g| current.iter().filter(|o| *o == g).count() as u32)
        .collect();
    (
        counts.iter().copied().min().unwrap_or(0),
        counts.iter().copied().max().unwrap_or(0),
    )
}

/// Where the current batch of a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The target starts importing the batch's slots.
    Import,
    /// Copy every entry of the slots as of a version the source picks.
    CopyBase,
    /// Copy what changed above the last copied version.
    CatchUp,
    /// The source stops serving the slots.
    Freeze,
    /// The source is frozen: wait for prepared transactions on the slots
    /// to be decided, then copy the last delta.
    Drain,
    /// Store the map with the slots on the target at `epoch + 1`.
    Flip,
    /// The source deletes the slots' data; the target serves them.
    Release,
}

/// Whether a job runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    Running,
    /// Stopped at a safe point by the operator, or by the job itself with
    /// the reason.
    Paused {
        reason: Option<String>,
    },
    Cancelled,
    Done,
}

/// What an operator asked a running job to do, applied at a safe point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Pause,
    Cancel,
}

/// One thing the driver does next, for the current batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    BeginImport,
    CopyBase,
    /// Copy changes above the version copied so far.
    CopyDelta {
        above: u64,
    },
    Freeze,
    /// Wait for the drain and copy the last delta above `above`; past
    /// `deadline_ms` [`Job::next`] says `Thaw` instead.
    Drain {
        above: u64,
        deadline_ms: u64,
    },
    Flip,
    Release,
    /// Serve the frozen slots again (pause, cancel, drain too slow).
    Thaw,
    /// Drop what the target copied (cancel before the flip).
    AbandonImport,
}

/// What the driver reports after an action succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Done {
    /// Import begun, source frozen, flip stored, slots released, thawed,
    /// import abandoned.
    Ok,
    /// A copy finished: everything up to `version` is at the target; it
    /// moved `keys` keys of `bytes` bytes; `behind` keys changed since.
    Copied {
        version: u64,
        keys: u64,
        bytes: u64,
        behind: u64,
    },
}

/// What a group's replicas said about the transactions it still holds,
/// asked before the group is forgotten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holdings {
    /// The group never had a registered replica: it holds nothing.
    NoMembers,
    /// Its primary answered: transaction records it anchors (decided, not
    /// yet forgotten) and transactions prepared on it.
    Primary { records: u64, prepared: u64 },
    /// Members are registered but no primary answered.
    NoAnswer,
}

/// Why a group that owns no slots may not be forgotten yet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RemoveRefused {
    #[error(
        "group {group} still holds {records} transaction record(s) it anchors and {prepared} prepared transaction(s); a resolver may still ask for them. Retry once `trellis status` shows its in-doubt count at 0 (the sweeper and the finalizer clear them within seconds)"
    )]
    HoldsTransactions {
        group: GroupId,
        records: u64,
        prepared: u64,
    },
    #[error(
        "cannot check that group {group} holds no transaction records: no primary of it answered; start one of its replicas and retry"
    )]
    Unreachable { group: GroupId },
}

/// Whether a group that owns no slots may be forgotten, given what its
/// replicas said ([`Holdings`]). Presumed abort makes a forgotten record
/// answer ABORT: forgetting a group that anchors a committed transaction
/// some participant has not finalized would make that participant abort
/// it, so a group is forgotten only once it anchors and holds nothing.
pub fn check_drained(group: GroupId, holdings: Holdings) -> Result<(), RemoveRefused> {
    match holdings {
        Holdings::NoMembers => Ok(()),
        Holdings::Primary {
            records: 0,
            prepared: 0,
        } => Ok(()),
        Holdings::Primary { records, prepared } => Err(RemoveRefused::HoldsTransactions {
            group,
            records,
            prepared,
        }),
        Holdings::NoAnswer => Err(RemoveRefused::Unreachable { group }),
    }
}

/// Why the job machine refused a request or a report. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("job {job}: {action:?} reported {reported:?}, but the job is at {phase:?}")]
    Unexpected {
        job: u64,
        action: Action,
        phase: Phase,
        reported: Done,
    },
    #[error("job {job} is {state}; it cannot be {what}")]
    NotPossible {
        job: u64,
        state: &'static str,
        what: &'static str,
    },
}

/// A resharding job: its batches and where it stands. The driver stores it
/// in the catalog after every change, so a restarted coordinator resumes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub id: u64,
    pub batches: Vec<Batch>,
    /// Index of the batch in progress (`batches.len()` when all moved).
    pub batch: usize,
    pub phase: Phase,
    pub control: Control,
    /// A pause or cancel waiting for a safe point.
    pub stop: Option<Stop>,
    /// Version copied so far for the current batch.
    pub copied_version: u64,
    /// Keys changed at the source since the last copy.
    pub behind: u64,
    /// When the current freeze began (ms), while frozen.
    pub frozen_at_ms: Option<u64>,
    /// Thawed cutovers of the current batch.
    pub freeze_attempts: u32,
    /// Totals over the whole job.
    pub keys_copied: u64,
    pub bytes_copied: u64,
}

impl Job {
    pub fn new(id: u64, batches: Vec<Batch>) -> Job {
        let control = if batches.is_empty() {
            Control::Done
        } else {
            Control::Running
        };
        Job {
            id,
            batches,
            batch: 0,
            phase: Phase::Import,
            control,
            stop: None,
            copied_version: 0,
            behind: 0,
            frozen_at_ms: None,
            freeze_attempts: 0,
            keys_copied: 0,
            bytes_copied: 0,
        }
    }

    /// The batch in progress.
    pub fn current(&self) -> Option<&Batch> {
        self.batches.get(self.batch)
    }

    /// Slots moved so far, and in all.
    pub fn slots_progress(&self) -> (u32, u32) {
        let done = self.batches[..self.batch.min(self.batches.len())]
            .iter()
            .map(|b| b.slots.len())
            .sum();
        (done, self.batches.iter().map(|b| b.slots.len()).sum())
    }

    /// The batches not yet handed over (for [`check_overlap`]).
    pub fn pending(&self) -> &[Batch] {
        match self.control {
            Control::Done | Control::Cancelled => &[],
            _ => &self.batches[self.batch.min(self.batches.len())..],
        }
    }

    fn state_name(&self) -> &'static str {
        match self.control {
            Control::Running => "running",
            Control::Paused { .. } => "paused",
            Control::Cancelled => "cancelled",
            Control::Done => "done",
        }
    }

    /// Whether the current batch's source is frozen by this job and its
    /// flip is not stored yet: the write pause is running. A driver never
    /// leaves a job there by choice (a step budget, a long backoff).
    pub fn frozen(&self) -> bool {
        matches!(self.phase, Phase::Drain | Phase::Flip)
    }

    /// Whether the target may hold copied data of the current batch.
    fn importing(&self) -> bool {
        self.phase != Phase::Import
    }

    /// What the driver does next at `now_ms`; `None` when nothing is to be
    /// done (paused, cancelled or done).
    pub fn next(&self, now_ms: u64) -> Option<Action> {
        if self.control != Control::Running {
            return None;
        }
        let deadline_ms = self
            .frozen_at_ms
            .map(|at| at + FREEZE_MAX.as_millis() as u64);
        match (self.phase, self.stop) {
            // Once the flip may be stored, the batch finishes whatever was asked.
            (Phase::Flip, _) => Some(Action::Flip),
            (Phase::Release, _) => Some(Action::Release),
            (Phase::Drain, Some(_)) => Some(Action::Thaw),
            (Phase::Drain, None) => match deadline_ms {
                Some(deadline_ms) if now_ms < deadline_ms => Some(Action::Drain {
                    above: self.copied_version,
                    deadline_ms,
                }),
                _ => Some(Action::Thaw),
            },
            (_, Some(Stop::Cancel)) => Some(Action::AbandonImport),
            (Phase::Import, None) => Some(Action::BeginImport),
            (Phase::CopyBase, None) => Some(Action::CopyBase),
            (Phase::CatchUp, None) => Some(Action::CopyDelta {
                above: self.copied_version,
            }),
            (Phase::Freeze, None) => Some(Action::Freeze),
            // A pause not yet applied: `apply_stop` makes it take effect.
            (_, Some(Stop::Pause)) => None,
        }
    }

    /// Asks a running or paused job to pause or cancel. It takes effect at
    /// once where it is safe, else at the next safe point: a frozen source
    /// is thawed first, and a batch whose flip may be stored finishes.
    pub fn request(&mut self, stop: Stop) -> Result<(), JobError> {
        let refuse = |job: &Job, what| JobError::NotPossible {
            job: job.id,
            state: job.state_name(),
            what,
        };
        match (&self.control, stop) {
            (Control::Done | Control::Cancelled, Stop::Pause) => {
                return Err(refuse(self, "paused"));
            }
            (Control::Done | Control::Cancelled, Stop::Cancel) => {
                return Err(refuse(self, "cancelled"));
            }
            (Control::Paused { .. }, Stop::Pause) => return Ok(()),
            (Control::Paused { .. }, Stop::Cancel) => self.control = Control::Running,
            (Control::Running, _) => {}
        }
        self.stop = Some(stop);
        self.apply_stop();
        Ok(())
    }

    /// Resumes a paused job (a pause asked but not yet applied is dropped).
    pub fn resume(&mut self) -> Result<(), JobError> {
        match self.control {
            Control::Paused { .. } | Control::Running if self.stop != Some(Stop::Cancel) => {
                self.control = Control::Running;
                self.stop = None;
                self.freeze_attempts = 0;
                Ok(())
            }
            _ => Err(JobError::NotPossible {
                job: self.id,
                state: if self.stop == Some(Stop::Cancel) {
                    "being cancelled"
                } else {
                    self.state_name()
                },
                what: "resumed",
            }),
        }
    }

    /// Applies a requested stop if the job is at a safe point for it.
    fn apply_stop(&mut self) {
        if self.control != Control::Running
            || matches!(self.phase, Phase::Drain | Phase::Flip | Phase::Release)
        {
            return;
        }
        match self.stop {
            Some(Stop::Pause) => {
                self.control = Control::Paused { reason: None };
                self.stop = None;
            }
            Some(Stop::Cancel) if !self.importing() => {
                self.control = Control::Cancelled;
                self.stop = None;
            }
            // A cancel with an import begun: `next` says AbandonImport.
            _ => {}
        }
    }

    /// Reports that `action` (from [`Job::next`]) succeeded with `done`.
    pub fn done(&mut self, action: &Action, now_ms: u64, done: Done) -> Result<(), JobError> {
        let unexpected = JobError::Unexpected {
            job: self.id,
            action: action.clone(),
            phase: self.phase,
            reported: done,
        };
        if self.control != Control::Running {
            return Err(unexpected);
        }
        match (action, self.phase, done) {
            (Action::BeginImport, Phase::Import, Done::Ok) => self.phase = Phase::CopyBase,
            (
                Action::CopyBase | Action::CopyDelta { .. },
                Phase::CopyBase | Phase::CatchUp,
                Done::Copied {
                    version,
                    keys,
                    bytes,
                    behind,
                },
            ) => {
                self.count_copy(version, keys, bytes);
                self.behind = behind;
                self.phase = if behind <= CUTOVER_DELTA_MAX {
                    Phase::Freeze
                } else {
                    Phase::CatchUp
                };
            }
            (Action::Freeze, Phase::Freeze, Done::Ok) => {
                self.frozen_at_ms = Some(now_ms);
                self.phase = Phase::Drain;
            }
            // Drained and the last delta copied while frozen: nothing can change.
            (
                Action::Drain { .. },
                Phase::Drain,
                Done::Copied {
                    version,
                    keys,
                    bytes,
                    ..
                },
            ) => {
                self.count_copy(version, keys, bytes);
                self.behind = 0;
                self.phase = Phase::Flip;
            }
            (Action::Thaw, Phase::Drain, Done::Ok) => {
                self.frozen_at_ms = None;
                self.phase = Phase::CatchUp;
                if self.stop.is_none() {
                    // The drain was too slow: try again later, or give up.
                    self.freeze_attempts += 1;
                    if self.freeze_attempts >= FREEZE_ATTEMPTS_MAX {
                        self.control = Control::Paused {
                            reason: Some(format!(
                                "prepared transactions on {} did not drain within {FREEZE_MAX:?}, {FREEZE_ATTEMPTS_MAX} times; resume to try again",
                                self.batches[self.batch]
                            )),
                        };
                    }
                }
            }
            (Action::Flip, Phase::Flip, Done::Ok) => {
                self.frozen_at_ms = None;
                self.phase = Phase::Release;
            }
            (Action::Release, Phase::Release, Done::Ok) => {
                self.batch += 1;
                self.phase = Phase::Import;
                self.copied_version = 0;
                self.behind = 0;
                self.freeze_attempts = 0;
                if self.batch == self.batches.len() {
                    self.control = Control::Done;
                    self.stop = None;
                }
            }
            (Action::AbandonImport, _, Done::Ok) if self.stop == Some(Stop::Cancel) => {
                self.phase = Phase::Import;
                self.copied_version = 0;
            }
            _ => return Err(unexpected),
        }
        self.apply_stop();
        Ok(())
    }

    fn count_copy(&mut self, version: u64, keys: u64, bytes: u64) {
        self.copied_version = self.copied_version.max(version);
        self.keys_copied += keys;
        self.bytes_copied += bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_forgotten_only_once_it_anchors_and_holds_nothing() {
        assert_eq!(check_drained(4, Holdings::NoMembers), Ok(()));
        assert_eq!(
            check_drained(
                4,
                Holdings::Primary {
                    records: 0,
                    prepared: 0
                }
            ),
            Ok(())
        );
        let refused = check_drained(
            4,
            Holdings::Primary {
                records: 2,
                prepared: 0,
            },
        )
        .expect_err("records left");
        assert!(
            refused.to_string().contains("2 transaction record(s)"),
            "{refused}"
        );
        assert!(matches!(
            check_drained(
                4,
                Holdings::Primary {
                    records: 0,
                    prepared: 1
                }
            ),
            Err(RemoveRefused::HoldsTransactions { prepared: 1, .. })
        ));
        assert_eq!(
            check_drained(4, Holdings::NoAnswer),
            Err(RemoveRefused::Unreachable { group: 4 })
        );
    }

    fn set(text: &str) -> SlotSet {
        SlotSet::parse(text).expect("slots")
    }

    fn copied(version: u64, behind: u64) -> Done {
        Done::Copied {
            version,
            keys: 10,
            bytes: 1000,
            behind,
        }
    }

    /// A job moving slot 0 from group 1 to group 2.
    fn one_slot_job(id: u64) -> Job {
        Job::new(
            id,
            vec![Batch {
                from: 1,
                to: 2,
                slots: set("0"),
            }],
        )
    }

    /// Takes a new job's batch to frozen (import, copy base up to version
    /// 5, freeze at 0 ms).
    fn freeze(job: &mut Job) {
        job.done(&Action::BeginImport, 0, Done::Ok).expect("import");
        job.done(&Action::CopyBase, 0, copied(5, 0)).expect("base");
        job.done(&Action::Freeze, 0, Done::Ok).expect("freeze");
    }

    /// Runs `job` until it asks nothing, answering every action with
    /// success and a quiet source; returns the actions asked.
    fn run(job: &mut Job, now_ms: u64) -> Vec<Action> {
        let mut asked = Vec::new();
        while let Some(action) = job.next(now_ms) {
            let done = match action {
                Action::CopyBase | Action::CopyDelta { .. } | Action::Drain { .. } => {
                    copied(100, 0)
                }
                _ => Done::Ok,
            };
            job.done(&action, now_ms, done).expect("report");
            asked.push(action);
            assert!(asked.len() < 10_000, "job does not end");
        }
        asked
    }

    #[test]
    fn rebalance_onto_a_new_group_moves_about_one_nth_all_to_it() {
        let before = assign_slots(&[1, 2, 3]);
        let batches = plan_rebalance(&before, &[1, 2, 3, 4]).expect("plan");
        let moved: u32 = batches.iter().map(|b| b.slots.len()).sum();
        assert!(batches.iter().all(|b| b.to == 4 && b.from != 4));
        assert!(batches.iter().all(|b| b.slots.len() <= SLOTS_PER_BATCH));
        let share = SLOTS / 4;
        assert!(
            moved > share * 6 / 10 && moved < share * 14 / 10,
            "moved {moved}, share {share}"
        );
        assert!(
            plan_rebalance(&assign_slots(&[1, 2]), &[1, 2])
                .expect("plan")
                .is_empty()
        );
        assert_eq!(
            plan_rebalance(&before, &[1, 2]),
            Err(PlanError::UnknownGroup(3)),
            "a map naming a group the list lacks"
        );
    }

    #[test]
    fn move_checks_groups_and_ownership() {
        let map = assign_slots(&[1, 2]);
        let owner0 = map[0];
        let other = if owner0 == 1 { 2 } else { 1 };
        let groups = [1, 2, 3];
        let batches = plan_move(&map, &groups, owner0, 3, &set("0")).expect("plan");
        assert_eq!(
            batches,
            vec![Batch {
                from: owner0,
                to: 3,
                slots: set("0")
            }]
        );
        assert_eq!(
            plan_move(&map, &groups, other, 3, &set("0")),
            Err(PlanError::NotOwned {
                slot: 0,
                owner: owner0,
                from: other
            })
        );
        assert_eq!(
            plan_move(&map, &groups, 1, 1, &set("0")),
            Err(PlanError::SameGroup(1))
        );
        assert_eq!(
            plan_move(&map, &groups, 1, 9, &set("0")),
            Err(PlanError::UnknownGroup(9))
        );
        let mine = SlotSet::parse(
            &(0..SLOTS)
                .filter(|s| map[*s as usize] == 1)
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(","),
        )
        .expect("slots");
        let batches = plan_move(&map, &groups, 1, 2, &mine).expect("plan");
        assert_eq!(batches.len() as u32, mine.len().div_ceil(SLOTS_PER_BATCH));
    }

    #[test]
    fn drain_empties_a_group_onto_the_others_and_then_it_may_go() {
        let map = assign_slots(&[1, 2, 3]);
        assert!(matches!(
            check_remove(&map, &[1, 2, 3], 2),
            Err(PlanError::StillOwns { group: 2, .. })
        ));
        let batches = plan_drain(&map, &[1, 2, 3], 2).expect("plan");
        let mut after = map.clone();
        for b in &batches {
            assert_eq!(b.from, 2);
            assert_ne!(b.to, 2);
            for s in (0..SLOTS).filter(|s| b.slots.contains(*s)) {
                after[s as usize] = b.to;
            }
        }
        assert_eq!(after, assign_slots(&[1, 3]), "the ring over the rest");
        assert_eq!(check_remove(&after, &[1, 2, 3], 2), Ok(()));
        assert_eq!(
            plan_drain(&assign_slots(&[5]), &[5], 5),
            Err(PlanError::LastGroup { group: 5 })
        );
        assert_eq!(
            check_remove(&after, &[1, 3], 2),
            Err(PlanError::UnknownGroup(2))
        );
    }

    #[test]
    fn overlapping_jobs_are_refused() {
        let running = vec![(
            7,
            vec![Batch {
                from: 1,
                to: 2,
                slots: set("10-20"),
            }],
        )];
        let mine = [Batch {
            from: 3,
            to: 2,
            slots: set("20-30"),
        }];
        assert_eq!(
            check_overlap(&mine, &running),
            Err(PlanError::Overlaps { slot: 20, job: 7 })
        );
        let apart = [Batch {
            from: 3,
            to: 2,
            slots: set("21-30"),
        }];
        assert_eq!(check_overlap(&apart, &running), Ok(()));
    }

    #[test]
    fn spread_reports_fewest_and_most() {
        let map = assign_slots(&[1, 2, 3, 4]);
        let (min, max) = spread(&map, &[1, 2, 3, 4]);
        assert!(min > 0 && min <= SLOTS / 4 && max >= SLOTS / 4);
        assert_eq!(spread(&map, &[1, 2, 3, 4, 5]).0, 0, "an empty new group");
    }

    #[test]
    fn a_job_walks_every_batch_through_every_phase_in_order() {
        let batches = vec![
            Batch {
                from: 1,
                to: 2,
                slots: set("0-9"),
            },
            Batch {
                from: 3,
                to: 2,
                slots: set("10"),
            },
        ];
        let mut job = Job::new(1, batches);
        let asked = run(&mut job, 0);
        let one = vec![
            Action::BeginImport,
            Action::CopyBase,
            Action::Freeze,
            Action::Drain {
                above: 100,
                deadline_ms: FREEZE_MAX.as_millis() as u64,
            },
            Action::Flip,
            Action::Release,
        ];
        assert_eq!(asked, [one.clone(), one].concat());
        assert_eq!(job.control, Control::Done);
        assert_eq!(job.slots_progress(), (11, 11));
        assert_eq!((job.keys_copied, job.bytes_copied), (40, 4000));
        assert!(job.pending().is_empty());
        assert_eq!(
            Job::new(2, vec![]).control,
            Control::Done,
            "nothing to move"
        );
    }

    /// The pause runs from the stored freeze to the stored flip: exactly
    /// the steps a driver must not leave a job at.
    #[test]
    fn a_job_is_frozen_from_its_freeze_to_its_flip_only() {
        let mut job = one_slot_job(1);
        let mut frozen = Vec::new();
        while let Some(action) = job.next(0) {
            frozen.push((action.clone(), job.frozen()));
            let done = match action {
                Action::CopyBase | Action::CopyDelta { .. } | Action::Drain { .. } => {
                    copied(100, 0)
                }
                _ => Done::Ok,
            };
            job.done(&action, 0, done).expect("report");
        }
        let frozen_at: Vec<bool> = frozen.iter().map(|(_, f)| *f).collect();
        assert_eq!(
            frozen_at,
            [false, false, false, true, true, false],
            "{frozen:?}"
        );
        assert!(!job.frozen(), "done");

        // A thawed drain is no longer frozen.
        let mut job = one_slot_job(2);
        freeze(&mut job);
        assert!(job.frozen());
        let deadline = FREEZE_MAX.as_millis() as u64;
        assert_eq!(job.next(deadline), Some(Action::Thaw));
        job.done(&Action::Thaw, deadline, Done::Ok).expect("thaw");
        assert!(!job.frozen());
    }

    #[test]
    fn a_busy_source_is_caught_up_before_the_freeze() {
        let mut job = one_slot_job(1);
        job.done(&Action::BeginImport, 0, Done::Ok).expect("import");
        job.done(&Action::CopyBase, 0, copied(50, CUTOVER_DELTA_MAX + 1))
            .expect("base");
        assert_eq!(job.next(0), Some(Action::CopyDelta { above: 50 }));
        job.done(
            &Action::CopyDelta { above: 50 },
            0,
            copied(40, CUTOVER_DELTA_MAX),
        )
        .expect("delta");
        assert_eq!(job.copied_version, 50, "the copied version never goes back");
        assert_eq!(job.next(0), Some(Action::Freeze));
    }

    #[test]
    fn a_slow_drain_thaws_and_retries_then_pauses_with_the_reason() {
        let mut job = one_slot_job(1);
        job.done(&Action::BeginImport, 0, Done::Ok).expect("import");
        job.done(&Action::CopyBase, 0, copied(5, 0)).expect("base");
        let mut now = 1_000;
        for attempt in 1..=FREEZE_ATTEMPTS_MAX {
            job.done(&Action::Freeze, now, Done::Ok).expect("freeze");
            let deadline_ms = now + FREEZE_MAX.as_millis() as u64;
            let above = if attempt == 1 { 5 } else { 6 };
            assert_eq!(job.next(now), Some(Action::Drain { above, deadline_ms }));
            assert_eq!(
                job.next(deadline_ms),
                Some(Action::Thaw),
                "the pause is bounded"
            );
            job.done(&Action::Thaw, deadline_ms, Done::Ok)
                .expect("thaw");
            assert_eq!(job.frozen_at_ms, None);
            if attempt < FREEZE_ATTEMPTS_MAX {
                let delta = Action::CopyDelta { above };
                assert_eq!(job.next(deadline_ms), Some(delta.clone()));
                job.done(&delta, now, copied(6, 0)).expect("delta");
            }
            now = deadline_ms + 1;
        }
        match &job.control {
            Control::Paused {
                reason: Some(reason),
            } => assert!(reason.contains("did not drain"), "{reason}"),
            other => panic!("expected a paused job, got {other:?}"),
        }
        assert_eq!(job.next(now), None);
        job.resume().expect("resume");
        assert_eq!(job.next(now), Some(Action::CopyDelta { above: 6 }));
    }

    #[test]
    fn pause_thaws_a_frozen_source_first_and_resume_goes_on() {
        let mut job = one_slot_job(1);
        freeze(&mut job);
        job.request(Stop::Pause).expect("pause");
        assert_eq!(
            job.control,
            Control::Running,
            "not yet: the source is frozen"
        );
        assert_eq!(job.next(0), Some(Action::Thaw));
        job.done(&Action::Thaw, 0, Done::Ok).expect("thaw");
        assert_eq!(job.control, Control::Paused { reason: None });
        assert_eq!(
            job.freeze_attempts, 0,
            "an asked pause is not a failed drain"
        );
        assert_eq!(job.next(0), None);
        job.resume().expect("resume");
        assert_eq!(
            run(&mut job, 0).first(),
            Some(&Action::CopyDelta { above: 5 })
        );
        assert_eq!(job.control, Control::Done);
    }

    #[test]
    fn cancel_abandons_the_import_but_never_undoes_a_flip() {
        // Before any import: cancelled at once.
        let mut job = one_slot_job(1);
        job.request(Stop::Cancel).expect("cancel");
        assert_eq!(job.control, Control::Cancelled);
        assert!(job.request(Stop::Pause).is_err());
        assert!(job.resume().is_err());

        // Frozen: thaw, then abandon the import.
        let mut job = one_slot_job(2);
        freeze(&mut job);
        job.request(Stop::Cancel).expect("cancel");
        assert_eq!(run(&mut job, 0), vec![Action::Thaw, Action::AbandonImport]);
        assert_eq!(job.control, Control::Cancelled);

        // Flipping: the batch finishes, the next one never starts.
        let two = vec![
            Batch {
                from: 1,
                to: 2,
                slots: set("0"),
            },
            Batch {
                from: 1,
                to: 2,
                slots: set("1"),
            },
        ];
        let mut job = Job::new(3, two);
        freeze(&mut job);
        job.done(
            &Action::Drain {
                above: 5,
                deadline_ms: 200,
            },
            0,
            copied(6, 0),
        )
        .expect("drain");
        job.request(Stop::Cancel).expect("cancel");
        assert_eq!(run(&mut job, 0), vec![Action::Flip, Action::Release]);
        assert_eq!(job.control, Control::Cancelled);
        assert_eq!(job.slots_progress(), (1, 2));

        // Paused, then cancelled: abandons the import it had begun.
        let mut job = one_slot_job(4);
        job.done(&Action::BeginImport, 0, Done::Ok).expect("import");
        job.request(Stop::Pause).expect("pause");
        job.request(Stop::Cancel).expect("cancel");
        assert!(job.resume().is_err(), "a cancel is not taken back");
        assert_eq!(run(&mut job, 0), vec![Action::AbandonImport]);
        assert_eq!(job.control, Control::Cancelled);
    }

    #[test]
    fn reports_out_of_order_are_refused_and_change_nothing() {
        let mut job = one_slot_job(1);
        let before = job.clone();
        assert!(matches!(
            job.done(&Action::Flip, 0, Done::Ok),
            Err(JobError::Unexpected { .. })
        ));
        assert!(
            job.done(&Action::CopyBase, 0, Done::Ok).is_err(),
            "a copy reports what it copied"
        );
        assert!(
            job.done(&Action::Thaw, 0, Done::Ok).is_err(),
            "nothing frozen"
        );
        assert_eq!(job, before);
    }
}
