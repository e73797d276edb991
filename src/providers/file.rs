//! Providers are configuration: a TOML file (`--providers-file`,
//! `OPENCLAW_PROVIDERS_FILE`) declares each OpenAI-compatible provider, its
//! models and their fallbacks, and how its calls are bounded and retried.
//! Without a file the built-in Z.ai provider serves the guide's models
//! (`ZAI_API_KEY`, `ZAI_BASE_URL`), answered by the offline simulator when no
//! key is set. `docs/providers.md` documents the format.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use super::anthropic::{ANTHROPIC_VERSION, Anthropic};
use super::circuit::BreakerSettings;
use super::resilience::{ProviderGuard, RetrySettings};
use super::{
    ChatProvider, DEFAULT_MODEL, ModelCatalog, ModelSpec, OpenAiCompatible, OpenAiConfig,
    Simulator, ZAI_MODELS, known_context_window, known_prices,
};
use crate::config::{CoreConfig, Secret};
use crate::spend::{MAX_PRICE_PER_MTOK, Prices};

/// The providers file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProvidersFile {
    /// The model of a request that names none; defaults to `zai/glm-4.7-flash`,
    /// else the first model declared.
    #[serde(default)]
    pub default_model: Option<String>,
    #[serde(default)]
    pub providers: Vec<ProviderEntry>,
}

/// The wire format a provider speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI's chat completions (`POST {baseUrl}/chat/completions`): Z.ai, Azure OpenAI,
    /// local servers and most vendors.
    #[default]
    Openai,
    /// Anthropic's Messages API (`POST {baseUrl}/v1/messages`).
    Anthropic,
}

/// A header or query value: the text itself, or `{ env = "NAME" }` to read it from the
/// environment at start-up (a secret such as Azure's `api-key`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ConfigValue {
    Text(String),
    Env { env: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderEntry {
    /// The provider's name: the first part of its model ids (`zai` in `zai/glm-4.7-flash`).
    pub name: String,
    /// `openai` (the default) or `anthropic`.
    #[serde(default)]
    pub kind: ProviderKind,
    /// Up to and excluding `/chat/completions` (OpenAI) or `/v1/messages` (Anthropic).
    pub base_url: String,
    /// Headers sent with every call (e.g. Azure OpenAI's `api-key`).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, ConfigValue>,
    /// Query parameters added to every call's URL (e.g. Azure OpenAI's `api-version`).
    #[serde(default)]
    pub query: std::collections::BTreeMap<String, ConfigValue>,
    /// The `anthropic-version` header of an Anthropic provider (default `2023-06-01`).
    #[serde(default)]
    pub anthropic_version: Option<String>,
    /// The environment variable holding the provider's API key; none for a server without auth.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// When the key's variable is unset, answer with the offline simulator
    /// instead of refusing to start.
    #[serde(default)]
    pub simulate_without_key: bool,
    /// Bound on connecting, in milliseconds (default: `OPENCLAW_PROVIDER_CONNECT_TIMEOUT_MS`).
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    /// Bound on one attempt, to the last byte of the answer, in milliseconds
    /// (default: `OPENCLAW_PROVIDER_TIMEOUT_MS`).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub retry: RetrySettings,
    #[serde(default)]
    pub breaker: BreakerSettings,
    pub models: Vec<ModelEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelEntry {
    /// The model's id is `<provider>/<name>`.
    pub name: String,
    /// What the provider calls it, when not `name`.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Model ids (of any provider) asked in this order when this one cannot answer.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Tokens the model reads and writes in one call (prompt plus completion). Absent: the
    /// published window of the guide's GLM models (by upstream name), else 128,000.
    #[serde(default)]
    pub context_window: Option<u32>,
    /// US dollars per million prompt tokens (six decimal places). Absent: the published price
    /// of the guide's GLM models (by upstream name), else 0.
    #[serde(default, rename = "inputPricePerMTok")]
    pub input_price_per_mtok: Option<f64>,
    /// US dollars per million completion tokens.
    #[serde(default, rename = "outputPricePerMTok")]
    pub output_price_per_mtok: Option<f64>,
    /// US dollars per million prompt tokens the provider reports as cached; absent: the input
    /// price.
    #[serde(default, rename = "cachedInputPricePerMTok")]
    pub cached_input_price_per_mtok: Option<f64>,
}

impl ModelEntry {
    /// The model's prices: its own, else the published ones of a model the gateway knows.
    fn prices(&self, upstream: &str) -> Prices {
        let known = known_prices(upstream);
        let micros = |dollars: Option<f64>, default: u64| {
            dollars.and_then(Prices::micros_per_mtok).unwrap_or(default)
        };
        let input = micros(self.input_price_per_mtok, known.input);
        Prices {
            input,
            output: micros(self.output_price_per_mtok, known.output),
            cached_input: micros(
                self.cached_input_price_per_mtok,
                if self.input_price_per_mtok.is_some() {
                    input
                } else {
                    known.cached_input
                },
            ),
        }
    }
}

impl ProvidersFile {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let file: ProvidersFile = toml::from_str(text)?;
        file.check()?;
        Ok(file)
    }

    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the providers file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in the providers file {}", path.display()))
    }

    /// The built-in configuration: Z.ai serving the guide's models.
    pub fn builtin(config: &CoreConfig) -> Self {
        Self {
            default_model: Some(DEFAULT_MODEL.into()),
            providers: vec![ProviderEntry {
                name: "zai".into(),
                kind: ProviderKind::Openai,
                base_url: config.zai_base_url.clone(),
                headers: Default::default(),
                query: Default::default(),
                anthropic_version: None,
                api_key_env: Some("ZAI_API_KEY".into()),
                simulate_without_key: true,
                connect_timeout_ms: None,
                timeout_ms: None,
                retry: RetrySettings::default(),
                breaker: BreakerSettings::default(),
                models: ZAI_MODELS
                    .iter()
                    .map(|id| ModelEntry {
                        name: id.trim_start_matches("zai/").into(),
                        upstream: None,
                        fallbacks: Vec::new(),
                        context_window: None,
                        input_price_per_mtok: None,
                        output_price_per_mtok: None,
                        cached_input_price_per_mtok: None,
                    })
                    .collect(),
            }],
        }
    }

    fn model_ids(&self) -> impl Iterator<Item = String> + '_ {
        self.providers.iter().flat_map(|p| {
            p.models
                .iter()
                .map(move |m| format!("{}/{}", p.name, m.name))
        })
    }

    /// Every mistake a start-up should refuse, named so it can be fixed.
    fn check(&self) -> anyhow::Result<()> {
        let mut providers = HashSet::new();
        for provider in &self.providers {
            let name = &provider.name;
            if name.is_empty() || name.contains('/') || name.chars().any(char::is_whitespace) {
                bail!("provider name '{name}' must be non-empty, without '/' or spaces");
            }
            if !providers.insert(name.as_str()) {
                bail!("provider '{name}' is declared twice");
            }
            if !(provider.base_url.starts_with("http://")
                || provider.base_url.starts_with("https://"))
            {
                bail!(
                    "provider '{name}': baseUrl '{}' must start with http:// or https://",
                    openclaw_runtime::redact::url(&provider.base_url)
                );
            }
            if provider.models.is_empty() {
                bail!("provider '{name}' declares no models");
            }
            if provider.timeout_ms == Some(0) || provider.connect_timeout_ms == Some(0) {
                bail!("provider '{name}': timeouts must be at least 1 ms");
            }
            for header in provider.headers.keys() {
                if reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_err() {
                    bail!("provider '{name}': '{header}' is not a valid HTTP header name");
                }
                let reserved = [
                    "authorization",
                    "content-type",
                    "content-length",
                    "host",
                    "x-api-key",
                ];
                if reserved.contains(&header.to_ascii_lowercase().as_str()) {
                    bail!(
                        "provider '{name}': the header '{header}' is set by the gateway; use apiKeyEnv for the credential"
                    );
                }
            }
            if provider.anthropic_version.is_some() && provider.kind != ProviderKind::Anthropic {
                bail!("provider '{name}': anthropicVersion applies to kind = \"anthropic\" only");
            }
        }
        let ids: Vec<String> = self.model_ids().collect();
        let mut seen = HashSet::new();
        for id in &ids {
            if !seen.insert(id.as_str()) {
                bail!("model '{id}' is declared twice");
            }
        }
        for provider in &self.providers {
            for model in &provider.models {
                let id = format!("{}/{}", provider.name, model.name);
                if model.context_window == Some(0) {
                    bail!("model '{id}': contextWindow must be at least 1 token");
                }
                for (field, price) in [
                    ("inputPricePerMTok", model.input_price_per_mtok),
                    ("outputPricePerMTok", model.output_price_per_mtok),
                    ("cachedInputPricePerMTok", model.cached_input_price_per_mtok),
                ] {
                    if let Some(price) = price
                        && Prices::micros_per_mtok(price).is_none()
                    {
                        bail!(
                            "model '{id}': {field} must be a price in US dollars per million tokens, from 0 to {MAX_PRICE_PER_MTOK}; it is {price}"
                        );
                    }
                }
                for fallback in &model.fallbacks {
                    if fallback == &id {
                        bail!("model '{id}' names itself as a fallback");
                    }
                    if !seen.contains(fallback.as_str()) {
                        bail!(
                            "model '{id}' falls back to '{fallback}', which is not declared; declared: {}",
                            ids.join(", ")
                        );
                    }
                }
            }
        }
        if let Some(default) = &self.default_model
            && !seen.contains(default.as_str())
        {
            bail!(
                "defaultModel '{default}' is not declared; declared: {}",
                ids.join(", ")
            );
        }
        Ok(())
    }
}

/// The model catalog the configuration describes: the providers file when one
/// is named, the built-in Z.ai provider otherwise.
pub fn load_catalog(config: &CoreConfig) -> anyhow::Result<ModelCatalog> {
    let file = match &config.providers_file {
        Some(path) => ProvidersFile::read(path)?,
        None => ProvidersFile::builtin(config),
    };
    build_catalog(&file, config, |name| {
        // The built-in provider's key comes through the configuration (flag, env or `.env`).
        if name == "ZAI_API_KEY"
            && let Some(key) = &config.zai_api_key
        {
            return Some(key.clone());
        }
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .map(Secret::new)
    })
}

fn build_catalog(
    file: &ProvidersFile,
    config: &CoreConfig,
    secret: impl Fn(&str) -> Option<Secret>,
) -> anyhow::Result<ModelCatalog> {
    let mut catalog = ModelCatalog::default();
    let budget = config.provider_timeout();
    catalog.set_call_budget(budget);
    for entry in &file.providers {
        let key = entry.api_key_env.as_deref().map(|var| (var, secret(var)));
        let timeout = entry
            .timeout_ms
            .map_or(budget, Duration::from_millis)
            .min(budget);
        let mut models: Vec<ModelSpec> = entry
            .models
            .iter()
            .map(|m| {
                let upstream = m.upstream.clone().unwrap_or_else(|| m.name.clone());
                ModelSpec {
                    id: format!("{}/{}", entry.name, m.name),
                    prices: m.prices(&upstream),
                    context_window: m
                        .context_window
                        .unwrap_or_else(|| known_context_window(&upstream)),
                    upstream,
                    fallbacks: m.fallbacks.clone(),
                }
            })
            .collect();
        let listed = models
            .iter()
            .map(|m| m.id.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let provider: Arc<dyn ChatProvider> = match key {
            Some((var, None)) if entry.simulate_without_key => {
                tracing::warn!(
                    provider = %entry.name,
                    "{var} is not set: the {} models are answered by the built-in OFFLINE SIMULATOR",
                    entry.name
                );
                Arc::new(Simulator::new(entry.name.clone()))
            }
            Some((var, None)) => bail!(
                "provider '{}' needs an API key in the environment variable {var}, which is not set",
                entry.name
            ),
            Some((_, Some(key))) => client(entry, config, Some(key), timeout, &secret)?,
            None => client(entry, config, None, timeout, &secret)?,
        };
        if provider.simulated() {
            // The simulator's answers cost nothing, whatever the real provider charges.
            for model in &mut models {
                model.prices = Prices::default();
            }
        } else {
            tracing::info!(provider = %entry.name, base_url = %openclaw_runtime::redact::url(&entry.base_url), "provider {}: {listed}", entry.name);
        }
        let guard = Arc::new(ProviderGuard::new(
            entry.name.clone(),
            entry.retry,
            timeout,
            entry.breaker,
        ));
        catalog.add_models(provider, guard, models);
    }
    let default = file
        .default_model
        .clone()
        .filter(|id| catalog.resolve(id).is_ok())
        .or_else(|| {
            catalog
                .resolve(DEFAULT_MODEL)
                .ok()
                .map(|_| DEFAULT_MODEL.to_string())
        })
        .or_else(|| catalog.ids().first().map(|id| id.to_string()));
    match default {
        Some(id) => catalog.set_default_model(id),
        None => bail!("no model is configured: declare at least one provider with a model"),
    }
    Ok(catalog)
}

/// The values of a provider's `headers` or `query`, environment variables read.
fn resolve(
    provider: &str,
    what: &str,
    values: &std::collections::BTreeMap<String, ConfigValue>,
    secret: &impl Fn(&str) -> Option<Secret>,
) -> anyhow::Result<Vec<(String, Secret)>> {
    values
        .iter()
        .map(|(name, value)| {
            let value = match value {
                ConfigValue::Text(text) => Secret::new(text.clone()),
                ConfigValue::Env { env } => secret(env).with_context(|| {
                    format!(
                        "provider '{provider}': {what} '{name}' reads the environment variable {env}, which is not set"
                    )
                })?,
            };
            Ok((name.clone(), value))
        })
        .collect()
}

/// The client of a provider, by its kind.
fn client(
    entry: &ProviderEntry,
    config: &CoreConfig,
    api_key: Option<Secret>,
    timeout: Duration,
    secret: &impl Fn(&str) -> Option<Secret>,
) -> anyhow::Result<Arc<dyn ChatProvider>> {
    let settings = OpenAiConfig {
        name: entry.name.clone(),
        base_url: entry.base_url.clone(),
        api_key,
        connect_timeout: entry
            .connect_timeout_ms
            .map_or(config.provider_connect_timeout(), Duration::from_millis),
        request_timeout: timeout,
        headers: resolve(&entry.name, "header", &entry.headers, secret)?,
        query: resolve(&entry.name, "query parameter", &entry.query, secret)?,
    };
    let configuring = || format!("configuring provider '{}'", entry.name);
    Ok(match entry.kind {
        ProviderKind::Openai => {
            Arc::new(OpenAiCompatible::new(settings).with_context(configuring)?)
        }
        ProviderKind::Anthropic => Arc::new(
            Anthropic::new(
                settings,
                entry
                    .anthropic_version
                    .clone()
                    .unwrap_or_else(|| ANTHROPIC_VERSION.to_owned()),
            )
            .with_context(configuring)?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        defaultModel = "local/llama3.2"

        [[providers]]
        name = "local"
        baseUrl = "http://127.0.0.1:11434/v1"
        timeoutMs = 30000
        models = [{ name = "llama3.2", fallbacks = ["zai/glm-4.7-flash"], contextWindow = 8192 }]

        [[providers]]
        name = "zai"
        baseUrl = "https://api.z.ai/api/paas/v4"
        apiKeyEnv = "ZAI_API_KEY"
        simulateWithoutKey = true
        retry = { maxRetries = 3, initialBackoffMs = 100 }
        breaker = { failureThreshold = 2, openMs = 1000 }

        [[providers.models]]
        name = "glm-4.7-flash"
        fallbacks = ["zai/glm-4.5-flash"]

        [[providers.models]]
        name = "glm-4.5-flash"
    "#;

    fn config() -> CoreConfig {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            core: CoreConfig,
        }
        Wrapper::parse_from(["test"]).core
    }

    #[test]
    fn the_documented_example_parses_with_defaults_filled_in() {
        let file = ProvidersFile::parse(EXAMPLE).expect("valid");
        assert_eq!(file.providers.len(), 2);
        let zai = &file.providers[1];
        assert_eq!(zai.retry.max_retries, 3);
        assert_eq!(
            zai.retry.max_backoff_ms,
            RetrySettings::default().max_backoff_ms
        );
        assert_eq!(zai.breaker.failure_threshold, 2);
        assert_eq!(zai.models[0].fallbacks, ["zai/glm-4.5-flash"]);
        let catalog = build_catalog(&file, &config(), |_| None).expect("catalog");
        assert_eq!(
            catalog.ids(),
            ["local/llama3.2", "zai/glm-4.7-flash", "zai/glm-4.5-flash"]
        );
        assert_eq!(catalog.default_model(), "local/llama3.2");
        assert!(
            catalog
                .resolve("zai/glm-4.7-flash")
                .unwrap()
                .provider
                .simulated()
        );
        assert!(
            !catalog
                .resolve("local/llama3.2")
                .unwrap()
                .provider
                .simulated()
        );
        assert_eq!(
            catalog.resolve_loose("llama3.2").unwrap().id,
            "local/llama3.2"
        );
        let window = |id: &str| catalog.resolve(id).unwrap().context_window;
        assert_eq!(window("local/llama3.2"), 8192);
        assert_eq!(window("zai/glm-4.7-flash"), 200_000);
        assert_eq!(window("zai/glm-4.5-flash"), 128_000);
    }

    #[test]
    fn mistakes_are_refused_with_what_to_fix() {
        let error = |text: &str| format!("{:#}", ProvidersFile::parse(text).expect_err("refused"));
        let unknown_fallback = r#"
            [[providers]]
            name = "a"
            baseUrl = "http://x"
            models = [{ name = "m", fallbacks = ["b/m"] }]
        "#;
        assert!(error(unknown_fallback).contains("'b/m', which is not declared"));
        let bad_url = r#"
            [[providers]]
            name = "a"
            baseUrl = "x"
            models = [{ name = "m" }]
        "#;
        assert!(error(bad_url).contains("must start with http"));
        let typo = r#"
            [[providers]]
            name = "a"
            baseUrl = "http://x"
            apiKeyEnvv = "K"
            models = [{ name = "m" }]
        "#;
        assert!(error(typo).contains("apiKeyEnvv"));
        let no_window = r#"
            [[providers]]
            name = "a"
            baseUrl = "http://x"
            models = [{ name = "m", contextWindow = 0 }]
        "#;
        assert!(error(no_window).contains("contextWindow must be at least 1"));
    }

    #[test]
    fn a_missing_key_without_the_simulator_is_refused() {
        let file = ProvidersFile::parse(
            r#"
            [[providers]]
            name = "vendor"
            baseUrl = "https://api.example.com/v1"
            apiKeyEnv = "VENDOR_KEY"
            models = [{ name = "m" }]
        "#,
        )
        .expect("valid");
        let Err(error) = build_catalog(&file, &config(), |_| None) else {
            panic!("a provider without its key must not start");
        };
        assert!(error.to_string().contains("VENDOR_KEY"), "{error}");
    }
}
