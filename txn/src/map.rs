//! The shard map: which group owns each slot, where each group's members
//! are, and the map's epoch.
//!
//! The consistent-hash ring that assigns slots to groups is not here but in
//! [`trellis_types::placement`]: the load tester, the benchmarks and the
//! tests need the same answer without depending on the coordinator.

use std::collections::BTreeMap;

use trellis_proto::v1 as pb;
use trellis_types::{GroupId, MapEpoch, SLOTS, Slot, SlotSet, slot_of};

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

impl ClusterMap {
    /// The map as `Txn.ClusterMap` answers it.
    pub fn to_pb(&self) -> pb::ClusterMapResponse {
        pb::ClusterMapResponse {
            map_epoch: self.map_epoch,
            slots: self.slots.clone(),
            groups: self
                .groups
                .values()
                .map(|g| pb::MapGroup {
                    group_id: g.id,
                    members: g
                        .members
                        .iter()
                        .map(|m| pb::MapMember {
                            address: m.addr.clone(),
                            pid: m.pid,
                            in_sync: m.in_sync,
                        })
                        .collect(),
                    version: g.version,
                    epoch: g.epoch,
                })
                .collect(),
        }
    }

    /// The map a `Txn.ClusterMap` answer describes, checked: one owner per
    /// slot, every owner a listed group, no group listed twice.
    pub fn from_pb(answer: pb::ClusterMapResponse) -> Result<ClusterMap, String> {
        if answer.slots.len() != SLOTS as usize {
            return Err(format!(
                "the map has {} slots, not {SLOTS}",
                answer.slots.len()
            ));
        }
        let mut groups = BTreeMap::new();
        for g in answer.groups {
            let group = Group {
                id: g.group_id,
                members: g
                    .members
                    .into_iter()
                    .map(|m| Member {
                        addr: m.address,
                        pid: m.pid,
                        in_sync: m.in_sync,
                    })
                    .collect(),
                version: g.version,
                epoch: g.epoch,
            };
            if groups.insert(group.id, group).is_some() {
                return Err(format!("the map lists group {} twice", g.group_id));
            }
        }
        if let Some(slot) = answer.slots.iter().position(|g| !groups.contains_key(g)) {
            return Err(format!(
                "slot {slot} belongs to group {}, which the map does not list",
                answer.slots[slot]
            ));
        }
        Ok(ClusterMap {
            map_epoch: answer.map_epoch,
            slots: answer.slots,
            groups,
        })
    }

    /// What tells this map from another (`Txn.ClusterMap`'s `known`).
    pub fn stamp(&self) -> pb::MapStamp {
        pb::MapStamp {
            map_epoch: self.map_epoch,
            groups: self
                .groups
                .values()
                .map(|g| pb::GroupStamp {
                    group_id: g.id,
                    version: g.version,
                })
                .collect(),
        }
    }

    /// Whether `stamp` names this very map: a caller that holds it gains
    /// nothing from it, so the map must be read again.
    pub fn has_stamp(&self, stamp: &pb::MapStamp) -> bool {
        *stamp == self.stamp()
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

    fn two_groups() -> ClusterMap {
        let member = |addr: &str| Member {
            addr: addr.into(),
            pid: 7,
            in_sync: true,
        };
        ClusterMap {
            map_epoch: 3,
            slots: assign_slots(&[1, 2]),
            groups: [
                (
                    1,
                    Group {
                        id: 1,
                        members: vec![member("127.0.0.1:1"), member("127.0.0.1:2")],
                        version: 5,
                        epoch: 2,
                    },
                ),
                (
                    2,
                    Group {
                        id: 2,
                        members: Vec::new(),
                        version: 1,
                        epoch: 0,
                    },
                ),
            ]
            .into(),
        }
    }

    #[test]
    fn a_map_survives_the_wire_and_its_stamp_tells_maps_apart() {
        let map = two_groups();
        let back = ClusterMap::from_pb(map.to_pb()).expect("a map the coordinator sends parses");
        assert_eq!(back, map);
        assert!(map.has_stamp(&map.stamp()));
        let mut failed_over = map.clone();
        failed_over.groups.get_mut(&1).expect("group 1").version += 1;
        assert!(!failed_over.has_stamp(&map.stamp()), "a new primary");
        let mut moved = map.clone();
        moved.map_epoch += 1;
        assert!(!moved.has_stamp(&map.stamp()), "slots moved");
    }

    #[test]
    fn a_map_that_does_not_add_up_is_refused() {
        let mut short = two_groups().to_pb();
        short.slots.pop();
        assert!(ClusterMap::from_pb(short).unwrap_err().contains("slots"));
        let mut orphan = two_groups().to_pb();
        orphan.slots[9] = 7;
        let err = ClusterMap::from_pb(orphan).unwrap_err();
        assert!(err.contains("slot 9") && err.contains("group 7"), "{err}");
        let mut twice = two_groups().to_pb();
        let again = twice.groups[0].clone();
        twice.groups.push(again);
        assert!(ClusterMap::from_pb(twice).unwrap_err().contains("twice"));
    }
}
