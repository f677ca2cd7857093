//! Placement: the consistent-hash ring that assigns every slot to a group.
//!
//! Slots are placed on a ring of `u64` positions; each group owns
//! [`VNODES_PER_GROUP`] virtual nodes on it, and a slot belongs to the group
//! of the first virtual node at or after its position (wrapping). Adding a
//! group therefore moves only the slots that fall just before its virtual
//! nodes: about `1/N` of them.
//!
//! It lives here, in the vocabulary crate, because every side needs the same
//! answer: the coordinator writes it into the catalog when a cluster is
//! created, and the load tester and the benchmarks recompute it to predict
//! which group a key lands in, without depending on the coordinator.
//!
//! # What this module never does
//!
//! - It never changes its answer for the same set of groups: the assignment
//!   is stored in existing catalogs and fixes the simulator's fingerprints,
//!   so the hash constants below are part of the on-disk contract (pinned by
//!   `assignment_is_pinned`).
//! - No IO, no clock, no randomness.

use crate::{GroupId, SLOTS, Slot};

/// Virtual nodes each group places on the ring. More evens out the spread
/// (the standard deviation shrinks with the square root) at the cost of a
/// larger ring; 128 keeps every group within about ±25% of its share.
pub const VNODES_PER_GROUP: u32 = 128;

fn mix(mut x: u64) -> u64 {
    // splitmix64 finalizer: a fixed, portable bijection.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn vnode_position(group: GroupId, vnode: u32) -> u64 {
    mix(mix(group) ^ u64::from(vnode).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn slot_position(slot: Slot) -> u64 {
    mix(u64::from(slot) ^ 0x5107_5107_5107_5107)
}

/// Assigns every slot to a group by the consistent-hash ring over `groups`:
/// `assign_slots(groups)[s]` is the group that owns slot `s`, for every `s`
/// in `0..SLOTS`. Deterministic and independent of the order of `groups`.
///
/// # Panics
///
/// If `groups` is empty: there is nothing to assign to, and every caller
/// (cluster creation, the benchmarks) has at least one group by then.
pub fn assign_slots(groups: &[GroupId]) -> Vec<GroupId> {
    assert!(!groups.is_empty(), "a cluster needs at least one group");
    let mut ring: Vec<(u64, GroupId)> = groups
        .iter()
        .flat_map(|g| (0..VNODES_PER_GROUP).map(move |v| (vnode_position(*g, v), *g)))
        .collect();
    ring.sort_unstable();
    (0..SLOTS)
        .map(|slot| {
            let pos = slot_position(slot);
            let i = ring.partition_point(|(p, _)| *p < pos);
            ring[i % ring.len()].1
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn counts(slots: &[GroupId]) -> BTreeMap<GroupId, usize> {
        let mut out = BTreeMap::new();
        for g in slots {
            *out.entry(*g).or_default() += 1;
        }
        out
    }

    #[test]
    fn every_group_gets_a_fair_share() {
        for n in [1u64, 2, 3, 5, 8, 16] {
            let groups: Vec<GroupId> = (1..=n).collect();
            let slots = assign_slots(&groups);
            assert_eq!(slots.len(), SLOTS as usize);
            let fair = SLOTS as f64 / n as f64;
            for (g, c) in counts(&slots) {
                let ratio = c as f64 / fair;
                assert!(
                    (0.7..=1.3).contains(&ratio),
                    "{n} groups: group {g} has {c} slots, fair {fair:.0}"
                );
            }
            assert_eq!(counts(&slots).len(), n as usize, "every group owns slots");
        }
    }

    #[test]
    fn adding_a_group_moves_about_one_nth_and_only_to_it() {
        for n in [2u64, 3, 4, 7, 10] {
            let before = assign_slots(&(1..=n).collect::<Vec<_>>());
            let after = assign_slots(&(1..=n + 1).collect::<Vec<_>>());
            let moved: Vec<usize> = (0..SLOTS as usize)
                .filter(|s| before[*s] != after[*s])
                .collect();
            for s in &moved {
                assert_eq!(after[*s], n + 1, "slot {s} moved between old groups");
            }
            let expected = SLOTS as f64 / (n + 1) as f64;
            let ratio = moved.len() as f64 / expected;
            assert!(
                (0.6..=1.4).contains(&ratio),
                "adding group {} moved {} slots, expected about {expected:.0}",
                n + 1,
                moved.len()
            );
        }
    }

    #[test]
    fn assignment_is_deterministic_and_order_independent() {
        assert_eq!(assign_slots(&[1, 2, 3]), assign_slots(&[3, 1, 2]));
    }

    /// The assignment is stored in existing catalogs: a change to the ring
    /// (its hash constants, the vnode count, the tie order) would move data
    /// without moving it. These values were taken from the ring as it stood
    /// when it moved here from the coordinator.
    #[test]
    fn assignment_is_pinned() {
        let digest = |slots: &[GroupId]| {
            slots
                .iter()
                .fold(0u64, |h, g| h.wrapping_mul(31).wrapping_add(*g))
        };
        let three = assign_slots(&[1, 2, 3]);
        assert_eq!(
            &three[..16],
            &[3, 3, 1, 1, 2, 2, 1, 3, 3, 1, 3, 2, 2, 1, 1, 2]
        );
        assert_eq!(
            counts(&three),
            BTreeMap::from([(1, 1349), (2, 1488), (3, 1259)])
        );
        assert_eq!(digest(&three), 11_743_378_877_807_417_436);
        assert_eq!(
            digest(&assign_slots(&[1, 2, 3, 1000])),
            13_051_562_103_081_659_035
        );
    }
}
