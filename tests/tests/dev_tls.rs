//! `trellis dev` runs TLS by default, and the tools find its certificates,
//! with real processes: dev makes a CA and certificates in its data
//! directory and serves mutual TLS only; `trellis status`, `trellis sql`
//! and `trellis dev add-group` run from the dev's directory (or with
//! TRELLIS_DEV_DATA_DIR) work with no TLS flag, while a tool dialling
//! another address never uses dev's files; a restart reuses the same CA and
//! a missing file is named rather than made anew. `--insecure` is plaintext
//! and says so loudly.
//!
//! This process never installs a TLS identity: its own clients are
//! plaintext, which is what the TLS dev must refuse.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use trellis_proto::v1 as pb;
use trellis_tests::harness::{self, Proc, RPC_TIMEOUT, channel, printed, trellis_bin};

/// How long a command (add-group waits at most 90 s itself) may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long dev may take to write a line of its log after READY.
const LOG_TIMEOUT: Duration = Duration::from_secs(30);
/// dev's data directory under the directory a test runs tools in: the
/// name the tools look for by default.
const DEV_DIR: &str = "trellis-dev-data";

/// `trellis dev` with one group of one replica over `data` (plus
/// `extra`), its stderr appended to `log`.
fn dev(data: &Path, extra: &[&str], log: &Path) -> Proc {
    let data = data.to_str().expect("utf-8 path");
    let mut args = vec![
        "dev",
        "--data-dir",
        data,
        "--listen",
        "127.0.0.1:0",
        "--groups",
        "1",
        "--replicas",
        "1",
    ];
    args.extend(extra);
    Proc::start_logged(&args, &[], Some(log)).expect("trellis dev starts")
}

/// Runs `trellis <args>` in `cwd` with `env` (and none of the variables
/// that name TLS files or the dev directory from ours), to its end or
/// killed by pid after [`COMMAND_TIMEOUT`].
fn trellis_in(cwd: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(trellis_bin());
    command
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .env_remove("TRELLIS_DEV_DATA_DIR")
        .env_remove("TRELLIS_TLS_CA")
        .env_remove("TRELLIS_TLS_CERT")
        .env_remove("TRELLIS_TLS_KEY")
        .envs(env.iter().copied());
    harness::output_within(command, COMMAND_TIMEOUT)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn read_log(log: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(log).expect("read dev's log")).into_owned()
}

/// Waits (bounded) until dev's log has a line containing `needle`; returns
/// the whole log.
fn wait_for_log(log: &Path, needle: &str) -> String {
    let deadline = Instant::now() + LOG_TIMEOUT;
    loop {
        let text = read_log(log);
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in dev's log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The cluster status asked with this process's plaintext client.
async fn plaintext_status(addr: &str) -> anyhow::Result<pb::StatusResponse> {
    let mut admin = pb::admin_client::AdminClient::new(channel(addr).await?);
    Ok(admin.status(pb::StatusRequest {}).await?.into_inner())
}

/// A listener that records the first bytes of the first connection it
/// accepts (then closes it): what a client sends first. Returns its
/// address and a receiver of those bytes.
fn first_bytes_listener() -> (String, std::sync::mpsc::Receiver<Vec<u8>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else {
            return;
        };
        conn.set_read_timeout(Some(RPC_TIMEOUT))
            .expect("read timeout");
        let mut first = vec![0u8; 16];
        let n = conn.read(&mut first).unwrap_or(0);
        first.truncate(n);
        let _ = tx.send(first);
    });
    (addr, rx)
}

/// The story: a first `trellis dev` on a fresh directory makes its CA and
/// certificates (keys private) and serves TLS only — a plaintext client
/// gets nothing. Run from the directory holding the dev's data, `trellis
/// status` and `trellis sql` work with no TLS flag; from elsewhere they
/// work with TRELLIS_DEV_DATA_DIR, and fail without it. A tool dialling
/// another address sends plaintext, not the dev's certificate. `trellis
/// dev add-group` finds the certificates too. A restart reuses the same
/// CA; with a certificate removed, dev names it and starts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_serves_tls_by_default_and_the_tools_find_its_certificates() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let here = dir.path();
    let data = here.join(DEV_DIR);
    let log = here.join("dev.log");
    let cluster = dev(&data, &[], &log);
    let addr = cluster.field("grpc").to_string();

    // The files, keys for their owner only.
    let tls = data.join("tls");
    for stem in ["ca", "node", "dev"] {
        let cert = tls.join(format!("{stem}.pem"));
        assert!(cert.exists(), "{}", cert.display());
        let key = tls.join(format!("{stem}-key.pem"));
        let mode = std::fs::metadata(&key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", key.display());
    }
    let mode = std::fs::metadata(&tls).expect("tls").permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    // The banner says what to type from where dev was started (not
    // `here`): the variable, and the address. Waited for itself: the
    // banner's lines follow "cluster is up" and may reach the log later.
    let canonical = data.canonicalize().expect("canonical data dir");
    let typed = format!(
        "TRELLIS_DEV_DATA_DIR={} trellis status --addr {addr}",
        canonical.display()
    );
    let text = wait_for_log(&log, &typed);
    assert!(text.contains("Trellis dev cluster is up"), "{text}");
    assert!(text.contains("TLS: made a CA"), "{text}");
    assert!(!text.contains("WARN --insecure"), "{text}");

    // TLS only: a plaintext client is refused.
    let plain = tokio::time::timeout(RPC_TIMEOUT * 3, plaintext_status(&addr))
        .await
        .expect("a plaintext attempt ends");
    assert!(plain.is_err(), "a plaintext client was served: {plain:?}");

    // From the directory that holds trellis-dev-data: no flag needed.
    let out = trellis_in(here, &[], &["status", "--addr", &addr]);
    assert!(out.status.success(), "{}", printed(&out));
    assert!(stdout(&out).contains("primary"), "{}", printed(&out));
    let out = trellis_in(
        here,
        &[],
        &[
            "sql",
            "--addr",
            &addr,
            // The default direct route: the shards serve the dev's client
            // certificate on their reads and one-group commits.
            "-c",
            "PUT devtls 'found'; GET devtls",
        ],
    );
    assert!(out.status.success(), "{}", printed(&out));
    assert!(stdout(&out).contains("found"), "{}", printed(&out));
    let out = trellis_in(
        here,
        &[],
        &[
            "load",
            "--addr",
            &addr,
            "--workload",
            "w1-rmw",
            "--vus",
            "2",
            "--duration",
            "1s",
            "-q",
        ],
    );
    assert!(out.status.success(), "{}", printed(&out));

    // Elsewhere: with the variable, and not without it.
    let elsewhere = here.join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    let data_env = data.to_str().expect("utf-8 path");
    let out = trellis_in(
        &elsewhere,
        &[("TRELLIS_DEV_DATA_DIR", data_env)],
        &["status", "--addr", &addr],
    );
    assert!(out.status.success(), "{}", printed(&out));
    let out = trellis_in(&elsewhere, &[], &["status", "--addr", &addr]);
    assert!(!out.status.success(), "{}", printed(&out));
    assert!(
        stderr(&out).contains("TLS is off here"),
        "{}",
        printed(&out)
    );

    // Another address, from the dev's directory: plaintext (an HTTP/2
    // preface, not a TLS ClientHello), and the log says why (at debug).
    let (other, first) = first_bytes_listener();
    let out = trellis_in(
        here,
        &[("TRELLIS_LOG", "trellis=debug")],
        &["status", "--addr", &other],
    );
    assert!(!out.status.success(), "{}", printed(&out));
    let sent = first.recv_timeout(RPC_TIMEOUT).expect("the tool connected");
    assert!(
        sent.starts_with(b"PRI * HTTP/2.0"),
        "not a plaintext HTTP/2 preface: {sent:?}"
    );
    assert!(
        stderr(&out).contains("TLS: plaintext") && stderr(&out).contains("another address"),
        "{}",
        printed(&out)
    );

    // `trellis dev add-group` speaks to the TLS dev with its certificates.
    let out = trellis_in(
        elsewhere.as_path(),
        &[],
        &["dev", "add-group", "--data-dir", data_env],
    );
    assert!(out.status.success(), "{}", printed(&out));
    assert!(
        stdout(&out).starts_with("group 2 is served"),
        "{}",
        printed(&out)
    );

    // A restart reuses the files, byte for byte, and the tools still work.
    let ca = std::fs::read(tls.join("ca.pem")).expect("ca");
    let client = std::fs::read(tls.join("dev.pem")).expect("client");
    assert!(cluster.terminate(), "trellis dev exits cleanly on SIGTERM");
    std::fs::write(&log, "").expect("truncate the log");
    let cluster = dev(&data, &[], &log);
    let addr = cluster.field("grpc").to_string();
    let text = wait_for_log(&log, "Trellis dev cluster is up");
    assert!(
        text.contains("TLS: reusing the CA and certificates in"),
        "{text}"
    );
    assert_eq!(std::fs::read(tls.join("ca.pem")).expect("ca"), ca);
    assert_eq!(std::fs::read(tls.join("dev.pem")).expect("client"), client);
    let out = trellis_in(here, &[], &["status", "--addr", &addr]);
    assert!(out.status.success(), "{}", printed(&out));
    assert!(cluster.terminate(), "trellis dev exits cleanly on SIGTERM");

    // A certificate gone: named, and nothing made over the rest.
    std::fs::remove_file(tls.join("dev.pem")).expect("remove");
    let out = trellis_in(
        here,
        &[],
        &[
            "dev",
            "--data-dir",
            data_env,
            "--listen",
            "127.0.0.1:0",
            "--groups",
            "1",
            "--replicas",
            "1",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", printed(&out));
    let missing = tls.join("dev.pem");
    assert!(
        stderr(&out).contains(&format!("{} missing", missing.display())),
        "{}",
        printed(&out)
    );
    assert!(!stdout(&out).contains("READY"), "{}", printed(&out));
    assert_eq!(std::fs::read(tls.join("ca.pem")).expect("ca"), ca);
    assert!(!missing.exists(), "not made anew");
}

/// `--insecure`: plaintext, a WARN at the start and in the banner, and
/// the tools stay plaintext even where certificates lie in the dev's
/// directory (made by `trellis cert` here, as a TLS run would leave
/// them). `--insecure` with `--tls-*` flags is a usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_dev_is_plaintext_and_says_so_loudly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let here = dir.path();
    let data = here.join(DEV_DIR);
    let tls = data.join("tls");
    let tls_arg = tls.to_str().expect("utf-8 path");
    for args in [
        vec!["cert", "create-ca", "--dir", tls_arg],
        vec![
            "cert",
            "create-node",
            "--dir",
            tls_arg,
            "--name",
            "node",
            "--host",
            "127.0.0.1",
        ],
        vec!["cert", "create-client", "--dir", tls_arg, "--name", "dev"],
    ] {
        let out = trellis_in(here, &[], &args);
        assert!(out.status.success(), "{}", printed(&out));
    }

    let out = trellis_in(
        here,
        &[],
        &[
            "dev",
            "--insecure",
            "--data-dir",
            data.to_str().expect("utf-8 path"),
            "--tls-ca",
            &tls.join("ca.pem").display().to_string(),
            "--tls-cert",
            &tls.join("node.pem").display().to_string(),
            "--tls-key",
            &tls.join("node-key.pem").display().to_string(),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", printed(&out));
    assert!(stderr(&out).contains("--insecure"), "{}", printed(&out));

    let log = here.join("dev.log");
    let cluster = dev(&data, &["--insecure"], &log);
    let addr = cluster.field("grpc").to_string();
    let text = wait_for_log(&log, "Trellis dev cluster is up");
    let warning = "WARN --insecure: this dev cluster runs in plaintext";
    let (start, banner) = text
        .split_once("Trellis dev cluster is up")
        .expect("split at the banner");
    assert!(start.contains(warning), "no WARN at the start:\n{text}");
    assert!(banner.contains(warning), "no WARN in the banner:\n{text}");
    assert!(
        !text.contains("TLS: made") && !text.contains("TLS: reusing"),
        "{text}"
    );

    // Plaintext: this process's client is served.
    let status = tokio::time::timeout(RPC_TIMEOUT * 3, plaintext_status(&addr))
        .await
        .expect("answered")
        .expect("a plaintext client is served");
    assert_eq!(status.groups.len(), 1);
    // And the tools, from the dev's directory, do not use the files there.
    let out = trellis_in(
        here,
        &[("TRELLIS_LOG", "info")],
        &["status", "--addr", &addr],
    );
    assert!(out.status.success(), "{}", printed(&out));
    assert!(
        stderr(&out).contains("runs plaintext (--insecure)"),
        "{}",
        printed(&out)
    );
    assert!(cluster.terminate(), "trellis dev exits cleanly on SIGTERM");
}
