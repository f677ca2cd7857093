//! Reads on backups: how fresh a backup can prove its data is
//! ([`Freshness`]). Pure: the clock is passed in, no IO, no locks; the
//! replica keeps one behind a lock, the stream feeds it, reads ask it.
//!
//! # Safe points
//!
//! A backup stamps every acknowledgement with its own clock (a *token*).
//! Its primary, when it builds a batch while holding its lease, attaches
//! the newest token it has received and the last LSN it has appended then:
//! a *safe point* `(lsn, as_of)`. The claim: every record any primary of
//! the group appended before `as_of` (on the backup's clock) has an LSN at
//! most `lsn`. It holds because the primary appended `lsn` after it
//! received the acknowledgement, which the backup sent at `as_of`, and
//! because no other primary could append while this one held its lease.
//! Both times are on the backup's clock, so no clock is compared across
//! machines.
//!
//! Once the backup has applied through `lsn`, its data is complete as of
//! `as_of`: a value it shows was the committed value at some moment in
//! `[as_of, now]` (a later write to the key was appended after `as_of`,
//! so it was not yet committed then). A read with bound `B` is served when
//! `now - as_of <= B`.
//!
//! # What else a read waits for or declines on
//!
//! - **Not yet committed**: a backup applies records as they arrive, before
//!   its primary knows them durable on every in-sync member; a failover
//!   could lose those. A value is shown only once its LSN is at or below
//!   the primary's commit point as last heard (the wait is bounded; the
//!   next batch brings a newer one).
//! - **Locks**: a key locked by a prepared transaction shows its last
//!   committed value, which stays current until the transaction is decided,
//!   and that is after its PREPARE was appended. The PREPARE was applied
//!   here after the safe point current at that moment (its LSN is past
//!   what was applied), so the old value is known current as of that safe
//!   point's `as_of` ([`Freshness::lock_as_of`]). When that is too old,
//!   the read declines and the caller asks the primary, which resolves.
//! - **Read-your-writes**: a session floor (the LSN of the newest commit
//!   the caller made in this group) must be applied and committed here;
//!   and since a lock here may be that very commit not yet finalized, a
//!   locked key declines a read that carries a floor.
//!
//! A new stream, a snapshot install or a role change resets everything:
//! the log may have been cut back, so earlier safe points prove nothing.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;
use trellis_types::Lsn;

/// Safe points received but not yet covered by what is applied, kept at
/// most: a backup catching up a long backlog keeps the oldest ones (which
/// it will reach first) and drops the newest, so it only proves less.
pub const SAFE_POINTS_PENDING_MAX: usize = 64;

/// Changes of the current safe point remembered, to answer
/// [`Freshness::lock_as_of`] for locks applied earlier. At one safe point
/// per heartbeat this reaches back tens of seconds; a lock older than the
/// history declines (its transaction is in doubt anyway).
pub const SAFE_POINT_HISTORY_MAX: usize = 512;

pub use trellis_types::limits::STALENESS_MAX;

/// "Every record appended before `as_of` has an LSN at most `lsn`."
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SafePoint {
    /// The primary's last appended LSN when it built the batch.
    pub lsn: Lsn,
    /// When the acknowledgement it answered left this backup.
    pub as_of: Instant,
}

/// One key as a backup read sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyAt {
    /// The LSN of the entry's write (0: absent, never written).
    pub lsn: Lsn,
    /// When the PREPARE of a transaction locking the key was applied here.
    pub locked_since: Option<Instant>,
}

/// A read a backup may serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fresh {
    /// Every value shown was the committed one at some moment since this.
    pub as_of: Instant,
    /// `now - as_of`.
    pub staleness: Duration,
    /// The LSN the backup had applied: the position it read at.
    pub read_lsn: Lsn,
}

/// Why a backup does not serve a read (the caller asks the primary).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decline {
    /// No safe point since this stream began (or everything was reset).
    NoSafePoint,
    /// The freshest provable point is older than the bound.
    TooStale {
        staleness: Duration,
        bound: Duration,
    },
    /// A value's LSN is past the primary's commit point as last heard.
    NotCommitted { lsn: Lsn, commit_lsn: Lsn },
    /// The session floor is not applied and committed here yet.
    BehindFloor { floor: Lsn, visible: Lsn },
    /// A locked key's last committed value is not provably within the
    /// bound (or a floor was given: the lock may be the caller's commit).
    Locked,
}

impl Decline {
    /// Whether the next batch may change the answer, so a short wait is
    /// worth it (the others fall back to the primary at once).
    pub fn may_pass_soon(&self) -> bool {
        matches!(
            self,
            Decline::NotCommitted { .. } | Decline::BehindFloor { .. }
        )
    }
}

impl std::fmt::Display for Decline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decline::NoSafePoint => write!(f, "no safe point from the primary yet"),
            Decline::TooStale { staleness, bound } => write!(
                f,
                "data provably fresh only as of {} ms ago, past the bound of {} ms",
                staleness.as_millis(),
                bound.as_millis()
            ),
            Decline::NotCommitted { lsn, commit_lsn } => write!(
                f,
                "record {lsn} is past the primary's commit point {commit_lsn} as last heard"
            ),
            Decline::BehindFloor { floor, visible } => write!(
                f,
                "the session's floor {floor} is past what is committed here ({visible})"
            ),
            Decline::Locked => write!(
                f,
                "a key is locked by a prepared transaction older than the bound"
            ),
        }
    }
}

/// What a backup knows of its own freshness. See the module docs.
#[derive(Debug, Default)]
pub struct Freshness {
    /// Safe points not yet covered by `applied`, oldest first.
    pending: VecDeque<SafePoint>,
    /// The newest safe point covered by `applied`.
    current: Option<SafePoint>,
    /// `(changed_at, as_of)` each time `current` changed, oldest first.
    history: VecDeque<(Instant, Instant)>,
    /// The primary's commit point as last heard.
    commit_lsn: Lsn,
    /// The last LSN applied here.
    applied: Lsn,
}

impl Freshness {
    /// Knows nothing: serves no read until a safe point is covered.
    pub fn new() -> Freshness {
        Freshness::default()
    }

    /// Forgets everything (a new stream, a snapshot, a role change).
    pub fn reset(&mut self) {
        *self = Freshness::default();
    }

    /// A batch was applied at `now`: the log ends at `applied`, the primary
    /// said its commit point is `commit_lsn`, and perhaps sent a safe point.
    pub fn on_batch(
        &mut self,
        now: Instant,
        applied: Lsn,
        commit_lsn: Lsn,
        safe: Option<SafePoint>,
    ) {
        self.applied = applied;
        self.commit_lsn = self.commit_lsn.max(commit_lsn);
        if let Some(safe) = safe {
            let newer = self
                .pending
                .back()
                .or(self.current.as_ref())
                .is_none_or(|last| safe.as_of > last.as_of);
            if newer && self.pending.len() < SAFE_POINTS_PENDING_MAX {
                self.pending.push_back(safe);
            }
        }
        let mut promoted = None;
        while self.pending.front().is_some_and(|p| p.lsn <= applied) {
            promoted = self.pending.pop_front();
        }
        if let Some(point) = promoted {
            self.current = Some(point);
            self.history.push_back((now, point.as_of));
            while self.history.len() > SAFE_POINT_HISTORY_MAX {
                self.history.pop_front();
            }
        }
    }

    /// The newest provable point, if any.
    pub fn as_of(&self) -> Option<Instant> {
        self.current.map(|c| c.as_of)
    }

    /// The primary's commit point as last heard.
    pub fn commit_lsn(&self) -> Lsn {
        self.commit_lsn
    }

    /// As of when the last committed value under a lock whose PREPARE was
    /// applied here at `since` is known current: the `as_of` of the safe
    /// point that was current strictly before `since` (strictly, so that a
    /// clock that did not move between two batches never credits a lock
    /// with the safe point of its own batch). `None` when the history does
    /// not reach back that far.
    pub fn lock_as_of(&self, since: Instant) -> Option<Instant> {
        self.history
            .iter()
            .rev()
            .find(|(changed_at, _)| *changed_at < since)
            .map(|(_, as_of)| *as_of)
    }

    /// Whether a read of `keys` with staleness bound `bound` and session
    /// floor `floor` (an LSN; 0 for none) may be served at `now`.
    pub fn check(
        &self,
        now: Instant,
        bound: Duration,
        floor: Lsn,
        keys: &[KeyAt],
    ) -> Result<Fresh, Decline> {
        let current = self.current.ok_or(Decline::NoSafePoint)?;
        let visible = self.commit_lsn.min(self.applied);
        if floor > visible {
            return Err(Decline::BehindFloor { floor, visible });
        }
        let mut as_of = current.as_of;
        for key in keys {
            if key.lsn > self.commit_lsn {
                return Err(Decline::NotCommitted {
                    lsn: key.lsn,
                    commit_lsn: self.commit_lsn,
                });
            }
            if let Some(since) = key.locked_since {
                if floor > 0 {
                    return Err(Decline::Locked);
                }
                match self.lock_as_of(since) {
                    Some(at) => as_of = as_of.min(at),
                    None => return Err(Decline::Locked),
                }
            }
        }
        let current_staleness = now.saturating_duration_since(current.as_of);
        if current_staleness > bound {
            return Err(Decline::TooStale {
                staleness: current_staleness,
                bound,
            });
        }
        let staleness = now.saturating_duration_since(as_of);
        if staleness > bound {
            return Err(Decline::Locked);
        }
        Ok(Fresh {
            as_of,
            staleness,
            read_lsn: self.applied,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn key(lsn: Lsn) -> KeyAt {
        KeyAt {
            lsn,
            locked_since: None,
        }
    }

    #[test]
    fn nothing_is_served_before_a_safe_point_is_covered_by_what_is_applied() {
        let t0 = Instant::now();
        let mut f = Freshness::new();
        assert_eq!(
            f.check(t0, ms(500), 0, &[key(0)]),
            Err(Decline::NoSafePoint)
        );
        // A safe point past what is applied proves nothing yet.
        f.on_batch(
            t0 + ms(10),
            5,
            5,
            Some(SafePoint {
                lsn: 9,
                as_of: t0 + ms(5),
            }),
        );
        assert_eq!(f.as_of(), None);
        assert_eq!(
            f.check(t0 + ms(10), ms(500), 0, &[key(3)]),
            Err(Decline::NoSafePoint)
        );
        // Applied through it: served, fresh as of the token.
        f.on_batch(t0 + ms(20), 9, 9, None);
        let fresh = f.check(t0 + ms(20), ms(500), 0, &[key(9)]).expect("fresh");
        assert_eq!(fresh.as_of, t0 + ms(5));
        assert_eq!(fresh.staleness, ms(15));
        assert_eq!(fresh.read_lsn, 9);
    }

    #[test]
    fn a_backup_cut_from_its_primary_stops_serving_once_past_the_bound() {
        let t0 = Instant::now();
        let mut f = Freshness::new();
        f.on_batch(t0, 4, 4, Some(SafePoint { lsn: 4, as_of: t0 }));
        assert!(f.check(t0 + ms(500), ms(500), 0, &[key(4)]).is_ok());
        assert_eq!(
            f.check(t0 + ms(501), ms(500), 0, &[key(4)]),
            Err(Decline::TooStale {
                staleness: ms(501),
                bound: ms(500)
            })
        );
        // A tighter bound declines sooner.
        assert!(f.check(t0 + ms(101), ms(100), 0, &[key(4)]).is_err());
    }

    #[test]
    fn values_past_the_primarys_commit_point_wait_for_it() {
        let t0 = Instant::now();
        let mut f = Freshness::new();
        // Applied through 8, the primary's commit point is 6.
        f.on_batch(t0, 8, 6, Some(SafePoint { lsn: 8, as_of: t0 }));
        assert!(f.check(t0, ms(500), 0, &[key(6)]).is_ok());
        let declined = f.check(t0, ms(500), 0, &[key(7)]).expect_err("not yet");
        assert_eq!(
            declined,
            Decline::NotCommitted {
                lsn: 7,
                commit_lsn: 6
            }
        );
        assert!(declined.may_pass_soon());
        f.on_batch(t0 + ms(1), 8, 8, None);
        assert!(f.check(t0 + ms(1), ms(500), 0, &[key(7)]).is_ok());
    }

    #[test]
    fn a_locked_key_is_as_fresh_as_the_safe_point_before_its_prepare() {
        let t0 = Instant::now();
        let mut f = Freshness::new();
        f.on_batch(t0 + ms(10), 3, 3, Some(SafePoint { lsn: 3, as_of: t0 }));
        // A PREPARE applied at t0+20, then newer safe points.
        let locked = KeyAt {
            lsn: 2,
            locked_since: Some(t0 + ms(20)),
        };
        f.on_batch(
            t0 + ms(30),
            5,
            5,
            Some(SafePoint {
                lsn: 5,
                as_of: t0 + ms(25),
            }),
        );
        // Unlocked keys are fresh as of t0+25, the locked one as of t0.
        let fresh = f.check(t0 + ms(40), ms(100), 0, &[key(4)]).expect("fresh");
        assert_eq!(fresh.as_of, t0 + ms(25));
        let fresh = f
            .check(t0 + ms(40), ms(100), 0, &[key(4), locked])
            .expect("fresh");
        assert_eq!(fresh.as_of, t0);
        // Past the bound for the lock only: declined as locked.
        assert_eq!(
            f.check(t0 + ms(101), ms(100), 0, &[locked]),
            Err(Decline::Locked)
        );
        // A PREPARE applied at the very instant a safe point became current
        // is not credited with it.
        let same_instant = KeyAt {
            lsn: 2,
            locked_since: Some(t0 + ms(30)),
        };
        let fresh = f
            .check(t0 + ms(40), ms(100), 0, &[same_instant])
            .expect("fresh");
        assert_eq!(fresh.as_of, t0);
        // Older than the history: declined.
        let ancient = KeyAt {
            lsn: 2,
            locked_since: Some(t0),
        };
        assert_eq!(
            f.check(t0 + ms(40), ms(100), 0, &[ancient]),
            Err(Decline::Locked)
        );
    }

    #[test]
    fn a_session_floor_waits_until_applied_and_committed_and_declines_locks() {
        let t0 = Instant::now();
        let mut f = Freshness::new();
        f.on_batch(t0, 10, 7, Some(SafePoint { lsn: 10, as_of: t0 }));
        assert!(f.check(t0, ms(500), 7, &[key(3)]).is_ok());
        let declined = f.check(t0, ms(500), 8, &[key(3)]).expect_err("floor");
        assert_eq!(
            declined,
            Decline::BehindFloor {
                floor: 8,
                visible: 7
            }
        );
        assert!(declined.may_pass_soon());
        f.on_batch(t0 + ms(1), 10, 10, None);
        assert!(f.check(t0 + ms(1), ms(500), 8, &[key(3)]).is_ok());
        let locked = KeyAt {
            lsn: 3,
            locked_since: Some(t0 + ms(2)),
        };
        assert_eq!(
            f.check(t0 + ms(3), ms(500), 8, &[locked]),
            Err(Decline::Locked)
        );
        assert!(f.check(t0 + ms(3), ms(500), 0, &[locked]).is_ok());
    }

    #[test]
    fn safe_points_only_move_forward_and_a_reset_forgets_them() {
        let t0 = Instant::now();
        let mut f = Freshness::new();
        f.on_batch(
            t0,
            5,
            5,
            Some(SafePoint {
                lsn: 5,
                as_of: t0 + ms(10),
            }),
        );
        // An older token (a reordered or repeated echo) changes nothing.
        f.on_batch(t0 + ms(1), 5, 5, Some(SafePoint { lsn: 5, as_of: t0 }));
        assert_eq!(f.as_of(), Some(t0 + ms(10)));
        // Pending points past what is applied are bounded.
        for i in 0..(SAFE_POINTS_PENDING_MAX as u64 + 10) {
            f.on_batch(
                t0 + ms(2),
                5,
                5,
                Some(SafePoint {
                    lsn: 100 + i,
                    as_of: t0 + ms(20 + i),
                }),
            );
        }
        assert_eq!(f.pending.len(), SAFE_POINTS_PENDING_MAX);
        f.on_batch(t0 + ms(3), 1_000, 1_000, None);
        assert_eq!(
            f.as_of(),
            Some(t0 + ms(20 + SAFE_POINTS_PENDING_MAX as u64 - 1))
        );
        f.reset();
        assert_eq!(f.as_of(), None);
        assert_eq!(f.commit_lsn(), 0);
    }
}
