//! Cluster tests over real processes and sockets, and the helpers they share.
//!
//! # Layout
//! - [`harness`]: find (and build) the `trellis` binary, start processes on
//!   `127.0.0.1:0`, read their READY line, signal them by PID, and connect
//!   gRPC clients with deadlines.
//!
//! Tests live in `tests/tests/*.rs`. Nothing here mocks the cluster.

pub mod harness;
pub mod replicated;
