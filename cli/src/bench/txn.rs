//! `trellis bench txn`: one-phase vs two-phase commit latency and
//! throughput against a running cluster, at 1 and 64 concurrent clients,
//! in one run. Reports ratios (2PC / 1PC) measured side by side.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use trellis_proto::v1 as pb;
use trellis_types::slot_of;

use super::percentile;

/// Distinct keys each client cycles through (avoids write conflicts).
const KEYS_PER_CLIENT: usize = 64;
/// Deadline of each commit.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

struct Sample {
    latencies: Vec<Duration>,
    errors: u64,
    elapsed: Duration,
}

pub fn run(addr: &str, seconds: Duration) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let status = crate::status::fetch(addr).await?;
        let groups: Vec<u64> = status.groups.iter().map(|g| g.group_id).collect();
        anyhow::ensure!(
            groups.len() >= 2,
            "two-phase commits need at least 2 groups; this cluster has {}",
            groups.len()
        );
        let slots = trellis_types::placement::assign_slots(&groups);
        let group_of = |key: &[u8]| slots[slot_of(key) as usize];
        let channel = trellis_net::connect(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .timeout(COMMIT_TIMEOUT),
        )
        .await
        .with_context(|| format!("connecting to {addr}"))?;
        let client = pb::txn_client::TxnClient::new(channel);
        println!(
            "trellis bench txn: {addr}, {} groups, {} s per measurement",
            groups.len(),
            seconds.as_secs()
        );
        println!(
            "{:<34} {:>10} {:>10} {:>10} {:>8}",
            "", "commits/s", "p50 ms", "p99 ms", "errors"
        );
        let mut p50 = std::collections::BTreeMap::new();
        for clients in [1usize, 64] {
            for two_phase in [false, true] {
                let sample = measure(&client, clients, two_phase, seconds, &group_of).await;
                let mut sorted = sample.latencies.clone();
                sorted.sort();
                let label = format!(
                    "{} commit, {clients} client(s)",
                    if two_phase { "2PC" } else { "1PC" }
                );
                let rate = sorted.len() as f64 / sample.elapsed.as_secs_f64();
                let (a, b) = (percentile(&sorted, 50.0), percentile(&sorted, 99.0));
                println!(
                    "{label:<34} {rate:>10.0} {:>10.2} {:>10.2} {:>8}",
                    a.as_secs_f64() * 1e3,
                    b.as_secs_f64() * 1e3,
                    sample.errors
                );
                p50.insert((clients, two_phase), a);
            }
        }
        for clients in [1usize, 64] {
            let ratio = p50[&(clients, true)].as_secs_f64()
                / p50[&(clients, false)].as_secs_f64().max(1e-9);
            println!("2PC p50 / 1PC p50 at {clients} client(s): {ratio:.2}x");
        }
        Ok(())
    })
}

async fn measure(
    client: &pb::txn_client::TxnClient<tonic::transport::Channel>,
    clients: usize,
    two_phase: bool,
    seconds: Duration,
    group_of: &(impl Fn(&[u8]) -> u64 + Sync),
) -> Sample {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        // Each client writes its own keys: one per commit for 1PC, a pair in
        // two different groups for 2PC.
        let mut keys: Vec<Vec<Vec<u8>>> = Vec::new();
        let mut n = 0usize;
        while keys.len() < KEYS_PER_CLIENT {
            let a = format!("bench:{c}:{n}:a").into_bytes();
            n += 1;
            if !two_phase {
                keys.push(vec![a]);
                continue;
            }
            let b = (0..)
                .map(|i| format!("bench:{c}:{n}:b{i}").into_bytes())
                .find(|b| group_of(b) != group_of(&a))
                .expect("some key in another group");
            keys.push(vec![a, b]);
        }
        let mut client = client.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let writes = keys[i % keys.len()]
                    .iter()
                    .map(|k| pb::Write {
                        key: k.clone(),
                        op: Some(pb::write::Op::Put(i.to_le_bytes().to_vec())),
                    })
                    .collect();
                let request = pb::CommitRequest {
                    txn_id: rand::random::<[u8; 16]>().to_vec(),
                    reads: vec![],
                    writes,
                    durability: 0,
                };
                let t = Instant::now();
                match client.commit(request).await.map(|r| r.into_inner().outcome) {
                    Ok(Some(pb::commit_response::Outcome::Committed(_))) => {
                        latencies.push(t.elapsed())
                    }
                    _ => errors += 1,
                }
                i += 1;
            }
            (latencies, errors)
        }));
    }
    tokio::time::sleep(seconds).await;
    stop.store(true, Ordering::Relaxed);
    let mut sample = Sample {
        latencies: Vec::new(),
        errors: 0,
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        if let Ok((l, e)) = task.await {
            sample.latencies.extend(l);
            sample.errors += e;
        }
    }
    sample.elapsed = started.elapsed();
    sample
}
