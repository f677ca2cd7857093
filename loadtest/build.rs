//! Compiles the etcd KV subset with `protox`, so no system `protoc` is
//! needed (as in `proto/`). Only a client is generated.

const PROTOS: &[&str] = &["proto/etcd_kv.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(descriptors)?;
    Ok(())
}
