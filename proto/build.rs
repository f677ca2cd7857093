//! Compiles the .proto files with `protox` (a pure-Rust protobuf compiler),
//! so building Trellis needs no system `protoc`.

const PROTOS: &[&str] = &["trellis/v1/txn.proto", "trellis/shard/v1/shard.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
