//! The configuration file reader shared by both binaries, against the core's command line: any
//! file is read into settings or refused with an error; nothing panics.
#![no_main]

use std::io::Write as _;

use clap::CommandFactory as _;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static COMMAND: clap::Command = openclaw_gateway::cli::Cli::command();
        static FILE: std::cell::RefCell<Option<std::path::PathBuf>> = const { std::cell::RefCell::new(None) };
    }
    let path = FILE.with(|file| {
        file.borrow_mut()
            .get_or_insert_with(|| {
                std::env::temp_dir()
                    .join(format!("openclaw-fuzz-config-{}.toml", std::process::id()))
            })
            .clone()
    });
    let Ok(mut file) = std::fs::File::create(&path) else {
        return;
    };
    if file.write_all(data).is_err() {
        return;
    }
    drop(file);
    COMMAND.with(|command| {
        if let Ok(pairs) = openclaw_runtime::config_file::read(&path, command) {
            // Only known settings get through, each as its environment variable.
            for (env, _) in pairs {
                assert!(!env.is_empty() && !env.contains('='), "{env}");
            }
        }
    });
});
