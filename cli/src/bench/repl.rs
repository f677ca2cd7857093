//! `trellis bench replication`: what replication costs and how long a
//! failover takes, measured on clusters this command starts itself (one
//! coordinator and one group of 1, 2 or 3 replicas, as child processes on
//! loopback, data under `--dir`), so it may kill and restart the primaries.
//! Throughput is reported as a ratio to 1 replica at the same durability,
//! measured in the same run. Nothing here is asserted.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use trellis_proto::v1 as pb;

use super::percentile;
use crate::dev::{Kid, start, stop_all};

/// Concurrent clients of the read-modify-write load.
const CLIENTS: usize = 32;
/// Failovers timed (the median is reported).
const FAILOVERS: usize = 10;
/// Deadline of each RPC.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a group may take to settle (start, catch up, fail over).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the coordinator's status is asked while a group settles.
const SETTLE_POLL: Duration = Duration::from_millis(50);

struct BenchCluster {
    kids: Vec<Kid>,
    coordinator: String,
    dir: std::path::PathBuf,
}

impl BenchCluster {
    fn start(dir: &Path, replicas: u32) -> anyhow::Result<BenchCluster> {
        std::fs::create_dir_all(dir)?;
        let catalog = format!("sqlite://{}", dir.join("catalog.db").display());
        let coordinator = start(
            "coordinator",
            &[
                "coordinator".into(),
                "--catalog".into(),
                catalog,
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--groups".into(),
                "1".into(),
                "--exit-with-parent".into(),
            ],
        )?;
        let addr = coordinator.field("grpc");
        let mut cluster = BenchCluster {
            kids: vec![coordinator],
            coordinator: addr,
            dir: dir.to_path_buf(),
        };
        for r in 1..=replicas {
            cluster.start_replica(r)?;
        }
        Ok(cluster)
    }

    fn start_replica(&mut self, r: u32) -> anyhow::Result<()> {
        let data = self.dir.join(format!("replica-{r}"));
        let kid = start(
            &format!("replica {r}"),
            &[
                "shard".into(),
                "--data-dir".into(),
                data.display().to_string(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--group".into(),
                "1".into(),
                "--coordinator".into(),
                self.coordinator.clone(),
                "--exit-with-parent".into(),
            ],
        )?;
        self.kids.push(kid);
        Ok(())
    }

    /// Waits until the group has `replicas` in-sync members and a serving
    /// primary; returns the primary's address.
    async fn settled(&self, replicas: usize) -> anyhow::Result<String> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            if let Ok(status) = crate::status::fetch(&self.coordinator).await {
                let members = &status.groups[0].members;
                let primary = members
                    .iter()
                    .find(|m| m.role == "primary" && m.lease_ms > 0);
                if let Some(p) = primary
                    && members.len() == replicas
                    && members
                        .iter()
                        .all(|m| m.in_sync && m.last_lsn == p.last_lsn)
                {
                    return Ok(p.address.clone());
                }
            }
            if Instant::now() > deadline {
                bail!("the group did not settle within {SETTLE_TIMEOUT:?}");
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }

    /// Index in `kids` of the replica serving at `addr`.
    fn kid_at(&self, addr: &str) -> Option<usize> {
        self.kids.iter().position(|k| k.field("grpc") == addr)
    }

    async fn client(&self) -> anyhow::Result<pb::txn_client::TxnClient<tonic::transport::Channel>> {
        let channel = trellis_net::connect(
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.coordinator))?
                .timeout(RPC_TIMEOUT),
        )
        .await
        .with_context(|| format!("connecting to {}", self.coordinator))?;
        Ok(pb::txn_client::TxnClient::new(channel))
    }
}

impl Drop for BenchCluster {
    fn drop(&mut self) {
        stop_all(&mut self.kids);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One read-modify-write: read the key, write it back with the version
/// seen (a conflict is counted, not retried).
async fn rmw(
    client: &mut pb::txn_client::TxnClient<tonic::transport::Channel>,
    key: &[u8],
    durability: pb::Durability,
) -> Result<bool, tonic::Status> {
    let item = client
        .get(pb::GetRequest {
            keys: vec![key.to_vec()],
            consistency: None,
            floors: Vec::new(),
        })
        .await?
        .into_inner()
        .items
        .pop()
        .unwrap_or_default();
    let n: u64 = std::str::from_utf8(&item.value)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let response = client
        .commit(pb::CommitRequest {
            txn_id: rand::random::<[u8; 16]>().to_vec(),
            reads: vec![pb::Read {
                key: key.to_vec(),
                version: item.version,
            }],
            writes: vec![pb::Write {
                key: key.to_vec(),
                op: Some(pb::write::Op::Put((n + 1).to_string().into_bytes())),
            }],
            durability: durability as i32,
        })
        .await?
        .into_inner();
    Ok(matches!(
        response.outcome,
        Some(pb::commit_response::Outcome::Committed(_))
    ))
}

/// Transactions/s and p99 of `CLIENTS` clients doing read-modify-writes
/// of their own keys for `seconds`.
async fn measure(
    cluster: &BenchCluster,
    durability: pb::Durability,
    seconds: Duration,
) -> anyhow::Result<(f64, Duration, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mut client = cluster.client().await?;
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("bench/rmw/{c}").into_bytes();
            let mut latencies = Vec::new();
            let mut failed = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let began = Instant::now();
                match rmw(&mut client, &key, durability).await {
                    Ok(true) => latencies.push(began.elapsed()),
                    _ => failed += 1,
                }
            }
            (latencies, failed)
        }));
    }
    let began = Instant::now();
    tokio::time::sleep(seconds).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut failed = 0;
    for task in tasks {
        let (latencies, f) = task.await?;
        all.extend(latencies);
        failed += f;
    }
    let elapsed = began.elapsed();
    all.sort();
    Ok((
        all.len() as f64 / elapsed.as_secs_f64(),
        percentile(&all, 99.0),
        failed,
    ))
}

/// Kills the primary `FAILOVERS` times under a write load; each time, the
/// time from the kill to the first write that was sent after the kill and
/// acknowledged. The killed replica is restarted and caught up in between.
async fn failovers(cluster: &mut BenchCluster) -> anyhow::Result<Vec<Duration>> {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut acks) = tokio::sync::mpsc::channel::<(Instant, Instant)>(1024);
    let mut writer = cluster.client().await?;
    let writer_stop = stop.clone();
    let writer_task = tokio::spawn(async move {
        while !writer_stop.load(Ordering::Relaxed) {
            let sent = Instant::now();
            if let Ok(true) = rmw(&mut writer, b"bench/failover", pb::Durability::Sync).await {
                let _ = tx.try_send((sent, Instant::now()));
            }
        }
    });
    let mut times = Vec::new();
    for i in 0..FAILOVERS {
        let primary = cluster.settled(3).await?;
        let index = cluster.kid_at(&primary).with_context(|| {
            format!("the primary {primary} is not a replica this bench started")
        })?;
        let replica: u32 = cluster.kids[index]
            .name
            .trim_start_matches("replica ")
            .parse()
            .context("replica number")?;
        while acks.try_recv().is_ok() {}
        let mut kid = cluster.kids.remove(index);
        let killed = Instant::now();
        kid.child.kill().context("kill -9 of the primary")?;
        let _ = kid.child.wait();
        let took = loop {
            match tokio::time::timeout(SETTLE_TIMEOUT, acks.recv()).await {
                Ok(Some((sent, acked))) if sent > killed => break acked - killed,
                Ok(Some(_)) => continue,
                _ => {
                    bail!("no write acknowledged within {SETTLE_TIMEOUT:?} of killing the primary")
                }
            }
        };
        println!("  failover {}: {} ms", i + 1, took.as_millis());
        times.push(took);
        cluster.start_replica(replica)?;
    }
    stop.store(true, Ordering::Relaxed);
    writer_task.await?;
    Ok(times)
}

pub fn run(dir: &Path, seconds: Duration) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let root = dir.join(format!(".trellis-bench-repl-{}", std::process::id()));
    runtime.block_on(async {
        println!(
            "trellis bench replication: 1 group, {CLIENTS} clients doing single-key read-modify-writes, {} s each",
            seconds.as_secs()
        );
        println!(
            "{:<10} {:<10} {:>10} {:>10} {:>10} {:>12}",
            "replicas", "durability", "txn/s", "p99 ms", "failed", "vs 1 replica"
        );
        let durabilities = [
            ("SYNC", pb::Durability::Sync),
            ("SEMI_SYNC", pb::Durability::SemiSync),
            ("ASYNC", pb::Durability::Async),
        ];
        let mut base = std::collections::HashMap::new();
        for replicas in [1u32, 2, 3] {
            let cluster = BenchCluster::start(&root.join(format!("r{replicas}")), replicas)?;
            cluster.settled(replicas as usize).await?;
            for (name, durability) in durabilities {
                let (rate, p99, failed) = measure(&cluster, durability, seconds).await?;
                let ratio = rate / *base.entry(name).or_insert(rate);
                println!(
                    "{replicas:<10} {name:<10} {rate:>10.0} {:>10.2} {failed:>10} {ratio:>11.2}x",
                    p99.as_secs_f64() * 1e3
                );
            }
        }
        println!("\nfailover: kill -9 of the primary (3 replicas) to the first SYNC write acknowledged by the new one");
        let mut cluster = BenchCluster::start(&root.join("failover"), 3)?;
        let mut times = failovers(&mut cluster).await?;
        times.sort();
        println!(
            "failover time: median {} ms, min {} ms, max {} ms over {FAILOVERS}",
            times[times.len() / 2].as_millis(),
            times[0].as_millis(),
            times[times.len() - 1].as_millis()
        );
        Ok(())
    })
}
