//! gRPC server reflection (v1 and v1alpha) over [`crate::FILE_DESCRIPTOR_SET`],
//! built one way for every Trellis server: tools such as `grpcurl` call a
//! coordinator or a shard without its `.proto` files.

use tonic_reflection::server::{Builder, v1, v1alpha};

/// Reflection services, v1 and v1alpha, listing only `services` (the ones
/// the server at hand serves; their names are the generated
/// `*_server::SERVICE_NAME`s).
pub fn services(
    services: &[&'static str],
) -> (
    v1::ServerReflectionServer<impl v1::ServerReflection>,
    v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
) {
    let builder = || {
        services.iter().fold(
            Builder::configure().register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET),
            |builder, name| builder.with_service_name(*name),
        )
    };
    let reflection_v1 = builder()
        .build_v1()
        .expect("trellis-proto's build.rs compiled a valid descriptor set");
    let reflection_v1alpha = builder()
        .build_v1alpha()
        .expect("trellis-proto's build.rs compiled a valid descriptor set");
    (reflection_v1, reflection_v1alpha)
}
