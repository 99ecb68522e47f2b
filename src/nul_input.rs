//! Refusing a NUL byte in the request line. A `%00` in a path segment or a query parameter
//! is never a valid identifier here (ids, subjects, cluster names, paging cursors), and
//! PostgreSQL refuses text holding NUL, so it would reach the database only to fail as a
//! 500. One check for every route (`server::edges`): 400 in the OpenAI envelope.

use actix_web::dev::ServiceRequest;
use actix_web::HttpResponse;

use crate::error::ApiError;

/// A 400 for a request whose path or query holds an encoded NUL, else None.
pub fn refuse(req: &ServiceRequest) -> Option<HttpResponse> {
    let uri = req.uri();
    let in_path = uri.path().contains("%00");
    let in_query = uri.query().is_some_and(|q| q.contains("%00"));
    if !in_path && !in_query {
        return None;
    }
    let place = if in_path { "path" } else { "query" };
    // `server::edges` names the answer (`x-request-id`).
    Some(actix_web::ResponseError::error_response(
        &ApiError::invalid(format!(
        "The request {place} contains a NUL byte (%00), which no identifier or parameter may hold."
    )),
    ))
}
