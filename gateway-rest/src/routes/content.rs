//! A message's content as both surfaces take it: a string, or OpenAI's array of parts (text,
//! and images by URL or data URL: `{"type": "image_url", "image_url": {"url", "detail"?}}`,
//! `imageUrl` on the sessions API). Text-only parts are joined into the text; a message with an
//! image reaches the core as its parts, which the core checks.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::proto;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum ContentInput {
    Text(String),
    Parts(Vec<PartInput>),
}

#[derive(Debug, Deserialize)]
pub(crate) struct PartInput {
    #[serde(rename = "type", default)]
    kind: String,
    text: Option<String>,
    #[serde(alias = "imageUrl")]
    image_url: Option<ImageUrlInput>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ImageUrlInput {
    #[serde(default)]
    url: String,
    detail: Option<String>,
    /// Any other field: refused, named.
    #[serde(flatten)]
    unknown: BTreeMap<String, Value>,
}

fn invalid(field: String, details: String) -> ApiError {
    ApiError::invalid_field(field, "Invalid message part", details)
}

/// The message's text, and its parts when it has an image (empty otherwise). `field` names the
/// content (`messages[0].content`) and `image_url` the image field as the surface spells it.
pub(crate) fn content(
    input: Option<ContentInput>,
    field: &str,
    image_url: &str,
) -> Result<(String, Vec<proto::ContentPart>), ApiError> {
    let parts = match input {
        None => return Ok((String::new(), Vec::new())),
        Some(ContentInput::Text(text)) => return Ok((text, Vec::new())),
        Some(ContentInput::Parts(parts)) => parts,
    };
    let mut text = String::new();
    let mut out = Vec::with_capacity(parts.len());
    for (p, part) in parts.into_iter().enumerate() {
        let at = format!("{field}[{p}]");
        match part.kind.as_str() {
            "text" => {
                let piece = part.text.ok_or_else(|| {
                    invalid(
                        format!("{at}.text"),
                        format!("The field '{at}.text' is required on a text part"),
                    )
                })?;
                text.push_str(&piece);
                out.push(proto::ContentPart {
                    r#type: "text".into(),
                    text: piece,
                    ..Default::default()
                });
            }
            "image_url" => {
                let Some(image) = part.image_url else {
                    return Err(invalid(
                        format!("{at}.{image_url}"),
                        format!(
                            "The field '{at}.{image_url}' is required on an image part: {{\"url\": \"https://... or data:image/png;base64,...\", \"detail\"?: \"auto|low|high\"}}"
                        ),
                    ));
                };
                if let Some(name) = image.unknown.keys().next() {
                    return Err(invalid(
                        format!("{at}.{image_url}.{name}"),
                        format!(
                            "The field '{at}.{image_url}.{name}' is refused: an image has 'url' and 'detail'"
                        ),
                    ));
                }
                out.push(proto::ContentPart {
                    r#type: "image_url".into(),
                    image_url: image.url,
                    detail: image.detail.unwrap_or_default(),
                    ..Default::default()
                });
            }
            other => {
                return Err(invalid(
                    at.clone(),
                    format!(
                        "The field '{at}' is a '{}' part; a part is text ({{\"type\": \"text\", \"text\"}}) or an image ({{\"type\": \"image_url\", \"{image_url}\": {{\"url\"}}}}): audio and files are not supported by this gateway",
                        other.chars().take(40).collect::<String>()
                    ),
                ));
            }
        }
    }
    let has_image = out.iter().any(|p| p.r#type == "image_url");
    Ok((text, if has_image { out } else { Vec::new() }))
}
