//! Where requests go: the current shard map and one gRPC channel per shard
//! address. Where the map is read again is a [`MapSource`]: a coordinator's
//! router reads its catalog (the coordinator implements the trait for it;
//! this crate does not know the catalog), a client that routes its own
//! requests (the Rust client's `Route::Direct`) asks a coordinator's
//! `Txn.ClusterMap` (the [`MapSource`] of a `TxnClient`, [`fetch_map`]).
//!
//! Every channel carries the process's [`Credentials`]: nothing for a
//! cluster process (its node certificate speaks for it), a password
//! user's bearer token for a routing client (the shards check it as the
//! coordinator does).
//!
//! The router never retries by itself; it classifies shard errors
//! ([`classify`]) so the transaction manager can refresh and retry whole
//! operations.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use trellis_proto::shard::v1 as pb;
use trellis_proto::shard::v1::shard_client::ShardClient;
use trellis_proto::v1::txn_client::TxnClient;
use trellis_types::GroupId;
use trellis_types::limits::MESSAGE_BYTES_MAX;

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
/// Shortest time between two reads of the map's source by one router
/// ([`Router::refresh`]). Callers that find the map stale meanwhile wait
/// for the next read and share it: a burst of refusals (a frozen slot
/// refuses every request for the length of a cutover) costs the source,
/// a coordinator's catalog, one read per interval, not one per caller.
pub const REFRESH_INTERVAL_MIN: Duration = Duration::from_millis(20);

/// Where a process's bearer token comes from: the `authorization`
/// header's value (`Bearer <token>`) as of now, if it holds one.
pub type BearerSource = fn() -> Option<MetadataValue<Ascii>>;

/// What a process sends on every request to say who it is, besides its
/// certificate: nothing, or the token of the user it logged in as.
#[derive(Clone, Copy, Default)]
pub struct Credentials {
    bearer: Option<BearerSource>,
}

impl Credentials {
    /// Nothing but the connection's certificate (if any).
    pub const NONE: Credentials = Credentials { bearer: None };

    /// The token `source` gives at each request.
    pub fn bearer(source: BearerSource) -> Credentials {
        Credentials {
            bearer: Some(source),
        }
    }
}

impl std::fmt::Debug for Credentials {
    // Never prints a token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("bearer", &self.bearer.is_some())
            .finish()
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(header) = self.bearer.and_then(|source| source()) {
            request
                .metadata_mut()
                .insert(crate::gate::AUTHORIZATION, header);
        }
        Ok(request)
    }
}

/// A channel whose requests carry [`Credentials`].
pub type Link = InterceptedService<Channel, Credentials>;

/// `channel` with `credentials` on every request.
pub fn link(channel: Channel, credentials: Credentials) -> Link {
    InterceptedService::new(channel, credentials)
}

/// A client of one shard replica.
pub type ShardRpc = ShardClient<Link>;

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
    /// The shard refused the caller (a routing client): UNAUTHENTICATED
    /// or PERMISSION_DENIED with the shard's words. Final: the same
    /// request would be refused again.
    Denied(tonic::Code, String),
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
        code @ (tonic::Code::Unauthenticated | tonic::Code::PermissionDenied) => {
            Fault::Denied(code, status.message().to_string())
        }
        _ => Fault::Other(text),
    }
}

/// Where a router reads the map again: a coordinator's catalog, or a
/// coordinator's `Txn.ClusterMap` (a routing client's router).
pub trait MapSource: Send + Sync + 'static {
    /// Reads the map again; `seen` is the map the router holds (a source
    /// may pass it on, as `Txn.ClusterMap`'s `known`). One read, within the
    /// source's own deadline.
    fn load<'a>(&'a self, seen: &'a ClusterMap) -> BoxFuture<'a, Result<ClusterMap, String>>;

    /// What the source is, for logs: "the catalog", "the coordinator".
    fn name(&self) -> &'static str;

    /// The source itself, so that its owner can get its own type back (the
    /// coordinator its catalog).
    fn as_any(&self) -> &dyn Any;
}

/// A coordinator's `Txn.ClusterMap`: a routing client's source.
impl MapSource for TxnClient<Link> {
    fn load<'a>(&'a self, seen: &'a ClusterMap) -> BoxFuture<'a, Result<ClusterMap, String>> {
        Box::pin(fetch_map(self.clone(), Some(seen)))
    }

    fn name(&self) -> &'static str {
        "the coordinator"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Asks a coordinator for its map (`Txn.ClusterMap`), saying which map the
/// caller holds so that a coordinator holding the same one reads its
/// catalog again. One call, [`MAP_RPC_TIMEOUT`].
pub async fn fetch_map(
    mut coordinator: TxnClient<Link>,
    known: Option<&ClusterMap>,
) -> Result<ClusterMap, String> {
    let mut request = tonic::Request::new(trellis_proto::v1::ClusterMapRequest {
        known: known.map(ClusterMap::stamp),
    });
    request.set_timeout(MAP_RPC_TIMEOUT);
    let answer = coordinator
        .cluster_map(request)
        .await
        .map_err(|s| format!("Txn.ClusterMap: {}", trellis_net::status_text(&s)))?
        .into_inner();
    ClusterMap::from_pb(answer).map_err(|e| format!("Txn.ClusterMap answered a bad map: {e}"))
}

/// The current map and the channels to shards.
pub struct Router {
    source: Box<dyn MapSource>,
    map: RwLock<Arc<ClusterMap>>,
    channels: Mutex<HashMap<String, Channel>>,
    /// Sent on every shard request.
    credentials: Credentials,
    /// Serializes refreshes so a burst of route errors reads the source
    /// once; holds when the last read of the source began.
    refreshing: tokio::sync::Mutex<Option<Instant>>,
}

/// What a caller of [`Router::refresh`] does once it has its turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshTurn {
    /// Take the map the router holds: it changed since the caller saw it,
    /// or a read that began after the caller asked has finished.
    Share,
    /// Read the source at `at` (now, or [`REFRESH_INTERVAL_MIN`] after the
    /// last read began).
    ReadAt(Instant),
}

/// The rule of [`Router::refresh`], pure: a caller that asked at `asked`
/// and finds the map unchanged shares any read begun since it asked, and
/// otherwise reads, no sooner than [`REFRESH_INTERVAL_MIN`] after the last
/// read (`last_read`) began.
pub fn refresh_turn(
    asked: Instant,
    now: Instant,
    last_read: Option<Instant>,
    map_changed: bool,
) -> RefreshTurn {
    match last_read {
        _ if map_changed => RefreshTurn::Share,
        Some(last) if last >= asked => RefreshTurn::Share,
        Some(last) => RefreshTurn::ReadAt(now.max(last + REFRESH_INTERVAL_MIN)),
        None => RefreshTurn::ReadAt(now),
    }
}

impl Router {
    /// A router whose map comes from `source` (a coordinator's router over
    /// its catalog is `trellis_coordinator::router::CatalogRouter::new`).
    pub fn with_source(source: impl MapSource, map: ClusterMap) -> Router {
        Router {
            source: Box::new(source),
            map: RwLock::new(Arc::new(map)),
            channels: Mutex::new(HashMap::new()),
            credentials: Credentials::NONE,
            refreshing: tokio::sync::Mutex::new(None),
        }
    }

    /// The router with `credentials` sent on every shard request (a
    /// routing client logged in with a password).
    pub fn with_credentials(mut self, credentials: Credentials) -> Router {
        self.credentials = credentials;
        self
    }

    /// Where the map is read again.
    pub fn source(&self) -> &dyn MapSource {
        self.source.as_ref()
    }

    /// The map as last read.
    pub fn map(&self) -> Arc<ClusterMap> {
        self.map.read().expect("map lock poisoned").clone()
    }

    /// Installs a map (newer or equal epoch, or new members).
    pub fn install(&self, map: ClusterMap) {
        *self.map.write().expect("map lock poisoned") = Arc::new(map);
    }

    /// Re-reads the map from its source, `seen` being the map the caller
    /// found stale. Concurrent callers share one read, and the source is
    /// read at most once per [`REFRESH_INTERVAL_MIN`] ([`refresh_turn`]).
    pub async fn refresh(&self, seen: &ClusterMap) -> Arc<ClusterMap> {
        let asked = Instant::now();
        let mut last_read = self.refreshing.lock().await;
        let current = self.map();
        match refresh_turn(asked, Instant::now(), *last_read, *current != *seen) {
            RefreshTurn::Share => return current,
            RefreshTurn::ReadAt(at) => tokio::time::sleep_until(at).await,
        }
        *last_read = Some(Instant::now());
        match self.source.load(&current).await {
            Ok(map) => self.install(map),
            Err(err) => tracing::warn!(
                %err,
                "cannot refresh the shard map from {}",
                self.source.name()
            ),
        }
        self.map()
    }

    /// A client for `group`'s primary under `map`.
    pub fn client(&self, map: &ClusterMap, group: GroupId) -> Result<ShardRpc, Fault> {
        let addr = map.primary(group).ok_or_else(|| {
            Fault::Unavailable(format!("group {group} has no registered shard yet"))
        })?;
        self.client_at(addr)
    }

    /// A client for the replica at `addr` (any member, e.g. for status).
    pub fn client_at(&self, addr: &str) -> Result<ShardRpc, Fault> {
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
        Ok(ShardClient::new(link(channel, self.credentials))
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

    use trellis_types::placement::assign_slots;

    use super::*;

    #[test]
    fn a_refresh_shares_a_read_begun_after_it_asked_and_else_waits_the_interval() {
        let t0 = Instant::now();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            refresh_turn(t0, t0, None, false),
            RefreshTurn::ReadAt(t0),
            "the first read is at once"
        );
        assert_eq!(
            refresh_turn(t0, t0 + ms(50), Some(t0 - ms(5)), true),
            RefreshTurn::Share,
            "a map that changed since the caller saw it is news enough"
        );
        assert_eq!(
            refresh_turn(t0, t0 + ms(3), Some(t0 + ms(1)), false),
            RefreshTurn::Share,
            "a read begun after the caller asked answers it"
        );
        assert_eq!(
            refresh_turn(t0, t0 + ms(3), Some(t0 - ms(1)), false),
            RefreshTurn::ReadAt(t0 - ms(1) + REFRESH_INTERVAL_MIN),
            "a read begun before it asked does not, and the next waits the interval"
        );
        assert_eq!(
            refresh_turn(t0, t0 + ms(500), Some(t0 - ms(1)), false),
            RefreshTurn::ReadAt(t0 + ms(500)),
            "an interval long past asks no wait"
        );
    }

    /// A source that counts its reads and always answers the same map.
    struct Counting {
        map: ClusterMap,
        loads: Arc<AtomicU32>,
    }

    impl MapSource for Counting {
        fn load<'a>(&'a self, _seen: &'a ClusterMap) -> BoxFuture<'a, Result<ClusterMap, String>> {
            Box::pin(async move {
                self.loads.fetch_add(1, Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
                Ok(self.map.clone())
            })
        }

        fn name(&self) -> &'static str {
            "counting"
        }

        fn as_any(&self) -> &dyn Any {
            self
        }
    }

    /// Story: 64 callers find the map stale at once (a frozen slot refused
    /// them all) and the source still has the same map. They share reads
    /// instead of each reading it again in turn: at most two (one begun
    /// before some of them asked, one after), where each used to read.
    #[tokio::test]
    async fn concurrent_refreshes_of_an_unchanged_map_share_their_reads() {
        let map = ClusterMap {
            map_epoch: 3,
            slots: assign_slots(&[1, 2]),
            groups: Default::default(),
        };
        let loads = Arc::new(AtomicU32::new(0));
        let router = Router::with_source(
            Counting {
                map: map.clone(),
                loads: loads.clone(),
            },
            map.clone(),
        );
        let refreshed = futures::future::join_all((0..64).map(|_| router.refresh(&map))).await;
        assert!(refreshed.iter().all(|m| **m == map));
        let loads = loads.load(Relaxed);
        assert!((1..=2).contains(&loads), "{loads} reads for 64 callers");
    }
}
