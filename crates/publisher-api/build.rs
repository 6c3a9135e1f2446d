//! Compiles `proto/herald/v1/publisher.proto` into Rust (into `OUT_DIR`, never checked in).
//!
//! The proto is parsed by `protox`, a pure-Rust compiler, so building Herald does not need
//! `protoc` installed. The descriptor set is kept too, for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let file = root.join("herald/v1/publisher.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&root])?;
    // The encoded descriptors, which gRPC server reflection serves (`grpcurl` without a proto).
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("publisher_descriptor.bin"), protox::prost::Message::encode_to_vec(&fds))?;
    // Stored frames go out as the `Bytes` the broker returned, without a copy each.
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(".herald.v1.HistoryReply.publications")
        .bytes(".herald.v1.InboxReply.publications")
        .compile_fds(fds)?;
    Ok(())
}
