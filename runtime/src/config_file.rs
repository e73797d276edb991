//! The file layer of the configuration. A TOML file named by `--config` or
//! `OPENCLAW_CONFIG` sets any setting by its flag name (`redis-url = "…"`
//! or `redis_url = "…"`). Precedence: flags, then environment variables, then
//! the file, then defaults — so one model serves both binaries: clap reads
//! flags and environment, and the file fills in the environment beneath them.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, bail};

/// Where the configuration file is: `--config <path>`, `--config=<path>`, or `OPENCLAW_CONFIG`.
pub fn locate(args: &[OsString]) -> Option<PathBuf> {
    let mut args = args.iter().filter_map(|a| a.to_str());
    while let Some(arg) = args.next() {
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("OPENCLAW_CONFIG").map(PathBuf::from)
}

/// Settings of `command` (and its subcommands) that can come from the file:
/// flag name → environment variable.
fn settings(command: &clap::Command, out: &mut BTreeMap<String, String>) {
    for arg in command.get_arguments() {
        if let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) {
            out.insert(long.to_string(), env.to_string_lossy().into_owned());
        }
    }
    for sub in command.get_subcommands() {
        settings(sub, out);
    }
}

/// Reads the file's settings as `(environment variable, value)` pairs, refusing unknown keys.
pub fn read(
    path: &std::path::Path,
    command: &clap::Command,
) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the configuration file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", path.display()))?;
    let mut known = BTreeMap::new();
    settings(command, &mut known);
    let mut pairs = Vec::new();
    for (key, value) in table {
        let Some(env) = known.get(&key.replace('_', "-")) else {
            bail!(
                "{}: unknown setting '{key}'; known settings: {}",
                path.display(),
                known.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        };
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            other => bail!(
                "{}: the setting '{key}' cannot be {}",
                path.display(),
                other.type_str()
            ),
        };
        pairs.push((env.clone(), value));
    }
    Ok(pairs)
}

/// Applies the configuration file (if any) beneath the environment.
///
/// Call it first thing in `main`, before any thread exists: it sets
/// environment variables, for those settings the environment does not set.
/// Build the command that parses the arguments afterwards: clap reads the
/// environment when a command is built.
pub fn apply(command: &clap::Command) -> anyhow::Result<()> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let Some(path) = locate(&args) else {
        return Ok(());
    };
    for (env, value) in read(&path, command)? {
        if std::env::var_os(&env).is_none() {
            // SAFETY: called at the start of a synchronous `main`, before the
            // runtime or any other thread exists, so nothing reads the environment concurrently.
            unsafe { std::env::set_var(&env, value) };
        }
    }
    Ok(())
}

/// The effective settings of a parsed command line, as TOML `flag-name = "value"` lines:
/// whatever came from flags, environment, file or defaults. Values of settings
/// marked secret (`hide_env_values`) are redacted, and URL-shaped ones shown without
/// credentials (`crate::redact::url`).
pub fn render(command: &clap::Command, matches: &clap::ArgMatches) -> String {
    let mut out = String::new();
    for arg in command.get_arguments() {
        let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
            continue;
        };
        if matches!(long, "config" | "print-config" | "help" | "version") {
            continue;
        }
        let values: Vec<String> = match matches.get_raw(id) {
            Some(raw) => raw.map(|v| v.to_string_lossy().into_owned()).collect(),
            None => {
                out.push_str(&format!("# {long} is not set\n"));
                continue;
            }
        };
        let shown = if arg.is_hide_env_values_set() {
            "<redacted>".to_string()
        } else if long.ends_with("url") || values.iter().any(|v| v.contains("://")) {
            // URL-shaped settings keep their host but lose any credential they carry.
            crate::redact::urls(&values).join(",")
        } else {
            values.join(",")
        };
        out.push_str(&format!("{long} = {}\n", toml::Value::String(shown)));
    }
    if let Some((name, sub)) = matches.subcommand()
        && let Some(sub_command) = command.find_subcommand(name)
    {
        out.push_str(&render(sub_command, sub));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Example {
        #[arg(long, env = "EXAMPLE_REDIS_URL")]
        redis_url: Option<String>,
        #[arg(long, env = "EXAMPLE_TIMEOUT_MS", default_value_t = 5)]
        timeout_ms: u64,
    }

    #[test]
    fn printed_configuration_redacts_secrets() {
        #[derive(Parser)]
        struct WithSecret {
            #[arg(long, env = "EXAMPLE_TOKEN", hide_env_values = true)]
            token: Option<String>,
            #[arg(long, default_value = "a")]
            name: String,
        }
        let command = WithSecret::command();
        let matches = command
            .clone()
            .get_matches_from(["x", "--token", "hunter2"]);
        let printed = render(&command, &matches);
        assert!(printed.contains("token = \"<redacted>\""), "{printed}");
        assert!(printed.contains("name = \"a\""), "{printed}");
        assert!(!printed.contains("hunter2"));
    }

    #[test]
    fn printed_urls_lose_their_credentials() {
        let command = Example::command();
        let matches =
            command
                .clone()
                .get_matches_from(["x", "--redis-url", "redis://:hunter2@r:6379"]);
        let printed = render(&command, &matches);
        assert!(
            printed.contains("redis-url = \"redis://:***@r:6379\""),
            "{printed}"
        );
        assert!(!printed.contains("hunter2"), "{printed}");
    }

    #[test]
    fn the_file_is_found_by_flag_or_environment() {
        let args: Vec<OsString> = ["bin", "serve", "--config", "a.toml"]
            .map(OsString::from)
            .to_vec();
        assert_eq!(locate(&args), Some(PathBuf::from("a.toml")));
        let args: Vec<OsString> = ["bin", "--config=b.toml"].map(OsString::from).to_vec();
        assert_eq!(locate(&args), Some(PathBuf::from("b.toml")));
    }

    #[test]
    fn settings_are_named_by_flag_with_either_separator_and_unknown_ones_are_refused() {
        let dir = tempfile_dir();
        let path = dir.join("gateway.toml");
        std::fs::write(&path, "redis_url = \"redis://r:6379\"\ntimeout-ms = 250\n").unwrap();
        let pairs = read(&path, &Example::command()).unwrap();
        assert!(pairs.contains(&("EXAMPLE_REDIS_URL".into(), "redis://r:6379".into())));
        assert!(pairs.contains(&("EXAMPLE_TIMEOUT_MS".into(), "250".into())));
        std::fs::write(&path, "redis_urll = \"x\"\n").unwrap();
        let err = read(&path, &Example::command()).unwrap_err().to_string();
        assert!(
            err.contains("unknown setting 'redis_urll'") && err.contains("redis-url"),
            "{err}"
        );
        std::fs::write(&path, "not toml [").unwrap();
        assert!(read(&path, &Example::command()).is_err());
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("openclaw-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
