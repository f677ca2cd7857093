//! The gRPC contract of Trellis: generated code only, no logic.
//!
//! - [`v1`]: the public API (`trellis.v1.Txn`, `trellis.v1.Admin`).
//! - [`shard::v1`]: the shard-internal service a coordinator talks to.
//!
//! Wire types stop at the service edges; the core works on domain types from
//! `trellis-types`.

#![allow(clippy::all, rust_2018_idioms)]

pub mod v1 {
    tonic::include_proto!("trellis.v1");
}

pub mod shard {
    pub mod v1 {
        tonic::include_proto!("trellis.shard.v1");
    }
}
