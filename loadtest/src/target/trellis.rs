//! Trellis through its client library: `trellis://HOST:PORT`.
//!
//! Each attempt is one [`trellis_client::Transaction`]: `get_many` records
//! the versions read, the writes are buffered, and `commit` sends them with
//! those versions, so a concurrent writer makes it abort with CONFLICT. A
//! single-key read-only transaction is one STRONG `Get` (linearizable on its
//! own; no Commit is needed); a read-only transaction over several keys is
//! validated by a Commit that writes nothing.
//!
//! The commit path (1PC/2PC) is predicted per transaction from the written
//! keys' groups: the slot map is recomputed from the cluster's group ids
//! with the ring the coordinator uses (`trellis_types::placement`) and used
//! only if it gives every group the number of slots `Admin.Status` reports.
//! Otherwise transactions are only told apart as reads and writes.

use std::time::Duration;

use futures::future::BoxFuture;
use trellis_client::{Client, Error};
use trellis_proto::v1 as pb;
use trellis_types::placement::assign_slots;
use trellis_types::{GroupId, slot_of};

use super::{Options, Path, Target, TxnError, Values};
use crate::workload::TxnSpec;

pub struct Trellis {
    addr: String,
    clients: Vec<Client>,
    /// `slots[s]`: group of slot `s`, when the map could be verified.
    slots: Option<Vec<GroupId>>,
    groups: usize,
    options: Options,
}

impl Trellis {
    pub async fn connect(addr: &str, options: &Options) -> anyhow::Result<Trellis> {
        let client_options = trellis_client::Options {
            rpc_timeout: options.timeout,
            connect_timeout: options.timeout,
            route: options.route,
        };
        let mut clients = Vec::with_capacity(options.connections);
        for _ in 0..options.connections.max(1) {
            clients.push(
                Client::connect_with(addr, client_options.clone())
                    .await
                    .map_err(|e| anyhow::anyhow!("connecting to trellis://{addr}: {e}"))?,
            );
        }
        let status = fetch_status(addr, options.timeout).await?;
        let ids: Vec<GroupId> = status.groups.iter().map(|g| g.group_id).collect();
        let slots = (!ids.is_empty())
            .then(|| assign_slots(&ids))
            .filter(|slots| {
                status.groups.iter().all(|g| {
                    slots.iter().filter(|s| **s == g.group_id).count() == g.slots_owned as usize
                })
            });
        Ok(Trellis {
            addr: addr.to_string(),
            clients,
            slots,
            groups: ids.len(),
            options: options.clone(),
        })
    }
}

async fn fetch_status(addr: &str, timeout: Duration) -> anyhow::Result<pb::StatusResponse> {
    let channel = trellis_net::connect(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(timeout)
            .timeout(timeout),
    )
    .await
    .map_err(|e| anyhow::anyhow!("connecting to trellis://{addr}: {e}"))?;
    // With `--user`, a password login (once per process).
    trellis_client::auth::login(&channel)
        .await
        .map_err(|e| anyhow::anyhow!("trellis://{addr}: {e}"))?;
    let mut request = tonic::Request::new(pb::StatusRequest {});
    request.set_timeout(timeout);
    Ok(
        pb::admin_client::AdminClient::new(trellis_client::auth::authed(channel))
            .status(request)
            .await
            .map_err(|s| {
                anyhow::anyhow!("asking trellis://{addr} for its status: {}", s.message())
            })?
            .into_inner(),
    )
}

/// An error before Commit was sent: nothing was written.
fn before_commit(err: Error) -> TxnError {
    if err.is_retryable() {
        TxnError::Conflict(err.to_string())
    } else {
        TxnError::Failed(err.to_string())
    }
}

/// An error of Commit.
fn of_commit(err: Error) -> TxnError {
    match err {
        Error::Conflict { .. }
        | Error::Locked { .. }
        | Error::ResolvedAbort { .. }
        | Error::SlotsMoved { .. } => TxnError::Conflict(err.to_string()),
        Error::ParticipantUnavailable { .. }
        | Error::InvalidArgument(_)
        | Error::Application(_)
        | Error::FeedHistoryGone { .. } => TxnError::Failed(err.to_string()),
        // Lost answers, timeouts and server errors after the request left:
        // the commit may have happened.
        Error::OutcomeUnknown { .. } | Error::Unavailable(_) | Error::Server { .. } => {
            TxnError::Unknown(err.to_string())
        }
    }
}

impl Target for Trellis {
    fn describe(&self) -> String {
        format!(
            "trellis://{} ({} connection(s), route {}, {} group(s), commit path {})",
            self.addr,
            self.clients.len(),
            self.options.route.name(),
            self.groups,
            if self.slots.is_some() {
                "from the slot map"
            } else {
                "unknown: the slot map could not be verified"
            }
        )
    }

    fn path(&self, spec: &TxnSpec) -> Path {
        let keys = spec.write_keys();
        if keys.is_empty() {
            return Path::Read;
        }
        let Some(slots) = &self.slots else {
            return Path::Write;
        };
        let first = slots[slot_of(keys[0]) as usize];
        if keys.iter().all(|k| slots[slot_of(k) as usize] == first) {
            Path::OnePc
        } else {
            Path::TwoPc
        }
    }

    fn execute<'a>(
        &'a self,
        conn: usize,
        spec: &'a TxnSpec,
    ) -> BoxFuture<'a, Result<Values, TxnError>> {
        Box::pin(async move {
            let client = &self.clients[conn % self.clients.len()];
            if spec.reads.len() == 1 && spec.is_read_only() {
                let items = client
                    .get(&spec.reads, self.options.consistency)
                    .await
                    .map_err(before_commit)?;
                return Ok(items
                    .into_iter()
                    .map(|i| i.value().map(<[u8]>::to_vec))
                    .collect());
            }
            let txn = client.begin();
            txn.set_consistency(self.options.consistency);
            txn.set_durability(self.options.durability);
            let values: Values = if spec.reads.is_empty() {
                Vec::new()
            } else {
                txn.get_many(&spec.reads)
                    .await
                    .map_err(before_commit)?
                    .into_iter()
                    .map(|i| (i.version != 0).then_some(i.value))
                    .collect()
            };
            let writes = spec.writes(&values).map_err(TxnError::Failed)?;
            for (key, value) in &writes {
                txn.put(key, value).map_err(before_commit)?;
            }
            txn.commit().await.map_err(of_commit)?;
            Ok(values)
        })
    }
}
