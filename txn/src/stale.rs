//! STALE reads on any replica: the options a read carries, which replica
//! answered, and which replica a read is sent to. Pure; the IO is in
//! [`crate::txn`].
//!
//! A STALE read of a group goes to one of its in-sync members drawn
//! uniformly at random, the primary included, so that with `n` replicas
//! each serves about `1/n` of them (load spread by count, not by measured
//! load or lag: a backup that cannot prove its data fresh enough declines
//! at once, and the read falls back to the primary within its deadline).
//! Reads of several groups are a snapshot per group, not one snapshot
//! across groups.

use std::collections::BTreeMap;
use std::time::Duration;

use trellis_types::{GroupId, Member, Version};

/// Longest a STALE read waits for a backup before asking the primary; at
/// most half of what is left of the read's deadline.
pub const BACKUP_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// How a read may be served.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// `None`: STRONG (the primary, linearizable). `Some(bound)`: STALE,
    /// any in-sync replica that can prove its data this fresh.
    pub max_staleness: Option<Duration>,
    /// Read-your-writes: the newest version the session committed in each
    /// group; a backup serves a group's keys only at or past it.
    pub floors: BTreeMap<GroupId, Version>,
}

impl ReadOptions {
    /// A STRONG read.
    pub fn strong() -> ReadOptions {
        ReadOptions::default()
    }

    /// The session floor in `group` (0: none).
    pub fn floor(&self, group: GroupId) -> Version {
        self.floors.get(&group).copied().unwrap_or(0)
    }
}

/// Which replica answered a group's part of a read, and how fresh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadSource {
    pub group: GroupId,
    /// The replica's address.
    pub replica: String,
    /// Whether a backup answered (not the group's primary).
    pub backup: bool,
    /// The replica's log position when it read.
    pub read_lsn: u64,
    /// Every value was the committed one at some moment since this long
    /// ago (zero from a primary).
    pub staleness: Duration,
}

impl ReadSource {
    /// From a shard's answer (`None` from a shard that predates sources).
    pub fn from_pb(
        group: GroupId,
        source: Option<trellis_proto::shard::v1::ReadSource>,
    ) -> ReadSource {
        let s = source.unwrap_or_default();
        ReadSource {
            group,
            replica: s.replica,
            backup: s.backup,
            read_lsn: s.read_lsn,
            staleness: Duration::from_millis(s.staleness_ms),
        }
    }

    /// The public wire form.
    pub fn to_pb(&self) -> trellis_proto::v1::ReadSource {
        trellis_proto::v1::ReadSource {
            group_id: self.group,
            replica: self.replica.clone(),
            backup: self.backup,
            read_lsn: self.read_lsn,
            staleness_ms: self.staleness.as_millis() as u64,
        }
    }
}

/// A read's bound on the shard wire: 0 for STRONG, else milliseconds,
/// at least 1 (a sub-millisecond bound is not a STRONG read).
pub fn staleness_ms(bound: Option<Duration>) -> u64 {
    bound.map_or(0, |b| (b.as_millis() as u64).max(1))
}

/// The backup a STALE read of a group goes to, drawn with `random` among
/// its in-sync members (the first member is the primary): `None` when the
/// draw falls on the primary or there is no in-sync backup.
pub fn pick_backup(members: &[Member], random: u64) -> Option<&str> {
    let in_sync: Vec<&Member> = members.iter().filter(|m| m.in_sync).collect();
    if in_sync.len() < 2 {
        return None;
    }
    let chosen = in_sync[(random % in_sync.len() as u64) as usize];
    let primary = members.first()?;
    (chosen.addr != primary.addr).then_some(chosen.addr.as_str())
}

/// The session floors a commit sets: the newest version written in each
/// group, with `group_of` the map's placement.
pub fn floors_of<'a>(
    written: impl IntoIterator<Item = (&'a [u8], Version)>,
    group_of: impl Fn(&[u8]) -> GroupId,
) -> BTreeMap<GroupId, Version> {
    let mut floors = BTreeMap::new();
    for (key, version) in written {
        let floor = floors.entry(group_of(key)).or_insert(0);
        *floor = (*floor).max(version);
    }
    floors
}

/// Merges `more` into a session's floors, keeping the newest per group.
pub fn merge_floors(floors: &mut BTreeMap<GroupId, Version>, more: &BTreeMap<GroupId, Version>) {
    for (group, version) in more {
        let floor = floors.entry(*group).or_insert(0);
        *floor = (*floor).max(*version);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(addr: &str, in_sync: bool) -> Member {
        Member {
            addr: addr.into(),
            pid: 0,
            in_sync,
        }
    }

    #[test]
    fn a_stale_read_spreads_over_in_sync_members_primary_included() {
        let members = [member("p", true), member("b1", true), member("b2", true)];
        let picks: Vec<Option<&str>> = (0..3).map(|r| pick_backup(&members, r)).collect();
        assert_eq!(picks, vec![None, Some("b1"), Some("b2")]);
        // A learner still catching up serves nothing.
        let members = [member("p", true), member("l", false), member("b", true)];
        let picks: Vec<Option<&str>> = (0..2).map(|r| pick_backup(&members, r)).collect();
        assert_eq!(picks, vec![None, Some("b")]);
        // No backup: always the primary.
        assert_eq!(pick_backup(&[member("p", true)], 1), None);
        assert_eq!(pick_backup(&[], 1), None);
    }

    #[test]
    fn floors_keep_the_newest_version_per_group() {
        let group_of = |k: &[u8]| u64::from(k[0] == b'b') + 1;
        let floors = floors_of(
            [(&b"a1"[..], 5), (&b"a2"[..], 9), (&b"b1"[..], 7)],
            group_of,
        );
        assert_eq!(floors, BTreeMap::from([(1, 9), (2, 7)]));
        let mut session = BTreeMap::from([(1, 12), (3, 4)]);
        merge_floors(&mut session, &floors);
        assert_eq!(session, BTreeMap::from([(1, 12), (2, 7), (3, 4)]));
        let opts = ReadOptions {
            max_staleness: Some(Duration::from_millis(500)),
            floors: session,
        };
        assert_eq!(opts.floor(2), 7);
        assert_eq!(opts.floor(9), 0);
    }
}
