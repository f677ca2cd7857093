//! Slot ownership on one replica: which slots the group serves under which
//! map epoch, and the two in-between states of a slot that is moving —
//! the rules of DESIGN.md §8 as a pure state machine.
//!
//! A slot is in one of four states on a group:
//!
//! | state | reads, commits | copied data accepted | how it is left |
//! |---|---|---|---|
//! | `NotOwned` | refused: wrong shard | no | `begin_import`, or the map gives it |
//! | `Importing { from }` | refused: not yet handed over | yes | the map hands it over (→ `Owned`), `abandon_import` |
//! | `Owned` | served | no | `freeze` |
//! | `Frozen { to }` | refused: moving, retry | no | the map takes it (→ `NotOwned`), `thaw` |
//!
//! The hand-over itself is a catalog compare-and-set of the slot map to
//! `map_epoch + 1`; each side learns it through [`Ownership::follow_map`].
//! A frozen slot refuses reads as well as writes: between the catalog's
//! flip and the source hearing of it, a read at the source could otherwise
//! miss a write the target already acknowledged. The pause this costs is
//! the freeze, which the job bounds.
//!
//! Only a frozen slot may leave and only an importing slot may arrive, once
//! a group has been handed a map by a job. `follow_map` still accepts the
//! map's word for other changes (a new cluster, an empty group given slots
//! at creation) and reports them apart, so the caller can log them loudly.
//!
//! # What this module never does
//!
//! - No IO, no clock, no locks: the engine holds it under its own lock,
//!   logs every transition before it is visible, and replays the same calls
//!   on recovery.
//! - It never lets the epoch go backwards.

use trellis_types::{GroupId, MapEpoch, SLOTS, Slot, SlotSet};

/// Where one slot stands on this group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// Another group serves it.
    NotOwned,
    /// Being copied here from `from`; served after the map hands it over.
    Importing { from: GroupId },
    /// Served here.
    Owned,
    /// Moving to `to`: writes and reads wait for the hand-over.
    Frozen { to: GroupId },
}

impl SlotState {
    fn name(self) -> &'static str {
        match self {
            SlotState::NotOwned => "not owned",
            SlotState::Importing { .. } => "importing",
            SlotState::Owned => "owned",
            SlotState::Frozen { .. } => "frozen",
        }
    }
}

/// What a request wants to do with a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads, scans, commits and prepares from clients.
    Serve,
    /// Data copied in by a resharding job.
    Ingest,
}

/// Why a request or a transition was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OwnershipError {
    /// The request was routed with a newer map than this group has seen:
    /// the group must learn it first (the router retries).
    #[error("routed with map epoch {got}, this group has only seen {map_epoch}")]
    StaleMap { got: MapEpoch, map_epoch: MapEpoch },
    /// Another group serves the slot.
    #[error("slot {slot} is not served by this group at map epoch {map_epoch}")]
    WrongShard { slot: Slot, map_epoch: MapEpoch },
    /// The slot is moving to `to`; the caller retries after the hand-over.
    #[error("slot {slot} is moving to group {to}; retry after the hand-over")]
    Moving { slot: Slot, to: GroupId },
    /// The slot is still being copied here from `from`.
    #[error("slot {slot} is being copied here from group {from} and is not served yet")]
    NotHandedOver { slot: Slot, from: GroupId },
    /// Copied data for a slot this group is not importing.
    #[error("slot {slot} is {state} on this group; it takes copied data only while importing")]
    NotImporting { slot: Slot, state: &'static str },
    /// A transition asked of a slot in the wrong state.
    #[error("cannot {action} slot {slot}: it is {state} on this group")]
    BadTransition {
        action: &'static str,
        slot: Slot,
        state: &'static str,
    },
}

/// What [`Ownership::follow_map`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapChange {
    /// Importing slots the map handed over: served from now on.
    pub adopted: Vec<Slot>,
    /// Frozen slots the map took: their data may be deleted once the new
    /// map is durable (it is: the catalog stored it before anyone saw it).
    pub released: Vec<Slot>,
    /// Slots the map gave without an import (cluster creation, or a group
    /// that was empty when given them).
    pub given: Vec<Slot>,
    /// Owned slots the map took without a freeze. Safe only if this group
    /// never served them under the new map; the caller logs it loudly.
    pub taken: Vec<Slot>,
}

impl MapChange {
    /// Whether nothing changed but (perhaps) the epoch.
    pub fn is_empty(&self) -> bool {
        self.adopted.is_empty()
            && self.released.is_empty()
            && self.given.is_empty()
            && self.taken.is_empty()
    }
}

/// The ownership of every slot on one group, and the map epoch it is at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ownership {
    map_epoch: MapEpoch,
    slots: Vec<SlotState>,
}

impl Ownership {
    /// A group that owns `owned` under `map_epoch` and nothing else.
    pub fn new(map_epoch: MapEpoch, owned: &SlotSet) -> Ownership {
        let slots = (0..SLOTS)
            .map(|s| {
                if owned.contains(s) {
                    SlotState::Owned
                } else {
                    SlotState::NotOwned
                }
            })
            .collect();
        Ownership { map_epoch, slots }
    }

    /// The newest map epoch this group has followed.
    pub fn map_epoch(&self) -> MapEpoch {
        self.map_epoch
    }

    /// Where `slot` stands.
    pub fn state(&self, slot: Slot) -> SlotState {
        self.slots
            .get(slot as usize)
            .copied()
            .unwrap_or(SlotState::NotOwned)
    }

    /// The slots in state `Owned` or `Frozen`: those whose data is this
    /// group's to serve or hand over.
    pub fn held(&self) -> SlotSet {
        self.matching(|s| matches!(s, SlotState::Owned | SlotState::Frozen { .. }))
    }

    /// The slots in `state`'s kind (any `from`/`to`).
    pub fn in_state(&self, state: SlotState) -> SlotSet {
        self.matching(|s| std::mem::discriminant(&s) == std::mem::discriminant(&state))
    }

    fn matching(&self, pred: impl Fn(SlotState) -> bool) -> SlotSet {
        let mut set = SlotSet::empty();
        for (slot, state) in (0..SLOTS).zip(&self.slots) {
            if pred(*state) {
                set.insert(slot);
            }
        }
        set
    }

    /// Whether a request routed with `got` may `access` `slot`.
    ///
    /// A request routed with an older epoch is fine as long as the slot is
    /// served here now: the slot cannot have been served elsewhere in
    /// between without leaving this group, and a slot leaves only by a
    /// freeze. A newer epoch means this group is behind.
    pub fn check(&self, got: MapEpoch, slot: Slot, access: Access) -> Result<(), OwnershipError> {
        if got > self.map_epoch {
            return Err(OwnershipError::StaleMap {
                got,
                map_epoch: self.map_epoch,
            });
        }
        match (self.state(slot), access) {
            (SlotState::Owned, Access::Serve) | (SlotState::Importing { .. }, Access::Ingest) => {
                Ok(())
            }
            (SlotState::NotOwned, Access::Serve) => Err(OwnershipError::WrongShard {
                slot,
                map_epoch: self.map_epoch,
            }),
            (SlotState::Frozen { to }, Access::Serve) => Err(OwnershipError::Moving { slot, to }),
            (SlotState::Importing { from }, Access::Serve) => {
                Err(OwnershipError::NotHandedOver { slot, from })
            }
            (state, Access::Ingest) => Err(OwnershipError::NotImporting {
                slot,
                state: state.name(),
            }),
        }
    }

    /// Starts taking copied data for `slots` from `from`. Idempotent for
    /// slots already importing from `from` (a job that resumes).
    pub fn begin_import(&mut self, slots: &SlotSet, from: GroupId) -> Result<(), OwnershipError> {
        self.transition(slots, "import", |state| match state {
            SlotState::NotOwned => Some(SlotState::Importing { from }),
            SlotState::Importing { from: f } if f == from => Some(state),
            _ => None,
        })
    }

    /// Gives up an import (the job was cancelled before the hand-over):
    /// the slots go back to `NotOwned`, and the caller deletes what was
    /// copied. Idempotent.
    pub fn abandon_import(&mut self, slots: &SlotSet) -> Result<(), OwnershipError> {
        self.transition(slots, "abandon the import of", |state| match state {
            SlotState::Importing { .. } | SlotState::NotOwned => Some(SlotState::NotOwned),
            _ => None,
        })
    }

    /// Stops serving `slots` before handing them to `to`. Idempotent for
    /// slots already frozen towards `to`.
    pub fn freeze(&mut self, slots: &SlotSet, to: GroupId) -> Result<(), OwnershipError> {
        self.transition(slots, "freeze", |state| match state {
            SlotState::Owned => Some(SlotState::Frozen { to }),
            SlotState::Frozen { to: t } if t == to => Some(state),
            _ => None,
        })
    }

    /// Serves frozen `slots` again: the cutover was abandoned before the
    /// map changed (the prepared transactions did not drain in time, or the
    /// job was paused or cancelled). Idempotent.
    pub fn thaw(&mut self, slots: &SlotSet) -> Result<(), OwnershipError> {
        self.transition(slots, "thaw", |state| match state {
            SlotState::Frozen { .. } | SlotState::Owned => Some(SlotState::Owned),
            _ => None,
        })
    }

    /// Applies every transition to `slots` or none: `next` returns the new
    /// state, or `None` where the transition is refused.
    fn transition(
        &mut self,
        slots: &SlotSet,
        action: &'static str,
        next: impl Fn(SlotState) -> Option<SlotState>,
    ) -> Result<(), OwnershipError> {
        let mut out = self.slots.clone();
        for slot in (0..SLOTS).filter(|s| slots.contains(*s)) {
            let state = self.slots[slot as usize];
            out[slot as usize] = next(state).ok_or(OwnershipError::BadTransition {
                action,
                slot,
                state: state.name(),
            })?;
        }
        self.slots = out;
        Ok(())
    }

    /// Follows the catalog's map at `map_epoch`, under which this group
    /// serves exactly `owned`. An epoch at or below the current one changes
    /// nothing (maps arrive late and twice).
    ///
    /// - importing and in the map: adopted (served from now on);
    /// - frozen and not in the map: released (its data may go);
    /// - importing and not in the map, frozen and in the map: unchanged —
    ///   the hand-over has not happened yet;
    /// - not owned and in the map: given; owned and not in the map: taken
    ///   (see [`MapChange`]).
    pub fn follow_map(&mut self, map_epoch: MapEpoch, owned: &SlotSet) -> MapChange {
        let mut change = MapChange::default();
        if map_epoch <= self.map_epoch {
            return change;
        }
        self.map_epoch = map_epoch;
        for (slot, state) in (0..SLOTS).zip(self.slots.iter_mut()) {
            let in_map = owned.contains(slot);
            *state = match (*state, in_map) {
                (SlotState::Importing { .. }, true) => {
                    change.adopted.push(slot);
                    SlotState::Owned
                }
                (SlotState::Frozen { .. }, false) => {
                    change.released.push(slot);
                    SlotState::NotOwned
                }
                (SlotState::NotOwned, true) => {
                    change.given.push(slot);
                    SlotState::Owned
                }
                (SlotState::Owned, false) => {
                    change.taken.push(slot);
                    SlotState::NotOwned
                }
                (unchanged, _) => unchanged,
            };
        }
        change
    }
}

/// A logged step of a slot move (a `SLOTS` record), as the primary asks
/// for it and as every replica applies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotStep {
    /// Target: take copied data for the slots from `from`.
    BeginImport { from: GroupId },
    /// Target: give the import up; copied data is dropped.
    AbandonImport,
    /// Source: stop serving the slots before handing them to `to`.
    Freeze { to: GroupId },
    /// Source: serve frozen slots again.
    Thaw,
    /// Source, after the flip: the map took the slots; their data goes.
    Release,
}

impl SlotStep {
    /// What the step does, for errors and logs.
    pub fn name(self) -> &'static str {
        match self {
            SlotStep::BeginImport { .. } => "import",
            SlotStep::AbandonImport => "abandon the import of",
            SlotStep::Freeze { .. } => "freeze",
            SlotStep::Thaw => "thaw",
            SlotStep::Release => "release",
        }
    }

    /// Whether applying the step deletes the slots' entries from the index:
    /// an import starts empty, an abandoned import keeps nothing, and a
    /// released slot's data is the new owner's.
    pub fn drops_data(self) -> bool {
        matches!(
            self,
            SlotStep::BeginImport { .. } | SlotStep::AbandonImport | SlotStep::Release
        )
    }

    /// The state a slot in `state` moves to when a primary asks for the
    /// step, if it fits; `None` where it does not.
    fn next(self, state: SlotState) -> Option<SlotState> {
        match (self, state) {
            (SlotStep::BeginImport { from }, SlotState::NotOwned) => {
                Some(SlotState::Importing { from })
            }
            (SlotStep::BeginImport { from }, SlotState::Importing { from: f }) if f == from => {
                Some(state)
            }
            (SlotStep::AbandonImport, SlotState::Importing { .. } | SlotState::NotOwned) => {
                Some(SlotState::NotOwned)
            }
            (SlotStep::Freeze { to }, SlotState::Owned) => Some(SlotState::Frozen { to }),
            (SlotStep::Freeze { to }, SlotState::Frozen { to: t }) if t == to => Some(state),
            (SlotStep::Thaw, SlotState::Frozen { .. } | SlotState::Owned) => Some(SlotState::Owned),
            (SlotStep::Release, SlotState::Frozen { .. } | SlotState::NotOwned) => {
                Some(SlotState::NotOwned)
            }
            _ => None,
        }
    }

    /// The rule replay and backups use for a logged step: as
    /// [`SlotStep::next`], and a freeze also freezes a slot not owned here.
    /// A replica restarted under a coordinator owns nothing (epoch 0) until
    /// it hears the map, and a backup may have followed a map the primary
    /// had not when it froze: either way the slot must come out frozen, or
    /// the map would hand it back as owned and a restart in a job's drain
    /// would serve writes again. Frozen serves nothing, so erring that way
    /// is safe; the map (which leaves a frozen slot it still gives frozen,
    /// and releases one it took) or a logged thaw or release settles it.
    fn next_logged(self, state: SlotState) -> Option<SlotState> {
        match (self, state) {
            (SlotStep::Freeze { to }, SlotState::NotOwned) => Some(SlotState::Frozen { to }),
            _ => self.next(state),
        }
    }
}

impl Ownership {
    /// The primary's check before it logs `step` for `slots`: every slot
    /// must fit (else nothing is logged and the caller gets the typed
    /// error), and the answer is the slots the step changes — an empty set
    /// means the step is done already (a resumed job) and nothing needs
    /// logging. A release is asked only after the map took the slots, so
    /// it fits only slots not owned here; it always returns every slot
    /// asked for (dropping data twice is harmless).
    pub fn plan(&self, step: SlotStep, slots: &SlotSet) -> Result<SlotSet, OwnershipError> {
        let mut changed = SlotSet::empty();
        for slot in (0..SLOTS).filter(|s| slots.contains(*s)) {
            let state = self.state(slot);
            let strict = match (step, state) {
                (SlotStep::Release, SlotState::NotOwned) => Some(state),
                (SlotStep::Release, _) => None,
                _ => step.next(state),
            };
            let next = strict.ok_or(OwnershipError::BadTransition {
                action: step.name(),
                slot,
                state: state.name(),
            })?;
            if next != state || step == SlotStep::Release {
                changed.insert(slot);
            }
        }
        Ok(changed)
    }

    /// Applies a logged step leniently (`SlotStep::next_logged`): each
    /// slot the step fits moves, each other slot is left alone and returned
    /// (the map, which is not logged, moved it past the step; the primary
    /// checked it with [`Ownership::plan`] before logging).
    pub fn apply_step(&mut self, step: SlotStep, slots: &SlotSet) -> Vec<Slot> {
        let mut ignored = Vec::new();
        for slot in (0..SLOTS).filter(|s| slots.contains(*s)) {
            let state = &mut self.slots[slot as usize];
            match step.next_logged(*state) {
                Some(next) => *state = next,
                None => ignored.push(slot),
            }
        }
        ignored
    }

    /// The slots in an in-between state (importing or frozen), for
    /// snapshots: everything else is the map's word.
    pub fn moving(&self) -> Vec<(Slot, SlotState)> {
        (0..SLOTS)
            .zip(&self.slots)
            .filter(|(_, s)| matches!(s, SlotState::Importing { .. } | SlotState::Frozen { .. }))
            .map(|(slot, s)| (slot, *s))
            .collect()
    }

    /// Forgets the in-between states, back to what the map alone says (a
    /// frozen slot is still the map's here, an importing one is not):
    /// before a snapshot from the primary brings its own.
    pub fn settle_moving(&mut self) {
        for state in &mut self.slots {
            *state = match *state {
                SlotState::Frozen { .. } => SlotState::Owned,
                SlotState::Importing { .. } => SlotState::NotOwned,
                other => other,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(text: &str) -> SlotSet {
        SlotSet::parse(text).expect("slots")
    }

    /// Group 1 owning 0-99 at epoch 3.
    fn source() -> Ownership {
        Ownership::new(3, &set("0-99"))
    }

    #[test]
    fn owned_slots_are_served_and_others_are_wrong_shard() {
        let own = source();
        assert_eq!(own.check(3, 5, Access::Serve), Ok(()));
        assert_eq!(
            own.check(1, 5, Access::Serve),
            Ok(()),
            "older routing is fine"
        );
        assert_eq!(
            own.check(3, 100, Access::Serve),
            Err(OwnershipError::WrongShard {
                slot: 100,
                map_epoch: 3
            })
        );
        assert_eq!(
            own.check(4, 5, Access::Serve),
            Err(OwnershipError::StaleMap {
                got: 4,
                map_epoch: 3
            })
        );
        assert_eq!(own.held(), set("0-99"));
    }

    #[test]
    fn a_frozen_slot_refuses_reads_and_writes_until_handed_over() {
        let mut own = source();
        own.freeze(&set("10-19"), 2).expect("freeze");
        assert_eq!(
            own.check(3, 10, Access::Serve),
            Err(OwnershipError::Moving { slot: 10, to: 2 })
        );
        assert_eq!(
            own.check(3, 20, Access::Serve),
            Ok(()),
            "others still served"
        );
        assert_eq!(
            own.held(),
            set("0-99"),
            "frozen data is still ours to hand over"
        );
        // The map at epoch 4 no longer gives 10-19: released.
        let change = own.follow_map(4, &set("0-9,20-99"));
        assert_eq!(change.released, (10..20).collect::<Vec<_>>());
        assert!(change.adopted.is_empty() && change.taken.is_empty() && change.given.is_empty());
        assert_eq!(own.state(10), SlotState::NotOwned);
        assert_eq!(own.map_epoch(), 4);
        assert!(matches!(
            own.check(4, 10, Access::Serve),
            Err(OwnershipError::WrongShard { .. })
        ));
    }

    #[test]
    fn an_importing_slot_takes_copies_but_serves_only_after_the_hand_over() {
        let mut own = Ownership::new(3, &SlotSet::empty());
        assert!(matches!(
            own.check(3, 10, Access::Ingest),
            Err(OwnershipError::NotImporting {
                slot: 10,
                state: "not owned"
            })
        ));
        own.begin_import(&set("10-19"), 1).expect("import");
        assert_eq!(own.check(3, 10, Access::Ingest), Ok(()));
        assert_eq!(
            own.check(3, 10, Access::Serve),
            Err(OwnershipError::NotHandedOver { slot: 10, from: 1 })
        );
        // A map that does not give them yet (another job's epoch) keeps them importing.
        assert!(own.follow_map(4, &SlotSet::empty()).is_empty());
        assert_eq!(own.state(10), SlotState::Importing { from: 1 });
        let change = own.follow_map(5, &set("10-19"));
        assert_eq!(change.adopted, (10..20).collect::<Vec<_>>());
        assert_eq!(own.check(5, 10, Access::Serve), Ok(()));
        assert!(matches!(
            own.check(5, 10, Access::Ingest),
            Err(OwnershipError::NotImporting { .. })
        ));
    }

    #[test]
    fn old_and_repeated_maps_change_nothing() {
        let mut own = source();
        own.freeze(&set("10"), 2).expect("freeze");
        assert!(own.follow_map(3, &SlotSet::empty()).is_empty());
        assert!(own.follow_map(2, &SlotSet::empty()).is_empty());
        assert_eq!(own.map_epoch(), 3);
        assert_eq!(own.state(10), SlotState::Frozen { to: 2 });
        assert_eq!(own.state(11), SlotState::Owned);
    }

    #[test]
    fn transitions_are_idempotent_and_all_or_nothing() {
        let mut own = source();
        own.freeze(&set("10-19"), 2).expect("freeze");
        own.freeze(&set("10-19"), 2).expect("again: a resumed job");
        // Freezing towards another group, or a slot we do not own, is refused whole.
        let before = own.clone();
        let err = own.freeze(&set("15-25"), 3).expect_err("other target");
        assert_eq!(
            err,
            OwnershipError::BadTransition {
                action: "freeze",
                slot: 15,
                state: "frozen"
            }
        );
        assert_eq!(own, before, "nothing changed, not even slots 20-25");
        assert!(own.freeze(&set("99-100"), 2).is_err());
        assert_eq!(own, before);
        own.thaw(&set("10-19")).expect("thaw");
        own.thaw(&set("10-19")).expect("thaw again");
        assert_eq!(own, source());
        assert!(own.thaw(&set("100")).is_err(), "not ours to thaw");
    }

    #[test]
    fn imports_resume_from_the_same_source_only() {
        let mut own = Ownership::new(3, &set("0-9"));
        own.begin_import(&set("10-19"), 1).expect("import");
        own.begin_import(&set("10-19"), 1).expect("resumed");
        assert!(matches!(
            own.begin_import(&set("10"), 4),
            Err(OwnershipError::BadTransition {
                action: "import",
                slot: 10,
                ..
            })
        ));
        assert!(matches!(
            own.begin_import(&set("5"), 1),
            Err(OwnershipError::BadTransition { state: "owned", .. })
        ));
        own.abandon_import(&set("10-19")).expect("cancel");
        own.abandon_import(&set("10-19")).expect("cancel again");
        assert_eq!(own, Ownership::new(3, &set("0-9")));
        assert!(
            own.abandon_import(&set("0")).is_err(),
            "an owned slot is not an import"
        );
    }

    #[test]
    fn the_map_still_rules_slots_no_job_moved() {
        // An empty group given slots at creation, and a group that loses
        // an owned slot without a freeze: both accepted, both reported.
        let mut own = Ownership::new(1, &set("0-9"));
        let change = own.follow_map(2, &set("5-14"));
        assert_eq!(change.given, (10..15).collect::<Vec<_>>());
        assert_eq!(change.taken, (0..5).collect::<Vec<_>>());
        assert_eq!(own.held(), set("5-14"));
    }

    #[test]
    fn in_state_lists_each_kind() {
        let mut own = source();
        own.freeze(&set("1-2"), 9).expect("freeze");
        own.begin_import(&set("200"), 7).expect("import");
        assert_eq!(own.in_state(SlotState::Frozen { to: 0 }), set("1-2"));
        assert_eq!(own.in_state(SlotState::Importing { from: 0 }), set("200"));
        assert_eq!(own.in_state(SlotState::Owned).len(), 98);
    }
    #[test]
    fn plan_checks_strictly_and_names_only_what_changes() {
        let mut own = source();
        assert_eq!(
            own.plan(SlotStep::Freeze { to: 2 }, &set("10-19")),
            Ok(set("10-19"))
        );
        own.apply_step(SlotStep::Freeze { to: 2 }, &set("10-11"));
        assert_eq!(
            own.plan(SlotStep::Freeze { to: 2 }, &set("10-12")),
            Ok(set("12")),
            "slots already frozen need no record"
        );
        assert!(matches!(
            own.plan(SlotStep::Freeze { to: 3 }, &set("10")),
            Err(OwnershipError::BadTransition {
                action: "freeze",
                ..
            })
        ));
        assert!(matches!(
            own.plan(SlotStep::Release, &set("10")),
            Err(OwnershipError::BadTransition {
                action: "release",
                state: "frozen",
                ..
            })
        ));
        own.follow_map(4, &set("0-9,12-99"));
        assert_eq!(own.plan(SlotStep::Release, &set("10-11")), Ok(set("10-11")));
        assert!(
            own.plan(SlotStep::Release, &set("12")).is_err(),
            "still owned"
        );
        assert_eq!(own.plan(SlotStep::Thaw, &set("12")), Ok(SlotSet::empty()));
    }

    #[test]
    fn logged_steps_apply_leniently_where_the_map_moved_past_them() {
        // A replica that restarted under a coordinator (owning nothing at
        // epoch 0 until the map arrives) replays a freeze: the slot comes
        // out frozen, and the map keeps it so.
        let mut own = Ownership::new(0, &SlotSet::empty());
        assert!(
            own.apply_step(SlotStep::Freeze { to: 2 }, &set("10"))
                .is_empty()
        );
        assert_eq!(own.follow_map(3, &set("0-99")).given.len(), 99);
        assert_eq!(own.state(10), SlotState::Frozen { to: 2 }, "still frozen");
        // Steps that do not fit are ignored and named.
        let mut own = Ownership::new(4, &set("0-9"));
        assert!(
            own.apply_step(SlotStep::Freeze { to: 2 }, &set("8-9"))
                .is_empty()
        );
        assert_eq!(own.state(8), SlotState::Frozen { to: 2 });
        assert_eq!(
            own.apply_step(SlotStep::BeginImport { from: 2 }, &set("5")),
            vec![5]
        );
        assert_eq!(own.apply_step(SlotStep::Thaw, &set("12")), vec![12]);
        assert_eq!(own.state(12), SlotState::NotOwned);
        // A release after a restart that replays from an older map: the
        // frozen slot goes.
        assert!(own.apply_step(SlotStep::Release, &set("8-9")).is_empty());
        assert_eq!(own.state(8), SlotState::NotOwned);
        assert_eq!(own.apply_step(SlotStep::Thaw, &set("8")), vec![8]);
        own.apply_step(SlotStep::BeginImport { from: 3 }, &set("20"));
        own.apply_step(SlotStep::Freeze { to: 3 }, &set("1"));
        assert_eq!(
            own.moving(),
            vec![
                (1, SlotState::Frozen { to: 3 }),
                (20, SlotState::Importing { from: 3 })
            ]
        );
        own.settle_moving();
        assert!(own.moving().is_empty());
        assert_eq!(
            own.held(),
            set("0-7"),
            "frozen back to owned, import dropped"
        );
    }
}
