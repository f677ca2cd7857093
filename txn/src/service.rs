//! The public `trellis.v1.Txn` service over a [`TxnManager`]: wire types
//! become domain types here, input is checked against the limits here, and
//! every gRPC `Status` of a transaction is built here ([`status_of`]). The
//! coordinator serves it; a routing client (the Rust client's
//! `Route::Direct`) calls it in process, so both answer alike. The
//! coordinator's `Admin` and `Membership` services build their statuses
//! with the same helpers ([`status_of`], [`invalid`], [`deadline_of`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tonic::{Request, Response, Status};
use trellis_proto::error;
use trellis_proto::v1 as pb;
use trellis_types::limits::{GET_KEYS_MAX, KEY_BYTES_MAX, SCAN_LIMIT_MAX, STALENESS_MAX};
use trellis_types::{TxnId, validate};

use crate::authz::Access;
use crate::gate::Gate;
use crate::stale::{ReadOptions, ReadSource, floors_of};
use crate::txn::{AbortReason, CommitOutcome, CommitRequest, TxnError, TxnManager, TxnState};

/// Deadline of a request whose client set none (or a longer one).
pub const REQUEST_DEADLINE_MAX: Duration = Duration::from_secs(30);
/// Deadline of a request whose client set none.
pub const REQUEST_DEADLINE_DEFAULT: Duration = Duration::from_secs(10);
/// Items a Scan returns when it asks for no limit.
pub const SCAN_LIMIT_DEFAULT: u32 = 1000;

/// Builds the status for a transaction error: the gRPC code, the error's
/// text, and gRPC's richer error model (a `google.rpc.ErrorInfo` whose reason
/// is a `trellis.v1.ErrorReason` name; see `trellis_proto::error`).
pub fn status_of(err: TxnError) -> Status {
    let (code, reason) = match &err {
        TxnError::Invalid(_) => (tonic::Code::InvalidArgument, pb::ErrorReason::InvalidInput),
        TxnError::Unavailable(_) | TxnError::Moved { .. } => {
            (tonic::Code::Unavailable, pb::ErrorReason::Unavailable)
        }
        TxnError::OutcomeUnknown { .. } => (tonic::Code::Unknown, pb::ErrorReason::OutcomeUnknown),
        TxnError::Deadline(_) => (tonic::Code::DeadlineExceeded, pb::ErrorReason::Unavailable),
        TxnError::Internal(_) => (tonic::Code::Internal, pb::ErrorReason::Internal),
        // As the coordinator's gate answers them (no ErrorInfo).
        TxnError::Unauthenticated(message) => return Status::unauthenticated(message.clone()),
        TxnError::PermissionDenied(message) => return Status::permission_denied(message.clone()),
    };
    let metadata = match &err {
        TxnError::OutcomeUnknown { txn, .. } => {
            Some((error::key::TXN_ID, hex::encode(txn.as_bytes())))
        }
        _ => None,
    };
    error::status(code, err.to_string(), reason.as_str_name(), metadata)
}

/// An `INVALID_ARGUMENT` status with `message` (reason `INVALID_INPUT`).
pub fn invalid(message: impl std::fmt::Display) -> Status {
    status_of(TxnError::Invalid(message.to_string()))
}

/// The request's deadline: the client's `grpc-timeout`, capped, or the
/// default.
pub fn deadline_of<T>(request: &Request<T>) -> Instant {
    let asked = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout);
    Instant::now()
        + asked
            .unwrap_or(REQUEST_DEADLINE_DEFAULT)
            .min(REQUEST_DEADLINE_MAX)
}

/// Parses a `grpc-timeout` header value: digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A read's options from its consistency and session floors: STALE needs
/// a bound above zero and at most [`STALENESS_MAX`].
fn read_options(
    consistency: Option<&pb::Consistency>,
    floors: &[pb::SessionFloor],
) -> Result<ReadOptions, Status> {
    let max_staleness = match consistency {
        None => None,
        Some(c) => match pb::consistency::Level::try_from(c.level) {
            Ok(pb::consistency::Level::Strong) => None,
            Ok(pb::consistency::Level::Stale) => {
                let bound = Duration::from_millis(c.max_staleness_ms);
                if bound.is_zero() || bound > STALENESS_MAX {
                    return Err(invalid(format!(
                        "STALE max_staleness_ms {}: must be from 1 to {} ms",
                        c.max_staleness_ms,
                        STALENESS_MAX.as_millis()
                    )));
                }
                Some(bound)
            }
            Err(_) => return Err(invalid(format!("unknown consistency level {}", c.level))),
        },
    };
    Ok(ReadOptions {
        max_staleness,
        floors: floors.iter().map(|f| (f.group_id, f.version)).collect(),
    })
}

/// Converts and checks a Commit request.
fn commit_request(req: pb::CommitRequest) -> Result<CommitRequest, Status> {
    let txn = TxnId::from_bytes(&req.txn_id).map_err(invalid)?;
    let mut writes = Vec::with_capacity(req.writes.len());
    for w in req.writes {
        let value = match w.op {
            Some(pb::write::Op::Put(value)) => Some(value),
            Some(pb::write::Op::Delete(_)) => None,
            None => return Err(invalid("a write must either put a value or delete")),
        };
        writes.push((w.key, value));
    }
    validate::txn(
        req.reads.iter().map(|r| r.key.as_slice()),
        writes.iter().map(|(k, v)| (k.as_slice(), v.as_deref())),
    )
    .map_err(invalid)?;
    let durability = u32::try_from(req.durability)
        .ok()
        .filter(|d| *d <= pb::Durability::Async as u32)
        .ok_or_else(|| {
            invalid(format!(
                "unknown durability {}: SYNC (0), SEMI_SYNC (1) or ASYNC (2)",
                req.durability
            ))
        })?;
    Ok(CommitRequest {
        txn,
        durability,
        reads: req.reads.into_iter().map(|r| (r.key, r.version)).collect(),
        writes,
    })
}

fn abort_reason_pb(reason: AbortReason) -> pb::AbortReason {
    match reason {
        AbortReason::Conflict => pb::AbortReason::Conflict,
        AbortReason::Locked => pb::AbortReason::Locked,
        AbortReason::ResolvedAbort => pb::AbortReason::ResolvedAbort,
        AbortReason::ParticipantUnavailable => pb::AbortReason::ParticipantUnavailable,
        AbortReason::SlotsMoved => pb::AbortReason::SlotsMoved,
    }
}

/// The public transaction service.
#[derive(Clone)]
pub struct TxnApi {
    txns: Arc<TxnManager>,
    /// Who may do what; `None`: everyone everything (the client's
    /// in-process service of the direct route, the simulator).
    gate: Option<Arc<Gate>>,
}

impl TxnApi {
    pub fn new(txns: Arc<TxnManager>) -> Self {
        TxnApi { txns, gate: None }
    }

    /// The service behind `gate`: each request is authenticated and
    /// authorized once, before anything is read or prepared.
    pub fn with_gate(txns: Arc<TxnManager>, gate: Arc<Gate>) -> Self {
        TxnApi {
            txns,
            gate: Some(gate),
        }
    }

    fn check<T>(&self, request: &Request<T>, access: &Access<'_>) -> Result<(), Status> {
        match &self.gate {
            Some(gate) => gate.check_request(request, access),
            None => Ok(()),
        }
    }

    /// Only that the sender is someone the cluster knows.
    fn known<T>(&self, request: &Request<T>) -> Result<(), Status> {
        match &self.gate {
            Some(gate) => gate
                .principal(request.metadata(), request.extensions())
                .map(|_| ()),
            None => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl pb::txn_server::Txn for TxnApi {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let deadline = deadline_of(&request);
        self.check(
            &request,
            &Access::Get {
                keys: &request.get_ref().keys,
            },
        )?;
        let req = request.into_inner();
        if req.keys.len() > GET_KEYS_MAX {
            return Err(invalid(validate::InputError::TooManyGetKeys {
                got: req.keys.len(),
            }));
        }
        for key in &req.keys {
            validate::key(key).map_err(invalid)?;
        }
        let opts = read_options(req.consistency.as_ref(), &req.floors)?;
        let (items, sources) = self
            .txns
            .get(&req.keys, &opts, deadline)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::GetResponse {
            items: items.into_iter().map(item_pb).collect(),
            sources: sources.iter().map(ReadSource::to_pb).collect(),
        }))
    }

    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        let deadline = deadline_of(&request);
        self.check(
            &request,
            &Access::Scan {
                prefix: &request.get_ref().prefix,
            },
        )?;
        let req = request.into_inner();
        if req.limit > SCAN_LIMIT_MAX {
            return Err(invalid(validate::InputError::ScanLimit { got: req.limit }));
        }
        if req.prefix.len() > KEY_BYTES_MAX {
            return Err(invalid(validate::InputError::KeyTooLong {
                got: req.prefix.len(),
            }));
        }
        let opts = read_options(req.consistency.as_ref(), &req.floors)?;
        let limit = if req.limit == 0 {
            SCAN_LIMIT_DEFAULT
        } else {
            req.limit
        };
        let (items, truncated, sources) = self
            .txns
            .scan(&req.prefix, limit, &opts, deadline)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::ScanResponse {
            items: items.into_iter().map(item_pb).collect(),
            truncated,
            sources: sources.iter().map(ReadSource::to_pb).collect(),
        }))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let deadline = deadline_of(&request);
        {
            // Every key at once, before anything is prepared: a commit
            // touching one key outside the user's grants is refused whole.
            let req = request.get_ref();
            let reads: Vec<&[u8]> = req.reads.iter().map(|r| r.key.as_slice()).collect();
            let writes: Vec<&[u8]> = req.writes.iter().map(|w| w.key.as_slice()).collect();
            self.check(
                &request,
                &Access::Commit {
                    reads: &reads,
                    writes: &writes,
                },
            )?;
        }
        let req = commit_request(request.into_inner())?;
        let outcome = self.txns.commit(req, deadline).await.map_err(status_of)?;
        let outcome = match outcome {
            CommitOutcome::Committed { written } => {
                let map = self.txns.router().map();
                let floors = floors_of(written.iter().map(|(k, v)| (k.as_slice(), *v)), |k| {
                    map.group_of(k)
                });
                pb::commit_response::Outcome::Committed(pb::Committed {
                    floors: floors
                        .into_iter()
                        .map(|(group_id, version)| pb::SessionFloor { group_id, version })
                        .collect(),
                    written: written
                        .into_iter()
                        .map(|(key, version)| pb::Item {
                            key,
                            value: Vec::new(),
                            version,
                        })
                        .collect(),
                })
            }
            CommitOutcome::Aborted(abort) => pb::commit_response::Outcome::Aborted(pb::Aborted {
                reason: abort_reason_pb(abort.reason) as i32,
                keys: abort.keys,
                message: abort.message,
            }),
        };
        Ok(Response::new(pb::CommitResponse {
            outcome: Some(outcome),
        }))
    }

    async fn txn_status(
        &self,
        request: Request<pb::TxnStatusRequest>,
    ) -> Result<Response<pb::TxnStatusResponse>, Status> {
        let deadline = deadline_of(&request);
        self.known(&request)?;
        let txn = TxnId::from_bytes(&request.into_inner().txn_id).map_err(invalid)?;
        let state = match self.txns.status(txn, deadline).await.map_err(status_of)? {
            TxnState::Committed => pb::TxnState::Committed,
            TxnState::Aborted => pb::TxnState::Aborted,
            TxnState::Unknown => pb::TxnState::Unknown,
        };
        Ok(Response::new(pb::TxnStatusResponse {
            state: state as i32,
        }))
    }

    async fn cluster_map(
        &self,
        request: Request<pb::ClusterMapRequest>,
    ) -> Result<Response<pb::ClusterMapResponse>, Status> {
        self.known(&request)?;
        let router = self.txns.router();
        let current = router.map();
        // The caller found its map stale and holds ours: read the catalog
        // (concurrent callers share one read). Otherwise ours is news to it.
        let map = match request.into_inner().known {
            Some(known) if current.has_stamp(&known) => router.refresh(&current).await,
            _ => current,
        };
        Ok(Response::new(map.to_pb()))
    }

    async fn resolve_lock(
        &self,
        request: Request<pb::ResolveLockRequest>,
    ) -> Result<Response<pb::ResolveLockResponse>, Status> {
        let deadline = deadline_of(&request);
        self.check(
            &request,
            &Access::Get {
                keys: std::slice::from_ref(&request.get_ref().key),
            },
        )?;
        let req = request.into_inner();
        validate::key(&req.key).map_err(invalid)?;
        let txn = TxnId::from_bytes(&req.txn_id).map_err(invalid)?;
        let map = self.txns.router().map();
        // Every group named must be one of the map's: a group nobody knows
        // would only be retried until the deadline.
        if let Some(group) = std::iter::once(&req.anchor_group)
            .chain(&req.participants)
            .find(|g| !map.groups.contains_key(g))
        {
            return Err(invalid(format!(
                "group {group} is not in the cluster's map (groups: {:?})",
                map.groups.keys().collect::<Vec<_>>()
            )));
        }
        let mut participants = req.participants;
        participants.push(map.group_of(&req.key));
        participants.sort_unstable();
        participants.dedup();
        let commit = self
            .txns
            .resolve(txn, req.anchor_group, &participants, deadline)
            .await
            .map_err(status_of)?;
        let state = if commit {
            pb::TxnState::Committed
        } else {
            pb::TxnState::Aborted
        };
        Ok(Response::new(pb::ResolveLockResponse {
            state: state as i32,
        }))
    }
}

/// A read item on the wire.
fn item_pb(i: crate::txn::Item) -> pb::Item {
    pb::Item {
        key: i.key,
        value: i.value,
        version: i.version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
    }

    #[test]
    fn commit_requests_are_checked() {
        let ok = pb::CommitRequest {
            txn_id: vec![1; 16],
            reads: vec![pb::Read {
                key: b"a".to_vec(),
                version: 0,
            }],
            writes: vec![pb::Write {
                key: b"b".to_vec(),
                op: Some(pb::write::Op::Put(b"1".to_vec())),
            }],
            durability: 0,
        };
        assert!(commit_request(ok.clone()).is_ok());
        let mut no_op = ok.clone();
        no_op.writes[0].op = None;
        assert_eq!(
            commit_request(no_op).expect_err("no op").code(),
            tonic::Code::InvalidArgument
        );
        let mut dup = ok.clone();
        dup.writes.push(dup.writes[0].clone());
        assert!(
            commit_request(dup)
                .expect_err("dup")
                .message()
                .contains("twice")
        );
        let mut short = ok;
        short.txn_id = vec![1; 3];
        assert!(
            commit_request(short)
                .expect_err("short id")
                .message()
                .contains("16")
        );
    }
}
