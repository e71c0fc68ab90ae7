//! Compiles `proto/*.proto` (the KServe v2 / Triton gRPC service, grpc.health.v1) with protox, a
//! pure-Rust protobuf compiler: the build needs no `protoc` and no system package. The raw tensor
//! fields are `bytes::Bytes`: a request's `raw_input_contents` are slices of the buffer tonic
//! received the message into (no copy per tensor); `raw_output_contents` takes each encoded output
//! `Vec` without a copy (prost then writes it into tonic's buffer, as it would a `Vec`).

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
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .compile_fds(fds)?;
    Ok(())
}
