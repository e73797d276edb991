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
    tonic_prost_build::configure()
        // Maps in a deterministic order: a send's options are fingerprinted by their encoding.
        .btree_map(".")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
