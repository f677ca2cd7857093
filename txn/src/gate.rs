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
//! Shards apply the same rules to the clients that route their own reads
//! and one-group commits ([`admit_at_shard`], pure), with the state a
//! coordinator hands them over `Membership.GetAuth` ([`GateState::to_pb`],
//! [`GateState::from_pb`], [`GateState::fingerprint`]).
//!
//! This module never reads the catalog, never hashes a password, and
//! never logs a token.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};
use tonic::Status;
use tonic::metadata::MetadataMap;
use trellis_net::tls::{Peer, PeerRole, accept::ConnectInfo};
use trellis_proto::shard::v1 as shard_pb;

use crate::authz::{Access, Grant, Grants, Role, authorize};
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
    /// Every user's grants, by name: for client certificates (shared,
    /// so a request takes them without a copy).
    pub users: HashMap<String, Arc<Grants>>,
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

impl GateState {
    /// A digest of everything in the state: equal states, equal
    /// fingerprints (users in name order), whatever the map's order.
    pub fn fingerprint(&self) -> Vec<u8> {
        let mut hash = Sha256::new();
        hash.update([u8::from(self.enabled)]);
        hash.update(self.cluster.to_be_bytes());
        hash.update(self.secret);
        let mut names: Vec<&String> = self.users.keys().collect();
        names.sort();
        for name in names {
            let grants = &self.users[name];
            hash.update((name.len() as u64).to_be_bytes());
            hash.update(name.as_bytes());
            hash.update((grants.grants().len() as u64).to_be_bytes());
            for grant in grants.grants() {
                hash.update([grant.role() as u8]);
                hash.update((grant.prefix().len() as u64).to_be_bytes());
                hash.update(grant.prefix());
            }
        }
        hash.finalize().to_vec()
    }

    /// The state on the wire (`Membership.GetAuth`), under `fingerprint`.
    pub fn to_pb(&self, fingerprint: Vec<u8>) -> shard_pb::GetAuthResponse {
        shard_pb::GetAuthResponse {
            fingerprint,
            unchanged: false,
            enabled: self.enabled,
            cluster: self.cluster,
            secret: self.secret.to_vec(),
            users: self
                .users
                .iter()
                .map(|(name, grants)| shard_pb::UserGrants {
                    name: name.clone(),
                    grants: grants
                        .grants()
                        .iter()
                        .map(|g| shard_pb::UserGrant {
                            role: g.role().as_str().to_string(),
                            prefix: g.prefix().to_vec(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// The state a coordinator sent; an error names what is malformed.
    pub fn from_pb(wire: &shard_pb::GetAuthResponse) -> Result<GateState, String> {
        let secret: [u8; SECRET_BYTES] = wire.secret.as_slice().try_into().map_err(|_| {
            format!(
                "the token secret is {} bytes, not {SECRET_BYTES}",
                wire.secret.len()
            )
        })?;
        let users = wire
            .users
            .iter()
            .map(|user| {
                let grants = user
                    .grants
                    .iter()
                    .map(|g| {
                        let role: Role = g.role.parse()?;
                        Grant::new(role, g.prefix.clone())
                    })
                    .collect::<Result<Vec<_>, String>>()
                    .and_then(|grants| Grants::new(user.name.clone(), grants))
                    .map_err(|why| format!("user `{}`: {why}", user.name))?;
                Ok((user.name.clone(), Arc::new(grants)))
            })
            .collect::<Result<HashMap<_, _>, String>>()?;
        Ok(GateState {
            enabled: wire.enabled,
            cluster: wire.cluster,
            secret,
            users,
        })
    }
}

/// How a shard admitted a call of one of its client-facing methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admitted {
    /// A cluster process (node certificate), or no TLS at all: as the
    /// shard's internal methods admit it.
    Node,
    /// A client while auth is off.
    Open,
    /// A user whose grants allow the call (checked once).
    Checked,
}

/// Why a shard refused a client's call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The shard has not yet read the cluster's auth settings: it cannot
    /// tell who may do what (UNAVAILABLE: retry).
    NotYet,
    /// Nobody the cluster knows (UNAUTHENTICATED).
    Unauthenticated(String),
    /// A user who lacks a grant (PERMISSION_DENIED).
    Denied(String),
}

impl Refused {
    /// The gRPC status of the refusal.
    pub fn status(&self) -> Status {
        match self {
            Refused::NotYet => Status::unavailable(
                "this shard has not yet read the cluster's auth settings from its coordinator; \
                 retry",
            ),
            Refused::Unauthenticated(why) => Status::unauthenticated(why.clone()),
            Refused::Denied(why) => Status::permission_denied(why.clone()),
        }
    }
}

/// Whether a shard serves a call of one of its client-facing methods
/// (reads, scans, one-group commits, read validation, lookups): a node
/// as always; a client by the cluster's auth as the coordinator would
/// judge it, with `state` as last read (`None`: not yet, refused rather
/// than served unchecked). `access` is what the call touches (`None`:
/// only that the caller is someone the cluster knows).
pub fn admit_at_shard(
    state: Option<&GateState>,
    peer: Option<&Peer>,
    bearer: Option<&str>,
    now_unix_s: u64,
    access: Option<&Access<'_>>,
) -> Result<Admitted, Refused> {
    if trellis_net::tls::check_node(peer).is_ok() {
        return Ok(Admitted::Node);
    }
    let state = state.ok_or(Refused::NotYet)?;
    match authenticate(state, peer, bearer, now_unix_s).map_err(Refused::Unauthenticated)? {
        Principal::Superuser => Ok(Admitted::Open),
        Principal::User(grants) => match access {
            None => Ok(Admitted::Checked),
            Some(access) => authorize(&grants, access)
                .map(|()| Admitted::Checked)
                .map_err(|denied| Refused::Denied(denied.to_string())),
        },
    }
}

/// Who a request comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// Auth is off, or a node certificate: may do everything.
    Superuser,
    /// A user, with its grants.
    User(Arc<Grants>),
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
            .map(|claims| Principal::User(Arc::new(claims.grants)))
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
    /// The state and its [`GateState::fingerprint`], swapped together.
    state: RwLock<(Arc<GateState>, Arc<Vec<u8>>)>,
    metrics: Arc<Metrics>,
}

impl Gate {
    /// A gate with auth off until [`Gate::set`].
    pub fn new(metrics: Arc<Metrics>) -> Gate {
        let state = GateState::default();
        let fingerprint = Arc::new(state.fingerprint());
        Gate {
            state: RwLock::new((Arc::new(state), fingerprint)),
            metrics,
        }
    }

    /// Replaces what the gate knows.
    pub fn set(&self, state: GateState) {
        let fingerprint = Arc::new(state.fingerprint());
        *self
            .state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = (Arc::new(state), fingerprint);
    }

    /// What the gate knows now.
    pub fn state(&self) -> Arc<GateState> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0
            .clone()
    }

    /// What the gate knows now, with its fingerprint.
    pub fn state_and_fingerprint(&self) -> (Arc<GateState>, Arc<Vec<u8>>) {
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
            users: HashMap::from([("bob".to_string(), Arc::new(bob))]),
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
            Ok(Principal::User(Arc::new(
                Grants::new("carol", Vec::new()).expect("grants")
            )))
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

    #[test]
    fn the_state_crosses_the_wire_whole_and_its_fingerprint_follows_every_change() {
        let state = on();
        let fingerprint = state.fingerprint();
        let back = GateState::from_pb(&state.to_pb(fingerprint.clone())).expect("decodes");
        assert_eq!(back.fingerprint(), fingerprint);
        assert_eq!(back.users, state.users);
        assert_eq!(
            (back.enabled, back.cluster, back.secret),
            (true, 7, [9; SECRET_BYTES])
        );
        let changes = [
            GateState {
                enabled: false,
                ..on()
            },
            GateState {
                secret: [8; SECRET_BYTES],
                ..on()
            },
            GateState {
                users: HashMap::new(),
                ..on()
            },
            {
                let mut more = on();
                let grants = Grants::new(
                    "bob",
                    vec![Grant::new(Role::Write, b"a/".to_vec()).expect("grant")],
                )
                .expect("grants");
                more.users.insert("bob".into(), Arc::new(grants));
                more
            },
        ];
        for changed in changes {
            assert_ne!(changed.fingerprint(), fingerprint, "{changed:?}");
        }
        let mut wire = state.to_pb(fingerprint);
        wire.secret.pop();
        let err = GateState::from_pb(&wire).expect_err("short secret");
        assert!(err.contains("31 bytes"), "{err}");
        let mut wire = state.to_pb(Vec::new());
        wire.users[0].grants[0].role = "owner".into();
        let err = GateState::from_pb(&wire).expect_err("bad role");
        assert!(err.contains("user `bob`"), "{err}");
    }

    #[test]
    fn a_shard_admits_nodes_always_and_clients_only_by_the_state_it_has_read() {
        let node = Peer::Verified(PeerRole::Node("n".into()));
        let bob = Peer::Verified(PeerRole::Client("bob".into()));
        let keys = [b"k".to_vec()];
        let get = Access::Get { keys: &keys };
        let write = Access::Commit {
            reads: &[],
            writes: &[b"k"],
        };
        // Nodes and plaintext (TLS off): as the internal methods, whatever
        // the shard knows.
        for peer in [Some(&node), Some(&Peer::Plaintext), None] {
            assert_eq!(
                admit_at_shard(None, peer, None, NOW, Some(&write)),
                Ok(Admitted::Node)
            );
        }
        // A client before the shard has read the settings: refused, not
        // served unchecked.
        assert_eq!(
            admit_at_shard(None, Some(&bob), None, NOW, Some(&get)),
            Err(Refused::NotYet)
        );
        assert_eq!(Refused::NotYet.status().code(), tonic::Code::Unavailable);
        // Auth off: every client may.
        let off = GateState::default();
        assert_eq!(
            admit_at_shard(Some(&off), Some(&bob), None, NOW, Some(&write)),
            Ok(Admitted::Open)
        );
        // Auth on: bob reads everything and writes nothing.
        let state = on();
        assert_eq!(
            admit_at_shard(Some(&state), Some(&bob), None, NOW, Some(&get)),
            Ok(Admitted::Checked)
        );
        assert_eq!(
            admit_at_shard(Some(&state), Some(&bob), None, NOW, None),
            Ok(Admitted::Checked)
        );
        let denied = admit_at_shard(Some(&state), Some(&bob), None, NOW, Some(&write))
            .expect_err("bob may not write");
        assert!(
            matches!(&denied, Refused::Denied(why) if why.contains("lacks `write`")),
            "{denied:?}"
        );
        assert_eq!(denied.status().code(), tonic::Code::PermissionDenied);
        // A token speaks for its user; a client certificate of nobody is
        // refused.
        let token = bearer_of(&state, "carol", NOW + 60);
        let err = admit_at_shard(Some(&state), Some(&bob), Some(&token), NOW, Some(&get))
            .expect_err("carol holds nothing");
        assert!(matches!(err, Refused::Denied(_)), "{err:?}");
        let eve = Peer::Verified(PeerRole::Client("eve".into()));
        let err = admit_at_shard(Some(&state), Some(&eve), None, NOW, Some(&get))
            .expect_err("unknown user");
        assert_eq!(err.status().code(), tonic::Code::Unauthenticated);
    }
}
