//! One builder for every test cluster of real processes: coordinators over
//! one SQLite catalog and `replicas` shard processes per group, each on
//! `127.0.0.1:0` (or on its node of a [`NetLab`]), data in a run directory.
//!
//! ```text
//! ClusterBuilder::new(dir).groups(3).replicas(2).coordinators(2)
//!     .proxies().logs().disks(true)   // the nemesis' cluster
//!     .netns(&lab)                    // every process in its own namespace
//!     .start().await?
//! ```
//!
//! The pieces every cluster shares live here once: start a coordinator
//! process, start a shard (replica) process, wait until a coordinator's
//! status says every group is served, add up what is prepared, kill and
//! restart a process by its PID. The four shapes tests use are thin layers
//! over [`TestCluster`]: [`crate::harness::Cluster`] (an alias),
//! [`crate::nemesis::FaultCluster`] (adds faults through proxies and
//! disks), [`crate::replicated::ReplicatedCluster`] (adds primaries and
//! failover) and [`crate::lab_nemesis::LabCluster`] (faults in a lab).
//!
//! # What it never does
//!
//! - Send traffic anywhere but loopback or the namespaces of a lab the
//!   test made.
//! - Leave a process behind: each is a [`Proc`], killed by its PID when
//!   its slot is emptied or the cluster dropped (also when a test panics);
//!   each proxy stops on drop; disks are unmounted after the processes die.
//! - Wait without a deadline: every wait below has a named timeout.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use trellis_proto::v1;
use trellis_proto::v1::admin_client::AdminClient;
use trellis_proto::v1::txn_client::TxnClient;

use crate::harness::{Proc, channel};
use crate::netns::NetLab;
use crate::proxy::Proxy;

/// How long a whole cluster may take to have every group served.
pub const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a replicated cluster may take to have every replica in sync.
pub const IN_SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two status polls while a cluster comes up.
pub const READY_POLL_EVERY: Duration = Duration::from_millis(100);

/// Size of each shard's tmpfs when the cluster has disks
/// ([`ClusterBuilder::disks`]).
pub const DISK_BYTES: u64 = 128 << 20;
/// The lab node of the coordinator.
pub const COORD_NODE: &str = "coord";
/// The lab node the test body (the clients) runs in.
pub const CLIENT_NODE: &str = "client";
/// Where a process listens when it is not in a lab.
const LOOPBACK: &str = "127.0.0.1";

/// The lab node of replica `replica` of `group`.
pub fn replica_node(group: u32, replica: u32) -> String {
    format!("g{group}r{replica}")
}

/// The nodes of a lab for a cluster of `groups` × `replicas` (see
/// [`ClusterBuilder::netns`]).
pub fn lab_nodes(groups: u32, replicas: u32) -> Vec<String> {
    let mut nodes = vec![CLIENT_NODE.to_string(), COORD_NODE.to_string()];
    for g in 1..=groups {
        nodes.extend((1..=replicas).map(|r| replica_node(g, r)));
    }
    nodes
}

/// Where a cluster keeps its catalog, data and logs.
#[derive(Debug)]
pub enum RunDir {
    /// A temporary directory, removed when the cluster is dropped.
    Temp(tempfile::TempDir),
    /// A directory the caller owns (and keeps).
    At(PathBuf),
}

impl RunDir {
    /// The directory's path.
    pub fn path(&self) -> &Path {
        match self {
            RunDir::Temp(dir) => dir.path(),
            RunDir::At(dir) => dir,
        }
    }
}

impl From<tempfile::TempDir> for RunDir {
    fn from(dir: tempfile::TempDir) -> Self {
        RunDir::Temp(dir)
    }
}

impl From<&Path> for RunDir {
    fn from(dir: &Path) -> Self {
        RunDir::At(dir.to_path_buf())
    }
}

/// What [`ClusterBuilder::start`] waits for before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// Coordinator 0 sees a primary in every group (within
    /// [`CLUSTER_READY_TIMEOUT`]).
    Served,
    /// Coordinator 0 sees every group with all its replicas, one primary,
    /// and every replica in sync with nothing to catch up (within
    /// [`IN_SYNC_TIMEOUT`]).
    InSync,
}

/// The options of a test cluster; [`ClusterBuilder::start`] starts it.
#[derive(Debug)]
pub struct ClusterBuilder<'a> {
    dir: RunDir,
    catalog: Option<String>,
    groups: u32,
    replicas: Option<u32>,
    coordinators: usize,
    coordinator_env: Vec<(String, String)>,
    shard_args: Vec<String>,
    disks: bool,
    lab: Option<&'a NetLab>,
    proxies: bool,
    logs: bool,
    ready: Ready,
    /// Environment of every shard at its first start.
    shard_env: Vec<(String, String)>,
}

impl<'a> ClusterBuilder<'a> {
    /// One coordinator and one shard (one group), data in `dir`, on a
    /// fresh SQLite catalog there; waits for [`Ready::Served`].
    pub fn new(dir: impl Into<RunDir>) -> Self {
        ClusterBuilder {
            dir: dir.into(),
            catalog: None,
            groups: 1,
            replicas: None,
            coordinators: 1,
            coordinator_env: Vec::new(),
            shard_args: Vec::new(),
            disks: false,
            lab: None,
            proxies: false,
            logs: false,
            ready: Ready::Served,
            shard_env: Vec::new(),
        }
    }

    /// Environment of every shard at its first start (e.g.
    /// `TRELLIS_FAILPOINTS`).
    pub fn shard_env(mut self, env: &[(&str, &str)]) -> Self {
        self.shard_env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self
    }

    /// How many groups (from 1).
    pub fn groups(mut self, groups: u32) -> Self {
        self.groups = groups;
        self
    }

    /// Replica processes per group; each has a data directory of its own
    /// (`group-<g>-replica-<r>`; without this option, `group-<g>`).
    pub fn replicas(mut self, replicas: u32) -> Self {
        self.replicas = Some(replicas);
        self
    }

    /// How many coordinators; the first creates the cluster in the catalog.
    pub fn coordinators(mut self, coordinators: usize) -> Self {
        self.coordinators = coordinators;
        self
    }

    /// The catalog's URL instead of a SQLite file in the run directory.
    pub fn catalog(mut self, url: impl Into<String>) -> Self {
        self.catalog = Some(url.into());
        self
    }

    /// Environment of the first coordinator (e.g. `TRELLIS_FAILPOINTS`).
    pub fn coordinator_env(mut self, env: &[(&str, &str)]) -> Self {
        self.coordinator_env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self
    }

    /// Extra arguments for every shard process.
    pub fn shard_args(mut self, args: &[&str]) -> Self {
        self.shard_args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// With `true`, each group's data lives on a tmpfs of
    /// [`DISK_BYTES`] of its own (for the nemesis' disk-full fault). Mounting needs root: if
    /// it fails, the cluster starts without disks ([`TestCluster::has_disks`]).
    pub fn disks(mut self, disks: bool) -> Self {
        self.disks = disks;
        self
    }

    /// Every process in its own node of `lab` (made with [`lab_nodes`]);
    /// the caller runs inside [`CLIENT_NODE`].
    pub fn netns(mut self, lab: &'a NetLab) -> Self {
        self.lab = Some(lab);
        self
    }

    /// A fault [`Proxy`] in front of every process: clients dial the
    /// coordinators' proxies, and every process advertises its proxy's
    /// address (`--advertise`), so all traffic to it crosses the proxy.
    pub fn proxies(mut self) -> Self {
        self.proxies = true;
        self
    }

    /// Each process' log (stderr) goes to `<dir>/<node>.log` instead of
    /// ours.
    pub fn logs(mut self) -> Self {
        self.logs = true;
        self
    }

    /// What [`ClusterBuilder::start`] waits for.
    pub fn ready(mut self, ready: Ready) -> Self {
        self.ready = ready;
        self
    }

    /// Starts the coordinators (the first with `--groups`), then every
    /// replica of every group registering with the first, and waits as
    /// [`ClusterBuilder::ready`] says.
    pub async fn start(self) -> anyhow::Result<TestCluster> {
        anyhow::ensure!(
            self.coordinators >= 1 && self.groups >= 1 && self.replicas != Some(0),
            "an empty cluster"
        );
        let dir = self.dir;
        let groups = self.groups;
        let replicas = self.replicas.unwrap_or(1);
        let disks = if self.disks {
            mount_disks(dir.path(), groups)
        } else {
            Vec::new()
        };
        let catalog = self
            .catalog
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("catalog.db").display()));
        let placement = match self.lab {
            Some(lab) => lab_nodes(groups, replicas)
                .into_iter()
                .map(|node| {
                    let at = (lab.ns_path(&node), lab.ip(&node).to_string());
                    (node, at)
                })
                .collect(),
            None => BTreeMap::new(),
        };
        let mut cluster = TestCluster {
            dir,
            catalog,
            groups,
            groups_created: groups,
            replicas,
            dir_per_replica: self.replicas.is_some(),
            shard_args: self.shard_args,
            placement,
            logs: self.logs,
            proxies: self.proxies,
            disks,
            coordinators: Vec::new(),
            shards: Vec::new(),
        };
        let env: Vec<(&str, &str)> = self
            .coordinator_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        for i in 0..self.coordinators {
            cluster.coordinators.push(cluster.new_slot().await?);
            let create = i == 0;
            let env = if create { env.as_slice() } else { &[] };
            cluster.start_coordinator(i, CoordinatorStart::new(create, env))?;
        }
        for g in 1..=groups {
            let mut row = Vec::new();
            for _ in 1..=replicas {
                row.push(cluster.new_slot().await?);
            }
            cluster.shards.push(row);
            let shard_env: Vec<(&str, &str)> = self
                .shard_env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            for r in 1..=replicas {
                let registrar = cluster.registrar()?;
                cluster.start_shard(g, r, &registrar, &shard_env)?;
            }
        }
        match self.ready {
            Ready::Served => cluster.wait_registered(0).await?,
            Ready::InSync => {
                cluster
                    .wait_for(0, "every replica in sync", IN_SYNC_TIMEOUT, |s| {
                        every_replica_in_sync(s, replicas)
                    })
                    .await?;
            }
        }
        Ok(cluster)
    }
}

/// How to start a coordinator.
#[derive(Debug, Clone, Copy)]
pub struct CoordinatorStart<'e> {
    /// Pass `--groups` (the first coordinator creates the cluster).
    pub create: bool,
    /// Listen here instead of on port 0 of its host (a restart on the
    /// address replicas and clients were given).
    pub listen: Option<&'e str>,
    /// Extra environment (e.g. `TRELLIS_FAILPOINTS`).
    pub env: &'e [(&'e str, &'e str)],
}

impl<'e> CoordinatorStart<'e> {
    /// On port 0 of its host, `--groups` if `create`, with `env`.
    pub fn new(create: bool, env: &'e [(&'e str, &'e str)]) -> Self {
        CoordinatorStart {
            create,
            listen: None,
            env,
        }
    }
}

/// One process of a cluster (while it runs) and the proxy in front of it,
/// if the cluster has proxies.
#[derive(Default)]
pub struct Slot {
    /// The process; `None` while it is down.
    pub proc: Option<Proc>,
    /// Its fault proxy.
    pub proxy: Option<Proxy>,
}

/// A running cluster of real processes (see the module doc). Dropping it
/// kills every process (by PID), stops every proxy and unmounts its disks.
pub struct TestCluster {
    dir: RunDir,
    catalog: String,
    groups: u32,
    /// Groups the catalog was created with (before any `add_group`).
    groups_created: u32,
    replicas: u32,
    /// Data directories are `group-<g>-replica-<r>` (else `group-<g>`).
    dir_per_replica: bool,
    shard_args: Vec<String>,
    /// Where each process runs: node name -> (namespace file, address);
    /// empty: all on loopback in our own namespace.
    placement: BTreeMap<String, (PathBuf, String)>,
    logs: bool,
    proxies: bool,
    /// Per group, the tmpfs mounted for its data, if any.
    disks: Vec<PathBuf>,
    /// Coordinator `i` is `coordinators[i]`.
    pub coordinators: Vec<Slot>,
    /// `shards[g - 1][r - 1]`: replica `r` of group `g`.
    pub shards: Vec<Vec<Slot>>,
}

/// A placeholder upstream until a process has told us its port.
fn nowhere() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1))
}

impl TestCluster {
    /// A coordinator over a fresh SQLite catalog and `groups` shards, in a
    /// temporary directory: the cluster most tests use.
    pub async fn start(groups: u32) -> anyhow::Result<TestCluster> {
        ClusterBuilder::new(tempfile::tempdir()?)
            .groups(groups)
            .start()
            .await
    }

    /// Like [`TestCluster::start`] over `catalog`; `env` goes to the first
    /// coordinator.
    pub async fn start_with(
        dir: tempfile::TempDir,
        catalog: String,
        groups: u32,
        env: &[(&str, &str)],
    ) -> anyhow::Result<TestCluster> {
        ClusterBuilder::new(dir)
            .catalog(catalog)
            .groups(groups)
            .coordinator_env(env)
            .start()
            .await
    }

    /// An empty slot, with a proxy if the cluster has proxies.
    async fn new_slot(&self) -> anyhow::Result<Slot> {
        let proxy = if self.proxies {
            Some(Proxy::start(nowhere()).await?)
        } else {
            None
        };
        Ok(Slot { proc: None, proxy })
    }

    /// Where data and logs live.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The catalog's URL.
    pub fn catalog(&self) -> &str {
        &self.catalog
    }

    /// How many groups.
    pub fn groups(&self) -> u32 {
        self.groups
    }

    /// Replicas per group.
    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// Whether every group has a disk of its own.
    pub fn has_disks(&self) -> bool {
        !self.disks.is_empty()
    }

    /// Group `group`'s disk, if it has one.
    pub fn disk(&self, group: u32) -> Option<&Path> {
        self.disks.get(group as usize - 1).map(PathBuf::as_path)
    }

    /// Where `node` runs: its namespace file (None: ours) and listen host.
    fn place(&self, node: &str) -> (Option<&Path>, &str) {
        match self.placement.get(node) {
            Some((netns, host)) => (Some(netns.as_path()), host.as_str()),
            None => (None, LOOPBACK),
        }
    }

    fn log(&self, node: &str) -> Option<PathBuf> {
        self.logs
            .then(|| self.dir.path().join(format!("{node}.log")))
    }

    /// Starts `trellis <args>` as `node`: in its namespace, its log where
    /// the cluster keeps logs.
    fn launch(&self, node: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Proc> {
        let (netns, _) = self.place(node);
        let log = self.log(node);
        Proc::launch(args, env, log.as_deref(), netns)
    }

    /// Starts coordinator `i` (replacing, and so killing, its old process)
    /// and points its proxy at it.
    pub fn start_coordinator(&mut self, i: usize, how: CoordinatorStart<'_>) -> anyhow::Result<()> {
        let (_, host) = self.place(COORD_NODE);
        let any_port = format!("{host}:0");
        let listen = how.listen.unwrap_or(&any_port);
        // `--groups` must name the count the catalog was created with,
        // whatever groups were added since.
        let groups = self.groups_created.to_string();
        let advertise = self.coordinators[i]
            .proxy
            .as_ref()
            .map(|p| p.addr().to_string());
        let mut args = vec![
            "coordinator",
            "--catalog",
            &self.catalog,
            "--listen",
            listen,
            "--metrics-listen",
            &any_port,
        ];
        if let Some(advertise) = &advertise {
            args.extend(["--advertise", advertise.as_str()]);
        }
        if how.create {
            args.extend(["--groups", groups.as_str()]);
        }
        // The node and log of coordinator `i` (one coordinator per lab).
        let node = if self.placement.is_empty() {
            format!("coordinator-{i}")
        } else {
            COORD_NODE.to_string()
        };
        let proc = self.launch(&node, &args, how.env)?;
        self.install(SlotId::Coordinator(i), proc)
    }

    /// Adds another coordinator over the same catalog; returns its index.
    /// Only for clusters without proxies (a proxy starts asynchronously).
    pub fn add_coordinator(&mut self, env: &[(&str, &str)]) -> anyhow::Result<usize> {
        anyhow::ensure!(!self.proxies, "a cluster with proxies adds no coordinators");
        self.coordinators.push(Slot::default());
        let i = self.coordinators.len() - 1;
        self.start_coordinator(i, CoordinatorStart::new(false, env))?;
        Ok(i)
    }

    /// The data directory of replica `replica` of `group`.
    fn data_dir(&self, group: u32, replica: u32) -> PathBuf {
        match self.disks.get(group as usize - 1) {
            Some(disk) => disk.join("data"),
            None if self.dir_per_replica => self
                .dir
                .path()
                .join(format!("group-{group}-replica-{replica}")),
            None => self.dir.path().join(format!("group-{group}")),
        }
    }

    /// Starts replica `replica` of `group` on its data directory,
    /// registering with the coordinator at `registrar` (replacing, and so
    /// killing, its old process), and points its proxy at it.
    pub fn start_shard(
        &mut self,
        group: u32,
        replica: u32,
        registrar: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let data = self.data_dir(group, replica);
        let data = data.to_str().expect("utf-8 run directory").to_string();
        let lab_node = replica_node(group, replica);
        let (_, host) = self.place(&lab_node);
        let listen = format!("{host}:0");
        let group_arg = group.to_string();
        let slot = SlotId::Shard(group, replica);
        let advertise = self.slot(slot).proxy.as_ref().map(|p| p.addr().to_string());
        let mut args = vec![
            "shard",
            "--data-dir",
            &data,
            "--listen",
            &listen,
            "--metrics-listen",
            &listen,
            "--group",
            &group_arg,
            "--coordinator",
            registrar,
        ];
        if let Some(advertise) = &advertise {
            args.extend(["--advertise", advertise.as_str()]);
        }
        args.extend(self.shard_args.iter().map(String::as_str));
        // Its log is named after the group alone while groups have one
        // replica (as the nemesis' fault log names it).
        let node = if self.placement.is_empty() && !self.dir_per_replica {
            format!("shard-{group}")
        } else {
            lab_node
        };
        let proc = self.launch(&node, &args, env)?;
        self.install(slot, proc)
    }

    /// Puts `proc` in `slot` (the old process, if any, is killed) and
    /// points the slot's proxy at it.
    fn install(&mut self, slot: SlotId, proc: Proc) -> anyhow::Result<()> {
        let slot = self.slot_mut(slot);
        if let Some(proxy) = &slot.proxy {
            let addr: SocketAddr = proc.field("grpc").parse()?;
            proxy.set_upstream(addr);
        }
        slot.proc = Some(proc);
        Ok(())
    }

    fn slot(&self, slot: SlotId) -> &Slot {
        match slot {
            SlotId::Coordinator(i) => &self.coordinators[i],
            SlotId::Shard(g, r) => &self.shards[g as usize - 1][r as usize - 1],
        }
    }

    fn slot_mut(&mut self, slot: SlotId) -> &mut Slot {
        match slot {
            SlotId::Coordinator(i) => &mut self.coordinators[i],
            SlotId::Shard(g, r) => &mut self.shards[g as usize - 1][r as usize - 1],
        }
    }

    /// The direct address of the first running coordinator, for a shard
    /// to register with.
    pub fn registrar(&self) -> anyhow::Result<String> {
        self.coordinators
            .iter()
            .find_map(|s| s.proc.as_ref())
            .map(|p| p.field("grpc").to_string())
            .ok_or_else(|| anyhow::anyhow!("no coordinator is running"))
    }

    /// Coordinator `i`'s process; panics if it is down.
    pub fn coordinator(&self, i: usize) -> &Proc {
        self.coordinators[i]
            .proc
            .as_ref()
            .expect("coordinator is running")
    }

    /// Coordinator `i`'s process, to wait for or signal; panics if down.
    pub fn coordinator_mut(&mut self, i: usize) -> &mut Proc {
        self.coordinators[i]
            .proc
            .as_mut()
            .expect("coordinator is running")
    }

    /// Replica `replica` of `group`, if it runs.
    pub fn shard(&self, group: u32, replica: u32) -> Option<&Proc> {
        self.shards[group as usize - 1][replica as usize - 1]
            .proc
            .as_ref()
    }

    /// SIGKILL of coordinator `i` (by PID), reaped; its slot stays empty.
    pub fn kill9_coordinator(&mut self, i: usize) {
        if let Some(proc) = self.coordinators[i].proc.take() {
            proc.kill9();
        }
    }

    /// SIGKILL of replica `replica` of `group` (by PID), reaped; its slot
    /// stays empty.
    pub fn kill9_shard(&mut self, group: u32, replica: u32) {
        if let Some(proc) = self.shards[group as usize - 1][replica as usize - 1]
            .proc
            .take()
        {
            proc.kill9();
        }
    }

    /// The direct gRPC address of coordinator `i`.
    pub fn addr(&self, i: usize) -> &str {
        self.coordinator(i).field("grpc")
    }

    /// The address a client of coordinator `i` dials: its proxy's, if the
    /// cluster has proxies, else its own.
    pub fn client_addr(&self, i: usize) -> String {
        match &self.coordinators[i].proxy {
            Some(proxy) => proxy.addr().to_string(),
            None => self.addr(i).to_string(),
        }
    }

    /// A Txn client of coordinator `i`.
    pub async fn txn(&self, i: usize) -> anyhow::Result<TxnClient<Channel>> {
        Ok(TxnClient::new(channel(&self.client_addr(i)).await?))
    }

    /// An Admin client of coordinator `i`.
    pub async fn admin(&self, i: usize) -> anyhow::Result<AdminClient<Channel>> {
        Ok(AdminClient::new(channel(&self.client_addr(i)).await?))
    }

    /// Coordinator `i`'s status of the cluster.
    pub async fn status(&self, i: usize) -> anyhow::Result<v1::StatusResponse> {
        let mut admin = self.admin(i).await?;
        Ok(admin.status(v1::StatusRequest {}).await?.into_inner())
    }

    /// Polls coordinator `i`'s status until `pred` holds; errs with the
    /// last status after `timeout`.
    pub async fn wait_for(
        &self,
        i: usize,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&v1::StatusResponse) -> bool,
    ) -> anyhow::Result<v1::StatusResponse> {
        let poll = Poll {
            timeout,
            every: READY_POLL_EVERY,
            call_timeout: None,
        };
        poll.until(|| self.status(i), pred).await.map_err(|last| {
            anyhow::anyhow!("{what}: not within {timeout:?}; last status {last:#?}")
        })
    }

    /// Replaces coordinator `i` (after it died or was killed) with a fresh
    /// process over the same catalog, and waits until it sees every group
    /// served.
    pub async fn restart_coordinator(
        &mut self,
        i: usize,
        env: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        self.start_coordinator(i, CoordinatorStart::new(false, env))?;
        self.wait_registered(i).await
    }

    /// Restarts the shard of `group` (a cluster of one replica per group)
    /// on its data, registering with coordinator 0, and waits until
    /// coordinator 0 sees every group served.
    pub async fn restart_shard(&mut self, group: u32) -> anyhow::Result<()> {
        let registrar = self.addr(0).to_string();
        self.start_shard(group, 1, &registrar, &[])?;
        self.wait_registered(0).await
    }

    /// Adds group `groups + 1` to the running cluster (`Admin.AddGroup`
    /// through coordinator 0), starts its replicas like the others', and
    /// waits until every replica is in sync. Returns the new group's id.
    /// Not in a lab: its nodes would need namespaces made at the start.
    pub async fn add_group(&mut self) -> anyhow::Result<u32> {
        anyhow::ensure!(
            self.placement.is_empty(),
            "groups cannot be added to a cluster in network namespaces"
        );
        let group = self.groups + 1;
        let mut admin = self.admin(0).await?;
        admin
            .add_group(v1::AddGroupRequest {
                group_id: u64::from(group),
            })
            .await?;
        let mut row = Vec::new();
        for _ in 1..=self.replicas {
            row.push(self.new_slot().await?);
        }
        self.shards.push(row);
        self.groups = group;
        for r in 1..=self.replicas {
            let registrar = self.registrar()?;
            self.start_shard(group, r, &registrar, &[])?;
        }
        let replicas = self.replicas;
        self.wait_for(0, "the new group in sync", IN_SYNC_TIMEOUT, |s| {
            every_replica_in_sync(s, replicas)
        })
        .await?;
        Ok(group)
    }

    /// Waits until coordinator `i` sees every group's shard serving.
    pub async fn wait_registered(&self, i: usize) -> anyhow::Result<()> {
        let poll = Poll {
            timeout: CLUSTER_READY_TIMEOUT,
            every: READY_POLL_EVERY,
            call_timeout: None,
        };
        let groups = self.groups as usize;
        poll.until(|| self.status(i), |s| served_groups(s) == groups)
            .await
            .map(drop)
            .map_err(|_| anyhow::anyhow!("cluster not ready within {CLUSTER_READY_TIMEOUT:?}"))
    }

    /// Sends a PREPARE of `txn` writing `key = value` straight to `group`'s
    /// first replica under the current map, as a coordinator that then
    /// vanished would have: nobody decides or finalizes it. The vote.
    pub async fn abandoned_prepare(
        &self,
        group: u32,
        txn: &[u8],
        key: &[u8],
        value: &[u8],
        anchor_group: u64,
        participants: Vec<u64>,
    ) -> anyhow::Result<trellis_proto::shard::v1::PrepareResponse> {
        use trellis_proto::shard::v1 as spb;
        let map_epoch = self.status(0).await?.map_epoch;
        let shard = self
            .shard(group, 1)
            .ok_or_else(|| anyhow::anyhow!("group {group} has no first replica running"))?;
        let mut client = crate::harness::shard_client(shard).await?;
        let vote = client
            .prepare(spb::PrepareRequest {
                durability: 0,
                map_epoch,
                txn_id: txn.to_vec(),
                reads: vec![],
                writes: vec![spb::WriteOp {
                    key: key.to_vec(),
                    value: value.to_vec(),
                    delete: false,
                }],
                anchor_group,
                participants,
                exec: 1,
            })
            .await?;
        Ok(vote.into_inner())
    }

    /// Transactions prepared and not finalized, summed over every member of
    /// every group, as coordinator 0 sees them.
    pub async fn prepared_total(&self) -> anyhow::Result<u64> {
        Ok(prepared(&self.status(0).await?, Whose::EveryMember))
    }

    /// PIDs of the running processes (for checks that nothing is left).
    pub fn pids(&self) -> Vec<u32> {
        self.coordinators
            .iter()
            .chain(self.shards.iter().flatten())
            .filter_map(|s| s.proc.as_ref().map(|p| p.pid))
            .collect()
    }
}

/// Which slot of a cluster.
#[derive(Debug, Clone, Copy)]
enum SlotId {
    /// Coordinator by index.
    Coordinator(usize),
    /// Replica `.1` of group `.0` (both from 1).
    Shard(u32, u32),
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // Processes first (their files live on the disks and in the run
        // directory), then the disks; the directory goes last.
        for slot in self
            .coordinators
            .iter_mut()
            .chain(self.shards.iter_mut().flatten())
        {
            if let Some(proc) = slot.proc.take() {
                proc.kill9();
            }
        }
        unmount_disks(&self.disks);
    }
}

/// How to poll a status: until when, how often, and how long one call may
/// take beyond the channel's own deadlines.
#[derive(Debug, Clone, Copy)]
pub struct Poll {
    /// How long to keep polling.
    pub timeout: Duration,
    /// Pause between two polls.
    pub every: Duration,
    /// Deadline of one status call, if shorter than the channel's.
    pub call_timeout: Option<Duration>,
}

impl Poll {
    /// Polls `status` until its answer satisfies `pred`; on timeout, the
    /// last answer (if any came).
    pub async fn until<F, Fut>(
        &self,
        status: F,
        pred: impl Fn(&v1::StatusResponse) -> bool,
    ) -> Result<v1::StatusResponse, Option<v1::StatusResponse>>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<v1::StatusResponse>>,
    {
        let deadline = Instant::now() + self.timeout;
        let mut last = None;
        loop {
            if let Some(answer) = self.call(&status).await {
                if pred(&answer) {
                    return Ok(answer);
                }
                last = Some(answer);
            }
            if Instant::now() >= deadline {
                return Err(last);
            }
            tokio::time::sleep(self.every).await;
        }
    }

    /// Waits until no transaction is left prepared as counted by `whose`
    /// (with every group served); how many still are if time runs out
    /// (`u64::MAX`: never counted).
    pub async fn settle<F, Fut>(&self, status: F, whose: Whose) -> Result<(), u64>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<v1::StatusResponse>>,
    {
        let deadline = Instant::now() + self.timeout;
        let mut last = u64::MAX;
        while Instant::now() < deadline {
            if let Some(answer) = self.call(&status).await
                && unserved_group(&answer).is_none()
            {
                last = prepared(&answer, whose);
                if last == 0 {
                    return Ok(());
                }
            }
            tokio::time::sleep(self.every).await;
        }
        Err(last)
    }

    async fn call<F, Fut>(&self, status: &F) -> Option<v1::StatusResponse>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<v1::StatusResponse>>,
    {
        match self.call_timeout {
            Some(limit) => tokio::time::timeout(limit, status()).await.ok()?.ok(),
            None => status().await.ok(),
        }
    }
}

/// Whose `in_doubt` a prepared count adds up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whose {
    /// Every member's, whatever its role (groups of one replica: a shard
    /// not yet serving again still holds what it recovered).
    EveryMember,
    /// Each group's primary's only: backups hold what their primary holds.
    Primaries,
}

/// Transactions prepared and not finalized in `status`, counted as `whose`
/// says.
pub fn prepared(status: &v1::StatusResponse, whose: Whose) -> u64 {
    status
        .groups
        .iter()
        .map(|g| match whose {
            Whose::EveryMember => g.members.iter().map(|m| m.in_doubt).sum(),
            Whose::Primaries => g
                .members
                .iter()
                .find(|m| m.role == "primary")
                .map_or(0, |m| m.in_doubt),
        })
        .sum()
}

/// How many groups have a primary in `status`.
pub fn served_groups(status: &v1::StatusResponse) -> usize {
    status
        .groups
        .iter()
        .filter(|g| g.members.iter().any(|m| m.role == "primary"))
        .count()
}

/// The first group of `status` without a primary, if any.
pub fn unserved_group(status: &v1::StatusResponse) -> Option<u64> {
    status
        .groups
        .iter()
        .find(|g| !g.members.iter().any(|m| m.role == "primary"))
        .map(|g| g.group_id)
}

/// Whether every group of `status` has its `replicas` members, one primary,
/// and every member in sync with nothing to catch up.
pub fn every_replica_in_sync(status: &v1::StatusResponse, replicas: u32) -> bool {
    status.groups.iter().all(|g| {
        g.members.len() == replicas as usize
            && g.members.iter().filter(|m| m.role == "primary").count() == 1
            && g.members.iter().all(|m| m.in_sync && m.lag_records == 0)
    })
}

/// Mounts a tmpfs of [`DISK_BYTES`] at `dir/disk-<g>` for every group; all
/// or none (what was mounted is unmounted again if one fails).
fn mount_disks(dir: &Path, groups: u32) -> Vec<PathBuf> {
    let mut mounted = Vec::new();
    for g in 1..=groups {
        let at = dir.join(format!("disk-{g}"));
        let ok = std::fs::create_dir_all(&at).is_ok()
            && std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={DISK_BYTES}"))
                .arg("tmpfs")
                .arg(&at)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        if !ok {
            unmount_disks(&mounted);
            return Vec::new();
        }
        mounted.push(at);
    }
    mounted
}

/// Unmounts what [`mount_disks`] mounted (lazily: a file still open there
/// does not keep it).
fn unmount_disks(disks: &[PathBuf]) {
    for disk in disks {
        let _ = std::process::Command::new("umount")
            .arg("--lazy")
            .arg(disk)
            .stderr(std::process::Stdio::null())
            .status();
    }
}
