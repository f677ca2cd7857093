//! A CA rotation under load, with real processes and no restart: a TLS
//! cluster (a coordinator, one group of two replicas) serves
//! `trellis load --workload w1-rmw --route coordinator` while every
//! process — coordinator, shards, the load tool, and this test, which
//! speaks TLS as `alice` — moves from the old CA to the new one in three
//! steps, each made by rewriting the files and sending SIGHUP:
//!
//! 1. every CA bundle becomes old + new CA (both trusted);
//! 2. every node and client certificate becomes one of the new CA;
//! 3. every CA bundle becomes the new CA alone.
//!
//! Each process's `/metrics` (the load tool's log) shows each reload
//! happen, and commits go on after each step. The load reports no failed
//! transaction; afterwards a certificate of the old CA is refused and one
//! of the new CA is served.
//!
//! Then what a reload refuses, what the poll finds without SIGHUP, and the
//! rate limit on failed handshakes, against a one-replica cluster.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::Code;
use trellis_net::tls::limit::{HANDSHAKE_FAILURE_BACKOFF, HANDSHAKE_FAILURES_MAX};
use trellis_net::tls::{Identity, TlsFiles};
use trellis_proto::shard::v1 as shard_pb;
use trellis_tests::cluster::{ClusterBuilder, Ready, TestCluster};
use trellis_tests::harness::{self, Proc, metric_sample, printed, run_trellis, trellis_bin};

/// How long a process has to show a reload, or commits to go on.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the load runs: long enough for the three steps of the
/// rotation (the test checks it was still running after the last).
const LOAD_DURATION: &str = "40s";
/// How long the load may take to finish after its duration.
const LOAD_EXIT_TIMEOUT: Duration = Duration::from_secs(120);
const POLL_EVERY: Duration = Duration::from_millis(100);

/// This process has one TLS identity, which each test installs for its
/// own CA: the tests take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `trellis cert` in `dir`: a CA for `cluster`, the node certificate
/// `node` (127.0.0.1) and the client `alice`.
fn make_certs(dir: &Path, cluster: &str) {
    let at = dir.to_str().expect("utf-8");
    harness::admin_ok(&["cert", "create-ca", "--dir", at, "--cluster", cluster]);
    harness::admin_ok(&[
        "cert",
        "create-node",
        "--dir",
        at,
        "--name",
        "node",
        "--host",
        "127.0.0.1",
    ]);
    harness::admin_ok(&["cert", "create-client", "--dir", at, "--name", "alice"]);
}

/// Replaces `to` with `contents` at once (a rename), as an operator's
/// tooling would.
fn replace(to: &Path, contents: &[u8]) {
    let tmp = to.with_extension("new");
    std::fs::write(&tmp, contents).expect("write");
    std::fs::rename(&tmp, to).expect("rename");
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read")
}

/// Installs `alice`'s certificate from `live` as this process's identity.
fn install_alice(live: &Path) {
    trellis_net::tls::install(
        Identity::load(&harness::tls_files(live, "alice")).expect("alice's identity"),
    );
}

/// The sum of a counter's series on a `/metrics` page.
fn sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum()
}

async fn page(proc: &Proc) -> String {
    harness::http_get(proc.field("metrics"), "/metrics").await
}

/// Waits until every process in `procs` has made `n` successful reloads
/// and none failed, and the load tool's log says so `n` times.
async fn wait_reloaded(procs: &[&Proc], load_log: &Path, n: usize) {
    let started = Instant::now();
    for proc in procs {
        loop {
            let page = page(proc).await;
            let ok = metric_sample(&page, "trellis_tls_reloads_total{result=\"ok\"}");
            let error = metric_sample(&page, "trellis_tls_reloads_total{result=\"error\"}");
            assert_eq!(
                error,
                Some(0.0),
                "a reload failed on pid {}:\n{page}",
                proc.pid
            );
            if ok == Some(n as f64) {
                break;
            }
            assert!(
                ok < Some(n as f64) && started.elapsed() < PROGRESS_TIMEOUT,
                "pid {} did not reload {n} times: {ok:?}\n{page}",
                proc.pid
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
    loop {
        let log = std::fs::read_to_string(load_log).unwrap_or_default();
        assert!(
            !log.contains("refused to reload"),
            "the load tool refused a reload:\n{log}"
        );
        let reloads = log.matches("reloaded the TLS files").count();
        if reloads == n {
            break;
        }
        assert!(
            reloads < n && started.elapsed() < PROGRESS_TIMEOUT,
            "the load tool did not reload {n} times:\n{log}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Waits until the coordinator has served more commit requests than
/// `since`; returns how many it has.
async fn commits_go_on(coordinator: &Proc, since: f64) -> f64 {
    let started = Instant::now();
    loop {
        let now = sum(
            &page(coordinator).await,
            "trellis_coordinator_commits_total",
        );
        if now > since {
            return now;
        }
        assert!(
            started.elapsed() < PROGRESS_TIMEOUT,
            "no commit since {since} for {PROGRESS_TIMEOUT:?}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Sends SIGHUP to every process: reload your TLS files now.
fn hangup(pids: &[u32]) {
    for pid in pids {
        assert!(harness::signal_pid(*pid, libc::SIGHUP), "SIGHUP to {pid}");
    }
}

fn start_load(addr: &str, live: &Path, dir: &Path) -> (Child, PathBuf, PathBuf) {
    let export = dir.join("load.json");
    let log = dir.join("load.log");
    let mut args = vec![
        "load".to_string(),
        "--target".into(),
        format!("trellis://{addr}"),
        "--route".into(),
        "coordinator".into(),
        "--workload".into(),
        "w1-rmw".into(),
        "--vus".into(),
        "2".into(),
        "--duration".into(),
        LOAD_DURATION.into(),
        "--key-prefix".into(),
        "rotation".into(),
        "--summary-export".into(),
        export.display().to_string(),
        "-q".into(),
    ];
    args.extend(harness::tls_flags(&harness::tls_files(live, "alice")));
    let child = Command::new(trellis_bin())
        .args(&args)
        .env("TRELLIS_LOG", "warn,trellis_net::tls::reload=info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("load log"))
        .spawn()
        .expect("spawn trellis load");
    (child, export, log)
}

/// Waits for `child` to exit, within [`LOAD_EXIT_TIMEOUT`].
fn wait_exit(mut child: Child) -> (std::process::ExitStatus, String) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut out = String::new();
            use std::io::Read as _;
            child
                .stdout
                .take()
                .expect("piped")
                .read_to_string(&mut out)
                .expect("stdout");
            return (status, out);
        }
        if started.elapsed() > LOAD_EXIT_TIMEOUT {
            let _ = child.kill();
            panic!("trellis load did not finish within {LOAD_EXIT_TIMEOUT:?}");
        }
        std::thread::sleep(POLL_EVERY);
    }
}

async fn tls_cluster(dir: &Path, live: &Path, replicas: u32) -> TestCluster {
    let node = harness::tls_files(live, "node");
    let env = [
        ("TRELLIS_TLS_CA", node.ca.display().to_string()),
        ("TRELLIS_TLS_CERT", node.cert.display().to_string()),
        ("TRELLIS_TLS_KEY", node.key.display().to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    std::fs::create_dir_all(dir).expect("the cluster's directory");
    ClusterBuilder::new(dir)
        .replicas(replicas)
        .logs()
        .coordinator_env(&env)
        .shard_env(&env)
        .ready(Ready::InSync)
        .start()
        .await
        .expect("a TLS cluster")
}

/// The story in the module doc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rotates_under_load_without_a_restart_or_a_failed_transaction() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new, live) = (
        dir.path().join("old"),
        dir.path().join("new"),
        dir.path().join("live"),
    );
    make_certs(&old, "prod");
    make_certs(&new, "prod-2");
    std::fs::create_dir(&live).expect("mkdir");
    for name in [
        "ca.pem",
        "node.pem",
        "node-key.pem",
        "alice.pem",
        "alice-key.pem",
    ] {
        std::fs::copy(old.join(name), live.join(name)).expect("copy");
    }
    install_alice(&live);

    let cluster = tls_cluster(&dir.path().join("cluster"), &live, 2).await;
    let coordinator = cluster.coordinator(0);
    let nodes: Vec<&Proc> = std::iter::once(coordinator)
        .chain((1..=2).filter_map(|r| cluster.shard(1, r)))
        .collect();
    assert_eq!(nodes.len(), 3, "a coordinator and two replicas");

    let (load, export, load_log) = start_load(cluster.addr(0), &live, dir.path());
    let mut pids: Vec<u32> = nodes.iter().map(|p| p.pid).collect();
    pids.push(load.id());
    let mut commits = commits_go_on(coordinator, 0.0).await;

    // 1. Every CA bundle: old + new.
    let both = [read(&old.join("ca.pem")), read(&new.join("ca.pem"))].concat();
    replace(&live.join("ca.pem"), &both);
    hangup(&pids);
    install_alice(&live);
    wait_reloaded(&nodes, &load_log, 1).await;
    for node in &nodes {
        let page = page(node).await;
        assert_eq!(
            metric_sample(&page, "trellis_tls_ca_certificates"),
            Some(2.0),
            "{page}"
        );
    }
    commits = commits_go_on(coordinator, commits).await;

    // 2. Every certificate: one of the new CA.
    for name in ["node.pem", "node-key.pem", "alice.pem", "alice-key.pem"] {
        replace(&live.join(name), &read(&new.join(name)));
    }
    hangup(&pids);
    install_alice(&live);
    wait_reloaded(&nodes, &load_log, 2).await;
    commits = commits_go_on(coordinator, commits).await;

    // 3. Every CA bundle: the new CA alone.
    replace(&live.join("ca.pem"), &read(&new.join("ca.pem")));
    hangup(&pids);
    install_alice(&live);
    wait_reloaded(&nodes, &load_log, 3).await;
    commits_go_on(coordinator, commits).await;
    for node in &nodes {
        let page = page(node).await;
        assert_eq!(
            metric_sample(&page, "trellis_tls_ca_certificates"),
            Some(1.0),
            "{page}"
        );
        assert!(
            page.lines().any(|l| l
                .starts_with("trellis_tls_expiry_timestamp_seconds{certificate=\"ca\"")
                && l.contains("prod-2")),
            "the CA gauge names the new CA:\n{page}"
        );
    }

    let mut load = load;
    assert!(
        load.try_wait().expect("try_wait").is_none(),
        "the load ended before the rotation did: lengthen LOAD_DURATION"
    );
    let (status, stdout) = wait_exit(load);
    let log = std::fs::read_to_string(&load_log).unwrap_or_default();
    assert!(status.success(), "trellis load: {status}\n{stdout}\n{log}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&export).expect("summary export"))
            .expect("JSON");
    let iterations = summary["metrics"]["iterations"]["values"]["count"]
        .as_u64()
        .expect("an iteration count");
    assert!(iterations > 0, "{summary:#}");
    assert_eq!(
        summary["metrics"]["txn_failed"]["values"]["passes"], 0,
        "no transaction failed during the rotation\n{stdout}\n{log}"
    );

    // A client certificate of the old CA is refused — even by a client
    // that trusts both CAs (so the refusal is the cluster's).
    let addr = cluster.addr(0).to_string();
    let status_with = |files: &TlsFiles| {
        let mut args = vec!["status".to_string(), "--addr".into(), addr.clone()];
        args.extend(harness::tls_flags(files));
        run_trellis(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let trusting_both = dir.path().join("both.pem");
    std::fs::write(&trusting_both, &both).expect("write");
    let refused_before = sum(
        &page(coordinator).await,
        "trellis_tls_handshake_failures_total",
    );
    let old_alice = TlsFiles {
        ca: trusting_both,
        ..harness::tls_files(&old, "alice")
    };
    let out = status_with(&old_alice);
    assert_eq!(out.status.code(), Some(1), "{}", printed(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TLS"),
        "{}",
        printed(&out)
    );
    let refused_after = sum(
        &page(coordinator).await,
        "trellis_tls_handshake_failures_total",
    );
    assert!(
        refused_after > refused_before,
        "the coordinator counted the refused handshake: {refused_before} → {refused_after}"
    );
    // And one of the new CA is served, by a fresh connection.
    let out = status_with(&harness::tls_files(&live, "alice"));
    assert!(out.status.success(), "{}", printed(&out));
}

/// Waits until `proc`'s reloads are `ok` installed and `error` refused.
async fn wait_reloads(proc: &Proc, ok: u64, error: u64) -> String {
    let started = Instant::now();
    loop {
        let page = page(proc).await;
        let got = (
            metric_sample(&page, "trellis_tls_reloads_total{result=\"ok\"}"),
            metric_sample(&page, "trellis_tls_reloads_total{result=\"error\"}"),
        );
        let want = (Some(ok as f64), Some(error as f64));
        if got == want {
            return page;
        }
        assert!(
            got.0 <= want.0 && got.1 <= want.1 && started.elapsed() < PROGRESS_TIMEOUT,
            "pid {}: reloads (ok, error) {got:?}, waiting for {want:?}\n{page}",
            proc.pid
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// `trellis sql` as `alice` of `certs` through the coordinator: a fresh connection,
/// so a fresh handshake with whatever identity the coordinator has.
fn put_get(addr: &str, certs: &Path, value: &str) {
    let mut args = vec!["sql".to_string(), "--addr".into(), addr.to_string()];
    args.extend(harness::tls_flags(&harness::tls_files(certs, "alice")));
    args.extend(["--route".into(), "coordinator".into()]);
    args.extend([
        "-c".into(),
        format!("PUT reloadkey '{value}'; GET reloadkey"),
    ]);
    let out = run_trellis(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", printed(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(value),
        "{}",
        printed(&out)
    );
}

/// One connection that speaks plain HTTP to a TLS port: a failed
/// handshake (or, once the address is over the limit, closed at once).
async fn not_tls(addr: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(PROGRESS_TIMEOUT, stream.read_to_end(&mut sink))
        .await
        .expect("the server closes the connection");
}

/// The story: a node certificate replaced by a client's (SIGHUP) and a CA
/// bundle replaced by garbage (found by the poll, no signal) are each
/// refused once — an ERROR naming the file and why, counted as
/// `result="error"` — and the processes keep serving with the identity
/// they had. A renewed certificate is then found by the poll and
/// installed, and the expiry gauge follows it. Last, an address that
/// fails `HANDSHAKE_FAILURES_MAX` handshakes has its connections closed
/// at once (counted) until the backoff ends, and is served again after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_keep_the_identity_and_failed_handshakes_are_rate_limited() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (ours, live) = (dir.path().join("ours"), dir.path().join("live"));
    make_certs(&ours, "prod");
    std::fs::create_dir(&live).expect("mkdir");
    for name in [
        "ca.pem",
        "node.pem",
        "node-key.pem",
        "alice.pem",
        "alice-key.pem",
    ] {
        std::fs::copy(ours.join(name), live.join(name)).expect("copy");
    }
    install_alice(&live);
    let cluster = tls_cluster(&dir.path().join("cluster"), &live, 1).await;
    let addr = cluster.addr(0).to_string();
    let (coordinator, shard) = (
        cluster.coordinator(0),
        cluster.shard(1, 1).expect("the replica runs"),
    );
    let procs = [coordinator, shard];
    let shard_log = cluster.dir().join("g1r1.log");

    // A client certificate in the node's place, with SIGHUP.
    for (to, from) in [("node.pem", "alice.pem"), ("node-key.pem", "alice-key.pem")] {
        replace(&live.join(to), &read(&ours.join(from)));
    }
    hangup(&[coordinator.pid, shard.pid]);
    for proc in procs {
        wait_reloads(proc, 0, 1).await;
    }
    let log = std::fs::read_to_string(&shard_log).unwrap_or_default();
    let refusal = log
        .lines()
        .find(|l| l.contains("refused to reload the TLS files"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{log}"));
    assert!(
        refusal.contains("ERROR")
            && refusal.contains("node.pem")
            && refusal.contains("client `alice`")
            && refusal.contains("node `node`"),
        "{refusal}"
    );
    put_get(&addr, &ours, "kept-after-a-role-change");

    // The node's files back, and garbage for a CA bundle: no signal, the
    // poll finds it.
    for name in ["node.pem", "node-key.pem"] {
        replace(&live.join(name), &read(&ours.join(name)));
    }
    replace(&live.join("ca.pem"), b"not a certificate");
    for proc in procs {
        wait_reloads(proc, 0, 2).await;
    }
    let log = std::fs::read_to_string(&shard_log).unwrap_or_default();
    assert!(
        log.lines().any(|l| l.contains("refused to reload")
            && l.contains("ca.pem")
            && l.contains("no PEM certificate")),
        "{log}"
    );
    put_get(&addr, &ours, "kept-after-garbage");

    // A renewed node certificate (30 days) and the CA back: the poll
    // installs them, and the gauge says when the new one expires.
    harness::admin_ok(&[
        "cert",
        "create-node",
        "--dir",
        ours.to_str().expect("utf-8"),
        "--name",
        "node",
        "--host",
        "127.0.0.1",
        "--days",
        "30",
        "--force",
    ]);
    for name in ["node.pem", "node-key.pem", "ca.pem"] {
        replace(&live.join(name), &read(&ours.join(name)));
    }
    let renewed = Identity::load(&harness::tls_files(&live, "node"))
        .expect("the renewed identity")
        .expiry();
    for proc in procs {
        let page = wait_reloads(proc, 1, 2).await;
        let own = page
            .lines()
            .find(|l| l.starts_with("trellis_tls_expiry_timestamp_seconds{certificate=\"own\""))
            .and_then(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok());
        assert_eq!(own, Some(renewed.cert as f64), "{page}");
    }
    put_get(&addr, &ours, "after-a-renewal");

    // Failed handshakes from this address, as fast as it can.
    let grpc = shard.field("grpc").to_string();
    for _ in 0..HANDSHAKE_FAILURES_MAX {
        not_tls(&grpc).await;
    }
    let blocked_at = Instant::now();
    // Now even alice's good certificate is turned away, unhandshaken (a
    // machine slow enough to take the whole backoff to get here may see
    // it served: that alone is not a failure).
    let during = harness::shard_client(shard).await;
    let page_after = page(shard).await;
    assert!(
        metric_sample(&page_after, "trellis_tls_handshake_failures_total")
            >= Some(f64::from(HANDSHAKE_FAILURES_MAX)),
        "{page_after}"
    );
    if during.is_ok() {
        assert!(
            blocked_at.elapsed() >= HANDSHAKE_FAILURE_BACKOFF,
            "served during the backoff:\n{page_after}"
        );
    } else {
        assert!(
            metric_sample(&page_after, "trellis_tls_handshakes_refused_total") >= Some(1.0),
            "{page_after}"
        );
    }
    // After the backoff, served again (and refused for what it is: a
    // client certificate on the Shard service, past the handshake).
    loop {
        let answer = match harness::shard_client(shard).await {
            Ok(mut client) => client
                .shard_status(shard_pb::ShardStatusRequest {})
                .await
                .map(|_| ()),
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        };
        match answer {
            Err(status) if status.code() == Code::PermissionDenied => break,
            other => assert!(
                blocked_at.elapsed() < HANDSHAKE_FAILURE_BACKOFF + PROGRESS_TIMEOUT,
                "still refused long after the backoff: {other:?}"
            ),
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    put_get(&addr, &ours, "after-the-backoff");
}

/// The story: `trellis dev` runs its cluster with the TLS files it is
/// given and passes SIGHUP on: after the node certificate is renewed, one
/// SIGHUP to dev makes dev and every process it runs reload at once (their
/// logs, relayed by dev, say the signal did it, not the poll), and a
/// client is served by the renewed cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trellis_dev_passes_sighup_on_to_its_processes() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (ours, live) = (dir.path().join("ours"), dir.path().join("live"));
    make_certs(&ours, "prod");
    std::fs::create_dir(&live).expect("mkdir");
    for name in ["ca.pem", "node.pem", "node-key.pem"] {
        std::fs::copy(ours.join(name), live.join(name)).expect("copy");
    }
    let mut args = vec![
        "dev".to_string(),
        "--data-dir".into(),
        dir.path().join("dev").display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--groups".into(),
        "1".into(),
        "--replicas".into(),
        "2".into(),
    ];
    args.extend(harness::tls_flags(&harness::tls_files(&live, "node")));
    let log = dir.path().join("dev.log");
    let dev = Proc::start_logged(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[("TRELLIS_LOG", "warn,trellis_net::tls::reload=info")],
        Some(&log),
    )
    .expect("trellis dev with TLS starts");
    let addr = dev.field("grpc").to_string();
    put_get(&addr, &ours, "before-the-renewal");

    harness::admin_ok(&[
        "cert",
        "create-node",
        "--dir",
        ours.to_str().expect("utf-8"),
        "--name",
        "node",
        "--host",
        "127.0.0.1",
        "--days",
        "30",
        "--force",
    ]);
    for name in ["node.pem", "node-key.pem"] {
        replace(&live.join(name), &read(&ours.join(name)));
    }
    dev.signal(libc::SIGHUP);

    // dev itself, and each of the processes it says it told.
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let told = text.lines().find_map(|l| {
            l.strip_prefix("SIGHUP: ")?
                .split_once(" processes asked")?
                .0
                .parse::<usize>()
                .ok()
        });
        let by_signal = text
            .lines()
            .filter(|l| l.contains("reloaded the TLS files") && l.contains("Signal"))
            .count();
        assert!(
            !text.contains("trigger=Poll") && !text.contains("refused to reload"),
            "{text}"
        );
        if let Some(told) = told {
            // A coordinator and two replicas.
            assert_eq!(told, 3, "{text}");
            if by_signal == told + 1 {
                break;
            }
        }
        assert!(
            started.elapsed() < PROGRESS_TIMEOUT,
            "not every process reloaded on SIGHUP:\n{text}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
    put_get(&addr, &ours, "after-the-renewal");
}
