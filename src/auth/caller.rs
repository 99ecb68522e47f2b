//! The `Caller` extractor: every route but `/health` and `/metrics` takes one. With
//! `auth.mode = "none"` the caller is anonymous; with `"required"` the bearer token must
//! resolve to an identity (401 otherwise, 403 when a rule refuses it). Every refusal is
//! counted and logged as an audit event (`auth::audit`).

use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::{ready, Either, LocalBoxFuture, Ready};

use crate::auth::audit;
use crate::auth::globus::{AuthFailure, GlobusAuth};
use crate::auth::identity::Identity;
use crate::auth::keys::{looks_like_key, ApiKeys};
use crate::auth::oidc::{looks_like_jwt, OidcAuth};
use crate::auth::policy::Refusal;
use crate::config::AuthMode;
use crate::error::ApiError;
use crate::state::AppState;

/// How tokens are checked, built once at start.
pub struct Authenticator {
    pub mode: AuthMode,
    pub anonymous: Arc<Identity>,
    pub globus: Option<GlobusAuth>,
    pub oidc: Option<OidcAuth>,
    pub keys: ApiKeys,
}

fn refused(refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::Unauthorized(m) => ApiError::Unauthorized(m),
        Refusal::Forbidden(m) => ApiError::Forbidden(m),
    }
}

impl Authenticator {
    /// Resolves a bearer token: gateway API keys (`igw_...`) from the store, JWT-shaped
    /// tokens by OIDC (when enabled), the rest by Globus introspection (when enabled).
    pub async fn resolve(&self, token: &str) -> Result<Arc<Identity>, ApiError> {
        if looks_like_key(token) {
            return self.keys.resolve(token).await;
        }
        if let Some(oidc) = &self.oidc {
            if looks_like_jwt(token) || self.globus.is_none() {
                return oidc
                    .verify(token)
                    .await
                    .map(|(identity, _)| Arc::new(identity))
                    .map_err(refused);
            }
        }
        let Some(globus) = &self.globus else {
            return Err(ApiError::Unauthorized("Invalid bearer token.".into()));
        };
        globus
            .resolve(token)
            .await
            .map_err(|failure| match failure {
                AuthFailure::Refused(r) => refused(r),
                AuthFailure::Unavailable(_) => ApiError::AuthUnavailable,
            })
    }
}

/// The authenticated caller of a request.
pub struct Caller(pub Arc<Identity>);

impl FromRequest for Caller {
    type Error = ApiError;
    type Future =
        Either<Ready<Result<Caller, ApiError>>, LocalBoxFuture<'static, Result<Caller, ApiError>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(state) = req.app_data::<web::Data<AppState>>() else {
            return Either::Left(ready(Err(ApiError::internal(
                "authenticating a caller",
                "the application state is missing",
            ))));
        };
        if state.auth.mode == AuthMode::None {
            return Either::Left(ready(Ok(Caller(Arc::clone(&state.auth.anonymous)))));
        }
        let token = match super::bearer(req) {
            Some(token) => token.to_string(),
            None => {
                let message = if req.headers().contains_key(AUTHORIZATION) {
                    "Malformed Authorization header: send `Authorization: Bearer <token>`."
                } else {
                    "Missing bearer token: send `Authorization: Bearer <token>`."
                };
                let error = ApiError::Unauthorized(message.into());
                state.metrics.auth_failure(&error);
                audit::auth_failed(state, req, None, &error);
                return Either::Left(ready(Err(error)));
            }
        };
        let (state, req) = (state.clone(), req.clone());
        Either::Right(Box::pin(async move {
            let resolved = state.auth.resolve(&token).await;
            if let Err(e) = &resolved {
                state.metrics.auth_failure(e);
                audit::auth_failed(&state, &req, Some(&token), e);
            }
            resolved.map(Caller)
        }))
    }
}
