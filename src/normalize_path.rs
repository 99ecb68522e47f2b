//! Path normalisation before routing: repeated slashes merged and trailing slashes
//! trimmed (`/v1//models/` is `/v1/models`), as actix-web's `NormalizePath` with
//! `TrailingSlash::Trim` does. That middleware runs a regex over every path; nearly every
//! path needs nothing, so this one looks at the bytes first and rewrites only the few
//! that need it. It runs in the server's innermost middleware (`server::edges`).

use actix_web::dev::ServiceRequest;
use actix_web::http::uri::{PathAndQuery, Uri};

/// The normalised form of `path`, or `None` when it is normal already.
pub fn normalized(path: &str) -> Option<String> {
    let b = path.as_bytes();
    let needs = (b.len() > 1 && b.ends_with(b"/")) || memchr::memmem::find(b, b"//").is_some();
    if !needs {
        return None;
    }
    let mut out = String::with_capacity(path.len());
    for c in path.trim_end_matches('/').chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    // A trailing slash was trimmed or a double one merged: `out` differs from `path`.
    Some(out)
}

/// Rewrites the request's path in place when [`normalized`] changes it (called by the
/// server's edge middleware, before routing).
pub fn normalize(req: &mut ServiceRequest) {
    if let Some(path) = normalized(req.path()) {
        let mut parts = req.head().uri.clone().into_parts();
        let path_and_query = match parts.path_and_query.as_ref().and_then(|pq| pq.query()) {
            Some(query) => format!("{path}?{query}"),
            None => path,
        };
        // A path that cannot be rebuilt is left as it came (routing then answers 404).
        if let Ok(pq) = PathAndQuery::try_from(path_and_query) {
            parts.path_and_query = Some(pq);
            if let Ok(uri) = Uri::from_parts(parts) {
                req.match_info_mut().get_mut().update(&uri);
                req.head_mut().uri = uri;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::normalized;

    #[test]
    fn only_paths_that_need_it_are_rewritten_as_actix_would() {
        for normal in [
            "/",
            "/v1/models",
            "/resource_server/v1/chat/completions",
            "",
        ] {
            assert_eq!(normalized(normal), None, "{normal}");
        }
        let cases = [
            ("/v1/models/", "/v1/models"),
            ("//v1///models", "/v1/models"),
            ("/v1//models//", "/v1/models"),
            ("///", "/"),
            ("//", "/"),
        ];
        for (path, want) in cases {
            assert_eq!(normalized(path).as_deref(), Some(want), "{path}");
        }
    }
}
