//! The shipped monitoring against a live cluster: `trellis dev` lists every
//! process in its Prometheus service-discovery file, each one listed serves
//! `/metrics`, and every metric that the alert rules
//! (`deploy/prometheus/alerts.yml`) and the dashboard
//! (`deploy/grafana/trellis.json`) name is served by at least one of them.
//! A rule or panel that names a metric nobody serves (a typo, a rename)
//! would never fire or would stay empty; this test fails instead. Every
//! scrape must also pass `promtool check metrics` (Prometheus' lint of
//! names, units and types). And the series that "a group without a serving
//! primary" reads tell a failover (a new primary serves) from a group
//! whose members are all killed. And a shard whose fsync fails stops, and
//! the series "a shard fail-stopped" reads say so, with the cause. A
//! shard started with `--metrics-recording off` counts nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use trellis_proto::v1 as pb;
use trellis_tests::cluster::TestCluster;
use trellis_tests::harness::{
    Proc, RPC_TIMEOUT, channel, http_get, metric_sample, shard_client, signal_pid, txn_id,
    wait_gone,
};

/// Shard groups of the dev cluster (with dev's default 3 replicas each).
const GROUPS: usize = 2;
/// Replicas per group that `trellis dev` starts by default.
const REPLICAS: usize = 3;
/// The service-discovery file `trellis dev` writes in its data directory.
const TARGETS_FILE: &str = "prometheus-targets.json";
/// Prefix of every Trellis metric; recording rules (`trellis:...`) do not
/// have it.
const METRIC_PREFIX: &str = "trellis_";
/// Suffixes of a histogram's series, after its family name.
const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];
/// How long a group may take to have a serving primary again after its
/// primary is killed (a failover takes about 2 s).
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the replicas are scraped while waiting for a failover.
const FAILOVER_POLL: Duration = Duration::from_millis(200);
/// How long a SIGKILLed process may take to be gone.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a shard whose fsync fails may take to stop by itself (it
/// notes the cause and tells its coordinator first, 2 s at most each).
const FAIL_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The causes of a fail-stop, the `cause` label's values.
const FAIL_STOP_CAUSES: [&str; 3] = ["fsync", "disk_full", "io"];

/// One process listed in the service-discovery file.
struct Target {
    job: String,
    /// A shard's group label.
    group: Option<String>,
    /// Its metrics address.
    addr: String,
}

/// Reads the service-discovery file `trellis dev` wrote in `dir`, checking
/// its shape: one address per target group, a `job` label, and a shard's
/// `group` and `replica` labels.
fn read_targets(dir: &Path) -> Vec<Target> {
    let text = std::fs::read_to_string(dir.join(TARGETS_FILE))
        .expect("trellis dev writes the service-discovery file before READY");
    let targets: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    targets
        .as_array()
        .expect("a list of target groups")
        .iter()
        .map(|target| {
            let labels = &target["labels"];
            let job = labels["job"].as_str().expect("a job label").to_string();
            let addrs = target["targets"].as_array().expect("targets");
            assert_eq!(addrs.len(), 1, "one address per process: {target}");
            let group = labels["group"].as_str().map(str::to_string);
            if job == "trellis-shard" {
                assert!(group.is_some(), "a shard has a group label: {target}");
                assert!(labels["replica"].as_str().is_some(), "{target}");
            }
            Target {
                job,
                group,
                addr: addrs[0].as_str().expect("an address").to_string(),
            }
        })
        .collect()
}

/// Scrapes `addr`: the `/metrics` answer, or `None` if nothing listens
/// there any more (Prometheus' `up == 0`).
async fn scrape(addr: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .ok()?;
    let mut out = String::new();
    tokio::time::timeout(RPC_TIMEOUT, stream.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(out)
}

/// What TrellisGroupWithoutPrimary computes, over one scrape of every
/// shard: `count by (group) (up) unless on (group) (max by (group)
/// (trellis_repl_serving) == 1)` — the groups listed, less those with a
/// replica that serves. Also returns how many replicas serve per group.
async fn groups_without_primary(targets: &[Target]) -> (BTreeSet<String>, BTreeMap<String, u32>) {
    let mut listed = BTreeSet::new();
    let mut serving: BTreeMap<String, u32> = BTreeMap::new();
    for target in targets.iter().filter(|t| t.job == "trellis-shard") {
        let group = target.group.clone().expect("a shard has a group");
        listed.insert(group.clone());
        let Some(answer) = scrape(&target.addr).await else {
            continue;
        };
        if metric_sample(&answer, "trellis_repl_serving") == Some(1.0) {
            *serving.entry(group).or_default() += 1;
        }
    }
    let without = listed
        .into_iter()
        .filter(|g| !serving.contains_key(g))
        .collect();
    (without, serving)
}

/// Starts `trellis dev` with `groups` groups in `dir` (and `extra` flags).
fn dev(dir: &Path, groups: usize, extra: &[&str]) -> Proc {
    let groups = groups.to_string();
    let mut args = vec![
        "dev",
        "--insecure",
        "--data-dir",
        dir.to_str().expect("utf-8 path"),
        "--listen",
        "127.0.0.1:0",
        "--groups",
        &groups,
    ];
    args.extend_from_slice(extra);
    Proc::start(&args).expect("trellis dev starts")
}

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

/// Every `trellis_...` identifier in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
            continue;
        }
        if word.starts_with(METRIC_PREFIX) {
            names.insert(std::mem::take(&mut word));
        }
        word.clear();
    }
    names
}

/// The `expr:` values of a Prometheus rule file, block scalars (`expr: |`)
/// included: the lines below it indented deeper than the key.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    let mut at = 0;
    while at < lines.len() {
        let line = lines[at];
        at += 1;
        let Some(value) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if !value.starts_with(['|', '>']) {
            exprs.push(value.to_string());
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let mut block = String::new();
        while at < lines.len() {
            let next = lines[at];
            if !next.trim().is_empty() && next.len() - next.trim_start().len() <= indent {
                break;
            }
            block.push_str(next);
            block.push('\n');
            at += 1;
        }
        exprs.push(block);
    }
    exprs
}

/// The queries of a Grafana dashboard: every `expr` of a panel target and
/// every variable's `definition`, wherever they are nested.
fn dashboard_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "definition", serde_json::Value::String(expr)) => {
                        out.push(expr.clone())
                    }
                    _ => dashboard_exprs(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// The metric names a `/metrics` answer shows: every family (`# TYPE`),
/// with or without series, and every series name.
fn served_names(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter_map(|line| match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split_whitespace().next(),
            None if line.starts_with(METRIC_PREFIX) => line.split(['{', ' ']).next(),
            None => None,
        })
        .map(str::to_string)
        .collect()
}

/// Whether `name`, as an expression uses it, is served: itself, or the
/// histogram family it is a series of.
fn is_served(name: &str, served: &BTreeSet<String>) -> bool {
    served.contains(name)
        || HISTOGRAM_SUFFIXES
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .any(|family| served.contains(family))
}

#[test]
fn the_names_checker_reads_rules_and_dashboards_and_can_fail() {
    let yaml = "    - alert: A\n      expr: |\n        sum by (group) (rate(trellis_a_total[5m]))\n        > scalar(trellis:a:bound)\n      for: 1m\n    - record: trellis:a:bound\n      expr: vector(3)\n    - alert: B\n      expr: trellis_b{job=\"trellis-shard\"} == 0\n";
    let names: BTreeSet<String> = rule_exprs(yaml)
        .iter()
        .flat_map(|e| metric_names(e))
        .collect();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["trellis_a_total", "trellis_b"]
    );
    let served = served_names(
        "# HELP trellis_h_seconds x\n# TYPE trellis_h_seconds histogram\n\
         trellis_h_seconds_bucket{le=\"+Inf\"} 1\n# TYPE trellis_g gauge\ntrellis_c_total 3\n",
    );
    assert!(is_served("trellis_h_seconds_bucket", &served));
    assert!(is_served("trellis_g", &served), "a family without series");
    assert!(is_served("trellis_c_total", &served));
    assert!(!is_served("trellis_c", &served));
    assert!(!is_served("trellis_no_such_metric", &served));
}

/// Lints one scrape (`answer`: the whole HTTP response) with `promtool
/// check metrics`, as Prometheus' own tooling reads the text format: names,
/// units, `_total` on counters, HELP and TYPE lines. In CI (`CI` set)
/// promtool must be there (`.ci/promtool` installs it); elsewhere a run
/// without it says that this check was not made.
fn promtool_check_metrics(addr: &str, answer: &str) {
    use std::io::Write;
    let body = answer
        .split_once("\r\n\r\n")
        .map_or(answer, |(_, body)| body);
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool is not installed; .ci/promtool installs it in CI"
            );
            eprintln!("promtool not found: `promtool check metrics` not run for {addr}");
            return;
        }
        Err(err) => panic!("promtool: {err}"),
    };
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(body.as_bytes())
        .expect("feeding promtool");
    let out = child.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool check metrics on {addr}'s scrape: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_dashboard_name_is_served_by_trellis_dev() {
    // A dev cluster of 2 groups of 3 replicas and a coordinator.
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = dev(dir.path(), GROUPS, &[]);

    // Its service-discovery file lists every process, with its labels.
    let targets = read_targets(dir.path());
    let mut jobs: BTreeMap<&str, usize> = BTreeMap::new();
    for target in &targets {
        *jobs.entry(target.job.as_str()).or_default() += 1;
        if target.job == "trellis-coordinator" {
            assert_eq!(target.addr, cluster.field("metrics"), "the one dev prints");
        }
    }
    assert_eq!(
        jobs,
        BTreeMap::from([
            ("trellis-coordinator", 1),
            ("trellis-shard", GROUPS * REPLICAS)
        ])
    );

    // Each one answers a scrape.
    let mut served = BTreeSet::new();
    for target in &targets {
        let answer = http_get(&target.addr, "/metrics").await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "{}: {answer}",
            target.addr
        );
        served.extend(served_names(&answer));
        promtool_check_metrics(&target.addr, &answer);
    }
    // What "a group without a serving primary" reads: one per group now.
    let (without, serving) = groups_without_primary(&targets).await;
    assert!(without.is_empty(), "{without:?}");
    assert_eq!(
        serving,
        (1..=GROUPS).map(|g| (g.to_string(), 1)).collect(),
        "exactly one serving replica per group"
    );

    // Every metric the rules and the dashboard name is served.
    let rules = std::fs::read_to_string(deploy("prometheus/alerts.yml")).expect("alerts.yml");
    let rule_exprs = rule_exprs(&rules);
    assert_eq!(
        rule_exprs.len(),
        rules.matches("- alert:").count() + rules.matches("- record:").count(),
        "one expression read per rule"
    );
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/trellis.json")).expect("trellis.json"),
    )
    .expect("the dashboard is valid JSON");
    let mut dashboard_queries = Vec::new();
    dashboard_exprs(&dashboard, &mut dashboard_queries);
    for (file, exprs) in [
        ("alerts.yml", &rule_exprs),
        ("trellis.json", &dashboard_queries),
    ] {
        let named: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
        assert!(!named.is_empty(), "{file}: no metric names read");
        let missing: Vec<&String> = named.iter().filter(|n| !is_served(n, &served)).collect();
        assert!(
            missing.is_empty(),
            "{file} names metrics no process serves: {missing:?}"
        );
    }

    assert!(cluster.terminate(), "trellis dev exits cleanly on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_whose_members_are_all_killed_is_without_a_primary_a_failover_is_not() {
    // A dev cluster of 2 groups of 3 replicas that does not restart what
    // dies. Group 1's primary is SIGKILLed again and again: after each of
    // the first two kills a backup takes over and exactly one replica of
    // the group serves again (no alert); once the third is killed, the
    // alert's expression names group 1, and only group 1.
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = dev(dir.path(), GROUPS, &["--no-restart"]);
    let targets = read_targets(dir.path());
    let mut admin =
        pb::admin_client::AdminClient::new(channel(cluster.field("grpc")).await.expect("connect"));
    let mut killed = Vec::new();
    let mut settle_deadline = Instant::now() + FAILOVER_TIMEOUT;
    loop {
        // Wait until group 1 serves again, or no member of it can.
        let deadline = Instant::now() + FAILOVER_TIMEOUT;
        let (without, serving) = loop {
            let (without, serving) = groups_without_primary(&targets).await;
            let none_left = killed.len() == REPLICAS;
            if !without.contains("1") || none_left || Instant::now() > deadline {
                break (without, serving);
            }
            tokio::time::sleep(FAILOVER_POLL).await;
        };
        assert!(!without.contains("2"), "group 2 is untouched: {serving:?}");
        if without.contains("1") {
            break;
        }
        assert_eq!(serving.get("1"), Some(&1), "one primary serves");
        assert!(
            killed.len() < REPLICAS,
            "group 1 serves with every member killed: {serving:?}"
        );

        // Kill the member the coordinator sees as group 1's primary, once
        // every member left is in sync: a backup still joining (a learner)
        // may never be promoted, and the group would be without a primary
        // before its last member is killed.
        let status = admin
            .status(pb::StatusRequest {})
            .await
            .expect("status")
            .into_inner();
        let group = status
            .groups
            .iter()
            .find(|g| g.group_id == 1)
            .expect("group 1 in the status");
        let left: Vec<&pb::MemberStatus> = group
            .members
            .iter()
            .filter(|m| !killed.contains(&m.pid))
            .collect();
        let primary = left.iter().find(|m| m.role == "primary");
        let settled = left
            .iter()
            .all(|m| m.in_sync && (m.role == "primary" || m.role == "backup"));
        let Some(primary) = primary.filter(|_| settled) else {
            assert!(
                Instant::now() < settle_deadline,
                "group 1 does not settle: {group:?}"
            );
            tokio::time::sleep(FAILOVER_POLL).await;
            continue;
        };
        assert!(
            signal_pid(primary.pid, libc::SIGKILL),
            "kill {}",
            primary.pid
        );
        assert!(
            wait_gone(&[primary.pid], KILL_TIMEOUT),
            "{} is gone",
            primary.pid
        );
        killed.push(primary.pid);
        settle_deadline = Instant::now() + FAILOVER_TIMEOUT;
    }
    assert_eq!(
        killed.len(),
        REPLICAS,
        "a backup took over after each kill until none was left"
    );
    let (without, serving) = groups_without_primary(&targets).await;
    assert_eq!(
        without,
        BTreeSet::from(["1".to_string()]),
        "after {} kills: {serving:?}",
        killed.len()
    );
    assert_eq!(serving.get("2"), Some(&1), "group 2 still has its primary");

    assert!(cluster.terminate(), "trellis dev exits cleanly on SIGTERM");
}

/// The coordinator's series of fail-stops of replica `addr` of `group`.
fn fail_stops_series(group: u32, addr: &str, cause: &str) -> String {
    format!(
        "trellis_shard_fail_stops_total{{group=\"{group}\",replica=\"{addr}\",cause=\"{cause}\"}}"
    )
}

/// Now, in Unix seconds.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_whose_fsync_fails_stops_and_the_metrics_say_why() {
    // A coordinator and one shard. The coordinator serves the shard's
    // fail-stop series at 0, for every cause, before anything happened.
    // The shard is restarted with its log's fdatasync failing (the
    // nemesis' failpoint): it fail-stops, and the coordinator's count for
    // that replica and cause `fsync` (and only that one) is 1. Restarted
    // without the fault, the replica exports the fail-stop it noted in
    // its data directory: cause `fsync`, at a time between the injection
    // and now.
    let mut cluster = TestCluster::start(1).await.expect("cluster starts");
    let coordinator = cluster.coordinator(0).field("metrics").to_string();
    let replica = cluster
        .shard(1, 1)
        .expect("shard 1")
        .field("grpc")
        .to_string();
    let before = scrape(&coordinator).await.expect("the coordinator answers");
    for cause in FAIL_STOP_CAUSES {
        assert_eq!(
            metric_sample(&before, &fail_stops_series(1, &replica, cause)),
            Some(0.0),
            "{cause}: {before}"
        );
    }

    let injected = unix_now();
    let registrar = cluster.addr(0).to_string();
    cluster.kill9_shard(1, 1);
    cluster
        .start_shard(
            1,
            1,
            &registrar,
            &[(
                "TRELLIS_FAILPOINTS",
                trellis_shard::failpoint::WAL_SYNC_ERROR,
            )],
        )
        .expect("the sick shard starts");
    let sick = cluster.shard(1, 1).expect("shard 1").pid;
    assert_eq!(
        cluster.shard(1, 1).expect("shard 1").field("grpc"),
        replica,
        "a restarted replica keeps its address"
    );
    // A write makes it sync, if becoming primary did not already.
    let mut txn = cluster.txn(0).await.expect("txn client");
    let _ = txn
        .commit(pb::CommitRequest {
            txn_id: txn_id(),
            reads: vec![],
            writes: vec![pb::Write {
                key: b"k".to_vec(),
                op: Some(pb::write::Op::Put(b"v".to_vec())),
            }],
            durability: 0,
        })
        .await;
    assert!(
        wait_gone(&[sick], FAIL_STOP_TIMEOUT),
        "a shard whose fsync failed stops by itself"
    );

    let after = scrape(&coordinator).await.expect("the coordinator answers");
    for cause in FAIL_STOP_CAUSES {
        let expected = if cause == "fsync" { 1.0 } else { 0.0 };
        assert_eq!(
            metric_sample(&after, &fail_stops_series(1, &replica, cause)),
            Some(expected),
            "{cause}: {after}"
        );
    }

    cluster.restart_shard(1).await.expect("restarts clean");
    let shard = scrape(cluster.shard(1, 1).expect("shard 1").field("metrics"))
        .await
        .expect("the restarted shard answers");
    let noted = metric_sample(
        &shard,
        "trellis_shard_last_fail_stop_timestamp_seconds{cause=\"fsync\"}",
    )
    .unwrap_or_else(|| panic!("the restarted replica exports its fail-stop: {shard}"));
    assert!(
        noted >= injected.floor() && noted <= unix_now(),
        "noted at {noted}, injected at {injected}"
    );
    assert_eq!(
        shard
            .lines()
            .filter(|l| l.starts_with("trellis_shard_last_fail_stop_timestamp_seconds{"))
            .count(),
        1,
        "one cause, the last: {shard}"
    );
    // The coordinator's count outlives the replica's restart.
    let later = scrape(&coordinator).await.expect("the coordinator answers");
    assert_eq!(
        metric_sample(&later, &fail_stops_series(1, &replica, "fsync")),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_off_counts_nothing_and_still_serves_metrics() {
    // Two standalone shards take the same ten writes, one started with
    // `--metrics-recording off`. The one that records counts the commits,
    // the fsyncs and the fsync latencies; the one that does not shows
    // every one of them at 0, while its /metrics still answers with every
    // family (and with what a scrape computes: it serves).
    const WRITES: u64 = 10;
    let mut scraped = Vec::new();
    for mode in ["on", "off"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = Proc::start(&[
            "shard",
            "--data-dir",
            dir.path().to_str().expect("utf-8 path"),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--metrics-recording",
            mode,
        ])
        .expect("shard starts");
        let mut client = shard_client(&shard).await.expect("connect");
        for i in 0..WRITES {
            client
                .commit_local(trellis_proto::shard::v1::CommitLocalRequest {
                    durability: 0,
                    map_epoch: 1,
                    txn_id: txn_id(),
                    reads: vec![],
                    writes: vec![trellis_proto::shard::v1::WriteOp {
                        key: format!("k{i}").into_bytes(),
                        value: b"v".to_vec(),
                        delete: false,
                    }],
                })
                .await
                .expect("commit");
        }
        let body = scrape(shard.field("metrics")).await.expect("it answers");
        assert!(shard.terminate(), "SIGTERM exits cleanly");
        scraped.push((mode, body));
    }
    for (mode, body) in &scraped {
        let value = |name: &str| {
            metric_sample(body, name).unwrap_or_else(|| panic!("{mode}: no {name}: {body}"))
        };
        let counted = [
            value("trellis_shard_commits_local_total"),
            value("trellis_wal_fsyncs_total"),
            value("trellis_wal_fsync_seconds_count"),
            value("trellis_shard_keys"),
        ];
        assert_eq!(
            value("trellis_repl_serving"),
            1.0,
            "{mode}: computed at scrape time"
        );
        if *mode == "on" {
            assert_eq!(counted[0], WRITES as f64, "{body}");
            assert!(counted[1..].iter().all(|v| *v > 0.0), "{body}");
        } else {
            assert_eq!(counted, [0.0; 4], "recording off counted: {body}");
        }
    }
}
