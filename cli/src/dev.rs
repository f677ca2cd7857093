//! `trellis dev`: a whole local cluster from one command. The coordinator
//! and every shard run as separate child processes, so any one can be
//! killed to watch what happens; they exit with `trellis dev` (SIGTERM on
//! Ctrl-C, and by themselves if it is killed).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a child may take to print its READY line.
const CHILD_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long every group may take to register with the coordinator.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long children get to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How often the supervisor checks its children.
const SUPERVISE_INTERVAL: Duration = Duration::from_millis(500);
/// Most shard groups `trellis dev` starts.
const DEV_GROUPS_MAX: u32 = 64;
/// Most replicas per group.
const DEV_REPLICAS_MAX: u32 = 5;

#[derive(clap::Args)]
#[command(after_help = "\
Starts one coordinator (SQLite catalog in the data directory) and --replicas
shard processes per group (one primary, the rest backups), waits until every
group has a primary, and prints where to connect. Data is kept between runs: start it again with the same
--data-dir and everything is still there. Ctrl-C (or SIGTERM) stops every
child cleanly; if `trellis dev` itself is killed, its children notice and
exit.

Examples:
  cargo run --release -- dev
  trellis dev --groups 5 --replicas 1 --data-dir /tmp/trellis --listen 127.0.0.1:7000")]
pub struct Args {
    /// Where the catalog and every shard keep their data.
    #[arg(long, default_value = "./trellis-dev-data")]
    data_dir: PathBuf,
    /// Number of shard groups (fixed when the cluster is first created).
    #[arg(long, default_value_t = 3)]
    groups: u32,
    /// Replicas per group: a primary and replicas - 1 backups. With 3, any
    /// one replica of a group may fail without losing an acknowledged write.
    #[arg(long, default_value_t = 3)]
    replicas: u32,
    /// Address of the coordinator's client-facing gRPC service.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
}

/// A child process and what it is.
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

pub(crate) fn start(name: &str, args: &[String]) -> anyhow::Result<Kid> {
    let exe = std::env::current_exe().context("finding the trellis executable")?;
    let mut child = Command::new(exe)
        .args(args)
        .env(
            "TRELLIS_LOG",
            std::env::var("TRELLIS_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {name}"))?;
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
        for _ in lines {}
    });
    match rx.recv_timeout(CHILD_READY_TIMEOUT) {
        Ok(line) => Ok(Kid {
            name: name.to_string(),
            child,
            ready: line
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }),
        Err(_) => {
            let _ = child.kill();
            let status = child.wait().ok();
            bail!("{name} did not start (exit status {status:?}); its errors are above")
        }
    }
}

#[allow(unsafe_code)]
fn terminate(pid: u32) {
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own
    // child, not yet reaped.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

pub(crate) fn stop_all(kids: &mut [Kid]) {
    for kid in kids.iter() {
        terminate(kid.child.id());
    }
    let deadline = Instant::now() + STOP_GRACE;
    for kid in kids.iter_mut() {
        loop {
            match kid.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    eprintln!("{} did not stop in {STOP_GRACE:?}; killing it", kid.name);
                    let _ = kid.child.kill();
                    let _ = kid.child.wait();
                    break;
                }
            }
        }
    }
}

fn path_str(path: &Path) -> anyhow::Result<String> {
    path.to_str()
        .map(str::to_string)
        .with_context(|| format!("data directory {} is not valid UTF-8", path.display()))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.replicas == 0 || args.replicas > DEV_REPLICAS_MAX {
        bail!(
            "--replicas {}: a group has 1 to {DEV_REPLICAS_MAX} replicas",
            args.replicas
        );
    }
    if args.groups == 0 || args.groups > DEV_GROUPS_MAX {
        bail!("--groups must be between 1 and {DEV_GROUPS_MAX}");
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating the data directory {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    let catalog = format!("sqlite://{}", path_str(&data_dir.join("catalog.db"))?);

    let mut kids = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        let coordinator = start(
            "coordinator",
            &[
                "coordinator".into(),
                "--catalog".into(),
                catalog.clone(),
                "--listen".into(),
                args.listen.to_string(),
                "--groups".into(),
                args.groups.to_string(),
                "--exit-with-parent".into(),
            ],
        )?;
        let coordinator_addr = coordinator.field("grpc");
        eprintln!(
            "coordinator  pid {:<7} grpc {}  metrics http://{}/metrics",
            coordinator.child.id(),
            coordinator_addr,
            coordinator.field("metrics")
        );
        kids.push(coordinator);
        for (group, replica) in
            (1..=args.groups).flat_map(|g| (1..=args.replicas).map(move |r| (g, r)))
        {
            let dir = data_dir.join(format!("group-{group}-replica-{replica}"));
            let shard = start(
                &format!("shard group {group} replica {replica}"),
                &[
                    "shard".into(),
                    "--data-dir".into(),
                    path_str(&dir)?,
                    "--listen".into(),
                    "127.0.0.1:0".into(),
                    "--group".into(),
                    group.to_string(),
                    "--coordinator".into(),
                    coordinator_addr.clone(),
                    "--exit-with-parent".into(),
                ],
            )?;
            eprintln!(
                "group {group:<2} r{replica:<2} pid {:<7} grpc {}  metrics http://{}/metrics",
                shard.child.id(),
                shard.field("grpc"),
                shard.field("metrics")
            );
            kids.push(shard);
        }
        wait_registered(&coordinator_addr, args.groups)?;
        Ok(())
    })();
    if let Err(err) = result {
        stop_all(&mut kids);
        return Err(err);
    }

    let addr = kids[0].field("grpc");
    println!("READY grpc={addr}");
    eprintln!(
        "\nTrellis dev cluster is up: {} groups of {} replicas, data in {}\n  \
         clients connect to {addr} (gRPC, trellis.v1.Txn)\n  \
         cluster status: trellis status --addr {addr}\n  \
         Ctrl-C stops everything; data stays for the next run.",
        args.groups,
        args.replicas,
        data_dir.display()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = crate::signals::shutdown(false);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(SUPERVISE_INTERVAL) => {
                    for kid in kids.iter_mut() {
                        if let Ok(Some(status)) = kid.child.try_wait() {
                            eprintln!("{} (pid {}) exited: {status}; the rest of the cluster keeps running", kid.name, kid.child.id());
                            kid.name = format!("{} (exited)", kid.name);
                        }
                    }
                }
            }
        }
    });
    eprintln!("stopping the dev cluster");
    stop_all(&mut kids);
    Ok(())
}

fn wait_registered(addr: &str, groups: u32) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let deadline = Instant::now() + REGISTER_TIMEOUT;
    runtime.block_on(async {
        loop {
            if let Ok(status) = crate::status::fetch(addr).await {
                let up = status
                    .groups
                    .iter()
                    .filter(|g| g.members.iter().any(|m| m.role == "primary"))
                    .count();
                if up == groups as usize {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "not every group registered with the coordinator within {REGISTER_TIMEOUT:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}
