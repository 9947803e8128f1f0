//! With the `grpc` feature: generates the automation gRPC API (messages, clients and servers)
//! from `proto/palisade/controlplane/v1/controlplane.proto` (needs `protoc` on PATH or
//! `PROTOC`, as the control plane's Raft proto does).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "grpc")]
    {
        const PROTO: &str = "proto/palisade/controlplane/v1/controlplane.proto";
        println!("cargo:rerun-if-changed={PROTO}");
        tonic_prost_build::configure()
            .build_client(true)
            .build_server(true)
            .compile_protos(&[PROTO], &["proto"])?;
    }
    Ok(())
}
