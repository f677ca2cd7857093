//! A cluster whose groups have several replicas: one coordinator over a
//! SQLite catalog and `replicas` shard processes per group, each on its own
//! data directory, so tests can kill, stop and restart any one of them.
//! A thin layer over [`TestCluster`] (built with
//! [`ClusterBuilder::replicas`]) that knows primaries and failover.

use std::time::Duration;

use trellis_proto::v1;

pub use crate::cluster::{CLIENT_NODE, COORD_NODE, lab_nodes, replica_node};
use crate::cluster::{ClusterBuilder, CoordinatorStart, IN_SYNC_TIMEOUT, Ready, TestCluster};
use crate::harness::Proc;
use crate::netns::NetLab;

/// How long a group may take to settle (a failover, a catch-up).
pub const SETTLE_TIMEOUT: Duration = IN_SYNC_TIMEOUT;

/// A replicated cluster with one coordinator (coordinator 0 of the
/// [`TestCluster`] inside).
pub struct ReplicatedCluster {
    /// The processes.
    pub cluster: TestCluster,
    /// Extra environment of the coordinator, at its start and restarts.
    coordinator_env: Vec<(String, String)>,
}

impl ReplicatedCluster {
    /// `groups` groups of `replicas` on loopback, `shard_args` added to
    /// every shard; waits until every replica is in sync.
    pub async fn start(
        groups: u32,
        replicas: u32,
        shard_args: &[&str],
    ) -> anyhow::Result<ReplicatedCluster> {
        Self::build(
            ClusterBuilder::new(tempfile::tempdir()?),
            groups,
            replicas,
            shard_args,
        )
        .await
    }

    /// Like [`Self::start`], with `env` (e.g. `TRELLIS_FAILPOINTS`) given
    /// to the coordinator at its start and at every restart.
    pub async fn start_with_coordinator_env(
        groups: u32,
        replicas: u32,
        shard_args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<ReplicatedCluster> {
        let builder = ClusterBuilder::new(tempfile::tempdir()?).coordinator_env(env);
        let mut cluster = Self::build(builder, groups, replicas, shard_args).await?;
        cluster.coordinator_env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok(cluster)
    }

    /// Like [`Self::start`], with `env` (e.g. `TRELLIS_FAILPOINTS`) given
    /// to every shard at its first start.
    pub async fn start_with_shard_env(
        groups: u32,
        replicas: u32,
        env: &[(&str, &str)],
    ) -> anyhow::Result<ReplicatedCluster> {
        let builder = ClusterBuilder::new(tempfile::tempdir()?).shard_env(env);
        Self::build(builder, groups, replicas, &[]).await
    }

    /// The same cluster with every process in its own node of `lab` (made
    /// with [`lab_nodes`]); the caller runs inside [`CLIENT_NODE`].
    pub async fn start_in(
        lab: &NetLab,
        groups: u32,
        replicas: u32,
        shard_args: &[&str],
    ) -> anyhow::Result<ReplicatedCluster> {
        let builder = ClusterBuilder::new(tempfile::tempdir()?).netns(lab);
        Self::build(builder, groups, replicas, shard_args).await
    }

    async fn build(
        builder: ClusterBuilder<'_>,
        groups: u32,
        replicas: u32,
        shard_args: &[&str],
    ) -> anyhow::Result<ReplicatedCluster> {
        let cluster = builder
            .groups(groups)
            .replicas(replicas)
            .shard_args(shard_args)
            .ready(Ready::InSync)
            .start()
            .await?;
        Ok(ReplicatedCluster {
            cluster,
            coordinator_env: Vec::new(),
        })
    }

    /// Replicas per group.
    pub fn replicas(&self) -> u32 {
        self.cluster.replicas()
    }

    /// How many groups.
    pub fn groups(&self) -> u32 {
        self.cluster.groups()
    }

    /// Where the catalog and data live.
    pub fn dir(&self) -> &std::path::Path {
        self.cluster.dir()
    }

    /// The coordinator's process.
    pub fn coordinator(&self) -> &Proc {
        self.cluster.coordinator(0)
    }

    /// The coordinator's gRPC address.
    pub fn addr(&self) -> &str {
        self.cluster.addr(0)
    }

    /// A Txn client of the coordinator.
    pub async fn txn(
        &self,
    ) -> anyhow::Result<v1::txn_client::TxnClient<tonic::transport::Channel>> {
        self.cluster.txn(0).await
    }

    /// The coordinator's status of the cluster.
    pub async fn status(&self) -> anyhow::Result<v1::StatusResponse> {
        self.cluster.status(0).await
    }

    /// Polls the status until `pred` holds; errs with the last status after
    /// [`SETTLE_TIMEOUT`].
    pub async fn wait_for(
        &self,
        what: &str,
        pred: impl Fn(&v1::StatusResponse) -> bool,
    ) -> anyhow::Result<v1::StatusResponse> {
        self.cluster.wait_for(0, what, SETTLE_TIMEOUT, pred).await
    }

    /// The replica number (1-based) of `group` at `addr`.
    pub fn replica_at(&self, group: u32, addr: &str) -> Option<u32> {
        (1..=self.replicas()).find(|r| {
            self.shard(group, *r)
                .is_some_and(|p| p.field("grpc") == addr)
        })
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

    /// Replica `replica` of `group`, if it runs.
    pub fn shard(&self, group: u32, replica: u32) -> Option<&Proc> {
        self.cluster.shard(group, replica)
    }

    /// Replica `replica` of `group`; panics if it is down.
    pub fn proc(&self, group: u32, replica: u32) -> &Proc {
        self.shard(group, replica).expect("replica is running")
    }

    /// SIGKILL of one replica.
    pub fn kill9(&mut self, group: u32, replica: u32) {
        self.cluster.kill9_shard(group, replica);
    }

    /// SIGKILL of the coordinator; [`Self::restart_coordinator`] starts it
    /// again.
    pub fn kill_coordinator(&self) {
        self.coordinator().signal(libc::SIGKILL);
    }

    /// Starts the coordinator again on its catalog and its address (the
    /// replicas and clients were given that address), replacing a killed
    /// one.
    pub fn restart_coordinator(&mut self) -> anyhow::Result<()> {
        let addr = self.addr().to_string();
        // The old process must be gone (and its port free) first.
        let old = self.cluster.coordinator_mut(0);
        old.signal(libc::SIGKILL);
        let _ = old.wait_exit_status();
        let env: Vec<(&str, &str)> = self
            .coordinator_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let how = CoordinatorStart {
            listen: Some(&addr),
            ..CoordinatorStart::new(true, &env)
        };
        self.cluster.start_coordinator(0, how)
    }

    /// Starts a killed replica again on its data directory (and address).
    pub fn restart(&mut self, group: u32, replica: u32) -> anyhow::Result<()> {
        let registrar = self.addr().to_string();
        self.cluster.start_shard(group, replica, &registrar, &[])
    }
}
