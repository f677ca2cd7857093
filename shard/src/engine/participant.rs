//! The participant's work: reads and scans, one-phase commits, and the 2PC
//! steps (prepare, the anchor's decide and resolve, finalize, forget,
//! lookup), plus read validation and holds. The rules live in
//! [`crate::state`] (`check_*`); this module only logs what they say and
//! waits for durability.

use std::time::Duration;

use tokio::time::Instant;
use trellis_types::{GroupId, Key, MapEpoch, SlotSet, TxnId, Version, slot_of};

use super::{Shard, ShardError};
use crate::freshness::{Fresh, KeyAt};
use crate::metrics::READ_STALE_BACKUP;
use crate::ownership::{OwnershipError, SlotState};
use crate::record::{
    CommitLocalRec, DecideRec, FinalizeRec, ForgetRec, PrepareRec, ReadRec, Record, WriteRec,
};
use crate::repl::{Level, Role};
use crate::state::{Check, Decide, Fence, KeyView, Outcome, Refused, Resolve, TxnRecord};

/// The anchor's answer to a resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// A decision stands (recorded, remembered, or presumed ABORT now).
    Decided(TxnRecord),
    /// Prepared here, nothing decided: committed iff every one of
    /// `participants` prepared it. The resolver fences and decides.
    Pending { participants: Vec<GroupId> },
}

/// The anchor's answer to a decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decided {
    /// The decision that stands (true = commit), durable.
    Stands(bool),
    /// Nothing recorded: fence first ([`Decide::FenceFirst`]).
    FenceFirst,
}

/// A participant's answer to a fence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fenced {
    /// Prepared here (durable).
    Prepared { version: Version },
    /// Finalized here, before or by this fence (ABORT).
    Finalized(Outcome),
}

/// Longest a backup's STALE read waits for the primary's commit point or
/// the session floor to reach it (two safe points) before declining.
pub const BACKUP_READ_WAIT_MAX: Duration = crate::repl::SAFE_POINT_INTERVAL.saturating_mul(2);

/// A prepare's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vote {
    /// Prepared; if it commits, its writes here get this version.
    Yes {
        /// The version (of the PREPARE record) its writes get.
        version: Version,
        /// The asking execution's PREPARE made the prepared state here.
        owner: bool,
    },
    /// Refused: why (a conflict or a lock), and on which keys.
    No(Refused),
    /// Already finalized here: the outcome.
    Finalized(Outcome),
}

impl Shard {
    /// Reads keys: the committed value and version of each, and the write
    /// lock of a prepared transaction if one holds the key. Waits until
    /// what it returns is durable.
    pub async fn read(&self, keys: &[Key]) -> Result<Vec<KeyView>, ShardError> {
        let views: Vec<KeyView> = keys.iter().map(|k| self.state.view(k)).collect();
        self.metrics.reads.add(keys.len() as u64);
        let newest = views
            .iter()
            .filter_map(|v| v.entry.as_ref().map(|e| e.version()))
            .max()
            .unwrap_or(0);
        // Durability is by LSN: the smallest one whose version reaches it.
        let lsn = self.state.lsn_of(newest);
        if lsn > self.repl.marks().sync {
            self.metrics.read_lock_waits.inc();
        }
        // Never show a value a failover could lose.
        self.settle(lsn, Level::Sync).await?;
        Ok(views)
    }

    /// Backup: a bounded-staleness read ([`crate::freshness`]): the
    /// committed value of each key, if this replica can prove every one was
    /// the committed value at some moment within `bound` of now, and has
    /// applied and committed the session floor `floor_version` (0: none).
    /// Waits at most [`BACKUP_READ_WAIT_MAX`] for the primary's commit point
    /// or the floor to come; otherwise, and at once for anything else,
    /// declines with [`ShardError::NotFresh`].
    pub async fn read_on_backup(
        &self,
        keys: &[Key],
        bound: Duration,
        floor_version: Version,
    ) -> Result<(Vec<KeyView>, Fresh), ShardError> {
        let (role, epoch) = self.repl.role();
        if role != Role::Backup {
            return Err(ShardError::NotPrimary {
                group: self.config.group_id,
                role: role.name(),
                epoch,
            });
        }
        let floor = if floor_version == 0 {
            0
        } else {
            self.state.lsn_of(floor_version)
        };
        let mut changes = self.repl.subscribe_fresh();
        let until = Instant::now() + BACKUP_READ_WAIT_MAX;
        loop {
            changes.borrow_and_update();
            let views: Vec<KeyView> = keys.iter().map(|k| self.state.view(k)).collect();
            let at: Vec<KeyAt> = views
                .iter()
                .map(|v| KeyAt {
                    lsn: v
                        .entry
                        .as_ref()
                        .map_or(0, |e| self.state.lsn_of(e.version())),
                    locked_since: v.lock.as_ref().map(|l| l.since),
                })
                .collect();
            match self.repl.check_fresh(Instant::now(), bound, floor, &at) {
                Ok(fresh) => {
                    self.metrics.reads.add(keys.len() as u64);
                    self.metrics.reads_by[READ_STALE_BACKUP].inc();
                    self.metrics
                        .staleness_seconds
                        .observe(fresh.staleness.as_secs_f64());
                    return Ok((views, fresh));
                }
                Err(decline) if decline.may_pass_soon() && Instant::now() < until => {
                    // The next batch may bring it; a timeout or a closed
                    // channel just reads again and then declines.
                    let _ = tokio::time::timeout_at(until, changes.changed()).await;
                }
                Err(decline) => {
                    self.metrics.stale_declines.inc();
                    return Err(ShardError::NotFresh(decline.to_string()));
                }
            }
        }
    }

    /// The keys a scan for `prefix` returns, in key order, at most `limit`,
    /// and whether more matched. Scans the whole index: O(keys).
    ///
    /// Only keys of slots served here count: the index also holds entries
    /// being copied in (importing slots) and, until a release, entries of
    /// slots the map took. A matching key in a frozen slot refuses the scan
    /// (`SlotMoving`, retried after the hand-over), as a read of it would.
    pub fn scan_keys(&self, prefix: &[u8], limit: usize) -> Result<(Vec<Key>, bool), ShardError> {
        let mut keys: Vec<Key> = {
            let ownership = self.state.serving();
            let mut keys = Vec::new();
            let candidates = self
                .state
                .index
                .iter()
                .filter(|e| e.key().starts_with(prefix) && e.value().value().is_some())
                .map(|e| e.key().to_vec())
                .chain(
                    self.state
                        .locks
                        .iter()
                        .filter(|l| l.key().starts_with(prefix) && l.writer.is_some())
                        .map(|l| l.key().to_vec()),
                );
            for key in candidates {
                match ownership.state(slot_of(&key)) {
                    SlotState::Owned => keys.push(key),
                    SlotState::Frozen { to } => {
                        return Err(ShardError::SlotMoving(OwnershipError::Moving {
                            slot: slot_of(&key),
                            to,
                        }));
                    }
                    SlotState::NotOwned | SlotState::Importing { .. } => {}
                }
            }
            keys
        };
        keys.sort_unstable();
        keys.dedup();
        let truncated = keys.len() > limit;
        keys.truncate(limit);
        Ok((keys, truncated))
    }

    /// Keys starting with `prefix`, in key order, at most `limit`, read on
    /// the primary ([`Shard::scan_keys`], [`Shard::read`]). Returns whether
    /// more matched.
    pub async fn scan(
        &self,
        prefix: &[u8],
        limit: usize,
    ) -> Result<(Vec<(Key, KeyView)>, bool), ShardError> {
        let (keys, truncated) = self.scan_keys(prefix, limit)?;
        let views = self.read(&keys).await?;
        Ok((keys.into_iter().zip(views).collect(), truncated))
    }

    /// One-phase commit, routed with `map_epoch`: check the keys' slots
    /// are served here, validate every read version, refuse locked keys,
    /// append one record, apply, answer once durable. Idempotent by `txn`.
    pub async fn commit_local(
        &self,
        map_epoch: MapEpoch,
        txn: TxnId,
        reads: Vec<ReadRec>,
        writes: Vec<WriteRec>,
        level: Level,
    ) -> Result<Outcome, ShardError> {
        self.wal().reserve().await?;
        let outcome = {
            let mut guard = self.state.lock_at(Instant::now());
            match guard.check_commit_local(map_epoch, &txn, &reads, &writes)? {
                Check::Proceed => {
                    let record = Record::CommitLocal(CommitLocalRec {
                        txn_id: txn.as_bytes().to_vec(),
                        writes,
                    });
                    self.log(&mut guard, &record)?;
                    self.metrics.commits_local.inc();
                    guard
                        .outcome(&txn)
                        .cloned()
                        .expect("apply records the outcome")
                }
                Check::Done(outcome) => outcome,
                Check::Refused(refused) => {
                    self.count_refusal(&refused);
                    guard.remember_refusal(txn, refused.clone());
                    Outcome::Aborted {
                        refused: Box::new(refused),
                        lsn: 0,
                    }
                }
                Check::NotServed(not_served) => return Err(self.not_served(not_served)),
                Check::AlreadyPrepared { .. } => {
                    unreachable!("commit_local never answers AlreadyPrepared")
                }
            }
        };
        self.after_write();
        self.settle(outcome.lsn(), level).await?;
        Ok(outcome)
    }

    fn count_refusal(&self, refused: &Refused) {
        let counter = match refused.reason {
            crate::state::Refusal::Conflict => &self.metrics.refusals_conflict,
            _ => &self.metrics.refusals_locked,
        };
        counter.inc();
    }

    /// 2PC prepare, routed with `map_epoch`: check ownership, validate,
    /// lock, append a PREPARE record, vote YES once it is durable.
    /// Idempotent by transaction id.
    pub async fn prepare(
        &self,
        map_epoch: MapEpoch,
        rec: PrepareRec,
        level: Level,
    ) -> Result<Vote, ShardError> {
        let txn = TxnId::from_bytes(&rec.txn_id).map_err(|e| ShardError::Invalid(e.to_string()))?;
        let exec = rec.exec;
        self.wal().reserve().await?;
        let (vote, lsn) = {
            let mut guard = self.state.lock_at(Instant::now());
            match guard.check_prepare(map_epoch, &txn, &rec.reads, &rec.writes) {
                Check::Proceed => {
                    let lsn = self.log(&mut guard, &Record::Prepare(rec))?;
                    self.metrics.prepares.inc();
                    self.metrics
                        .prepared
                        .set(guard.core().prepared.len() as u64);
                    let version = guard
                        .prepared(&txn)
                        .expect("apply records the prepared transaction")
                        .version;
                    let owner = exec != 0;
                    (Vote::Yes { version, owner }, lsn)
                }
                Check::AlreadyPrepared {
                    lsn,
                    version,
                    exec: first,
                } => {
                    let owner = exec != 0 && first == exec;
                    (Vote::Yes { version, owner }, lsn)
                }
                Check::NotServed(not_served) => return Err(self.not_served(not_served)),
                Check::Done(outcome) => {
                    let lsn = outcome.lsn();
                    (Vote::Finalized(outcome), lsn)
                }
                Check::Refused(refused) => {
                    self.count_refusal(&refused);
                    (Vote::No(refused), 0)
                }
            }
        };
        self.settle(lsn, level.max(Level::Semi)).await?;
        Ok(vote)
    }

    /// Records the decision at the anchor unless one stands already (the
    /// rules: [`StateGuard::check_decide`]); returns the decision that
    /// stands (true = commit) once durable.
    ///
    /// [`StateGuard::check_decide`]: crate::state::StateGuard::check_decide
    pub async fn decide(
        &self,
        txn: TxnId,
        commit: bool,
        participants: Vec<GroupId>,
        level: Level,
        exec: u64,
        fenced: bool,
    ) -> Result<Decided, ShardError> {
        self.wal().reserve().await?;
        let (commit, lsn) = {
            let mut guard = self.state.lock();
            match guard.check_decide(&txn, commit, exec, fenced) {
                Ok(Decide::FenceFirst) => return Ok(Decided::FenceFirst),
                Ok(Decide::Stands { commit, lsn }) => (commit, lsn),
                Ok(Decide::Record { commit }) => {
                    let record = Record::Decide(DecideRec {
                        txn_id: txn.as_bytes().to_vec(),
                        commit,
                        participants,
                    });
                    let lsn = self.log(&mut guard, &record)?;
                    self.metrics.decisions.inc();
                    (commit, lsn)
                }
                Err(refused) => return Err(ShardError::Busy(refused.message)),
            }
        };
        self.settle(lsn, level.max(Level::Semi)).await?;
        Ok(Decided::Stands(commit))
    }

    /// The anchor's answer for an in-doubt transaction: the recorded
    /// decision, or a durable ABORT if none exists (presumed abort).
    ///
    /// The anchor is always a participant (it owns the smallest written
    /// key), so once its record is forgotten its own finalized outcome still
    /// answers: a committed transaction is never presumed aborted while this
    /// replica remembers it ([`crate::state::OUTCOMES_MAX`]).
    ///
    /// Prepared here with nothing decided is [`Resolved::Pending`]: it may
    /// have committed in parallel. The check and a presumed ABORT are one
    /// step under the state lock, so a PREPARE can never slip in between.
    pub async fn resolve(&self, txn: TxnId) -> Result<Resolved, ShardError> {
        self.wal().reserve().await?;
        // As before parallel commit: a remembered COMMIT is answered once
        // durable on every in-sync member, an ABORT (and a pending PREPARE)
        // once on at least one backup, as a decide is.
        let (answer, lsn, level) = {
            let mut guard = self.state.lock();
            match guard.check_resolve(&txn) {
                Resolve::Committed { lsn } => (
                    Resolved::Decided(TxnRecord {
                        commit: true,
                        participants: Vec::new(),
                        lsn,
                    }),
                    lsn,
                    Level::Sync,
                ),
                Resolve::Pending { lsn, participants } => {
                    (Resolved::Pending { participants }, lsn, Level::Semi)
                }
                Resolve::PresumeAbort => {
                    let lsn = match guard.check_decide(&txn, false, 0, false) {
                        Ok(Decide::Stands { lsn, .. }) => lsn,
                        Ok(Decide::Record { commit }) => {
                            let record = Record::Decide(DecideRec {
                                txn_id: txn.as_bytes().to_vec(),
                                commit,
                                participants: Vec::new(),
                            });
                            let lsn = self.log(&mut guard, &record)?;
                            self.metrics.decisions.inc();
                            lsn
                        }
                        Ok(Decide::FenceFirst) => {
                            unreachable!("presumed abort only for a transaction not prepared here")
                        }
                        Err(refused) => return Err(ShardError::Busy(refused.message)),
                    };
                    let decided = guard
                        .record(&txn)
                        .map(|r| r.commit)
                        .or_else(|| {
                            guard
                                .outcome(&txn)
                                .map(|o| matches!(o, Outcome::Committed { .. }))
                        })
                        .unwrap_or(false);
                    (
                        Resolved::Decided(guard.resolved(&txn, decided)),
                        lsn,
                        Level::Semi,
                    )
                }
            }
        };
        self.settle(lsn, level).await?;
        Ok(answer)
    }

    /// For a resolver of a pending parallel commit: whether `txn` is
    /// prepared here, or its outcome here; unknown here, it is aborted here
    /// for good (a FINALIZE ABORT), so its PREPARE can never succeed here
    /// later and an ABORT decision cannot contradict a parallel commit.
    pub async fn fence(&self, txn: TxnId) -> Result<Fenced, ShardError> {
        self.wal().reserve().await?;
        let (answer, lsn) = {
            let mut guard = self.state.lock();
            match guard.check_fence(&txn) {
                Fence::Prepared { lsn, version } => (Fenced::Prepared { version }, lsn),
                Fence::Done(outcome) => {
                    let lsn = outcome.lsn();
                    (Fenced::Finalized(outcome), lsn)
                }
                Fence::Record => {
                    let record = Record::Finalize(FinalizeRec {
                        txn_id: txn.as_bytes().to_vec(),
                        commit: false,
                    });
                    self.log(&mut guard, &record)?;
                    self.metrics.finalizes.inc();
                    let outcome = guard
                        .outcome(&txn)
                        .cloned()
                        .expect("a FINALIZE ABORT is remembered");
                    let lsn = outcome.lsn();
                    (Fenced::Finalized(outcome), lsn)
                }
            }
        };
        self.settle(lsn, Level::Semi).await?;
        Ok(answer)
    }

    /// Applies (commit) or discards (abort) a prepared transaction and
    /// releases its locks. `None` when nothing is known of it here (never
    /// prepared, or forgotten long ago) and the decision is commit.
    pub async fn finalize(&self, txn: TxnId, commit: bool) -> Result<Option<Outcome>, ShardError> {
        let mut outcomes = self.finalize_many(&[(txn, commit)]).await?;
        Ok(outcomes.pop().expect("one outcome per transaction"))
    }

    /// [`Shard::finalize`] for many transactions at once: one pass under the
    /// state lock and one wait for durability.
    pub async fn finalize_many(
        &self,
        txns: &[(TxnId, bool)],
    ) -> Result<Vec<Option<Outcome>>, ShardError> {
        self.wal().reserve().await?;
        let outcomes: Vec<Option<Outcome>> = {
            let mut guard = self.state.lock();
            let mut out = Vec::with_capacity(txns.len());
            for (txn, commit) in txns {
                let outcome = if let Some(outcome) = guard.outcome(txn).cloned() {
                    Some(outcome)
                } else if guard.prepared(txn).is_some() || !commit {
                    let since = guard.prepared(txn).map(|p| p.since);
                    let record = Record::Finalize(FinalizeRec {
                        txn_id: txn.as_bytes().to_vec(),
                        commit: *commit,
                    });
                    self.log(&mut guard, &record)?;
                    self.metrics.finalizes.inc();
                    if let Some(since) = since {
                        self.metrics
                            .prepared_hold_seconds
                            .observe(since.elapsed().as_secs_f64());
                    }
                    guard.outcome(txn).cloned()
                } else {
                    None
                };
                out.push(outcome);
            }
            self.metrics
                .prepared
                .set(guard.core().prepared.len() as u64);
            out
        };
        self.after_write();
        let newest = outcomes
            .iter()
            .flatten()
            .map(Outcome::lsn)
            .max()
            .unwrap_or(0);
        // Unurged: FINALIZE is appended lazily and its sender (the
        // finalizer, a resolver) needs it durable only before forgetting.
        self.settle_unurged(newest, Level::Semi).await?;
        Ok(outcomes)
    }

    /// Drops transaction records (every participant has finalized).
    pub async fn forget(&self, txns: Vec<TxnId>) -> Result<u32, ShardError> {
        self.wal().reserve().await?;
        let (count, lsn) = {
            let mut guard = self.state.lock();
            let known: Vec<TxnId> = txns
                .into_iter()
                .filter(|t| guard.record(t).is_some())
                .collect();
            if known.is_empty() {
                return Ok(0);
            }
            let record = Record::Forget(ForgetRec {
                txn_ids: known.iter().map(|t| t.as_bytes().to_vec()).collect(),
            });
            (known.len() as u32, self.log(&mut guard, &record)?)
        };
        self.settle_unurged(lsn, Level::Local).await?;
        Ok(count)
    }

    /// Prepared transactions at least `older_than` old, oldest first; with
    /// `slots`, only those that read or write a key in them.
    pub fn list_prepared(
        &self,
        older_than: Duration,
        limit: usize,
        slots: Option<&SlotSet>,
    ) -> Vec<(TxnId, PrepareRec, Duration)> {
        let now = Instant::now();
        let guard = self.state.lock();
        let mut out: Vec<_> = guard
            .core()
            .prepared
            .iter()
            .filter(|(_, p)| slots.is_none_or(|slots| p.rec.touches(slots)))
            .map(|(txn, p)| (*txn, p.rec.clone(), now.saturating_duration_since(p.since)))
            .filter(|(_, _, age)| *age >= older_than)
            .collect();
        out.sort_by_key(|t| std::cmp::Reverse(t.2));
        out.truncate(limit);
        out
    }

    /// At most `limit` of the transaction records this group anchors
    /// (decided, not yet forgotten), oldest LSN first.
    pub fn list_records(&self, limit: usize) -> Vec<(TxnId, TxnRecord)> {
        let guard = self.state.lock();
        let mut out: Vec<(TxnId, TxnRecord)> = guard
            .core()
            .records
            .iter()
            .map(|(txn, record)| (*txn, record.clone()))
            .collect();
        out.sort_by_key(|(_, record)| record.lsn);
        out.truncate(limit);
        out
    }

    /// What this replica knows of `txn`: (recorded decision as anchor,
    /// remembered outcome, prepared here). Waits until what it reports is
    /// durable.
    pub async fn lookup(
        &self,
        txn: TxnId,
    ) -> Result<(Option<bool>, Option<bool>, Option<PrepareRec>), ShardError> {
        let (record, outcome, prepared, lsn) = {
            let guard = self.state.lock();
            let record = guard.record(&txn).map(|r| (r.commit, r.lsn));
            let outcome = guard
                .outcome(&txn)
                .map(|o| (matches!(o, Outcome::Committed { .. }), o.lsn()));
            let prepared = guard.prepared(&txn).map(|p| (p.lsn, p.rec.clone()));
            let lsn = [
                record.map(|r| r.1),
                outcome.map(|o| o.1),
                prepared.as_ref().map(|p| p.0),
            ]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(0);
            (
                record.map(|r| r.0),
                outcome.map(|o| o.0),
                prepared.map(|p| p.1),
                lsn,
            )
        };
        self.settle(lsn, Level::Sync).await?;
        Ok((record, outcome, prepared))
    }

    /// Read-only validation: every read version is current and not
    /// write-locked by another transaction. Logs nothing.
    ///
    /// With `hold`, the reads are also held against writers until
    /// [`Shard::release_holds`] or [`trellis_types::limits::READ_HOLD_MAX`],
    /// so a coordinator validating at several groups gets one instant at
    /// which every read was current.
    ///
    /// Ownership is checked again under the lock (routed with
    /// `map_epoch`): a hold taken after a freeze would outlive the drain.
    pub fn validate_reads(
        &self,
        map_epoch: MapEpoch,
        txn: TxnId,
        reads: &[ReadRec],
        hold: bool,
    ) -> Result<Result<(), Refused>, ShardError> {
        let now = Instant::now();
        let mut guard = self.state.lock_at(now);
        guard
            .check_serve(map_epoch, reads.iter().map(|r| r.key.as_slice()))
            .map_err(|n| self.not_served(n))?;
        Ok(if hold {
            guard.hold_reads(&txn, reads, now)
        } else {
            guard.validate(&txn, reads, &[])
        })
    }

    /// Drops the read holds `txn` took on `keys`; whether they were all
    /// still held (see [`crate::state::StateGuard::release_holds`]).
    pub fn release_holds(&self, txn: TxnId, keys: &[Key]) -> bool {
        self.state.lock_at(Instant::now()).release_holds(&txn, keys)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::test_util::{config, put, txn, value_of};
    use super::super::{Decided, Fenced, Resolved, Shard, Vote};
    use crate::metrics::Metrics;
    use crate::record::{PrepareRec, ReadRec};
    use crate::repl::Level;
    use crate::state::Outcome;

    #[tokio::test]
    async fn commit_local_is_idempotent_and_conflicts_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = Shard::open(config(dir.path()), Arc::new(Metrics::default())).expect("open");
        let first = shard
            .commit_local(1, txn(1), vec![], vec![put("a", "1")], Level::Sync)
            .await
            .expect("commit");
        let again = shard
            .commit_local(1, txn(1), vec![], vec![put("a", "1")], Level::Sync)
            .await
            .expect("retry");
        assert_eq!(first, again);
        assert_eq!(shard.status().last_lsn, 1, "a retry logs nothing");
        let stale = vec![ReadRec {
            key: b"a".to_vec(),
            version: 0,
        }];
        match shard
            .commit_local(1, txn(2), stale, vec![put("a", "2")], Level::Sync)
            .await
            .expect("commit")
        {
            Outcome::Aborted { refused, .. } => assert_eq!(refused.keys, vec![b"a".to_vec()]),
            other => panic!("stale read committed: {other:?}"),
        }
        shard.shutdown();
        drop(shard);
        // After a restart the retry still returns the first outcome.
        let shard = Shard::open(config(dir.path()), Arc::new(Metrics::default())).expect("reopen");
        let after = shard
            .commit_local(1, txn(1), vec![], vec![put("a", "1")], Level::Sync)
            .await
            .expect("retry");
        assert_eq!(first, after);
    }

    /// Simulator seed 1035: the coordinator's decide (COMMIT) reached the
    /// anchor late, after a sweeper had resolved the transaction (presumed
    /// ABORT), finalized it everywhere and forgotten its record. The late
    /// decide must answer ABORT, not record a COMMIT whose writes the
    /// participants already discarded — and a late decide after a
    /// committed transaction was forgotten must answer COMMIT.

    #[tokio::test]
    async fn a_late_decide_after_forget_keeps_the_finalized_decision() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = Shard::open(config(dir.path()), Arc::new(Metrics::default())).expect("open");
        for (n, first) in [(21u32, false), (22, true)] {
            let rec = PrepareRec {
                txn_id: txn(n).0.to_vec(),
                reads: vec![],
                writes: vec![put(&format!("late{n}"), "v")],
                anchor: 1,
                participants: vec![1, 2],
                exec: 7,
            };
            shard.prepare(1, rec, Level::Sync).await.expect("prepare");
            if first {
                assert_eq!(
                    shard
                        .decide(txn(n), true, vec![1, 2], Level::Sync, 7, false)
                        .await
                        .expect("decide"),
                    Decided::Stands(true)
                );
            } else {
                // Prepared here, nothing decided: pending. The resolver
                // fenced group 2 (not prepared there) and decides ABORT.
                assert_eq!(
                    shard.resolve(txn(n)).await.expect("resolve"),
                    Resolved::Pending {
                        participants: vec![1, 2]
                    }
                );
                assert_eq!(
                    shard
                        .decide(txn(n), false, vec![1, 2], Level::Sync, 0, true)
                        .await
                        .expect("decide"),
                    Decided::Stands(false)
                );
            }
            shard.finalize(txn(n), first).await.expect("finalize");
            assert_eq!(shard.forget(vec![txn(n)]).await.expect("forget"), 1);
            let late = shard
                .decide(txn(n), !first, vec![1, 2], Level::Sync, 7, false)
                .await
                .expect("late decide");
            assert_eq!(
                late,
                Decided::Stands(first),
                "txn {n}: a late decide overturned the finalized decision"
            );
            let resolved = shard.resolve(txn(n)).await.expect("late resolve");
            assert!(
                matches!(resolved, Resolved::Decided(ref r) if r.commit == first),
                "txn {n}: a late resolve overturned it: {resolved:?}"
            );
            let written = value_of(&shard, &format!("late{n}")).await.is_some();
            assert_eq!(
                written, first,
                "txn {n}: applied {written}, decided {first}"
            );
        }
    }

    #[tokio::test]
    async fn two_phase_participant_flow() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = Shard::open(config(dir.path()), Arc::new(Metrics::default())).expect("open");
        let rec = PrepareRec {
            txn_id: txn(7).0.to_vec(),
            reads: vec![],
            writes: vec![put("x", "1")],
            anchor: 1,
            participants: vec![1, 2],
            exec: 7,
        };
        let first = shard
            .prepare(1, rec.clone(), Level::Sync)
            .await
            .expect("prepare");
        let Vote::Yes {
            version,
            owner: true,
        } = first
        else {
            panic!("voted {first:?}")
        };
        assert_eq!(
            shard
                .prepare(1, rec.clone(), Level::Sync)
                .await
                .expect("again"),
            first,
            "idempotent"
        );
        // A 1PC on the locked key is refused.
        match shard
            .commit_local(1, txn(8), vec![], vec![put("x", "2")], Level::Sync)
            .await
            .expect("commit")
        {
            Outcome::Aborted { refused, .. } => {
                assert_eq!(refused.reason, crate::state::Refusal::Locked)
            }
            other => panic!("locked key written: {other:?}"),
        }
        assert_eq!(
            shard
                .decide(txn(7), true, vec![1, 2], Level::Sync, 7, false)
                .await
                .expect("decide"),
            Decided::Stands(true)
        );
        assert_eq!(
            shard
                .decide(txn(7), false, vec![], Level::Sync, 7, false)
                .await
                .expect("decide again"),
            Decided::Stands(true),
            "first decision wins"
        );
        assert!(matches!(
            shard.resolve(txn(7)).await.expect("resolve"),
            Resolved::Decided(r) if r.commit
        ));
        let outcome = shard
            .finalize(txn(7), true)
            .await
            .expect("finalize")
            .expect("known");
        assert!(matches!(outcome, Outcome::Committed { version: v, .. } if v == version));
        assert_eq!(value_of(&shard, "x").await.expect("applied").0, b"1");
        assert_eq!(
            shard.finalize(txn(7), true).await.expect("again"),
            Some(outcome)
        );
        // Resolve of an unknown transaction records ABORT: presumed abort.
        assert!(!committed(shard.resolve(txn(9)).await.expect("resolve")));
        assert_eq!(
            shard
                .decide(txn(9), true, vec![], Level::Sync, 9, false)
                .await
                .expect("late decide"),
            Decided::Stands(false)
        );
        assert_eq!(shard.forget(vec![txn(7), txn(9)]).await.expect("forget"), 2);
        assert_eq!(shard.finalize(txn(99), true).await.expect("unknown"), None);
        // Its record forgotten, the anchor's own finalized outcome still
        // answers COMMIT: a late resolve never presumes a commit aborted.
        assert!(committed(shard.resolve(txn(7)).await.expect("resolve")));
        assert!(!committed(shard.resolve(txn(9)).await.expect("resolve")));
    }

    fn committed(resolved: Resolved) -> bool {
        match resolved {
            Resolved::Decided(record) => record.commit,
            Resolved::Pending { .. } => panic!("pending: {resolved:?}"),
        }
    }

    fn prepare_rec(n: u32, key: &str, exec: u64) -> PrepareRec {
        PrepareRec {
            txn_id: txn(n).0.to_vec(),
            reads: vec![],
            writes: vec![put(key, "v")],
            anchor: 1,
            participants: vec![1, 2],
            exec,
        }
    }

    /// Parallel commit at the anchor: only the execution that prepared it
    /// owns it; an ABORT from anyone else must fence first; a resolve finds
    /// it pending; a recorded ABORT refuses a later PREPARE even of the
    /// same transaction.
    #[tokio::test]
    async fn the_anchor_keeps_a_parallel_commit_from_a_silent_abort() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = Shard::open(config(dir.path()), Arc::new(Metrics::default())).expect("open");
        let yes = |vote: Vote| match vote {
            Vote::Yes { owner, .. } => owner,
            other => panic!("voted {other:?}"),
        };
        assert!(yes(shard
            .prepare(1, prepare_rec(31, "p31", 5), Level::Sync)
            .await
            .expect("prepare")));
        assert!(
            !yes(shard
                .prepare(1, prepare_rec(31, "p31", 6), Level::Sync)
                .await
                .expect("second execution")),
            "a second execution is not the owner"
        );
        assert!(
            yes(shard
                .prepare(1, prepare_rec(31, "p31", 5), Level::Sync)
                .await
                .expect("retry")),
            "a retry of the owner still owns it"
        );
        for (exec, fenced) in [(6, false), (0, false)] {
            assert_eq!(
                shard
                    .decide(txn(31), false, vec![1, 2], Level::Sync, exec, fenced)
                    .await
                    .expect("decide"),
                Decided::FenceFirst,
                "exec {exec}: an unfenced ABORT over another's prepared anchor"
            );
        }
        assert_eq!(
            shard.resolve(txn(31)).await.expect("resolve"),
            Resolved::Pending {
                participants: vec![1, 2]
            }
        );
        assert_eq!(
            shard
                .decide(txn(31), false, vec![1, 2], Level::Sync, 0, true)
                .await
                .expect("fenced abort"),
            Decided::Stands(false)
        );
        match shard
            .prepare(1, prepare_rec(31, "p31", 5), Level::Sync)
            .await
            .expect("late prepare")
        {
            Vote::No(refused) => {
                assert_eq!(refused.reason, crate::state::Refusal::AlreadyAborted)
            }
            other => panic!("a YES after a recorded ABORT: {other:?}"),
        }
        // The owner itself may abort without fencing.
        shard
            .prepare(1, prepare_rec(32, "p32", 8), Level::Sync)
            .await
            .expect("prepare");
        assert_eq!(
            shard
                .decide(txn(32), false, vec![1, 2], Level::Sync, 8, false)
                .await
                .expect("owner's abort"),
            Decided::Stands(false)
        );
    }

    /// A fence leaves a prepared transaction prepared, answers a finalized
    /// one's outcome, and aborts an unknown one for good: its PREPARE is
    /// refused afterwards, also after a restart.
    #[tokio::test]
    async fn a_fence_aborts_an_unprepared_transaction_for_good() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = Shard::open(config(dir.path()), Arc::new(Metrics::default())).expect("open");
        shard
            .prepare(1, prepare_rec(41, "f41", 5), Level::Sync)
            .await
            .expect("prepare");
        assert!(matches!(
            shard.fence(txn(41)).await.expect("fence"),
            Fenced::Prepared { .. }
        ));
        assert!(matches!(
            shard.fence(txn(42)).await.expect("fence"),
            Fenced::Finalized(Outcome::Aborted { .. })
        ));
        shard.shutdown();
        drop(shard);
        let shard = Shard::open(config(dir.path()), Arc::new(Metrics::default())).expect("reopen");
        assert!(matches!(
            shard
                .prepare(1, prepare_rec(42, "f42", 5), Level::Sync)
                .await
                .expect("late prepare"),
            Vote::Finalized(Outcome::Aborted { .. })
        ));
        shard.finalize(txn(41), true).await.expect("finalize");
        assert!(matches!(
            shard.fence(txn(41)).await.expect("fence"),
            Fenced::Finalized(Outcome::Committed { .. })
        ));
        assert!(value_of(&shard, "f41").await.is_some());
        assert!(value_of(&shard, "f42").await.is_none());
    }

    /// The lock hold histogram counts each prepared transaction once, at
    /// its FINALIZE; finalizing it again, or aborting one never prepared
    /// here, holds no lock and is not counted.
    #[tokio::test]
    async fn a_finalize_counts_the_time_its_transaction_held_locks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = Shard::open(config(dir.path()), Arc::new(Metrics::default())).expect("open");
        shard
            .prepare(1, prepare_rec(51, "h51", 5), Level::Sync)
            .await
            .expect("prepare");
        assert_eq!(shard.metrics.prepared_hold_seconds.count(), 0);
        shard.finalize(txn(51), true).await.expect("finalize");
        assert_eq!(shard.metrics.prepared_hold_seconds.count(), 1);
        shard.finalize(txn(51), true).await.expect("again");
        shard.finalize(txn(52), false).await.expect("abort unknown");
        assert_eq!(shard.metrics.prepared_hold_seconds.count(), 1);
    }
}
