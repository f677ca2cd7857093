//! etcd through its KV gRPC API: `etcd://HOST:PORT[,HOST:PORT...]`.
//!
//! An attempt reads its keys (one `Range`, or one `Txn` of ranges when there
//! are several, which etcd answers from one revision), computes the writes,
//! then sends one `Txn`: compare each key's `mod_revision` with the one read
//! (0 for an absent key), and put the writes only if all are equal. A
//! `succeeded: false` answer is a conflict. Reads are linearizable unless
//! `--consistency stale:...` asks for serializable (member-local) reads.
//! `--durability` has no etcd counterpart and is ignored: every etcd write
//! is committed by a quorum.
//!
//! Connections are gRPC channels spread round robin over the endpoints.

pub mod pb {
    #![allow(clippy::all, rust_2018_idioms, missing_debug_implementations)]
    tonic::include_proto!("etcdserverpb");
}

use futures::future::BoxFuture;
use pb::kv_client::KvClient;
use tonic::transport::{Channel, Endpoint};

use super::{Options, Target, TxnError, Values};
use crate::workload::TxnSpec;

pub struct Etcd {
    endpoints: Vec<String>,
    clients: Vec<KvClient<Channel>>,
    options: Options,
}

impl Etcd {
    pub async fn connect(endpoints: &str, options: &Options) -> anyhow::Result<Etcd> {
        let endpoints: Vec<String> = endpoints
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_string)
            .collect();
        anyhow::ensure!(
            !endpoints.is_empty(),
            "etcd:// needs at least one HOST:PORT"
        );
        let mut clients = Vec::new();
        for i in 0..options.connections.max(endpoints.len()) {
            let addr = &endpoints[i % endpoints.len()];
            let channel = Endpoint::from_shared(format!("http://{addr}"))?
                .connect_timeout(options.timeout)
                .timeout(options.timeout)
                .connect()
                .await
                .map_err(|e| anyhow::anyhow!("connecting to etcd at {addr}: {e}"))?;
            clients.push(KvClient::new(channel));
        }
        Ok(Etcd {
            endpoints,
            clients,
            options: options.clone(),
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.options.timeout);
        request
    }

    fn range(&self, key: &[u8]) -> pb::RangeRequest {
        pb::RangeRequest {
            key: key.to_vec(),
            serializable: matches!(
                self.options.consistency,
                trellis_client::Consistency::Stale(_)
            ),
            ..Default::default()
        }
    }
}

fn put(key: Vec<u8>, value: Vec<u8>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key,
            value,
            ..Default::default()
        })),
    }
}

/// The value and mod revision of the first (only) key of a range.
fn first(response: pb::RangeResponse) -> (Option<Vec<u8>>, i64) {
    match response.kvs.into_iter().next() {
        Some(kv) => (Some(kv.value), kv.mod_revision),
        None => (None, 0),
    }
}

fn read_error(status: tonic::Status) -> TxnError {
    TxnError::Failed(format!(
        "etcd read: {:?}: {}",
        status.code(),
        status.message()
    ))
}

fn commit_error(status: tonic::Status) -> TxnError {
    let text = format!("etcd txn: {:?}: {}", status.code(), status.message());
    match status.code() {
        tonic::Code::Unavailable
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Cancelled
        | tonic::Code::Unknown
        | tonic::Code::Internal => TxnError::Unknown(text),
        _ => TxnError::Failed(text),
    }
}

impl Target for Etcd {
    fn describe(&self) -> String {
        format!(
            "etcd://{} ({} connection(s))",
            self.endpoints.join(","),
            self.clients.len()
        )
    }

    fn execute<'a>(
        &'a self,
        conn: usize,
        spec: &'a TxnSpec,
    ) -> BoxFuture<'a, Result<Values, TxnError>> {
        Box::pin(async move {
            let mut client = self.clients[conn % self.clients.len()].clone();
            let read: Vec<(Option<Vec<u8>>, i64)> = match spec.reads.len() {
                0 => Vec::new(),
                1 => vec![first(
                    client
                        .range(self.request(self.range(&spec.reads[0])))
                        .await
                        .map_err(read_error)?
                        .into_inner(),
                )],
                _ => {
                    let success = spec
                        .reads
                        .iter()
                        .map(|k| pb::RequestOp {
                            request: Some(pb::request_op::Request::RequestRange(self.range(k))),
                        })
                        .collect();
                    let response = client
                        .txn(self.request(pb::TxnRequest {
                            success,
                            ..Default::default()
                        }))
                        .await
                        .map_err(read_error)?
                        .into_inner();
                    response
                        .responses
                        .into_iter()
                        .map(|r| match r.response {
                            Some(pb::response_op::Response::ResponseRange(range)) => {
                                Ok(first(range))
                            }
                            other => Err(TxnError::Failed(format!(
                                "etcd answered a range with {other:?}"
                            ))),
                        })
                        .collect::<Result<_, _>>()?
                }
            };
            if read.len() != spec.reads.len() {
                return Err(TxnError::Failed(format!(
                    "etcd answered {} ranges for {} keys",
                    read.len(),
                    spec.reads.len()
                )));
            }
            let values: Values = read.iter().map(|(v, _)| v.clone()).collect();
            let writes = spec.writes(&values).map_err(TxnError::Failed)?;
            if writes.is_empty() {
                return Ok(values);
            }
            let compare = spec
                .reads
                .iter()
                .zip(&read)
                .map(|(key, (_, revision))| pb::Compare {
                    result: pb::compare::CompareResult::Equal as i32,
                    target: pb::compare::CompareTarget::Mod as i32,
                    key: key.clone(),
                    target_union: Some(pb::compare::TargetUnion::ModRevision(*revision)),
                })
                .collect();
            let success = writes.into_iter().map(|(k, v)| put(k, v)).collect();
            let response = client
                .txn(self.request(pb::TxnRequest {
                    compare,
                    success,
                    failure: Vec::new(),
                }))
                .await
                .map_err(commit_error)?
                .into_inner();
            if response.succeeded {
                Ok(values)
            } else {
                Err(TxnError::Conflict(
                    "etcd txn: a key's mod_revision changed since it was read".into(),
                ))
            }
        })
    }
}
