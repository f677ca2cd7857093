//! Who plays which part in a replica group: the group's configuration as
//! this crate sees it, and the rules that act on it — which role a replica
//! takes from a configuration ([`next_role`]), which backups a primary
//! drops and which learners it admits ([`upkeep_changes`]), the members
//! after a planned hand-over ([`hand_over`]), and whom a failover promotes
//! ([`choose_primary`]).
//!
//! Pure functions of their arguments: no IO, no clock (the caller passes
//! `now`), no locks. [`crate::replica`] gathers what they need (the
//! catalog's configuration, peers' statuses, acknowledgements) and carries
//! out what they return (catalog CAS, role changes, streams). The timing
//! rules they apply are stated in [`crate::repl`].

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;
use trellis_proto::shard::v1 as pb;
use trellis_types::Lsn;

use crate::repl::{BACKUP_SILENCE_MAX, GRACE, HEARTBEAT_INTERVAL, Peer, Role};

/// A learner is admitted only while it is heard from within this long (a
/// few heartbeats): one that caught up but then went quiet is not.
pub const ADMIT_SILENCE_MAX: Duration = HEARTBEAT_INTERVAL.saturating_mul(3);
/// A learner is admitted once it is at most this many records behind.
pub const CATCH_UP_SLACK: Lsn = 0;

// A learner that would be admitted must not be one about to be dropped.
const _: () = assert!(ADMIT_SILENCE_MAX.as_millis() < BACKUP_SILENCE_MAX.as_millis());

/// One replica of a group (shared with the coordinator through `trellis-types`).
pub use trellis_types::Member;

/// A group's configuration, as read from the catalog: `members[0]` is the
/// primary of `epoch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    pub group_id: u64,
    /// Catalog row version (compare-and-swap).
    pub version: u64,
    /// Primary epoch: bumped by every change of primary.
    pub epoch: u64,
    pub members: Vec<Member>,
}

impl GroupConfig {
    /// The primary's address; `None` for a configuration without members.
    pub fn primary(&self) -> Option<&str> {
        self.members.first().map(|m| m.addr.as_str())
    }
}

// The one place wire configurations become domain ones and back.
impl From<pb::GroupConfig> for GroupConfig {
    fn from(c: pb::GroupConfig) -> GroupConfig {
        GroupConfig {
            group_id: c.group_id,
            version: c.version,
            epoch: c.epoch,
            members: c
                .members
                .into_iter()
                .map(|m| Member {
                    addr: m.addr,
                    pid: m.pid,
                    in_sync: m.in_sync,
                })
                .collect(),
        }
    }
}

/// A member in its wire form (for a catalog compare-and-swap).
pub fn member_to_wire(m: Member) -> pb::MemberConfig {
    pb::MemberConfig {
        addr: m.addr,
        pid: m.pid,
        in_sync: m.in_sync,
    }
}

// ------------------------------------------------------------ role changes

/// What a replica does with the configuration it just read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// It is not a member (removed, or never registered): register, to join
    /// as a learner. A primary first steps down to idle (`step_down`).
    Join { step_down: bool },
    /// The configuration is of an older epoch than the replica's: ignore it.
    Stale,
    /// It is the primary: `start` (log the new epoch) unless it already is
    /// the primary of this epoch, in which case only the configuration is
    /// refreshed.
    Lead { start: bool },
    /// It follows `primary` as `role` (backup or learner). `step_down`: it
    /// was a primary and another replica is now. `failover`: it is an
    /// in-sync backup and has heard nothing from the primary for longer
    /// than [`GRACE`].
    Follow {
        role: Role,
        primary: String,
        step_down: bool,
        failover: bool,
    },
}

/// The step a replica `me`, now `role` at `epoch`, takes from `config`.
/// `last_heard` is when it last heard from its primary; a replica that
/// changes role or epoch in this step starts its silence afresh (no
/// failover from a silence that began under another role).
pub fn next_role(
    config: &GroupConfig,
    me: &str,
    (role, epoch): (Role, u64),
    last_heard: Instant,
    now: Instant,
) -> Step {
    let Some(position) = config.members.iter().position(|m| m.addr == me) else {
        return Step::Join {
            step_down: role == Role::Primary,
        };
    };
    if config.epoch < epoch {
        return Step::Stale;
    }
    if position == 0 {
        return Step::Lead {
            start: role != Role::Primary || epoch != config.epoch,
        };
    }
    let want = if config.members[position].in_sync {
        Role::Backup
    } else {
        Role::Learner
    };
    let unchanged = role == want && epoch == config.epoch;
    Step::Follow {
        role: want,
        primary: config.members[0].addr.clone(),
        step_down: role == Role::Primary,
        failover: want == Role::Backup
            && unchanged
            && now.saturating_duration_since(last_heard) > GRACE,
    }
}

// ------------------------------------------------------------------ upkeep

/// One change a primary makes to its group's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// An in-sync backup silent for longer than [`BACKUP_SILENCE_MAX`] is
    /// taken out (`in_sync = false`), so SYNC writes and the lease stop
    /// waiting for it.
    Drop { addr: String, silent: Duration },
    /// A learner heard from recently that has every record but
    /// [`CATCH_UP_SLACK`] is taken in.
    Admit { addr: String, acked: Lsn },
}

impl Change {
    /// Why the configuration changes (for the catalog's history and logs).
    pub fn reason(&self) -> String {
        match self {
            Change::Drop { addr, silent } => {
                format!("backup {addr} silent for {} ms", silent.as_millis())
            }
            Change::Admit { addr, acked } => format!("learner {addr} caught up at {acked}"),
        }
    }
}

/// Primary: the backups to drop and learners to admit, in member order.
/// `peers` is what this primary knows of each member (members it has no
/// entry for are left alone), `last` its last LSN.
pub fn upkeep_changes(
    config: &GroupConfig,
    peers: &BTreeMap<String, Peer>,
    last: Lsn,
    now: Instant,
) -> Vec<Change> {
    let mut changes = Vec::new();
    for m in config.members.iter().skip(1) {
        let Some(peer) = peers.get(&m.addr) else {
            continue;
        };
        let silent = now.saturating_duration_since(peer.last_ack);
        if m.in_sync && silent > BACKUP_SILENCE_MAX {
            changes.push(Change::Drop {
                addr: m.addr.clone(),
                silent,
            });
        } else if !m.in_sync && silent < ADMIT_SILENCE_MAX && peer.acked + CATCH_UP_SLACK >= last {
            changes.push(Change::Admit {
                addr: m.addr.clone(),
                acked: peer.acked,
            });
        }
    }
    changes
}

/// The members of `config` after `changes`.
pub fn apply_changes(config: &GroupConfig, changes: &[Change]) -> Vec<Member> {
    let mut members = config.members.clone();
    for change in changes {
        let (addr, in_sync) = match change {
            Change::Drop { addr, .. } => (addr, false),
            Change::Admit { addr, .. } => (addr, true),
        };
        for m in members.iter_mut().skip(1).filter(|m| &m.addr == addr) {
            m.in_sync = in_sync;
        }
    }
    members
}

// --------------------------------------------------------------- hand-over

/// Why a primary cannot hand its group over to a member.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandOverError {
    #[error("{to} is not an in-sync backup of group {group}; members: {members}")]
    NotAnInSyncBackup {
        to: String,
        group: u64,
        /// The members, for the message (`addr` or `addr (not in sync)`).
        members: String,
    },
}

/// Primary: the members once it hands the group over to `to` (to be
/// proposed at `epoch + 1`): `to` first, everyone else as they are, this
/// primary among the backups. Only an in-sync backup may take over.
pub fn hand_over(config: &GroupConfig, to: &str) -> Result<Vec<Member>, HandOverError> {
    if !config
        .members
        .iter()
        .skip(1)
        .any(|m| m.addr == to && m.in_sync)
    {
        return Err(HandOverError::NotAnInSyncBackup {
            to: to.to_string(),
            group: config.group_id,
            members: config
                .members
                .iter()
                .map(|m| {
                    format!(
                        "{}{}",
                        m.addr,
                        if m.in_sync { "" } else { " (not in sync)" }
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let mut members: Vec<Member> = Vec::with_capacity(config.members.len());
    for m in &config.members {
        if m.addr == to {
            members.insert(0, m.clone());
        } else {
            members.push(m.clone());
        }
    }
    Ok(members)
}

// ---------------------------------------------------------------- failover

/// What a peer said of itself when asked during a failover (its status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// It answers as a primary.
    pub primary: bool,
    pub epoch: u64,
    pub durable_lsn: Lsn,
    /// Milliseconds of lease it has left (0 if none).
    pub lease_ms: u64,
}

impl From<&pb::ShardStatusResponse> for PeerStatus {
    fn from(s: &pb::ShardStatusResponse) -> PeerStatus {
        PeerStatus {
            primary: s.role == Role::Primary.name(),
            epoch: s.epoch,
            durable_lsn: s.durable_lsn,
            lease_ms: s.lease_ms,
        }
    }
}

/// Whether the silent primary of `config`, by its own `status` (`None`:
/// unreachable), still serves: then there is no failover, the stream
/// reconnects.
pub fn primary_still_serving(config: &GroupConfig, status: Option<&PeerStatus>) -> bool {
    status.is_some_and(|s| s.primary && s.epoch == config.epoch && s.lease_ms > 0)
}

/// The members a failover asks by `me` consults: every in-sync backup but
/// `me`.
pub fn failover_peers<'a>(config: &'a GroupConfig, me: &'a str) -> impl Iterator<Item = &'a str> {
    config
        .members
        .iter()
        .skip(1)
        .filter(move |m| m.addr != me && m.in_sync)
        .map(|m| m.addr.as_str())
}

/// Why a replica cannot run a failover of a configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FailoverError {
    #[error("the configuration has no members")]
    NoMembers,
    #[error("{me} is not an in-sync backup of the configuration")]
    NotAnInSyncBackup { me: String },
}

/// A failover's outcome: the configuration to propose at `epoch + 1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failover {
    /// The silent primary.
    pub old: String,
    /// Who is promoted, and how far its log is durable.
    pub primary: String,
    pub durable_lsn: Lsn,
    /// `members[0]` is the new primary; in sync stay only the in-sync
    /// members that answered (and the one asking), never the old primary.
    pub members: Vec<Member>,
}

impl Failover {
    pub fn reason(&self) -> String {
        format!(
            "failover: primary {} silent; promoting {} (durable to {})",
            self.old, self.primary, self.durable_lsn
        )
    }
}

/// Whom the in-sync backup `me` (durable to `my_durable`) promotes when the
/// primary of `config` is silent, given the `answers` of the peers it
/// reached ([`failover_peers`]; others are ignored). The most up-to-date
/// reachable in-sync member wins; ties go to the smallest address, so
/// concurrent askers agree. A peer already at a newer epoch than `config`
/// does not count: it belongs to a configuration this one is not.
pub fn choose_primary(
    config: &GroupConfig,
    me: &str,
    my_durable: Lsn,
    answers: &[(String, PeerStatus)],
) -> Result<Failover, FailoverError> {
    let old = config.primary().ok_or(FailoverError::NoMembers)?;
    if !config
        .members
        .iter()
        .skip(1)
        .any(|m| m.addr == me && m.in_sync)
    {
        return Err(FailoverError::NotAnInSyncBackup { me: me.to_string() });
    }
    let mut candidates: Vec<(Lsn, &str)> = vec![(my_durable, me)];
    for peer in failover_peers(config, me) {
        if let Some((_, status)) = answers.iter().find(|(addr, _)| addr == peer)
            && status.epoch <= config.epoch
        {
            candidates.push((status.durable_lsn, peer));
        }
    }
    let reachable: Vec<&str> = candidates.iter().map(|(_, addr)| *addr).collect();
    candidates.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    let (durable_lsn, chosen) = candidates[0];
    let mut members: Vec<Member> = Vec::with_capacity(config.members.len());
    for m in &config.members {
        if m.addr == chosen {
            let mut m = m.clone();
            m.in_sync = true;
            members.insert(0, m);
        } else {
            let mut m = m.clone();
            m.in_sync = m.in_sync && reachable.contains(&m.addr.as_str()) && m.addr != old;
            members.push(m);
        }
    }
    Ok(Failover {
        old: old.to_string(),
        primary: chosen.to_string(),
        durable_lsn,
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(epoch: u64, members: &[(&str, bool)]) -> GroupConfig {
        GroupConfig {
            group_id: 1,
            version: 7,
            epoch,
            members: members
                .iter()
                .map(|(addr, in_sync)| Member {
                    addr: addr.to_string(),
                    pid: 0,
                    in_sync: *in_sync,
                })
                .collect(),
        }
    }

    fn in_sync_of(members: &[Member]) -> Vec<(&str, bool)> {
        members
            .iter()
            .map(|m| (m.addr.as_str(), m.in_sync))
            .collect()
    }

    fn status(epoch: u64, durable_lsn: Lsn) -> PeerStatus {
        PeerStatus {
            primary: false,
            epoch,
            durable_lsn,
            lease_ms: 0,
        }
    }

    fn answer(addr: &str, epoch: u64, durable_lsn: Lsn) -> (String, PeerStatus) {
        (addr.to_string(), status(epoch, durable_lsn))
    }

    const THREE: &[(&str, bool)] = &[("p", true), ("b", true), ("c", true)];

    #[test]
    fn wire_configuration_converts_both_ways() {
        let wire = pb::GroupConfig {
            group_id: 3,
            version: 9,
            epoch: 4,
            members: vec![pb::MemberConfig {
                addr: "a".into(),
                pid: 42,
                in_sync: true,
            }],
            ..Default::default()
        };
        let config = GroupConfig::from(wire.clone());
        assert_eq!((config.group_id, config.version, config.epoch), (3, 9, 4));
        let back: Vec<pb::MemberConfig> = config.members.into_iter().map(member_to_wire).collect();
        assert_eq!(back, wire.members);
    }

    #[test]
    fn choose_primary_takes_the_highest_durable_lsn() {
        let c = config(5, THREE);
        let f = choose_primary(&c, "b", 10, &[answer("c", 5, 12)]).expect("b is in sync");
        assert_eq!((f.primary.as_str(), f.durable_lsn), ("c", 12));
        assert_eq!(f.old, "p");
        // The old primary is out of sync; the asker, reachable, stays in.
        assert_eq!(
            in_sync_of(&f.members),
            vec![("c", true), ("p", false), ("b", true)]
        );
        assert_eq!(
            f.reason(),
            "failover: primary p silent; promoting c (durable to 12)"
        );
        // The asker wins when it is ahead.
        let f = choose_primary(&c, "b", 13, &[answer("c", 5, 12)]).expect("b is in sync");
        assert_eq!(f.primary, "b");
        assert_eq!(
            in_sync_of(&f.members),
            vec![("b", true), ("p", false), ("c", true)]
        );
    }

    #[test]
    fn choose_primary_breaks_equal_lsns_by_smallest_address() {
        // Both askers, each seeing the other at the same LSN, pick the same.
        let c = config(5, THREE);
        let by_b = choose_primary(&c, "b", 10, &[answer("c", 5, 10)]).expect("b");
        let by_c = choose_primary(&c, "c", 10, &[answer("b", 5, 10)]).expect("c");
        assert_eq!(by_b.primary, "b");
        assert_eq!(by_b, by_c);
    }

    #[test]
    fn choose_primary_ignores_peers_of_a_newer_epoch() {
        // c already is in epoch 6 (another failover won): it is no candidate
        // of this epoch-5 proposal and, unreachable as far as this one is
        // concerned, is proposed out of sync (the CAS then loses anyway).
        let c = config(5, THREE);
        let f = choose_primary(&c, "b", 3, &[answer("c", 6, 100)]).expect("b");
        assert_eq!(f.primary, "b");
        assert_eq!(
            in_sync_of(&f.members),
            vec![("b", true), ("p", false), ("c", false)]
        );
        // An older epoch is fine (it has not heard of epoch 5 yet).
        let f = choose_primary(&c, "b", 3, &[answer("c", 4, 100)]).expect("b");
        assert_eq!(f.primary, "c");
    }

    #[test]
    fn choose_primary_with_no_other_in_sync_backup_promotes_the_asker() {
        // Only b is in sync, the learner l does not count even if ahead.
        let c = config(2, &[("p", true), ("b", true), ("l", false)]);
        let f = choose_primary(&c, "b", 1, &[answer("l", 2, 50)]).expect("b");
        assert_eq!(f.primary, "b");
        assert_eq!(
            in_sync_of(&f.members),
            vec![("b", true), ("p", false), ("l", false)]
        );
        // An in-sync backup that did not answer is proposed out of sync.
        let f = choose_primary(&c, "b", 1, &[]).expect("b");
        assert_eq!(f.primary, "b");
        let c = config(2, THREE);
        let f = choose_primary(&c, "b", 1, &[]).expect("b");
        assert_eq!(
            in_sync_of(&f.members),
            vec![("b", true), ("p", false), ("c", false)]
        );
    }

    #[test]
    fn choose_primary_refuses_askers_that_may_not_run_one() {
        let c = config(2, &[("p", true), ("b", true), ("l", false)]);
        assert_eq!(
            choose_primary(&c, "l", 9, &[]),
            Err(FailoverError::NotAnInSyncBackup { me: "l".into() })
        );
        assert_eq!(
            choose_primary(&c, "p", 9, &[]),
            Err(FailoverError::NotAnInSyncBackup { me: "p".into() })
        );
        assert_eq!(
            choose_primary(&c, "x", 9, &[]),
            Err(FailoverError::NotAnInSyncBackup { me: "x".into() })
        );
        assert_eq!(
            choose_primary(&config(2, &[]), "b", 9, &[]),
            Err(FailoverError::NoMembers)
        );
    }

    #[test]
    fn hand_over_puts_the_target_first_and_only_an_in_sync_backup() {
        let c = config(3, &[("p", true), ("b", true), ("l", false)]);
        let members = hand_over(&c, "b").expect("b is in sync");
        assert_eq!(
            in_sync_of(&members),
            vec![("b", true), ("p", true), ("l", false)]
        );
        let err = hand_over(&c, "l").expect_err("a learner");
        assert_eq!(
            err.to_string(),
            "l is not an in-sync backup of group 1; members: p, b, l (not in sync)"
        );
        assert!(hand_over(&c, "p").is_err(), "not to itself");
        assert!(hand_over(&c, "x").is_err(), "not to a stranger");
    }

    #[test]
    fn failover_asks_only_other_in_sync_backups() {
        let c = config(2, &[("p", true), ("b", true), ("l", false), ("c", true)]);
        assert_eq!(failover_peers(&c, "b").collect::<Vec<_>>(), vec!["c"]);
    }

    #[test]
    fn a_primary_with_a_lease_at_this_epoch_still_serves() {
        let c = config(5, THREE);
        let serving = PeerStatus {
            primary: true,
            epoch: 5,
            durable_lsn: 0,
            lease_ms: 1,
        };
        assert!(primary_still_serving(&c, Some(&serving)));
        assert!(!primary_still_serving(&c, None), "unreachable");
        let no_lease = PeerStatus {
            lease_ms: 0,
            ..serving.clone()
        };
        assert!(!primary_still_serving(&c, Some(&no_lease)));
        let other_epoch = PeerStatus {
            epoch: 4,
            ..serving.clone()
        };
        assert!(!primary_still_serving(&c, Some(&other_epoch)));
        let not_primary = PeerStatus {
            primary: false,
            ..serving
        };
        assert!(!primary_still_serving(&c, Some(&not_primary)));
    }

    fn peer(acked: Lsn, last_ack: Instant) -> Peer {
        Peer {
            acked,
            last_ack,
            heard: true,
            lease_from: None,
            catch_up: None,
        }
    }

    #[test]
    fn upkeep_drops_backups_silent_past_the_bound_only() {
        let t0 = Instant::now();
        let c = config(1, THREE);
        let peers = BTreeMap::from([
            ("b".to_string(), peer(10, t0)),
            ("c".to_string(), peer(10, t0)),
        ]);
        // Silent exactly BACKUP_SILENCE_MAX: kept.
        assert_eq!(
            upkeep_changes(&c, &peers, 10, t0 + BACKUP_SILENCE_MAX),
            vec![]
        );
        let now = t0 + BACKUP_SILENCE_MAX + Duration::from_millis(1);
        let changes = upkeep_changes(&c, &peers, 10, now);
        assert_eq!(
            changes,
            vec![
                Change::Drop {
                    addr: "b".into(),
                    silent: Duration::from_millis(501)
                },
                Change::Drop {
                    addr: "c".into(),
                    silent: Duration::from_millis(501)
                },
            ]
        );
        assert_eq!(changes[1].reason(), "backup c silent for 501 ms");
        assert_eq!(
            in_sync_of(&apply_changes(&c, &changes)),
            vec![("p", true), ("b", false), ("c", false)]
        );
        // A member this primary has no entry for is left alone.
        let only_b = BTreeMap::from([("b".to_string(), peer(10, t0))]);
        assert_eq!(upkeep_changes(&c, &only_b, 10, now).len(), 1);
    }

    #[test]
    fn upkeep_admits_learners_caught_up_and_heard_recently() {
        let t0 = Instant::now();
        let c = config(1, &[("p", true), ("l", false)]);
        let peers = BTreeMap::from([("l".to_string(), peer(10, t0))]);
        let changes = upkeep_changes(&c, &peers, 10, t0 + Duration::from_millis(10));
        assert_eq!(
            changes,
            vec![Change::Admit {
                addr: "l".into(),
                acked: 10
            }]
        );
        assert_eq!(changes[0].reason(), "learner l caught up at 10");
        assert_eq!(
            in_sync_of(&apply_changes(&c, &changes)),
            vec![("p", true), ("l", true)]
        );
        // One record behind: not yet.
        assert_eq!(upkeep_changes(&c, &peers, 11, t0), vec![]);
        // Silent exactly ADMIT_SILENCE_MAX: not heard recently enough.
        assert_eq!(
            upkeep_changes(&c, &peers, 10, t0 + ADMIT_SILENCE_MAX),
            vec![]
        );
        // The primary's own entry is never changed.
        let me_only = config(1, &[("p", false)]);
        let peers = BTreeMap::from([("p".to_string(), peer(10, t0))]);
        assert_eq!(upkeep_changes(&me_only, &peers, 10, t0), vec![]);
    }

    #[test]
    fn next_role_follows_position_and_epoch() {
        let t0 = Instant::now();
        let c = config(5, &[("p", true), ("b", true), ("l", false)]);
        // Not a member: join; a primary steps down first.
        assert_eq!(
            next_role(&c, "x", (Role::Primary, 5), t0, t0),
            Step::Join { step_down: true }
        );
        assert_eq!(
            next_role(&c, "x", (Role::Idle, 0), t0, t0),
            Step::Join { step_down: false }
        );
        // An older configuration than the replica's epoch is ignored.
        assert_eq!(next_role(&c, "p", (Role::Primary, 6), t0, t0), Step::Stale);
        assert_eq!(next_role(&c, "b", (Role::Backup, 6), t0, t0), Step::Stale);
        // members[0] leads; it starts unless already primary of this epoch.
        assert_eq!(
            next_role(&c, "p", (Role::Backup, 4), t0, t0),
            Step::Lead { start: true }
        );
        assert_eq!(
            next_role(&c, "p", (Role::Primary, 4), t0, t0),
            Step::Lead { start: true }
        );
        assert_eq!(
            next_role(&c, "p", (Role::Primary, 5), t0, t0),
            Step::Lead { start: false }
        );
        // Others follow members[0], as backups if in sync, else learners.
        assert_eq!(
            next_role(&c, "b", (Role::Primary, 4), t0, t0),
            Step::Follow {
                role: Role::Backup,
                primary: "p".into(),
                step_down: true,
                failover: false
            }
        );
        assert_eq!(
            next_role(&c, "l", (Role::Learner, 5), t0, t0),
            Step::Follow {
                role: Role::Learner,
                primary: "p".into(),
                step_down: false,
                failover: false
            }
        );
    }

    #[test]
    fn next_role_asks_for_failover_after_grace_only_as_the_same_backup() {
        let t0 = Instant::now();
        let c = config(5, &[("p", true), ("b", true), ("l", false)]);
        let failover = |me: &str, now_role: (Role, u64), now: Instant| match next_role(
            &c, me, now_role, t0, now,
        ) {
            Step::Follow { failover, .. } => failover,
            other => panic!("expected to follow, got {other:?}"),
        };
        // Silent exactly GRACE: not yet.
        assert!(!failover("b", (Role::Backup, 5), t0 + GRACE));
        let late = t0 + GRACE + Duration::from_millis(1);
        assert!(failover("b", (Role::Backup, 5), late));
        // A learner never asks.
        assert!(!failover("l", (Role::Learner, 5), late));
        // A replica that becomes a backup (or moves epoch) in this step
        // starts its silence afresh.
        assert!(!failover("b", (Role::Learner, 5), late));
        assert!(!failover("b", (Role::Backup, 4), late));
    }
}
