//! Compiles the .proto files with `protox` (a pure-Rust protobuf compiler),
//! so building Trellis needs no system `protoc`, and keeps the compiled
//! descriptors (`trellis_descriptor.bin` in `OUT_DIR`) for gRPC server
//! reflection.

use prost::Message as _;

const PROTOS: &[&str] = &["trellis/v1/txn.proto", "trellis/shard/v1/shard.proto"];

/// File in `OUT_DIR` holding the encoded `FileDescriptorSet`
/// (`trellis_proto::FILE_DESCRIPTOR_SET` includes it).
const DESCRIPTOR_FILE: &str = "trellis_descriptor.bin";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["."])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join(DESCRIPTOR_FILE), descriptors.encode_to_vec())?;
    tonic_prost_build::configure()
        // Replicated records are shared buffers: a primary's feed hands the
        // same bytes to every backup's stream without copying them.
        .bytes(".trellis.shard.v1.ReplicaRecord.payload")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
