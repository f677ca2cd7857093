//! The gRPC contract of Trellis: generated code, and the wire form of its
//! error model ([`error`]); no other logic.
//!
//! - [`v1`]: the public API (`trellis.v1.Txn`, `trellis.v1.Admin`).
//! - [`shard::v1`]: the shard-internal service a coordinator talks to.
//! - [`error`]: how every error status carries its reason (gRPC's richer
//!   error model: `google.rpc.Status` with a `google.rpc.ErrorInfo`).
//! - [`FILE_DESCRIPTOR_SET`]: the compiled `.proto` files, served by gRPC
//!   server reflection so tools (`grpcurl`) need no `.proto` files;
//!   [`reflection::services`] builds those services.
//!
//! Wire types stop at the service edges; the core works on domain types from
//! `trellis-types`.

pub mod error;
pub mod reflection;

/// The encoded `google.protobuf.FileDescriptorSet` of every Trellis `.proto`
/// file (written by `build.rs`), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/trellis_descriptor.bin"));

#[allow(clippy::all, rust_2018_idioms)]
pub mod v1 {
    tonic::include_proto!("trellis.v1");
}

#[allow(clippy::all, rust_2018_idioms)]
pub mod shard {
    pub mod v1 {
        tonic::include_proto!("trellis.shard.v1");
    }
}
