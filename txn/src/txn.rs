//! The transaction manager: reads, one-phase and two-phase commits, status,
//! and in-doubt resolution. Stateless: everything that must survive a
//! coordinator lives on the shards (prepared locks, the anchor's record).
//!
//! # Commit paths
//! - One group: `CommitLocal` (validate + write in one record).
//! - Several groups, no writes: `Validate` at each (nothing is logged).
//! - Several groups with writes: two-phase commit. The anchor is the group of
//!   the smallest written key. Prepare everywhere in parallel. If every
//!   participant voted YES and the anchor's prepared state is this
//!   execution's own, the transaction is committed (parallel commit):
//!   answer, then finalize in the background, the anchor last. Otherwise
//!   decide at the anchor (first decision wins; an ABORT over another
//!   execution's prepared anchor fences first); answer; finalize in the
//!   background; then forget the anchor's record.
//!
//! Every shard operation is idempotent by transaction id, so a failed call is
//! retried (bounded, with backoff, within the request's deadline). When the
//! coordinator cannot tell whether a decision was recorded, it reports
//! *outcome unknown*, never success or failure.
//!
//! This module is the IO: it asks [`crate::twopc`] for the plan, sends the
//! RPCs (in parallel where the protocol allows), converts each reply from
//! the wire at this edge, feeds it to the tally and acts on its verdict.
//! What decides an outcome lives in `twopc`; the retry and read rules of
//! this module (`retry_or_fail`, `pause`, `next_backoff`, `read_step`,
//! `in_doubt`) are pure functions tested below.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::time::Instant;
use trellis_proto::shard::v1 as pb;
use trellis_types::{GroupId, Key, TxnId, Value, Version};

use crate::failpoint::failpoint;
use crate::map::ClusterMap;
use crate::metrics::{Metrics, Path};
use crate::router::{Fault, Link, Router};
use crate::twopc::{Fenced, FinalizeJob, Lookup, Plan, Tally, TwoPhase, Vote};
use trellis_proto::v1::txn_client::TxnClient;
// The commit vocabulary lives with the rules that decide it; it is named
// from here too, as it was before those rules moved.
pub use crate::twopc::{Abort, AbortReason, CommitOutcome, CommitRequest, TxnError, TxnState};

mod reads;
mod resolution;

/// Most attempts of one shard call before giving up.
pub const ATTEMPTS_MAX: u32 = 16;
/// Most times one read or commit is routed again because its keys moved
/// to another group while it ran (each time under a newer map).
pub const ROUTE_ATTEMPTS_MAX: u32 = 8;
/// Backoff between attempts: starts here, doubles (`next_backoff`),
/// capped at [`BACKOFF_MAX`], plus a jitter of up to half (`pause`).
pub const BACKOFF_FIRST: Duration = Duration::from_millis(20);
/// The longest backoff between two attempts of one shard call.
pub const BACKOFF_MAX: Duration = Duration::from_millis(250);
const _: () = assert!(BACKOFF_FIRST.as_micros() <= BACKOFF_MAX.as_micros());
/// A STRONG read that meets a prepared transaction's lock re-reads for at
/// most this long before resolving the transaction through its anchor.
pub const READ_LOCK_WAIT_MAX: Duration = Duration::from_millis(300);
/// Pause between those re-reads.
pub const READ_LOCK_POLL: Duration = Duration::from_millis(5);
const _: () = assert!(
    READ_LOCK_POLL.as_micros() < READ_LOCK_WAIT_MAX.as_micros(),
    "a read re-reads at least once before resolving"
);
/// How many times one read meets a lock and resolves it before giving up.
pub const READ_LOCK_ROUNDS_MAX: u32 = 4;
/// A prepared transaction older than this is in doubt: whoever meets it (a
/// commit refused by its lock, the sweeper) resolves it through its anchor.
pub const IN_DOUBT_AGE: Duration = Duration::from_secs(2);
/// Most decided transactions waiting to be finalized; past it, answering a
/// commit waits for room (backpressure instead of an unbounded queue).
pub const FINALIZE_QUEUE_MAX: usize = 4096;
/// Most transactions finalized by one batch (one RPC per participant).
pub const FINALIZE_BATCH_MAX: usize = 512;
/// Most finalize batches in flight at once.
pub const FINALIZE_BATCHES_INFLIGHT_MAX: usize = 8;
const _: () = assert!(FINALIZE_BATCH_MAX <= FINALIZE_QUEUE_MAX);

/// One key as a read returns it: value and version (0 = absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub key: Key,
    pub value: Value,
    pub version: Version,
}

fn decision_pb(commit: bool) -> i32 {
    if commit {
        pb::Decision::Commit as i32
    } else {
        pb::Decision::Abort as i32
    }
}

pub struct TxnManager {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    /// Where the in-doubt transactions this manager meets are settled.
    settle: Settle,
    finalize_queue: tokio::sync::mpsc::Sender<FinalizeJob>,
    /// Per anchor group, the transaction records the last sweep listed
    /// there (at most [`crate::SWEEP_BATCH_MAX`] each): a record listed by
    /// two sweeps in a row lingers, and the sweeper checks it itself.
    swept_records: std::sync::Mutex<BTreeMap<GroupId, std::collections::BTreeSet<TxnId>>>,
}

/// Where the in-doubt transactions a manager meets (a lock on a key it
/// reads or commits) are settled.
#[derive(Clone)]
pub enum Settle {
    /// Here: resolve at the anchor, finalize at the participants. A
    /// coordinator's manager.
    Here,
    /// Through a coordinator's `Txn.ResolveLock`: a routing client's
    /// manager. Only cluster processes may finalize at a shard (a client
    /// could otherwise apply COMMIT where the anchor recorded ABORT), so a
    /// client asks a coordinator, which settles it [`Settle::Here`].
    Through(TxnClient<Link>),
}

impl TxnManager {
    /// Creates a coordinator's manager ([`Settle::Here`]) and starts its
    /// background finalizer.
    pub fn new(router: Arc<Router>, metrics: Arc<Metrics>) -> Arc<TxnManager> {
        Self::with_settle(router, metrics, Settle::Here)
    }

    /// Creates a manager that settles in-doubt transactions as `settle`
    /// says, and starts its background finalizer.
    pub fn with_settle(
        router: Arc<Router>,
        metrics: Arc<Metrics>,
        settle: Settle,
    ) -> Arc<TxnManager> {
        let (queue, jobs) = tokio::sync::mpsc::channel(FINALIZE_QUEUE_MAX);
        let manager = Arc::new(TxnManager {
            router,
            metrics,
            settle,
            finalize_queue: queue,
            swept_records: Default::default(),
        });
        tokio::spawn(Self::finalizer(Arc::downgrade(&manager), jobs));
        manager
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// The coordinator's metrics (the refresher notes catalog reads there).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Calls `op` against `group`'s primary until it succeeds, retrying
    /// route and availability faults with backoff, within `deadline`.
    async fn call<T, F, Fut>(
        &self,
        group: GroupId,
        deadline: Instant,
        what: &str,
        op: F,
    ) -> Result<T, TxnError>
    where
        F: FnMut(crate::router::ShardRpc, Arc<ClusterMap>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        self.call_keys(group, &[], deadline, what, op).await
    }

    /// [`Self::call`] for an operation on `keys` that `group` owned when it
    /// was routed: after a refresh, a map that puts any of them elsewhere
    /// ends the call with [`TxnError::Moved`] so the caller routes again.
    /// Only while no attempt may have taken effect: after an ambiguous
    /// attempt the old group may have applied it, and another group knows
    /// nothing of that, so the call fails as unavailable instead (a commit
    /// then reports its outcome unknown).
    async fn call_keys<T, F, Fut>(
        &self,
        group: GroupId,
        keys: &[&[u8]],
        deadline: Instant,
        what: &str,
        mut op: F,
    ) -> Result<T, TxnError>
    where
        F: FnMut(crate::router::ShardRpc, Arc<ClusterMap>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let mut backoff = BACKOFF_FIRST;
        let mut map = self.router.map();
        let mut last = String::new();
        let mut ambiguous = false;
        for _attempt in 0..ATTEMPTS_MAX {
            let fault = match self.router.client(&map, group) {
                Ok(client) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(remaining, op(client, map.clone())).await {
                        Ok(Ok(value)) => return Ok(value),
                        Ok(Err(status)) => crate::router::classify(group, &status),
                        Err(_) => {
                            return Err(TxnError::Deadline(format!("{what} at group {group}")));
                        }
                    }
                }
                Err(fault) => fault,
            };
            ambiguous |= matches!(fault, Fault::Ambiguous(_));
            last = retry_or_fail(fault)?;
            self.metrics.map_refreshes.inc();
            map = self.router.refresh(&map).await;
            if keys.iter().any(|k| map.group_of(k) != group) {
                if ambiguous {
                    return Err(TxnError::Unavailable(format!(
                        "{what}: keys moved from group {group} after an attempt that may have taken effect there ({last})"
                    )));
                }
                return Err(TxnError::Moved {
                    group,
                    map_epoch: map.map_epoch,
                });
            }
            if Instant::now() + backoff >= deadline {
                return Err(TxnError::Deadline(format!("{what}: {last}")));
            }
            tokio::time::sleep(pause(backoff, trellis_types::rng::u64())).await;
            backoff = next_backoff(backoff);
        }
        Err(TxnError::Unavailable(format!(
            "{what}: {last} (gave up after {ATTEMPTS_MAX} attempts)"
        )))
    }

    // -------------------------------------------------------------- commits

    /// Commits a transaction. Idempotent by `txn`: a retry returns the first
    /// outcome while the shards remember it.
    pub async fn commit(
        self: &Arc<Self>,
        req: CommitRequest,
        deadline: Instant,
    ) -> Result<CommitOutcome, TxnError> {
        let started = Instant::now();
        let mut routings = 0;
        loop {
            let map = self.router.map();
            let plan = crate::twopc::plan(&req, |k| map.group_of(k));
            let (path, result) = match plan {
                Plan::OnePhase { group } => (
                    Path::OnePhase,
                    self.commit_one_phase(group, &req, deadline).await,
                ),
                Plan::ReadOnly { reads } => (
                    Path::ReadOnly,
                    self.validate_read_only(&reads, &req, deadline).await,
                ),
                // A routing client's commit that became two-phase while it
                // ran (its keys moved apart): a client may not prepare at
                // shards, so it ends here, nothing done, as a 2PC that
                // meets a moved slot ends; retried, it goes to a
                // coordinator under the newer map.
                Plan::TwoPhase(_) if matches!(self.settle, Settle::Through(_)) => (
                    Path::TwoPhase,
                    Ok(CommitOutcome::Aborted(Abort {
                        reason: AbortReason::SlotsMoved,
                        keys: Vec::new(),
                        message: "the commit's keys moved to several groups while it was \
                                  routed; a coordinator commits it when it is retried"
                            .into(),
                    })),
                ),
                Plan::TwoPhase(plan) => (
                    Path::TwoPhase,
                    self.commit_two_phase(&plan, &req, deadline).await,
                ),
            };
            // Keys moved before anything was done where they were routed:
            // plan again under the newer map.
            if matches!(result, Err(TxnError::Moved { .. })) {
                routings += 1;
                if routings < ROUTE_ATTEMPTS_MAX {
                    continue;
                }
            }
            let result = result.map_err(|err| match err {
                TxnError::Moved { .. } => TxnError::Unavailable(format!(
                    "commit: keys kept moving between groups ({ROUTE_ATTEMPTS_MAX} routings)"
                )),
                other => other,
            });
            self.metrics.record_commit(path, &result, started.elapsed());
            return result;
        }
    }

    async fn commit_one_phase(
        &self,
        group: GroupId,
        req: &CommitRequest,
        deadline: Instant,
    ) -> Result<CommitOutcome, TxnError> {
        let reads = read_versions(&req.reads);
        let writes = write_ops(&req.writes);
        let keys: Vec<&[u8]> = req
            .reads
            .iter()
            .map(|(k, _)| k.as_slice())
            .chain(req.writes.iter().map(|(k, _)| k.as_slice()))
            .collect();
        let mut resolved_once = false;
        loop {
            let result = self
                .call_keys(
                    group,
                    &keys,
                    deadline,
                    "one-phase commit",
                    |mut client, map| {
                        let request = pb::CommitLocalRequest {
                            durability: req.durability,
                            map_epoch: map.map_epoch,
                            txn_id: req.txn.as_bytes().to_vec(),
                            reads: reads.clone(),
                            writes: writes.clone(),
                        };
                        async move { client.commit_local(request).await.map(|r| r.into_inner()) }
                    },
                )
                .await
                .map_err(|e| crate::twopc::unknown_if_ambiguous(req.txn, e))?;
            match result.outcome {
                Some(pb::commit_local_response::Outcome::Committed(w)) => {
                    return Ok(crate::twopc::one_phase_committed(&req.writes, w.version));
                }
                Some(pb::commit_local_response::Outcome::Refused(refused)) => {
                    // A lock held by a transaction in doubt: resolve it and
                    // try once more, so a dead coordinator's locks do not
                    // block writers until the sweeper comes by.
                    if !resolved_once && self.resolve_old_holders(&refused, group, deadline).await?
                    {
                        resolved_once = true;
                        continue;
                    }
                    return Ok(CommitOutcome::Aborted(abort_of(&refused)));
                }
                None => {
                    return Err(TxnError::Internal(
                        "shard answered CommitLocal with no outcome".into(),
                    ));
                }
            }
        }
    }

    /// Resolves the in-doubt holders named in a LOCKED refusal. Returns
    /// whether it resolved any.
    async fn resolve_old_holders(
        &self,
        refused: &pb::Refused,
        group: GroupId,
        deadline: Instant,
    ) -> Result<bool, TxnError> {
        if refused.reason != pb::Refusal::Locked as i32 {
            return Ok(false);
        }
        let mut any = false;
        for holder in &refused.holders {
            if !in_doubt(Duration::from_millis(holder.age_ms)) {
                continue;
            }
            let txn =
                TxnId::from_bytes(&holder.txn_id).map_err(|e| TxnError::Internal(e.to_string()))?;
            // The refusal names the locked keys and their holders, not
            // which holds which: any locked key stands for the lock met.
            let key = refused.keys.first().map(Vec::as_slice).unwrap_or_default();
            self.settle(txn, holder.anchor_group, group, key, deadline)
                .await?;
            any = true;
        }
        Ok(any)
    }

    /// A read-only transaction over several groups: validate at every group
    /// in parallel, each holding the keys against writers (in memory,
    /// bounded in time), then release the holds. If every release finds its
    /// holds still live, writers were kept off every key from its validation
    /// until after the last validation: at that instant every read was
    /// current — the commit point. Nothing is logged.
    async fn validate_read_only(
        &self,
        reads: &BTreeMap<GroupId, Vec<&(Key, Version)>>,
        req: &CommitRequest,
        deadline: Instant,
    ) -> Result<CommitOutcome, TxnError> {
        let by_group: BTreeMap<GroupId, Vec<pb::ReadVersion>> = reads
            .iter()
            .map(|(group, reads)| (*group, read_versions(reads.iter().copied())))
            .collect();
        let checks = by_group.iter().map(|(group, reads)| {
            self.call(*group, deadline, "validate", move |mut client, map| {
                let request = pb::ValidateRequest {
                    map_epoch: map.map_epoch,
                    txn_id: req.txn.as_bytes().to_vec(),
                    reads: reads.clone(),
                    hold: true,
                };
                async move { client.validate(request).await.map(|r| r.into_inner()) }
            })
        });
        let results = join_all(checks).await;
        let releases = by_group.iter().map(|(group, reads)| {
            let keys: Vec<Key> = reads.iter().map(|r| r.key.clone()).collect();
            self.call(*group, deadline, "release", move |mut client, _map| {
                let request = pb::ReleaseRequest {
                    txn_id: req.txn.as_bytes().to_vec(),
                    keys: keys.clone(),
                };
                async move { client.release(request).await.map(|r| r.into_inner().held) }
            })
        });
        let released = join_all(releases).await;
        let validations = results
            .into_iter()
            .map(|r| r.map(|v| v.refused.as_ref().map(abort_of)))
            .collect();
        crate::twopc::read_only_outcome(validations, &released)
    }

    /// Prepares at every participant in parallel, tallies the votes,
    /// decides at the anchor, answers, and queues the finalize. What each
    /// step decides is in [`crate::twopc`].
    async fn commit_two_phase(
        self: &Arc<Self>,
        plan: &TwoPhase<'_>,
        req: &CommitRequest,
        deadline: Instant,
    ) -> Result<CommitOutcome, TxnError> {
        let txn = req.txn;
        let durability = req.durability;
        let anchor = plan.anchor;
        let parts: BTreeMap<GroupId, (Vec<pb::ReadVersion>, Vec<pb::WriteOp>)> = plan
            .parts
            .iter()
            .map(|(group, part)| {
                (
                    *group,
                    (
                        read_versions(part.reads.iter().copied()),
                        write_ops(part.writes.iter().copied()),
                    ),
                )
            })
            .collect();
        let participants = plan.participants();
        // This execution, as the anchor will remember it (never 0).
        let exec = trellis_types::rng::u64() | 1;

        // 1. Prepare everywhere in parallel. A participant whose keys moved
        // to another group since the plan answers `Moved` at once (nothing
        // was prepared there), and the attempt aborts: the transaction id
        // is spent at the anchor, so it cannot be re-planned under it.
        let mut prepares: Vec<_> = parts
            .iter()
            .map(|(group, (reads, writes))| {
                let participants = participants.clone();
                let keys: Vec<&[u8]> = plan.parts[group]
                    .reads
                    .iter()
                    .map(|(k, _)| k.as_slice())
                    .chain(plan.parts[group].writes.iter().map(|(k, _)| k.as_slice()))
                    .collect();
                async move {
                    let vote = self
                        .call_keys(*group, &keys, deadline, "prepare", |mut client, map| {
                            let request = pb::PrepareRequest {
                                durability,
                                map_epoch: map.map_epoch,
                                txn_id: txn.as_bytes().to_vec(),
                                reads: reads.clone(),
                                writes: writes.clone(),
                                anchor_group: anchor,
                                participants: participants.clone(),
                                exec,
                            };
                            async move { client.prepare(request).await.map(|r| r.into_inner()) }
                        })
                        .await
                        .and_then(|r| match r.vote {
                            Some(pb::prepare_response::Vote::Yes(p)) => Ok(Vote::Yes {
                                version: p.version,
                                owner: p.owner,
                            }),
                            Some(pb::prepare_response::Vote::No(refused)) => {
                                Ok(Vote::No(abort_of(&refused)))
                            }
                            Some(pb::prepare_response::Vote::Finalized(f)) => Ok(Vote::Finalized {
                                commit: f.decision == pb::Decision::Commit as i32,
                                version: f.version,
                            }),
                            None => Err(TxnError::Internal("prepare answered no vote".into())),
                        });
                    (*group, vote)
                }
            })
            .collect();
        let votes: Vec<(GroupId, Result<Vote, TxnError>)> =
            if trellis_types::failpoint::armed("during_prepare") {
                // The first participant alone, so a crash here leaves some
                // participants prepared and others not.
                let first = prepares.remove(0).await;
                failpoint("during_prepare");
                let mut rest = join_all(prepares).await;
                rest.insert(0, first);
                rest
            } else {
                join_all(prepares).await
            };
        failpoint("after_prepare");
        let mut tally = Tally::of(&votes);

        // 2a. Every participant prepared, the anchor by this execution:
        // committed (parallel commit). The anchor's own prepared state
        // stands for the record until the finalizer finishes it, last.
        if tally.committed_in_parallel(anchor, &participants) {
            failpoint("after_decide");
            self.metrics.parallel_commits.inc();
            self.finalize_later(FinalizeJob {
                txn,
                anchor,
                participants,
                commit: true,
                anchor_last: true,
            })
            .await;
            return Ok(tally.outcome(txn, plan, true));
        }

        // 2b. Decide at the anchor: first decision wins.
        let answer = self
            .decide_at_anchor(
                txn,
                anchor,
                &participants,
                durability,
                exec,
                &mut tally,
                deadline,
            )
            .await;
        let commit = crate::twopc::decided(txn, anchor, answer)?;
        failpoint("after_decide");

        // 3. Answer; finalize and forget in the background. A commit another
        // execution decided is finalized now where its version is unknown.
        let mut unlearned = None;
        for group in tally.to_learn(commit, &participants) {
            match self.finalize_one(group, txn, true, deadline).await {
                Ok(Some(version)) => tally.learned(group, version),
                Ok(None) => {}
                Err(err) => {
                    unlearned = Some(crate::twopc::unlearned(txn, group, &err));
                    break;
                }
            }
        }
        self.finalize_later(FinalizeJob {
            txn,
            anchor,
            participants,
            commit,
            anchor_last: false,
        })
        .await;
        if let Some(err) = unlearned {
            return Err(err);
        }
        Ok(tally.outcome(txn, plan, commit))
    }

    /// Asks the anchor to record what `tally` says. An ABORT the anchor
    /// will not record unfenced (another execution prepared it there and may
    /// have committed in parallel) is asked again after fencing the
    /// participants that did not vote YES: COMMIT instead if every one of
    /// them turns out prepared. Returns the decision that stands.
    #[allow(clippy::too_many_arguments)]
    async fn decide_at_anchor(
        &self,
        txn: TxnId,
        anchor: GroupId,
        participants: &[GroupId],
        durability: u32,
        exec: u64,
        tally: &mut Tally,
        deadline: Instant,
    ) -> Result<bool, TxnError> {
        let first = self
            .decide(
                txn,
                anchor,
                participants,
                durability,
                tally.commit,
                exec,
                false,
                deadline,
            )
            .await?;
        if let Some(commit) = first {
            return Ok(commit);
        }
        let fenced = self
            .fence_all(txn, &tally.to_fence(participants), deadline)
            .await?;
        for (group, answer) in &fenced {
            match answer {
                Fenced::Prepared { version }
                | Fenced::Finalized {
                    commit: true,
                    version,
                } => tally.learned(*group, *version),
                Fenced::Finalized { commit: false, .. } => {}
            }
        }
        self.decide_fenced(
            txn,
            anchor,
            participants,
            durability,
            exec,
            &fenced,
            deadline,
        )
        .await
    }

    /// The DECIDE after fencing: COMMIT if every fenced participant had
    /// prepared or committed ([`crate::twopc::fenced_commit`]), else a
    /// fenced ABORT. Returns the decision that stands.
    #[allow(clippy::too_many_arguments)]
    async fn decide_fenced(
        &self,
        txn: TxnId,
        anchor: GroupId,
        participants: &[GroupId],
        durability: u32,
        exec: u64,
        fenced: &[(GroupId, Fenced)],
        deadline: Instant,
    ) -> Result<bool, TxnError> {
        let commit = crate::twopc::fenced_commit(fenced);
        self.decide(
            txn,
            anchor,
            participants,
            durability,
            commit,
            exec,
            !commit,
            deadline,
        )
        .await?
        .ok_or_else(|| {
            TxnError::Internal(format!(
                "anchor group {anchor} asked to fence again after a fence of {txn}"
            ))
        })
    }

    /// One DECIDE at the anchor: the decision that stands, or `None` when
    /// the anchor asks to fence first.
    #[allow(clippy::too_many_arguments)]
    async fn decide(
        &self,
        txn: TxnId,
        anchor: GroupId,
        participants: &[GroupId],
        durability: u32,
        commit: bool,
        exec: u64,
        fenced: bool,
        deadline: Instant,
    ) -> Result<Option<bool>, TxnError> {
        let answer = self
            .call(anchor, deadline, "decide", |mut client, _map| {
                let request = pb::DecideRequest {
                    durability,
                    txn_id: txn.as_bytes().to_vec(),
                    decision: decision_pb(commit),
                    participants: participants.to_vec(),
                    exec,
                    fenced,
                };
                async move { client.decide(request).await.map(|r| r.into_inner()) }
            })
            .await?;
        if answer.fence_first {
            return Ok(None);
        }
        Ok(Some(answer.decision == pb::Decision::Commit as i32))
    }

    /// Fences `groups` in parallel (see `Shard.Fence`): what each said.
    async fn fence_all(
        &self,
        txn: TxnId,
        groups: &[GroupId],
        deadline: Instant,
    ) -> Result<Vec<(GroupId, Fenced)>, TxnError> {
        let fences = groups.iter().map(|group| async move {
            let answer = self
                .call(*group, deadline, "fence", |mut client, _map| {
                    let request = pb::FenceRequest {
                        txn_id: txn.as_bytes().to_vec(),
                    };
                    async move { client.fence(request).await.map(|r| r.into_inner()) }
                })
                .await?;
            self.metrics.fences.inc();
            let fenced = match answer.state {
                Some(pb::fence_response::State::Prepared(p)) => {
                    Fenced::Prepared { version: p.version }
                }
                Some(pb::fence_response::State::Finalized(f)) => Fenced::Finalized {
                    commit: f.decision == pb::Decision::Commit as i32,
                    version: f.version,
                },
                None => return Err(TxnError::Internal("fence answered no state".into())),
            };
            Ok((*group, fenced))
        });
        join_all(fences).await.into_iter().collect()
    }
}

/// What a coordinator's refusal to resolve a lock means here.
fn settle_error(txn: TxnId, status: &tonic::Status) -> TxnError {
    let text = format!(
        "resolving {txn} through the coordinator: {}",
        trellis_net::status_text(status)
    );
    match status.code() {
        tonic::Code::DeadlineExceeded => TxnError::Deadline(text),
        tonic::Code::InvalidArgument => TxnError::Invalid(text),
        tonic::Code::Unavailable => TxnError::Unavailable(text),
        tonic::Code::Unauthenticated => TxnError::Unauthenticated(text),
        tonic::Code::PermissionDenied => TxnError::PermissionDenied(text),
        _ => TxnError::Internal(text),
    }
}

/// Writes as the shard's wire type.
fn write_ops<'a>(writes: impl IntoIterator<Item = &'a (Key, Option<Value>)>) -> Vec<pb::WriteOp> {
    writes
        .into_iter()
        .map(|(key, value)| pb::WriteOp {
            key: key.clone(),
            value: value.clone().unwrap_or_default(),
            delete: value.is_none(),
        })
        .collect()
}

/// Reads as the shard's wire type.
fn read_versions<'a>(reads: impl IntoIterator<Item = &'a (Key, Version)>) -> Vec<pb::ReadVersion> {
    reads
        .into_iter()
        .map(|(key, version)| pb::ReadVersion {
            key: key.clone(),
            version: *version,
        })
        .collect()
}

/// What one group's answer to Lookup says, as a [`Lookup`].
fn lookup_of(r: &pb::LookupResponse) -> Lookup {
    let decision = |d: i32| {
        if d == pb::Decision::Commit as i32 {
            Some(true)
        } else if d == pb::Decision::Abort as i32 {
            Some(false)
        } else {
            None
        }
    };
    Lookup {
        // Any recorded decision but COMMIT reads as ABORT.
        record: (r.record != pb::Decision::Unspecified as i32)
            .then_some(r.record == pb::Decision::Commit as i32),
        outcome: decision(r.outcome),
        prepared: r.prepared.then(|| (r.anchor_group, r.participants.clone())),
    }
}

/// A participant's refusal as the abort it causes.
fn abort_of(refused: &pb::Refused) -> Abort {
    let reason = match pb::Refusal::try_from(refused.reason) {
        Ok(pb::Refusal::Conflict) => AbortReason::Conflict,
        Ok(pb::Refusal::Locked) => AbortReason::Locked,
        _ => AbortReason::ResolvedAbort,
    };
    Abort {
        reason,
        keys: refused.keys.clone(),
        message: refused.message.clone(),
    }
}

/// Whether a transaction prepared `age` ago is in doubt: a commit refused
/// by its lock resolves it rather than giving up.
fn in_doubt(age: Duration) -> bool {
    age >= IN_DOUBT_AGE
}

/// What a failed shard call does next: route, availability and ambiguous
/// faults are retried after a map refresh (every shard operation is
/// idempotent by transaction id, so sending again one that may have landed
/// is safe), keeping the message for the final error; invalid input and
/// anything else fail the call at once.
fn retry_or_fail(fault: Fault) -> Result<String, TxnError> {
    match fault {
        Fault::Route(m) | Fault::Unavailable(m) | Fault::Ambiguous(m) => Ok(m),
        Fault::Invalid(m) => Err(TxnError::Invalid(m)),
        Fault::Denied(tonic::Code::Unauthenticated, m) => Err(TxnError::Unauthenticated(m)),
        Fault::Denied(_, m) => Err(TxnError::PermissionDenied(m)),
        Fault::Other(m) => Err(TxnError::Internal(m)),
    }
}

/// The pause before the next attempt: `backoff` plus a jitter of at most
/// half of it, drawn from `random`, so callers that failed together do not
/// retry together.
fn pause(backoff: Duration, random: u64) -> Duration {
    let jitter_micros_max = backoff.as_micros() as u64 / 2;
    backoff + Duration::from_micros(random % (jitter_micros_max + 1))
}

/// The backoff after `backoff`: doubled, at most [`BACKOFF_MAX`].
fn next_backoff(backoff: Duration) -> Duration {
    (backoff * 2).min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_availability_and_ambiguous_faults_are_retried_the_rest_fail() {
        for fault in [
            Fault::Route("r".into()),
            Fault::Unavailable("r".into()),
            Fault::Ambiguous("r".into()),
        ] {
            assert_eq!(retry_or_fail(fault), Ok("r".into()));
        }
        assert_eq!(
            retry_or_fail(Fault::Invalid("i".into())),
            Err(TxnError::Invalid("i".into()))
        );
        assert_eq!(
            retry_or_fail(Fault::Other("o".into())),
            Err(TxnError::Internal("o".into()))
        );
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_at_most_half_again_of_jitter() {
        let mut backoff = BACKOFF_FIRST;
        let mut seen = vec![backoff];
        for _ in 1..ATTEMPTS_MAX {
            backoff = next_backoff(backoff);
            seen.push(backoff);
        }
        assert_eq!(seen[1], BACKOFF_FIRST * 2);
        assert_eq!(*seen.last().expect("attempts"), BACKOFF_MAX);
        assert!(seen.windows(2).all(|w| w[0] <= w[1]));
        for backoff in seen {
            assert_eq!(pause(backoff, 0), backoff);
            for random in [1, 7_777, u64::MAX] {
                let p = pause(backoff, random);
                assert!(
                    p >= backoff && p <= backoff + backoff / 2,
                    "{p:?} for {backoff:?}"
                );
            }
        }
    }

    #[test]
    fn a_lock_holder_is_in_doubt_from_in_doubt_age_on() {
        assert!(!in_doubt(IN_DOUBT_AGE - Duration::from_millis(1)));
        assert!(in_doubt(IN_DOUBT_AGE));
    }
}
