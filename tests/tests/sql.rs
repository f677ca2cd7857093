//! `trellis sql` against a real cluster: scripted sessions through `-c`,
//! `-f` and standard input (a transfer in BEGIN/COMMIT, ROLLBACK, a conflict
//! between two shells, concurrent retried increments, `\status`, exit
//! codes), and one interactive session through a pseudo-terminal.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use trellis_tests::harness::{Cluster, trellis_bin};

/// How long one shell may take.
const SHELL_TIMEOUT: Duration = Duration::from_secs(60);

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `trellis sql --addr ADDR ARGS` with `stdin` as standard input.
fn sql(addr: &str, args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new(trellis_bin())
        .args(["sql", "--addr", addr])
        .args(args)
        .env("TRELLIS_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn trellis sql");
    let mut input = child.stdin.take().expect("stdin is piped");
    let text = stdin.to_string();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(text.as_bytes());
    });
    let (tx, rx) = mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = rx
        .recv_timeout(SHELL_TIMEOUT)
        .unwrap_or_else(|_| panic!("trellis sql (pid {pid}) did not finish in {SHELL_TIMEOUT:?}"))
        .expect("wait for trellis sql");
    writer.join().expect("stdin writer");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs and asserts success.
fn sql_ok(addr: &str, args: &[&str], stdin: &str) -> String {
    let run = sql(addr, args, stdin);
    assert_eq!(
        run.code, 0,
        "trellis sql {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    run.stdout
}

/// The value of `key` (TSV output: header line, then the value).
fn value(addr: &str, key: &str) -> Option<String> {
    let out = sql_ok(
        addr,
        &["-c", &format!("SELECT v FROM kv WHERE k = '{key}'")],
        "",
    );
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("v"), "{out}");
    lines.next().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_sessions() {
    let cluster = Cluster::start(3).await.expect("cluster");
    let addr = cluster.addr(0).to_string();
    let addr = addr.as_str();

    // -c (repeatable), several statements each; TSV when not a terminal.
    let out = sql_ok(
        addr,
        &[
            "-c",
            "INSERT INTO kv VALUES ('acct:1','100'), ('acct:2','50');",
            "-c",
            "UPSERT INTO kv VALUES ('user:a','x'), ('user:b','y'); PUT other 'z'",
        ],
        "",
    );
    assert_eq!(out, "INSERT 0 2\nUPSERT 2\nUPSERT 1\n");

    // A transfer inside BEGIN/COMMIT, from a file, with a multi-line
    // statement; the reads inside see the buffered writes.
    let dir = tempfile::tempdir().expect("tempdir");
    let transfer = dir.path().join("transfer.sql");
    std::fs::write(
        &transfer,
        "BEGIN;\n\
         UPDATE kv SET v = v - 30 WHERE k = 'acct:1';\n\
         UPDATE kv\n   SET v = v + 30\n WHERE k = 'acct:2';\n\
         SELECT k, v FROM kv WHERE k IN ('acct:1', 'acct:2');\n\
         COMMIT;\n",
    )
    .expect("write script");
    let path = transfer.to_str().expect("utf-8 path");
    let out = sql_ok(addr, &["-f", path], "");
    assert_eq!(
        out,
        "BEGIN\nUPDATE 1\nUPDATE 1\nk\tv\nacct:1\t70\nacct:2\t80\nCOMMIT\n"
    );
    assert_eq!(value(addr, "acct:1").as_deref(), Some("70"));
    assert_eq!(value(addr, "acct:2").as_deref(), Some("80"));

    // ROLLBACK through standard input: nothing of it is visible.
    let out = sql_ok(
        addr,
        &[],
        "BEGIN;\nUPDATE kv SET v = v - 1000 WHERE k = 'acct:1';\nDELETE FROM kv WHERE k = 'acct:2';\nGET acct:2;\nROLLBACK;\n",
    );
    assert_eq!(out, "BEGIN\nUPDATE 1\nDELETE 1\nv\nROLLBACK\n");
    assert_eq!(value(addr, "acct:1").as_deref(), Some("70"));
    assert_eq!(value(addr, "acct:2").as_deref(), Some("80"));

    // Prefix scan with LIMIT, version column, CSV and JSON.
    let out = sql_ok(
        addr,
        &[
            "--format",
            "csv",
            "-c",
            "SELECT k, v FROM kv WHERE k LIKE 'user:%' LIMIT 1",
        ],
        "",
    );
    assert_eq!(out, "k,v\nuser:a,x\n");
    let out = sql_ok(
        addr,
        &[
            "--format",
            "json",
            "-c",
            "SELECT k FROM kv WHERE k LIKE 'user:%'",
        ],
        "",
    );
    assert_eq!(out, "[{\"k\":\"user:a\"},{\"k\":\"user:b\"}]\n");
    let out = sql_ok(
        addr,
        &["-c", "SELECT version FROM kv WHERE k = 'other'"],
        "",
    );
    let version: u64 = out
        .lines()
        .nth(1)
        .expect("a row")
        .parse()
        .expect("a number");
    assert!(version > 0, "{out}");

    // \status prints the cluster table of `trellis status`.
    let out = sql_ok(addr, &["-c", "\\status"], "");
    assert!(out.contains("group  slots  address"), "{out}");
    assert_eq!(out.matches("primary").count(), 3, "{out}");

    // Errors: the first one stops the run with exit code 1.
    let run = sql(addr, &["-c", "PUT a '1'; SELEC v FROM kv; PUT b '2'"], "");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.stdout, "UPSERT 1\n");
    assert!(
        run.stderr.starts_with("ERROR: unknown keyword \"SELEC\""),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("CODE: 42601"), "{}", run.stderr);
    assert!(
        run.stderr.contains("LINE 1: SELEC v FROM kv\n        ^"),
        "{}",
        run.stderr
    );
    assert_eq!(
        value(addr, "b"),
        None,
        "statements after the error must not run"
    );

    let run = sql(addr, &["-c", "INSERT INTO kv VALUES ('acct:1', '5')"], "");
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("duplicate key"), "{}", run.stderr);
    assert!(run.stderr.contains("CODE: 23505"), "{}", run.stderr);

    let run = sql(
        addr,
        &["-c", "UPDATE kv SET v = v + 1 WHERE k = 'user:a'"],
        "",
    );
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("needs an integer value"),
        "{}",
        run.stderr
    );
    assert_eq!(value(addr, "user:a").as_deref(), Some("x"));

    let run = sql(addr, &["-c", "INSERT INTO kv VALUES ('k1')"], "");
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("wrong number of values"),
        "{}",
        run.stderr
    );

    let run = sql("127.0.0.1:1", &["-c", "GET a"], "");
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.starts_with("ERROR:"), "{}", run.stderr);
    assert!(
        run.stderr.contains("CODE: 08006")
            && run
                .stderr
                .contains("HINT: cannot reach the coordinator at 127.0.0.1:1"),
        "{}",
        run.stderr
    );

    // A conflict between two shells: A reads and writes inside BEGIN, B
    // commits a change to the same key, A's COMMIT aborts with the key and
    // a hint, and B's change stands.
    sql_ok(addr, &["-c", "PUT c '10'"], "");
    let mut a = Command::new(trellis_bin())
        .args(["sql", "--addr", addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shell A");
    let mut a_in = a.stdin.take().expect("stdin");
    let a_out = a.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(a_out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    a_in.write_all(b"BEGIN;\nUPDATE kv SET v = v + 1 WHERE k = 'c';\n")
        .expect("write to A");
    a_in.flush().expect("flush A");
    for expected in ["BEGIN", "UPDATE 1"] {
        let line = rx.recv_timeout(SHELL_TIMEOUT).expect("output of shell A");
        assert_eq!(line, expected);
    }
    assert_eq!(
        sql_ok(addr, &["-c", "UPDATE kv SET v = v + 100 WHERE k = 'c'"], ""),
        "UPDATE 1\n"
    );
    a_in.write_all(b"COMMIT;\n").expect("write COMMIT to A");
    drop(a_in);
    let out = a.wait_with_output().expect("shell A exits");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("ERROR: transaction aborted: conflict on 'c'"),
        "{stderr}"
    );
    assert!(stderr.contains("\nCODE: 40001"), "{stderr}");
    assert!(
        stderr.contains("\nHINT: another transaction changed 'c'"),
        "{stderr}"
    );
    assert!(stderr.contains("retry the transaction"), "{stderr}");
    assert_eq!(value(addr, "c").as_deref(), Some("110"));

    // Outside BEGIN each statement is its own transaction, retried as a
    // whole on conflicts: concurrent increments lose nothing.
    sql_ok(addr, &["-c", "PUT counter '0'"], "");
    let shells: Vec<_> = (0..4)
        .map(|_| {
            let addr = addr.to_string();
            std::thread::spawn(move || {
                let script = "UPDATE kv SET v = v + 1 WHERE k = 'counter';\n".repeat(10);
                sql_ok(&addr, &[], &script)
            })
        })
        .collect();
    for shell in shells {
        assert_eq!(shell.join().expect("shell thread"), "UPDATE 1\n".repeat(10));
    }
    assert_eq!(value(addr, "counter").as_deref(), Some("40"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_prompt_follows_the_transaction() {
    let cluster = Cluster::start(3).await.expect("cluster");
    let addr = cluster.addr(0).to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let history = dir.path().join("history");
    let mut command = Command::new(trellis_bin());
    command
        .args(["sql", "--addr", &addr])
        .env("TRELLIS_LOG", "warn")
        .env("TERM", "xterm")
        .env("TRELLIS_SQL_HISTORY", &history);
    let mut p = rexpect::session::spawn_command(command, Some(30_000)).expect("spawn in a pty");
    let idle = format!("trellis@{addr}=> ");
    let open = format!("trellis@{addr}=*> ");
    let failed = format!("trellis@{addr}=!> ");
    let more = format!("trellis@{addr}-> ");

    p.exp_string("Type \\? for help").expect("banner");
    p.exp_string(&idle).expect("idle prompt");
    p.send_line("BEGIN;").expect("send");
    p.exp_string("BEGIN").expect("BEGIN tag");
    p.exp_string(&open).expect("in-transaction prompt");
    p.send_line("PUT tty 'yes';").expect("send");
    p.exp_string("UPSERT 1").expect("tag");
    p.exp_string(&open).expect("still in the transaction");
    p.send_line("SELECT v").expect("send");
    p.exp_string(&more).expect("continuation prompt");
    p.send_line("FROM kv WHERE k = 'tty';").expect("send");
    p.exp_string("yes")
        .expect("the buffered write is read back");
    p.exp_string("(1 row)").expect("table footer on a terminal");
    p.exp_string(&open).expect("in-transaction prompt");
    p.send_line("SELEC;").expect("send");
    p.exp_string("ERROR: unknown keyword").expect("error");
    p.exp_string(&failed).expect("failed-transaction prompt");
    p.send_line("ROLLBACK;").expect("send");
    p.exp_string("ROLLBACK").expect("tag");
    p.exp_string(&idle).expect("idle prompt again");
    p.send_line("\\timing").expect("send");
    p.exp_string("Timing is on.").expect("timing");
    p.send_line("GET tty;").expect("send");
    p.exp_string("(0 rows)")
        .expect("the rolled-back write is gone");
    p.exp_string("Time: ").expect("timing line");
    p.exp_string(&idle).expect("idle prompt");
    p.send_line("\\q").expect("send");
    p.exp_eof().expect("exit on \\q");
    let saved = std::fs::read_to_string(&history).expect("history file");
    assert!(saved.contains("BEGIN;"), "{saved}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_keys_cut_scans_multi_line_text_and_a_lost_cluster() {
    // What a session says besides its rows: the keys of IN (...) that do
    // not exist, a scan cut at the default limit, text with a newline as
    // text in each format; and, when the cluster goes away mid-session,
    // the same hint as when it is not there at the start.
    let mut cluster = Cluster::start(2).await.expect("cluster");
    let addr = cluster.addr(0).to_string();
    let addr = addr.as_str();

    // IN keeps SQL's meaning (absent keys give no row, k when asked) and
    // names the absent keys on stderr; before, they vanished silently.
    sql_ok(addr, &["-c", "PUT a '1'; PUT b '2'"], "");
    let run = sql(
        addr,
        &["-c", "SELECT k, v FROM kv WHERE k IN ('a', 'zz', 'b')"],
        "",
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "k\tv\na\t1\nb\t2\n");
    assert!(
        run.stderr
            .contains("NOTICE: 1 key(s) of IN (...) do not exist")
            && run.stderr.contains("'zz'"),
        "{}",
        run.stderr
    );

    // A value with a newline, typed across two lines, prints as text: TSV
    // escapes it as COPY does, CSV quotes it, the table continues it with
    // psql's `+`. Before, it printed as hex.
    sql_ok(
        addr,
        &[],
        "UPSERT INTO kv VALUES ('ml', 'line 1\nline 2');\n",
    );
    let select = ["-c", "SELECT v FROM kv WHERE k = 'ml'"];
    assert_eq!(sql_ok(addr, &select, ""), "v\nline 1\\nline 2\n");
    let csv = [&["--format", "csv"][..], &select[..]].concat();
    assert_eq!(sql_ok(addr, &csv, ""), "v\n\"line 1\nline 2\"\n");
    let table = [&["--format", "table"][..], &select[..]].concat();
    assert_eq!(
        sql_ok(addr, &table, ""),
        "   v\n--------\n line 1+\n line 2\n(1 row)\n"
    );

    // A scan without LIMIT stops at 1,000 rows: TSV used to end there
    // without a word. Now stderr says so; a LIMIT the statement chose is
    // not reported.
    let rows: Vec<String> = (0..1001).map(|i| format!("('many:{i:04}', 'x')")).collect();
    sql_ok(
        addr,
        &["-c", &format!("UPSERT INTO kv VALUES {}", rows.join(", "))],
        "",
    );
    let run = sql(addr, &["-c", "SELECT k FROM kv WHERE k LIKE 'many:%'"], "");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout.lines().count(),
        1 + 1000,
        "header and 1,000 rows"
    );
    assert!(
        run.stderr
            .contains("NOTICE: more keys match than the 1000 row(s) shown"),
        "{}",
        run.stderr
    );
    let run = sql(
        addr,
        &["-c", "SELECT k FROM kv WHERE k LIKE 'many:%' LIMIT 5"],
        "",
    );
    assert_eq!(run.stdout.lines().count(), 1 + 5);
    assert!(!run.stderr.contains("NOTICE"), "{}", run.stderr);
    // A DELETE by that prefix would have deleted the first 1,000 keys and
    // said `DELETE 1000`; it is refused whole, and nothing is deleted.
    let run = sql(addr, &["-c", "DELETE FROM kv WHERE k LIKE 'many:%'"], "");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("CODE: 54000"), "{}", run.stderr);
    assert_eq!(value(addr, "many:0000").as_deref(), Some("x"));
    assert_eq!(value(addr, "many:1000").as_deref(), Some("x"));

    // The coordinator goes away mid-session. Two shells read statements
    // from a pipe and answer one each; the coordinator is killed (by its
    // PID). The one routed through the coordinator fails its next statement
    // as a lost connection (exit 2) with the hint of the start-up path, not
    // `server error (Unknown): transport error`. The one that routes
    // itself (the default) still reads: its read goes to the shard alone.
    let spawn_shell = |route: &str| {
        let mut shell = Command::new(trellis_bin())
            .args(["sql", "--addr", addr, "--route", route])
            .env("TRELLIS_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the shell");
        let mut input = shell.stdin.take().expect("stdin");
        let output = shell.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(output).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        input.write_all(b"GET a;\n").expect("write to the shell");
        input.flush().expect("flush");
        for expected in ["v", "1"] {
            let line = rx.recv_timeout(SHELL_TIMEOUT).expect("the shell answers");
            assert_eq!(line, expected, "route {route}");
        }
        (shell, input, rx)
    };
    let finish = |shell: std::process::Child| {
        let (done_tx, done_rx) = mpsc::channel();
        let pid = shell.id();
        std::thread::spawn(move || {
            let _ = done_tx.send(shell.wait_with_output());
        });
        done_rx
            .recv_timeout(SHELL_TIMEOUT)
            .unwrap_or_else(|_| {
                panic!("trellis sql (pid {pid}) did not finish in {SHELL_TIMEOUT:?}")
            })
            .expect("the shell exits")
    };
    let (via_coordinator, mut via_input, _via_lines) = spawn_shell("coordinator");
    let (direct, mut direct_input, direct_lines) = spawn_shell("direct");
    cluster.kill9_coordinator(0);
    direct_input
        .write_all(b"GET a;\n")
        .expect("write to the shell");
    drop(direct_input);
    let out = finish(direct);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in ["v", "1"] {
        let line = direct_lines
            .recv_timeout(SHELL_TIMEOUT)
            .expect("the direct shell reads without the coordinator");
        assert_eq!(line, expected);
    }
    via_input
        .write_all(b"GET a;\n")
        .expect("write to the shell");
    drop(via_input);
    let out = finish(via_coordinator);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("CODE: 08006"), "{stderr}");
    assert!(
        stderr.contains(&format!("HINT: cannot reach the coordinator at {addr}")),
        "{stderr}"
    );
    assert!(!stderr.contains("XX000"), "{stderr}");
}
