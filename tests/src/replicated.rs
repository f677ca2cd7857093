//! A cluster whose groups have several replicas: one coordinator over a
//! SQLite catalog and `replicas` shard processes per group, each on its own
//! data directory, so tests can kill, stop and restart any one of them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use trellis_proto::v1;

use crate::harness::{Proc, channel};
use crate::netns::NetLab;

/// How long a group may take to settle (a failover, a catch-up).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ReplicatedCluster {
    pub dir: tempfile::TempDir,
    pub coordinator: Proc,
    pub groups: u32,
    pub replicas: u32,
    /// `procs[g - 1][r - 1]`: replica `r` of group `g` (None while down).
    pub procs: Vec<Vec<Option<Proc>>>,
    /// Extra arguments for every shard.
    shard_args: Vec<String>,
    /// Where each process runs: node name -> (namespace file, address);
    /// empty: all on loopback in our own namespace.
    placement: BTreeMap<String, (PathBuf, String)>,
}

/// The lab node of the coordinator.
pub const COORD_NODE: &str = "coord";
/// The lab node the test body (the clients) runs in.
pub const CLIENT_NODE: &str = "client";

/// The lab node of replica `replica` of `group`.
pub fn replica_node(group: u32, replica: u32) -> String {
    format!("g{group}r{replica}")
}

/// The nodes of a lab for [`ReplicatedCluster::start_in`].
pub fn lab_nodes(groups: u32, replicas: u32) -> Vec<String> {
    let mut nodes = vec![CLIENT_NODE.to_string(), COORD_NODE.to_string()];
    for g in 1..=groups {
        nodes.extend((1..=replicas).map(|r| replica_node(g, r)));
    }
    nodes
}

impl ReplicatedCluster {
    pub async fn start(
        groups: u32,
        replicas: u32,
        shard_args: &[&str],
    ) -> anyhow::Result<ReplicatedCluster> {
        Self::start_placed(groups, replicas, shard_args, BTreeMap::new()).await
    }

    /// The same cluster with every process in its own node of `lab` (made
    /// with [`lab_nodes`]); the caller runs inside [`CLIENT_NODE`].
    pub async fn start_in(
        lab: &NetLab,
        groups: u32,
        replicas: u32,
        shard_args: &[&str],
    ) -> anyhow::Result<ReplicatedCluster> {
        let placement = lab_nodes(groups, replicas)
            .into_iter()
            .map(|node| {
                let at = (lab.ns_path(&node), lab.ip(&node).to_string());
                (node, at)
            })
            .collect();
        Self::start_placed(groups, replicas, shard_args, placement).await
    }

    async fn start_placed(
        groups: u32,
        replicas: u32,
        shard_args: &[&str],
        placement: BTreeMap<String, (PathBuf, String)>,
    ) -> anyhow::Result<ReplicatedCluster> {
        let dir = tempfile::tempdir()?;
        let (_, host) = place(&placement, COORD_NODE);
        let coordinator = coordinator_proc(&dir, &placement, groups, &format!("{host}:0"))?;
        let mut cluster = ReplicatedCluster {
            dir,
            coordinator,
            groups,
            replicas,
            procs: Vec::new(),
            shard_args: shard_args.iter().map(|s| s.to_string()).collect(),
            placement,
        };
        for g in 1..=groups {
            let mut row = Vec::new();
            for r in 1..=replicas {
                row.push(Some(cluster.replica_proc(g, r)?));
            }
            cluster.procs.push(row);
        }
        cluster
            .wait_for("every replica in sync", |s| {
                s.groups.iter().all(|g| {
                    g.members.len() == replicas as usize
                        && g.members.iter().filter(|m| m.role == "primary").count() == 1
                        && g.members.iter().all(|m| m.in_sync && m.lag_records == 0)
                })
            })
            .await?;
        Ok(cluster)
    }

    fn replica_proc(&self, group: u32, replica: u32) -> anyhow::Result<Proc> {
        let data = self
            .dir
            .path()
            .join(format!("group-{group}-replica-{replica}"));
        let data = data.to_str().expect("utf-8 temp path").to_string();
        let (netns, host) = place(&self.placement, &replica_node(group, replica));
        let listen = format!("{host}:0");
        let group = group.to_string();
        let coordinator = self.coordinator.field("grpc").to_string();
        let mut args = vec![
            "shard",
            "--data-dir",
            &data,
            "--listen",
            &listen,
            "--metrics-listen",
            &listen,
            "--group",
            &group,
            "--coordinator",
            &coordinator,
        ];
        args.extend(self.shard_args.iter().map(String::as_str));
        start_at(netns, &args)
    }

    pub fn addr(&self) -> &str {
        self.coordinator.field("grpc")
    }

    pub async fn txn(
        &self,
    ) -> anyhow::Result<v1::txn_client::TxnClient<tonic::transport::Channel>> {
        Ok(v1::txn_client::TxnClient::new(channel(self.addr()).await?))
    }

    pub async fn status(&self) -> anyhow::Result<v1::StatusResponse> {
        let mut admin = v1::admin_client::AdminClient::new(channel(self.addr()).await?);
        Ok(admin.status(v1::StatusRequest {}).await?.into_inner())
    }

    /// Polls the status until `pred` holds; errs with the last status after
    /// [`SETTLE_TIMEOUT`].
    pub async fn wait_for(
        &self,
        what: &str,
        pred: impl Fn(&v1::StatusResponse) -> bool,
    ) -> anyhow::Result<v1::StatusResponse> {
        let deadline = std::time::Instant::now() + SETTLE_TIMEOUT;
        let mut last = None;
        loop {
            if let Ok(status) = self.status().await {
                if pred(&status) {
                    return Ok(status);
                }
                last = Some(status);
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "{what}: not within {SETTLE_TIMEOUT:?}; last status {last:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The replica number (1-based) of `group` at `addr`.
    pub fn replica_at(&self, group: u32, addr: &str) -> Option<u32> {
        self.procs[group as usize - 1]
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| p.field("grpc") == addr))
            .map(|i| i as u32 + 1)
    }

    /// The replica number of `group`'s current primary.
    pub async fn primary(&self, group: u32) -> anyhow::Result<u32> {
        let status = self
            .wait_for("a serving primary", |s| {
                s.groups[group as usize - 1]
                    .members
                    .iter()
                    .any(|m| m.role == "primary" && m.lease_ms > 0)
            })
            .await?;
        let addr = status.groups[group as usize - 1]
            .members
            .iter()
            .find(|m| m.role == "primary")
            .map(|m| m.address.clone())
            .expect("found above");
        self.replica_at(group, &addr)
            .ok_or_else(|| anyhow::anyhow!("primary {addr} is not one of ours"))
    }

    pub fn proc(&self, group: u32, replica: u32) -> &Proc {
        self.procs[group as usize - 1][replica as usize - 1]
            .as_ref()
            .expect("replica is running")
    }

    /// SIGKILL of one replica.
    pub fn kill9(&mut self, group: u32, replica: u32) {
        if let Some(proc) = self.procs[group as usize - 1][replica as usize - 1].take() {
            proc.kill9();
        }
    }

    /// SIGKILL of the coordinator; [`Self::restart_coordinator`] starts it
    /// again.
    pub fn kill_coordinator(&self) {
        self.coordinator.signal(libc::SIGKILL);
    }

    /// Starts the coordinator again on its catalog and its address (the
    /// replicas and clients were given that address), replacing a killed
    /// one.
    pub fn restart_coordinator(&mut self) -> anyhow::Result<()> {
        let addr = self.addr().to_string();
        // The old process must be gone (and its port free) first.
        self.coordinator.signal(libc::SIGKILL);
        let _ = self.coordinator.wait_exit_status();
        self.coordinator = coordinator_proc(&self.dir, &self.placement, self.groups, &addr)?;
        Ok(())
    }

    /// Starts a killed replica again on its data directory (and address).
    pub fn restart(&mut self, group: u32, replica: u32) -> anyhow::Result<()> {
        let proc = self.replica_proc(group, replica)?;
        self.procs[group as usize - 1][replica as usize - 1] = Some(proc);
        Ok(())
    }
}

/// The coordinator of a cluster in `dir`, on its SQLite catalog there,
/// listening on `listen`.
fn coordinator_proc(
    dir: &tempfile::TempDir,
    placement: &BTreeMap<String, (PathBuf, String)>,
    groups: u32,
    listen: &str,
) -> anyhow::Result<Proc> {
    let catalog = format!("sqlite://{}", dir.path().join("catalog.db").display());
    let (netns, host) = place(placement, COORD_NODE);
    let metrics = format!("{host}:0");
    start_at(
        netns,
        &[
            "coordinator",
            "--catalog",
            &catalog,
            "--listen",
            listen,
            "--metrics-listen",
            &metrics,
            "--groups",
            &groups.to_string(),
        ],
    )
}

/// Where `node` runs: its namespace file (None: ours) and listen host.
fn place<'a>(
    placement: &'a BTreeMap<String, (PathBuf, String)>,
    node: &str,
) -> (Option<&'a std::path::Path>, &'a str) {
    match placement.get(node) {
        Some((netns, host)) => (Some(netns.as_path()), host.as_str()),
        None => (None, "127.0.0.1"),
    }
}

fn start_at(netns: Option<&std::path::Path>, args: &[&str]) -> anyhow::Result<Proc> {
    match netns {
        Some(netns) => Proc::start_in(netns, args, None),
        None => Proc::start(args),
    }
}
