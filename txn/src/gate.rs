//! The gate every client-facing request passes when auth is on: who is
//! asking ([`authenticate`], pure) and whether they may
//! ([`crate::authz::authorize`], pure), with what the coordinator last
//! read from its catalog ([`GateState`], swapped in whole by
//! [`Gate::set`]).
//!
//! Who is asking, in order: a bearer token (`authorization: Bearer ...`,
//! from `Auth.Login`) names a user and carries its grants; a node
//! certificate is a superuser (cluster processes keep working); a client
//! certificate `trellis://client/NAME` is user NAME, with its grants as
//! last read from the catalog; anything else is refused UNAUTHENTICATED.
//! With auth off everyone may do everything.
//!
//! This module never reads the catalog, never hashes a password, and
//! never logs a token.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tonic::Status;
use tonic::metadata::MetadataMap;
use trellis_net::tls::{Peer, PeerRole, accept::ConnectInfo};

use crate::authz::{Access, Grants, authorize};
use crate::metrics::Metrics;
use crate::token::{self, SECRET_BYTES};

/// The metadata key a token travels in.
pub const AUTHORIZATION: &str = "authorization";
/// What precedes the token in it.
pub const BEARER: &str = "Bearer ";

/// What the gate knows of the cluster's auth, as last read from the
/// catalog.
#[derive(Clone, Default)]
pub struct GateState {
    pub enabled: bool,
    pub cluster: u64,
    pub secret: [u8; SECRET_BYTES],
    /// Every user's grants, by name: for client certificates.
    pub users: HashMap<String, Grants>,
}

impl std::fmt::Debug for GateState {
    // Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateState")
            .field("enabled", &self.enabled)
            .field("cluster", &self.cluster)
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

/// Who a request comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// Auth is off, or a node certificate: may do everything.
    Superuser,
    /// A user, with its grants.
    User(Grants),
}

/// Who is asking: see the module doc for the order. `bearer` is the
/// `authorization` header's value, if any; `now_unix_s` checks a token's
/// expiry. The error names what is missing and never holds the token.
pub fn authenticate(
    state: &GateState,
    peer: Option<&Peer>,
    bearer: Option<&str>,
    now_unix_s: u64,
) -> Result<Principal, String> {
    if !state.enabled {
        return Ok(Principal::Superuser);
    }
    if let Some(header) = bearer {
        let token = header.strip_prefix(BEARER).ok_or_else(|| {
            "the authorization header is not `Bearer <token>`: log in with --user".to_string()
        })?;
        return token::verify(&state.secret, state.cluster, now_unix_s, token)
            .map(|claims| Principal::User(claims.grants))
            .map_err(|e| e.to_string());
    }
    match peer {
        Some(Peer::Verified(PeerRole::Node(_))) => Ok(Principal::Superuser),
        Some(Peer::Verified(PeerRole::Client(name))) => match state.users.get(name) {
            Some(grants) => Ok(Principal::User(grants.clone())),
            None => Err(format!(
                "auth is on and the client certificate names user `{name}`, who does not exist \
                 (`trellis user add {name}` by an admin)"
            )),
        },
        Some(Peer::NoRole(why)) => Err(format!(
            "auth is on and the client certificate carries no user: {why}"
        )),
        Some(Peer::Plaintext) | None => Err("auth is on: log in with --user (password from \
                                             TRELLIS_PASSWORD or --password-stdin) or present \
                                             a client certificate (--tls-cert) of a user"
            .to_string()),
    }
}

/// The gate of one coordinator: the state last read from the catalog,
/// and the counters.
pub struct Gate {
    state: RwLock<Arc<GateState>>,
    metrics: Arc<Metrics>,
}

impl Gate {
    /// A gate with auth off until [`Gate::set`].
    pub fn new(metrics: Arc<Metrics>) -> Gate {
        Gate {
            state: RwLock::new(Arc::new(GateState::default())),
            metrics,
        }
    }

    /// Replaces what the gate knows.
    pub fn set(&self, state: GateState) {
        *self
            .state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(state);
    }

    /// What the gate knows now.
    pub fn state(&self) -> Arc<GateState> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Who sent a request with this metadata and these extensions:
    /// UNAUTHENTICATED naming why, if nobody the cluster knows.
    pub fn principal(
        &self,
        metadata: &MetadataMap,
        extensions: &tonic::Extensions,
    ) -> Result<Principal, Status> {
        let state = self.state();
        if !state.enabled {
            return Ok(Principal::Superuser);
        }
        let peer = extensions.get::<ConnectInfo>().map(|info| &info.peer);
        let bearer =
            match metadata.get(AUTHORIZATION) {
                Some(value) => Some(value.to_str().map_err(|_| {
                    Status::unauthenticated("the authorization header is not text")
                })?),
                None => None,
            };
        authenticate(&state, peer, bearer, crate::metrics::unix_ms() / 1000).map_err(|why| {
            self.metrics.unauthenticated.inc();
            Status::unauthenticated(why)
        })
    }

    /// Whether the sender of a request may do `access`: UNAUTHENTICATED
    /// or PERMISSION_DENIED naming what is missing. One check, counted
    /// once, whatever the number of keys.
    pub fn check(
        &self,
        metadata: &MetadataMap,
        extensions: &tonic::Extensions,
        access: &Access<'_>,
    ) -> Result<(), Status> {
        let grants = match self.principal(metadata, extensions)? {
            Principal::Superuser => return Ok(()),
            Principal::User(grants) => grants,
        };
        self.metrics.auth_checks.inc();
        authorize(&grants, access).map_err(|denied| {
            self.metrics.auth_denied.inc();
            Status::permission_denied(denied.to_string())
        })
    }

    /// [`Gate::check`] of a request.
    pub fn check_request<T>(
        &self,
        request: &tonic::Request<T>,
        access: &Access<'_>,
    ) -> Result<(), Status> {
        self.check(request.metadata(), request.extensions(), access)
    }
}

/// A tonic interceptor admitting admins only (the Admin service).
pub fn admin_only(
    gate: Arc<Gate>,
) -> impl Fn(tonic::Request<()>) -> Result<tonic::Request<()>, Status> + Clone {
    move |request| {
        gate.check_request(&request, &Access::Admin)?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{Grant, Role};
    use crate::token::{Claims, TOKEN_LIFETIME, mint};

    const NOW: u64 = 1_000_000;

    fn on() -> GateState {
        let bob = Grants::new(
            "bob",
            vec![Grant::new(Role::Read, Vec::new()).expect("grant")],
        )
        .expect("grants");
        GateState {
            enabled: true,
            cluster: 7,
            secret: [9; SECRET_BYTES],
            users: HashMap::from([("bob".to_string(), bob)]),
        }
    }

    fn bearer_of(state: &GateState, user: &str, expires: u64) -> String {
        let claims = Claims {
            cluster: state.cluster,
            expires_unix_s: expires,
            grants: Grants::new(user, Vec::new()).expect("grants"),
        };
        format!("{BEARER}{}", mint(&state.secret, &claims))
    }

    #[test]
    fn with_auth_off_everyone_is_a_superuser() {
        let off = GateState::default();
        assert_eq!(
            authenticate(&off, None, Some("garbage"), NOW),
            Ok(Principal::Superuser)
        );
    }

    #[test]
    fn nodes_are_superusers_and_client_certificates_are_users() {
        let state = on();
        let node = Peer::Verified(PeerRole::Node("n".into()));
        assert_eq!(
            authenticate(&state, Some(&node), None, NOW),
            Ok(Principal::Superuser)
        );
        let bob = Peer::Verified(PeerRole::Client("bob".into()));
        assert_eq!(
            authenticate(&state, Some(&bob), None, NOW),
            Ok(Principal::User(state.users["bob"].clone()))
        );
        let eve = Peer::Verified(PeerRole::Client("eve".into()));
        let err = authenticate(&state, Some(&eve), None, NOW).expect_err("unknown user");
        assert!(err.contains("user `eve`, who does not exist"), "{err}");
        for peer in [None, Some(&Peer::Plaintext)] {
            let err = authenticate(&state, peer, None, NOW).expect_err("nobody");
            assert!(err.contains("log in with --user"), "{err}");
        }
    }

    #[test]
    fn a_token_speaks_for_its_user_even_over_a_node_certificate_until_it_expires() {
        let state = on();
        let expires = NOW + TOKEN_LIFETIME.as_secs();
        let token = bearer_of(&state, "carol", expires);
        let node = Peer::Verified(PeerRole::Node("n".into()));
        assert_eq!(
            authenticate(&state, Some(&node), Some(&token), NOW),
            Ok(Principal::User(
                Grants::new("carol", Vec::new()).expect("grants")
            ))
        );
        let err = authenticate(&state, None, Some(&token), expires).expect_err("expired");
        assert!(err.contains("expired"), "{err}");
        assert!(
            !err.contains(&token[BEARER.len()..]),
            "the token leaked: {err}"
        );
        let foreign = GateState { cluster: 8, ..on() };
        let err = authenticate(&foreign, None, Some(&token), NOW).expect_err("foreign");
        assert!(err.contains("another cluster"), "{err}");
        let err = authenticate(&state, None, Some("Basic abc"), NOW).expect_err("not bearer");
        assert!(err.contains("Bearer"), "{err}");
    }
}
