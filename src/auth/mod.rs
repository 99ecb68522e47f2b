//! Who is calling: the `Caller` extractor (Globus Auth introspection with FIRST's policy
//! rules, or anonymous when authentication is off) and the admin role for `/admin/...`.

pub mod admin;
pub mod audit;
pub mod caller;
pub mod globus;
pub mod identity;
pub mod keys;
pub mod oidc;
pub mod policy;

use actix_web::http::header::AUTHORIZATION;
use actix_web::HttpRequest;

/// The bearer token of a request, if it has a well-formed `Authorization: Bearer <token>`.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}
