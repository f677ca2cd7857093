//! The typed client: one connection to a coordinator, a deadline on every
//! call, and (by default, [`Route::Direct`]) its own routing to the shards.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use trellis_proto::v1 as pb;
use trellis_proto::v1::txn_client::TxnClient;
use trellis_proto::v1::txn_server::Txn as _;
use trellis_types::limits::{
    GET_KEYS_MAX, KEY_BYTES_MAX, MESSAGE_BYTES_MAX, SCAN_LIMIT_MAX, TXN_ID_BYTES, VALUE_BYTES_MAX,
};

use crate::direct::Direct;
use crate::error::{Error, Result};
use crate::txn::Transaction;

/// Default deadline of each RPC.
pub const RPC_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default deadline of establishing the connection.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// How many times a Commit whose answer was lost in transport is sent again
/// with the same transaction id (Commit is idempotent by id) before its
/// outcome is reported unknown.
pub const COMMIT_RESENDS_MAX: u32 = 3;
/// Wait before the first resend of a Commit whose answer was lost; it
/// doubles with each further resend (100, 200, 400 ms): long enough for a
/// restarted coordinator to come back, short against the RPC deadline.
pub const COMMIT_RESEND_BACKOFF_BASE: Duration = Duration::from_millis(50);
// Every resend's wait together stays well under one default RPC deadline
// (the sum of 2^1..=2^n times the base is below 2^(n+1) times it).
const _: () = assert!(
    (COMMIT_RESEND_BACKOFF_BASE.as_millis() << (COMMIT_RESENDS_MAX + 1))
        < RPC_TIMEOUT_DEFAULT.as_millis()
);

/// How long to wait before resend number `resend` (1-based) of a Commit.
fn commit_resend_backoff(resend: u32) -> Duration {
    COMMIT_RESEND_BACKOFF_BASE * (1 << resend)
}

/// A transaction id: 16 bytes the client chooses.
pub type TxnId = [u8; TXN_ID_BYTES];

/// Read consistency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Never returns a value that a decided commit overwrote.
    #[default]
    Strong,
    /// May return data up to this old.
    Stale(Duration),
}

impl Consistency {
    fn to_pb(self) -> pb::Consistency {
        match self {
            Consistency::Strong => pb::Consistency {
                level: pb::consistency::Level::Strong as i32,
                max_staleness_ms: 0,
            },
            Consistency::Stale(d) => pb::Consistency {
                level: pb::consistency::Level::Stale as i32,
                max_staleness_ms: u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            },
        }
    }
}

/// How durable a commit must be before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    #[default]
    Sync,
    SemiSync,
    Async,
}

impl Durability {
    fn to_pb(self) -> pb::Durability {
        match self {
            Durability::Sync => pb::Durability::Sync,
            Durability::SemiSync => pb::Durability::SemiSync,
            Durability::Async => pb::Durability::Async,
        }
    }
}

/// A key with its value and version (version 0: absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub version: u64,
}

impl Item {
    /// The value, or `None` when the key is absent.
    pub fn value(&self) -> Option<&[u8]> {
        (self.version != 0).then_some(self.value.as_slice())
    }

    fn from_pb(item: pb::Item) -> Item {
        Item {
            key: item.key,
            value: item.value,
            version: item.version,
        }
    }
}

/// Items of a scan, in key order.
#[derive(Debug, Clone, Default)]
pub struct ScanResult {
    pub items: Vec<Item>,
    /// More items matched than the limit allowed.
    pub truncated: bool,
    /// Which replica answered each group, and how fresh.
    pub sources: Vec<ReadSource>,
}

/// Which replica answered a group's part of a read, and how fresh its
/// answer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadSource {
    pub group: u64,
    /// The replica's address.
    pub replica: String,
    /// Whether a backup (not the group's primary) answered.
    pub backup: bool,
    /// The replica's log position when it read.
    pub read_lsn: u64,
    /// Every value was the committed one at some moment since this long
    /// ago (zero from a primary).
    pub staleness: Duration,
}

impl ReadSource {
    fn from_public(s: &pb::ReadSource) -> ReadSource {
        ReadSource {
            group: s.group_id,
            replica: s.replica.clone(),
            backup: s.backup,
            read_lsn: s.read_lsn,
            staleness: Duration::from_millis(s.staleness_ms),
        }
    }
}

/// One buffered write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put(Vec<u8>),
    Delete,
}

/// Everything one Commit carries.
#[derive(Debug, Clone)]
pub struct CommitRequest {
    pub txn_id: TxnId,
    /// Keys read and the version seen (0 = absent).
    pub reads: Vec<(Vec<u8>, u64)>,
    pub writes: Vec<(Vec<u8>, Write)>,
    pub durability: Durability,
}

/// A committed transaction: its id and the new version of each written key.
#[derive(Debug, Clone)]
pub struct Committed {
    pub txn_id: TxnId,
    pub written: Vec<Item>,
}

/// What `TxnStatus` knows of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnState {
    Committed,
    Aborted,
    /// Nothing is known (never committed, or forgotten long ago).
    Unknown,
}

/// How a client's requests reach the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Route {
    /// The client caches the shard map (from the coordinator's
    /// `Txn.ClusterMap`) and sends reads, scans, `TxnStatus`, one-group
    /// commits and read-only commits straight to each group's primary;
    /// commits that write in several groups go to the coordinator. The
    /// shards must be reachable from the client at the addresses they
    /// registered.
    #[default]
    Direct,
    /// Every call goes through the coordinator, as from any other
    /// language's gRPC client: one more hop, and nothing to reach but the
    /// coordinator.
    Coordinator,
}

impl Route {
    /// Its name on command lines (`--route`).
    pub fn name(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Coordinator => "coordinator",
        }
    }
}

impl std::str::FromStr for Route {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Route, String> {
        match text {
            "direct" => Ok(Route::Direct),
            "coordinator" => Ok(Route::Coordinator),
            other => Err(format!(
                "unknown route {other:?}: direct (the client routes to the shards itself) or coordinator (every call through the coordinator)"
            )),
        }
    }
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Deadline of every RPC.
    pub rpc_timeout: Duration,
    /// Deadline of connecting.
    pub connect_timeout: Duration,
    /// How requests reach the shards.
    pub route: Route,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rpc_timeout: RPC_TIMEOUT_DEFAULT,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            route: Route::default(),
        }
    }
}

/// A client of one coordinator. Cloning is cheap (one shared connection,
/// and with [`Route::Direct`] one shared map and set of shard connections).
#[derive(Clone)]
pub struct Client {
    /// Through [`crate::auth::Bearer`]: carries the login token, if any.
    inner: TxnClient<crate::auth::Authed>,
    /// The connection to the coordinator (the change feed's client).
    pub(crate) channel: Channel,
    /// `Some` with [`Route::Direct`].
    direct: Option<Direct>,
    addr: String,
    options: Options,
    /// The session's floors (read-your-writes for STALE reads): the newest
    /// version this client committed in each group. Shared by clones.
    floors: Arc<Mutex<BTreeMap<u64, u64>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.addr)
            .field("route", &self.options.route)
            .finish()
    }
}

/// A fresh random transaction id.
pub fn new_txn_id() -> TxnId {
    let mut id = [0; TXN_ID_BYTES];
    trellis_types::rng::fill(&mut id);
    id
}

pub(crate) fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument(
            "a key must be 1 byte or more".into(),
        ));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(Error::InvalidArgument(format!(
            "key of {} bytes is over KEY_BYTES_MAX ({KEY_BYTES_MAX})",
            key.len()
        )));
    }
    Ok(())
}

pub(crate) fn check_value(value: &[u8]) -> Result<()> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(Error::InvalidArgument(format!(
            "value of {} bytes is over VALUE_BYTES_MAX ({VALUE_BYTES_MAX})",
            value.len()
        )));
    }
    Ok(())
}

impl Client {
    /// Connects to the coordinator at `addr` (`host:port`) with the default
    /// deadlines.
    pub async fn connect(addr: &str) -> Result<Client> {
        Self::connect_with(addr, Options::default()).await
    }

    /// Connects with explicit deadlines.
    pub async fn connect_with(addr: &str, options: Options) -> Result<Client> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Error::InvalidArgument(format!("bad address {addr:?}: {e}")))?
            .connect_timeout(options.connect_timeout)
            .timeout(options.rpc_timeout);
        let channel = trellis_net::connect(endpoint).await.map_err(|e| {
            Error::Unavailable(format!("cannot connect to {addr}: {}", source_text(&e)))
        })?;
        if crate::auth::user().is_some() {
            crate::auth::login(&channel).await?;
        }
        let inner = TxnClient::new(crate::auth::authed(channel.clone()))
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        let direct = match options.route {
            Route::Direct => {
                Some(Direct::start(inner.clone(), addr, crate::auth::credentials()).await?)
            }
            Route::Coordinator => None,
        };
        Ok(Client {
            inner,
            channel,
            direct,
            addr: addr.to_string(),
            options,
            floors: Arc::default(),
        })
    }

    /// Proves the link to the coordinator with one cheap call
    /// (`Txn.ClusterMap`). An HTTP/2 connection counts as made before the
    /// server has answered anything, so without it a plaintext client of a
    /// TLS cluster (or one of another CA) would learn of it only as the
    /// unknown outcome of its first commit. `Route::Direct` has made this
    /// call already at connect.
    pub async fn ping(&self) -> Result<()> {
        let mut request = tonic::Request::new(trellis_proto::v1::ClusterMapRequest { known: None });
        request.set_timeout(self.options.rpc_timeout);
        self.inner
            .clone()
            .cluster_map(request)
            .await
            .map(drop)
            .map_err(|e| {
                let e = e.message().to_string();
                Error::Unavailable(format!(
                    "cannot reach the coordinator at {}: {e} ({})",
                    self.addr,
                    trellis_net::tls::hint()
                ))
            })
    }

    /// The same connections as a new session: STALE reads of the returned
    /// client are held to its own commits only (a client and its clones
    /// share one session; see [`Client::get_from`]).
    pub fn new_session(&self) -> Client {
        Client {
            floors: Arc::default(),
            ..self.clone()
        }
    }

    /// The session's floors to send with a read.
    fn session_floors(&self) -> Vec<pb::SessionFloor> {
        self.floors
            .lock()
            .expect("session lock poisoned")
            .iter()
            .map(|(group_id, version)| pb::SessionFloor {
                group_id: *group_id,
                version: *version,
            })
            .collect()
    }

    /// Raises the session's floors to a commit's.
    fn note_floors(&self, committed: &[pb::SessionFloor]) {
        let mut floors = self.floors.lock().expect("session lock poisoned");
        for f in committed {
            let floor = floors.entry(f.group_id).or_insert(0);
            *floor = (*floor).max(f.version);
        }
    }

    /// The coordinator address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// How this client's requests reach the shards.
    pub fn route(&self) -> Route {
        self.options.route
    }

    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.options.rpc_timeout);
        request
    }

    /// Reads `keys`: one item per key, in order (version 0 = absent).
    pub async fn get(&self, keys: &[Vec<u8>], consistency: Consistency) -> Result<Vec<Item>> {
        Ok(self.get_from(keys, consistency).await?.0)
    }

    /// [`Client::get`], and which replica answered each group read and how
    /// fresh its answer is. A STALE read may be answered by any in-sync
    /// replica of a group that can prove its data within the bound, and
    /// never older than what this session committed (read-your-writes);
    /// several groups are read as a snapshot each, not one snapshot.
    pub async fn get_from(
        &self,
        keys: &[Vec<u8>],
        consistency: Consistency,
    ) -> Result<(Vec<Item>, Vec<ReadSource>)> {
        if keys.len() > GET_KEYS_MAX {
            return Err(Error::InvalidArgument(format!(
                "{} keys is over GET_KEYS_MAX ({GET_KEYS_MAX})",
                keys.len()
            )));
        }
        for key in keys {
            check_key(key)?;
        }
        let request = self.request(pb::GetRequest {
            keys: keys.to_vec(),
            consistency: Some(consistency.to_pb()),
            floors: self.session_floors(),
        });
        let response = match &self.direct {
            Some(direct) => direct.api().get(request).await,
            None => self.inner.clone().get(request).await,
        }
        .map_err(|s| Error::from_status(&s))?
        .into_inner();
        if response.items.len() != keys.len() {
            return Err(Error::Server {
                code: tonic::Code::Internal,
                message: format!(
                    "asked for {} keys, got {} items",
                    keys.len(),
                    response.items.len()
                ),
            });
        }
        Ok((
            response.items.into_iter().map(Item::from_pb).collect(),
            response
                .sources
                .iter()
                .map(ReadSource::from_public)
                .collect(),
        ))
    }

    /// Items whose key starts with `prefix`, in key order; `limit` 0 means
    /// the server's default (1,000), at most `SCAN_LIMIT_MAX`.
    pub async fn scan(
        &self,
        prefix: &[u8],
        limit: u32,
        consistency: Consistency,
    ) -> Result<ScanResult> {
        if limit > SCAN_LIMIT_MAX {
            return Err(Error::InvalidArgument(format!(
                "scan limit {limit} is over SCAN_LIMIT_MAX ({SCAN_LIMIT_MAX})"
            )));
        }
        let request = self.request(pb::ScanRequest {
            prefix: prefix.to_vec(),
            limit,
            consistency: Some(consistency.to_pb()),
            floors: self.session_floors(),
        });
        let response = match &self.direct {
            Some(direct) => direct.api().scan(request).await,
            None => self.inner.clone().scan(request).await,
        }
        .map_err(|s| Error::from_status(&s))?
        .into_inner();
        Ok(ScanResult {
            items: response.items.into_iter().map(Item::from_pb).collect(),
            truncated: response.truncated,
            sources: response
                .sources
                .iter()
                .map(ReadSource::from_public)
                .collect(),
        })
    }

    /// Sends one Commit. An answer lost in transport is asked for again with
    /// the same id (at most [`COMMIT_RESENDS_MAX`] times); if it stays lost
    /// and the transaction wrote something, the outcome is unknown.
    pub async fn commit(&self, request: CommitRequest) -> Result<Committed> {
        let has_writes = !request.writes.is_empty();
        let message = pb::CommitRequest {
            txn_id: request.txn_id.to_vec(),
            reads: request
                .reads
                .into_iter()
                .map(|(key, version)| pb::Read { key, version })
                .collect(),
            writes: request
                .writes
                .into_iter()
                .map(|(key, write)| pb::Write {
                    key,
                    op: Some(match write {
                        Write::Put(value) => pb::write::Op::Put(value),
                        Write::Delete => pb::write::Op::Delete(pb::Empty {}),
                    }),
                })
                .collect(),
            durability: request.durability.to_pb() as i32,
        };
        // With Route::Direct, only a two-phase commit goes to the
        // coordinator (see `direct`).
        let here = self
            .direct
            .as_ref()
            .filter(|direct| !direct.needs_coordinator(&message));
        let mut resends = 0;
        loop {
            let sent = self.request(message.clone());
            let answer = match here {
                Some(direct) => direct.api().commit(sent).await,
                None => self.inner.clone().commit(sent).await,
            };
            match answer {
                Ok(response) => {
                    return match response.into_inner().outcome {
                        Some(pb::commit_response::Outcome::Committed(c)) => {
                            self.note_floors(&c.floors);
                            Ok(Committed {
                                txn_id: request.txn_id,
                                written: c.written.into_iter().map(Item::from_pb).collect(),
                            })
                        }
                        Some(pb::commit_response::Outcome::Aborted(a)) => {
                            Err(Error::from_aborted(a))
                        }
                        None => Err(Error::OutcomeUnknown {
                            txn_id: request.txn_id,
                            message: "the answer carried no outcome".into(),
                        }),
                    };
                }
                Err(status) => {
                    let lost_in_transport = status.details().is_empty()
                        && matches!(
                            status.code(),
                            tonic::Code::Unavailable
                                | tonic::Code::DeadlineExceeded
                                | tonic::Code::Cancelled
                                | tonic::Code::Unknown
                        );
                    if !lost_in_transport {
                        return Err(Error::from_status(&status));
                    }
                    if resends < COMMIT_RESENDS_MAX {
                        resends += 1;
                        tokio::time::sleep(commit_resend_backoff(resends)).await;
                        continue;
                    }
                    return Err(if has_writes {
                        Error::OutcomeUnknown {
                            txn_id: request.txn_id,
                            message: status.message().to_string(),
                        }
                    } else {
                        Error::Unavailable(status.message().to_string())
                    });
                }
            }
        }
    }

    /// What the cluster knows of transaction `txn_id`.
    pub async fn txn_status(&self, txn_id: TxnId) -> Result<TxnState> {
        let request = self.request(pb::TxnStatusRequest {
            txn_id: txn_id.to_vec(),
        });
        let response = match &self.direct {
            Some(direct) => direct.api().txn_status(request).await,
            None => self.inner.clone().txn_status(request).await,
        }
        .map_err(|s| Error::from_status(&s))?
        .into_inner();
        Ok(match pb::TxnState::try_from(response.state) {
            Ok(pb::TxnState::Committed) => TxnState::Committed,
            Ok(pb::TxnState::Aborted) => TxnState::Aborted,
            _ => TxnState::Unknown,
        })
    }

    /// Starts a transaction: reads record the versions seen, writes are
    /// buffered until [`Transaction::commit`].
    pub fn begin(&self) -> Transaction {
        Transaction::new(self.clone())
    }
}

fn source_text(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_by_their_names_and_direct_is_the_default() {
        for route in [Route::Direct, Route::Coordinator] {
            assert_eq!(route.name().parse::<Route>(), Ok(route));
        }
        let err = "shard".parse::<Route>().unwrap_err();
        assert!(
            err.contains("direct") && err.contains("coordinator"),
            "{err}"
        );
        assert_eq!(Options::default().route, Route::Direct);
    }

    #[test]
    fn commit_resends_back_off_by_doubling() {
        // The waits the client has always used (`50 << resend` ms).
        let waits: Vec<Duration> = (1..=COMMIT_RESENDS_MAX)
            .map(commit_resend_backoff)
            .collect();
        assert_eq!(waits, [100, 200, 400].map(Duration::from_millis).to_vec());
        let total: Duration = waits.iter().sum();
        assert!(total < RPC_TIMEOUT_DEFAULT, "{total:?}");
    }
}
