//! Starting and stopping real `trellis` processes for tests.
//!
//! Every process a test starts is owned by a [`Proc`]: dropping it kills the
//! process (by its PID, which we started) so a failing test leaves nothing
//! behind. Nothing here sends traffic anywhere but loopback.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use trellis_proto::shard::v1::shard_client::ShardClient;

/// How long a process may take to print its READY line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of every RPC a test sends.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// How long we wait for a process to exit after a signal.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// The `trellis` binary of this build profile, built first if needed.
///
/// `cargo test` does not build other packages' binaries, so the harness runs
/// `cargo build -p trellis` once per test process (a no-op when up to date).
/// Set `TRELLIS_BIN` to use another binary.
pub fn trellis_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("TRELLIS_BIN") {
            return PathBuf::from(path);
        }
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> → target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable lives in target/<profile>/deps")
            .to_path_buf();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "--quiet", "-p", "trellis", "--bin", "trellis"]);
        if release {
            build.arg("--release");
        }
        let status = build
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build for the trellis binary");
        assert!(status.success(), "cargo build of the trellis binary failed");
        let bin = profile_dir.join("trellis");
        assert!(bin.exists(), "no trellis binary at {}", bin.display());
        bin
    })
}

/// A running `trellis` process and what it printed on its READY line.
pub struct Proc {
    child: Option<Child>,
    pub pid: u32,
    /// `key=value` fields of the READY line.
    pub ready: Vec<(String, String)>,
    args: Vec<String>,
}

impl Proc {
    /// Starts `trellis <args>` and waits for its READY line.
    pub fn start(args: &[&str]) -> anyhow::Result<Proc> {
        Self::start_env(args, &[])
    }

    /// Starts `trellis <args>` with extra environment variables.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Proc> {
        Self::start_logged(args, env, None)
    }

    /// Starts `trellis <args>`; its stderr (the log) goes to the end of
    /// `log` if given, else to ours.
    pub fn start_logged(
        args: &[&str],
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> anyhow::Result<Proc> {
        Self::launch(args, env, log, None)
    }

    /// Starts `trellis <args>` inside the network namespace named by the
    /// file `netns` (see [`crate::netns::NetLab`]).
    pub fn start_in(netns: &Path, args: &[&str], log: Option<&Path>) -> anyhow::Result<Proc> {
        Self::launch(args, &[], log, Some(netns))
    }

    /// Starts `trellis <args>` with extra environment variables, its log
    /// at the end of `log` if given (else ours), inside the network
    /// namespace named by the file `netns` if given.
    pub fn launch(
        args: &[&str],
        env: &[(&str, &str)],
        log: Option<&Path>,
        netns: Option<&Path>,
    ) -> anyhow::Result<Proc> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let stderr = match log {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            None => Stdio::inherit(),
        };
        let mut command = Command::new(trellis_bin());
        command
            .args(&args)
            .env(
                "TRELLIS_LOG",
                std::env::var("TRELLIS_LOG").unwrap_or_else(|_| "warn".into()),
            )
            // After the default, so that a test may set its own TRELLIS_LOG.
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        // Kept open until the child has started: its fd is what setns takes.
        let ns_file = netns
            .map(|path| {
                std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
            })
            .transpose()?;
        if let Some(file) = &ns_file {
            use std::os::fd::AsRawFd;
            enter_netns_at_exec(&mut command, file.as_raw_fd());
        }
        let mut child = command.spawn()?;
        drop(ns_file);
        let pid = child.id();
        let stdout = child.stdout.take().expect("stdout is piped");
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
            // Keep draining so the process never blocks on a full pipe.
            for _ in lines {}
        });
        let mut proc = Proc {
            child: Some(child),
            pid,
            ready: Vec::new(),
            args,
        };
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => {
                proc.ready = line
                    .split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                Ok(proc)
            }
            Err(_) => {
                let status = proc
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                anyhow::bail!(
                    "trellis {:?} printed no READY line (exit status {status:?})",
                    proc.args
                )
            }
        }
    }

    /// A field of the READY line, e.g. `grpc`.
    pub fn field(&self, key: &str) -> &str {
        self.ready
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("READY line has no {key}= field: {:?}", self.ready))
    }

    /// Sends `signal` to the process (which we started).
    pub fn signal(&self, signal: i32) {
        // SAFETY-free: libc::kill on our own child's PID.
        let rc = unsafe_kill(self.pid, signal);
        assert!(
            rc == 0 || signal == libc::SIGKILL,
            "kill({}, {signal}) failed",
            self.pid
        );
    }

    /// Waits for the process to exit by itself (e.g. at a failpoint);
    /// returns its status, or `None` if it did not exit in time.
    pub fn wait_exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.wait_exit()
    }

    /// SIGKILL, then reap.
    pub fn kill9(mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit();
    }

    /// SIGTERM; returns whether it exited successfully in time.
    pub fn terminate(mut self) -> bool {
        self.signal(libc::SIGTERM);
        self.wait_exit().is_some_and(|s| s.success())
    }

    fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = std::time::Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Makes the child enter network namespace `fd` between fork and exec.
#[allow(unsafe_code)]
fn enter_netns_at_exec(command: &mut Command, fd: std::os::fd::RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs only setns, a single async-signal-safe system
    // call, and allocates nothing; `fd` stays open until spawn returns.
    unsafe {
        command.pre_exec(move || crate::netns::setns_net(fd));
    }
}

/// Sends `signal` to `pid`, a process of a cluster the test started (e.g.
/// a child of `trellis dev`); returns whether it was delivered.
pub fn signal_pid(pid: u32, signal: i32) -> bool {
    unsafe_kill(pid, signal) == 0
}

#[allow(unsafe_code)]
fn unsafe_kill(pid: u32, signal: i32) -> i32 {
    // SAFETY: kill(2) has no memory-safety preconditions; the PID is one of
    // our own children that has not been reaped yet.
    unsafe { libc::kill(pid as libc::pid_t, signal) }
}

/// A gRPC channel to `addr` with connect and request deadlines (mutual
/// TLS when the test installed an identity, `trellis_net::tls::install`).
pub async fn channel(addr: &str) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(RPC_TIMEOUT)
        .timeout(RPC_TIMEOUT);
    Ok(trellis_net::connect(endpoint).await?)
}

/// A shard client for the process's gRPC address.
pub async fn shard_client(proc: &Proc) -> anyhow::Result<ShardClient<Channel>> {
    Ok(ShardClient::new(channel(proc.field("grpc")).await?))
}

/// A fresh 16-byte transaction id.
pub fn txn_id() -> Vec<u8> {
    rand::random::<[u8; 16]>().to_vec()
}

/// A cluster of real processes: one or more coordinators and one shard per
/// group, each on `127.0.0.1:0`, data in a temporary directory
/// ([`Cluster::start`]); built by [`crate::cluster::ClusterBuilder`].
pub type Cluster = crate::cluster::TestCluster;

pub use crate::cluster::CLUSTER_READY_TIMEOUT;

/// Is a process with this PID still running (not gone, not a zombie)?
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesized command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Waits (bounded) until none of `pids` is running.
pub fn wait_gone(pids: &[u32], timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if pids.iter().all(|p| !alive(*p)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A plain HTTP GET on loopback (for /metrics), with a deadline.
pub async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut out = String::new();
    tokio::time::timeout(RPC_TIMEOUT, stream.read_to_string(&mut out))
        .await
        .expect("answered in time")
        .expect("read");
    out
}

/// The value of the first series written exactly `series` (name and
/// labels, as served) in a `/metrics` answer, if there is one.
pub fn metric_sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// Runs `trellis <args>` to its end (every admin command has its own
/// deadline), with colours off.
pub fn run_trellis(args: &[&str]) -> std::process::Output {
    std::process::Command::new(trellis_bin())
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("run trellis {args:?}: {e}"))
}

/// Runs `command` to its end with its output captured (standard input
/// closed), or SIGKILLs it by pid and fails the test after `timeout`.
pub fn output_within(
    mut command: std::process::Command,
    timeout: Duration,
) -> std::process::Output {
    let child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {command:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(output) => output.unwrap_or_else(|e| panic!("waiting for {command:?}: {e}")),
        Err(_) => {
            signal_pid(pid, libc::SIGKILL);
            panic!("{command:?} (pid {pid}) did not finish within {timeout:?}");
        }
    }
}

/// What a command printed, for assertion messages.
pub fn printed(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a `trellis` command that must succeed; returns its stdout.
pub fn admin_ok(args: &[&str]) -> String {
    let out = run_trellis(args);
    assert!(out.status.success(), "trellis {args:?}: {}", printed(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a `trellis` command that must fail at run time (exit code 1, as
/// the admin commands do when the coordinator refuses); returns its
/// stderr.
pub fn admin_refused(args: &[&str]) -> String {
    let out = run_trellis(args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "trellis {args:?} must be refused: {}",
        printed(&out)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The TLS files `trellis cert` wrote in `dir` for certificate `name`:
/// the CA bundle `ca.pem`, `NAME.pem` and `NAME-key.pem`.
pub fn tls_files(dir: &Path, name: &str) -> trellis_net::tls::TlsFiles {
    trellis_net::tls::TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
    }
}

/// `files` as the `--tls-*` flags of a command.
pub fn tls_flags(files: &trellis_net::tls::TlsFiles) -> Vec<String> {
    [
        ("--tls-ca", &files.ca),
        ("--tls-cert", &files.cert),
        ("--tls-key", &files.key),
    ]
    .into_iter()
    .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
    .collect()
}
