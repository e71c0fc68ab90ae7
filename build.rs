//! Compiles `proto/*.proto` (the KServe v2 / Triton gRPC service, grpc.health.v1) with protox, a
//! pure-Rust protobuf compiler: the build needs no `protoc` and no system package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/grpc_service.proto",
        "proto/model_config.proto",
        "proto/health.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
