//! `--tls-ca`, `--tls-cert`, `--tls-key`: one set of flags for every
//! subcommand that serves or connects. All three turn mutual TLS on for
//! every link the process makes or accepts (`trellis_net::tls`); none is
//! plaintext; some but not all is a usage error (exit 2).
//!
//! With TLS on, a thread of its own reloads the files on SIGHUP and when
//! its poll (`TLS_RELOAD_POLL`) finds them changed
//! (`trellis_net::tls::reload` decides); this module owns that thread, the
//! SIGHUP handler, the TLS series of `/metrics` and `--metrics-tls`
//! (`/metrics` over HTTPS). It never decides whether files are
//! acceptable.

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::Context as _;
use trellis_net::tls::reload::{Reloader, TLS_RELOAD_POLL, Trigger};
use trellis_net::tls::{Identity, PemFiles, TlsFiles};

/// The flags, global to every subcommand.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// PEM certificate(s) of the cluster CA: peers must present a
    /// certificate it signed. With --tls-cert and --tls-key, every link
    /// this process makes or accepts is mutual TLS. The three files are
    /// reloaded on SIGHUP and when they change (read every 5 s); new
    /// connections use them.
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
    /// Serve /metrics over HTTPS with this process's certificate (no
    /// client certificate asked: scrape it trusting the CA). Needs the
    /// --tls-* flags.
    #[arg(long, global = true, env = "TRELLIS_METRICS_TLS")]
    pub metrics_tls: bool,
}

impl TlsArgs {
    /// The files, if TLS is asked for; a usage message if only some of
    /// the three flags are given.
    pub fn files(&self) -> Result<Option<TlsFiles>, String> {
        match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (None, None, None) if self.metrics_tls => Err(
                "--metrics-tls serves /metrics with this process's certificate: give --tls-ca, \
                 --tls-cert and --tls-key too"
                    .to_string(),
            ),
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
/// Whether `/metrics` is served over HTTPS (`--metrics-tls`).
static METRICS_TLS: OnceLock<bool> = OnceLock::new();

/// Records `--metrics-tls` (checked by [`TlsArgs::files`] to come with the
/// TLS files).
pub fn set_metrics_tls(on: bool) {
    let _ = METRICS_TLS.set(on);
}

/// Serves `/metrics` on `listener`: over HTTPS with the identity
/// installed at each connection when `--metrics-tls` asks (so a reload
/// reaches the next scrape), else plain HTTP.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    scrape: impl Fn() -> trellis_metrics::Scrape + Send + Sync + 'static,
) {
    let identity = trellis_net::tls::current();
    match (METRICS_TLS.get().copied().unwrap_or(false), identity) {
        (true, Some(first)) => {
            let config = move || {
                trellis_net::tls::current()
                    .unwrap_or_else(|| first.clone())
                    .metrics_server_config()
            };
            trellis_metrics::serve_tls(listener, config, scrape).await
        }
        _ => trellis_metrics::serve(listener, scrape).await,
    }
}

/// Loads and installs the identity: every dial and accept from now on is
/// TLS. Then starts the reload thread: from here on SIGHUP reloads the
/// files instead of ending the process.
pub fn install(files: TlsFiles) -> anyhow::Result<()> {
    let read = PemFiles::read(&files);
    let identity = Identity::from_pem(&files, &read).context("loading the TLS files")?;
    tracing::debug!(role = %identity.role(), "TLS on: every link is mutual TLS");
    trellis_net::tls::install(identity);
    let _ = FILES.set(files.clone());
    watch(Reloader::new(files, read))
}

/// Runs `reloader` on a thread of its own (reading files blocks): on
/// SIGHUP, and every [`TLS_RELOAD_POLL`]. Returns once the SIGHUP handler
/// is installed.
fn watch(mut reloader: Reloader) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the TLS reload thread's runtime")?;
    let mut hangup = {
        let _entered = runtime.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?
    };
    std::thread::Builder::new()
        .name("tls-reload".into())
        .spawn(move || {
            runtime.block_on(async move {
                let mut poll = tokio::time::interval(TLS_RELOAD_POLL);
                poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                poll.tick().await; // the first tick is now: the files were just read
                loop {
                    let trigger = tokio::select! {
                        got = hangup.recv() => match got {
                            Some(()) => Trigger::Signal,
                            None => return,
                        },
                        _ = poll.tick() => Trigger::Poll,
                    };
                    reloader.check(trigger);
                }
            })
        })
        .context("starting the TLS reload thread")?;
    Ok(())
}

/// The TLS series of this process's `/metrics`, if TLS is on:
/// - `trellis_tls_expiry_timestamp_seconds{certificate="own"|"ca",subject}`:
///   when its own certificate and the first CA of its bundle to expire
///   do, and which certificates those are (alert on
///   `... - time() < 30 * 86400`);
/// - `trellis_tls_ca_certificates`: how many CAs its bundle holds (2
///   during a rotation);
/// - `trellis_tls_reloads_total{result="ok"|"error"}`;
/// - `trellis_tls_handshake_failures_total` and
///   `trellis_tls_handshakes_refused_total` (closed at once by the rate
///   limit).
pub fn render(out: &mut trellis_metrics::Scrape) {
    let Some(identity) = trellis_net::tls::current() else {
        return;
    };
    let expiry = identity.expiry();
    let series = |which: &str, subject: &str, at: i64| {
        (
            vec![
                ("certificate".to_string(), which.to_string()),
                ("subject".to_string(), subject.to_string()),
            ],
            at as f64,
        )
    };
    out.gauge_family(
        "trellis_tls_expiry_timestamp_seconds",
        "When this process's TLS certificate (own) and the first certificate of its CA bundle to expire (ca) expire, in seconds since the Unix epoch; subject names the certificate.",
        vec![
            series("own", &expiry.cert_subject, expiry.cert),
            series("ca", &expiry.ca_subject, expiry.ca),
        ],
    );
    out.gauge(
        "trellis_tls_ca_certificates",
        "How many CA certificates this process's CA bundle holds (all trusted; 2 while a CA rotation overlaps them).",
        expiry.ca_count as u64,
    );
    let (ok, error) = trellis_net::tls::reload::reloads();
    let result = |result: &str, n: u64| (vec![("result".to_string(), result.to_string())], n);
    out.counter_family(
        "trellis_tls_reloads_total",
        "Reloads of the TLS files (SIGHUP or a change found by the poll): ok installed them, error kept the identity in use (the log says why).",
        vec![result("ok", ok), result("error", error)],
    );
    let (failed, refused) = trellis_net::tls::accept::handshake_failures();
    out.counter(
        "trellis_tls_handshake_failures_total",
        "TLS handshakes this process accepted that failed (no or a wrong certificate, not TLS, too slow).",
        failed,
    );
    out.counter(
        "trellis_tls_handshakes_refused_total",
        "Connections closed before any handshake because their address failed too many handshakes lately.",
        refused,
    );
}

/// The flags that give a child process this process's TLS files (none
/// when TLS is off).
pub fn child_args() -> Vec<std::ffi::OsString> {
    let Some(files) = FILES.get() else {
        return Vec::new();
    };
    let mut args: Vec<std::ffi::OsString> = vec![
        "--tls-ca".into(),
        files.ca.clone().into(),
        "--tls-cert".into(),
        files.cert.clone().into(),
        "--tls-key".into(),
        files.key.clone().into(),
    ];
    if METRICS_TLS.get().copied().unwrap_or(false) {
        args.push("--metrics-tls".into());
    }
    args
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
            metrics_tls: true,
        };
        assert!(matches!(all.files(), Ok(Some(_))));
        let some = TlsArgs {
            tls_key: None,
            tls_ca: None,
            ..all
        };
        let err = some.files().expect_err("partial");
        assert!(err.contains("--tls-ca and --tls-key missing"), "{err}");
        let metrics_only = TlsArgs {
            metrics_tls: true,
            ..TlsArgs::default()
        };
        let err = metrics_only.files().expect_err("no files");
        assert!(
            err.contains("--metrics-tls") && err.contains("--tls-ca"),
            "{err}"
        );
    }
}
