//! Who may call the shard's client-facing methods, and the task that keeps
//! the cluster's auth settings here.
//!
//! A client that routes its own requests (the Rust client's direct route)
//! calls a primary's `Read`, `Scan`, `CommitLocal`, `Validate`, `Release`
//! and `Lookup` itself ([`CLIENT_METHODS`]); every other method stays for
//! cluster processes ([`NodeOnlyExcept`], by path, so a method added later
//! is internal unless listed). A client is judged as the coordinator
//! would judge it (`trellis_txn::gate::admit_at_shard`, pure) with the
//! settings a coordinator last handed over (`Membership.GetAuth`, polled
//! every [`AUTH_POLL`] by [`follow`]). Until the first answer, clients are
//! refused UNAVAILABLE rather than served unchecked; nodes are served
//! as always.
//!
//! This module never logs a token, the secret or a user's grants.

use std::convert::Infallible;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::Status;
use tonic::codegen::http;
use tonic::server::NamedService;
use trellis_net::tls::accept::ConnectInfo;
use trellis_proto::shard::v1 as pb;
use trellis_proto::shard::v1::membership_client::MembershipClient;
use trellis_txn::authz::Access;
use trellis_txn::gate::{AUTHORIZATION, Admitted, GateState, Refused, admit_at_shard};
use trellis_types::limits::MESSAGE_BYTES_MAX;

use crate::metrics::Metrics;

/// How often a shard asks its coordinator for the auth settings (one
/// small answer when nothing changed).
pub const AUTH_POLL: Duration = Duration::from_secs(1);
/// Deadline of one `Membership.GetAuth` call.
pub const AUTH_RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// A failed poll is logged the first time and then once in this many.
const AUTH_FAILURES_PER_WARNING: u64 = 30;

/// The `Shard` methods a client may call (with auth on, as its grants
/// allow): what the direct route needs for reads, one-group commits,
/// read-only validation and transaction status. `Finalize` is not among
/// them: a client could apply COMMIT where the anchor recorded ABORT; the
/// direct route asks a coordinator to resolve locks instead
/// (`Txn.ResolveLock`).
pub const CLIENT_METHODS: &[&str] = &[
    "Read",
    "Scan",
    "CommitLocal",
    "Validate",
    "Release",
    "Lookup",
];

/// The auth settings as a coordinator last handed them over, with their
/// fingerprint; `None` until the first answer.
#[derive(Default)]
pub struct ShardGate {
    state: RwLock<Option<(Arc<GateState>, Vec<u8>)>>,
}

impl std::fmt::Debug for ShardGate {
    // Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardGate")
            .field("loaded", &self.fingerprint().is_some())
            .finish()
    }
}

impl ShardGate {
    /// Replaces the settings.
    pub fn set(&self, state: GateState, fingerprint: Vec<u8>) {
        *self.state.write().unwrap_or_else(|p| p.into_inner()) =
            Some((Arc::new(state), fingerprint));
    }

    /// The fingerprint of the settings held, if any.
    pub fn fingerprint(&self) -> Option<Vec<u8>> {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(_, fingerprint)| fingerprint.clone())
    }

    /// `trellis_auth_settings_read` and `trellis_auth_enabled`: whether
    /// this shard has read the cluster's auth settings, and whether they
    /// turn auth on.
    pub fn render(&self, out: &mut trellis_metrics::Scrape) {
        let state = self.state();
        out.gauge(
            "trellis_auth_settings_read",
            "1 once this shard has read the cluster's auth settings from its coordinator (clients routing their own requests are refused until then), else 0.",
            u64::from(state.is_some()),
        );
        out.gauge(
            "trellis_auth_enabled",
            "1 if the auth settings this shard last read turn auth on, else 0.",
            u64::from(state.is_some_and(|s| s.enabled)),
        );
    }

    fn state(&self) -> Option<Arc<GateState>> {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(state, _)| state.clone())
    }

    /// Whether the sender of `request` may make a call touching `access`
    /// (`None`: only that it is someone the cluster knows). One check per
    /// call, counted in `metrics`.
    pub fn admit<T>(
        &self,
        request: &tonic::Request<T>,
        access: Option<&Access<'_>>,
        metrics: &Metrics,
    ) -> Result<(), Status> {
        let peer = request
            .extensions()
            .get::<ConnectInfo>()
            .map(|info| &info.peer);
        // The hot path: cluster processes (and everyone, without TLS) pass
        // before anything is read.
        if trellis_net::tls::check_node(peer).is_ok() {
            return Ok(());
        }
        let bearer =
            match request.metadata().get(AUTHORIZATION) {
                Some(value) => Some(value.to_str().map_err(|_| {
                    Status::unauthenticated("the authorization header is not text")
                })?),
                None => None,
            };
        let state = self.state();
        match admit_at_shard(
            state.as_deref(),
            peer,
            bearer,
            trellis_txn::metrics::unix_ms() / 1000,
            access,
        ) {
            Ok(Admitted::Node | Admitted::Open) => Ok(()),
            Ok(Admitted::Checked) => {
                metrics.auth_checks.inc();
                Ok(())
            }
            Err(refused) => {
                match &refused {
                    Refused::Denied(_) => {
                        metrics.auth_checks.inc();
                        metrics.auth_denied.inc();
                    }
                    Refused::Unauthenticated(_) => metrics.auth_unauthenticated.inc(),
                    Refused::NotYet => {}
                }
                Err(refused.status())
            }
        }
    }
}

/// Keeps `gate` up to date from the coordinator at `coordinator`, every
/// [`AUTH_POLL`], forever. A failed poll keeps what the gate holds.
pub async fn follow(gate: Arc<ShardGate>, coordinator: String) {
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{coordinator}")) {
        Ok(endpoint) => endpoint
            .connect_timeout(AUTH_RPC_TIMEOUT)
            .timeout(AUTH_RPC_TIMEOUT),
        Err(err) => {
            tracing::error!(%coordinator, %err, "bad coordinator address: clients will be refused");
            return;
        }
    };
    let client = MembershipClient::new(trellis_net::lazy(endpoint))
        .max_decoding_message_size(MESSAGE_BYTES_MAX);
    let mut tick = tokio::time::interval(AUTH_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u64;
    loop {
        tick.tick().await;
        match poll(&gate, client.clone()).await {
            Ok(changed) => {
                if failures > 0 || changed {
                    tracing::info!(%coordinator, "read the cluster's auth settings");
                }
                failures = 0;
            }
            Err(err) => {
                failures += 1;
                if failures % AUTH_FAILURES_PER_WARNING == 1 {
                    tracing::warn!(%coordinator, failures, %err, "cannot read the cluster's auth settings; keeping the last ones");
                }
            }
        }
    }
}

/// One poll; whether the settings changed.
async fn poll(
    gate: &ShardGate,
    mut client: MembershipClient<tonic::transport::Channel>,
) -> Result<bool, String> {
    let known = gate.fingerprint();
    let mut request = tonic::Request::new(pb::GetAuthRequest {
        known: known.clone().unwrap_or_default(),
    });
    request.set_timeout(AUTH_RPC_TIMEOUT);
    let answer = client
        .get_auth(request)
        .await
        .map_err(|s| trellis_net::status_text(&s))?
        .into_inner();
    if answer.unchanged && known.is_some() {
        return Ok(false);
    }
    let state = GateState::from_pb(&answer).map_err(|e| format!("a bad answer: {e}"))?;
    gate.set(state, answer.fingerprint);
    Ok(true)
}

/// A service (the `Shard` service) whose methods are for cluster
/// processes only, except [`CLIENT_METHODS`], which check their callers
/// themselves ([`ShardGate::admit`]). Decided on the request's path, so
/// that a method is internal unless listed.
#[derive(Clone)]
pub struct NodeOnlyExcept<S> {
    inner: S,
}

impl<S> NodeOnlyExcept<S> {
    pub fn new(inner: S) -> Self {
        NodeOnlyExcept { inner }
    }
}

/// Whether a request path (`/package.Service/Method`) names a method any
/// client may call.
pub fn client_method(path: &str) -> bool {
    path.rsplit_once('/')
        .is_some_and(|(_, method)| CLIENT_METHODS.contains(&method))
}

impl<S: NamedService> NamedService for NodeOnlyExcept<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tonic::codegen::Service<http::Request<B>> for NodeOnlyExcept<S>
where
    S: tonic::codegen::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        >,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future =
        futures::future::Either<std::future::Ready<Result<Self::Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !client_method(request.uri().path()) {
            let peer = request
                .extensions()
                .get::<ConnectInfo>()
                .map(|info| &info.peer);
            if let Err(why) = trellis_net::tls::check_node(peer) {
                let refusal = Status::permission_denied(why).into_http();
                return futures::future::Either::Left(std::future::ready(Ok(refusal)));
            }
        }
        futures::future::Either::Right(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listed_methods_are_open_to_clients() {
        for method in CLIENT_METHODS {
            assert!(client_method(&format!("/trellis.shard.v1.Shard/{method}")));
        }
        for method in [
            "Prepare",
            "Decide",
            "Finalize",
            "FinalizeBatch",
            "Resolve",
            "Fence",
            "Forget",
            "ListPrepared",
            "ShardStatus",
            "Replicate",
            "TransferPrimary",
            "MoveSlots",
            "ExportSlots",
            "Ingest",
            "Feed",
            "ReadX",
            "",
        ] {
            assert!(
                !client_method(&format!("/trellis.shard.v1.Shard/{method}")),
                "{method}"
            );
        }
        assert!(!client_method("Read"), "a path without a slash");
    }
}
