//! `trellis load` as a person runs it, against a real cluster of `trellis`
//! processes: every workload runs and reports what it did, a threshold that
//! cannot hold exits 99 and names itself, bad flags exit 2 naming the bad
//! part, the bank check catches a target that loses money, and the outputs
//! (JSON lines, summary export, HTML report, history) are written. Then the
//! same tool against PostgreSQL (both `--pg-mode`s), Redis and etcd, when
//! they are here.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use std::time::Duration;

use trellis_tests::harness::{Cluster, trellis_bin};

/// How long one `trellis load` may take.
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// How long etcd may take to accept connections.
const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(30);

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn load(args: &[&str]) -> Run {
    let mut command = Command::new(trellis_bin());
    command.arg("load").args(args).env("TRELLIS_LOG", "warn");
    let output = trellis_tests::harness::output_within(command, LOAD_TIMEOUT);
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn load_ok(args: &[&str]) -> Run {
    let run = load(args);
    assert_eq!(
        run.code, 0,
        "trellis load {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    run
}

fn summary(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("summary export written");
    serde_json::from_str(&text).expect("summary export is JSON")
}

fn count(summary: &serde_json::Value, metric: &str) -> u64 {
    summary["metrics"][metric]["values"]["count"]
        .as_u64()
        .unwrap_or_else(|| panic!("no count for {metric} in {summary:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_runs_against_trellis() {
    let cluster = Cluster::start(3).await.expect("cluster");
    let target = format!("trellis://{}", cluster.addr(0));
    let dir = tempfile::tempdir().expect("tempdir");
    for workload in [
        "w1-rmw",
        "w2-transfer",
        "w3-read",
        "ycsb-a",
        "ycsb-b",
        "ycsb-c",
        "ycsb-f",
        "append",
        "bank",
    ] {
        let export = dir.path().join(format!("{workload}.json"));
        let run = load_ok(&[
            "--target",
            &target,
            "--workload",
            workload,
            "--iterations",
            "60",
            "--vus",
            "4",
            "--key-prefix",
            &format!("e2e-{workload}"),
            "--summary-export",
            export.to_str().expect("utf-8"),
            "-q",
        ]);
        let s = summary(&export);
        assert_eq!(count(&s, "iterations"), 60, "{workload}: {}", run.stdout);
        assert_eq!(
            s["metrics"]["txn_failed"]["values"]["passes"], 0,
            "{workload}: nothing fails on a healthy cluster\n{}",
            run.stdout
        );
        assert!(run.stdout.contains("█ TOTAL RESULTS"), "{}", run.stdout);
        if matches!(workload, "append" | "bank") {
            assert!(
                s["checks"]
                    .as_array()
                    .is_some_and(|c| !c.is_empty() && c.iter().all(|c| c["ok"] == true)),
                "{workload}: checks ran and passed\n{}",
                run.stdout
            );
        }
    }
    // Transfers between random keys over 3 groups are mostly two-phase, and
    // the summary says so; a single-key increment is always one-phase.
    let export = dir.path().join("paths.json");
    load_ok(&[
        "--target",
        &target,
        "--workload",
        "w2-transfer",
        "--iterations",
        "60",
        "--summary-export",
        export.to_str().expect("utf-8"),
        "-q",
    ]);
    let s = summary(&export);
    let two = s["metrics"]["txn_duration{path:2pc}"]["values"]["count"]
        .as_u64()
        .unwrap_or(0);
    assert!(two >= 20, "most transfers span two groups: {s:#}");

    // A duration run and an open-model run.
    let export = dir.path().join("open.json");
    let run = load_ok(&[
        "--target",
        &target,
        "--workload",
        "w3-read",
        "--rate",
        "50",
        "--duration",
        "2s",
        "--max-vus",
        "20",
        "--summary-export",
        export.to_str().expect("utf-8"),
        "-q",
    ]);
    let s = summary(&export);
    let done = count(&s, "iterations") + count(&s, "dropped_iterations");
    assert_eq!(done, 100, "50/s for 2 s is 100 arrivals\n{}", run.stdout);
    load_ok(&["--target", &target, "--vus", "2", "--duration", "2s", "-q"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_exit_codes_and_outputs() {
    let cluster = Cluster::start(2).await.expect("cluster");
    let addr = cluster.addr(0).to_string();
    let target = format!("trellis://{addr}");
    let dir = tempfile::tempdir().expect("tempdir");
    let points = dir.path().join("points.jsonl");
    let report = dir.path().join("report.html");
    let history = dir.path().join("history.txt");
    // No commit takes under a microsecond: the first threshold must fail,
    // the second must hold. The coordinator is named as for every other
    // command: --addr HOST:PORT, no scheme.
    let run = load(&[
        "--addr",
        &addr,
        "--workload",
        "append",
        "--iterations",
        "40",
        "--vus",
        "2",
        "--threshold",
        "txn_duration:p(99)<1us",
        "--threshold",
        "txn_failed:rate<0.5",
        "--out",
        &format!("json={}", points.display()),
        "--report",
        report.to_str().expect("utf-8"),
        "--history",
        history.to_str().expect("utf-8"),
        "-q",
    ]);
    assert_eq!(
        run.code, 99,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert!(
        run.stdout.contains("✗ 'p(99)<1us'") && run.stdout.contains("✓ 'rate<0.5'"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr
            .contains("threshold crossed: txn_duration 'p(99)<1us'"),
        "{}",
        run.stderr
    );
    let lines = std::fs::read_to_string(&points).expect("points written");
    let durations = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("each line is JSON"))
        .filter(|v| v["type"] == "Point" && v["metric"] == "txn_duration")
        .count();
    assert_eq!(durations, 40, "one txn_duration point per iteration");
    let page = std::fs::read_to_string(&report).expect("report written");
    assert!(page.contains("<svg") && page.contains("TOTAL RESULTS"));
    // The report says when and how the run was made (it said neither), and
    // stderr says where the report went (nothing did).
    let started = page
        .split("<th>started</th><td style=\"text-align:left\"><code>")
        .nth(1)
        .and_then(|rest| rest.split("</code>").next())
        .expect("a started row in the report");
    assert!(
        started.len() == "2026-01-01T00:00:00Z".len()
            && started.ends_with('Z')
            && started.chars().nth(10) == Some('T'),
        "an RFC 3339 UTC date: {started}"
    );
    assert!(
        page.contains(&format!("load --addr {addr} --workload append"))
            && page.contains("'txn_duration:p(99)&lt;1us'"),
        "the command line, quoted and escaped"
    );
    assert!(
        run.stderr
            .contains(&format!("report written to {}", report.display())),
        "{}",
        run.stderr
    );
    let ops: Vec<trellis_checker::Op> =
        trellis_checker::format::load(&history).expect("history parses");
    assert!(
        ops.len() >= 80,
        "an invocation and a completion per attempt"
    );

    // Bad flags: exit 2, naming the bad part.
    let run = load(&["--target", &target, "--stage", "10s:5,10x:5"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("`10x:5`"), "{}", run.stderr);
    let run = load(&["--duration", "1s", "--threshold", "txn_latency:p(99)<5ms"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("`txn_latency`"), "{}", run.stderr);
    // Nothing listening: exit 1 with the address.
    let run = load(&["--target", "trellis://127.0.0.1:1", "--duration", "1s"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("127.0.0.1:1"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_check_catches_a_lost_credit() {
    // The same bank run over a correct path and over the test-only
    // `broken-bank://` wrapper, whose transfers debit without crediting:
    // the first passes its checks, the second must fail them (exit 98).
    let cluster = Cluster::start(2).await.expect("cluster");
    let target = format!("trellis://{}", cluster.addr(0));
    let run = load_ok(&[
        "--target",
        &target,
        "--workload",
        "bank",
        "--iterations",
        "80",
        "--vus",
        "4",
        "--key-prefix",
        "bank-good",
    ]);
    assert!(
        run.stdout
            .contains("✓ bank: the final read sums to the opening total"),
        "{}",
        run.stdout
    );
    let run = load(&[
        "--target",
        &format!("broken-bank://{target}"),
        "--workload",
        "bank",
        "--iterations",
        "80",
        "--vus",
        "4",
        "--key-prefix",
        "bank-broken",
    ]);
    assert_eq!(
        run.code, 98,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert!(
        run.stdout
            .contains("✗ bank: the final read sums to the opening total"),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("check failed"), "{}", run.stderr);
}

/// The PostgreSQL URL for tests, or why there is none.
fn postgres_url() -> Result<String, String> {
    let url = std::env::var("TRELLIS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let addr = "127.0.0.1:5432".parse().expect("addr");
    if std::env::var("TRELLIS_TEST_POSTGRES_URL").is_err()
        && std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err()
    {
        return Err("nothing listens on 127.0.0.1:5432".into());
    }
    Ok(url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_target_smoke() {
    let url = match postgres_url() {
        Ok(url) => url,
        Err(reason) => {
            eprintln!("SKIPPED postgres_target_smoke: {reason}");
            return;
        }
    };
    // A table of our own, so parallel runs do not meet.
    let table = format!("load_test_{}_{}", std::process::id(), rand::random::<u32>());
    let dir = tempfile::tempdir().expect("tempdir");
    for workload in ["w1-rmw", "w2-transfer", "bank"] {
        let export = dir.path().join(format!("{workload}.json"));
        let run = load_ok(&[
            "--target",
            &url,
            "--pg-table",
            &table,
            "--workload",
            workload,
            "--iterations",
            "60",
            "--vus",
            "4",
            "--keys",
            "8",
            "--summary-export",
            export.to_str().expect("utf-8"),
            "-q",
        ]);
        let s = summary(&export);
        assert_eq!(count(&s, "iterations"), 60, "{}", run.stdout);
        assert!(run.stdout.contains("SERIALIZABLE"), "{}", run.stdout);
    }
    let pool = sqlx::PgPool::connect(&url).await.expect("connect to drop");
    sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
        .execute(&pool)
        .await
        .expect("drop the test table");
}

/// The first 8 bytes of each value, as the workloads encode counters and
/// balances (little-endian i64, padded).
fn decode_i64(value: &[u8]) -> i64 {
    i64::from_le_bytes(value[..8].try_into().expect("a counter is 8 bytes or more"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_occ_mode_loses_no_update() {
    // `--pg-mode occ`: reads in autocommit, then writes conditional on the
    // version read. Over 2 and 8 keys with 8 VUs, attempts meet: some
    // conditional writes find the version changed and are retried as
    // conflicts. If one of them were taken for a commit (or a lost update
    // let through), the counters would sum to less than the iterations
    // that committed, and the transfers would create or destroy money.
    let url = match postgres_url() {
        Ok(url) => url,
        Err(reason) => {
            eprintln!("SKIPPED postgres_occ_mode_loses_no_update: {reason}");
            return;
        }
    };
    let table = format!("load_occ_{}_{}", std::process::id(), rand::random::<u32>());
    let dir = tempfile::tempdir().expect("tempdir");
    let export = dir.path().join("occ.json");
    let export_path = export.to_str().expect("utf-8");
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    let sum = |prefix: &'static str| {
        let pool = pool.clone();
        let table = table.clone();
        async move {
            let rows: Vec<(Vec<u8>,)> =
                sqlx::query_as(&format!("SELECT v FROM {table} WHERE k >= $1 AND k < $2"))
                    .bind(format!("{prefix}:").into_bytes())
                    .bind(format!("{prefix};").into_bytes())
                    .fetch_all(&pool)
                    .await
                    .expect("read the table");
            (
                rows.len(),
                rows.iter().map(|(v,)| decode_i64(v)).sum::<i64>(),
            )
        }
    };

    let run = load_ok(&[
        "--target",
        &url,
        "--pg-table",
        &table,
        "--pg-mode",
        "occ",
        "--workload",
        "w1-rmw",
        "--iterations",
        "300",
        "--vus",
        "8",
        "--keys",
        "2",
        "--key-prefix",
        "occ-rmw",
        "--summary-export",
        export_path,
        "-q",
    ]);
    assert!(run.stdout.contains("version-conditional"), "{}", run.stdout);
    let s = summary(&export);
    assert_eq!(count(&s, "iterations"), 300, "{}", run.stdout);
    assert_eq!(
        s["metrics"]["txn_failed"]["values"]["passes"], 0,
        "{}",
        run.stdout
    );
    assert!(
        count(&s, "txn_conflicts") > 0,
        "8 VUs on 2 keys meet: {}",
        run.stdout
    );
    assert_eq!(
        sum("occ-rmw").await,
        (2, 300),
        "every committed increment counted once"
    );

    let run = load_ok(&[
        "--target",
        &url,
        "--pg-table",
        &table,
        "--pg-mode",
        "occ",
        "--workload",
        "w2-transfer",
        "--iterations",
        "300",
        "--vus",
        "8",
        "--keys",
        "8",
        "--key-prefix",
        "occ-transfer",
        "--summary-export",
        export_path,
        "-q",
    ]);
    let s = summary(&export);
    assert_eq!(count(&s, "iterations"), 300, "{}", run.stdout);
    assert_eq!(
        s["metrics"]["txn_failed"]["values"]["passes"], 0,
        "{}",
        run.stdout
    );
    let (accounts, total) = sum("occ-transfer").await;
    assert_eq!(
        total, 0,
        "transfers move money, they never make it ({accounts} accounts)"
    );
    assert!(accounts > 2, "{accounts} accounts written");

    // The bank workload checks its own total with full reads during the run.
    let run = load_ok(&[
        "--target",
        &url,
        "--pg-table",
        &table,
        "--pg-mode",
        "occ",
        "--workload",
        "bank",
        "--iterations",
        "200",
        "--vus",
        "8",
        "--key-prefix",
        "occ-bank",
        "-q",
    ]);
    assert!(
        run.stdout
            .contains("✓ bank: the final read sums to the opening total"),
        "{}",
        run.stdout
    );
    sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
        .execute(&pool)
        .await
        .expect("drop the test table");
}

/// Keys under `prefix` on the system Redis, and their values.
async fn redis_values(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> Vec<Vec<u8>> {
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(conn)
        .await
        .expect("KEYS");
    if keys.is_empty() {
        return Vec::new();
    }
    redis::cmd("MGET")
        .arg(&keys)
        .query_async(conn)
        .await
        .expect("MGET")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_target_against_the_system_redis() {
    // The system Redis on 6379 has no replica. With `--durability async`
    // (no WAIT) the WATCH/MULTI/EXEC transactions commit, conflicts are
    // retried, and no increment or transfer is lost. With the default
    // (sync: WAIT for one replica) every write must come back as not
    // committed: a write no replica acknowledged is not a success. Keys
    // under a prefix of our own, deleted at the end.
    let addr: std::net::SocketAddr = "127.0.0.1:6379".parse().expect("addr");
    if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
        eprintln!(
            "SKIPPED redis_target_against_the_system_redis: nothing listens on 127.0.0.1:6379"
        );
        return;
    }
    let target = "redis://127.0.0.1:6379";
    let prefix = format!(
        "trellis-load-test-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    );
    let client = redis::Client::open(target).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the system Redis");
    let dir = tempfile::tempdir().expect("tempdir");
    let export = dir.path().join("redis.json");
    let export_path = export.to_str().expect("utf-8");

    let rmw = format!("{prefix}-rmw");
    let run = load_ok(&[
        "--target",
        target,
        "--durability",
        "async",
        "--workload",
        "w1-rmw",
        "--iterations",
        "300",
        "--vus",
        "8",
        "--keys",
        "2",
        "--key-prefix",
        &rmw,
        "--summary-export",
        export_path,
        "-q",
    ]);
    let s = summary(&export);
    assert_eq!(count(&s, "iterations"), 300, "{}", run.stdout);
    assert_eq!(
        s["metrics"]["txn_failed"]["values"]["passes"], 0,
        "{}",
        run.stdout
    );
    assert!(
        count(&s, "txn_conflicts") > 0,
        "8 VUs on 2 keys meet: {}",
        run.stdout
    );
    let values = redis_values(&mut conn, &rmw).await;
    assert_eq!(values.len(), 2);
    assert_eq!(values.iter().map(|v| decode_i64(v)).sum::<i64>(), 300);

    let transfer = format!("{prefix}-transfer");
    let run = load_ok(&[
        "--target",
        target,
        "--durability",
        "async",
        "--workload",
        "w2-transfer",
        "--iterations",
        "300",
        "--vus",
        "8",
        "--keys",
        "8",
        "--key-prefix",
        &transfer,
        "--summary-export",
        export_path,
        "-q",
    ]);
    let s = summary(&export);
    assert_eq!(
        s["metrics"]["txn_failed"]["values"]["passes"], 0,
        "{}",
        run.stdout
    );
    let values = redis_values(&mut conn, &transfer).await;
    assert!(values.len() > 2, "{} accounts", values.len());
    assert_eq!(values.iter().map(|v| decode_i64(v)).sum::<i64>(), 0);

    let bank = format!("{prefix}-bank");
    let run = load_ok(&[
        "--target",
        target,
        "--durability",
        "async",
        "--workload",
        "bank",
        "--iterations",
        "200",
        "--vus",
        "8",
        "--key-prefix",
        &bank,
        "-q",
    ]);
    assert!(
        run.stdout
            .contains("✓ bank: the final read sums to the opening total"),
        "{}",
        run.stdout
    );
    let run = load_ok(&[
        "--target",
        target,
        "--workload",
        "w3-read",
        "--iterations",
        "100",
        "--vus",
        "4",
        "--key-prefix",
        &rmw,
        "--summary-export",
        export_path,
        "-q",
    ]);
    let s = summary(&export);
    assert_eq!(
        s["metrics"]["txn_failed"]["values"]["passes"], 0,
        "{}",
        run.stdout
    );

    // Sync (the default): WAIT 1 answers 0 here, so nothing commits, and
    // each is an unknown outcome (the primary has it), never retried.
    let unacked = format!("{prefix}-unacked");
    let run = load(&[
        "--target",
        target,
        "--workload",
        "w1-rmw",
        "--iterations",
        "20",
        "--vus",
        "2",
        "--timeout",
        "400ms",
        "--key-prefix",
        &unacked,
        "--summary-export",
        export_path,
        "-q",
    ]);
    let s = summary(&export);
    assert_eq!(
        s["metrics"]["txn_failed"]["values"]["passes"], 20,
        "{}\n{}",
        run.stdout, run.stderr
    );
    assert_eq!(count(&s, "txn_outcome_unknown"), 20, "{}", run.stdout);
    assert!(run.stdout.contains("WAIT 1"), "{}", run.stdout);

    let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .expect("DEL");
    }
}

/// An etcd we started; killed (by its PID) when dropped.
struct Etcd {
    child: Child,
    client_addr: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn start_etcd(dir: &Path) -> Option<Etcd> {
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new("etcd")
        .args([
            "--name",
            "load-test",
            "--data-dir",
            dir.to_str().expect("utf-8"),
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("load-test={peer_url}"),
            "--log-level",
            "error",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let etcd = Etcd {
        child,
        client_addr: format!("127.0.0.1:{client}"),
    };
    let deadline = std::time::Instant::now() + ETCD_READY_TIMEOUT;
    let addr = etcd.client_addr.parse().expect("addr");
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "etcd did not listen on {} in {ETCD_READY_TIMEOUT:?}",
            etcd.client_addr
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(etcd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_target_smoke() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(etcd) = start_etcd(dir.path()) else {
        eprintln!(
            "SKIPPED etcd_target_smoke: no etcd binary on PATH (apt-get install etcd-server)"
        );
        return;
    };
    let target = format!("etcd://{}", etcd.client_addr);
    let export = dir.path().join("etcd.json");
    for workload in ["w1-rmw", "w2-transfer", "w3-read", "bank"] {
        let run = load_ok(&[
            "--target",
            &target,
            "--workload",
            workload,
            "--iterations",
            "60",
            "--vus",
            "4",
            "--keys",
            "8",
            "--summary-export",
            export.to_str().expect("utf-8"),
            "-q",
        ]);
        let s = summary(&export);
        assert_eq!(count(&s, "iterations"), 60, "{}", run.stdout);
        assert_eq!(
            s["metrics"]["txn_failed"]["values"]["passes"], 0,
            "{}",
            run.stdout
        );
    }
    // Over 8 keys and 4 VUs, read-modify-writes meet: conflicts are seen
    // and retried (etcd's compare failed), and still nothing fails.
    let run = load_ok(&[
        "--target",
        &target,
        "--workload",
        "w1-rmw",
        "--iterations",
        "200",
        "--vus",
        "8",
        "--keys",
        "2",
        "--summary-export",
        export.to_str().expect("utf-8"),
        "-q",
    ]);
    let s = summary(&export);
    assert!(count(&s, "txn_conflicts") > 0, "{}", run.stdout);
}
