//! The public `trellis.v1.Auth` service (users, grants, the auth switch,
//! `Login`) and the loop that keeps this coordinator's [`Gate`] in step
//! with the catalog.
//!
//! Wire types become domain types here; the decisions are
//! [`crate::auth`]'s and [`trellis_txn::authz`]'s. Passwords are hashed
//! and checked on blocking threads, travel only over TLS, and are never
//! logged; neither are tokens nor the secret.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};
use trellis_net::tls::accept::ConnectInfo;
use trellis_net::tls::limit::{Bounds, Limiter, Verdict};
use trellis_proto::v1 as pb;
use trellis_txn::authz::{Access, Grant, Grants, Role};
use trellis_txn::gate::{Gate, GateState};
use trellis_txn::token::{self, Claims, TOKEN_LIFETIME};

use crate::auth;
use crate::catalog::{Catalog, CatalogError, UserRow};
use crate::metrics::unix_ms;
use crate::router::CatalogRouter;
use crate::service::{catalog_read, deadline_of};
use crate::txn::TxnManager;

/// How often a coordinator reads users, grants and the auth switch from
/// the catalog: a change made through another coordinator (or a user
/// removed) reaches this one's client-certificate users within this.
pub const GATE_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Deadline of one refresh's catalog reads.
pub const GATE_REFRESH_DEADLINE: Duration = Duration::from_secs(5);
/// Failed password logins from one address, within
/// [`LOGIN_FAILURE_WINDOW`], after which its logins are refused unheard
/// for [`LOGIN_FAILURE_BACKOFF`]: a person mistyping stays under it, a
/// guesser gets 10 tries a minute.
pub const LOGIN_FAILURES_MAX: u32 = 10;
pub const LOGIN_FAILURE_WINDOW: Duration = Duration::from_secs(60);
pub const LOGIN_FAILURE_BACKOFF: Duration = Duration::from_secs(60);
/// Addresses the login limiter remembers (the oldest is forgotten).
pub const LOGIN_FAILURE_PEERS_MAX: usize = 4096;
/// Passwords hashed at once by one coordinator (each argon2id hash takes
/// `auth::ARGON2_MEMORY_KIB` of memory and tens of milliseconds of a
/// core): more logins wait for a turn, within their deadline.
pub const LOGIN_HASHES_INFLIGHT_MAX: usize = 4;

const LOGIN_FAILURES: Bounds = Bounds {
    failures_max: LOGIN_FAILURES_MAX,
    window: LOGIN_FAILURE_WINDOW,
    backoff: LOGIN_FAILURE_BACKOFF,
    peers_max: LOGIN_FAILURE_PEERS_MAX,
};

/// What the gate should know, from the catalog.
pub async fn gate_state(catalog: &Catalog) -> Result<GateState, CatalogError> {
    let settings = catalog.auth_settings().await?;
    let cluster = catalog.cluster_id().await?.get();
    let users = catalog
        .users()
        .await?
        .into_iter()
        .map(|u| {
            let grants = Grants::new(u.name.clone(), u.grants)
                .map_err(|why| CatalogError::Corrupt(format!("user `{}`: {why}", u.name)))?;
            Ok((u.name, Arc::new(grants)))
        })
        .collect::<Result<HashMap<_, _>, CatalogError>>()?;
    Ok(GateState {
        enabled: settings.enabled,
        cluster,
        secret: settings.secret,
        users,
    })
}

/// Reads the gate's state once: at start, before serving, so a cluster
/// with auth on never serves a request unchecked.
pub async fn refresh_gate(catalog: &Catalog, gate: &Gate) -> Result<(), CatalogError> {
    let state = tokio::time::timeout(GATE_REFRESH_DEADLINE, gate_state(catalog))
        .await
        .map_err(|_| CatalogError::Io {
            context: "reading the auth settings".to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the catalog did not answer in time",
            ),
        })??;
    gate.set(state);
    Ok(())
}

/// Refreshes the gate every [`GATE_REFRESH_INTERVAL`] forever; a failed
/// read keeps what the gate knew and is logged.
pub async fn gate_refresher(catalog: Catalog, gate: Arc<Gate>) {
    let mut tick = tokio::time::interval(GATE_REFRESH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(err) = refresh_gate(&catalog, &gate).await {
            tracing::warn!(%err, "cannot refresh users and grants from the catalog; keeping the last ones");
        }
    }
}

/// The public auth service.
#[derive(Clone)]
pub struct AuthApi {
    txns: Arc<TxnManager>,
    gate: Arc<Gate>,
    /// Failed logins per address ([`LOGIN_FAILURES_MAX`]).
    login_failures: Arc<Mutex<Limiter>>,
    /// Turns to hash a password ([`LOGIN_HASHES_INFLIGHT_MAX`]).
    hashing: Arc<tokio::sync::Semaphore>,
}

impl AuthApi {
    pub fn new(txns: Arc<TxnManager>, gate: Arc<Gate>) -> Self {
        AuthApi {
            txns,
            gate,
            login_failures: Arc::new(Mutex::new(Limiter::with_bounds(LOGIN_FAILURES))),
            hashing: Arc::new(tokio::sync::Semaphore::new(LOGIN_HASHES_INFLIGHT_MAX)),
        }
    }

    fn login_failures(&self) -> std::sync::MutexGuard<'_, Limiter> {
        // The limiter's state is a table of counts: one a panicking
        // holder left is still a table of counts.
        self.login_failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn catalog(&self) -> &Catalog {
        self.txns.router().catalog()
    }

    fn admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.gate.check_request(request, &Access::Admin)
    }

    /// Applies a change to this coordinator's gate at once (the others
    /// see it within [`GATE_REFRESH_INTERVAL`]).
    async fn refreshed(&self, message: String) -> Result<Response<pb::AuthChanged>, Status> {
        if let Err(err) = refresh_gate(self.catalog(), &self.gate).await {
            tracing::warn!(%err, "cannot refresh users and grants after a change");
        }
        Ok(Response::new(pb::AuthChanged { message }))
    }

    async fn settings_and_users(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<(bool, Vec<UserRow>), Status> {
        let settings = catalog_read(deadline, self.catalog().auth_settings()).await?;
        let users = catalog_read(deadline, self.catalog().users()).await?;
        Ok((settings.enabled, users))
    }
}

/// Refuses a password over a plaintext link.
fn require_tls() -> Result<(), Status> {
    if trellis_net::tls::current().is_none() {
        return Err(Status::failed_precondition(
            "refusing a password: this coordinator runs without TLS, so it would cross the \
             network in plaintext; start the coordinators with --tls-ca, --tls-cert and --tls-key",
        ));
    }
    Ok(())
}

/// The PHC string of a new password (`None` for an empty one), hashed on
/// a blocking thread.
async fn hash(password: String) -> Result<Option<String>, Status> {
    if password.is_empty() {
        return Ok(None);
    }
    require_tls()?;
    auth::check_password_rules(&password).map_err(Status::invalid_argument)?;
    tokio::task::spawn_blocking(move || auth::hash_password(&password))
        .await
        .map_err(|e| Status::internal(format!("hashing the password: {e}")))?
        .map(Some)
        .map_err(Status::internal)
}

/// The hash checked for an unknown user, so that a wrong name takes as
/// long as a wrong password.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        auth::hash_password("decoy password, matches nothing").expect("hashing a constant")
    })
}

fn grant_of(req: &pb::GrantRequest) -> Result<Grant, Status> {
    let role: Role = req.role.parse().map_err(Status::invalid_argument)?;
    Grant::new(role, req.prefix.clone()).map_err(Status::invalid_argument)
}

fn status_pb(enabled: bool, users: &[UserRow]) -> pb::AuthStatusResponse {
    pb::AuthStatusResponse {
        enabled,
        tls: trellis_net::tls::current().is_some(),
        users: users.len() as u64,
        admins: users
            .iter()
            .filter(|u| u.grants.iter().any(|g| g.role() == Role::Admin))
            .count() as u64,
        token_lifetime_s: TOKEN_LIFETIME.as_secs(),
    }
}

#[tonic::async_trait]
impl pb::auth_server::Auth for AuthApi {
    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let deadline = deadline_of(&request);
        require_tls()?;
        let state = self.gate.state();
        if !state.enabled {
            return Err(Status::failed_precondition(
                "auth is off on this cluster: requests need no login (`trellis admin auth \
                 status`)",
            ));
        }
        // The caller's address, when the connection came through the
        // acceptor (every process serving on a socket; not the simulator).
        let remote: Option<IpAddr> = request
            .extensions()
            .get::<ConnectInfo>()
            .and_then(|info| info.remote)
            .map(|addr| addr.ip());
        if let Some(ip) = remote
            && self.login_failures().check(ip, Instant::now()) == Verdict::Refuse
        {
            self.gate.metrics().logins_refused.inc();
            return Err(Status::resource_exhausted(format!(
                "too many failed logins from {ip}: logins from it are refused for up to {}s \
                 (more than {LOGIN_FAILURES_MAX} failures within {}s)",
                LOGIN_FAILURE_BACKOFF.as_secs(),
                LOGIN_FAILURE_WINDOW.as_secs()
            )));
        }
        let pb::LoginRequest { user, password } = request.into_inner();
        let row = match trellis_net::tls::check_name(&user) {
            Ok(()) => catalog_read(deadline, self.catalog().user(&user)).await?,
            Err(_) => None,
        };
        let (phc, grants) = match &row {
            Some(UserRow {
                password_hash: Some(phc),
                grants,
                ..
            }) => (phc.clone(), Some(grants.clone())),
            _ => (decoy_hash().to_string(), None),
        };
        let turn = tokio::time::timeout_at(deadline, self.hashing.clone().acquire_owned())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "the coordinator is checking {LOGIN_HASHES_INFLIGHT_MAX} passwords already; \
                     none finished within the login's deadline"
                ))
            })?
            .map_err(|_| Status::unavailable("the coordinator is shutting down"))?;
        let matches = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            auth::check_password(&phc, &password)
        })
        .await
        .map_err(|e| Status::internal(format!("checking the password: {e}")))?;
        let grants = match (matches, grants) {
            (true, Some(grants)) => grants,
            _ => {
                self.gate.metrics().login_failures.inc();
                if let Some(ip) = remote
                    && self.login_failures().failed(ip, Instant::now())
                {
                    tracing::warn!(%ip, "too many failed logins: refusing this address's logins for a while");
                }
                tracing::info!(user = %user, "refused a login");
                return Err(Status::unauthenticated(format!(
                    "unknown user `{user}` or wrong password"
                )));
            }
        };
        let grants = Grants::new(user.clone(), grants).map_err(Status::internal)?;
        let expires_unix_s = unix_ms() / 1000 + TOKEN_LIFETIME.as_secs();
        let token = token::mint(
            &state.secret,
            &Claims {
                cluster: state.cluster,
                expires_unix_s,
                grants,
            },
        );
        tracing::debug!(user = %user, "logged in");
        Ok(Response::new(pb::LoginResponse {
            token,
            expires_unix_s,
        }))
    }

    async fn add_user(
        &self,
        request: Request<pb::AddUserRequest>,
    ) -> Result<Response<pb::AuthChanged>, Status> {
        self.admin(&request)?;
        let deadline = deadline_of(&request);
        let pb::AddUserRequest { user, password } = request.into_inner();
        let phc = hash(password).await?;
        catalog_read(deadline, self.catalog().add_user(&user, phc.as_deref())).await?;
        let how = if phc.is_some() {
            "password or client certificate"
        } else {
            "client certificate only"
        };
        self.refreshed(format!("added user `{user}` (login: {how}; no grant yet)"))
            .await
    }

    async fn set_password(
        &self,
        request: Request<pb::SetPasswordRequest>,
    ) -> Result<Response<pb::AuthChanged>, Status> {
        self.admin(&request)?;
        let deadline = deadline_of(&request);
        let pb::SetPasswordRequest { user, password } = request.into_inner();
        let phc = hash(password).await?;
        catalog_read(deadline, self.catalog().set_password(&user, phc.as_deref())).await?;
        self.refreshed(format!(
            "changed the password of user `{user}` (tokens it holds work until they expire, \
             {} s at most)",
            TOKEN_LIFETIME.as_secs()
        ))
        .await
    }

    async fn remove_user(
        &self,
        request: Request<pb::RemoveUserRequest>,
    ) -> Result<Response<pb::AuthChanged>, Status> {
        self.admin(&request)?;
        let deadline = deadline_of(&request);
        let user = request.into_inner().user;
        // The catalog refuses the last admin in the removal's transaction.
        catalog_read(deadline, self.catalog().remove_user(&user)).await?;
        self.refreshed(format!(
            "removed user `{user}` (a token it holds works until it expires, {} s at most)",
            TOKEN_LIFETIME.as_secs()
        ))
        .await
    }

    async fn grant(
        &self,
        request: Request<pb::GrantRequest>,
    ) -> Result<Response<pb::AuthChanged>, Status> {
        self.admin(&request)?;
        let deadline = deadline_of(&request);
        let req = request.into_inner();
        let grant = grant_of(&req)?;
        catalog_read(deadline, self.catalog().grant(&req.user, &grant)).await?;
        self.refreshed(format!("granted {grant} to user `{}`", req.user))
            .await
    }

    async fn revoke(
        &self,
        request: Request<pb::GrantRequest>,
    ) -> Result<Response<pb::AuthChanged>, Status> {
        self.admin(&request)?;
        let deadline = deadline_of(&request);
        let req = request.into_inner();
        let grant = grant_of(&req)?;
        // The catalog refuses the last admin's `admin` in the revocation's
        // transaction.
        catalog_read(deadline, self.catalog().revoke(&req.user, &grant)).await?;
        self.refreshed(format!(
            "revoked {grant} from user `{}` (a token it holds keeps it until it expires, {} s \
             at most)",
            req.user,
            TOKEN_LIFETIME.as_secs()
        ))
        .await
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        self.admin(&request)?;
        let deadline = deadline_of(&request);
        let users = catalog_read(deadline, self.catalog().users()).await?;
        Ok(Response::new(pb::ListUsersResponse {
            users: users
                .into_iter()
                .map(|u| pb::UserInfo {
                    name: u.name,
                    has_password: u.password_hash.is_some(),
                    grants: u
                        .grants
                        .iter()
                        .map(|g| pb::UserGrant {
                            role: g.role().as_str().to_string(),
                            prefix: g.prefix().to_vec(),
                        })
                        .collect(),
                })
                .collect(),
        }))
    }

    async fn set_auth(
        &self,
        request: Request<pb::SetAuthRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        self.admin(&request)?;
        let deadline = deadline_of(&request);
        let enabled = request.into_inner().enabled;
        if enabled {
            auth::check_enable_over_tls(trellis_net::tls::current().is_some())
                .map_err(|why| Status::failed_precondition(why.to_string()))?;
        }
        // Read for the answer's counts only, before the switch: a read
        // failing after it would report a change that was made as failed.
        let users = catalog_read(deadline, self.catalog().users()).await?;
        // The catalog refuses to turn auth on with no admin, in the
        // switch's transaction (whatever `users` said).
        catalog_read(deadline, self.catalog().set_auth_enabled(enabled)).await?;
        if let Err(err) = refresh_gate(self.catalog(), &self.gate).await {
            tracing::warn!(%err, "cannot refresh users and grants after switching auth");
        }
        Ok(Response::new(status_pb(enabled, &users)))
    }

    async fn auth_status(
        &self,
        request: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        let deadline = deadline_of(&request);
        let (enabled, users) = self.settings_and_users(deadline).await?;
        Ok(Response::new(status_pb(enabled, &users)))
    }
}
