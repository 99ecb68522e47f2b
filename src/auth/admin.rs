//! The admin role for `/admin/...` routes. The bootstrap admin key comes from an
//! environment variable and/or a file named in config; only its SHA-256 is kept, and
//! presented keys are compared in constant time.

use std::path::Path;

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use futures_util::future::{ready, Either, LocalBoxFuture, Ready};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::auth::audit::{self, AdminRefusal};
use crate::config::{Auth, ConfigError};
use crate::error::ApiError;
use crate::state::AppState;

/// Hashes of the keys that carry the admin role.
#[derive(Debug, Default, Clone)]
pub struct AdminKeys {
    hashes: Vec<[u8; 32]>,
}

pub fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

impl AdminKeys {
    /// Reads the bootstrap key(s) named by `auth.admin_key_env` and `auth.admin_key_file`.
    pub fn from_config(auth: &Auth) -> Result<AdminKeys, ConfigError> {
        let mut keys = AdminKeys::default();
        if !auth.admin_key_env.is_empty() {
            if let Ok(key) = std::env::var(&auth.admin_key_env) {
                keys.add(key.trim(), "auth.admin_key_env")?;
            }
        }
        if auth.admin_key_file != Path::new("") {
            let text = std::fs::read_to_string(&auth.admin_key_file).map_err(|e| {
                ConfigError::new(
                    "auth.admin_key_file",
                    format!("cannot read {}: {e}", auth.admin_key_file.display()),
                )
            })?;
            keys.add(
                text.lines().next().unwrap_or("").trim(),
                "auth.admin_key_file",
            )?;
        }
        Ok(keys)
    }

    fn add(&mut self, key: &str, source: &str) -> Result<(), ConfigError> {
        if key.len() < 16 {
            return Err(ConfigError::new(
                source,
                "the admin key must be at least 16 characters",
            ));
        }
        self.hashes.push(sha256(key));
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// True if `presented` is an admin key (constant time in the key's content).
    pub fn accepts(&self, presented: &str) -> bool {
        let hash = sha256(presented);
        self.hashes
            .iter()
            .fold(false, |found, h| found | bool::from(h.ct_eq(&hash)))
    }
}

/// Extractor: the request carries the bootstrap admin key or an API key with the admin
/// role. 401 without a bearer token or with an unknown one, 403 for a user key, and 403
/// when no bootstrap key is configured and the token is not an API key. Every refusal is
/// counted and logged (`auth::audit::admin_failed`).
pub struct Admin {
    /// Who is acting, for the audit log: `bootstrap` or the admin API key's id.
    pub by: String,
}

impl FromRequest for Admin {
    type Error = ApiError;
    type Future =
        Either<Ready<Result<Admin, ApiError>>, LocalBoxFuture<'static, Result<Admin, ApiError>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(state) = req.app_data::<web::Data<AppState>>() else {
            return Either::Left(ready(Err(ApiError::internal(
                "authenticating an admin",
                "the application state is missing",
            ))));
        };
        let Some(token) = super::bearer(req) else {
            audit::admin_failed(state, req, None, AdminRefusal::MissingToken, None);
            return Either::Left(ready(Err(ApiError::Unauthorized(
                "Missing bearer token: send Authorization: Bearer <admin key>.".into(),
            ))));
        };
        if state.admin_keys.accepts(token) {
            return Either::Left(ready(Ok(Admin {
                by: "bootstrap".into(),
            })));
        }
        if !super::keys::looks_like_key(token) {
            return Either::Left(ready(Err(if state.admin_keys.is_empty() {
                audit::admin_failed(state, req, Some(token), AdminRefusal::NoAdminKey, None);
                ApiError::Forbidden(
                    "The admin API needs an admin API key; no bootstrap admin key is configured."
                        .into(),
                )
            } else {
                audit::admin_failed(state, req, Some(token), AdminRefusal::InvalidAdminKey, None);
                ApiError::Unauthorized("Invalid admin key.".into())
            })));
        }
        let (state, token, req) = (state.clone(), token.to_string(), req.clone());
        Either::Right(Box::pin(async move {
            let identity = match state.auth.keys.resolve(&token).await {
                Ok(identity) => identity,
                Err(e) => {
                    audit::admin_failed(
                        &state,
                        &req,
                        Some(&token),
                        AdminRefusal::InvalidToken,
                        None,
                    );
                    return Err(e);
                }
            };
            if identity.admin {
                Ok(Admin {
                    by: identity.key_id.clone().unwrap_or_default(),
                })
            } else {
                audit::admin_failed(
                    &state,
                    &req,
                    Some(&token),
                    AdminRefusal::NotAdmin,
                    identity.key_id.as_deref(),
                );
                Err(ApiError::Forbidden(
                    "This API key does not have the admin role.".into(),
                ))
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_configured_keys() {
        let mut keys = AdminKeys::default();
        keys.add("a-long-admin-key-123", "x").unwrap();
        assert!(keys.accepts("a-long-admin-key-123"));
        assert!(!keys.accepts("a-long-admin-key-124"));
        assert!(!keys.accepts(""));
    }

    #[test]
    fn short_keys_are_refused_naming_the_source() {
        let mut keys = AdminKeys::default();
        let err = keys.add("short", "auth.admin_key_file").unwrap_err();
        assert_eq!(err.key, "auth.admin_key_file");
    }

    #[test]
    fn key_file_first_line_is_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.key");
        std::fs::write(&path, "file-admin-key-0123456789\n").unwrap();
        let mut auth = crate::config::Settings::load_from(None, None, Vec::new())
            .unwrap()
            .auth;
        auth.admin_key_env = String::new();
        auth.admin_key_file = path;
        let keys = AdminKeys::from_config(&auth).unwrap();
        assert!(keys.accepts("file-admin-key-0123456789"));
    }
}
