//! Between stored rows and domain types, pure: the slot-map codec, the
//! integer conversions for `BIGINT` columns, the checks on text arguments,
//! and [`build_map`], which checks every invariant of what one consistent
//! read returned. Shared by every backend; no IO, no clock.

use std::collections::{BTreeMap, BTreeSet};

use trellis_types::{GroupId, SLOTS};

use super::CatalogError;
use crate::map::{ClusterMap, Group, Member};

/// Bytes of a stored slot map: one little-endian `u32` group id per slot.
pub(super) const SLOT_MAP_BYTES: usize = SLOTS as usize * 4;

/// Rows as `list_coordinators` returns them: id, address, metrics address,
/// heartbeat age and uptime in milliseconds.
pub(super) type CoordinatorListed = (String, String, String, i64, i64);

/// Rows as `list_jobs` returns them: id, version, state, milliseconds since
/// creation and since the last save.
pub(super) type JobListed = (i64, i64, Vec<u8>, i64, i64);

/// Rows as `list_feed_cursors` returns them: feed name, cursor,
/// milliseconds since the last save.
pub(super) type FeedListed = (String, Vec<u8>, i64);

/// The row of `cluster`: map epoch, encoded slot map.
pub(super) type ClusterRow = (i64, Vec<u8>);
/// One row of `shard_groups`: id, version, epoch.
pub(super) type GroupRow = (i64, i64, i64);
/// One row of `members`: group id, ordinal, address, pid, in sync.
pub(super) type MemberRow = (i64, i64, String, i64, i64);
/// What one consistent read of the map returns.
pub(super) type MapRows = (Option<ClusterRow>, Vec<GroupRow>, Vec<MemberRow>);

/// Converts an id, version or epoch for a `BIGINT` column.
pub(super) fn to_i64(value: u64, what: &str) -> Result<i64, CatalogError> {
    i64::try_from(value)
        .map_err(|_| CatalogError::Invalid(format!("{what} {value} does not fit a BIGINT")))
}

/// Converts a stored `BIGINT` back; a negative value is a corrupt row.
pub(super) fn to_u64(value: i64, what: &str) -> Result<u64, CatalogError> {
    u64::try_from(value).map_err(|_| CatalogError::Corrupt(format!("{what} is negative ({value})")))
}

/// Encodes a slot map as `SLOTS` little-endian `u32` group ids.
pub(super) fn encode_slots(slots: &[GroupId]) -> Result<Vec<u8>, CatalogError> {
    if slots.len() != SLOTS as usize {
        return Err(CatalogError::Invalid(format!(
            "refusing a slot map of {} entries: a slot map has exactly {SLOTS}",
            slots.len()
        )));
    }
    let mut out = Vec::with_capacity(SLOT_MAP_BYTES);
    for (slot, group) in slots.iter().enumerate() {
        let group = u32::try_from(*group).map_err(|_| {
            CatalogError::Invalid(format!(
                "refusing a slot map that gives slot {slot} to group {group}: group ids are at most {}",
                u32::MAX
            ))
        })?;
        out.extend_from_slice(&group.to_le_bytes());
    }
    Ok(out)
}

/// Decodes a stored slot map; anything but exactly `SLOTS` ids is corrupt.
pub(super) fn decode_slots(bytes: &[u8]) -> Result<Vec<GroupId>, CatalogError> {
    if bytes.len() != SLOT_MAP_BYTES {
        return Err(CatalogError::Corrupt(format!(
            "the slot map is {} bytes, expected {SLOT_MAP_BYTES} ({SLOTS} slots of 4 bytes)",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| GroupId::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect())
}

/// Refuses an empty or over-long text argument.
pub(super) fn check_text(what: &str, value: &str, max: usize) -> Result<(), CatalogError> {
    if value.is_empty() {
        return Err(CatalogError::Invalid(format!("{what} is empty")));
    }
    if value.len() > max {
        return Err(CatalogError::Invalid(format!(
            "{what} is {} bytes, more than the limit of {max}",
            value.len()
        )));
    }
    Ok(())
}

/// Builds and checks a map from the rows of one consistent read.
pub(super) fn build_map(
    epoch: i64,
    slot_map: &[u8],
    group_rows: Vec<GroupRow>,
    member_rows: Vec<MemberRow>,
) -> Result<ClusterMap, CatalogError> {
    let map_epoch = to_u64(epoch, "the map epoch")?;
    if map_epoch == 0 {
        return Err(CatalogError::Corrupt("the map epoch is 0".into()));
    }
    let mut groups = BTreeMap::new();
    for (id, version, epoch) in group_rows {
        let id = to_u64(id, "a group id")?;
        let version = to_u64(version, &format!("the version of group {id}"))?;
        let epoch = to_u64(epoch, &format!("the epoch of group {id}"))?;
        groups.insert(
            id,
            Group {
                id,
                members: Vec::new(),
                version,
                epoch,
            },
        );
    }
    if groups.is_empty() {
        return Err(CatalogError::Corrupt(
            "the cluster exists but has no groups".into(),
        ));
    }
    for (group, ordinal, addr, pid, in_sync) in member_rows {
        let group = to_u64(group, "a member's group id")?;
        let entry = groups.get_mut(&group).ok_or_else(|| {
            CatalogError::Corrupt(format!(
                "member {addr} belongs to group {group}, which does not exist"
            ))
        })?;
        // Rows come ordered by ordinal: a gap means a member went missing.
        if usize::try_from(ordinal).ok() != Some(entry.members.len()) {
            return Err(CatalogError::Corrupt(format!(
                "group {group} has member {addr} at position {ordinal}, expected position {}",
                entry.members.len()
            )));
        }
        let pid = u32::try_from(pid).map_err(|_| {
            CatalogError::Corrupt(format!(
                "member {addr} of group {group} has pid {pid}, not a u32"
            ))
        })?;
        entry.members.push(Member {
            addr,
            pid,
            in_sync: in_sync != 0,
        });
    }
    let slots = decode_slots(slot_map)?;
    if let Some((slot, group)) = slots
        .iter()
        .enumerate()
        .find(|(_, g)| !groups.contains_key(g))
    {
        return Err(CatalogError::Corrupt(format!(
            "the slot map gives slot {slot} to group {group}, which does not exist"
        )));
    }
    Ok(ClusterMap {
        map_epoch,
        slots,
        groups,
    })
}

/// Refuses a slot map naming groups that do not exist, given the ids that
/// do; no group at all means no cluster.
pub(super) fn check_groups_exist(
    named: &BTreeSet<GroupId>,
    existing: Vec<i64>,
) -> Result<(), CatalogError> {
    if existing.is_empty() {
        return Err(CatalogError::NotBootstrapped);
    }
    let existing: BTreeSet<GroupId> = existing
        .into_iter()
        .map(|id| to_u64(id, "a group id"))
        .collect::<Result<_, _>>()?;
    if let Some(missing) = named.difference(&existing).next() {
        return Err(CatalogError::Invalid(format!(
            "refusing a slot map that names group {missing}, which does not exist"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use trellis_types::placement::assign_slots;

    use super::*;

    #[test]
    fn slot_map_round_trips_and_bad_bytes_are_corrupt() {
        let slots = assign_slots(&[1, 2, 3, 1000]);
        let bytes = encode_slots(&slots).expect("encode");
        assert_eq!(bytes.len(), SLOT_MAP_BYTES);
        assert_eq!(decode_slots(&bytes).expect("decode"), slots);
        for len in [
            0,
            SLOT_MAP_BYTES - 4,
            SLOT_MAP_BYTES + 4,
            SLOT_MAP_BYTES - 1,
        ] {
            let err = decode_slots(&vec![0; len]).expect_err("wrong length");
            assert!(matches!(err, CatalogError::Corrupt(_)), "{len}: {err:?}");
        }
    }

    #[test]
    fn build_map_refuses_broken_invariants() {
        let slots = encode_slots(&assign_slots(&[1, 2])).expect("encode");
        let groups = || vec![(1, 1, 0), (2, 1, 0)];
        build_map(1, &slots, groups(), vec![]).expect("a whole map");
        // A group the slot map gives nothing (one just added) is whole.
        let with_empty = build_map(1, &slots, vec![(1, 1, 0), (2, 1, 0), (3, 1, 0)], vec![])
            .expect("a group without slots");
        assert_eq!(with_empty.slots_of(3).len(), 0);
        assert!(with_empty.groups.contains_key(&3));
        let cases: Vec<(&str, Result<ClusterMap, CatalogError>)> = vec![
            ("epoch 0", build_map(0, &slots, groups(), vec![])),
            ("negative epoch", build_map(-1, &slots, groups(), vec![])),
            ("no groups", build_map(1, &slots, vec![], vec![])),
            (
                "missing group",
                build_map(1, &slots, vec![(1, 1, 0)], vec![]),
            ),
            (
                "negative version",
                build_map(1, &slots, vec![(1, -1, 0), (2, 1, 0)], vec![]),
            ),
            (
                "member of unknown group",
                build_map(1, &slots, groups(), vec![(7, 0, "a:1".into(), 1, 1)]),
            ),
            (
                "pid beyond u32",
                build_map(1, &slots, groups(), vec![(1, 0, "a:1".into(), 1 << 40, 1)]),
            ),
            (
                "gap in ordinals",
                build_map(1, &slots, groups(), vec![(1, 1, "a:1".into(), 1, 1)]),
            ),
        ];
        for (what, result) in cases {
            assert!(
                matches!(result, Err(CatalogError::Corrupt(_))),
                "{what}: {result:?}"
            );
        }
    }
}
