//! A network of our own for fault tests: one Linux network namespace per
//! node, joined by veth pairs to a bridge in a namespace of its own, and
//! partitions made with blackhole routes inside the nodes' namespaces.
//!
//! ```text
//!   ns <prefix>-client   ns <prefix>-coord   ns <prefix>-g1r1 ...
//!        eth0 10.213.0.1     eth0 10.213.0.2     eth0 10.213.0.3
//!          │                   │                   │
//!          └──── veth ─────────┴──── br0 in ns <prefix>-switch
//! ```
//!
//! A proxy can cut a link only where it sits; here every packet between
//! two nodes crosses the kernel, so any pair of processes can be cut apart
//! — a primary from its backups while both still reach the coordinator —
//! the way a real network fails. A cut is a `blackhole` route to the other
//! node's address in each side's namespace (one side only for a one-way
//! cut): packets are dropped silently, established connections included,
//! as an `iptables -j DROP` would (the `iptables` binary is not on our
//! machines; `ip` is).
//!
//! # What it never does
//!
//! - Touch the namespace the tests run in: links are made inside the
//!   switch namespace with their peer end created straight in the node's
//!   namespace, and the subnet exists only in namespaces made here.
//! - Outlive the test: dropping the [`NetLab`] deletes every namespace it
//!   made (stop the processes first; a namespace with processes in it
//!   lives on, unnamed, until they exit).
//!
//! Needs root (`CAP_SYS_ADMIN` and `CAP_NET_ADMIN`) and `ip netns`;
//! [`NetLab::create`] says plainly when they are missing.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// The nodes' subnet (a /24; node `i` of a lab is `.i+1`). It exists only
/// inside the lab's namespaces, so labs of concurrent tests do not clash.
pub const SUBNET: [u8; 3] = [10, 213, 0];
/// Most nodes in one lab (addresses `.1` to `.NODES_MAX`).
pub const NODES_MAX: usize = 200;
/// Where `ip netns` keeps the namespaces it names.
const NETNS_DIR: &str = "/var/run/netns";

/// Namespaces of one test, one per node, and the cuts in force.
#[derive(Debug)]
pub struct NetLab {
    prefix: String,
    nodes: Vec<String>,
    /// Cuts in force: (from, to) node indexes; packets from `from` to `to`
    /// are dropped. Behind a lock so a test body running inside the lab
    /// ([`NetLab::run_in`]) can cut and heal.
    cuts: Mutex<BTreeSet<(usize, usize)>>,
    /// Namespaces made so far (for the cleanup, also after a failure).
    made: Vec<String>,
}

#[allow(unsafe_code)]
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Moves the calling thread into the network namespace `fd` refers to.
/// Async-signal-safe (one system call), so fit for `pre_exec`.
#[allow(unsafe_code)]
pub(crate) fn setns_net(fd: std::os::fd::RawFd) -> std::io::Result<()> {
    // SAFETY: setns only reads its arguments; a bad fd is an error return.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run `ip`: {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl NetLab {
    /// Makes a namespace per node (named `trellis-<pid>-<tag>-<node>`),
    /// each with `lo` up and `eth0` on the lab's bridge.
    pub fn create(tag: &str, nodes: &[&str]) -> anyhow::Result<NetLab> {
        anyhow::ensure!(
            nodes.len() <= NODES_MAX,
            "a lab has at most {NODES_MAX} nodes"
        );
        anyhow::ensure!(
            is_root(),
            "network-namespace tests need root (CAP_SYS_ADMIN, CAP_NET_ADMIN)"
        );
        let mut lab = NetLab {
            prefix: format!("trellis-{}-{tag}", std::process::id()),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            cuts: Mutex::default(),
            made: Vec::new(),
        };
        let switch = lab.ns_name("switch");
        lab.add_ns(&switch)?;
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        for (i, node) in nodes.iter().enumerate() {
            let ns = lab.ns_name(node);
            lab.add_ns(&ns)?;
            let port = format!("p{i}");
            ip(&[
                "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            ip(&["-n", &switch, "link", "set", &port, "master", "br0", "up"])?;
            let addr = format!("{}/24", lab.ip(node));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(lab)
    }

    fn ns_name(&self, node: &str) -> String {
        format!("{}-{node}", self.prefix)
    }

    fn add_ns(&mut self, ns: &str) -> anyhow::Result<()> {
        ip(&["netns", "add", ns]).map_err(|e| {
            anyhow::anyhow!("{e} (network-namespace tests need root and `ip netns`)")
        })?;
        self.made.push(ns.to_string());
        ip(&["-n", ns, "link", "set", "lo", "up"])
    }

    fn index(&self, node: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n == node)
            .unwrap_or_else(|| panic!("{node} is not a node of this lab"))
    }

    /// The node's address.
    pub fn ip(&self, node: &str) -> Ipv4Addr {
        let [a, b, c] = SUBNET;
        Ipv4Addr::new(a, b, c, self.index(node) as u8 + 1)
    }

    /// The file naming the node's namespace (for `setns`).
    pub fn ns_path(&self, node: &str) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(self.ns_name(node))
    }

    /// Moves the calling thread into the node's namespace; sockets it
    /// opens from now on, and threads it starts, live there.
    pub fn enter(&self, node: &str) -> anyhow::Result<()> {
        let path = self.ns_path(node);
        let file =
            std::fs::File::open(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        setns_net(file.as_raw_fd())
            .map_err(|e| anyhow::anyhow!("setns into {}: {e}", path.display()))
    }

    /// Runs `body` on a thread of its own inside `node`'s namespace, on a
    /// tokio runtime whose threads (started from there) are inside too.
    pub fn run_in<T, F, Fut>(&self, node: &str, body: F) -> anyhow::Result<T>
    where
        T: Send,
        F: FnOnce() -> Fut + Send,
        Fut: std::future::Future<Output = T>,
    {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    self.enter(node)?;
                    let runtime = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()?;
                    Ok(runtime.block_on(body()))
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the body in {node}'s namespace panicked"))?
        })
    }

    /// Drops every packet from `from` to `to` (a one-way cut: TCP between
    /// them stalls, as no acknowledgement comes back).
    pub fn cut_oneway(&self, from: &str, to: &str) -> anyhow::Result<()> {
        let key = (self.index(from), self.index(to));
        let mut cuts = self.cuts.lock().unwrap_or_else(|p| p.into_inner());
        if cuts.insert(key) {
            let dest = format!("{}/32", self.ip(to));
            ip(&[
                "-n",
                &self.ns_name(from),
                "route",
                "add",
                "blackhole",
                &dest,
            ])?;
        }
        Ok(())
    }

    /// Cuts `a` and `b` apart, both ways.
    pub fn cut(&self, a: &str, b: &str) -> anyhow::Result<()> {
        self.cut_oneway(a, b)?;
        self.cut_oneway(b, a)
    }

    /// Cuts in force, as (from, to) node names.
    pub fn cuts(&self) -> Vec<(String, String)> {
        self.cuts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|&(f, t)| (self.nodes[f].clone(), self.nodes[t].clone()))
            .collect()
    }

    /// Ends every cut.
    pub fn heal_all(&self) -> anyhow::Result<()> {
        let cuts = std::mem::take(&mut *self.cuts.lock().unwrap_or_else(|p| p.into_inner()));
        for (from, to) in cuts {
            let dest = format!("{}/32", self.ip(&self.nodes[to]));
            let ns = self.ns_name(&self.nodes[from]);
            ip(&["-n", &ns, "route", "del", "blackhole", &dest])?;
        }
        Ok(())
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            if let Err(err) = ip(&["netns", "del", ns]) {
                eprintln!("netns cleanup: {err}");
            }
        }
    }
}
