//! Mutual TLS on every link, with real processes: a cluster started with
//! node certificates serves clients that present client certificates of
//! its CA, and nobody else — not a peer without a certificate, not one of
//! another CA, not a client calling the internal services, not a shard of
//! another CA.
//!
//! With `--metrics-tls`, `/metrics` is HTTPS for scrapers that trust the
//! CA. (Reloads, CA rotation and the handshake rate limit: `tls_rotation`.)
//!
//! The certificates are made once per test process with `trellis cert`
//! (itself under test), and this process speaks TLS as the client
//! `alice` (`trellis_net::tls::install`): the harness's status polls and
//! the RPCs below go through it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tonic::Code;
use trellis_net::tls::{Identity, TlsFiles};
use trellis_proto::shard::v1 as shard_pb;
use trellis_tests::cluster::{ClusterBuilder, Ready, TestCluster};
use trellis_tests::harness::{self, Proc, printed, run_trellis};

/// How long a refused shard has to log its first failed registration.
const REFUSAL_LOGGED_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_EVERY: Duration = Duration::from_millis(100);

/// Our CA, a node certificate for every process (127.0.0.1), the client
/// `alice`; and in `other/`, another CA with its own node and client
/// `mallory`.
struct Certs {
    _dir: tempfile::TempDir,
    ours: PathBuf,
    other: PathBuf,
}

fn certs() -> &'static Certs {
    static CERTS: OnceLock<Certs> = OnceLock::new();
    CERTS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let ours = dir.path().join("ours");
        let other = dir.path().join("other");
        for (at, cluster, client) in [(&ours, "ours", "alice"), (&other, "other", "mallory")] {
            let at = at.to_str().expect("utf-8");
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
                "--host",
                "localhost",
            ]);
            harness::admin_ok(&["cert", "create-client", "--dir", at, "--name", client]);
        }
        let alice = harness::tls_files(&ours, "alice");
        trellis_net::tls::install(Identity::load(&alice).expect("alice's identity"));
        Certs {
            _dir: dir,
            ours,
            other,
        }
    })
}

/// `files` as the TRELLIS_TLS_* environment of a process.
fn tls_env(files: &TlsFiles) -> Vec<(&'static str, String)> {
    vec![
        ("TRELLIS_TLS_CA", files.ca.display().to_string()),
        ("TRELLIS_TLS_CERT", files.cert.display().to_string()),
        ("TRELLIS_TLS_KEY", files.key.display().to_string()),
    ]
}

fn run(args: &[String]) -> std::process::Output {
    run_trellis(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A TLS cluster: every coordinator and shard with our node certificate.
async fn tls_cluster(dir: &Path, replicas: u32) -> TestCluster {
    let node = tls_env(&harness::tls_files(&certs().ours, "node"));
    let env: Vec<(&str, &str)> = node.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ClusterBuilder::new(dir)
        .replicas(replicas)
        .coordinator_env(&env)
        .shard_env(&env)
        .ready(Ready::InSync)
        .start()
        .await
        .expect("a TLS cluster")
}

/// The story: a cluster whose every process holds a node certificate
/// starts, replicates (two replicas) and registers over TLS; `alice`
/// writes and reads through `trellis sql` with her client certificate and
/// sees `trellis status`. Her certificate cannot call the Shard service's
/// internal methods nor register as a shard: PERMISSION_DENIED, naming
/// the node certificate she lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_its_clients_and_keeps_internal_rpcs_to_nodes() {
    let certs = certs();
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = tls_cluster(dir.path(), 2).await;
    let addr = cluster.addr(0).to_string();
    let alice = harness::tls_flags(&harness::tls_files(&certs.ours, "alice"));

    let mut sql = vec!["sql".to_string(), "--addr".into(), addr.clone()];
    sql.extend(alice.iter().cloned());
    // The default direct route: the shards serve a client certificate on
    // their reads and one-group commits.
    sql.extend(["-c".into(), "PUT tlskey 'over-tls'; GET tlskey".into()]);
    let out = run(&sql);
    assert!(out.status.success(), "{}", printed(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("over-tls"),
        "{}",
        printed(&out)
    );

    let mut status = vec!["status".to_string(), "--addr".into(), addr.clone()];
    status.extend(alice.iter().cloned());
    let out = run(&status);
    assert!(out.status.success(), "{}", printed(&out));

    // The Shard service, called with a client certificate.
    let shard = cluster.shard(1, 1).expect("replica 1 runs");
    let mut client = harness::shard_client(shard).await.expect("a TLS channel");
    let refused = client
        .shard_status(shard_pb::ShardStatusRequest {})
        .await
        .expect_err("a client certificate on the Shard service");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("needs a node certificate")
            && refused.message().contains("client `alice`"),
        "{refused:?}"
    );

    // Registering as a shard, with a client certificate.
    let mut membership = shard_pb::membership_client::MembershipClient::new(
        harness::channel(&addr).await.expect("channel"),
    );
    let refused = membership
        .register(shard_pb::RegisterRequest {
            group_id: 1,
            addr: "127.0.0.1:9".into(),
            pid: 1,
        })
        .await
        .expect_err("a client certificate registering");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // Nor read the cluster's auth settings (its token secret among them).
    let refused = membership
        .get_auth(shard_pb::GetAuthRequest::default())
        .await
        .expect_err("a client certificate asking for the auth settings");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let members = cluster.status(0).await.expect("status").groups[0]
        .members
        .len();
    assert_eq!(members, 2, "the refused registration added a member");

    // Every process says when its certificate and its CA expire: exactly
    // the files' notAfter, and which certificates those are.
    let expiry = Identity::load(&harness::tls_files(&certs.ours, "node"))
        .expect("the node's identity")
        .expiry();
    let (own, ca) = (expiry.cert, expiry.ca);
    assert!(own <= ca, "the node certificate outlives its CA");
    for proc in [cluster.coordinator(0), shard] {
        let page = harness::http_get(proc.field("metrics"), "/metrics").await;
        for (which, want, subject) in [
            ("own", own, &expiry.cert_subject),
            ("ca", ca, &expiry.ca_subject),
        ] {
            let series = format!(
                "trellis_tls_expiry_timestamp_seconds{{certificate=\"{which}\",subject=\"{subject}\"}}"
            );
            let got = harness::metric_sample(&page, &series)
                .unwrap_or_else(|| panic!("no {series} in:\n{page}"));
            assert_eq!(got, want as f64, "{series}");
        }
        assert_eq!(
            harness::metric_sample(&page, "trellis_tls_ca_certificates"),
            Some(1.0),
            "{page}"
        );
    }
    assert!(expiry.ca_subject.contains("Trellis CA ours"), "{expiry:?}");
}

/// The story: against a TLS cluster, a client without a certificate and
/// a client of another CA are refused, and say it was TLS; a client
/// whose certificate does not come from the CA it names refuses to start;
/// a shard of another CA starts but cannot register (its log says why),
/// and the coordinator never lists it. Some but not all of the flags is a
/// usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_cannot_connect_or_join() {
    let certs = certs();
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = tls_cluster(dir.path(), 1).await;
    let addr = cluster.addr(0).to_string();
    let status = |flags: Vec<String>| {
        let mut args = vec!["status".to_string(), "--addr".into(), addr.clone()];
        args.extend(flags);
        run(&args)
    };

    let out = status(Vec::new());
    assert_eq!(out.status.code(), Some(1), "{}", printed(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TLS"),
        "no certificate: {}",
        printed(&out)
    );

    let out = status(harness::tls_flags(&harness::tls_files(
        &certs.other,
        "mallory",
    )));
    assert_eq!(out.status.code(), Some(1), "{}", printed(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TLS"),
        "another CA: {}",
        printed(&out)
    );

    let mixed = TlsFiles {
        ca: certs.ours.join("ca.pem"),
        ..harness::tls_files(&certs.other, "mallory")
    };
    let out = status(harness::tls_flags(&mixed));
    assert_eq!(out.status.code(), Some(1), "{}", printed(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not signed by a CA of"),
        "{}",
        printed(&out)
    );

    let mut partial = harness::tls_flags(&harness::tls_files(&certs.ours, "alice"));
    partial.truncate(4);
    let out = status(partial);
    assert_eq!(out.status.code(), Some(2), "{}", printed(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tls-key missing"),
        "{}",
        printed(&out)
    );

    // A shard of another CA: serving, never registered.
    let log = dir.path().join("stranger.log");
    let data = dir.path().join("stranger");
    let stranger_env = tls_env(&harness::tls_files(&certs.other, "node"));
    let env: Vec<(&str, &str)> = stranger_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let stranger = Proc::start_logged(
        &[
            "shard",
            "--data-dir",
            data.to_str().expect("utf-8"),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--group",
            "1",
            "--coordinator",
            &addr,
        ],
        &env,
        Some(&log),
    )
    .expect("the stranger serves");
    let started = Instant::now();
    let refusal = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("cannot register")) {
            break line.to_string();
        }
        assert!(
            started.elapsed() < REFUSAL_LOGGED_TIMEOUT,
            "no failed registration logged:\n{text}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    };
    assert!(refusal.contains("TLS"), "{refusal}");
    let listed = cluster.status(0).await.expect("status").groups[0]
        .members
        .iter()
        .any(|m| m.address == stranger.field("grpc"));
    assert!(!listed, "a shard of another CA joined");
}

/// The story: `trellis dev` given node files runs its whole cluster with
/// them (it hands them to every process it starts): its replicas
/// replicate, and `alice` commits through it; without a certificate,
/// `trellis sql` is refused and told about TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trellis_dev_runs_its_cluster_with_the_files_it_is_given() {
    let certs = certs();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = vec![
        "dev".to_string(),
        "--data-dir".into(),
        dir.path().join("dev").display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    args.extend(harness::tls_flags(&harness::tls_files(&certs.ours, "node")));
    let log = dir.path().join("dev.log");
    let dev = Proc::start_logged(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[("TRELLIS_LOG", "info")],
        Some(&log),
    )
    .expect("trellis dev with TLS starts");
    let addr = dev.field("grpc").to_string();

    let sql = |flags: Vec<String>| {
        let mut sql = vec!["sql".to_string(), "--addr".into(), addr.clone()];
        sql.extend(flags);
        sql.extend(["--route".into(), "coordinator".into()]);
        sql.extend(["-c".into(), "PUT devkey 'via-dev'; GET devkey".into()]);
        run(&sql)
    };
    let out = sql(harness::tls_flags(&harness::tls_files(
        &certs.ours,
        "alice",
    )));
    assert!(
        out.status.success(),
        "{}\ndev's log:\n{}",
        printed(&out),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("via-dev"),
        "{}",
        printed(&out)
    );
    let out = sql(Vec::new());
    assert!(
        !out.status.success(),
        "{}\ndev's log:\n{}",
        printed(&out),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TLS"),
        "{}\ndev's log:\n{}",
        printed(&out),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// `GET /metrics` over HTTPS to `addr`, trusting the CA bundle `ca` and
/// presenting no certificate: the answer, or why it failed.
async fn https_get_metrics(addr: &str, ca: &Path) -> Result<String, String> {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).expect("CA bundle") {
        roots.add(cert.expect("a CA")).expect("a usable CA");
    }
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let (host, _) = addr.rsplit_once(':').expect("host:port");
    let name = rustls_pki_types::ServerName::try_from(host.to_string()).expect("a name");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let fetch = async {
        let mut tls = connector.connect(name, tcp).await?;
        tls.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
            .await?;
        let mut out = String::new();
        tls.read_to_string(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    tokio::time::timeout(harness::RPC_TIMEOUT, fetch)
        .await
        .expect("answered in time")
        .map_err(|e| e.to_string())
}

/// The story: a coordinator started with `--metrics-tls` (here
/// `TRELLIS_METRICS_TLS`) serves `/metrics` over HTTPS with its node
/// certificate to a scraper that trusts the CA and has no certificate of
/// its own; a scraper trusting another CA is refused, and plain HTTP gets
/// no metrics. Its shard, without the flag, keeps plain HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_over_https_when_asked() {
    let certs = certs();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut coordinator = tls_env(&harness::tls_files(&certs.ours, "node"));
    coordinator.push(("TRELLIS_METRICS_TLS", "true".into()));
    let coordinator: Vec<(&str, &str)> =
        coordinator.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let node = tls_env(&harness::tls_files(&certs.ours, "node"));
    let shard: Vec<(&str, &str)> = node.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let cluster = ClusterBuilder::new(dir.path())
        .coordinator_env(&coordinator)
        .shard_env(&shard)
        .ready(Ready::InSync)
        .start()
        .await
        .expect("a TLS cluster");
    let metrics = cluster.coordinator(0).field("metrics").to_string();

    let page = https_get_metrics(&metrics, &certs.ours.join("ca.pem"))
        .await
        .expect("HTTPS trusting the CA");
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    assert!(
        page.contains("trellis_tls_reloads_total{result=\"ok\"} 0"),
        "{page}"
    );

    let refused = https_get_metrics(&metrics, &certs.other.join("ca.pem"))
        .await
        .expect_err("a scraper trusting another CA");
    assert!(refused.contains("certificate"), "{refused}");

    let plain = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(&metrics)
            .await
            .expect("connect");
        let _ = tcp
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
            .await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(harness::RPC_TIMEOUT, tcp.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    assert!(!plain.contains("200 OK"), "plain HTTP got metrics: {plain}");

    let shard = cluster.shard(1, 1).expect("the replica runs");
    let page = harness::http_get(shard.field("metrics"), "/metrics").await;
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
}
