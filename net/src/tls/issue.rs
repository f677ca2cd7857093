//! Making a cluster CA and its node and client certificates (what
//! `trellis cert` writes). Pure: PEM text in, PEM text out, `now` passed
//! in; writing files is the caller's.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use super::{PeerRole, check_name};

/// How long a CA made by `trellis cert create-ca` is valid.
pub const CA_VALIDITY_DAYS: i64 = 10 * 365;
/// How long a node or client certificate is valid by default.
pub const LEAF_VALIDITY_DAYS: i64 = 365;
/// The longest validity `--days` accepts (a CA's).
pub const VALIDITY_DAYS_MAX: i64 = CA_VALIDITY_DAYS;
/// How far before `now` a certificate starts to be valid, so that a
/// machine whose clock is a little behind accepts it at once.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::hours(1);

const _: () = assert!(LEAF_VALIDITY_DAYS <= CA_VALIDITY_DAYS);

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct Pem {
    pub cert: String,
    /// PKCS#8; written with mode 0600.
    pub key: String,
}

/// Why a certificate cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("{0}")]
    BadInput(String),
    #[error("the CA certificate cannot be used: {0}")]
    BadCa(String),
    #[error("the CA key does not belong to the CA certificate")]
    CaKeyMismatch,
    #[error("cannot make the certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

fn validity(
    params: &mut CertificateParams,
    now: OffsetDateTime,
    days: i64,
) -> Result<(), IssueError> {
    if !(1..=VALIDITY_DAYS_MAX).contains(&days) {
        return Err(IssueError::BadInput(format!(
            "--days {days}: a certificate is valid for 1 to {VALIDITY_DAYS_MAX} days"
        )));
    }
    params.not_before = now - CLOCK_SKEW_ALLOWANCE;
    params.not_after = now + Duration::days(days);
    Ok(())
}

/// A self-signed CA for the cluster `cluster` (named in its subject).
pub fn create_ca(cluster: &str, now: OffsetDateTime, days: i64) -> Result<Pem, IssueError> {
    check_name(cluster).map_err(|e| IssueError::BadInput(format!("cluster {e}")))?;
    let mut params = CertificateParams::default();
    validity(&mut params, now, days)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("Trellis CA {cluster}"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Trellis");
    // Signs leaves only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A node certificate (coordinator or shard) named `name`, valid for the
/// host names and IP addresses in `hosts` (at least one: peers dial it by
/// one of them), signed by `ca`.
pub fn create_node(
    ca: &Pem,
    name: &str,
    hosts: &[String],
    now: OffsetDateTime,
    days: i64,
) -> Result<Pem, IssueError> {
    check_name(name).map_err(|e| IssueError::BadInput(format!("node {e}")))?;
    if hosts.is_empty() {
        return Err(IssueError::BadInput(
            "a node certificate needs at least one --host (the names and IP addresses \
             peers dial it by, e.g. --host 127.0.0.1 --host localhost)"
                .to_string(),
        ));
    }
    let mut sans = vec![role_san(&PeerRole::Node(name.to_string()))?];
    for host in hosts {
        sans.push(match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.as_str().try_into().map_err(|_| {
                IssueError::BadInput(format!(
                    "--host `{host}` is neither an IP address nor a DNS name"
                ))
            })?),
        });
    }
    leaf(
        ca,
        name,
        sans,
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        now,
        days,
    )
}

/// A client certificate for the user `name`, signed by `ca`.
pub fn create_client(
    ca: &Pem,
    name: &str,
    now: OffsetDateTime,
    days: i64,
) -> Result<Pem, IssueError> {
    check_name(name).map_err(|e| IssueError::BadInput(format!("client {e}")))?;
    let sans = vec![role_san(&PeerRole::Client(name.to_string()))?];
    leaf(
        ca,
        name,
        sans,
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        now,
        days,
    )
}

fn role_san(role: &PeerRole) -> Result<SanType, IssueError> {
    Ok(SanType::URI(role.uri().as_str().try_into()?))
}

fn leaf(
    ca: &Pem,
    name: &str,
    sans: Vec<SanType>,
    usages: Vec<ExtendedKeyUsagePurpose>,
    now: OffsetDateTime,
    days: i64,
) -> Result<Pem, IssueError> {
    let ca_key = KeyPair::from_pem(&ca.key)
        .map_err(|e| IssueError::BadCa(format!("its key cannot be read: {e}")))?;
    check_ca_key(&ca.cert, &ca_key)?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(|e| IssueError::BadCa(e.to_string()))?;
    let mut params = CertificateParams::default();
    validity(&mut params, now, days)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usages;
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// The CA key must be the one whose public half the CA certificate holds,
/// or every certificate it signs fails verification later.
fn check_ca_key(ca_cert_pem: &str, ca_key: &KeyPair) -> Result<(), IssueError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(ca_cert_pem.as_bytes())
        .map_err(|e| IssueError::BadCa(format!("not a PEM certificate: {e}")))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| IssueError::BadCa(e.to_string()))?;
    if !cert.is_ca() {
        return Err(IssueError::BadCa(
            "it is not a CA certificate (make one with `trellis cert create-ca`)".to_string(),
        ));
    }
    if cert.public_key().subject_public_key.data.as_ref() != ca_key.public_key_raw() {
        return Err(IssueError::CaKeyMismatch);
    }
    Ok(())
}
