//! The shard's gRPC edge: converts wire types to domain types (in one
//! place), validates input against the limits, calls the engine, and builds
//! every gRPC `Status` in one place ([`status_of`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use trellis_proto::shard::v1 as pb;
use trellis_proto::shard::v1::shard_server::{Shard as ShardService, ShardServer};
use trellis_txn::authz::Access;
use trellis_types::limits::{GET_KEYS_MAX, MESSAGE_BYTES_MAX, SCAN_LIMIT_MAX};
use trellis_types::{GroupId, SlotSet, TxnId, validate};

use tokio_stream::StreamExt as _;

use crate::engine::{
    Decided, EXPORT_CHUNK_BYTES, FEED_BATCHES_BUFFERED_MAX, Fenced, Resolved, Shard, ShardError,
    Vote, export_chunks,
};
use crate::feed::{FeedTxn, KeyRange};
use crate::freshness::STALENESS_MAX;
use crate::metrics::{READ_STALE_PRIMARY, READ_STRONG};
use crate::ownership::SlotStep;
use crate::record::{PrepareRec, ReadRec, SnapEntry, WriteRec};
use crate::repl::{Level, Role};
use crate::state::{KeyView, LockHolder, Outcome, Refusal, Refused};

/// Most transactions one ListPrepared returns.
pub const LIST_PREPARED_MAX: u32 = 10_000;
/// Most transactions one FinalizeBatch may name.
pub const FINALIZE_BATCH_MAX: usize = 10_000;
/// Most transaction ids one Forget may name.
pub const FORGET_TXNS_MAX: usize = 10_000;
/// HTTP/2 keep-alive: a connection that answers no ping within the timeout
/// is dropped (needed where TCP itself never notices, e.g. the simulator).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Most concurrent streams (in-flight requests) per connection.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 1024;

/// Builds the gRPC status for an engine error: the code callers branch on,
/// a message naming the limit or fault, and gRPC's richer error model (a
/// `google.rpc.ErrorInfo` whose reason is a `trellis.shard.v1.ErrorReason`
/// name; see `trellis_proto::error`).
pub fn status_of(err: ShardError) -> Status {
    use trellis_proto::error::key as meta;
    let (code, reason, metadata) = match &err {
        ShardError::WrongShard {
            key,
            group,
            map_epoch,
            ..
        } => (
            tonic::Code::FailedPrecondition,
            pb::ErrorReason::WrongShard,
            vec![
                (meta::MAP_EPOCH, map_epoch.to_string()),
                (meta::KEY, hex::encode(key)),
                (meta::GROUP, group.to_string()),
            ],
        ),
        ShardError::StaleMap { map_epoch, .. } => (
            tonic::Code::FailedPrecondition,
            pb::ErrorReason::StaleMap,
            vec![(meta::MAP_EPOCH, map_epoch.to_string())],
        ),
        ShardError::SlotMoving(_) => (
            tonic::Code::Unavailable,
            pb::ErrorReason::SlotMoving,
            vec![],
        ),
        ShardError::BadStep(_) => (
            tonic::Code::FailedPrecondition,
            pb::ErrorReason::InvalidArgument,
            vec![],
        ),
        ShardError::NotDrained(_) => (
            tonic::Code::FailedPrecondition,
            pb::ErrorReason::NotDrained,
            vec![],
        ),
        ShardError::Invalid(_) => (
            tonic::Code::InvalidArgument,
            pb::ErrorReason::InvalidArgument,
            vec![],
        ),
        ShardError::Busy(_) => (
            tonic::Code::ResourceExhausted,
            pb::ErrorReason::Busy,
            vec![],
        ),
        ShardError::NotPrimary { epoch, .. } => (
            tonic::Code::Unavailable,
            pb::ErrorReason::NotPrimary,
            vec![(meta::EPOCH, epoch.to_string())],
        ),
        ShardError::Unavailable(_) => (
            tonic::Code::Unavailable,
            pb::ErrorReason::Unavailable,
            vec![],
        ),
        ShardError::NotFresh(_) => (tonic::Code::Unavailable, pb::ErrorReason::NotFresh, vec![]),
        ShardError::FeedHistoryGone { group, .. } => (
            tonic::Code::FailedPrecondition,
            pb::ErrorReason::FeedHistoryGone,
            vec![(meta::GROUP, group.to_string())],
        ),
        ShardError::Wal(_) | ShardError::Open { .. } => (
            tonic::Code::Unavailable,
            pb::ErrorReason::StorageFailed,
            vec![],
        ),
    };
    trellis_proto::error::status(code, err.to_string(), reason.as_str_name(), metadata)
}

fn feed_txn(t: FeedTxn) -> pb::FeedTxn {
    pb::FeedTxn {
        position: t.position,
        version: t.version,
        txn_id: t.txn.0.to_vec(),
        participants: t.participants,
        writes: t
            .writes
            .into_iter()
            .map(|w| pb::WriteOp {
                key: w.key,
                delete: w.value.is_none(),
                value: w.value.unwrap_or_default(),
            })
            .collect(),
    }
}

fn invalid(err: impl std::fmt::Display) -> Status {
    status_of(ShardError::Invalid(err.to_string()))
}

/// A STALE read's bound (`None`: a STRONG read), at most
/// [`STALENESS_MAX`].
fn stale_bound(ms: u64) -> Result<Option<Duration>, Status> {
    if ms == 0 {
        return Ok(None);
    }
    let bound = Duration::from_millis(ms);
    if bound > STALENESS_MAX {
        return Err(invalid(format!(
            "max_staleness_ms {ms} is past the limit of {} ms",
            STALENESS_MAX.as_millis()
        )));
    }
    Ok(Some(bound))
}

/// A session floor no version of this group has reached, on its primary:
/// a token from another cluster (or made up), never one of its commits.
fn check_floor(shard: &Shard, floor_version: u64) -> Result<(), Status> {
    let newest = shard.newest_version();
    if floor_version > newest {
        return Err(invalid(format!(
            "session floor version {floor_version} is past group {}'s newest version {newest}: a session token from another cluster, or made up",
            shard.group_id()
        )));
    }
    Ok(())
}

/// A backup that cannot serve a STALE read's keys (a slot it does not
/// serve under its map, a map older than the request's): it declines, and
/// the primary answers with the authoritative error if there is one.
fn declined(err: ShardError) -> Status {
    status_of(ShardError::NotFresh(err.to_string()))
}

/// The other group of a slot step; 0 names none.
fn peer(group: u64) -> Result<GroupId, Status> {
    if group == 0 {
        return Err(invalid("the peer group must be named"));
    }
    Ok(group)
}

fn txn_id(bytes: &[u8]) -> Result<TxnId, Status> {
    TxnId::from_bytes(bytes).map_err(invalid)
}

fn refusal_pb(r: Refusal) -> pb::Refusal {
    match r {
        Refusal::Conflict => pb::Refusal::Conflict,
        Refusal::Locked | Refusal::Busy => pb::Refusal::Locked,
        Refusal::AlreadyAborted => pb::Refusal::AlreadyAborted,
    }
}

fn lock_pb(holder: &LockHolder, now: tokio::time::Instant) -> pb::Lock {
    pb::Lock {
        txn_id: holder.txn.as_bytes().to_vec(),
        anchor_group: holder.anchor,
        age_ms: now.saturating_duration_since(holder.since).as_millis() as u64,
    }
}

fn refused_pb(r: Refused) -> pb::Refused {
    let now = tokio::time::Instant::now();
    pb::Refused {
        reason: refusal_pb(r.reason) as i32,
        keys: r.keys,
        message: r.message,
        holders: r.holders.iter().map(|h| lock_pb(h, now)).collect(),
    }
}

fn finalized_pb(outcome: Outcome) -> pb::Finalized {
    match outcome {
        Outcome::Committed { version, .. } => pb::Finalized {
            decision: pb::Decision::Commit as i32,
            version,
        },
        Outcome::Aborted { .. } => pb::Finalized {
            decision: pb::Decision::Abort as i32,
            version: 0,
        },
    }
}

fn view_pb(key: Vec<u8>, view: KeyView) -> pb::ReadResult {
    let now = tokio::time::Instant::now();
    let (value, version) = match view.entry {
        Some(entry) => (
            entry.value().map(<[u8]>::to_vec).unwrap_or_default(),
            entry.visible_version(),
        ),
        None => (Vec::new(), 0),
    };
    pb::ReadResult {
        key,
        value,
        version,
        lock: view.lock.as_ref().map(|l| lock_pb(l, now)),
    }
}

/// Converts and validates the reads and writes of a commit or prepare.
fn txn_body(
    reads: Vec<pb::ReadVersion>,
    writes: Vec<pb::WriteOp>,
) -> Result<(Vec<ReadRec>, Vec<WriteRec>), Status> {
    for w in &writes {
        if w.delete && !w.value.is_empty() {
            return Err(invalid("a write cannot both delete and carry a value"));
        }
    }
    validate::txn(
        reads.iter().map(|r| r.key.as_slice()),
        writes
            .iter()
            .map(|w| (w.key.as_slice(), (!w.delete).then_some(w.value.as_slice()))),
    )
    .map_err(invalid)?;
    let reads = reads
        .into_iter()
        .map(|r| ReadRec {
            key: r.key,
            version: r.version,
        })
        .collect();
    let writes = writes
        .into_iter()
        .map(|w| WriteRec {
            key: w.key,
            value: (!w.delete).then_some(w.value),
        })
        .collect();
    Ok((reads, writes))
}

fn decision(value: i32) -> Result<bool, Status> {
    match pb::Decision::try_from(value) {
        Ok(pb::Decision::Commit) => Ok(true),
        Ok(pb::Decision::Abort) => Ok(false),
        _ => Err(invalid("decision must be COMMIT or ABORT")),
    }
}

fn decision_pb(commit: bool) -> i32 {
    if commit {
        pb::Decision::Commit as i32
    } else {
        pb::Decision::Abort as i32
    }
}

/// The tonic service over one replica.
#[derive(Clone)]
pub struct ShardApi {
    shard: Arc<Shard>,
}

impl ShardApi {
    pub fn new(shard: Arc<Shard>) -> Self {
        ShardApi { shard }
    }

    /// Checks that every key a commit or prepare reads or writes is in a
    /// slot this replica serves under `map_epoch`.
    fn check_txn_owned(
        &self,
        map_epoch: u64,
        reads: &[ReadRec],
        writes: &[WriteRec],
    ) -> Result<(), Status> {
        let keys = reads
            .iter()
            .map(|r| r.key.as_slice())
            .chain(writes.iter().map(|w| w.key.as_slice()));
        self.shard.check_owned(map_epoch, keys).map_err(status_of)
    }

    /// Whether the caller may make this call ([`crate::gate`]): nodes
    /// always, clients as the cluster's auth says.
    fn admit<T>(&self, request: &Request<T>, access: Option<&Access<'_>>) -> Result<(), Status> {
        self.shard.gate.admit(request, access, self.shard.metrics())
    }

    /// Whether this replica is a backup (STALE reads are served here).
    fn on_backup(&self) -> bool {
        self.shard.repl.role().0 == Role::Backup
    }

    /// Which replica answered a read and how fresh.
    fn source(&self, backup: bool, read_lsn: u64, staleness: Duration) -> pb::ReadSource {
        pb::ReadSource {
            replica: self.shard.repl.me(),
            backup,
            read_lsn,
            staleness_ms: staleness.as_millis() as u64,
        }
    }

    /// Counts a read the primary served, STRONG or (`bound`) STALE.
    fn count_primary_read(&self, bound: Option<Duration>) {
        let by = if bound.is_some() {
            READ_STALE_PRIMARY
        } else {
            READ_STRONG
        };
        self.shard.metrics().reads_by[by].inc();
    }

    /// The tonic service with message limits set.
    pub fn into_service(self) -> ShardServer<ShardApi> {
        ShardServer::new(self)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }
}

#[tonic::async_trait]
impl ShardService for ShardApi {
    async fn read(
        &self,
        request: Request<pb::ReadRequest>,
    ) -> Result<Response<pb::ReadResponse>, Status> {
        self.admit(
            &request,
            Some(&Access::Get {
                keys: &request.get_ref().keys,
            }),
        )?;
        let req = request.into_inner();
        let bound = stale_bound(req.max_staleness_ms)?;
        if req.keys.len() > GET_KEYS_MAX {
            return Err(invalid(validate::InputError::TooManyGetKeys {
                got: req.keys.len(),
            }));
        }
        for key in &req.keys {
            validate::key(key).map_err(invalid)?;
        }
        let keys = req.keys.iter().map(Vec::as_slice);
        if let Some(bound) = bound.filter(|_| self.on_backup()) {
            self.shard
                .check_owned(req.map_epoch, keys)
                .map_err(declined)?;
            let (views, fresh) = self
                .shard
                .read_on_backup(&req.keys, bound, req.floor_version)
                .await
                .map_err(status_of)?;
            return Ok(Response::new(pb::ReadResponse {
                results: req
                    .keys
                    .into_iter()
                    .zip(views)
                    .map(|(k, v)| view_pb(k, v))
                    .collect(),
                source: Some(self.source(true, fresh.read_lsn, fresh.staleness)),
            }));
        }
        self.shard.check_serving().map_err(status_of)?;
        check_floor(&self.shard, req.floor_version)?;
        self.shard
            .check_owned(req.map_epoch, keys)
            .map_err(status_of)?;
        let views = self.shard.read(&req.keys).await.map_err(status_of)?;
        self.count_primary_read(bound);
        Ok(Response::new(pb::ReadResponse {
            results: req
                .keys
                .into_iter()
                .zip(views)
                .map(|(k, v)| view_pb(k, v))
                .collect(),
            source: Some(self.source(false, self.shard.last_lsn(), Duration::ZERO)),
        }))
    }

    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        self.admit(
            &request,
            Some(&Access::Scan {
                prefix: &request.get_ref().prefix,
            }),
        )?;
        let req = request.into_inner();
        let bound = stale_bound(req.max_staleness_ms)?;
        if req.limit > SCAN_LIMIT_MAX {
            return Err(invalid(validate::InputError::ScanLimit { got: req.limit }));
        }
        let limit = if req.limit == 0 {
            SCAN_LIMIT_MAX
        } else {
            req.limit
        };
        if let Some(bound) = bound.filter(|_| self.on_backup()) {
            self.shard
                .check_owned(req.map_epoch, [])
                .map_err(declined)?;
            let (keys, truncated) = self
                .shard
                .scan_keys(&req.prefix, limit as usize)
                .map_err(declined)?;
            let (views, fresh) = self
                .shard
                .read_on_backup(&keys, bound, req.floor_version)
                .await
                .map_err(status_of)?;
            return Ok(Response::new(pb::ScanResponse {
                results: keys
                    .into_iter()
                    .zip(views)
                    .map(|(k, v)| view_pb(k, v))
                    .collect(),
                truncated,
                source: Some(self.source(true, fresh.read_lsn, fresh.staleness)),
            }));
        }
        self.shard.check_serving().map_err(status_of)?;
        check_floor(&self.shard, req.floor_version)?;
        self.shard
            .check_owned(req.map_epoch, [])
            .map_err(status_of)?;
        let (items, truncated) = self
            .shard
            .scan(&req.prefix, limit as usize)
            .await
            .map_err(status_of)?;
        self.count_primary_read(bound);
        Ok(Response::new(pb::ScanResponse {
            results: items.into_iter().map(|(k, v)| view_pb(k, v)).collect(),
            truncated,
            source: Some(self.source(false, self.shard.last_lsn(), Duration::ZERO)),
        }))
    }

    async fn commit_local(
        &self,
        request: Request<pb::CommitLocalRequest>,
    ) -> Result<Response<pb::CommitLocalResponse>, Status> {
        {
            // Every key at once: one key outside the user's grants and
            // the whole commit is refused.
            let req = request.get_ref();
            let reads: Vec<&[u8]> = req.reads.iter().map(|r| r.key.as_slice()).collect();
            let writes: Vec<&[u8]> = req.writes.iter().map(|w| w.key.as_slice()).collect();
            self.admit(
                &request,
                Some(&Access::Commit {
                    reads: &reads,
                    writes: &writes,
                }),
            )?;
        }
        self.shard.check_serving().map_err(status_of)?;
        let req = request.into_inner();
        let txn = txn_id(&req.txn_id)?;
        let (reads, writes) = txn_body(req.reads, req.writes)?;
        self.check_txn_owned(req.map_epoch, &reads, &writes)?;
        let keys: Vec<Vec<u8>> = writes.iter().map(|w| w.key.clone()).collect();
        let outcome = self
            .shard
            .commit_local(
                req.map_epoch,
                txn,
                reads,
                writes,
                Level::from_durability(req.durability),
            )
            .await
            .map_err(status_of)?;
        let outcome = match outcome {
            Outcome::Committed { version: lsn, .. } => {
                pb::commit_local_response::Outcome::Committed(pb::Written {
                    written: keys
                        .into_iter()
                        .map(|key| pb::KeyValue {
                            key,
                            value: Vec::new(),
                            version: lsn,
                        })
                        .collect(),
                    version: lsn,
                })
            }
            Outcome::Aborted { refused, .. } => {
                pb::commit_local_response::Outcome::Refused(refused_pb(*refused))
            }
        };
        Ok(Response::new(pb::CommitLocalResponse {
            outcome: Some(outcome),
        }))
    }

    async fn prepare(
        &self,
        request: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PrepareResponse>, Status> {
        self.shard.check_serving().map_err(status_of)?;
        let req = request.into_inner();
        txn_id(&req.txn_id)?;
        let (reads, writes) = txn_body(req.reads, req.writes)?;
        if req.participants.is_empty() || !req.participants.contains(&req.anchor_group) {
            return Err(invalid(
                "participants must be non-empty and include the anchor group",
            ));
        }
        self.check_txn_owned(req.map_epoch, &reads, &writes)?;
        let vote = self
            .shard
            .prepare(
                req.map_epoch,
                PrepareRec {
                    txn_id: req.txn_id,
                    reads,
                    writes,
                    anchor: req.anchor_group,
                    participants: req.participants,
                    exec: req.exec,
                },
                Level::from_durability(req.durability),
            )
            .await
            .map_err(status_of)?;
        let vote = match vote {
            Vote::Yes { version, owner } => {
                pb::prepare_response::Vote::Yes(pb::Prepared { version, owner })
            }
            Vote::No(refused) => pb::prepare_response::Vote::No(refused_pb(refused)),
            Vote::Finalized(outcome) => {
                pb::prepare_response::Vote::Finalized(finalized_pb(outcome))
            }
        };
        Ok(Response::new(pb::PrepareResponse { vote: Some(vote) }))
    }

    async fn decide(
        &self,
        request: Request<pb::DecideRequest>,
    ) -> Result<Response<pb::DecideResponse>, Status> {
        self.shard.check_serving().map_err(status_of)?;
        let req = request.into_inner();
        let txn = txn_id(&req.txn_id)?;
        let commit = decision(req.decision)?;
        let recorded = self
            .shard
            .decide(
                txn,
                commit,
                req.participants,
                Level::from_durability(req.durability),
                req.exec,
                req.fenced,
            )
            .await
            .map_err(status_of)?;
        Ok(Response::new(match recorded {
            Decided::Stands(commit) => pb::DecideResponse {
                decision: decision_pb(commit),
                fence_first: false,
            },
            Decided::FenceFirst => pb::DecideResponse {
                decision: pb::Decision::Unspecified as i32,
                fence_first: true,
            },
        }))
    }

    async fn finalize(
        &self,
        request: Request<pb::FinalizeRequest>,
    ) -> Result<Response<pb::FinalizeResponse>, Status> {
        self.shard.check_serving().map_err(status_of)?;
        let req = request.into_inner();
        let txn = txn_id(&req.txn_id)?;
        let commit = decision(req.decision)?;
        let outcome = self.shard.finalize(txn, commit).await.map_err(status_of)?;
        let outcome = match outcome {
            Some(outcome) => pb::finalize_response::Outcome::Finalized(finalized_pb(outcome)),
            None => pb::finalize_response::Outcome::Unknown(pb::Empty {}),
        };
        Ok(Response::new(pb::FinalizeResponse {
            outcome: Some(outcome),
        }))
    }

    async fn finalize_batch(
        &self,
        request: Request<pb::FinalizeBatchRequest>,
    ) -> Result<Response<pb::FinalizeBatchResponse>, Status> {
        self.shard.check_serving().map_err(status_of)?;
        let items = request.into_inner().items;
        if items.len() > FINALIZE_BATCH_MAX {
            return Err(invalid(format!(
                "FinalizeBatch of {} transactions is over FINALIZE_BATCH_MAX ({FINALIZE_BATCH_MAX})",
                items.len()
            )));
        }
        let txns = items
            .iter()
            .map(|item| Ok((txn_id(&item.txn_id)?, decision(item.decision)?)))
            .collect::<Result<Vec<_>, Status>>()?;
        let outcomes = self.shard.finalize_many(&txns).await.map_err(status_of)?;
        let results = outcomes
            .into_iter()
            .map(|outcome| pb::FinalizeResponse {
                outcome: Some(match outcome {
                    Some(outcome) => {
                        pb::finalize_response::Outcome::Finalized(finalized_pb(outcome))
                    }
                    None => pb::finalize_response::Outcome::Unknown(pb::Empty {}),
                }),
            })
            .collect();
        Ok(Response::new(pb::FinalizeBatchResponse { results }))
    }

    async fn resolve(
        &self,
        request: Request<pb::ResolveRequest>,
    ) -> Result<Response<pb::ResolveResponse>, Status> {
        self.shard.check_serving().map_err(status_of)?;
        let txn = txn_id(&request.into_inner().txn_id)?;
        Ok(Response::new(
            match self.shard.resolve(txn).await.map_err(status_of)? {
                Resolved::Decided(record) => pb::ResolveResponse {
                    decision: decision_pb(record.commit),
                    participants: record.participants,
                    pending: false,
                },
                Resolved::Pending { participants } => pb::ResolveResponse {
                    decision: pb::Decision::Unspecified as i32,
                    participants,
                    pending: true,
                },
            },
        ))
    }

    async fn fence(
        &self,
        request: Request<pb::FenceRequest>,
    ) -> Result<Response<pb::FenceResponse>, Status> {
        self.shard.check_serving().map_err(status_of)?;
        let txn = txn_id(&request.into_inner().txn_id)?;
        let state = match self.shard.fence(txn).await.map_err(status_of)? {
            Fenced::Prepared { version } => pb::fence_response::State::Prepared(pb::Prepared {
                version,
                owner: false,
            }),
            Fenced::Finalized(outcome) => {
                pb::fence_response::State::Finalized(finalized_pb(outcome))
            }
        };
        Ok(Response::new(pb::FenceResponse { state: Some(state) }))
    }

    async fn forget(
        &self,
        request: Request<pb::ForgetRequest>,
    ) -> Result<Response<pb::ForgetResponse>, Status> {
        self.shard.check_serving().map_err(status_of)?;
        let req = request.into_inner();
        if req.txn_ids.len() > FORGET_TXNS_MAX {
            return Err(invalid(format!(
                "Forget of {} transactions is over FORGET_TXNS_MAX ({FORGET_TXNS_MAX})",
                req.txn_ids.len()
            )));
        }
        let txns = req
            .txn_ids
            .iter()
            .map(|t| txn_id(t))
            .collect::<Result<Vec<_>, _>>()?;
        let forgotten = self.shard.forget(txns).await.map_err(status_of)?;
        Ok(Response::new(pb::ForgetResponse { forgotten }))
    }

    async fn list_prepared(
        &self,
        request: Request<pb::ListPreparedRequest>,
    ) -> Result<Response<pb::ListPreparedResponse>, Status> {
        self.shard.check_serving().map_err(status_of)?;
        let req = request.into_inner();
        let limit = if req.limit == 0 {
            LIST_PREPARED_MAX
        } else {
            req.limit.min(LIST_PREPARED_MAX)
        };
        let slots = if req.slots.is_empty() {
            None
        } else {
            Some(SlotSet::from_bytes(&req.slots).map_err(invalid)?)
        };
        let txns = self
            .shard
            .list_prepared(
                Duration::from_millis(req.older_than_ms),
                limit as usize,
                slots.as_ref(),
            )
            .into_iter()
            .map(|(txn, rec, age)| pb::PreparedTxn {
                txn_id: txn.as_bytes().to_vec(),
                anchor_group: rec.anchor,
                participants: rec.participants,
                age_ms: age.as_millis() as u64,
            })
            .collect();
        let records = if req.records {
            self.shard
                .list_records(limit as usize)
                .into_iter()
                .map(|(txn, record)| pb::TxnRecordEntry {
                    txn_id: txn.as_bytes().to_vec(),
                    commit: record.commit,
                    participants: record.participants,
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Response::new(pb::ListPreparedResponse { txns, records }))
    }

    async fn lookup(
        &self,
        request: Request<pb::LookupRequest>,
    ) -> Result<Response<pb::LookupResponse>, Status> {
        // A transaction's outcome, as `Txn.TxnStatus` answers anyone known.
        self.admit(&request, None)?;
        self.shard.check_serving().map_err(status_of)?;
        let txn = txn_id(&request.into_inner().txn_id)?;
        let (record, outcome, prepared) = self.shard.lookup(txn).await.map_err(status_of)?;
        let decision = |d: Option<bool>| d.map_or(pb::Decision::Unspecified as i32, decision_pb);
        Ok(Response::new(pb::LookupResponse {
            record: decision(record),
            outcome: decision(outcome),
            prepared: prepared.is_some(),
            anchor_group: prepared.as_ref().map_or(0, |p| p.anchor),
            participants: prepared.map(|p| p.participants).unwrap_or_default(),
        }))
    }

    async fn validate(
        &self,
        request: Request<pb::ValidateRequest>,
    ) -> Result<Response<pb::ValidateResponse>, Status> {
        {
            let reads: Vec<&[u8]> = request
                .get_ref()
                .reads
                .iter()
                .map(|r| r.key.as_slice())
                .collect();
            self.admit(
                &request,
                Some(&Access::Commit {
                    reads: &reads,
                    writes: &[],
                }),
            )?;
        }
        self.shard.check_serving().map_err(status_of)?;
        let req = request.into_inner();
        let txn = txn_id(&req.txn_id)?;
        let (reads, _) = txn_body(req.reads, Vec::new())?;
        self.shard
            .check_owned(req.map_epoch, reads.iter().map(|r| r.key.as_slice()))
            .map_err(status_of)?;
        let refused = self
            .shard
            .validate_reads(req.map_epoch, txn, &reads, req.hold)
            .map_err(status_of)?
            .err()
            .map(refused_pb);
        self.shard.check_serving().map_err(status_of)?;
        Ok(Response::new(pb::ValidateResponse { refused }))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        self.admit(
            &request,
            Some(&Access::Get {
                keys: &request.get_ref().keys,
            }),
        )?;
        self.shard.check_serving().map_err(status_of)?;
        let req = request.into_inner();
        let txn = txn_id(&req.txn_id)?;
        if req.keys.len() > GET_KEYS_MAX {
            return Err(invalid(validate::InputError::TooManyGetKeys {
                got: req.keys.len(),
            }));
        }
        let held = self.shard.release_holds(txn, &req.keys) && self.shard.check_serving().is_ok();
        Ok(Response::new(pb::ReleaseResponse { held }))
    }

    type ReplicateStream = tokio_stream::wrappers::ReceiverStream<Result<pb::ReplicaBatch, Status>>;

    async fn replicate(
        &self,
        request: Request<tonic::Streaming<pb::ReplicaAck>>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        let rx = crate::replica::serve_stream(self.shard.clone(), request.into_inner()).await?;
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn move_slots(
        &self,
        request: Request<pb::MoveSlotsRequest>,
    ) -> Result<Response<pb::MoveSlotsResponse>, Status> {
        self.shard.check_serving().map_err(status_of)?;
        let req = request.into_inner();
        let op = pb::SlotOp::try_from(req.op).unwrap_or(pb::SlotOp::Unspecified);
        let map_epoch = match op {
            pb::SlotOp::FollowMap | pb::SlotOp::Release => {
                let owned = SlotSet::from_bytes(&req.owned).map_err(invalid)?;
                if req.map_epoch == 0 {
                    return Err(invalid("FOLLOW_MAP and RELEASE need the map epoch"));
                }
                if op == pb::SlotOp::FollowMap {
                    self.shard.set_slots(req.map_epoch, owned);
                    self.shard.status().map_epoch
                } else {
                    let slots = SlotSet::from_bytes(&req.slots).map_err(invalid)?;
                    self.shard
                        .release_slots(req.map_epoch, owned, &slots)
                        .await
                        .map_err(status_of)?
                }
            }
            pb::SlotOp::BeginImport
            | pb::SlotOp::AbandonImport
            | pb::SlotOp::Freeze
            | pb::SlotOp::Thaw => {
                let slots = SlotSet::from_bytes(&req.slots).map_err(invalid)?;
                let step = match op {
                    pb::SlotOp::BeginImport => SlotStep::BeginImport {
                        from: peer(req.peer_group)?,
                    },
                    pb::SlotOp::AbandonImport => SlotStep::AbandonImport,
                    pb::SlotOp::Freeze => SlotStep::Freeze {
                        to: peer(req.peer_group)?,
                    },
                    _ => SlotStep::Thaw,
                };
                self.shard
                    .move_slots(step, &slots)
                    .await
                    .map_err(status_of)?
            }
            pb::SlotOp::Unspecified => return Err(invalid("op must name a slot step")),
        };
        Ok(Response::new(pb::MoveSlotsResponse { map_epoch }))
    }

    type ExportSlotsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::ExportChunk, Status>> + Send + 'static>,
    >;

    async fn export_slots(
        &self,
        request: Request<pb::ExportSlotsRequest>,
    ) -> Result<Response<Self::ExportSlotsStream>, Status> {
        self.shard.check_serving().map_err(status_of)?;
        let req = request.into_inner();
        let slots = SlotSet::from_bytes(&req.slots).map_err(invalid)?;
        let drained = if req.drained {
            Some(peer(req.peer_group)?)
        } else {
            None
        };
        let export = self
            .shard
            .export(&slots, req.above_version, drained)
            .await
            .map_err(status_of)?;
        let chunks = export_chunks(&export.entries, EXPORT_CHUNK_BYTES);
        let count = chunks.len();
        let complete_version = export.complete_version;
        let entries = Arc::new(export.entries);
        // Messages are built as the client takes them: the values are
        // shared with the index, not copied, until then.
        let messages = chunks.into_iter().enumerate().map(move |(i, range)| {
            let last = i + 1 == count;
            Ok(pb::ExportChunk {
                entries: entries[range]
                    .iter()
                    .map(|(key, entry)| pb::ExportEntry {
                        key: key.to_vec(),
                        value: entry.value().map(<[u8]>::to_vec).unwrap_or_default(),
                        deleted: entry.value().is_none(),
                        version: entry.version(),
                    })
                    .collect(),
                last,
                complete_version: if last { complete_version } else { 0 },
            })
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(messages))))
    }

    type FeedStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::FeedBatch, Status>> + Send + 'static>,
    >;

    async fn feed(
        &self,
        request: Request<pb::FeedRequest>,
    ) -> Result<Response<Self::FeedStream>, Status> {
        let req = request.into_inner();
        validate::key_range(&req.start, &req.end).map_err(invalid)?;
        let range = KeyRange {
            start: req.start,
            end: (!req.end.is_empty()).then_some(req.end),
        };
        if req.initial_scan && !req.from_now {
            return Err(invalid(
                "an initial scan starts from now: ask for it with from_now",
            ));
        }
        let start = self
            .shard
            .feed_start((!req.from_now).then_some(req.after))
            .map_err(status_of)?;
        let (tx, rx) = tokio::sync::mpsc::channel(FEED_BATCHES_BUFFERED_MAX);
        tokio::spawn(
            self.shard
                .clone()
                .run_feed(range, start, req.initial_scan, tx),
        );
        let batches = tokio_stream::wrappers::ReceiverStream::new(rx).map(|batch| {
            batch.map_err(status_of).map(|b| {
                let (scanning, scan_rows, scan_done, epochs) = match b.scan {
                    Some(scan) => (
                        true,
                        scan.rows
                            .into_iter()
                            .map(|r| pb::FeedScanRow {
                                key: r.key,
                                value: r.value,
                                version: r.version,
                            })
                            .collect(),
                        scan.done,
                        scan.epochs,
                    ),
                    None => (false, Vec::new(), false, None),
                };
                let (scan_epoch_min, scan_epoch_max) = epochs.map_or((0, 0), |e| (e.min, e.max));
                pb::FeedBatch {
                    txns: b.txns.into_iter().map(feed_txn).collect(),
                    resolved: b.resolved,
                    head: b.head,
                    scanning,
                    scan_rows,
                    scan_done,
                    scan_epoch_min,
                    scan_epoch_max,
                }
            })
        });
        Ok(Response::new(Box::pin(batches)))
    }

    async fn ingest(
        &self,
        request: Request<pb::IngestRequest>,
    ) -> Result<Response<pb::IngestResponse>, Status> {
        self.shard.check_serving().map_err(status_of)?;
        let req = request.into_inner();
        let from = peer(req.from_group)?;
        let mut entries = Vec::with_capacity(req.entries.len());
        for e in req.entries {
            validate::key(&e.key).map_err(invalid)?;
            if e.deleted && !e.value.is_empty() {
                return Err(invalid("an entry cannot both be deleted and carry a value"));
            }
            if !e.deleted {
                validate::value(&e.value).map_err(invalid)?;
            }
            entries.push(SnapEntry {
                key: e.key,
                value: (!e.deleted).then_some(e.value),
                version: e.version,
            });
        }
        let version = self.shard.ingest(from, entries).await.map_err(status_of)?;
        Ok(Response::new(pb::IngestResponse { version }))
    }

    async fn transfer_primary(
        &self,
        request: Request<pb::TransferPrimaryRequest>,
    ) -> Result<Response<pb::TransferPrimaryResponse>, Status> {
        let to = request.into_inner().to;
        let epoch = crate::replica::transfer(&self.shard, &to).await?;
        Ok(Response::new(pb::TransferPrimaryResponse { epoch }))
    }

    async fn shard_status(
        &self,
        _request: Request<pb::ShardStatusRequest>,
    ) -> Result<Response<pb::ShardStatusResponse>, Status> {
        let s = self.shard.status();
        let now = tokio::time::Instant::now();
        let (role, epoch) = self.shard.repl.role();
        let marks = self.shard.repl.marks();
        let view = self.shard.repl.view();
        let replicas: Vec<pb::ReplicaProgress> = if role == Role::Primary {
            let mut list: Vec<_> = view
                .peers
                .iter()
                .map(|(addr, p)| pb::ReplicaProgress {
                    addr: addr.clone(),
                    acked_lsn: p.acked,
                    in_sync: view.in_sync(addr),
                    silent_ms: now.saturating_duration_since(p.last_ack).as_millis() as u64,
                    heard: p.heard,
                    catch_up: p
                        .catch_up
                        .map(|c| c.mode.name().to_string())
                        .unwrap_or_default(),
                    catch_up_done: p.catch_up.map_or(0, |c| c.done),
                    catch_up_total: p.catch_up.map_or(0, |c| c.total),
                })
                .collect();
            list.sort_by(|a, b| a.addr.cmp(&b.addr));
            list
        } else {
            Vec::new()
        };
        let primary_silent_ms = match view.role {
            Role::Backup | Role::Learner => {
                now.saturating_duration_since(view.last_heard).as_millis() as u64
            }
            _ => 0,
        };
        let at_risk = self.shard.repl.at_risk(s.durable_lsn, now);
        let (reads_per_second, stale_reads_per_second) = self.shard.metrics().read_rates();
        Ok(Response::new(pb::ShardStatusResponse {
            role: role.name().to_string(),
            epoch,
            lease_ms: self.shard.repl.lease_left(now),
            commit_lsn: marks.sync,
            replicas,
            at_risk_records: at_risk.records,
            at_risk_ms: at_risk.oldest.as_millis() as u64,
            group_id: s.group_id,
            map_epoch: s.map_epoch,
            slots_owned: s.slots_owned,
            last_lsn: s.last_lsn,
            durable_lsn: s.durable_lsn,
            keys: s.keys,
            prepared: s.prepared,
            txn_records: s.txn_records,
            pid: std::process::id(),
            metrics_addr: self.shard.repl.metrics_addr(),
            uptime_ms: self.shard.uptime(now).as_millis() as u64,
            primary_silent_ms,
            reads_per_second,
            stale_reads_per_second,
        }))
    }
}

/// Serves the shard service on `listener` until `shutdown` resolves.
pub async fn serve(
    shard: Arc<Shard>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    serve_incoming(
        shard,
        trellis_net::tls::accept::incoming(listener),
        shutdown,
    )
    .await
}

/// Serves the shard service, and gRPC server reflection (v1 and v1alpha)
/// describing it, on already accepted connections (real sockets, or the
/// simulator's) until `shutdown` resolves.
pub async fn serve_incoming<IO>(
    shard: Arc<Shard>,
    incoming: impl tokio_stream::Stream<Item = std::io::Result<IO>> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error>
where
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
{
    // Reflection lets tools (`grpcurl`) inspect a shard without the `.proto`
    // files; it lists only the service served here.
    let (reflection_v1, reflection_v1alpha) =
        trellis_proto::reflection::services(&[pb::shard_server::SERVICE_NAME]);
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(STREAMS_PER_CONNECTION_MAX))
        // Internal to the cluster (node certificates only, when TLS is on)
        // except the methods a routing client calls, which check their
        // callers themselves (crate::gate).
        .add_service(crate::gate::NodeOnlyExcept::new(
            ShardApi::new(shard).into_service(),
        ))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Binds the gRPC listener; the address is what the process reports.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(SocketAddr, tokio::net::TcpListener)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    Ok((listener.local_addr()?, listener))
}
