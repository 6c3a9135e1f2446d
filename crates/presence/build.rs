//! Compiles `proto/herald/v1/presence.proto` into Rust (into `OUT_DIR`, never checked in), with
//! `protox` so building Herald does not need `protoc`. The descriptor set is kept too, for gRPC
//! server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let file = root.join("herald/v1/presence.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&root])?;
    // The encoded descriptors, which gRPC server reflection serves (`grpcurl` without a proto).
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("presence_descriptor.bin"), protox::prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    Ok(())
}
