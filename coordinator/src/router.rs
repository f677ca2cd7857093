//! Where requests go: the current shard map and one gRPC channel per shard
//! address. A coordinator's router refreshes its map from the catalog; a
//! client that routes its own requests (the Rust client's `Route::Direct`)
//! refreshes it from a coordinator's `Txn.ClusterMap` ([`MapSource`]).
//!
//! The router never retries by itself; it classifies shard errors
//! ([`classify`]) so the transaction manager can refresh and retry whole
//! operations.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use trellis_proto::shard::v1 as pb;
use trellis_proto::shard::v1::shard_client::ShardClient;
use trellis_proto::v1::txn_client::TxnClient;
use trellis_types::GroupId;
use trellis_types::limits::MESSAGE_BYTES_MAX;

use crate::catalog::Catalog;
use crate::map::ClusterMap;

/// Deadline of one `Txn.ClusterMap` call of a routing client.
pub const MAP_RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of every RPC to a shard.
pub const SHARD_RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline for opening a connection to a shard.
pub const SHARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 keep-alive on shard channels: a dead peer is noticed even when TCP
/// says nothing.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// What a failed shard call means for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The shard does not own the key under its map, or knows an older map:
    /// refresh the map and retry.
    Route(String),
    /// The shard could not be reached or is not serving: retry after a
    /// backoff.
    Unavailable(String),
    /// The request reached the shard and may or may not have taken effect
    /// (deadline passed in flight).
    Ambiguous(String),
    /// The shard refused the input (a bug in the coordinator if it
    /// happens: input is validated before routing).
    Invalid(String),
    /// Anything else the shard answered.
    Other(String),
}

/// Classifies a shard's gRPC error.
pub fn classify(group: GroupId, status: &tonic::Status) -> Fault {
    let reason = trellis_proto::error::error_info(status)
        .and_then(|info| pb::ErrorReason::from_str_name(&info.reason));
    let text = format!("group {group}: {}", status.message());
    if matches!(
        reason,
        Some(pb::ErrorReason::WrongShard | pb::ErrorReason::StaleMap | pb::ErrorReason::NotPrimary)
    ) {
        return Fault::Route(text);
    }
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::ResourceExhausted => Fault::Unavailable(text),
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled | tonic::Code::Unknown => {
            Fault::Ambiguous(text)
        }
        tonic::Code::InvalidArgument => Fault::Invalid(text),
        _ => Fault::Other(text),
    }
}

/// Where a router reads the map again.
pub enum MapSource {
    /// The catalog: a coordinator's router.
    Catalog(Catalog),
    /// A coordinator's `Txn.ClusterMap`: a routing client's router.
    Coordinator(TxnClient<Channel>),
}

/// Asks a coordinator for its map (`Txn.ClusterMap`), saying which map the
/// caller holds so that a coordinator holding the same one reads its
/// catalog again. One call, [`MAP_RPC_TIMEOUT`].
pub async fn fetch_map(
    mut coordinator: TxnClient<Channel>,
    known: Option<&ClusterMap>,
) -> Result<ClusterMap, String> {
    let mut request = tonic::Request::new(trellis_proto::v1::ClusterMapRequest {
        known: known.map(ClusterMap::stamp),
    });
    request.set_timeout(MAP_RPC_TIMEOUT);
    let answer = coordinator
        .cluster_map(request)
        .await
        .map_err(|s| format!("Txn.ClusterMap: {}", s.message()))?
        .into_inner();
    ClusterMap::from_pb(answer).map_err(|e| format!("Txn.ClusterMap answered a bad map: {e}"))
}

/// The current map and the channels to shards.
pub struct Router {
    source: MapSource,
    map: RwLock<Arc<ClusterMap>>,
    channels: Mutex<HashMap<String, Channel>>,
    /// Serializes refreshes so a burst of route errors reads the catalog once.
    refreshing: tokio::sync::Mutex<()>,
}

impl Router {
    /// A coordinator's router: the map comes from `catalog`.
    pub fn new(catalog: Catalog, map: ClusterMap) -> Router {
        Self::with_source(MapSource::Catalog(catalog), map)
    }

    /// A router whose map comes from `source`.
    pub fn with_source(source: MapSource, map: ClusterMap) -> Router {
        Router {
            source,
            map: RwLock::new(Arc::new(map)),
            channels: Mutex::new(HashMap::new()),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// The catalog of a coordinator's router.
    ///
    /// # Panics
    /// On a routing client's router, which has no catalog: only the
    /// coordinator's services, sweeper and reshard driver ask for it, and
    /// they never run in a client.
    pub fn catalog(&self) -> &Catalog {
        match &self.source {
            MapSource::Catalog(catalog) => catalog,
            MapSource::Coordinator(_) => {
                panic!("a routing client's router has no catalog (it asks a coordinator)")
            }
        }
    }

    /// The map as last read.
    pub fn map(&self) -> Arc<ClusterMap> {
        self.map.read().expect("map lock poisoned").clone()
    }

    /// Installs a map (newer or equal epoch, or new members).
    pub fn install(&self, map: ClusterMap) {
        *self.map.write().expect("map lock poisoned") = Arc::new(map);
    }

    /// Re-reads the map from the catalog. Concurrent callers share one read.
    pub async fn refresh(&self, seen: &ClusterMap) -> Arc<ClusterMap> {
        let _guard = self.refreshing.lock().await;
        let current = self.map();
        if *current != *seen {
            return current; // someone refreshed while we waited
        }
        match &self.source {
            MapSource::Catalog(catalog) => match catalog.load().await {
                Ok(map) => self.install(map),
                Err(err) => tracing::warn!(%err, "cannot refresh the shard map from the catalog"),
            },
            MapSource::Coordinator(coordinator) => {
                match fetch_map(coordinator.clone(), Some(&current)).await {
                    Ok(map) => self.install(map),
                    Err(err) => {
                        tracing::warn!(%err, "cannot refresh the shard map from the coordinator")
                    }
                }
            }
        }
        self.map()
    }

    /// A client for `group`'s primary under `map`.
    pub fn client(&self, map: &ClusterMap, group: GroupId) -> Result<ShardClient<Channel>, Fault> {
        let addr = map.primary(group).ok_or_else(|| {
            Fault::Unavailable(format!("group {group} has no registered shard yet"))
        })?;
        self.client_at(addr)
    }

    /// A client for the replica at `addr` (any member, e.g. for status).
    pub fn client_at(&self, addr: &str) -> Result<ShardClient<Channel>, Fault> {
        let channel = {
            let mut channels = self.channels.lock().expect("channel map poisoned");
            match channels.get(addr) {
                Some(channel) => channel.clone(),
                None => {
                    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                        .map_err(|e| Fault::Other(format!("bad shard address {addr}: {e}")))?
                        .connect_timeout(SHARD_CONNECT_TIMEOUT)
                        .timeout(SHARD_RPC_TIMEOUT)
                        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                        .keep_alive_while_idle(true)
                        .tcp_nodelay(true);
                    let channel = trellis_net::lazy(endpoint);
                    channels.insert(addr.to_string(), channel.clone());
                    channel
                }
            }
        };
        Ok(ShardClient::new(channel)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX))
    }
}
