//! `--tls-ca`, `--tls-cert`, `--tls-key`: one set of flags for every
//! subcommand that serves or connects. All three turn mutual TLS on for
//! every link the process makes or accepts (`trellis_net::tls`); none is
//! plaintext; some but not all is a usage error (exit 2).

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::Context as _;
use trellis_net::tls::{Identity, TlsFiles};

/// The flags, global to every subcommand.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// PEM certificate(s) of the cluster CA: peers must present a
    /// certificate it signed. With --tls-cert and --tls-key, every link
    /// this process makes or accepts is mutual TLS.
    #[arg(long, global = true, env = "TRELLIS_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// PEM certificate of this process: a node certificate for
    /// coordinators and shards (`trellis cert create-node`), a client
    /// certificate for tools (`trellis cert create-client`).
    #[arg(long, global = true, env = "TRELLIS_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, global = true, env = "TRELLIS_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The files, if TLS is asked for; a usage message if only some of
    /// the three flags are given.
    pub fn files(&self) -> Result<Option<TlsFiles>, String> {
        match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (None, None, None) => Ok(None),
            (Some(ca), Some(cert), Some(key)) => Ok(Some(TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            })),
            _ => {
                let missing = [
                    ("--tls-ca", self.tls_ca.is_none()),
                    ("--tls-cert", self.tls_cert.is_none()),
                    ("--tls-key", self.tls_key.is_none()),
                ]
                .into_iter()
                .filter_map(|(flag, missing)| missing.then_some(flag))
                .collect::<Vec<_>>()
                .join(" and ");
                Err(format!(
                    "TLS needs --tls-ca, --tls-cert and --tls-key together; {missing} missing \
                     (make the files with `trellis cert`, or give none of the three for plaintext)"
                ))
            }
        }
    }
}

/// The files this process was started with, for `trellis dev` to hand to
/// the processes it starts.
static FILES: OnceLock<TlsFiles> = OnceLock::new();

/// Loads and installs the identity: every dial and accept from now on is
/// TLS.
pub fn install(files: TlsFiles) -> anyhow::Result<()> {
    let identity = Identity::load(&files).context("loading the TLS files")?;
    tracing::debug!(role = %identity.role(), "TLS on: every link is mutual TLS");
    trellis_net::tls::install(identity);
    let _ = FILES.set(files);
    Ok(())
}

/// The TLS gauges of this process's `/metrics`, if TLS is on:
/// `trellis_tls_expiry_timestamp_seconds{certificate="own"|"ca"}`, when its
/// own certificate and the first certificate of its CA bundle expire (alert
/// on `... - time() < 30 * 86400`).
pub fn render_expiry(out: &mut trellis_metrics::Scrape) {
    let Some(identity) = trellis_net::tls::current() else {
        return;
    };
    let expiry = identity.expiry();
    let series = |which: &str, at: i64| {
        (
            vec![("certificate".to_string(), which.to_string())],
            at as f64,
        )
    };
    out.gauge_family(
        "trellis_tls_expiry_timestamp_seconds",
        "When this process's TLS certificate (own) and the first certificate of its CA bundle (ca) expire, in seconds since the Unix epoch.",
        vec![series("own", expiry.cert), series("ca", expiry.ca)],
    );
}

/// The flags that give a child process this process's TLS files (none
/// when TLS is off).
pub fn child_args() -> Vec<std::ffi::OsString> {
    let Some(files) = FILES.get() else {
        return Vec::new();
    };
    vec![
        "--tls-ca".into(),
        files.ca.clone().into(),
        "--tls-cert".into(),
        files.cert.clone().into(),
        "--tls-key".into(),
        files.key.clone().into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_three_or_none() {
        assert_eq!(TlsArgs::default().files(), Ok(None));
        let all = TlsArgs {
            tls_ca: Some("ca.pem".into()),
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
        };
        assert!(matches!(all.files(), Ok(Some(_))));
        let some = TlsArgs {
            tls_key: None,
            tls_ca: None,
            ..all
        };
        let err = some.files().expect_err("partial");
        assert!(err.contains("--tls-ca and --tls-key missing"), "{err}");
    }
}
