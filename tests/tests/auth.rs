//! Users, passwords, tokens and roles scoped by key prefix, with real
//! processes (issue 23): a TLS cluster whose admin adds users and grants
//! with `trellis user`, turns auth on with `trellis admin auth enable`,
//! and then serves each user what its grants allow — and refuses the rest
//! whole, naming what is missing, changing nothing, and logging no
//! password.
//!
//! This test process speaks TLS as the client `root` (the harness's
//! status polls go through it), who becomes the cluster's admin. The
//! other users run `trellis` with their own client certificates or with
//! `--user` (a password login), or log in over gRPC (`Auth.Login`) and
//! send the token.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

use tonic::Code;
use tonic::metadata::MetadataValue;
use trellis_coordinator::catalog::Catalog;
use trellis_coordinator::token::{Claims, TOKEN_LIFETIME, mint};
use trellis_net::tls::Identity;
use trellis_proto::v1 as pb;
use trellis_tests::cluster::{ClusterBuilder, Ready, TestCluster};
use trellis_tests::harness::{self, printed, trellis_bin};

/// How long the shards may take to read a change of the auth settings
/// (they ask the coordinator every second).
const SHARDS_LEARN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The passwords of this story: each must appear in no log.
const READER_PASSWORD: &str = "reader-secret-7f3a9c";
const WRITER_PASSWORD: &str = "writer-secret-1b2e8d";
const WRONG_PASSWORD: &str = "not-the-password-44";
const ROOT_PASSWORD: &str = "root-secret-5c6d0e";

/// Our CA, a node certificate, and the clients `root`, `reader`, `writer`
/// and `stranger` (who never becomes a user).
struct Certs {
    _dir: tempfile::TempDir,
    ours: PathBuf,
}

fn certs() -> &'static Certs {
    static CERTS: OnceLock<Certs> = OnceLock::new();
    CERTS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let ours = dir.path().join("ours");
        let at = ours.to_str().expect("utf-8");
        harness::admin_ok(&["cert", "create-ca", "--dir", at, "--cluster", "ours"]);
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
        for client in ["root", "reader", "writer", "stranger"] {
            harness::admin_ok(&["cert", "create-client", "--dir", at, "--name", client]);
        }
        trellis_net::tls::install(
            Identity::load(&harness::tls_files(&ours, "root")).expect("root's identity"),
        );
        Certs { _dir: dir, ours }
    })
}

/// `trellis <args>` as client `who` (its certificate), with `env`, and
/// `stdin` on its standard input.
fn trellis_as(who: &str, args: &[&str], env: &[(&str, &str)], stdin: &str) -> std::process::Output {
    let f = harness::tls_files(&certs().ours, who);
    let mut child = std::process::Command::new(trellis_bin())
        .args(args)
        .env("NO_COLOR", "1")
        .env("TRELLIS_TLS_CA", &f.ca)
        .env("TRELLIS_TLS_CERT", &f.cert)
        .env("TRELLIS_TLS_KEY", &f.key)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn trellis");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("trellis runs")
}

fn ok(out: std::process::Output) -> String {
    assert!(out.status.success(), "{}", printed(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails with exit 1; its stderr.
fn refused(out: std::process::Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{}", printed(&out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn tls_cluster(dir: &Path) -> TestCluster {
    let node = harness::tls_files(&certs().ours, "node");
    let env = [
        ("TRELLIS_TLS_CA", node.ca.display().to_string()),
        ("TRELLIS_TLS_CERT", node.cert.display().to_string()),
        ("TRELLIS_TLS_KEY", node.key.display().to_string()),
        // Everything a coordinator says, to look for passwords in.
        ("TRELLIS_LOG", "debug".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ClusterBuilder::new(dir)
        .coordinator_env(&env)
        .shard_env(&env[..3])
        .logs()
        .ready(Ready::InSync)
        .start()
        .await
        .expect("a TLS cluster")
}

/// A request carrying `token` as its bearer.
fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("ascii");
    request.metadata_mut().insert("authorization", value);
    request
}

fn put(key: &str, value: &str) -> pb::Write {
    pb::Write {
        key: key.as_bytes().to_vec(),
        op: Some(pb::write::Op::Put(value.as_bytes().to_vec())),
    }
}

fn commit(writes: Vec<pb::Write>) -> pb::CommitRequest {
    pb::CommitRequest {
        txn_id: rand::random::<[u8; 16]>().to_vec(),
        reads: Vec::new(),
        writes,
        durability: 0,
    }
}

async fn login(addr: &str, user: &str, password: &str) -> Result<String, tonic::Status> {
    let mut auth = pb::auth_client::AuthClient::new(harness::channel(addr).await.expect("channel"));
    auth.login(pb::LoginRequest {
        user: user.into(),
        password: password.into(),
    })
    .await
    .map(|r| r.into_inner().token)
}

/// The value of `key` as root (the admin) reads it; `None`: absent.
async fn read_as_root(cluster: &TestCluster, key: &str) -> Option<Vec<u8>> {
    let mut txn = cluster.txn(0).await.expect("a Txn client");
    let item = txn
        .get(pb::GetRequest {
            keys: vec![key.as_bytes().to_vec()],
            ..Default::default()
        })
        .await
        .expect("root reads")
        .into_inner()
        .items
        .remove(0);
    (item.version != 0).then_some(item.value)
}

/// A scalar of the coordinator's /metrics.
async fn metric(cluster: &TestCluster, name: &str) -> f64 {
    let page = harness::http_get(cluster.coordinator(0).field("metrics"), "/metrics").await;
    page.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in:\n{page}"))
        .trim()
        .parse()
        .expect("a number")
}

/// A scalar of every shard's /metrics, summed.
async fn shards_metric(cluster: &TestCluster, name: &str) -> f64 {
    let mut sum = 0.0;
    for group in 1..=cluster.groups() {
        for replica in 1..=cluster.replicas() {
            let Some(shard) = cluster.shard(group, replica) else {
                continue;
            };
            let page = harness::http_get(shard.field("metrics"), "/metrics").await;
            sum += page
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no {name} in:\n{page}"))
                .trim()
                .parse::<f64>()
                .expect("a number");
        }
    }
    sum
}

/// The story: root cannot turn auth on before anyone holds admin; then
/// adds itself as admin, a `reader` (read on every key, a password) and a
/// `writer` (write on `a/`, a password), and turns auth on. The reader
/// reads but cannot write; the writer writes `a/x` but not `b/x`, and a
/// commit of `a/y` and `b/y` is refused whole (root finds neither); the
/// CLI's `--user` logs in by password (a wrong one is refused and writes
/// nothing), and so does `trellis load`; the shards judge the clients
/// that route their own reads and commits as the coordinator does (by
/// certificate or token), and still keep their internal methods for
/// nodes; a change feed needs read on its whole range; a
/// stranger's certificate names no user; a wrong password, an unknown
/// user, an expired token and another cluster's token are
/// UNAUTHENTICATED saying why; the reader cannot run admin commands nor
/// switch auth off. Failed logins are counted, checks are one per
/// request; a guesser's address is refused unheard after too many failed
/// logins, even with the right password; and no log file holds a password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_read_and_write_only_what_their_grants_allow() {
    let _ = certs();
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = tls_cluster(dir.path()).await;
    let addr = cluster.addr(0).to_string();
    let at = ["--addr", addr.as_str()];
    let root = |args: &[&str]| trellis_as("root", &[args, &at[..]].concat(), &[], "");

    // Enabling with nobody holding admin would lock everyone out.
    let err = refused(root(&["admin", "auth", "enable"]));
    assert!(err.contains("no user holds admin"), "{err}");
    assert!(ok(root(&["admin", "auth", "status"])).contains("auth off"));

    ok(root(&["user", "add", "root"]));
    ok(root(&["user", "grant", "root", "admin"]));
    // Passwords from standard input and from the environment.
    ok(trellis_as(
        "root",
        &[
            "user",
            "add",
            "reader",
            "--new-password-stdin",
            "--addr",
            &addr,
        ],
        &[],
        &format!("{READER_PASSWORD}\n"),
    ));
    ok(trellis_as(
        "root",
        &["user", "add", "writer", "--addr", &addr],
        &[("TRELLIS_NEW_PASSWORD", WRITER_PASSWORD)],
        "",
    ));
    ok(root(&["user", "grant", "reader", "read"]));
    ok(root(&[
        "user", "grant", "writer", "write", "--prefix", "a/",
    ]));
    let err = refused(root(&[
        "user", "grant", "writer", "admin", "--prefix", "a/",
    ]));
    assert!(err.contains("admin is granted on every key"), "{err}");
    let list = ok(root(&["user", "list"]));
    assert!(
        list.contains("writer") && list.contains("write on prefix `a/`"),
        "{list}"
    );
    assert!(
        !list.contains(WRITER_PASSWORD) && !list.contains("argon2"),
        "{list}"
    );
    let on = ok(root(&["admin", "auth", "enable"]));
    assert!(on.contains("auth on") && on.contains("1 admins"), "{on}");
    // The shards learn it from the coordinator within a poll or two.
    let shards = (cluster.groups() * cluster.replicas()) as f64;
    let deadline = std::time::Instant::now() + SHARDS_LEARN_TIMEOUT;
    while shards_metric(&cluster, "trellis_auth_enabled").await < shards {
        assert!(
            std::time::Instant::now() < deadline,
            "the shards never read that auth is on"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // The reader, by certificate: reads, cannot write. `trellis sql`
    // routes its own reads and one-group commits to the shards (the
    // direct route): they check the certificate's user themselves.
    let shard_checks = shards_metric(&cluster, "trellis_auth_checks_total").await;
    let shard_denials = shards_metric(&cluster, "trellis_auth_denied_total").await;
    let sql = |who: &str, statement: &str| {
        trellis_as(who, &["sql", "--addr", &addr, "-c", statement], &[], "")
    };
    ok(root(&[
        "sql",
        "--route",
        "coordinator",
        "-c",
        "PUT r/1 'seed'",
    ]));
    assert!(ok(sql("reader", "GET r/1")).contains("seed"));
    let out = sql("reader", "PUT r/2 'no'");
    assert!(!out.status.success(), "{}", printed(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("lacks `write` on key `r/2`"),
        "{}",
        printed(&out)
    );
    assert_eq!(read_as_root(&cluster, "r/2").await, None);

    // The writer, by certificate: `a/x`, not `b/x`.
    ok(sql("writer", "PUT a/x 'mine'"));
    assert_eq!(
        read_as_root(&cluster, "a/x").await.as_deref(),
        Some(&b"mine"[..])
    );
    let out = sql("writer", "PUT b/x 'theirs'");
    assert!(!out.status.success(), "{}", printed(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lacks `write` on key `b/x`"),
        "{}",
        printed(&out)
    );
    assert_eq!(read_as_root(&cluster, "b/x").await, None);
    // Those four statements went to the shards, which checked each once
    // and refused two.
    assert!(
        shards_metric(&cluster, "trellis_auth_checks_total").await >= shard_checks + 4.0,
        "the shards checked the direct route's calls"
    );
    assert_eq!(
        shards_metric(&cluster, "trellis_auth_denied_total").await,
        shard_denials + 2.0
    );
    // A client certificate, even an admin's, is no node: a shard's
    // internal methods stay closed to it.
    let shard = cluster.shard(1, 1).expect("g1r1");
    let mut internal = harness::shard_client(shard).await.expect("a shard client");
    let denied = internal
        .finalize(trellis_proto::shard::v1::FinalizeRequest {
            txn_id: harness::txn_id(),
            decision: trellis_proto::shard::v1::Decision::Commit as i32,
        })
        .await
        .expect_err("Finalize is for nodes");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("needs a node certificate"),
        "{denied:?}"
    );

    // The writer, by password: one commit with a key outside is refused
    // whole, before anything is prepared.
    let token = login(&addr, "writer", WRITER_PASSWORD)
        .await
        .expect("login");
    let mut txn = cluster.txn(0).await.expect("a Txn client");
    let denied = txn
        .commit(bearer(
            commit(vec![put("a/y", "1"), put("b/y", "2")]),
            &token,
        ))
        .await
        .expect_err("b/y is outside a/");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied
            .message()
            .contains("user `writer` lacks `write` on key `b/y`"),
        "{denied:?}"
    );
    assert_eq!(read_as_root(&cluster, "a/y").await, None, "half a commit");
    assert_eq!(read_as_root(&cluster, "b/y").await, None);
    txn.commit(bearer(commit(vec![put("a/z", "ok")]), &token))
        .await
        .expect("inside a/");
    assert_eq!(
        read_as_root(&cluster, "a/z").await.as_deref(),
        Some(&b"ok"[..])
    );

    // The CLI logs in with --user (a certificate that names no user: the
    // token speaks for the writer), password from the environment or
    // standard input.
    let as_writer = |statement: &str, password: &str| {
        trellis_as(
            "stranger",
            &[
                "sql",
                "--addr",
                &addr,
                "--route",
                "coordinator",
                "--user",
                "writer",
                "-c",
                statement,
            ],
            &[("TRELLIS_PASSWORD", password)],
            "",
        )
    };
    ok(as_writer("PUT a/cli 'by-password'", WRITER_PASSWORD));
    assert_eq!(
        read_as_root(&cluster, "a/cli").await.as_deref(),
        Some(&b"by-password"[..])
    );
    let out = as_writer("PUT b/cli 'no'", WRITER_PASSWORD);
    assert!(!out.status.success(), "{}", printed(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("user `writer` lacks `write` on key `b/cli`"),
        "{}",
        printed(&out)
    );
    let out = as_writer("PUT a/cli2 'no'", WRONG_PASSWORD);
    assert!(!out.status.success(), "{}", printed(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown user `writer` or wrong password"),
        "{}",
        printed(&out)
    );
    assert_eq!(read_as_root(&cluster, "a/cli2").await, None);
    // The direct route with a password: the token goes to the shards too.
    let direct_as_writer = |statement: &str| {
        trellis_as(
            "stranger",
            &["sql", "--addr", &addr, "--user", "writer", "-c", statement],
            &[("TRELLIS_PASSWORD", WRITER_PASSWORD)],
            "",
        )
    };
    assert!(ok(direct_as_writer("GET a/cli")).contains("by-password"));
    ok(direct_as_writer("PUT a/direct 'by-token'"));
    assert_eq!(
        read_as_root(&cluster, "a/direct").await.as_deref(),
        Some(&b"by-token"[..])
    );
    let out = direct_as_writer("PUT b/direct 'no'");
    assert!(!out.status.success(), "{}", printed(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("user `writer` lacks `write` on key `b/direct`"),
        "{}",
        printed(&out)
    );
    assert_eq!(read_as_root(&cluster, "b/direct").await, None);
    let err = refused(trellis_as(
        "stranger",
        &[
            "status",
            "--addr",
            &addr,
            "--user",
            "reader",
            "--password-stdin",
        ],
        &[],
        &format!("{READER_PASSWORD}\n"),
    ));
    assert!(err.contains("user `reader` lacks `admin`"), "{err}");

    // A change feed needs read on its whole range.
    let mut feed = pb::changefeed_client::ChangefeedClient::new(
        harness::channel(&addr).await.expect("channel"),
    );
    let watch = |start: &str, end: &str| pb::WatchRequest {
        start: start.as_bytes().to_vec(),
        end: end.as_bytes().to_vec(),
        ..Default::default()
    };
    feed.watch(bearer(watch("a/", "a0"), &token))
        .await
        .expect("the writer watches a/");
    let denied = feed
        .watch(bearer(watch("a/", ""), &token))
        .await
        .expect_err("a/ to the end of the key space");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied
            .message()
            .contains("lacks `read` on the keys from `a/` to the end (from `a0`)"),
        "{denied:?}"
    );

    // `trellis load` as root by password (it reads the status: admin).
    ok(trellis_as(
        "root",
        &["user", "passwd", "root", "--addr", &addr],
        &[("TRELLIS_NEW_PASSWORD", ROOT_PASSWORD)],
        "",
    ));
    ok(trellis_as(
        "stranger",
        &[
            "load",
            "--addr",
            &addr,
            "--user",
            "root",
            "--vus",
            "1",
            "--duration",
            "1s",
            "-q",
        ],
        &[("TRELLIS_PASSWORD", ROOT_PASSWORD)],
        "",
    ));

    // Who is not a user, and bad passwords.
    let err = refused(trellis_as(
        "stranger",
        &["status", "--addr", &addr],
        &[],
        "",
    ));
    assert!(err.contains("user `stranger`, who does not exist"), "{err}");
    let failures_before = metric(&cluster, "trellis_auth_login_failures_total").await;
    for (user, password) in [("reader", WRONG_PASSWORD), ("nobody", WRONG_PASSWORD)] {
        let refused = login(&addr, user, password).await.expect_err("a bad login");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        assert!(
            refused.message().contains("unknown user")
                && refused.message().contains("wrong password"),
            "{refused:?}"
        );
    }
    assert_eq!(
        metric(&cluster, "trellis_auth_login_failures_total").await,
        failures_before + 2.0
    );

    // An expired token of this cluster, and a token of another cluster.
    let catalog = Catalog::connect(cluster.catalog())
        .await
        .expect("the catalog");
    let settings = catalog.auth_settings().await.expect("settings");
    let cluster_id = catalog.cluster_id().await.expect("cluster id").get();
    let reader_grants = trellis_coordinator::authz::Grants::new(
        "reader",
        vec![
            trellis_coordinator::authz::Grant::new(
                trellis_coordinator::authz::Role::Read,
                Vec::new(),
            )
            .expect("grant"),
        ],
    )
    .expect("grants");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let expired = mint(
        &settings.secret,
        &Claims {
            cluster: cluster_id,
            expires_unix_s: now - 1,
            grants: reader_grants.clone(),
        },
    );
    let foreign = mint(
        &[7; 32],
        &Claims {
            cluster: cluster_id ^ 1,
            expires_unix_s: now + TOKEN_LIFETIME.as_secs(),
            grants: reader_grants,
        },
    );
    let get = || pb::GetRequest {
        keys: vec![b"r/1".to_vec()],
        ..Default::default()
    };
    for (token, why) in [(&expired, "expired"), (&foreign, "another cluster")] {
        let refused = txn.get(bearer(get(), token)).await.expect_err(why);
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        assert!(refused.message().contains(why), "{refused:?}");
    }
    let reader = login(&addr, "reader", READER_PASSWORD)
        .await
        .expect("login");
    txn.get(bearer(get(), &reader))
        .await
        .expect("a fresh token reads");

    // Admin RPCs need admin: nothing changes.
    for args in [
        &["admin", "auth", "disable"][..],
        &["status"][..],
        &["user", "grant", "reader", "write"][..],
    ] {
        let err = refused(trellis_as("reader", &[args, &at[..]].concat(), &[], ""));
        assert!(err.contains("lacks `admin`"), "{args:?}: {err}");
    }
    assert!(ok(root(&["admin", "auth", "status"])).contains("auth on"));
    let reader_row = catalog
        .user("reader")
        .await
        .expect("reader")
        .expect("exists");
    assert_eq!(reader_row.grants.len(), 1, "{reader_row:?}");
    // The last admin stays while auth is on.
    let err = refused(root(&["user", "rm", "root"]));
    assert!(err.contains("last user holding admin"), "{err}");

    // One check per request, whatever the number of keys.
    let checks = metric(&cluster, "trellis_auth_checks_total").await;
    let many = (0..20).map(|i| format!("a/many{i}")).collect::<Vec<_>>();
    txn.commit(bearer(
        commit(many.iter().map(|k| put(k, "v")).collect()),
        &token,
    ))
    .await
    .expect("twenty keys under a/");
    assert_eq!(
        metric(&cluster, "trellis_auth_checks_total").await,
        checks + 1.0
    );

    // A guesser: failed logins from one address are refused unheard once
    // there were LOGIN_FAILURES_MAX within the window (the wrong passwords
    // above count too), and then even the right password is refused, with
    // RESOURCE_EXHAUSTED naming the address, until the backoff ends.
    let refused_before = metric(&cluster, "trellis_auth_logins_refused_total").await;
    let mut tries = 0;
    let limited = loop {
        tries += 1;
        assert!(
            tries <= trellis_coordinator::auth_service::LOGIN_FAILURES_MAX + 1,
            "{tries} wrong passwords in a row and no login refused unheard"
        );
        let err = login(&addr, "writer", WRONG_PASSWORD)
            .await
            .expect_err("a wrong password");
        if err.code() == Code::ResourceExhausted {
            break err;
        }
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    };
    assert!(
        limited
            .message()
            .contains("too many failed logins from 127.0.0.1"),
        "{limited:?}"
    );
    let right = login(&addr, "writer", WRITER_PASSWORD)
        .await
        .expect_err("the right password, from a blocked address");
    assert_eq!(right.code(), Code::ResourceExhausted, "{right:?}");
    assert_eq!(
        metric(&cluster, "trellis_auth_logins_refused_total").await,
        refused_before + 2.0
    );

    // No password in any log of the cluster.
    let mut logs = 0;
    for entry in std::fs::read_dir(dir.path()).expect("the cluster's directory") {
        let path = entry.expect("an entry").path();
        if path.extension().is_some_and(|e| e == "log") {
            logs += 1;
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for password in [
                READER_PASSWORD,
                WRITER_PASSWORD,
                WRONG_PASSWORD,
                ROOT_PASSWORD,
            ] {
                assert!(
                    !text.contains(password),
                    "{} holds a password",
                    path.display()
                );
            }
            assert!(!text.contains(&token), "{} holds a token", path.display());
        }
    }
    assert!(logs >= 2, "no log files found in {}", dir.path().display());
}
