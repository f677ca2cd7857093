//! `trellis dev` and `trellis status` as a person uses them: one command
//! starts a cluster of separate processes, status shows it, Ctrl-C/SIGTERM
//! stops every child, data survives a restart, and a killed `trellis dev`
//! leaves no orphans. As a supervisor: a member that dies is reported once
//! and restarted (or only reported with `--no-restart`), logs are plain and
//! labelled, a second dev on the same directory starts nothing, and bad
//! flags exit 2.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use trellis_proto::v1 as pb;
use trellis_tests::harness::{
    Proc, alive, channel, http_get, signal_pid, trellis_bin, txn_id, wait_gone,
};

/// Children must exit this soon after their parent goes.
const ORPHAN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long dev may take to notice an exit, restart a member, or log it.
const SUPERVISE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long we keep watching dev's log after an exit, so that a repeated
/// report (dev looks at its children every 100 ms) would show.
const REPEAT_WATCH: Duration = Duration::from_secs(2);
/// How long a commit may keep failing while a member comes back.
const COMMIT_RETRY_TIMEOUT: Duration = Duration::from_secs(60);

async fn member_pids(addr: &str) -> (Vec<u32>, pb::StatusResponse) {
    let mut admin = pb::admin_client::AdminClient::new(channel(addr).await.expect("connect"));
    let status = admin
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    let mut pids: Vec<u32> = status
        .groups
        .iter()
        .flat_map(|g| g.members.iter().map(|m| m.pid))
        .collect();
    // Coordinators register as `address/pid`.
    let coordinator = status
        .coordinators
        .iter()
        .filter(|c| c.heartbeat_age_s < 10)
        .filter_map(|c| c.id.rsplit_once('/').and_then(|(_, pid)| pid.parse().ok()))
        .next_back()
        .expect("the dev coordinator is registered");
    pids.push(coordinator);
    (pids, status)
}

fn dev(dir: &std::path::Path) -> Proc {
    let dir = dir.to_str().expect("utf-8 path");
    // Plaintext: these tests speak to dev with an in-process client
    // without certificates (dev's TLS: dev_tls.rs).
    Proc::start(&[
        "dev",
        "--insecure",
        "--data-dir",
        dir,
        "--listen",
        "127.0.0.1:0",
        "--groups",
        "3",
    ])
    .expect("trellis dev starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_lifecycle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = dev(dir.path());
    let addr = cluster.field("grpc").to_string();
    let (pids, status) = member_pids(&addr).await;
    assert_eq!(status.groups.len(), 3);
    assert!(
        status.groups.iter().all(|g| g.members[0].role == "primary"),
        "{status:?}"
    );
    assert_eq!(
        status.groups.iter().map(|g| g.slots_owned).sum::<u32>(),
        trellis_types::SLOTS
    );
    assert!(
        pids.iter().all(|p| alive(*p)),
        "every shard is its own live process"
    );

    // A write through the public API.
    let mut txn = pb::txn_client::TxnClient::new(channel(&addr).await.expect("connect"));
    let written = txn
        .commit(pb::CommitRequest {
            txn_id: txn_id(),
            reads: vec![],
            writes: vec![pb::Write {
                key: b"hello".to_vec(),
                op: Some(pb::write::Op::Put(b"world".to_vec())),
            }],
            durability: 0,
        })
        .await
        .expect("commit")
        .into_inner();
    assert!(matches!(
        written.outcome,
        Some(pb::commit_response::Outcome::Committed(_))
    ));

    // `trellis status` in both formats.
    let table = Command::new(trellis_bin())
        .args(["status", "--addr", &addr])
        .output()
        .expect("status runs");
    assert!(table.status.success());
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("primary") && table.lines().count() >= 5,
        "{table}"
    );
    let json = Command::new(trellis_bin())
        .args(["status", "--addr", &addr, "--format", "json"])
        .output()
        .expect("status runs");
    let json = String::from_utf8_lossy(&json.stdout);
    assert!(
        json.starts_with("{\"cluster\":\"")
            && json.contains("\"map_epoch\":1,")
            && json.contains("\"role\":\"primary\""),
        "{json}"
    );
    // Cannot connect: a clear error and a failing exit code.
    let down = Command::new(trellis_bin())
        .args(["status", "--addr", "127.0.0.1:1"])
        .output()
        .expect("status runs");
    assert!(!down.status.success());
    assert!(String::from_utf8_lossy(&down.stderr).contains("connecting to the coordinator"));

    // SIGTERM stops every child; the data stays.
    let metrics = cluster.field("metrics").to_string();
    assert!(cluster.terminate(), "trellis dev exits cleanly on SIGTERM");
    assert!(
        wait_gone(&pids, ORPHAN_TIMEOUT),
        "every child stopped with trellis dev"
    );

    let cluster = dev(dir.path());
    let addr = cluster.field("grpc").to_string();
    assert_eq!(
        cluster.field("metrics"),
        metrics,
        "the coordinator keeps its metrics port across runs"
    );
    let mut txn = pb::txn_client::TxnClient::new(channel(&addr).await.expect("connect"));
    let items = txn
        .get(pb::GetRequest {
            keys: vec![b"hello".to_vec()],
            consistency: None,
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner()
        .items;
    assert_eq!(items[0].value, b"world", "data kept between runs");

    // SIGKILL of trellis dev itself: the children notice and exit.
    let (pids, _) = member_pids(&addr).await;
    cluster.kill9();
    assert!(
        wait_gone(&pids, ORPHAN_TIMEOUT),
        "no orphans after trellis dev is killed"
    );
}

#[test]
fn dev_refuses_bad_flags_with_exit_code_2() {
    // Bad flags exit 2 like every bad flag, before anything is created.
    for (flag, value, says) in [
        ("--replicas", "9", "a group has 1 to 5 replicas"),
        ("--replicas", "0", "a group has 1 to 5 replicas"),
        ("--groups", "0", "1 to 64 shard groups"),
        ("--groups", "65", "1 to 64 shard groups"),
        (
            "--metrics-listen",
            "127.0.0.1:65500",
            "pick a port of at most",
        ),
    ] {
        let out = Command::new(trellis_bin())
            .args([
                "dev",
                flag,
                value,
                "--data-dir",
                "/nonexistent-never-created",
            ])
            .output()
            .expect("dev runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(says), "{flag} {value}: {stderr}");
    }
    assert!(!Path::new("/nonexistent-never-created").exists());
}

/// Starts `trellis dev` over `data` with one group of `replicas`, its
/// stderr (dev's own lines and its children's, at info) appended to `log`.
fn dev_logged(data: &Path, replicas: u32, extra: &[&str], log: &Path) -> Proc {
    let data = data.to_str().expect("utf-8 path");
    let replicas = replicas.to_string();
    let mut args = vec![
        "dev",
        "--insecure",
        "--data-dir",
        data,
        "--listen",
        "127.0.0.1:0",
        "--groups",
        "1",
        "--replicas",
        &replicas,
    ];
    args.extend(extra);
    Proc::start_logged(&args, &[("TRELLIS_LOG", "info")], Some(log)).expect("trellis dev starts")
}

fn read_log(log: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(log).expect("read dev's log")).into_owned()
}

/// Waits (bounded) for a line of dev's log containing every one of
/// `needles`; returns that line.
fn wait_for_line(log: &Path, needles: &[&str]) -> String {
    let deadline = Instant::now() + SUPERVISE_TIMEOUT;
    loop {
        let text = read_log(log);
        if let Some(line) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no line with {needles:?} in dev's log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Lines of dev's log that contain `needle`.
fn count_lines(log: &Path, needle: &str) -> usize {
    read_log(log).lines().filter(|l| l.contains(needle)).count()
}

/// The number after `pid ` in a line of dev's log.
fn pid_in(line: &str) -> u32 {
    line.split("pid ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"))
}

/// The `http://.../metrics` address in a line of dev's log.
fn metrics_in(line: &str) -> String {
    line.split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no metrics address in {line:?}"))
        .to_string()
}

async fn status(addr: &str) -> pb::StatusResponse {
    let mut admin = pb::admin_client::AdminClient::new(channel(addr).await.expect("connect"));
    admin
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

/// Commits one write, retrying (bounded) while the cluster recovers.
async fn commit_eventually(addr: &str, key: &[u8]) {
    let deadline = Instant::now() + COMMIT_RETRY_TIMEOUT;
    loop {
        let outcome = async {
            let mut txn = pb::txn_client::TxnClient::new(channel(addr).await.ok()?);
            txn.commit(pb::CommitRequest {
                txn_id: txn_id(),
                reads: vec![],
                writes: vec![pb::Write {
                    key: key.to_vec(),
                    op: Some(pb::write::Op::Put(b"v".to_vec())),
                }],
                durability: 0,
            })
            .await
            .ok()?
            .into_inner()
            .outcome
        }
        .await;
        if matches!(outcome, Some(pb::commit_response::Outcome::Committed(_))) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no commit through {addr} within {COMMIT_RETRY_TIMEOUT:?}: {outcome:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (bounded) until group 1 has `n` members.
async fn wait_members(addr: &str, n: usize) -> pb::StatusResponse {
    let deadline = Instant::now() + SUPERVISE_TIMEOUT;
    loop {
        let status = status(addr).await;
        if status.groups[0].members.len() == n {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "group 1 never had {n} members: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (bounded) until the coordinator lists a member of group 1 with `pid`.
async fn wait_member_pid(addr: &str, pid: u32) -> pb::StatusResponse {
    let deadline = Instant::now() + SUPERVISE_TIMEOUT;
    loop {
        let status = status(addr).await;
        if status.groups[0].members.iter().any(|m| m.pid == pid) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} never joined group 1: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_reports_a_killed_member_once_and_restarts_it() {
    // One group of two replicas. SIGKILL the backup: dev says so once, in
    // plain words, restarts it on its data with the same metrics port, and
    // it rejoins under a new pid; the cluster commits. Then SIGKILL the
    // coordinator: it comes back on the same address. All along, the
    // children's log lines reach dev's (redirected) stderr labelled with
    // the process that wrote them and without colour codes.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("dev.log");
    let cluster = dev_logged(&dir.path().join("data"), 2, &[], &log);
    let addr = cluster.field("grpc").to_string();
    commit_eventually(&addr, b"before").await;

    // dev is ready once the group has a primary; the backup may join later.
    let before = wait_members(&addr, 2).await;
    let backup = before.groups[0]
        .members
        .iter()
        .find(|m| m.role != "primary")
        .expect("a backup")
        .clone();
    let row = wait_for_line(
        &log,
        &[&format!("pid {:<7}", backup.pid), "metrics http://"],
    );
    assert!(signal_pid(backup.pid, libc::SIGKILL), "kill -9 the backup");

    let up = wait_for_line(&log, &["is up again, pid"]);
    assert!(up.starts_with("shard group 1 replica "), "{up}");
    std::thread::sleep(REPEAT_WATCH);
    let exits = read_log(&log)
        .lines()
        .filter(|l| l.contains(&format!("(pid {})", backup.pid)))
        .map(str::to_string)
        .collect::<Vec<_>>();
    assert_eq!(exits.len(), 1, "the exit is reported once: {exits:#?}");
    assert!(
        exits[0].ends_with("was killed by signal 9 (SIGKILL)"),
        "{}",
        exits[0]
    );
    assert_eq!(count_lines(&log, "restarting shard group 1 replica"), 1);
    assert_eq!(count_lines(&log, "(exited)"), 0);
    assert_eq!(metrics_in(&up), metrics_in(&row), "same metrics port");

    let new_pid = pid_in(&up);
    assert_ne!(new_pid, backup.pid);
    assert!(alive(new_pid));
    let after = wait_member_pid(&addr, new_pid).await;
    assert!(
        after.groups[0].members.iter().all(|m| m.pid != backup.pid),
        "the dead pid is gone: {after:?}"
    );
    commit_eventually(&addr, b"after-shard").await;

    // The coordinator: restarted on the same catalog and address.
    let coordinator = wait_for_line(&log, &["coordinator  pid"]);
    let coordinator_pid = pid_in(&coordinator);
    assert!(signal_pid(coordinator_pid, libc::SIGKILL));
    let up = wait_for_line(&log, &["coordinator is up again, pid"]);
    assert!(up.contains(&format!("grpc {addr}")), "{up}");
    assert_eq!(metrics_in(&up), cluster.field("metrics"));
    assert_eq!(
        count_lines(&log, &format!("coordinator (pid {coordinator_pid})")),
        1
    );
    commit_eventually(&addr, b"after-coordinator").await;

    // Logs: plain text, every child line labelled.
    let text = std::fs::read(&log).expect("read dev's log");
    assert!(!text.contains(&0x1b), "no ANSI escape in a redirected log");
    let text = String::from_utf8_lossy(&text);
    let serving: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("shard serving"))
        .collect();
    assert!(serving.len() >= 3, "two shards and one restart:\n{text}");
    assert!(
        serving
            .iter()
            .all(|l| l.starts_with("[g1r1] ") || l.starts_with("[g1r2] ")),
        "{serving:#?}"
    );
    let coordinators: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("coordinator serving"))
        .collect();
    assert_eq!(coordinators.len(), 2, "{text}");
    assert!(
        coordinators.iter().all(|l| l.starts_with("[coordinator] ")),
        "{coordinators:#?}"
    );
    assert!(cluster.terminate(), "trellis dev exits cleanly on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_with_no_restart_reports_once_and_leaves_the_member_down() {
    // --no-restart: a killed member is reported once and stays down.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("dev.log");
    let cluster = dev_logged(&dir.path().join("data"), 1, &["--no-restart"], &log);
    let addr = cluster.field("grpc").to_string();
    let shard = status(&addr).await.groups[0].members[0].pid;
    assert!(signal_pid(shard, libc::SIGKILL));
    wait_for_line(
        &log,
        &["not restarting shard group 1 replica 1 (--no-restart)"],
    );
    std::thread::sleep(REPEAT_WATCH);
    assert_eq!(count_lines(&log, &format!("(pid {shard})")), 1);
    assert_eq!(
        count_lines(&log, "restarting shard"),
        1,
        "only 'not restarting'"
    );
    assert_eq!(count_lines(&log, "is up again"), 0);
    assert!(alive(cluster.pid), "dev keeps running");
    assert!(cluster.terminate(), "trellis dev exits cleanly on SIGTERM");
}

/// A base port for `--metrics-listen` with `span` free ports from it, below
/// the kernel's range for port 0 (so no port picked at random lands there).
fn free_port_run(span: u16) -> u16 {
    let mut base = 20_000 + rand::random::<u16>() % 10_000;
    for _ in 0..100 {
        if (base..base + span).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
        base = 20_000 + rand::random::<u16>() % 10_000;
    }
    panic!("no {span} free ports in a row below 30000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_pins_metrics_ports_from_metrics_listen() {
    // --metrics-listen 127.0.0.1:P: the coordinator serves metrics on P,
    // group 1 replica r on P + r, and each answers /metrics there.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("dev.log");
    let base = free_port_run(3);
    let listen = format!("127.0.0.1:{base}");
    let cluster = dev_logged(
        &dir.path().join("data"),
        2,
        &["--metrics-listen", &listen],
        &log,
    );
    assert_eq!(cluster.field("metrics"), listen);
    for replica in 1..=2u16 {
        let row = wait_for_line(&log, &[&format!("g1r{replica} "), "metrics http://"]);
        let metrics = metrics_in(&row);
        assert_eq!(metrics, format!("127.0.0.1:{}", base + replica), "{row}");
        let page = http_get(&metrics, "/metrics").await;
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    }
    assert!(cluster.terminate(), "trellis dev exits cleanly on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_dev_on_the_same_directory_refuses_and_starts_nothing() {
    // A second dev on a directory in use fails at once, naming the first,
    // and leaves no coordinator of its own in the shared catalog.
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let log = dir.path().join("dev.log");
    let first = dev_logged(&data, 1, &[], &log);
    let addr = first.field("grpc").to_string();
    let coordinators = status(&addr).await.coordinators.len();

    let mut second = Command::new(trellis_bin())
        .args([
            "dev",
            "--insecure",
            "--listen",
            "127.0.0.1:0",
            "--groups",
            "1",
            "--replicas",
            "1",
        ])
        .arg("--data-dir")
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("second dev runs");
    let deadline = Instant::now() + SUPERVISE_TIMEOUT;
    let code = loop {
        if let Some(status) = second.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second dev on the same directory kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(
        second.stderr.as_mut().expect("stderr is piped"),
        &mut stderr,
    )
    .expect("read stderr");
    assert!(!code.success());
    assert!(
        stderr.contains(&format!(
            "another trellis dev (pid {}) is using {}",
            first.pid,
            data.canonicalize().expect("data dir").display()
        )),
        "{stderr}"
    );
    assert_eq!(
        status(&addr).await.coordinators.len(),
        coordinators,
        "no coordinator row from the second dev"
    );
    assert!(first.terminate(), "the first dev is unharmed");
}
