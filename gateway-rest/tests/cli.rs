//! The `openclaw-rest` binary documents its operator interface.

use std::process::Command;

#[test]
fn help_names_the_address_and_core_settings() {
    let output = Command::new(env!("CARGO_BIN_EXE_openclaw-rest"))
        .arg("--help")
        .output()
        .expect("run openclaw-rest --help");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--http-addr",
        "OPENCLAW_HTTP_ADDR",
        "--core-url",
        "OPENCLAW_CORE_URL",
    ] {
        assert!(help.contains(flag), "--help mentions {flag}:\n{help}");
    }
}
