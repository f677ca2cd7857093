//! `--log-format json` on real processes: a coordinator and a shard that
//! joins it write one JSON object per stderr line, the shard's lines carry
//! its `group` and `replica` (and its role change the `epoch`), the
//! coordinator's its id; `trellis dev` relays its children's JSON lines
//! whole, with the child's label as a field; a bad format exits 2.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use trellis_tests::harness::{Proc, trellis_bin};

/// How long a process may take to log what a test waits for.
const LOG_TIMEOUT: Duration = Duration::from_secs(60);
/// The message a replica logs when it becomes its group's primary.
const BECOMING_PRIMARY: &str = "becoming the group's primary";

fn read_lines(log: &Path) -> Vec<String> {
    String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default())
        .lines()
        .map(str::to_string)
        .collect()
}

/// Every line of `log` as JSON; panics, naming the line, at one that is not
/// a JSON object.
fn json_lines(log: &Path) -> Vec<Value> {
    read_lines(log)
        .iter()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(value) if value.is_object() => value,
            _ => panic!("not a JSON object line in {}: {line:?}", log.display()),
        })
        .collect()
}

/// Waits (bounded) until some line of `log` contains `needle`.
fn wait_for(log: &Path, needle: &str) {
    let deadline = Instant::now() + LOG_TIMEOUT;
    while !read_lines(log).iter().any(|l| l.contains(needle)) {
        assert!(
            Instant::now() < deadline,
            "no line with {needle:?} in {}:\n{}",
            log.display(),
            read_lines(log).join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of `key` in the line's spans (outermost first), if any has it.
fn span_field<'a>(line: &'a Value, key: &str) -> Option<&'a Value> {
    line["spans"]
        .as_array()?
        .iter()
        .find_map(|span| span.get(key))
}

#[test]
fn a_coordinator_and_a_shard_log_one_json_object_per_line_with_their_identity() {
    // A coordinator and one shard that joins it, both with --log-format
    // json at info. The shard becomes its group's primary (a role change,
    // logged with its epoch); then both stop cleanly. Every line either
    // wrote on stderr must be a JSON object with the usual fields, the
    // shard's must carry its group and its advertised address, and the
    // coordinator's its id.
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = format!("sqlite://{}", dir.path().join("catalog.db").display());
    let coordinator_log = dir.path().join("coordinator.log");
    let shard_log = dir.path().join("shard.log");
    let info = [("TRELLIS_LOG", "info")];
    let coordinator = Proc::start_logged(
        &[
            "coordinator",
            "--log-format",
            "json",
            "--catalog",
            &catalog,
            "--groups",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &info,
        Some(&coordinator_log),
    )
    .expect("coordinator starts");
    let shard_dir = dir.path().join("shard");
    let shard = Proc::start_logged(
        &[
            "shard",
            "--log-format",
            "json",
            "--data-dir",
            shard_dir.to_str().expect("utf-8 path"),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--group",
            "1",
            "--coordinator",
            coordinator.field("grpc"),
        ],
        &info,
        Some(&shard_log),
    )
    .expect("shard starts");
    let replica = shard.field("grpc").to_string();
    let coordinator_addr = coordinator.field("grpc").to_string();
    wait_for(&shard_log, BECOMING_PRIMARY);
    assert!(shard.terminate(), "the shard stops cleanly");
    assert!(coordinator.terminate(), "the coordinator stops cleanly");

    let shard_lines = json_lines(&shard_log);
    assert!(!shard_lines.is_empty(), "the shard logged at info");
    for line in &shard_lines {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(line.get(key).is_some(), "no {key} in {line}");
        }
        // The group from the first line (recovery runs before the address
        // is bound); the replica from the line that says it serves.
        assert_eq!(span_field(line, "group"), Some(&Value::from(1)), "{line}");
    }
    let serving_on = shard_lines
        .iter()
        .filter(|l| span_field(l, "replica").is_some())
        .collect::<Vec<_>>();
    assert!(
        !serving_on.is_empty(),
        "no shard line with a replica field: {shard_lines:?}"
    );
    for line in serving_on {
        assert_eq!(
            span_field(line, "replica"),
            Some(&Value::from(replica.as_str()))
        );
    }
    let promoted = shard_lines
        .iter()
        .find(|l| l["message"] == BECOMING_PRIMARY)
        .expect("the role change is logged");
    assert!(
        promoted["epoch"].as_u64().is_some_and(|e| e >= 1),
        "{promoted}"
    );
    assert_eq!(promoted["level"], "INFO");

    let coordinator_lines = json_lines(&coordinator_log);
    let with_id = coordinator_lines
        .iter()
        .filter_map(|l| span_field(l, "coordinator")?.as_str())
        .collect::<Vec<_>>();
    assert!(
        with_id
            .iter()
            .any(|id| id.starts_with(&format!("{coordinator_addr}/"))),
        "no coordinator line with its id ({coordinator_addr}/PID): {coordinator_lines:?}"
    );
}

#[test]
fn dev_relays_its_childrens_json_lines_whole_with_their_label() {
    // `trellis dev --log-format json` with one group of one replica: the
    // children log JSON, and dev's relay keeps each of their lines one JSON
    // object, the label a "process" field rather than a `[g1r1] ` prefix.
    // (dev's own messages for the person who started it stay plain text;
    // its own tracing events are JSON lines without a label.)
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("dev.log");
    let data = dir.path().join("data");
    let dev = Proc::start_logged(
        &[
            "dev",
            "--insecure",
            "--log-format",
            "json",
            "--data-dir",
            data.to_str().expect("utf-8 path"),
            "--listen",
            "127.0.0.1:0",
            "--groups",
            "1",
            "--replicas",
            "1",
        ],
        &[("TRELLIS_LOG", "info")],
        Some(&log),
    )
    .expect("trellis dev starts");
    wait_for(&log, BECOMING_PRIMARY);
    // dev installs its signal handlers before it prints READY, so a
    // SIGTERM this early still stops it cleanly.
    assert!(
        dev.terminate(),
        "dev stops cleanly on SIGTERM right after READY"
    );

    let lines = read_lines(&log);
    let relayed: Vec<Value> = lines
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| !l.starts_with("[g1r1]") && !l.starts_with("[coordinator]")),
        "a text-labelled line with json:\n{}",
        lines.join("\n")
    );
    // dev's own JSON lines (its tracing events) have no label.
    for label in relayed.iter().filter_map(|l| l.get("process")) {
        assert!(label == "g1r1" || label == "coordinator", "{label}");
    }
    assert!(
        relayed.iter().any(|l| l["process"] == "g1r1"
            && span_field(l, "group") == Some(&Value::from(1))
            && span_field(l, "replica").is_some()),
        "no relayed shard line with group and replica:\n{}",
        lines.join("\n")
    );
    assert!(relayed.iter().any(|l| l["process"] == "coordinator"));
}

#[test]
fn a_bad_log_format_is_a_usage_error() {
    // The flag's value is checked while parsing, like every flag: exit 2,
    // naming the accepted values, before anything starts; the same for
    // the environment variable.
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("never-created");
    let data = data.to_str().expect("utf-8 path");
    for (args, env) in [
        (
            vec!["shard", "--log-format", "xml", "--data-dir", data],
            None,
        ),
        (vec!["--log-format", "xml", "coordinator"], None),
        (vec!["dev", "--data-dir", data], Some("xml")),
    ] {
        let mut command = Command::new(trellis_bin());
        command.args(&args).env_remove("TRELLIS_LOG_FORMAT");
        if let Some(value) = env {
            command.env("TRELLIS_LOG_FORMAT", value);
        }
        let out = command.output().expect("trellis runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("'xml'") && stderr.contains("text, json"),
            "{args:?}: {stderr}"
        );
    }
    assert!(!Path::new(data).exists(), "nothing started");
    // Accepted, harmlessly, by a subcommand that runs no process.
    let out = Command::new(trellis_bin())
        .args(["status", "--log-format", "json", "--help"])
        .output()
        .expect("trellis runs");
    assert_eq!(out.status.code(), Some(0));
}
