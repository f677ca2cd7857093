//! `trellis dev`: a whole local cluster from one command, and its
//! supervisor. The coordinator and every shard run as separate child
//! processes, so any one can be killed to watch what happens.
//!
//! - **Supervision.** A member that exits is reported once, in plain words,
//!   and restarted on its own data directory with the same flags and
//!   addresses after an exponential backoff. One that keeps failing at once
//!   is given up on after [`QUICK_FAILURES_MAX`] quick failures, never
//!   restarted forever. `--no-restart` only reports.
//! - **Logs.** Every child's stderr is relayed line by line, each line
//!   labelled with the process that wrote it (`[g2r1]`, `[coordinator]`).
//!   Children colour their logs only when dev's own stderr is a terminal.
//!   Children log in dev's `--log-format`; with `json` the label is a
//!   `"process"` field of each JSON line instead (dev's own lines, for the
//!   person who started it, stay plain text).
//! - **One dev per data directory.** An exclusive lock on
//!   `<data-dir>/dev.lock` is taken before anything starts and held for the
//!   life of dev; a second dev refuses without starting anything.
//! - **Stable addresses.** gRPC ports are kept by the children themselves
//!   (the coordinator's is `--listen`, a shard remembers its own); metrics
//!   ports are pinned by `--metrics-listen` or remembered in
//!   `<data-dir>/metrics.ports`.
//! - **Prometheus service discovery.** Every member's metrics address, with
//!   its `job`, `group` and `replica` labels, is written to
//!   `<data-dir>/prometheus-targets.json` (Prometheus `file_sd` format)
//!   once the cluster is up, and again whenever an address changes.
//! - **The catalog decides the groups.** dev runs the replicas of every
//!   group in the coordinator's catalog (`--groups` only creates it). While
//!   it runs it asks the coordinator's Status every
//!   [`GROUP_POLL_INTERVAL`]; once two answers in a row agree, it starts the
//!   replicas of a group it does not run (added by `trellis dev add-group`,
//!   the [`add_group`] module, or `trellis admin add-group`) and stops
//!   those of a group the catalog no longer has (SIGTERM, SIGKILL after
//!   [`STOP_GRACE`]).
//! - **Found by its data directory.** Once the cluster is up dev writes its
//!   READY fields, `--replicas` and how it runs TLS to
//!   `<data-dir>/dev.ready`, which `trellis dev add-group` and the tools
//!   read while `dev.lock` shows dev running.
//! - **TLS by default.** Without `--tls-*` flags dev runs mutual TLS with
//!   a CA and certificates of its own in `<data-dir>/tls`, made on the
//!   first start (the [`certs`] module, which also holds the rule by which
//!   the tools find them); `--insecure` runs plaintext and says so loudly.
//!
//! Children leave with `trellis dev`: SIGTERM on Ctrl-C, and by themselves
//! (`--exit-with-parent`) if it is killed. Dev never touches a member's data.

mod add_group;
pub(crate) mod certs;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a child may take to print its READY line.
const CHILD_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long every group may take to register with the coordinator.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long children get to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How often a child told to stop is checked for having exited.
const STOP_POLL: Duration = Duration::from_millis(20);
/// How often the coordinator's status is asked while waiting for every
/// group to register.
const REGISTER_POLL: Duration = Duration::from_millis(100);
/// How often the supervisor checks its children (and how late a restart
/// may be past its backoff).
const SUPERVISE_INTERVAL: Duration = Duration::from_millis(100);
/// Wait before the first restart of a member that exited.
const RESTART_BACKOFF_FIRST: Duration = Duration::from_millis(500);
/// The backoff doubles with each quick failure up to this cap.
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// An exit this soon after a member came up (or a failure to come up at
/// all) is a quick failure; a member that ran longer starts over at
/// [`RESTART_BACKOFF_FIRST`].
const QUICK_FAILURE_WINDOW: Duration = Duration::from_secs(10);
/// Consecutive quick failures after which a member is given up on: with
/// the backoff above, about 35 s of retrying (0.5, 1, 2, 4, 8, 10, 10 s).
const QUICK_FAILURES_MAX: u32 = 8;
const _: () = assert!(RESTART_BACKOFF_FIRST.as_millis() <= RESTART_BACKOFF_MAX.as_millis());
const _: () = assert!(SUPERVISE_INTERVAL.as_millis() < RESTART_BACKOFF_FIRST.as_millis());
// The cap matters: the backoff reaches it before the member is given up on.
const _: () = assert!(
    RESTART_BACKOFF_FIRST.as_millis() << (QUICK_FAILURES_MAX - 2)
        >= RESTART_BACKOFF_MAX.as_millis()
);
/// Longest child log line relayed as one line; a longer one is relayed in
/// pieces of this size, each labelled.
const LOG_LINE_BYTES_MAX: usize = 16 * 1024;
/// Most shard groups `trellis dev` starts.
const DEV_GROUPS_MAX: u32 = 64;
/// Most replicas per group.
const DEV_REPLICAS_MAX: u32 = 5;
/// Metrics ports above a pinned `--metrics-listen` port that shards use:
/// group g replica r gets `PORT + (g - 1) * DEV_REPLICAS_MAX + r`.
const METRICS_PORT_SPAN: u32 = DEV_GROUPS_MAX * DEV_REPLICAS_MAX;
const _: () = assert!(METRICS_PORT_SPAN < u16::MAX as u32);
/// The lock file that makes a data directory one dev's, holding its pid.
const LOCK_FILE: &str = "dev.lock";
/// Where a running dev, once its cluster is up, leaves the fields of its
/// READY line and its `--replicas` (`KEY=VALUE ...`) for
/// `trellis dev add-group`; removed when dev stops.
const READY_FILE: &str = "dev.ready";
/// What dev says, at its start and in its banner, when it runs plaintext.
const INSECURE_WARNING: &str = "WARN --insecure: this dev cluster runs in plaintext: anyone who \
    can reach its ports can read and write every key and run admin commands";
/// How often the running dev asks the coordinator which groups the catalog
/// has.
const GROUP_POLL_INTERVAL: Duration = Duration::from_secs(1);
const _: () = assert!(SUPERVISE_INTERVAL.as_millis() < GROUP_POLL_INTERVAL.as_millis());
/// Where metrics ports picked on a first run are remembered
/// (`LABEL PORT` per line).
const METRICS_PORTS_FILE: &str = "metrics.ports";
/// Label of the coordinator, in logs and in `metrics.ports`.
const COORDINATOR_LABEL: &str = "coordinator";
/// The Prometheus file-based service-discovery file: every member's metrics
/// address and labels (`deploy/prometheus/prometheus.yml` reads it).
const PROMETHEUS_TARGETS_FILE: &str = "prometheus-targets.json";
/// Prometheus `job` label of the coordinator's metrics.
const JOB_COORDINATOR: &str = "trellis-coordinator";
/// Prometheus `job` label of every shard replica's metrics.
const JOB_SHARD: &str = "trellis-shard";

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
#[command(after_help = "\
Starts one coordinator (SQLite catalog in the data directory) and --replicas
shard processes per group (one primary, the rest backups), waits until every
group has a primary, and prints where to connect. Data is kept between runs:
start it again with the same --data-dir and everything is still there; to
start from scratch, stop dev and delete the directory
(rm -rf ./trellis-dev-data). Ctrl-C (or SIGTERM) stops every child cleanly;
if `trellis dev` itself is killed, its children notice and exit.

dev supervises its children: one that exits is reported once and restarted
on its own data, with the same addresses, after a backoff (0.5 s doubling
to 10 s); one that fails 8 times in a row within 10 s of starting is given
up on. --no-restart only reports. Every child's log line is relayed to
stderr labelled with the process that wrote it: [coordinator], [g2r1]
(group 2 replica 1); TRELLIS_LOG=info shows more (default: warn), and logs
are coloured only on a terminal without NO_COLOR. With --log-format json the
children log JSON lines and the label is their `process` field.

Metrics ports stay the same across restarts: with --metrics-listen
HOST:PORT the coordinator serves metrics on PORT and group g replica r on
PORT + (g-1)*5 + r; without it each process picks a free port on the first
run and keeps it (remembered in <data-dir>/metrics.ports). Every metrics
address is listed for Prometheus in <data-dir>/prometheus-targets.json
(file-based service discovery; labels job, group, replica).

Growing: dev runs every group of its catalog. --groups only matters on the
first start, when it creates the catalog; a later start brings back every
group the catalog has, added ones too. `trellis dev add-group`, in another
terminal, adds the next group to the running dev: dev notices within about
2 s (it asks the coordinator every second) and starts the new group's
replicas like the others. `trellis admin add-group --group N` works too;
after `trellis admin remove-group --group N` dev stops that group's
replicas (their data directories stay).

TLS: by default every link is mutual TLS. On the first start dev makes a CA,
a node certificate (for 127.0.0.1, localhost and the --listen host) and a
client certificate `dev` in <data-dir>/tls (keys mode 0600); later starts
reuse them. `trellis sql`, `status`, `admin`, `user`, `cdc`, `load` and
`bench txn|feed` given no --tls-* flag use the dev's CA and client
certificate when they dial the address of a dev running on
./trellis-dev-data (or on $TRELLIS_DEV_DATA_DIR); any other address is
dialled as before. --tls-ca/--tls-cert/--tls-key run dev with your own
files instead. --insecure runs plaintext: anyone who can reach the ports
can read and write.

Examples:
  cargo run --release -- dev
  trellis dev --insecure                        # plaintext, no certificates
  trellis dev --groups 5 --replicas 1 --data-dir /tmp/trellis --listen 127.0.0.1:7000
  trellis dev --metrics-listen 127.0.0.1:9100   # coordinator :9100, g1r1 :9101, g2r1 :9106
  trellis dev --no-restart                      # watch failures without restarts
  trellis dev add-group                         # in another terminal: one more group")]
pub struct Args {
    #[command(subcommand)]
    command: Option<DevCommand>,
    /// Where the catalog and every shard keep their data, and dev its TLS
    /// files (tls/).
    #[arg(long, env = certs::DATA_DIR_ENV, default_value = certs::DATA_DIR_DEFAULT)]
    data_dir: PathBuf,
    /// Number of shard groups the cluster is created with; only matters on
    /// the first start (later starts run every group the catalog has).
    #[arg(long, default_value_t = 3, value_parser = parse_groups)]
    groups: u32,
    /// Replicas per group: a primary and replicas - 1 backups. With 3, any
    /// one replica of a group may fail without losing an acknowledged write.
    #[arg(long, default_value_t = 3, value_parser = parse_replicas)]
    replicas: u32,
    /// Address of the coordinator's client-facing gRPC service.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Address of the coordinator's Prometheus metrics; shards use the ports
    /// after it (see below). Port 0: each process keeps the free port it got
    /// on the first run.
    #[arg(long, default_value = "127.0.0.1:0", value_parser = parse_metrics_listen)]
    metrics_listen: SocketAddr,
    /// Report a member that exits, but do not restart it.
    #[arg(long)]
    no_restart: bool,
    /// Run plaintext, with no certificates: anyone who can reach the ports
    /// can read and write every key. (Default: mutual TLS with dev's own
    /// CA, see below.)
    #[arg(long)]
    insecure: bool,
}

impl Args {
    /// `--insecure` was given to `trellis dev` itself (not to a
    /// subcommand): with `--tls-*` flags too, a usage error.
    pub(crate) fn insecure(&self) -> bool {
        self.command.is_none() && self.insecure
    }
}

#[derive(clap::Subcommand)]
enum DevCommand {
    /// Add a shard group to the `trellis dev` running on --data-dir: it is
    /// registered in the catalog, and dev starts its replicas.
    AddGroup(add_group::Args),
}

fn parse_count(text: &str, max: u32, what: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("{what} 1 to {max}")),
    }
}

fn parse_groups(text: &str) -> Result<u32, String> {
    parse_count(text, DEV_GROUPS_MAX, "a dev cluster has").map_err(|e| format!("{e} shard groups"))
}

fn parse_replicas(text: &str) -> Result<u32, String> {
    parse_count(text, DEV_REPLICAS_MAX, "a group has").map_err(|e| format!("{e} replicas"))
}

fn parse_metrics_listen(text: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = text
        .parse()
        .map_err(|_| "expected HOST:PORT, e.g. 127.0.0.1:9100".to_string())?;
    if u32::from(addr.port()) + METRICS_PORT_SPAN > u32::from(u16::MAX) {
        return Err(format!(
            "shards use the {METRICS_PORT_SPAN} ports after it: pick a port of at most {}",
            u32::from(u16::MAX) - METRICS_PORT_SPAN
        ));
    }
    Ok(addr)
}

/// A child process that printed its READY line, and what it is.
pub(crate) struct Kid {
    pub(crate) name: String,
    pub(crate) child: Child,
    ready: Vec<(String, String)>,
}

impl Kid {
    pub(crate) fn field(&self, key: &str) -> String {
        self.ready
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }
}

/// Starts `trellis <args>` as a child whose log lines are labelled with
/// `name`, and waits for its READY line.
pub(crate) fn start(name: &str, args: &[String]) -> anyhow::Result<Kid> {
    start_labelled(name, name, args)
}

fn start_labelled(label: &str, name: &str, args: &[String]) -> anyhow::Result<Kid> {
    let (mut child, ready) = spawn(label, args).with_context(|| format!("starting {name}"))?;
    match ready.recv_timeout(CHILD_READY_TIMEOUT) {
        Ok(line) => Ok(Kid {
            name: name.to_string(),
            child,
            ready: parse_ready(&line),
        }),
        Err(why) => {
            let status = kill_and_describe(&mut child);
            match why {
                mpsc::RecvTimeoutError::Timeout => bail!(
                    "{name} did not start within {CHILD_READY_TIMEOUT:?} and was killed; \
                     its log ([{label}]) is above"
                ),
                mpsc::RecvTimeoutError::Disconnected => {
                    bail!("{name} did not start: it {status}; its log ([{label}]) is above")
                }
            }
        }
    }
}

fn parse_ready(line: &str) -> Vec<(String, String)> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Should children colour their logs? Only when ours go to a terminal, and
/// never with `NO_COLOR` set (<https://no-color.org>).
fn children_colour() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

/// Spawns `trellis <args>` without waiting: returns the child and a
/// channel that gets its READY line (and disconnects if it closes stdout,
/// i.e. exits, first). Its stderr is relayed to ours, labelled.
fn spawn(label: &str, args: &[String]) -> anyhow::Result<(Child, mpsc::Receiver<String>)> {
    let exe = std::env::current_exe().context("finding the trellis executable")?;
    let mut command = Command::new(exe);
    command
        .args(args)
        // Children log in dev's own format (a flag of every subcommand).
        .args(["--log-format", crate::logs::format().name()])
        // And record metrics, or not, as dev was told.
        .args([
            "--metrics-recording",
            crate::metrics_recording_arg(trellis_metrics::recording()),
        ])
        // And speak TLS with dev's own files, when it was given them.
        .args(crate::tls::child_args())
        .env(
            "TRELLIS_LOG",
            std::env::var("TRELLIS_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: Ctrl-C reaches dev alone, which then stops
        // every child in order (rather than racing them to exit and
        // mistaking their exits for failures to restart).
        .process_group(0);
    // The child's stderr is our pipe, never a terminal: tell it whether to
    // colour (main.rs reads CLICOLOR_FORCE).
    if children_colour() {
        command.env("CLICOLOR_FORCE", "1");
    } else {
        command.env_remove("CLICOLOR_FORCE");
    }
    let mut child = command.spawn()?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let relay_label = label.to_string();
    let json = crate::logs::json();
    std::thread::spawn(move || relay(&relay_label, stderr, json));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix("READY ") {
                let _ = tx.send(rest.to_string());
                break;
            }
        }
        // Keep draining so the child never blocks on a full pipe.
        for _ in lines {}
    });
    Ok((child, rx))
}

/// Copies a child's stderr to ours line by line, each line labelled with
/// the process that wrote it; lines longer than [`LOG_LINE_BYTES_MAX`] go
/// in labelled pieces, so memory stays bounded whatever the child writes.
/// With `json` the label is a JSON field and every line stays one JSON
/// object (see [`label_line`]).
fn relay(label: &str, from: ChildStderr, json: bool) {
    let mut reader = BufReader::new(from);
    let mut line = Vec::with_capacity(256);
    let mut out_line = Vec::with_capacity(256);
    // Whether the last piece read ended mid-line (an overlong line).
    let mut continued = false;
    loop {
        line.clear();
        match reader
            .by_ref()
            .take(LOG_LINE_BYTES_MAX as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let whole = !continued && line.ends_with(b"\n");
        continued = !line.ends_with(b"\n");
        label_line(label, &line, whole, json, &mut out_line);
        // Our stderr gone (dev's terminal closed): nothing left to tell.
        let _ = std::io::stderr().lock().write_all(&out_line);
    }
}

/// JSON key of the label dev adds to a child's JSON log line.
const JSON_LABEL_KEY: &str = "process";

/// Writes into `out` the relayed form of `line` (a child's log line, or a
/// piece of one unless `whole`, with or without its newline), ending in a
/// newline. Text: `[label] ` before it. JSON: a whole line that is a JSON
/// object gets `"process":"label"` as its first field and is otherwise
/// unchanged; anything else (a piece of an overlong line, a panic message)
/// becomes `{"process":"label","message":"..."}`, so that every relayed
/// line parses.
fn label_line(label: &str, line: &[u8], whole: bool, json: bool, out: &mut Vec<u8>) {
    out.clear();
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    if !json {
        out.extend_from_slice(format!("[{label}] ").as_bytes());
        out.extend_from_slice(body);
    } else {
        let field = format!("{}:{}", json_string(JSON_LABEL_KEY), json_string(label));
        let object = body
            .strip_prefix(b"{")
            .filter(|_| whole && body.ends_with(b"}"));
        match object {
            Some(rest) => {
                out.push(b'{');
                out.extend_from_slice(field.as_bytes());
                if !rest.trim_ascii_start().starts_with(b"}") {
                    out.push(b',');
                }
                out.extend_from_slice(rest);
            }
            None => {
                let text = json_string(&String::from_utf8_lossy(body));
                out.extend_from_slice(format!("{{{field},\"message\":{text}}}").as_bytes());
            }
        }
    }
    out.push(b'\n');
}

/// How a child ended, in words: `exited with code 1`, `killed by signal 9
/// (SIGKILL)`.
/// Kills a child that did not start (our own, by its handle) and says how it
/// ended, in words.
fn kill_and_describe(child: &mut Child) -> String {
    let _ = child.kill();
    child
        .wait()
        .map(describe)
        .unwrap_or_else(|e| format!("could not be waited for: {e}"))
}

fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    match status.signal() {
        Some(signal) => {
            let name = match signal {
                libc::SIGKILL => " (SIGKILL)",
                libc::SIGTERM => " (SIGTERM)",
                libc::SIGINT => " (SIGINT)",
                libc::SIGABRT => " (SIGABRT)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGBUS => " (SIGBUS)",
                _ => "",
            };
            format!("was killed by signal {signal}{name}")
        }
        None => "exited".to_string(),
    }
}

fn terminate(pid: u32) {
    signal_child(pid, libc::SIGTERM);
}

/// Sends `signal` to `pid`, our own child not yet reaped; whether it was
/// delivered.
#[allow(unsafe_code)]
fn signal_child(pid: u32, signal: libc::c_int) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own
    // child, not yet reaped.
    unsafe { libc::kill(pid as libc::pid_t, signal) == 0 }
}

/// SIGTERM to every child, then SIGKILL to those still there after
/// [`STOP_GRACE`].
fn stop_children(mut children: Vec<(&str, &mut Child)>) {
    for (_, child) in children.iter() {
        terminate(child.id());
    }
    let deadline = Instant::now() + STOP_GRACE;
    for (name, child) in children.iter_mut() {
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(STOP_POLL),
                _ => {
                    eprintln!("{name} did not stop in {STOP_GRACE:?}; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
    }
}

pub(crate) fn stop_all(kids: &mut [Kid]) {
    stop_children(
        kids.iter_mut()
            .map(|k| (k.name.as_str(), &mut k.child))
            .collect(),
    );
}

fn path_str(path: &Path) -> anyhow::Result<String> {
    path.to_str()
        .map(str::to_string)
        .with_context(|| format!("data directory {} is not valid UTF-8", path.display()))
}

/// Takes the data directory's lock, or says who holds it. The lock lives as
/// long as the returned file (it is not inherited by children: Rust opens
/// files close-on-exec).
#[allow(unsafe_code)]
fn lock_data_dir(dir: &Path) -> anyhow::Result<File> {
    use std::os::fd::AsRawFd;
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock(2) on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let who = match pid.trim() {
                "" => String::new(),
                pid => format!(" (pid {pid})"),
            };
            bail!(
                "another trellis dev{who} is using {}; stop it first, or give this one \
                 another --data-dir",
                dir.display()
            );
        }
        return Err(err).with_context(|| format!("locking {}", path.display()));
    }
    file.set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(file)
}

/// Is a dev running on `dir` (holding its lock)? Returns its pid as the
/// lock file says; an error that says so if none is. Never takes the lock
/// for longer than this look.
#[allow(unsafe_code)]
fn running_dev(dir: &Path) -> anyhow::Result<String> {
    use std::os::fd::AsRawFd;
    let path = dir.join(LOCK_FILE);
    let none = || {
        anyhow::anyhow!(
            "no trellis dev is running on {} (start one: trellis dev --data-dir {})",
            dir.display(),
            dir.display()
        )
    };
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Err(none()),
        Err(err) => return Err(err).with_context(|| format!("opening {}", path.display())),
    };
    // SAFETY: flock(2) on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if rc == 0 {
        // We got it, so nobody holds it: closing the file lets it go.
        return Err(none());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(err).with_context(|| format!("looking at the lock {}", path.display()));
    }
    let mut pid = String::new();
    let _ = file.read_to_string(&mut pid);
    Ok(pid.trim().to_string())
}

/// Metrics ports remembered from an earlier run, by label.
fn remembered_metrics_ports(dir: &Path) -> Vec<(String, u16)> {
    let Ok(text) = std::fs::read_to_string(dir.join(METRICS_PORTS_FILE)) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| line.split_once(' '))
        .filter_map(|(label, port)| Some((label.to_string(), port.trim().parse().ok()?)))
        .collect()
}

fn remember_metrics_ports(dir: &Path, members: &[Member]) -> anyhow::Result<()> {
    let text: String = members
        .iter()
        .filter(|m| !m.leaving())
        .filter_map(|m| {
            let port = m.metrics.as_ref()?.port();
            Some(format!("{} {port}\n", m.label))
        })
        .collect();
    let path = dir.join(METRICS_PORTS_FILE);
    let tmp = dir.join(format!("{METRICS_PORTS_FILE}.tmp"));
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))
}

/// The metrics address a member starts with: pinned by `--metrics-listen`,
/// else the port it had last time if that is still free, else port 0.
fn metrics_addr(
    base: SocketAddr,
    offset: u32,
    label: &str,
    remembered: &[(String, u16)],
) -> SocketAddr {
    if base.port() != 0 {
        let port = u32::from(base.port()) + offset;
        let port = u16::try_from(port).expect("parse_metrics_listen leaves room for every shard");
        return SocketAddr::new(base.ip(), port);
    }
    let Some(&(_, port)) = remembered.iter().find(|(l, _)| l == label) else {
        return base;
    };
    // Someone else may have taken it since: then a new one, rather than a
    // member that cannot start.
    match std::net::TcpListener::bind((base.ip(), port)) {
        Ok(_) => SocketAddr::new(base.ip(), port),
        Err(_) => {
            eprintln!("{label}: metrics port {port} of the last run is taken; picking another");
            base
        }
    }
}

/// The Prometheus `file_sd` document listing every member that has a
/// metrics address: one target group per member, with its labels.
fn prometheus_targets(members: &[Member]) -> String {
    let groups: Vec<String> = members
        .iter()
        .filter(|m| !m.leaving())
        .filter_map(|m| {
            let addr = m.metrics?;
            let labels: Vec<String> = m
                .target_labels
                .iter()
                .map(|(name, value)| format!("{}: {}", json_string(name), json_string(value)))
                .collect();
            Some(format!(
                "  {{\"targets\": [{}], \"labels\": {{{}}}}}",
                json_string(&addr.to_string()),
                labels.join(", ")
            ))
        })
        .collect();
    format!("[\n{}\n]\n", groups.join(",\n"))
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes [`PROMETHEUS_TARGETS_FILE`] whole (a rename, so Prometheus never
/// reads half of it).
fn write_prometheus_targets(dir: &Path, members: &[Member]) -> anyhow::Result<()> {
    let path = dir.join(PROMETHEUS_TARGETS_FILE);
    let tmp = dir.join(format!("{PROMETHEUS_TARGETS_FILE}.tmp"));
    std::fs::write(&tmp, prometheus_targets(members))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))
}

/// Replaces the value after `flag` in `args`.
fn set_flag(args: &mut [String], flag: &str, value: String) {
    let at = args
        .iter()
        .position(|a| a == flag)
        .expect("every member is started with the flags dev pins");
    args[at + 1] = value;
}

/// What a member is before it first starts: its names, command line and
/// Prometheus labels.
struct MemberSpec {
    /// `coordinator` or `g2r1`: prefixes its log lines.
    label: String,
    /// `shard group 2 replica 1`: names it in dev's own messages.
    name: String,
    /// The command line it is started with.
    args: Vec<String>,
    /// Its labels in the Prometheus service-discovery file.
    target_labels: Vec<(&'static str, String)>,
    /// The shard group it is a replica of; `None` for the coordinator.
    group: Option<u64>,
}

/// What dev starts: the coordinator or one shard replica, and how it is.
struct Member {
    /// `coordinator` or `g2r1`: prefixes its log lines.
    label: String,
    /// `shard group 2 replica 1`: names it in dev's own messages.
    name: String,
    /// The command line it is (re)started with; after its first start its
    /// addresses are pinned to those it got.
    args: Vec<String>,
    /// The shard group it is a replica of; `None` for the coordinator.
    group: Option<u64>,
    state: State,
    /// Has it ever come up in this run of dev (so a start is a restart)?
    up_before: bool,
    /// Its metrics address once it has served.
    metrics: Option<SocketAddr>,
    /// Its labels in the Prometheus service-discovery file (`job`, and a
    /// shard's `group` and `replica`).
    target_labels: Vec<(&'static str, String)>,
    /// Restarts in this run of dev.
    restarts: u32,
    /// Failures in a row, each soon after (re)starting.
    quick_failures: u32,
    /// The wait before its next restart.
    backoff: Duration,
}

enum State {
    Up {
        kid: Kid,
        since: Instant,
    },
    Starting {
        child: Child,
        ready: mpsc::Receiver<String>,
        deadline: Instant,
    },
    Waiting {
        until: Instant,
    },
    /// A replica of a group added while dev runs, not started yet: it
    /// starts once the replica before it in its group has started (see
    /// [`start_queued`]), as on dev's first start.
    Queued,
    /// Not restarted: `--no-restart`, or given up on.
    Down,
    /// Its group left the catalog: told to stop (SIGTERM), killed if still
    /// there at `deadline`.
    Stopping {
        child: Child,
        deadline: Instant,
    },
    /// Its group left the catalog and it has stopped: dev forgets it.
    Gone,
}

impl Member {
    /// Starts the member and waits until it serves (dev's first start).
    fn start(spec: MemberSpec) -> anyhow::Result<Member> {
        let kid = start_labelled(&spec.label, &spec.name, &spec.args)?;
        let mut member = Member::new(spec, State::Down);
        member.came_up(kid);
        Ok(member)
    }

    /// A member the supervisor starts later, without waiting for it (a
    /// group added while dev runs): [`start_queued`] lets it go.
    fn queued(spec: MemberSpec) -> Member {
        Member::new(spec, State::Queued)
    }

    fn new(spec: MemberSpec, state: State) -> Member {
        Member {
            label: spec.label,
            name: spec.name,
            args: spec.args,
            group: spec.group,
            state,
            up_before: false,
            metrics: None,
            target_labels: spec.target_labels,
            restarts: 0,
            quick_failures: 0,
            backoff: RESTART_BACKOFF_FIRST,
        }
    }

    /// Has it yet to try its first start (queued, or about to spawn), or is
    /// that first start under way?
    fn first_start_pending(&self) -> bool {
        match self.state {
            State::Queued => true,
            State::Waiting { .. } | State::Starting { .. } => !self.up_before && self.restarts == 0,
            State::Up { .. } | State::Down | State::Stopping { .. } | State::Gone => false,
        }
    }

    /// Is it stopping or stopped for good (its group left the catalog)?
    fn leaving(&self) -> bool {
        matches!(self.state, State::Stopping { .. } | State::Gone)
    }

    /// Its group left the catalog: SIGTERM now; [`Member::supervise`] kills
    /// it after [`STOP_GRACE`] and marks it gone once it exited.
    fn leave(&mut self) {
        if self.leaving() {
            return;
        }
        let child = match std::mem::replace(&mut self.state, State::Gone) {
            State::Up { kid, .. } => kid.child,
            State::Starting { child, .. } => child,
            State::Waiting { .. }
            | State::Queued
            | State::Down
            | State::Stopping { .. }
            | State::Gone => return,
        };
        terminate(child.id());
        self.state = State::Stopping {
            child,
            deadline: Instant::now() + STOP_GRACE,
        };
    }

    fn came_up(&mut self, kid: Kid) {
        self.up_before = true;
        if let Ok(metrics) = kid.field("metrics").parse::<SocketAddr>() {
            self.metrics = Some(metrics);
            set_flag(&mut self.args, "--metrics-listen", metrics.to_string());
        }
        if self.label == COORDINATOR_LABEL {
            // Restarted on the same address: the shards know it by that.
            set_flag(&mut self.args, "--listen", kid.field("grpc"));
        }
        self.state = State::Up {
            kid,
            since: Instant::now(),
        };
    }

    /// A field of its READY line while it is up (`pid` too), else empty.
    fn field(&self, key: &str) -> String {
        match &self.state {
            State::Up { kid, .. } if key == "pid" => kid.child.id().to_string(),
            State::Up { kid, .. } => kid.field(key),
            _ => String::new(),
        }
    }

    fn row(&self) -> String {
        let State::Up { kid, .. } = &self.state else {
            return format!("{:<12} down", self.label);
        };
        format!(
            "{:<12} pid {:<7} grpc {}  metrics http://{}/metrics",
            self.label,
            kid.child.id(),
            kid.field("grpc"),
            kid.field("metrics")
        )
    }

    /// One look at the member: notices an exit, a restart that came up or
    /// failed, a backoff that ran out.
    fn supervise(&mut self, restart: bool) {
        let now = Instant::now();
        match &mut self.state {
            State::Up { kid, since } => {
                if let Ok(Some(status)) = kid.child.try_wait() {
                    eprintln!(
                        "{} (pid {}) {}",
                        self.name,
                        kid.child.id(),
                        describe(status)
                    );
                    let quick = since.elapsed() < QUICK_FAILURE_WINDOW;
                    self.failed(quick, restart);
                }
            }
            State::Starting {
                child,
                ready,
                deadline,
            } => match ready.try_recv() {
                Ok(line) => {
                    let again = self.up_before;
                    if let State::Starting { child, .. } =
                        std::mem::replace(&mut self.state, State::Down)
                    {
                        self.came_up(Kid {
                            name: self.name.clone(),
                            child,
                            ready: parse_ready(&line),
                        });
                    }
                    if again {
                        eprintln!(
                            "{} is up again, pid {} (grpc {}, metrics http://{}/metrics)",
                            self.name,
                            self.field("pid"),
                            self.field("grpc"),
                            self.field("metrics")
                        );
                    } else {
                        eprintln!("{}", self.row());
                    }
                }
                Err(mpsc::TryRecvError::Empty) if now < *deadline => {}
                Err(why) => {
                    let status = kill_and_describe(child);
                    let why = match why {
                        mpsc::TryRecvError::Empty => {
                            format!("did not start within {CHILD_READY_TIMEOUT:?}")
                        }
                        mpsc::TryRecvError::Disconnected => "did not start".to_string(),
                    };
                    eprintln!("{} (pid {}) {why}: it {status}", self.name, child.id());
                    self.failed(true, restart);
                }
            },
            State::Waiting { until } if now >= *until => match spawn(&self.label, &self.args) {
                Ok((child, ready)) => {
                    self.state = State::Starting {
                        child,
                        ready,
                        deadline: now + CHILD_READY_TIMEOUT,
                    }
                }
                Err(err) => {
                    eprintln!("{} could not be started: {err:#}", self.name);
                    self.failed(true, restart);
                }
            },
            State::Stopping { child, deadline } => match child.try_wait() {
                Ok(Some(_)) => {
                    eprintln!("{} (pid {}) stopped", self.name, child.id());
                    self.state = State::Gone;
                }
                Ok(None) if now < *deadline => {}
                _ => {
                    eprintln!(
                        "{} (pid {}) did not stop in {STOP_GRACE:?}; killing it",
                        self.name,
                        child.id()
                    );
                    let _ = child.kill();
                    let _ = child.wait();
                    self.state = State::Gone;
                }
            },
            State::Waiting { .. } | State::Queued | State::Down | State::Gone => {}
        }
    }

    /// After an exit or a failed start: schedule a restart, or say why not.
    fn failed(&mut self, quick: bool, restart: bool) {
        if !restart {
            eprintln!(
                "not restarting {} (--no-restart); the rest of the cluster keeps running",
                self.name
            );
            self.state = State::Down;
            return;
        }
        if quick {
            self.quick_failures += 1;
        } else {
            self.quick_failures = 0;
            self.backoff = RESTART_BACKOFF_FIRST;
        }
        if self.quick_failures >= QUICK_FAILURES_MAX {
            eprintln!(
                "giving up on {}: it failed {} times in a row within {QUICK_FAILURE_WINDOW:?} \
                 of starting (its log, labelled [{}], says why); the rest of the cluster \
                 keeps running, and the next `trellis dev` tries it again",
                self.name, self.quick_failures, self.label
            );
            self.state = State::Down;
            return;
        }
        self.restarts += 1;
        eprintln!(
            "restarting {} in {:?} (restart {})",
            self.name, self.backoff, self.restarts
        );
        self.state = State::Waiting {
            until: Instant::now() + self.backoff,
        };
        self.backoff = (self.backoff * 2).min(RESTART_BACKOFF_MAX);
    }

    fn child(&mut self) -> Option<(&str, &mut Child)> {
        match &mut self.state {
            State::Up { kid, .. } => Some((self.name.as_str(), &mut kid.child)),
            State::Starting { child, .. } | State::Stopping { child, .. } => {
                Some((self.name.as_str(), child))
            }
            State::Waiting { .. } | State::Queued | State::Down | State::Gone => None,
        }
    }
}

fn stop_members(members: &mut [Member]) {
    stop_children(members.iter_mut().filter_map(Member::child).collect());
}

/// How dev lays out the replicas of a group: where their data lives, which
/// metrics port each asks for, which coordinator they join, how many.
struct Layout {
    data_dir: PathBuf,
    metrics_listen: SocketAddr,
    /// Metrics ports remembered from the last run, by label.
    remembered: Vec<(String, u16)>,
    coordinator: String,
    replicas: u32,
}

impl Layout {
    /// The replicas of `group`, in order.
    fn group(&self, group: u64) -> anyhow::Result<Vec<MemberSpec>> {
        (1..=self.replicas)
            .map(|replica| self.shard(group, replica))
            .collect()
    }

    fn shard(&self, group: u64, replica: u32) -> anyhow::Result<MemberSpec> {
        assert!(
            dev_runs(group),
            "group {group}: callers start only groups dev runs"
        );
        let label = format!("g{group}r{replica}");
        let dir = self
            .data_dir
            .join(format!("group-{group}-replica-{replica}"));
        let group_index =
            u32::try_from(group - 1).expect("dev runs groups 1 to DEV_GROUPS_MAX only");
        let offset = group_index * DEV_REPLICAS_MAX + replica;
        Ok(MemberSpec {
            name: format!("shard group {group} replica {replica}"),
            args: vec![
                "shard".into(),
                "--data-dir".into(),
                path_str(&dir)?,
                // Port 0 on the first run; the shard then keeps the port
                // it got (listen.port in its data directory).
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--metrics-listen".into(),
                metrics_addr(self.metrics_listen, offset, &label, &self.remembered).to_string(),
                "--group".into(),
                group.to_string(),
                "--coordinator".into(),
                self.coordinator.clone(),
                "--exit-with-parent".into(),
            ],
            target_labels: vec![
                ("job", JOB_SHARD.to_string()),
                ("group", group.to_string()),
                ("replica", replica.to_string()),
            ],
            group: Some(group),
            label,
        })
    }
}

/// Can dev run this group? Its metrics ports (pinned or not) are laid out
/// for groups 1 to [`DEV_GROUPS_MAX`].
fn dev_runs(group: u64) -> bool {
    (1..=u64::from(DEV_GROUPS_MAX)).contains(&group)
}

/// The groups of the catalog that dev leaves alone, said once each.
fn skip_groups(listed: &BTreeSet<u64>, skipped: &mut BTreeSet<u64>) {
    for &group in listed.iter().filter(|g| !dev_runs(**g)) {
        if skipped.insert(group) {
            eprintln!(
                "group {group} is in the catalog, but dev runs groups 1 to {DEV_GROUPS_MAX} \
                 only: start its replicas yourself (trellis shard --group {group} ...)"
            );
        }
    }
}

/// Makes the members match the groups the catalog lists: starts the
/// replicas of a listed group dev does not run, tells those of a group no
/// longer listed to stop, and forgets the ones that have.
fn follow_catalog(
    members: &mut Vec<Member>,
    listed: &BTreeSet<u64>,
    layout: &Layout,
    skipped: &mut BTreeSet<u64>,
) {
    skip_groups(listed, skipped);
    let mut left = BTreeSet::new();
    for member in members.iter_mut() {
        if let Some(group) = member.group
            && !listed.contains(&group)
            && !member.leaving()
        {
            if left.insert(group) {
                eprintln!("group {group} is no longer in the catalog: stopping its replicas");
            }
            member.leave();
        }
    }
    members.retain(|m| !matches!(m.state, State::Gone));
    // A group whose old replicas are still stopping waits for them: the new
    // ones would use the same directories and ports.
    let present: BTreeSet<u64> = members.iter().filter_map(|m| m.group).collect();
    for &group in listed
        .iter()
        .filter(|g| dev_runs(**g) && !present.contains(g))
    {
        match layout.group(group) {
            Ok(specs) => {
                eprintln!(
                    "group {group} is in the catalog: starting {}",
                    counted(layout.replicas, "replica")
                );
                members.extend(specs.into_iter().map(Member::queued));
            }
            Err(err) => eprintln!("cannot start group {group}: {err:#}"),
        }
    }
}

/// Lets a queued member start once no replica before it in its group is
/// queued or making its first start: the replicas of a new group start one
/// after another, so the first usually registers first and becomes primary,
/// as on dev's first start. A replica whose start failed does not hold the
/// next one up.
fn start_queued(members: &mut [Member]) {
    for at in 0..members.len() {
        if !matches!(members[at].state, State::Queued) {
            continue;
        }
        let group = members[at].group;
        let held = members[..at]
            .iter()
            .any(|m| m.group == group && m.first_start_pending());
        if !held {
            members[at].state = State::Waiting {
                until: Instant::now(),
            };
        }
    }
}

/// Asks the coordinator at `addr` for the catalog's groups every
/// [`GROUP_POLL_INTERVAL`] and publishes each listing [`Settle`] lets
/// through.
async fn poll_groups(addr: String, listed: tokio::sync::watch::Sender<BTreeSet<u64>>) {
    let mut settle = Settle::default();
    loop {
        tokio::time::sleep(GROUP_POLL_INTERVAL).await;
        let answer = crate::status::fetch(&addr)
            .await
            .ok()
            .map(|status| status.groups.iter().map(|g| g.group_id).collect());
        if let Some(groups) = settle.answer(answer) {
            listed.send_if_modified(|current| {
                let changed = *current != groups;
                if changed {
                    *current = groups;
                }
                changed
            });
        }
    }
}

/// Which of the coordinator's answers dev acts on: a listing of groups
/// only once two answers in a row agree, so that a map read from the
/// catalog that raced a change (and is replaced a moment later) never
/// starts or stops a group.
#[derive(Default)]
struct Settle {
    previous: Option<BTreeSet<u64>>,
}

impl Settle {
    /// Takes one answer (`None`: the coordinator did not answer); returns
    /// the listing to act on, if it is settled.
    fn answer(&mut self, answer: Option<BTreeSet<u64>>) -> Option<BTreeSet<u64>> {
        let settled = match (&self.previous, &answer) {
            (Some(previous), Some(answer)) if previous == answer => Some(answer.clone()),
            _ => None,
        };
        self.previous = answer;
        settled
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(DevCommand::AddGroup(add)) = args.command {
        return add_group::run(add);
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating the data directory {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize().with_context(|| {
        format!(
            "finding the data directory {} (canonicalize)",
            args.data_dir.display()
        )
    })?;
    // First of all: nothing may start on a directory another dev uses.
    let _lock = lock_data_dir(&data_dir)?;
    // Then TLS, which every child is started with: the given files (main
    // installed them), none, or dev's own, made on a first start.
    let tls = if args.insecure {
        eprintln!("{INSECURE_WARNING}");
        certs::DevTls::Off
    } else if crate::tls::child_args().is_empty() {
        let files = certs::prepare(&data_dir, args.listen.ip())?;
        crate::tls::install(files)?;
        certs::DevTls::Own
    } else {
        certs::DevTls::Given
    };
    // The signal handlers exist before any child starts: a Ctrl-C or
    // SIGTERM during start-up, or as soon as READY is read, stops the
    // cluster cleanly once it is up instead of killing dev with the
    // default action.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let signals = {
        let _entered = runtime.enter();
        crate::signals::Signals::install()
    };
    // With TLS on, SIGHUP is a reload (crate::tls): dev passes it on to
    // every process it runs. Without TLS, SIGHUP keeps its default action.
    let mut hangup = if crate::tls::child_args().is_empty() {
        None
    } else {
        let _entered = runtime.enter();
        Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("installing the SIGHUP handler")?,
        )
    };
    // A ready file left by a dev that was killed is not this one's.
    remove_ready_file(&data_dir)?;
    let catalog = format!("sqlite://{}", path_str(&data_dir.join("catalog.db"))?);
    let remembered = remembered_metrics_ports(&data_dir);
    eprintln!("starting a coordinator");

    let mut members: Vec<Member> = Vec::new();
    let mut skipped = BTreeSet::new();
    let result = (|| -> anyhow::Result<(Layout, BTreeSet<u64>)> {
        let coordinator = Member::start(MemberSpec {
            label: COORDINATOR_LABEL.to_string(),
            name: "coordinator".to_string(),
            args: vec![
                "coordinator".into(),
                "--catalog".into(),
                catalog.clone(),
                "--listen".into(),
                args.listen.to_string(),
                "--metrics-listen".into(),
                metrics_addr(args.metrics_listen, 0, COORDINATOR_LABEL, &remembered).to_string(),
                "--groups".into(),
                args.groups.to_string(),
                "--exit-with-parent".into(),
            ],
            target_labels: vec![("job", JOB_COORDINATOR.to_string())],
            group: None,
        })?;
        eprintln!("{}", coordinator.row());
        let coordinator_addr = coordinator.field("grpc");
        members.push(coordinator);
        // Every group the catalog has: those --groups created on the first
        // run, and those added since.
        let listed = catalog_groups(&runtime, &coordinator_addr)?;
        skip_groups(&listed, &mut skipped);
        let groups: BTreeSet<u64> = listed.iter().copied().filter(|g| dev_runs(*g)).collect();
        eprintln!(
            "starting {} of {}",
            counted(groups.len() as u32, "group"),
            counted(args.replicas, "replica")
        );
        let layout = Layout {
            data_dir: data_dir.clone(),
            metrics_listen: args.metrics_listen,
            remembered,
            coordinator: coordinator_addr.clone(),
            replicas: args.replicas,
        };
        for &group in &groups {
            for spec in layout.group(group)? {
                let shard = Member::start(spec)?;
                eprintln!("{}", shard.row());
                members.push(shard);
            }
        }
        wait_registered(&runtime, &coordinator_addr, &groups)?;
        Ok((layout, groups))
    })();
    let (layout, groups) = match result {
        Ok(started) => started,
        Err(err) => {
            stop_members(&mut members);
            return Err(err);
        }
    };
    let mut targets_written = prometheus_targets(&members);
    if args.metrics_listen.port() == 0
        && let Err(err) = remember_metrics_ports(&data_dir, &members)
    {
        eprintln!("metrics ports will differ next run: {err:#}");
    }
    if let Err(err) = write_prometheus_targets(&data_dir, &members) {
        eprintln!("Prometheus will not find the members: {err:#}");
    }

    let addr = members[0].field("grpc");
    let ready = format!("grpc={addr} metrics={}", members[0].field("metrics"));
    println!("READY {ready}");
    let ready_fields = format!(
        "{ready} replicas={} {}={}",
        args.replicas,
        certs::READY_TLS_FIELD,
        tls.name()
    );
    if let Err(err) = write_ready_file(&data_dir, &ready_fields) {
        eprintln!("`trellis dev add-group` will not find this dev: {err:#}");
    }
    let restarts = if args.no_restart {
        "a member that exits is reported, not restarted (--no-restart)"
    } else {
        "a member that exits is restarted (--no-restart: only reported)"
    };
    let found_here = certs::data_dir(std::env::var_os(certs::DATA_DIR_ENV))
        .canonicalize()
        .is_ok_and(|dir| dir == data_dir);
    eprintln!(
        "\nTrellis dev cluster is up: {} of {}, data in {}\n  \
         clients connect to {addr} (gRPC, trellis.v1.Txn)\n{}  \
         one more group: trellis dev add-group --data-dir {}\n  \
         {restarts}\n  \
         Ctrl-C stops everything; data stays for the next run.",
        counted(groups.len() as u32, "group"),
        counted(args.replicas, "replica"),
        data_dir.display(),
        banner_tools(tls, &data_dir, found_here, &addr),
        data_dir.display()
    );

    runtime.block_on(async {
        let shutdown = signals.wait(false);
        tokio::pin!(shutdown);
        let (listed_tx, mut listed_rx) = tokio::sync::watch::channel(groups.clone());
        let poll = tokio::spawn(poll_groups(addr.clone(), listed_tx));
        let mut listed = groups;
        loop {
            let hangup_received = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(()) = hangup_received => {
                    let told = members
                        .iter()
                        .filter_map(|m| m.field("pid").parse::<u32>().ok())
                        .filter(|pid| signal_child(*pid, libc::SIGHUP))
                        .count();
                    eprintln!("SIGHUP: {told} processes asked to reload their TLS files");
                }
                () = tokio::time::sleep(SUPERVISE_INTERVAL) => {
                    if listed_rx.has_changed().unwrap_or(false) {
                        listed = listed_rx.borrow_and_update().clone();
                    }
                    follow_catalog(&mut members, &listed, &layout, &mut skipped);
                    start_queued(&mut members);
                    for member in members.iter_mut() {
                        member.supervise(!args.no_restart);
                    }
                    // A member restarted on another metrics port (its old
                    // one was taken), or a group came or went: tell
                    // Prometheus, and remember the ports for the next run.
                    let targets = prometheus_targets(&members);
                    if targets != targets_written {
                        if let Err(err) = write_prometheus_targets(&data_dir, &members) {
                            eprintln!("Prometheus will not find the members: {err:#}");
                        }
                        if args.metrics_listen.port() == 0
                            && let Err(err) = remember_metrics_ports(&data_dir, &members)
                        {
                            eprintln!("metrics ports will differ next run: {err:#}");
                        }
                        targets_written = targets;
                    }
                }
            }
        }
        poll.abort();
    });
    eprintln!("stopping the dev cluster");
    let _ = remove_ready_file(&data_dir);
    stop_members(&mut members);
    Ok(())
}

/// The banner's lines on TLS and on what a person types to reach the
/// cluster (each ends in a newline): `tls` as dev runs it, `data_dir`
/// (canonical), whether a tool run where dev was started finds it
/// (`found_here`), and the coordinator's address.
fn banner_tools(tls: certs::DevTls, data_dir: &Path, found_here: bool, addr: &str) -> String {
    let addr_flag = if certs::same_address(DEFAULT_TOOL_ADDR, addr) {
        String::new()
    } else {
        format!(" --addr {addr}")
    };
    match tls {
        certs::DevTls::Own => {
            let client = certs::Layout::new(data_dir).client();
            let env = if found_here {
                String::new()
            } else {
                format!("{}={} ", certs::DATA_DIR_ENV, data_dir.display())
            };
            let whence = if found_here {
                "run here, tools find the dev's CA and client certificate"
            } else {
                "with that variable, tools find the dev's CA and client certificate"
            };
            format!(
                "  TLS: mutual TLS with dev's own CA; CA, node and client certificates in {}\n  \
                 SQL shell: {env}trellis sql{addr_flag}   ({whence})\n  \
                 cluster status: {env}trellis status{addr_flag}\n  \
                 other clients (grpcurl, your own): CA {}, certificate {}, key {}\n",
                certs::Layout::new(data_dir).dir.display(),
                client.ca.display(),
                client.cert.display(),
                client.key.display()
            )
        }
        certs::DevTls::Given => format!(
            "  TLS: mutual TLS with the --tls-* files given; tools need a client certificate of \
             that CA (trellis cert create-client):\n  \
             SQL shell: trellis sql{addr_flag} --tls-ca CA.pem --tls-cert NAME.pem --tls-key \
             NAME-key.pem\n  \
             cluster status: trellis status{addr_flag} --tls-ca CA.pem --tls-cert NAME.pem \
             --tls-key NAME-key.pem\n"
        ),
        certs::DevTls::Off => format!(
            "  {INSECURE_WARNING}\n  \
             SQL shell: trellis sql{addr_flag}\n  \
             cluster status: trellis status{addr_flag}\n"
        ),
    }
}

/// The coordinator address every tool dials by default.
const DEFAULT_TOOL_ADDR: &str = "127.0.0.1:50051";

/// Writes [`READY_FILE`] whole (a rename: a reader never sees half).
fn write_ready_file(dir: &Path, fields: &str) -> anyhow::Result<()> {
    let path = dir.join(READY_FILE);
    let tmp = dir.join(format!("{READY_FILE}.tmp"));
    std::fs::write(&tmp, format!("{fields}\n"))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))
}

fn remove_ready_file(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join(READY_FILE);
    match std::fs::remove_file(&path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// `1 group`, `3 groups`.
fn counted(n: u32, noun: &str) -> String {
    let s = if n == 1 { "" } else { "s" };
    format!("{n} {noun}{s}")
}

/// Asks the coordinator at `addr` for its status, on dev's runtime, until
/// `answer` makes something of it; for at most [`REGISTER_TIMEOUT`], after
/// which the error names `what` (and the last failure to answer, if any).
fn poll_status<T>(
    runtime: &tokio::runtime::Runtime,
    addr: &str,
    what: &str,
    answer: impl Fn(&trellis_proto::v1::StatusResponse) -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + REGISTER_TIMEOUT;
    runtime.block_on(async {
        loop {
            let failed = match crate::status::fetch(addr).await {
                Ok(status) => match answer(&status) {
                    Some(value) => return Ok(value),
                    None => None,
                },
                Err(err) => Some(err),
            };
            if Instant::now() > deadline {
                let err = failed.unwrap_or_else(|| anyhow::anyhow!("the coordinator answers"));
                return Err(err.context(format!("{what}: not within {REGISTER_TIMEOUT:?}")));
            }
            tokio::time::sleep(REGISTER_POLL).await;
        }
    })
}

/// The groups in the catalog of the coordinator at `addr`.
fn catalog_groups(runtime: &tokio::runtime::Runtime, addr: &str) -> anyhow::Result<BTreeSet<u64>> {
    poll_status(
        runtime,
        addr,
        "asking the coordinator for the catalog's groups",
        |status| Some(status.groups.iter().map(|g| g.group_id).collect()),
    )
}

/// Waits until every one of `groups` has a primary.
fn wait_registered(
    runtime: &tokio::runtime::Runtime,
    addr: &str,
    groups: &BTreeSet<u64>,
) -> anyhow::Result<()> {
    poll_status(
        runtime,
        addr,
        "not every group registered with the coordinator",
        |status| {
            let up: BTreeSet<u64> = status
                .groups
                .iter()
                .filter(|g| g.members.iter().any(|m| m.role == "primary"))
                .map(|g| g.group_id)
                .collect();
            groups.is_subset(&up).then_some(())
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member() -> Member {
        Member {
            label: "g1r1".into(),
            name: "shard group 1 replica 1".into(),
            args: Vec::new(),
            group: Some(1),
            state: State::Down,
            up_before: false,
            metrics: None,
            target_labels: vec![
                ("job", JOB_SHARD.to_string()),
                ("group", "1".to_string()),
                ("replica", "1".to_string()),
            ],
            restarts: 0,
            quick_failures: 0,
            backoff: RESTART_BACKOFF_FIRST,
        }
    }

    #[test]
    fn the_prometheus_targets_list_every_member_with_a_metrics_address() {
        let mut coordinator = member();
        coordinator.label = COORDINATOR_LABEL.into();
        coordinator.target_labels = vec![("job", JOB_COORDINATOR.to_string())];
        coordinator.metrics = Some("127.0.0.1:9100".parse().expect("address"));
        let mut shard = member();
        shard.metrics = Some("127.0.0.1:9101".parse().expect("address"));
        let never_served = member();
        assert_eq!(
            prometheus_targets(&[coordinator, shard, never_served]),
            "[\n  \
             {\"targets\": [\"127.0.0.1:9100\"], \"labels\": {\"job\": \"trellis-coordinator\"}},\n  \
             {\"targets\": [\"127.0.0.1:9101\"], \"labels\": {\"job\": \"trellis-shard\", \
             \"group\": \"1\", \"replica\": \"1\"}}\n]\n"
        );
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }

    fn layout(replicas: u32) -> Layout {
        Layout {
            data_dir: PathBuf::from("/data"),
            metrics_listen: "127.0.0.1:9100".parse().expect("address"),
            remembered: Vec::new(),
            coordinator: "127.0.0.1:50051".into(),
            replicas,
        }
    }

    fn groups(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn dev_starts_the_replicas_of_added_groups_and_lets_removed_ones_go() {
        // Group 1 runs; the catalog lists 1, 2 and 100: group 2's replicas
        // are queued (laid out as on a first start), 100 is beyond what dev
        // runs and is skipped.
        let layout = layout(2);
        let mut members = vec![member()];
        let mut skipped = BTreeSet::new();
        follow_catalog(&mut members, &groups(&[1, 2, 100]), &layout, &mut skipped);
        let labels: Vec<&str> = members.iter().map(|m| m.label.as_str()).collect();
        assert_eq!(labels, ["g1r1", "g2r1", "g2r2"]);
        assert_eq!(skipped, groups(&[100]));
        let g2r2 = &members[2];
        assert!(matches!(g2r2.state, State::Queued));
        assert_eq!(g2r2.group, Some(2));
        assert_eq!(g2r2.name, "shard group 2 replica 2");
        let flag = |flag: &str| {
            let at = g2r2.args.iter().position(|a| a == flag).expect("flag");
            g2r2.args[at + 1].clone()
        };
        assert_eq!(flag("--group"), "2");
        assert_eq!(flag("--data-dir"), "/data/group-2-replica-2");
        assert_eq!(flag("--metrics-listen"), "127.0.0.1:9107", "9100 + 5 + 2");
        assert_eq!(flag("--coordinator"), "127.0.0.1:50051");

        // The same listing again changes nothing.
        follow_catalog(&mut members, &groups(&[1, 2, 100]), &layout, &mut skipped);
        assert_eq!(members.len(), 3);

        // Replica 1 starts first; replica 2 once replica 1 has started
        // (here: failed to, which must not hold it up).
        start_queued(&mut members);
        assert!(matches!(members[1].state, State::Waiting { .. }));
        assert!(matches!(members[2].state, State::Queued));
        members[1].failed(true, true);
        start_queued(&mut members);
        assert!(matches!(members[2].state, State::Waiting { .. }));

        // Group 1 leaves the catalog: its member (not running) is gone at
        // once; group 2's stay.
        follow_catalog(&mut members, &groups(&[2]), &layout, &mut skipped);
        let labels: Vec<&str> = members.iter().map(|m| m.label.as_str()).collect();
        assert_eq!(labels, ["g2r1", "g2r2"]);
        assert!(prometheus_targets(&members).ends_with("[\n\n]\n"));
    }

    #[test]
    fn only_a_listing_given_twice_in_a_row_is_acted_on() {
        let mut settle = Settle::default();
        assert_eq!(settle.answer(Some(groups(&[1, 2]))), None, "once");
        assert_eq!(settle.answer(Some(groups(&[1, 2]))), Some(groups(&[1, 2])));
        // A stale map lists a removed group once: not acted on.
        assert_eq!(settle.answer(Some(groups(&[1, 2, 3]))), None);
        assert_eq!(settle.answer(Some(groups(&[1, 2]))), None);
        assert_eq!(settle.answer(Some(groups(&[1, 2]))), Some(groups(&[1, 2])));
        // No answer in between: the count starts over.
        assert_eq!(settle.answer(Some(groups(&[1]))), None);
        assert_eq!(settle.answer(None), None);
        assert_eq!(settle.answer(Some(groups(&[1]))), None);
        assert_eq!(settle.answer(Some(groups(&[1]))), Some(groups(&[1])));
    }

    #[test]
    fn add_group_finds_a_running_dev_by_its_lock() {
        let dir = std::env::temp_dir().join(format!(
            "trellis-dev-lock-test-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("create the test directory");
        let none = running_dev(&dir).expect_err("no lock file: no dev");
        assert!(
            none.to_string().starts_with("no trellis dev is running on"),
            "{none}"
        );
        let lock = lock_data_dir(&dir).expect("take the lock");
        assert_eq!(
            running_dev(&dir).expect("the lock is held"),
            std::process::id().to_string()
        );
        drop(lock);
        let none = running_dev(&dir).expect_err("a lock file nobody holds: no dev");
        assert!(
            none.to_string().starts_with("no trellis dev is running on"),
            "{none}"
        );
        std::fs::remove_dir_all(&dir).expect("remove the test directory");
    }

    #[test]
    fn relayed_lines_are_labelled_in_text_and_stay_json_in_json() {
        let relayed = |line: &str, whole: bool, json: bool| {
            let mut out = Vec::new();
            label_line("g1r2", line.as_bytes(), whole, json, &mut out);
            String::from_utf8(out).expect("utf-8 in, utf-8 out")
        };
        assert_eq!(relayed("INFO x: hi\n", true, false), "[g1r2] INFO x: hi\n");
        assert_eq!(relayed("no newline", false, false), "[g1r2] no newline\n");
        // A JSON line keeps every byte, with the label as its first field.
        assert_eq!(
            relayed("{\"level\":\"INFO\",\"message\":\"hi\"}\n", true, true),
            "{\"process\":\"g1r2\",\"level\":\"INFO\",\"message\":\"hi\"}\n"
        );
        assert_eq!(relayed("{}\n", true, true), "{\"process\":\"g1r2\"}\n");
        // Not JSON, or a piece of an overlong line: wrapped as a message.
        assert_eq!(
            relayed("thread 'main' panicked at \"x\"\n", true, true),
            "{\"process\":\"g1r2\",\"message\":\"thread 'main' panicked at \\\"x\\\"\"}\n"
        );
        assert_eq!(
            relayed("{\"a\":{\"b\":1}", false, true),
            "{\"process\":\"g1r2\",\"message\":\"{\\\"a\\\":{\\\"b\\\":1}\"}\n"
        );
    }

    #[test]
    fn exits_are_described_in_words() {
        assert_eq!(describe(ExitStatus::from_raw(1 << 8)), "exited with code 1");
        assert_eq!(
            describe(ExitStatus::from_raw(libc::SIGKILL)),
            "was killed by signal 9 (SIGKILL)"
        );
    }

    #[test]
    fn quick_failures_back_off_to_the_cap_then_are_given_up_on() {
        let mut m = member();
        let mut waits = Vec::new();
        for _ in 0..QUICK_FAILURES_MAX {
            let wait = m.backoff;
            m.failed(true, true);
            match m.state {
                State::Waiting { .. } => waits.push(wait),
                State::Down => break,
                _ => panic!("a failed member waits or is down"),
            }
        }
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        assert!(matches!(m.state, State::Down), "given up on");
        assert_eq!(m.restarts, QUICK_FAILURES_MAX - 1);
    }

    #[test]
    fn a_member_that_ran_a_while_starts_over_and_no_restart_only_reports() {
        let mut m = member();
        for _ in 0..3 {
            m.failed(true, true);
        }
        m.failed(false, true);
        assert_eq!(m.quick_failures, 0);
        assert_eq!(
            m.backoff,
            RESTART_BACKOFF_FIRST * 2,
            "waits the first backoff"
        );
        let mut m = member();
        m.failed(false, false);
        assert!(matches!(m.state, State::Down));
        assert_eq!(m.restarts, 0);
    }
}
