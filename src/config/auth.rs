//! `[auth]`: the bootstrap admin key, API keys, OIDC and Globus.

use std::path::PathBuf;

use serde::Deserialize;

use super::{positive, ConfigError, Millis, Seconds};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    None,
    Required,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    pub mode: AuthMode,
    /// Environment variable holding the bootstrap admin key ("" = none).
    pub admin_key_env: String,
    /// File holding the bootstrap admin key ("" = none).
    pub admin_key_file: PathBuf,
    pub globus: Globus,
    pub oidc: Oidc,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Oidc {
    pub enabled: bool,
    pub jwks_url: String,
    pub issuer: String,
    pub audience: Vec<String>,
    pub username_claim: String,
    pub name_claim: String,
    pub groups_claim: String,
    pub org_claim: String,
    pub required_groups: Vec<String>,
    /// Checked positive only when OIDC is enabled.
    pub jwks_refresh_secs: Seconds<u64>,
    pub leeway_secs: Seconds<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Globus {
    pub enabled: bool,
    pub client_id: String,
    pub client_secret_env: String,
    pub auth_base: String,
    pub groups_base: String,
    pub globus_groups: Vec<String>,
    pub authorized_idp_domains: Vec<String>,
    pub authorized_groups_per_idp: std::collections::BTreeMap<String, Vec<String>>,
    pub globus_policies: Vec<String>,
    pub authorized_globus_service_usernames: Vec<String>,
    // `cache_secs` and `timeout_ms` are checked positive only when Globus is enabled.
    pub cache_secs: Seconds<u64>,
    pub failure_cache_secs: Seconds<u64>,
    pub timeout_ms: Millis<u64>,
}

/// `url` must be https://, or plain http:// on loopback.
fn https_or_loopback(key: &str, url: &str) -> Result<(), ConfigError> {
    if url.starts_with("https://")
        || url.starts_with("http://127.")
        || url.starts_with("http://localhost")
    {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            format!("{url:?} must be an https:// URL (plain http only on loopback)"),
        ))
    }
}

impl Auth {
    /// The OIDC and Globus tables (`auth.mode` against `server.bind` is checked with the
    /// server's settings).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.oidc.enabled {
            let o = &self.oidc;
            https_or_loopback("auth.oidc.jwks_url", &o.jwks_url)?;
            if o.issuer.trim().is_empty() {
                return Err(ConfigError::new(
                    "auth.oidc.issuer",
                    "is required when auth.oidc.enabled",
                ));
            }
            positive("auth.oidc.jwks_refresh_secs", o.jwks_refresh_secs.get())?;
        }
        if self.globus.enabled {
            let g = &self.globus;
            if g.client_id.trim().is_empty() {
                return Err(ConfigError::new(
                    "auth.globus.client_id",
                    "is required when auth.globus.enabled",
                ));
            }
            https_or_loopback("auth.globus.auth_base", &g.auth_base)?;
            https_or_loopback("auth.globus.groups_base", &g.groups_base)?;
            positive("auth.globus.cache_secs", g.cache_secs.get())?;
            positive("auth.globus.timeout_ms", g.timeout_ms.get())?;
        }
        Ok(())
    }
}
