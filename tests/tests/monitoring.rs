//! The shipped monitoring against a live cluster: `trellis dev` lists every
//! process in its Prometheus service-discovery file, each one listed serves
//! `/metrics`, and every metric that the alert rules
//! (`deploy/prometheus/alerts.yml`) and the dashboard
//! (`deploy/grafana/trellis.json`) name is served by at least one of them.
//! A rule or panel that names a metric nobody serves (a typo, a rename)
//! would never fire or would stay empty; this test fails instead.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use trellis_tests::harness::{Proc, http_get};

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

/// A value of the first series of `name` in a `/metrics` answer.
fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_dashboard_name_is_served_by_trellis_dev() {
    // A dev cluster of 2 groups of 3 replicas and a coordinator.
    let dir = tempfile::tempdir().expect("tempdir");
    let groups = GROUPS.to_string();
    let cluster = Proc::start(&[
        "dev",
        "--data-dir",
        dir.path().to_str().expect("utf-8 path"),
        "--listen",
        "127.0.0.1:0",
        "--groups",
        &groups,
    ])
    .expect("trellis dev starts");

    // Its service-discovery file lists every process, with its labels.
    let text = std::fs::read_to_string(dir.path().join(TARGETS_FILE))
        .expect("trellis dev writes the service-discovery file before READY");
    let targets: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let targets = targets.as_array().expect("a list of target groups");
    assert_eq!(targets.len(), 1 + GROUPS * REPLICAS, "{text}");
    let mut jobs: BTreeMap<String, usize> = BTreeMap::new();
    let mut served = BTreeSet::new();
    let mut serving_by_group: BTreeMap<String, f64> = BTreeMap::new();
    for target in targets {
        let labels = &target["labels"];
        let job = labels["job"].as_str().expect("a job label").to_string();
        *jobs.entry(job.clone()).or_default() += 1;
        let addrs = target["targets"].as_array().expect("targets");
        assert_eq!(addrs.len(), 1, "one address per process: {target}");
        let addr = addrs[0].as_str().expect("an address");
        if job == "trellis-coordinator" {
            assert_eq!(addr, cluster.field("metrics"), "the one dev prints");
        }

        // Each one answers a scrape.
        let answer = http_get(addr, "/metrics").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{addr}: {answer}");
        served.extend(served_names(&answer));
        if job == "trellis-shard" {
            let group = labels["group"].as_str().expect("a group label");
            assert!(labels["replica"].as_str().is_some(), "{target}");
            let serving = sample(&answer, "trellis_repl_serving").expect("trellis_repl_serving");
            *serving_by_group.entry(group.to_string()).or_default() += serving;
        }
    }
    assert_eq!(
        jobs,
        BTreeMap::from([
            ("trellis-coordinator".to_string(), 1),
            ("trellis-shard".to_string(), GROUPS * REPLICAS)
        ])
    );
    // What "a group without a serving primary" reads: one per group now.
    assert_eq!(
        serving_by_group,
        (1..=GROUPS).map(|g| (g.to_string(), 1.0)).collect(),
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
