//! The edge is a gRPC client of the core: it compiles the same `proto/` contract, client side only.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../proto");
    let fds = protox::compile(
        [
            "openclaw/v1/errors.proto",
            "openclaw/v1/keys.proto",
            "openclaw/v1/sessions.proto",
            "openclaw/v1/system.proto",
        ],
        ["../proto"],
    )?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
