//! Compiles `proto/` with the pure-Rust `protox` compiler, so building needs no system `protoc`.
use std::{env, path::PathBuf};

use prost::Message as _;

const PROTOS: &[&str] = &[
    "openclaw/v1/errors.proto",
    "openclaw/v1/keys.proto",
    "openclaw/v1/sessions.proto",
    "openclaw/v1/system.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    // The descriptor set backs gRPC server reflection.
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(out.join("openclaw_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
