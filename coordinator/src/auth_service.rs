//! The public `trellis.v1.Auth` service (users, grants, the auth switch,
//! `Login`) and the loop that keeps this coordinator's [`Gate`] in step
//! with the catalog.
//!
//! Wire types become domain types here; the decisions are
//! [`crate::auth`]'s and [`trellis_txn::authz`]'s. Passwords are hashed
//! and checked on blocking threads, travel only over TLS, and are never
//! logged; neither are tokens nor the secret.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tonic::{Request, Response, Status};
use trellis_proto::v1 as pb;
use trellis_txn::authz::{Access, Grant, Grants, Role};
use trellis_txn::gate::{Gate, GateState};
use trellis_txn::token::{self, Claims, TOKEN_LIFETIME};

use crate::auth::{self, Removal};
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
            Ok((u.name, grants))
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
}

impl AuthApi {
    pub fn new(txns: Arc<TxnManager>, gate: Arc<Gate>) -> Self {
        AuthApi { txns, gate }
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
        let matches = tokio::task::spawn_blocking(move || auth::check_password(&phc, &password))
            .await
            .map_err(|e| Status::internal(format!("checking the password: {e}")))?;
        let grants = match (matches, grants) {
            (true, Some(grants)) => grants,
            _ => {
                self.gate.metrics().login_failures.inc();
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
        let (enabled, users) = self.settings_and_users(deadline).await?;
        auth::check_keeps_an_admin(enabled, &users, Removal::User(&user))
            .map_err(Status::failed_precondition)?;
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
        if grant.role() == Role::Admin {
            let (enabled, users) = self.settings_and_users(deadline).await?;
            auth::check_keeps_an_admin(enabled, &users, Removal::Admin(&req.user))
                .map_err(Status::failed_precondition)?;
        }
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
        let (_, users) = self.settings_and_users(deadline).await?;
        if enabled {
            auth::check_enable(trellis_net::tls::current().is_some(), &users)
                .map_err(Status::failed_precondition)?;
        }
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
