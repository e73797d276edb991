//! The edge is a gRPC client of the core: it compiles the same `proto/` contract, client side only.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../proto");
    let mut protos: Vec<String> = std::fs::read_dir("../proto/openclaw/v1")?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.ends_with(".proto"))
        .map(|name| format!("openclaw/v1/{name}"))
        .collect();
    protos.sort();
    let fds = protox::compile(&protos, ["../proto"])?;
    tonic_prost_build::configure()
        // The core's maps are BTreeMaps (its fingerprints need an order); a combined replica's
        // core uses these very types, so they are here too.
        .btree_map(".")
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
