//! Bad flags are usage errors, the same way in every subcommand: the built
//! `trellis` binary, run with an unknown flag, a value of the wrong shape or
//! a number out of range, exits 2 with a message naming the flag on stderr
//! — before it connects to anything or starts anything. (`dev` and `status`
//! are checked by their own tests.)
//!
//! Nothing here needs a cluster: every case must fail while parsing. Port 1
//! on 127.0.0.1 stands for "nothing listens", so a case that wrongly got
//! past parsing fails fast with exit 1 rather than hanging.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use trellis_tests::harness::trellis_bin;

/// How long one run may take (parsing is immediate; this bounds a run that
/// wrongly went on, such as a shard retrying a coordinator that is not
/// there).
const RUN_TIMEOUT: Duration = Duration::from_secs(10);
/// clap's exit code for usage errors, and ours for bad values.
const EXIT_USAGE: i32 = 2;

struct Run {
    code: i32,
    stderr: String,
}

/// Runs `trellis ARGS`; a run that does not exit in time (it got past
/// parsing) is killed by its PID, which we started, and reported.
fn trellis(args: &[&str]) -> Run {
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(trellis_bin())
        .args(args)
        .env("TRELLIS_LOG", "warn")
        // A case that wrongly starts something writes only in here.
        .current_dir(scratch.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn trellis");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for trellis") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = reader.join().expect("stderr reader");
    Run {
        // A run that had to be killed is reported as exit code -1.
        code: status.and_then(|s| s.code()).unwrap_or(-1),
        stderr,
    }
}

#[test]
fn bad_flags_exit_2_with_a_message_in_every_subcommand() {
    // (arguments, a part of the message that names what is wrong)
    let cases: &[(&[&str], &str)] = &[
        // load: an address without a scheme was tried as a URL and exited
        // 1; now it is a Trellis address, and a wrong shape is a usage error.
        (
            &["load", "--target", "127.0.0.1", "--duration", "1s"],
            "--addr",
        ),
        (
            &["load", "--addr", "127.0.0.1:x", "--duration", "1s"],
            "--addr",
        ),
        (
            &["load", "--addr", "http://127.0.0.1:1", "--duration", "1s"],
            "`http://`",
        ),
        (
            &[
                "load",
                "--addr",
                "etcd://127.0.0.1:1,nope",
                "--duration",
                "1s",
            ],
            "`nope`",
        ),
        (&["load", "--vus", "many", "--duration", "1s"], "--vus"),
        // TLS: all three files or none, in every subcommand.
        (
            &["status", "--tls-ca", "ca.pem"],
            "--tls-cert and --tls-key missing",
        ),
        (
            &[
                "shard",
                "--data-dir",
                "d",
                "--tls-cert",
                "c.pem",
                "--tls-key",
                "k.pem",
            ],
            "--tls-ca missing",
        ),
        (
            &["load", "--duration", "1s", "--tls-key", "k.pem"],
            "--tls-ca and --tls-cert missing",
        ),
        (
            &[
                "cert",
                "create-ca",
                "--tls-ca",
                "a",
                "--tls-cert",
                "b",
                "--tls-key",
                "c",
            ],
            "takes no --tls-*",
        ),
        (&["load", "--duration", "1s", "--zipf", "1.5"], "--zipf"),
        (&["load", "--duration", "1s", "--workload", "w9"], "w9"),
        (&["load", "--duration", "soon"], "--duration"),
        (&["load", "--no-such-flag"], "--no-such-flag"),
        // sql
        (&["sql", "--addr", "localhost", "-c", "GET a"], "--addr"),
        (&["sql", "--format", "xml", "-c", "GET a"], "--format"),
        (&["sql", "--no-such-flag"], "--no-such-flag"),
        // bench
        (&["bench", "disk"], "possible values"),
        (&["bench", "storage", "--seconds", "0"], "--seconds"),
        (&["bench", "storage", "--keys", "0"], "--keys"),
        (&["bench", "txn", "--addr", "127.0.0.1"], "--addr"),
        (&["bench", "feed", "--rate", "0"], "--rate"),
        (&["bench", "storage", "--rate", "1000"], "bench feed"),
        // admin
        (&["admin", "transfer-primary", "--group", "0"], "--group"),
        (&["admin", "transfer-primary", "--group", "x"], "--group"),
        (
            &[
                "admin",
                "transfer-primary",
                "--group",
                "1",
                "--addr",
                "127.0.0.1:1",
                "--to",
                "nowhere",
            ],
            "--to",
        ),
        (&["admin", "transfer-primary"], "--group"),
        (
            &[
                "admin",
                "move-slots",
                "--from",
                "0",
                "--to",
                "2",
                "--slots",
                "1",
            ],
            "--from",
        ),
        (
            &["admin", "move-slots", "--from", "1", "--to", "2"],
            "--slots",
        ),
        (&["admin", "drain-group", "--group", "x"], "--group"),
        (&["admin", "rebalance", "--addr", "localhost"], "--addr"),
        (&["admin", "reshard", "list", "--format", "xml"], "--format"),
        (&["admin", "reshard", "pause", "--job", "x"], "--job"),
        // coordinator
        (
            &[
                "coordinator",
                "--catalog",
                "catalog.db",
                "--listen",
                "127.0.0.1:0",
            ],
            "--catalog",
        ),
        (
            &["coordinator", "--groups", "0", "--listen", "127.0.0.1:0"],
            "--groups",
        ),
        (&["coordinator", "--listen", "localhost"], "--listen"),
        // shard
        (
            &["shard", "--data-dir", "d", "--segment-bytes", "5"],
            "--segment-bytes",
        ),
        (
            &["shard", "--data-dir", "d", "--catch-up-bytes-per-sec", "5"],
            "--catch-up-bytes-per-sec",
        ),
        (
            &["shard", "--data-dir", "d", "--coordinator", "nowhere"],
            "--coordinator",
        ),
        (&["shard"], "--data-dir"),
        // the binary itself
        (&["no-such-command"], "no-such-command"),
    ];
    let mut wrong = Vec::new();
    for (args, needle) in cases {
        let run = trellis(args);
        if run.code != EXIT_USAGE || !run.stderr.contains(needle) {
            wrong.push(format!(
                "trellis {}: exit {} (want {EXIT_USAGE}), stderr should name {needle:?}:\n{}",
                args.join(" "),
                run.code,
                run.stderr
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn help_teaches_every_bench_kind() {
    // `trellis bench --help` described only the storage benchmark.
    let output = Command::new(trellis_bin())
        .args(["bench", "--help"])
        .output()
        .expect("run trellis bench --help");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "storage ",
        "txn ",
        "replication ",
        "feed ",
        "trellis bench feed --addr",
        "trellis bench storage --dir",
        "trellis bench txn --addr",
        "trellis bench replication",
    ] {
        assert!(help.contains(needle), "missing {needle:?} in:\n{help}");
    }
    // `trellis load --help` names --addr first and keeps --target.
    let output = Command::new(trellis_bin())
        .args(["load", "--help"])
        .output()
        .expect("run trellis load --help");
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        help.contains("--addr <ADDR|URL>") && help.contains("[alias: --target]"),
        "{help}"
    );
}
