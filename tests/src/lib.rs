//! Cluster tests over real processes and sockets, and the helpers they share.
//!
//! # Layout
//! - [`harness`]: find (and build) the `trellis` binary, start processes on
//!   `127.0.0.1:0`, read their READY line, signal them by PID, and connect
//!   gRPC clients with deadlines.
//! - [`proxy`]: a fault-injecting TCP proxy on loopback (pass, partition,
//!   one-way black hole, delay).
//! - [`nemesis`]: a cluster whose every link runs through a proxy, the
//!   faults (SIGKILL and restart, SIGSTOP/SIGCONT, partitions) and a seeded
//!   schedule that cycles them.
//! - [`replicated`]: a cluster whose groups have several replicas, for the
//!   replication and failover tests.
//! - [`workload`]: list-append and bank clients that record a history for
//!   `trellis-checker`, and the run that ties cluster, nemesis, workload
//!   and checker together.
//!
//! Tests live in `tests/tests/*.rs`; the long run is
//! `cargo run -p trellis-tests --example nemesis`. Nothing here mocks the
//! cluster.

pub mod harness;
pub mod nemesis;
pub mod proxy;
pub mod replicated;
pub mod workload;
