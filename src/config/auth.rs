//! `[auth]`: the bootstrap admin key, API keys, OIDC and Globus.

use std::path::PathBuf;

use serde::Deserialize;

use super::units::empty_is_none;
use super::{positive, ConfigError, Millis, Seconds, SecureUrl};

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
    /// Required when enabled ("" = none).
    #[serde(deserialize_with = "empty_is_none")]
    pub jwks_url: Option<SecureUrl>,
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
    pub auth_base: SecureUrl,
    pub groups_base: SecureUrl,
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

impl Auth {
    /// The OIDC and Globus tables (`auth.mode` against `server.bind` is checked with the
    /// server's settings).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.oidc.enabled {
            let o = &self.oidc;
            if o.jwks_url.is_none() {
                return Err(ConfigError::new(
                    "auth.oidc.jwks_url",
                    "is required when auth.oidc.enabled",
                ));
            }
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
            positive("auth.globus.cache_secs", g.cache_secs.get())?;
            positive("auth.globus.timeout_ms", g.timeout_ms.get())?;
        }
        Ok(())
    }
}
