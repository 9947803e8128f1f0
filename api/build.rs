//! With the `grpc` feature: generates the automation gRPC API (messages, clients and servers)
//! from `proto/palisade/controlplane/v1/controlplane.proto`, and the Hubble-compatible flow
//! observer from `proto/{flow,relay,observer}/*.proto` (needs `protoc` on PATH or `PROTOC`, as
//! the control plane's Raft proto does).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "grpc")]
    {
        const PROTOS: [&str; 4] = [
            "proto/palisade/controlplane/v1/controlplane.proto",
            "proto/flow/flow.proto",
            "proto/relay/relay.proto",
            "proto/observer/observer.proto",
        ];
        for proto in PROTOS {
            println!("cargo:rerun-if-changed={proto}");
        }
        tonic_prost_build::configure()
            .build_client(true)
            .build_server(true)
            .compile_protos(&PROTOS, &["proto"])?;
    }
    Ok(())
}
