//! `[routes]`: chat-shaped aliases and relayed routes.

use serde::Deserialize;

use super::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routes {
    #[serde(default)]
    pub chat_aliases: Vec<ChatAlias>,
    #[serde(default)]
    pub relayed: Vec<RelayedRoute>,
}

/// A model-addressed route that real servers have beyond the built-in ones (`/tokenize`,
/// `/v1/messages/count_tokens`, `/v1/audio/transcriptions`...): routed by the body's
/// `model` and relayed unchanged to the same path on the target. Paths not listed are
/// never forwarded (backends also have admin routes clients must not reach).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayedRoute {
    pub path: String,
    #[serde(default)]
    pub body: BodyKind,
}

/// How a relayed route's body names its model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyKind {
    /// A JSON object with a `model` member.
    #[default]
    Json,
    /// `multipart/form-data` with a `model` field (audio transcription).
    Multipart,
}

/// An extra chat-shaped route (the enterprise gateway's `/v1/text2sql`), relayed to the
/// chat endpoint of `models` (any model when empty).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatAlias {
    pub path: String,
    #[serde(default)]
    pub models: Vec<String>,
}

impl Routes {
    /// Aliases and relayed routes: literal paths, none a built-in route, under the
    /// gateway's own prefixes, or listed twice.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (i, alias) in self.chat_aliases.iter().enumerate() {
            let key = format!("routes.chat_aliases[{i}].path");
            if !alias.path.starts_with("/v1/") || alias.path.contains(['{', '}', ' ']) {
                return Err(ConfigError::new(
                    key,
                    format!("{:?} must be a literal path under /v1/", alias.path),
                ));
            }
            if crate::routes::BUILTIN_PATHS.contains(&alias.path.as_str()) {
                return Err(ConfigError::new(
                    key,
                    format!("{:?} is a built-in route", alias.path),
                ));
            }
        }
        let mut seen: Vec<&str> = self.chat_aliases.iter().map(|a| a.path.as_str()).collect();
        for (i, route) in self.relayed.iter().enumerate() {
            let key = format!("routes.relayed[{i}].path");
            let path = route.path.as_str();
            if !path.starts_with('/') || path.len() < 2 || path.contains(['{', '}', ' ', '?', '#'])
            {
                return Err(ConfigError::new(
                    key,
                    format!("{path:?} must be a literal path starting with /"),
                ));
            }
            if crate::routes::BUILTIN_PATHS.contains(&path) || seen.contains(&path) {
                return Err(ConfigError::new(
                    key,
                    format!("{path:?} is already a route (built-in, an alias or listed twice)"),
                ));
            }
            if let Some(own) = crate::routes::GATEWAY_PREFIXES
                .iter()
                .find(|p| path == **p || path.starts_with(&format!("{p}/")))
            {
                return Err(ConfigError::new(
                    key,
                    format!("{path:?} is under the gateway's own {own}"),
                ));
            }
            seen.push(path);
        }
        Ok(())
    }
}
