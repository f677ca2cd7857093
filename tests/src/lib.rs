//! Cluster tests over real processes and sockets, and the helpers they share.
//!
//! # Layout
//! - [`harness`]: find (and build) the `trellis` binary, start processes on
//!   `127.0.0.1:0`, read their READY line, signal them by PID, and connect
//!   gRPC clients with deadlines.
//! - [`cluster`]: the one builder of test clusters ([`cluster::ClusterBuilder`]):
//!   coordinators and shard replicas as real processes, on loopback or in a
//!   lab, behind fault proxies or not; waiting until every group is served,
//!   counting what is prepared, killing and restarting by PID.
//! - [`proxy`]: a fault-injecting TCP proxy on loopback (pass, partition,
//!   one-way black hole, delay).
//! - [`nemesis`]: a cluster whose every link runs through a proxy, the
//!   faults (SIGKILL and restart, SIGSTOP/SIGCONT, partitions) and a seeded
//!   schedule that cycles them.
//! - [`netns`]: a network of our own — a namespace per node on a bridge —
//!   where any two processes can be cut apart (blackhole routes).
//! - [`replicated`]: a cluster whose groups have several replicas, for the
//!   replication and failover tests, on loopback or in a [`netns::NetLab`].
//! - [`lab_nemesis`]: the nemesis for such a cluster in a lab — SIGKILL,
//!   SIGSTOP, and cuts between any processes (one way or both), aimed at
//!   primaries half of the time.
//! - [`reshard_nemesis`]: resharding under load and faults — a replicated
//!   cluster grows by a group, and a seeded schedule rebalances, moves
//!   slot ranges and kills primaries and the coordinator mid-job.
//! - [`workload`]: list-append and bank clients that record a history for
//!   `trellis-checker`, and the run that ties cluster, nemesis, workload
//!   and checker together.
//! - [`sim`]: the deterministic simulator — the same cluster, workloads and
//!   checker in one thread under turmoil, from a seed (the `trellis-sim`
//!   binary replays a seed or soaks many, one process per seed).
//!
//! Tests live in `tests/tests/*.rs`; the long runs are
//! `cargo run -p trellis-tests --example nemesis` and
//! `cargo run -p trellis-tests --bin trellis-sim -- --soak`. Nothing here
//! mocks the cluster: the simulator runs the real nodes' code (only the
//! catalog is the in-memory backend).

pub mod cluster;
pub mod harness;
pub mod lab_nemesis;
pub mod nemesis;
pub mod netns;
pub mod proxy;
pub mod replicated;
pub mod reshard_nemesis;
pub mod sim;
pub mod workload;
