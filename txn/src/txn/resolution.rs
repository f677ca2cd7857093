//! The background side of the transaction manager: finalizing decided
//! transactions in batches (the finalizer task) and forgetting their
//! records, and settling in-doubt ones: a lock met by a read or a commit
//! (`settle`, `resolve`), a client's `TxnStatus` (`status`), and the
//! sweeper's periodic pass (`sweep`) over old prepared transactions and
//! lingering records. The rules each step follows are in
//! [`crate::twopc`]; this is their IO.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::future::join_all;
use tokio::time::Instant;
use trellis_proto::shard::v1 as pb;
use trellis_types::{GroupId, TxnId, Version};

use super::{
    ATTEMPTS_MAX, BACKOFF_FIRST, FINALIZE_BATCH_MAX, FINALIZE_BATCHES_INFLIGHT_MAX, IN_DOUBT_AGE,
    Settle, TxnError, TxnManager, TxnState, decision_pb, lookup_of, next_backoff, pause,
    settle_error,
};
use crate::failpoint::failpoint;
use crate::twopc::{FinalizeJob, Lookup, Resolution, StatusStep};

impl TxnManager {
    /// Queues a decided transaction for finalization and forgetting. Waits
    /// only when [`FINALIZE_QUEUE_MAX`] transactions already wait.
    pub(super) async fn finalize_later(&self, job: FinalizeJob) {
        let txn = job.txn;
        if self.finalize_queue.send(job).await.is_err() {
            tracing::warn!(%txn, "finalizer stopped; the in-doubt sweeper will finish this transaction");
        }
    }

    /// Runs forever: takes whatever decided transactions are queued (up to
    /// [`FINALIZE_BATCH_MAX`]) and finalizes them with one `FinalizeBatch`
    /// per participant group, then forgets the anchors' records with one
    /// `Forget` per anchor. Batches grow by themselves under load.
    ///
    /// Holds the manager weakly, so that dropping the last handle (a
    /// routing client that is dropped) closes the queue and ends the task;
    /// jobs still queued then are left to the in-doubt sweeper.
    pub(super) async fn finalizer(
        manager: std::sync::Weak<Self>,
        mut jobs: tokio::sync::mpsc::Receiver<FinalizeJob>,
    ) {
        let inflight = Arc::new(tokio::sync::Semaphore::new(FINALIZE_BATCHES_INFLIGHT_MAX));
        while let Some(first) = jobs.recv().await {
            let mut batch = vec![first];
            while batch.len() < FINALIZE_BATCH_MAX {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let Ok(permit) = inflight.clone().acquire_owned().await else {
                return;
            };
            let Some(this) = manager.upgrade() else {
                tracing::warn!(
                    left = batch.len(),
                    "the transaction manager was dropped; the in-doubt sweeper will finish what it had queued"
                );
                return;
            };
            tokio::spawn(async move {
                this.finalize_batch(batch).await;
                drop(permit);
            });
        }
    }

    /// Finalizes a batch: every participant but the anchors of parallel
    /// commits, then those anchors (where every other participant
    /// finalized), then forgets the recorded decisions whose participants
    /// all finalized.
    async fn finalize_batch(&self, jobs: Vec<FinalizeJob>) {
        let deadline = Instant::now() + crate::FINALIZE_DEADLINE;
        let done = self
            .finalize_round(crate::twopc::finalize_batches(&jobs), deadline, true)
            .await;
        let anchors = crate::twopc::anchor_round(&jobs, &done);
        if !anchors.is_empty() {
            self.finalize_round(anchors, deadline, false).await;
        }
        let forget = crate::twopc::forgettable(&jobs, &done);
        join_all(forget.into_iter().map(|(anchor, txns)| async move {
            let txn_ids: Vec<Vec<u8>> = txns.iter().map(|t| t.as_bytes().to_vec()).collect();
            let result = self
                .call(anchor, deadline, "forget", |mut client, _map| {
                    let request = pb::ForgetRequest { txn_ids: txn_ids.clone() };
                    async move { client.forget(request).await.map(|r| r.into_inner()) }
                })
                .await;
            if let Err(err) = result {
                tracing::debug!(anchor, %err, "forget failed; the records stay until a later forget");
            }
        }))
        .await;
    }

    /// One `FinalizeBatch` per group of `batches`, in parallel (with
    /// `failpoint`, the first group alone first): which groups succeeded.
    async fn finalize_round(
        &self,
        batches: BTreeMap<GroupId, Vec<(TxnId, bool)>>,
        deadline: Instant,
        failpoint_first: bool,
    ) -> BTreeMap<GroupId, bool> {
        let mut groups = batches.into_iter().map(|(group, items)| {
            let items: Vec<pb::FinalizeRequest> = items
                .into_iter()
                .map(|(txn, commit)| pb::FinalizeRequest {
                    txn_id: txn.as_bytes().to_vec(),
                    decision: decision_pb(commit),
                })
                .collect();
            (group, items)
        });
        let send = |group: GroupId, items: Vec<pb::FinalizeRequest>| async move {
            let ok = self
                .call(group, deadline, "finalize batch", |mut client, _map| {
                    let request = pb::FinalizeBatchRequest {
                        items: items.clone(),
                    };
                    async move { client.finalize_batch(request).await.map(|r| r.into_inner()) }
                })
                .await;
            if let Err(err) = &ok {
                tracing::warn!(group, %err, "finalize failed; the in-doubt sweeper will finish these transactions");
            }
            self.metrics.finalizes.inc();
            (group, ok.is_ok())
        };
        let mut done: BTreeMap<GroupId, bool> = BTreeMap::new();
        // The first group alone, so a crash here leaves some participants
        // finalized and others not.
        if failpoint_first && let Some((group, items)) = groups.next() {
            let (group, ok) = send(group, items).await;
            done.insert(group, ok);
            failpoint("during_finalize");
        }
        for (group, ok) in join_all(groups.map(|(group, items)| send(group, items))).await {
            done.insert(group, ok);
        }
        done
    }

    /// Finalizes at every participant; true if all succeeded.
    async fn finalize_all(
        &self,
        txn: TxnId,
        participants: &[GroupId],
        commit: bool,
        deadline: Instant,
    ) -> bool {
        let mut all = true;
        for (i, group) in participants.iter().enumerate() {
            if i == 1 {
                failpoint("during_finalize");
            }
            if let Err(err) = self.finalize_one(*group, txn, commit, deadline).await {
                tracing::warn!(%txn, group, %err, "finalize failed; the in-doubt sweeper will finish it");
                all = false;
            }
        }
        all
    }

    /// Finalizes one participant; the version its writes got, if it
    /// committed there.
    pub(super) async fn finalize_one(
        &self,
        group: GroupId,
        txn: TxnId,
        commit: bool,
        deadline: Instant,
    ) -> Result<Option<Version>, TxnError> {
        let response = self
            .call(group, deadline, "finalize", |mut client, _map| {
                let request = pb::FinalizeRequest {
                    txn_id: txn.as_bytes().to_vec(),
                    decision: decision_pb(commit),
                };
                async move { client.finalize(request).await.map(|r| r.into_inner()) }
            })
            .await?;
        self.metrics.finalizes.inc();
        Ok(match response.outcome {
            Some(pb::finalize_response::Outcome::Finalized(f))
                if f.decision == pb::Decision::Commit as i32 =>
            {
                Some(f.version)
            }
            _ => None,
        })
    }

    async fn forget(&self, anchor: GroupId, txn: TxnId, deadline: Instant) {
        let result = self
            .call(anchor, deadline, "forget", |mut client, _map| {
                let request = pb::ForgetRequest {
                    txn_ids: vec![txn.as_bytes().to_vec()],
                };
                async move { client.forget(request).await.map(|r| r.into_inner()) }
            })
            .await;
        if let Err(err) = result {
            tracing::debug!(%txn, anchor, %err, "forget failed; the record stays until TXN_RECORDS_MAX pressure or a later forget");
        }
    }

    /// Settles an in-doubt transaction met locking `key` at `group`, as
    /// [`Settle`] says: here ([`Self::resolve`]) or through a
    /// coordinator's `Txn.ResolveLock`. Returns whether it committed.
    pub(crate) async fn settle(
        &self,
        txn: TxnId,
        anchor: GroupId,
        group: GroupId,
        key: &[u8],
        deadline: Instant,
    ) -> Result<bool, TxnError> {
        let coordinator = match &self.settle {
            Settle::Here => return self.resolve(txn, anchor, &[group], deadline).await,
            Settle::Through(coordinator) => coordinator,
        };
        let mut backoff = BACKOFF_FIRST;
        let mut last = String::new();
        for _attempt in 0..ATTEMPTS_MAX {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let mut request = tonic::Request::new(trellis_proto::v1::ResolveLockRequest {
                txn_id: txn.as_bytes().to_vec(),
                anchor_group: anchor,
                participants: vec![group],
                key: key.to_vec(),
            });
            request.set_timeout(remaining);
            let mut client = coordinator.clone();
            let status = match tokio::time::timeout(remaining, client.resolve_lock(request)).await {
                Ok(Ok(answer)) => {
                    let commit =
                        answer.into_inner().state == trellis_proto::v1::TxnState::Committed as i32;
                    tracing::debug!(%txn, anchor, commit, "a coordinator resolved an in-doubt transaction");
                    return Ok(commit);
                }
                Ok(Err(status)) => status,
                Err(_) => return Err(TxnError::Deadline(format!("resolving {txn}"))),
            };
            if status.code() != tonic::Code::Unavailable {
                return Err(settle_error(txn, &status));
            }
            last = trellis_net::status_text(&status);
            if Instant::now() + backoff >= deadline {
                return Err(TxnError::Deadline(format!("resolving {txn}: {last}")));
            }
            tokio::time::sleep(pause(backoff, trellis_types::rng::u64())).await;
            backoff = next_backoff(backoff);
        }
        Err(TxnError::Unavailable(format!(
            "resolving {txn} through the coordinator: {last} (gave up after {ATTEMPTS_MAX} attempts)"
        )))
    }

    /// Settles an in-doubt transaction: asks its anchor (which records ABORT
    /// if nothing was decided), then finalizes `participants` and any the
    /// record names. Forgets the record once every participant it names has
    /// finalized. Returns whether it committed.
    pub async fn resolve(
        &self,
        txn: TxnId,
        anchor: GroupId,
        participants: &[GroupId],
        deadline: Instant,
    ) -> Result<bool, TxnError> {
        let record = self
            .call(anchor, deadline, "resolve", |mut client, _map| {
                let request = pb::ResolveRequest {
                    txn_id: txn.as_bytes().to_vec(),
                };
                async move { client.resolve(request).await.map(|r| r.into_inner()) }
            })
            .await?;
        let commit = if record.pending {
            self.settle_pending(txn, anchor, &record.participants, deadline)
                .await?
        } else {
            record.decision == pb::Decision::Commit as i32
        };
        let resolution = Resolution::of(participants, &record.participants);
        let finished = self
            .finalize_all(txn, &resolution.finalize, commit, deadline)
            .await;
        if finished && resolution.complete {
            self.forget(anchor, txn, deadline).await;
        }
        let counter = if commit {
            &self.metrics.resolved_commit
        } else {
            &self.metrics.resolved_abort
        };
        counter.inc();
        tracing::info!(%txn, anchor, commit, "resolved an in-doubt transaction");
        Ok(commit)
    }

    /// Decides a transaction its anchor holds prepared with nothing decided
    /// (a parallel commit in flight, or abandoned by a dead coordinator):
    /// fences every other participant, then records COMMIT if every one had
    /// prepared it (or committed it), ABORT otherwise. First decision wins.
    async fn settle_pending(
        &self,
        txn: TxnId,
        anchor: GroupId,
        participants: &[GroupId],
        deadline: Instant,
    ) -> Result<bool, TxnError> {
        let others: Vec<GroupId> = participants
            .iter()
            .copied()
            .filter(|g| *g != anchor)
            .collect();
        let fenced = self.fence_all(txn, &others, deadline).await?;
        // As a PREPARE: never less than SEMI_SYNC.
        let durability = trellis_proto::v1::Durability::SemiSync as u32;
        self.decide_fenced(txn, anchor, participants, durability, 0, &fenced, deadline)
            .await
    }

    /// COMMITTED, ABORTED or UNKNOWN, from the anchor's record or the
    /// outcome the shards remember. "Not found" is UNKNOWN, never committed.
    /// A transaction prepared somewhere with nothing decided is settled
    /// first ([`crate::twopc::status_step`]): asking decides it if nobody
    /// has, so the answer never changes afterwards.
    pub async fn status(&self, txn: TxnId, deadline: Instant) -> Result<TxnState, TxnError> {
        let map = self.router.map();
        let lookups = map.groups.keys().map(|group| {
            self.call(*group, deadline, "lookup", move |mut client, _map| {
                let request = pb::LookupRequest {
                    txn_id: txn.as_bytes().to_vec(),
                };
                async move { client.lookup(request).await.map(|r| r.into_inner()) }
            })
        });
        let lookups = join_all(lookups)
            .await
            .into_iter()
            .map(|result| result.map(|r| lookup_of(&r)))
            .collect::<Result<Vec<Lookup>, TxnError>>()?;
        let (anchor, participants) = match crate::twopc::status_step(lookups) {
            StatusStep::Known(state) => return Ok(state),
            StatusStep::Settle {
                anchor,
                participants,
            } => (anchor, participants),
        };
        let commit = match &self.settle {
            Settle::Here => self.resolve(txn, anchor, &participants, deadline).await?,
            // Only a coordinator may decide at an anchor: a routing
            // client asks one for the whole answer.
            Settle::Through(coordinator) => {
                let remaining = deadline.saturating_duration_since(Instant::now());
                let mut request = tonic::Request::new(trellis_proto::v1::TxnStatusRequest {
                    txn_id: txn.as_bytes().to_vec(),
                });
                request.set_timeout(remaining);
                let answer =
                    tokio::time::timeout(remaining, coordinator.clone().txn_status(request))
                        .await
                        .map_err(|_| TxnError::Deadline(format!("the status of {txn}")))?
                        .map_err(|status| settle_error(txn, &status))?;
                return Ok(
                    match trellis_proto::v1::TxnState::try_from(answer.into_inner().state) {
                        Ok(trellis_proto::v1::TxnState::Committed) => TxnState::Committed,
                        Ok(trellis_proto::v1::TxnState::Aborted) => TxnState::Aborted,
                        _ => TxnState::Unknown,
                    },
                );
            }
        };
        Ok(if commit {
            TxnState::Committed
        } else {
            TxnState::Aborted
        })
    }

    /// One sweep: every group's transactions prepared longer than
    /// [`IN_DOUBT_AGE`] are resolved. Returns how many.
    pub async fn sweep(&self, deadline: Instant) -> usize {
        let map = self.router.map();
        let mut resolved = 0;
        let mut total_in_doubt = 0;
        // A group no replica ever registered with (just added) holds
        // nothing prepared; asking it would only retry until the deadline
        // and hold up the sweep of every other group.
        let registered = map.groups.values().filter(|g| !g.members.is_empty());
        for group in registered.map(|g| &g.id) {
            let listed = self
                .call(*group, deadline, "list prepared", |mut client, _map| {
                    let request = pb::ListPreparedRequest {
                        older_than_ms: IN_DOUBT_AGE.as_millis() as u64,
                        limit: crate::SWEEP_BATCH_MAX,
                        records: true,
                        slots: Vec::new(),
                    };
                    async move { client.list_prepared(request).await.map(|r| r.into_inner()) }
                })
                .await;
            let Ok(listed) = listed else { continue };
            total_in_doubt += listed.txns.len();
            let forgotten = self
                .forget_lingering(*group, &listed.records, deadline)
                .await;
            if forgotten > 0 {
                tracing::info!(
                    anchor = *group,
                    forgotten,
                    "sweeper forgot transaction records every participant had finalized"
                );
            }
            for prepared in listed.txns {
                let Ok(txn) = TxnId::from_bytes(&prepared.txn_id) else {
                    continue;
                };
                match self
                    .resolve(txn, prepared.anchor_group, &prepared.participants, deadline)
                    .await
                {
                    Ok(_) => resolved += 1,
                    Err(err) => {
                        tracing::warn!(%txn, %err, "sweeper could not resolve an in-doubt transaction")
                    }
                }
            }
        }
        self.metrics
            .in_doubt
            .store(total_in_doubt as u64, Ordering::Relaxed);
        resolved
    }

    /// Forgets the records `anchor` listed (`listed`) that the previous
    /// sweep listed too and that no participant has prepared any more: a
    /// coordinator that died between finalizing and forgetting leaves such
    /// records behind, and no prepared transaction would ever lead a
    /// resolver to them. Safe for either decision: a COMMIT record's
    /// participants all prepared before the decision, so "not prepared"
    /// means finalized; an ABORT record answers as presumed abort would.
    /// Returns how many it forgot.
    async fn forget_lingering(
        &self,
        anchor: GroupId,
        listed: &[pb::TxnRecordEntry],
        deadline: Instant,
    ) -> usize {
        let now: std::collections::BTreeSet<TxnId> = listed
            .iter()
            .filter_map(|r| TxnId::from_bytes(&r.txn_id).ok())
            .collect();
        let previous = {
            let mut swept = self.swept_records.lock().expect("swept records lock");
            swept.insert(anchor, now.clone()).unwrap_or_default()
        };
        let mut forgotten = 0;
        for record in listed {
            let Ok(txn) = TxnId::from_bytes(&record.txn_id) else {
                continue;
            };
            if !crate::twopc::lingering(&previous, &txn) {
                continue;
            }
            let answers = join_all(record.participants.iter().map(|group| {
                self.call(*group, deadline, "lookup", move |mut client, _map| {
                    let request = pb::LookupRequest {
                        txn_id: txn.as_bytes().to_vec(),
                    };
                    async move { client.lookup(request).await.map(|r| r.into_inner()) }
                })
            }))
            .await;
            let prepared = answers.into_iter().map(|a| a.ok().map(|r| r.prepared));
            if crate::twopc::record_done(prepared) {
                self.forget(anchor, txn, deadline).await;
                forgotten += 1;
            }
        }
        forgotten
    }
}
