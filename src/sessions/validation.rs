//! Checks of the requests that carry conversations: session ids, messages, generation options
//! and pages. Completions and cron payloads use the same checks, so a session id or a message
//! is valid (or not) the same way wherever it is sent.

use crate::error::{ApiError, ApiResult};
use crate::proto::{self, ChatMessage};
use crate::providers::{ResponseFormat, Sampling, Tool, ToolChoice};

/// The roles a session's messages may have.
pub(crate) const ROLES: &[&str] = &["system", "user", "assistant", "tool"];
const MAX_SESSION_ID_LEN: usize = 128;
const MAX_TOKENS_CAP: u32 = 131_072;

/// A session id must be safe in URLs and store keys.
pub(crate) fn validate_session_id(id: &str, field: &str) -> ApiResult<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_SESSION_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_field(
            field,
            "Invalid session id",
            format!(
                "The field '{field}' must be 1-{MAX_SESSION_ID_LEN} characters of letters, digits, '-', '_', '.' or ':'"
            ),
        ))
    }
}

pub(crate) fn validate_message(
    message: &ChatMessage,
    field: &str,
    roles: &[&str],
) -> ApiResult<()> {
    if message.role.is_empty() {
        return Err(ApiError::invalid_field(
            format!("{field}.role"),
            "Missing required field",
            format!(
                "The field '{field}.role' is required (one of: {})",
                roles.join(", ")
            ),
        ));
    }
    if !roles.contains(&message.role.as_str()) {
        return Err(ApiError::invalid_field(
            format!("{field}.role"),
            "Invalid role",
            format!(
                "The field '{field}.role' is '{}'; use one of: {}",
                message.role.chars().take(40).collect::<String>(),
                roles.join(", ")
            ),
        ));
    }
    let invalid =
        |name: String, details: String| ApiError::invalid_field(name, "Invalid message", details);
    if !message.name.is_empty() && !function_name_ok(&message.name) {
        return Err(invalid(
            format!("{field}.name"),
            format!("The field '{field}.name' must be 1 to 64 letters, digits, '_' or '-'"),
        ));
    }
    if message.role != "assistant" && !message.tool_calls.is_empty() {
        return Err(invalid(
            format!("{field}.toolCalls"),
            format!("The field '{field}.toolCalls' belongs to assistant messages only"),
        ));
    }
    for (i, call) in message.tool_calls.iter().enumerate() {
        if call.id.is_empty() || call.id.len() > 256 {
            return Err(invalid(
                format!("{field}.toolCalls[{i}].id"),
                format!(
                    "The field '{field}.toolCalls[{i}].id' is required: the call's id, as the model gave it (at most 256 characters)"
                ),
            ));
        }
        if !function_name_ok(&call.name) {
            return Err(invalid(
                format!("{field}.toolCalls[{i}].name"),
                format!(
                    "The field '{field}.toolCalls[{i}].name' is required: 1 to 64 letters, digits, '_' or '-'"
                ),
            ));
        }
    }
    if message.role == "tool" {
        if message.tool_call_id.is_empty() || message.tool_call_id.len() > 256 {
            return Err(invalid(
                format!("{field}.toolCallId"),
                format!(
                    "The field '{field}.toolCallId' is required on a tool message: the id of the tool call it answers"
                ),
            ));
        }
        // A tool may return nothing.
        return Ok(());
    }
    if !message.tool_call_id.is_empty() {
        return Err(invalid(
            format!("{field}.toolCallId"),
            format!("The field '{field}.toolCallId' belongs to tool messages only"),
        ));
    }
    if !message.parts.is_empty() {
        parts(message, field)?;
    }
    if message.content.trim().is_empty()
        && message.tool_calls.is_empty()
        && message.parts.is_empty()
    {
        return Err(ApiError::invalid_field(
            format!("{field}.content"),
            "Empty message",
            format!("The field '{field}.content' must not be empty"),
        ));
    }
    Ok(())
}

/// The sampling options of a request, checked: each in its range, named by its sessions-API
/// field when it is not (the OpenAI-compatible surface renames them to its own).
pub(crate) fn sampling(options: Option<&proto::GenerationOptions>) -> ApiResult<Sampling> {
    let Some(options) = options else {
        return Ok(Sampling::default());
    };
    if options.stop.len() > 4 || options.stop.iter().any(|s| s.is_empty() || s.len() > 256) {
        return Err(field(
            "stop",
            "The field 'stop' takes up to 4 sequences, each 1 to 256 bytes".into(),
        ));
    }
    let between = |value: Option<f32>, name: &str, low: f32, high: f32, open_low: bool| match value
    {
        Some(v) if !v.is_finite() || v > high || v < low || (open_low && v <= low) => Err(field(
            name,
            format!(
                "The field '{name}' must be a number {} {low} and at most {high}",
                if open_low { "above" } else { "of at least" }
            ),
        )),
        _ => Ok(()),
    };
    between(options.top_p, "topP", 0.0, 1.0, true)?;
    between(
        options.presence_penalty,
        "presencePenalty",
        -2.0,
        2.0,
        false,
    )?;
    between(
        options.frequency_penalty,
        "frequencyPenalty",
        -2.0,
        2.0,
        false,
    )?;
    if options.logit_bias.len() > 300 {
        return Err(field(
            "logitBias",
            "The field 'logitBias' takes at most 300 token ids".into(),
        ));
    }
    for (token, bias) in &options.logit_bias {
        if token.parse::<u32>().is_err() || !bias.is_finite() || !(-100.0..=100.0).contains(bias) {
            return Err(field(
                "logitBias",
                "The field 'logitBias' maps token ids (whole numbers, as strings) to biases from -100 to 100".into(),
            ));
        }
    }
    if options.user.chars().count() > 256 {
        return Err(field(
            "user",
            "The field 'user' must be at most 256 characters".into(),
        ));
    }
    let response_format = match &options.response_format {
        None => None,
        Some(format) => Some(response_format(format)?),
    };
    if let Some(top) = options.top_logprobs {
        if top > 20 {
            return Err(field(
                "topLogprobs",
                format!("The field 'topLogprobs' must be from 0 to 20, not {top}"),
            ));
        }
        if options.logprobs != Some(true) {
            return Err(field(
                "topLogprobs",
                "The field 'topLogprobs' needs 'logprobs' set to true".into(),
            ));
        }
    }
    let tools = tools(options)?;
    let tool_choice = tool_choice(options, &tools)?;
    Ok(Sampling {
        stop: options.stop.clone(),
        top_p: options.top_p,
        seed: options.seed,
        presence_penalty: options.presence_penalty,
        frequency_penalty: options.frequency_penalty,
        logit_bias: options
            .logit_bias
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        user: (!options.user.is_empty()).then(|| options.user.clone()),
        response_format,
        tools,
        tool_choice,
        parallel_tool_calls: options.parallel_tool_calls,
        logprobs: options.logprobs,
        top_logprobs: options.top_logprobs,
    })
}

const MAX_PARTS: usize = 100;
const MAX_IMAGE_URL: usize = 2048;
const IMAGE_TYPES: [&str; 4] = ["png", "jpeg", "gif", "webp"];

/// A message's parts: text, or images by http(s) URL or base64 data URL, on user messages.
fn parts(message: &ChatMessage, field: &str) -> ApiResult<()> {
    let invalid = |name: String, details: String| {
        ApiError::invalid_field(name, "Invalid message part", details)
    };
    if message.role != "user" {
        return Err(invalid(
            format!("{field}.content"),
            format!(
                "The field '{field}.content' may hold images on user messages only; send this message's content as text"
            ),
        ));
    }
    if message.parts.len() > MAX_PARTS {
        return Err(invalid(
            format!("{field}.content"),
            format!("The field '{field}.content' holds at most {MAX_PARTS} parts"),
        ));
    }
    for (i, part) in message.parts.iter().enumerate() {
        let at = format!("{field}.content[{i}]");
        match part.r#type.as_str() {
            "text" => {}
            "image_url" => {
                let url = part.image_url.as_str();
                let web = (url.starts_with("https://") || url.starts_with("http://"))
                    && url.len() <= MAX_IMAGE_URL
                    && reqwest::Url::parse(url).is_ok();
                let data = url.strip_prefix("data:image/").and_then(|rest| {
                    let (kind, data) = rest.split_once(";base64,")?;
                    (IMAGE_TYPES.contains(&kind)
                        && !data.is_empty()
                        && data
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')))
                    .then_some(())
                });
                if !web && data.is_none() {
                    return Err(invalid(
                        format!("{at}.imageUrl.url"),
                        format!(
                            "The field '{at}.imageUrl.url' must be an http(s) URL of at most {MAX_IMAGE_URL} characters, or a data URL data:image/<png|jpeg|gif|webp>;base64,<data>"
                        ),
                    ));
                }
                if !matches!(part.detail.as_str(), "" | "auto" | "low" | "high") {
                    return Err(invalid(
                        format!("{at}.imageUrl.detail"),
                        format!(
                            "The field '{at}.imageUrl.detail' must be \"auto\", \"low\" or \"high\""
                        ),
                    ));
                }
            }
            other => {
                return Err(invalid(
                    format!("{at}.type"),
                    format!(
                        "The field '{at}.type' is '{}': a part is \"text\" or \"image_url\"",
                        other.chars().take(40).collect::<String>()
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn field(name: &str, details: String) -> ApiError {
    ApiError::invalid_field(name.to_owned(), format!("Invalid {name}"), details)
}

/// A function name: 1 to 64 letters, digits, '_' or '-' (what OpenAI and Anthropic accept).
fn function_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

const MAX_TOOLS: usize = 128;

fn tools(options: &proto::GenerationOptions) -> ApiResult<Vec<Tool>> {
    if options.tools.len() > MAX_TOOLS {
        return Err(field(
            "tools",
            format!("The field 'tools' takes at most {MAX_TOOLS} functions"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    options
        .tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            if !function_name_ok(&tool.name) {
                return Err(field(
                    &format!("tools[{i}].name"),
                    format!("The field 'tools[{i}].name' is required: 1 to 64 letters, digits, '_' or '-'"),
                ));
            }
            if !seen.insert(tool.name.as_str()) {
                return Err(field(
                    &format!("tools[{i}].name"),
                    format!("The field 'tools[{i}].name' repeats the function '{}'; each tool needs its own name", tool.name),
                ));
            }
            let parameters = if tool.parameters.is_empty() {
                None
            } else {
                Some(
                    serde_json::from_str::<serde_json::Value>(&tool.parameters)
                        .ok()
                        .filter(serde_json::Value::is_object)
                        .ok_or_else(|| {
                            field(
                                &format!("tools[{i}].parameters"),
                                format!("The field 'tools[{i}].parameters' must be a JSON Schema object"),
                            )
                        })?,
                )
            };
            Ok(Tool {
                name: tool.name.clone(),
                description: (!tool.description.is_empty()).then(|| tool.description.clone()),
                parameters,
                strict: tool.strict,
            })
        })
        .collect()
}

fn tool_choice(
    options: &proto::GenerationOptions,
    tools: &[Tool],
) -> ApiResult<Option<ToolChoice>> {
    let Some(choice) = &options.tool_choice else {
        return Ok(None);
    };
    let choice = match choice.mode.as_str() {
        "auto" => ToolChoice::Auto,
        "none" => ToolChoice::None,
        "required" => ToolChoice::Required,
        "function" => ToolChoice::Function {
            function: choice.function.clone(),
        },
        other => {
            return Err(field(
                "toolChoice",
                format!(
                    "The field 'toolChoice' must be \"auto\", \"none\", \"required\" or a function to call, not '{}'",
                    other.chars().take(40).collect::<String>()
                ),
            ));
        }
    };
    if let ToolChoice::Function { function } = &choice
        && !tools.iter().any(|t| &t.name == function)
    {
        return Err(field(
            "toolChoice",
            format!(
                "The field 'toolChoice' names the function '{}', which is not among 'tools'",
                function.chars().take(64).collect::<String>()
            ),
        ));
    }
    if tools.is_empty() && matches!(choice, ToolChoice::Required | ToolChoice::Function { .. }) {
        return Err(field(
            "toolChoice",
            "The field 'toolChoice' requires a tool call, but 'tools' offers none".into(),
        ));
    }
    Ok(Some(choice))
}

fn response_format(format: &proto::ResponseFormat) -> ApiResult<ResponseFormat> {
    let invalid = |name: &str, details: &str| {
        ApiError::invalid_field(
            format!("responseFormat.{name}"),
            "Invalid responseFormat",
            details.to_owned(),
        )
    };
    match format.r#type.as_str() {
        "text" => Ok(ResponseFormat::Text),
        "json_object" => Ok(ResponseFormat::JsonObject),
        "json_schema" => {
            let name_ok = !format.name.is_empty()
                && format.name.len() <= 64
                && format
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !name_ok {
                return Err(invalid(
                    "name",
                    "The field 'responseFormat.name' is required with json_schema: 1 to 64 letters, digits, '_' or '-'",
                ));
            }
            let schema: serde_json::Value = serde_json::from_str(&format.schema)
                .ok()
                .filter(serde_json::Value::is_object)
                .ok_or_else(|| {
                    invalid(
                        "schema",
                        "The field 'responseFormat.schema' must be a JSON Schema object",
                    )
                })?;
            Ok(ResponseFormat::JsonSchema {
                name: format.name.clone(),
                description: (!format.description.is_empty()).then(|| format.description.clone()),
                schema,
                strict: format.strict,
            })
        }
        other => Err(invalid(
            "type",
            &format!(
                "The field 'responseFormat.type' must be \"text\", \"json_object\" or \"json_schema\", not '{}'",
                other.chars().take(40).collect::<String>()
            ),
        )),
    }
}

pub(crate) fn validate_options(options: &Option<proto::GenerationOptions>) -> ApiResult<()> {
    let Some(options) = options else {
        return Ok(());
    };
    sampling(Some(options))?;
    if let Some(t) = options.temperature
        && !(t.is_finite() && (0.0..=2.0).contains(&t))
    {
        return Err(ApiError::invalid_field(
            "temperature",
            "Invalid temperature",
            "The field 'temperature' must be a number from 0 to 2",
        ));
    }
    if let Some(n) = options.max_tokens
        && !(1..=MAX_TOKENS_CAP).contains(&n)
    {
        return Err(ApiError::invalid_field(
            "maxTokens",
            "Invalid maxTokens",
            format!("The field 'maxTokens' must be a whole number from 1 to {MAX_TOKENS_CAP}"),
        ));
    }
    Ok(())
}

/// Where a page starts: the `nextPageToken` of the page before, or the beginning.
pub(crate) fn parse_page_token(token: &str) -> ApiResult<u64> {
    if token.is_empty() {
        return Ok(0);
    }
    token.parse().map_err(|_| {
        ApiError::invalid_field(
            "pageToken",
            "Invalid page token",
            "The field 'pageToken' must be a nextPageToken from a previous page",
        )
    })
}

/// How many items a page holds: `default` when the caller names none, at most `max`.
pub(crate) fn page_size(requested: u32, default: u32, max: u32) -> ApiResult<u32> {
    match requested {
        0 => Ok(default),
        n if n <= max => Ok(n),
        _ => Err(ApiError::invalid_field(
            "pageSize",
            "Invalid page size",
            format!("The field 'pageSize' must be from 1 to {max}"),
        )),
    }
}
