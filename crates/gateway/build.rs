//! Compiles `proto/herald/v1/hook.proto`, the permission hook's gRPC service, into Rust (into
//! `OUT_DIR`, never checked in), with `protox` so building Herald does not need `protoc`. The
//! server side is built too, for applications (and tests) written in Rust.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let file = root.join("herald/v1/hook.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&root])?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    Ok(())
}
