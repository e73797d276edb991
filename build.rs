//! Compiles every `.proto` file under `proto/openclaw/v1/` with the pure-Rust
//! `protox` compiler, so building needs no system `protoc`.
use std::{env, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut protos: Vec<String> = std::fs::read_dir("proto/openclaw/v1")?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.ends_with(".proto"))
        .map(|name| format!("openclaw/v1/{name}"))
        .collect();
    protos.sort();
    let fds = protox::compile(&protos, ["proto"])?;
    // The descriptor set backs gRPC server reflection.
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(out.join("openclaw_descriptor.bin"), fds.encode_to_vec())?;
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_REST");
    let mut config = tonic_prost_build::configure()
        // Maps in a deterministic order: a send's options are fingerprinted by their encoding.
        .btree_map(".")
        .build_server(true)
        .build_client(true);
    if env::var_os("CARGO_FEATURE_REST").is_some() {
        // With the edge in the binary, the messages are the edge's own types (built from the
        // same files, maps as BTreeMap too): the edge of a combined replica hands its requests
        // to the core's services as they are, with nothing encoded or decoded between them.
        config = config.extern_path(".openclaw.v1", "::gateway_rest::proto");
    }
    config.compile_fds(fds)?;
    Ok(())
}
