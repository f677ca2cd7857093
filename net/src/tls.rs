//! Mutual TLS on every Trellis link: loading a process's identity, the
//! roles certificates carry, and who may call what.
//!
//! # Layout
//! - this module: [`TlsFiles`] → [`Identity`] (the rustls server and
//!   client configs of one process), the process's installed identity
//!   ([`install`], [`current`]), the role a certificate carries
//!   ([`role_of`]) and the rule that internal RPCs need a node certificate
//!   ([`require_node`], [`node_only`]).
//! - [`accept`]: accepted connections, TLS-terminated when an identity is
//!   installed, each tagged with its peer's role ([`accept::ConnectInfo`]).
//! - `dial`: the client half, used by [`crate::lazy`] and
//!   [`crate::connect`].
//! - [`issue`]: making a cluster CA and node/client certificates
//!   (`trellis cert`).
//! - [`reload`]: whether changed files replace the installed identity
//!   (pure), and the reload that reads, checks, installs and counts.
//! - [`limit`]: the rate limit on failed handshakes per peer address
//!   (pure), which the acceptor applies.
//!
//! # Roles
//! Every certificate of a cluster is signed by the cluster CA and carries
//! exactly one role as a SAN URI: `trellis://node/NAME` for coordinators
//! and shards, `trellis://client/NAME` for users and tools. Both roles may
//! call the client-facing services (Txn, Admin, Changefeed); only nodes may
//! call the internal ones (Shard, Membership). A peer without a
//! certificate of the CA never gets past the handshake.
//!
//! # One identity per process
//! A process has one identity, installed at start ([`install`]) and read
//! by every dial and every accept (each handshake reads the identity
//! installed at that moment): a reload ([`reload`]) installs a new one,
//! so new connections use the new certificate and CA bundle while
//! established ones keep theirs. A CA bundle of several CAs is trusted
//! whole (the overlap of a CA rotation).
//!
//! This module never decides anything about transactions, and the
//! deterministic simulator never installs an identity (it stays
//! plaintext).

pub mod accept;
pub(crate) mod dial;
pub mod issue;
pub mod limit;
pub mod reload;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;

/// The scheme of the SAN URI that names a certificate's role.
pub const ROLE_URI_SCHEME: &str = "trellis://";
/// The longest node or client name a certificate may carry.
pub const NAME_BYTES_MAX: usize = 64;
/// The protocol both ends offer in the TLS handshake (gRPC is HTTP/2).
const ALPN_H2: &[u8] = b"h2";
/// The protocol `/metrics` offers over HTTPS.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Where a process finds its CA bundle, certificate and key (the
/// `--tls-ca`, `--tls-cert` and `--tls-key` flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificates of the cluster CA(s): peers must present a
    /// certificate one of them signed.
    pub ca: PathBuf,
    /// PEM certificate chain of this process, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The role a certificate carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerRole {
    /// A coordinator or shard: may call every service.
    Node(String),
    /// A user or tool: may call the client-facing services only.
    Client(String),
}

impl std::fmt::Display for PeerRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerRole::Node(name) => write!(f, "node `{name}`"),
            PeerRole::Client(name) => write!(f, "client `{name}`"),
        }
    }
}

impl PeerRole {
    /// The SAN URI that marks this role in a certificate.
    pub fn uri(&self) -> String {
        match self {
            PeerRole::Node(name) => format!("{ROLE_URI_SCHEME}node/{name}"),
            PeerRole::Client(name) => format!("{ROLE_URI_SCHEME}client/{name}"),
        }
    }
}

/// Why a certificate has no usable role.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error("the certificate cannot be parsed: {0}")]
    Unparsable(String),
    #[error(
        "the certificate carries no Trellis role (a SAN URI {ROLE_URI_SCHEME}node/NAME or \
         {ROLE_URI_SCHEME}client/NAME); make it with `trellis cert create-node` or \
         `trellis cert create-client`"
    )]
    NoRole,
    #[error("the certificate carries {0} Trellis roles; it must carry exactly one")]
    SeveralRoles(usize),
    #[error(
        "the certificate's role URI `{0}` is not {ROLE_URI_SCHEME}node/NAME or {ROLE_URI_SCHEME}client/NAME"
    )]
    BadUri(String),
}

/// Checks a node or client name: 1 to [`NAME_BYTES_MAX`] bytes of ASCII
/// letters, digits, `.`, `_` and `-`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(format!(
            "name `{name}` must be 1 to {NAME_BYTES_MAX} bytes long"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "name `{name}` has `{bad}`: use ASCII letters, digits, `.`, `_` and `-`"
        ));
    }
    Ok(())
}

/// Reads the role from one SAN URI: `None` when the URI is not a Trellis
/// role at all (other URIs are allowed and ignored).
pub fn parse_role_uri(uri: &str) -> Option<Result<PeerRole, RoleError>> {
    let rest = uri.strip_prefix(ROLE_URI_SCHEME)?;
    let role = match rest.split_once('/') {
        Some(("node", name)) if check_name(name).is_ok() => Ok(PeerRole::Node(name.to_string())),
        Some(("client", name)) if check_name(name).is_ok() => {
            Ok(PeerRole::Client(name.to_string()))
        }
        _ => Err(RoleError::BadUri(uri.to_string())),
    };
    Some(role)
}

/// The role a DER certificate carries: exactly one `trellis://` SAN URI.
/// Only meaningful for a certificate the cluster CA has verified.
pub fn role_of(cert_der: &[u8]) -> Result<PeerRole, RoleError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| RoleError::Unparsable(e.to_string()))?;
    let names = cert
        .subject_alternative_name()
        .map_err(|e| RoleError::Unparsable(e.to_string()))?;
    let mut roles = names
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => parse_role_uri(uri),
            _ => None,
        })
        .collect::<Vec<_>>();
    match roles.len() {
        0 => Err(RoleError::NoRole),
        1 => roles.pop().expect("one role"),
        n => Err(RoleError::SeveralRoles(n)),
    }
}

/// When a certificate stops being valid: its `notAfter`, in seconds since
/// the Unix epoch.
pub fn not_after(cert_der: &[u8]) -> Result<i64, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| e.to_string())?;
    Ok(cert.validity().not_after.timestamp())
}

/// The host names and IP addresses the first certificate of `pem` is
/// valid for (its DNS and IP subject alternative names), as text.
pub fn hosts_of_pem(pem: &[u8]) -> Result<Vec<String>, String> {
    let der = CertificateDer::pem_slice_iter(pem)
        .next()
        .ok_or("no PEM certificate")?
        .map_err(|e| e.to_string())?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| e.to_string())?;
    let names = cert.subject_alternative_name().map_err(|e| e.to_string())?;
    Ok(names
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
            x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                4 => <[u8; 4]>::try_from(*ip)
                    .ok()
                    .map(|b| std::net::IpAddr::from(b).to_string()),
                16 => <[u8; 16]>::try_from(*ip)
                    .ok()
                    .map(|b| std::net::IpAddr::from(b).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect())
}

/// The subject of a certificate, as `CN=…, O=…` (for metrics and logs).
pub fn subject(cert_der: &[u8]) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| e.to_string())?;
    Ok(cert.subject().to_string())
}

/// When an identity's certificates expire, in seconds since the Unix
/// epoch (for the `trellis_tls_expiry_timestamp_seconds` gauge), and which
/// certificates those are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expiry {
    /// This process's own certificate.
    pub cert: i64,
    /// Its subject.
    pub cert_subject: String,
    /// The first of the CA bundle's certificates to expire (during a CA
    /// rotation the bundle holds the old and the new CA: the old one).
    pub ca: i64,
    /// That CA's subject.
    pub ca_subject: String,
    /// How many CA certificates the bundle holds (all trusted).
    pub ca_count: usize,
}

/// Who is at the other end of an accepted connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// The server runs without TLS (`--tls-*` not given): anyone.
    Plaintext,
    /// A certificate of the cluster CA carrying this role.
    Verified(PeerRole),
    /// A certificate of the cluster CA without a usable role.
    NoRole(RoleError),
}

/// Whether `peer` may call an internal RPC (the Shard and Membership
/// services): nodes only. `None` is a connection made outside
/// [`accept::incoming`] (the simulator, in-process test servers), which
/// is plaintext. The error names what is missing.
pub fn check_node(peer: Option<&Peer>) -> Result<(), String> {
    const NEED: &str = "this RPC is internal to the cluster and needs a node certificate \
                        (SAN URI trellis://node/NAME, made by `trellis cert create-node`); \
                        clients call a coordinator's services, and a shard's reads and \
                        one-group commits only";
    match peer {
        None | Some(Peer::Plaintext) | Some(Peer::Verified(PeerRole::Node(_))) => Ok(()),
        Some(Peer::Verified(client @ PeerRole::Client(_))) => Err(format!(
            "{NEED}; the caller presented the certificate of {client}"
        )),
        Some(Peer::NoRole(why)) => Err(format!("{NEED}; the caller's certificate: {why}")),
    }
}

/// [`check_node`] for a gRPC request (reads the peer from its
/// extensions); PERMISSION_DENIED when refused.
pub fn require_node<T>(request: &tonic::Request<T>) -> Result<(), tonic::Status> {
    let peer = request
        .extensions()
        .get::<accept::ConnectInfo>()
        .map(|info| &info.peer);
    check_node(peer).map_err(tonic::Status::permission_denied)
}

/// A tonic interceptor admitting only nodes ([`require_node`]): wrap the
/// internal services with it.
pub fn node_only(request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    require_node(&request)?;
    Ok(request)
}

/// Why a process's TLS files cannot be used. Each message names the file
/// and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {error}")]
    Read {
        what: &'static str,
        path: PathBuf,
        error: String,
    },
    #[error("{what} {path} holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("the CA bundle {path} holds a certificate that is not a usable CA: {source}")]
    BadCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("the certificate {path}: {source}")]
    NoRole { path: PathBuf, source: RoleError },
    #[error(
        "the certificate {cert} is not signed by a CA of {ca} (or has expired): {source}; \
         make it with `trellis cert create-node`/`create-client` from that CA"
    )]
    NotFromCa {
        cert: PathBuf,
        ca: PathBuf,
        source: rustls::Error,
    },
    #[error("the key {key} does not fit the certificate {cert}: {source}")]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
}

/// One process's TLS identity: its role, and the rustls configs it
/// accepts and dials with.
#[derive(Debug)]
pub struct Identity {
    role: PeerRole,
    expiry: Expiry,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    metrics: Arc<rustls::ServerConfig>,
}

impl Identity {
    /// Loads and checks the files: the CA bundle parses, the certificate
    /// carries a role and is signed by the CA, the key fits it. Servers
    /// require a client certificate of the CA; clients verify the server
    /// against the CA and present the certificate.
    pub fn load(files: &TlsFiles) -> Result<Identity, TlsError> {
        Identity::from_pem(files, &PemFiles::read(files))
    }

    /// [`Identity::load`] from the files' contents as read at one moment
    /// (`files` names them in errors): a reload checks exactly the bytes it
    /// compared.
    pub fn from_pem(files: &TlsFiles, pem: &PemFiles) -> Result<Identity, TlsError> {
        // ring, as the project builds without cmake (aws-lc needs it);
        // rustls deprecates ring's provider for lacking post-quantum key
        // exchange, which a later switch of provider would bring.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = |e: rustls::Error| TlsError::Config(e.to_string());

        let ca = parse_certs("CA bundle", &files.ca, &pem.ca)?;
        let unparsable = |path: &PathBuf| {
            let path = path.clone();
            move |e: String| TlsError::Config(format!("{}: {e}", path.display()))
        };
        // The whole bundle is trusted; the gauge names its first CA to
        // expire (`ca` is never empty: parse_certs refuses that).
        let (ca_expiry, ca_subject) = ca
            .iter()
            .map(|c| Ok((not_after(c)?, subject(c)?)))
            .collect::<Result<Vec<(i64, String)>, String>>()
            .map_err(unparsable(&files.ca))?
            .into_iter()
            .min()
            .expect("a CA bundle holds a certificate");
        let ca_count = ca.len();
        let mut roots = RootCertStore::empty();
        for cert in ca {
            roots.add(cert).map_err(|source| TlsError::BadCa {
                path: files.ca.clone(),
                source,
            })?;
        }
        let roots = Arc::new(roots);
        let chain = parse_certs("certificate", &files.cert, &pem.cert)?;
        let role = role_of(&chain[0]).map_err(|source| TlsError::NoRole {
            path: files.cert.clone(),
            source,
        })?;
        let expiry = Expiry {
            cert: not_after(&chain[0]).map_err(unparsable(&files.cert))?,
            cert_subject: subject(&chain[0]).map_err(unparsable(&files.cert))?,
            ca: ca_expiry,
            ca_subject,
            ca_count,
        };
        let key_read = |error: String| TlsError::Read {
            what: "key",
            path: files.key.clone(),
            error,
        };
        let key_pem = pem.key.as_ref().map_err(|e| key_read(e.clone()))?;
        // The parser's error never quotes the key's bytes.
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| key_read(e.to_string()))?;

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        // Our own certificate must pass the check our peers will make:
        // said at start, not as a handshake failure on every peer.
        verifier
            .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
            .map_err(|source| TlsError::NotFromCa {
                cert: files.cert.clone(),
                ca: files.ca.clone(),
                source,
            })?;
        let mismatch = |source| TlsError::KeyMismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        };

        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(config)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(mismatch)?;
        server.alpn_protocols = vec![ALPN_H2.to_vec()];

        // `/metrics` over HTTPS: server authentication only, so that a
        // scraper needs the CA and no certificate of its own.
        let mut metrics = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(config)?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(mismatch)?;
        metrics.alpn_protocols = vec![ALPN_HTTP1.to_vec()];

        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(config)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(mismatch)?;
        client.alpn_protocols = vec![ALPN_H2.to_vec()];

        Ok(Identity {
            role,
            expiry,
            server: Arc::new(server),
            client: Arc::new(client),
            metrics: Arc::new(metrics),
        })
    }

    /// The role this process's certificate carries.
    pub fn role(&self) -> &PeerRole {
        &self.role
    }

    /// When its certificate and its CA bundle expire.
    pub fn expiry(&self) -> Expiry {
        self.expiry.clone()
    }

    /// The server config of `/metrics` over HTTPS (`--metrics-tls`): this
    /// identity's certificate, no client certificate asked.
    pub fn metrics_server_config(&self) -> Arc<rustls::ServerConfig> {
        self.metrics.clone()
    }

    pub(crate) fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    pub(crate) fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.client.clone()
    }
}

/// The contents of a process's three TLS files as read at one moment, or
/// why a file could not be read. Compared whole to tell whether a reload
/// has anything new; its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct PemFiles {
    pub ca: Result<Vec<u8>, String>,
    pub cert: Result<Vec<u8>, String>,
    pub key: Result<Vec<u8>, String>,
}

impl std::fmt::Debug for PemFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = |r: &Result<Vec<u8>, String>| match r {
            Ok(bytes) => format!("{} bytes", bytes.len()),
            Err(e) => format!("unreadable: {e}"),
        };
        f.debug_struct("PemFiles")
            .field("ca", &len(&self.ca))
            .field("cert", &len(&self.cert))
            .field("key", &len(&self.key))
            .finish()
    }
}

impl PemFiles {
    /// Reads the three files (each at most [`PEM_FILE_BYTES_MAX`]).
    pub fn read(files: &TlsFiles) -> PemFiles {
        PemFiles {
            ca: read_bounded(&files.ca),
            cert: read_bounded(&files.cert),
            key: read_bounded(&files.key),
        }
    }
}

/// The largest CA bundle, certificate chain or key file read: far above a
/// bundle of a few CAs, and a bound on what a poll reads every few seconds.
pub const PEM_FILE_BYTES_MAX: u64 = 1 << 20;

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(PEM_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > PEM_FILE_BYTES_MAX {
        return Err(format!("larger than {PEM_FILE_BYTES_MAX} bytes"));
    }
    Ok(bytes)
}

fn parse_certs(
    what: &'static str,
    path: &Path,
    pem: &Result<Vec<u8>, String>,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |error: String| TlsError::Read {
        what,
        path: path.to_path_buf(),
        error,
    };
    let bytes = pem.as_ref().map_err(|e| read(e.clone()))?;
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// What to check when a connection to a Trellis process fails, for error
/// messages: a plaintext client meeting a TLS server sees only a broken
/// connection, and a refused client certificate shows after the
/// handshake (TLS 1.3), as a reset.
pub fn hint() -> &'static str {
    if current().is_some() {
        "TLS is on: both ends need certificates of one cluster CA (--tls-ca, --tls-cert, \
         --tls-key), and a server's certificate must name the host it is dialled by (--host of \
         `trellis cert create-node`)"
    } else {
        "TLS is off here: if the cluster runs TLS, give --tls-ca, --tls-cert and --tls-key"
    }
}

/// The identity every dial and accept of this process uses; `None` is
/// plaintext.
static CURRENT: RwLock<Option<Arc<Identity>>> = RwLock::new(None);

/// Makes `identity` the process's identity: connections accepted and
/// channels made from now on speak TLS with it.
pub fn install(identity: Identity) {
    *CURRENT
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(identity));
}

/// The process's identity, if TLS is on.
pub fn current() -> Option<Arc<Identity>> {
    CURRENT
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

#[cfg(test)]
mod tests;
