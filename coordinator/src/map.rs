//! The shard map: which group owns each slot, where each group's members
//! are, and the map's epoch.
//!
//! The consistent-hash ring that assigns slots to groups is not here but in
//! [`trellis_types::placement`]: the load tester, the benchmarks and the
//! tests need the same answer without depending on the coordinator.

use std::collections::BTreeMap;

use trellis_types::{GroupId, MapEpoch, Slot, SlotSet, slot_of};

/// One replica of a group (shared with the coordinator through `trellis-types`).
pub use trellis_types::Member;

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

    /// The positions of `keys` grouped by the group that owns each key,
    /// groups in id order and positions in key order: how a read fans out.
    pub fn by_group<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a [u8]>,
    ) -> BTreeMap<GroupId, Vec<usize>> {
        let mut out: BTreeMap<GroupId, Vec<usize>> = BTreeMap::new();
        for (i, key) in keys.into_iter().enumerate() {
            out.entry(self.group_of(key)).or_default().push(i);
        }
        out
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

#[cfg(test)]
mod tests {
    use trellis_types::SLOTS;
    use trellis_types::placement::assign_slots;

    use super::*;

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
        let keys: Vec<Vec<u8>> = (0..50).map(|i| format!("k{i}").into_bytes()).collect();
        let grouped = map.by_group(keys.iter().map(Vec::as_slice));
        assert_eq!(grouped.len(), 2, "50 keys land on both groups");
        let mut seen: Vec<usize> = grouped.values().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..50).collect::<Vec<_>>(), "every position once");
        for (group, idx) in &grouped {
            assert!(
                idx.windows(2).all(|w| w[0] < w[1]),
                "positions in key order"
            );
            assert!(idx.iter().all(|i| map.group_of(&keys[*i]) == *group));
        }
        assert_eq!(map.primary(1), None);
    }
}
