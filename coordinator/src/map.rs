//! The shard map: which group owns each slot, where each group's members
//! are, and the map's epoch; and the consistent-hash ring that assigns slots
//! to groups.
//!
//! Slots are placed on a ring of `u64` positions; each group owns
//! [`VNODES_PER_GROUP`] virtual nodes on it, and a slot belongs to the group
//! of the first virtual node at or after its position (wrapping). Adding a
//! group therefore moves only the slots that fall just before its virtual
//! nodes: about `1/N` of them.

use std::collections::BTreeMap;

use trellis_types::{GroupId, MapEpoch, SLOTS, Slot, SlotSet, slot_of};

/// Virtual nodes each group places on the ring. More evens out the spread
/// (the standard deviation shrinks with the square root) at the cost of a
/// larger ring; 128 keeps every group within about ±25% of its share.
pub const VNODES_PER_GROUP: u32 = 128;

/// One replica of a group, as the catalog knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// `host:port` of its shard gRPC service.
    pub addr: String,
    /// Process id it reported when it registered (for `trellis status`).
    pub pid: u32,
    /// Part of the group's configuration (SYNC writes wait for it, it may be
    /// promoted); `false` for a learner still catching up.
    pub in_sync: bool,
}

/// A shard group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub id: GroupId,
    /// Its members; the first is the primary. Empty until a shard registers.
    pub members: Vec<Member>,
    /// Version of this row in the catalog (compare-and-swap).
    pub version: u64,
    /// Primary epoch: bumped whenever the primary changes (or restarts).
    pub epoch: u64,
}

/// The whole shard map as one coordinator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterMap {
    pub map_epoch: MapEpoch,
    /// `slots[s]` is the group that owns slot `s`; length `SLOTS`.
    pub slots: Vec<GroupId>,
    pub groups: BTreeMap<GroupId, Group>,
}

impl ClusterMap {
    /// The group that owns `key`.
    pub fn group_of(&self, key: &[u8]) -> GroupId {
        self.slots[slot_of(key) as usize]
    }

    /// The slots `group` owns.
    pub fn slots_of(&self, group: GroupId) -> SlotSet {
        let mut set = SlotSet::empty();
        for (slot, owner) in self.slots.iter().enumerate() {
            if *owner == group {
                set.insert(slot as Slot);
            }
        }
        set
    }

    /// Address of the primary of `group`, if any member registered.
    pub fn primary(&self, group: GroupId) -> Option<&str> {
        self.groups
            .get(&group)
            .and_then(|g| g.members.first())
            .map(|m| m.addr.as_str())
    }
}

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

/// Assigns every slot to a group by the consistent-hash ring over `groups`.
/// Deterministic: the same groups always give the same assignment.
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

    #[test]
    fn map_answers_owner_and_slot_sets() {
        let slots = assign_slots(&[1, 2]);
        let map = ClusterMap {
            map_epoch: 1,
            slots: slots.clone(),
            groups: BTreeMap::new(),
        };
        let key = b"some-key";
        let owner = map.group_of(key);
        assert!(map.slots_of(owner).contains(slot_of(key)));
        assert_eq!(map.slots_of(1).len() + map.slots_of(2).len(), SLOTS);
        assert_eq!(map.primary(1), None);
    }
}
