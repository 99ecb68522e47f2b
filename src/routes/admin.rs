//! The admin API (admin role only): `GET /admin/backends` lists every target with what an
//! operator needs and a user must not see (base URLs, fixture extras); `GET /admin/usage`
//! aggregates the request log; `POST /admin/reload` re-reads configuration and fixtures
//! (like SIGHUP).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::admin::Admin;
use crate::error::ApiError;
use crate::routes::inference::{error_response, request_id};
use crate::state::AppState;
use crate::store::{ModelUsage, UsageFilter};

pub async fn backends(_: Admin, state: web::Data<AppState>) -> HttpResponse {
    let directory = state.directory.load();
    let targets: Vec<Value> = directory
        .targets
        .iter()
        .map(|t| {
            json!({
                "id": t.slug(),
                "cluster": t.spec.cluster,
                "framework": t.spec.framework,
                "model": t.spec.model,
                "base_url": t.spec.base_url,
                "api_key_env_name": t.spec.api_key_env,
                "api_key_set": t.api_key.is_some(),
                "health": t.health().name(),
                "breaker": t.breaker().name(),
                "in_flight": t.in_flight(),
                "extra": t.spec.extra,
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({"object": "list", "data": targets}))
}

/// `GET /admin/usage?user=&org=&model=&since=&until=`: the request log aggregated, totals
/// and per model. `since` (inclusive) and `until` (exclusive) are RFC 3339 or unix seconds.
pub async fn usage(
    _: Admin,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let params = web::Query::<UsageParams>::from_query(req.query_string())
        .map_err(|e| ApiError::invalid(format!("Invalid query string: {e}")))?
        .into_inner();
    let since = time_param("since", params.since.as_deref())?;
    let until = time_param("until", params.until.as_deref())?;
    if let (Some(s), Some(u)) = (since, until) {
        if u < s {
            return Err(ApiError::invalid_param(
                "until",
                "`until` must not be before `since`.",
            ));
        }
    }
    let filter = UsageFilter {
        user: non_empty(params.user),
        org: non_empty(params.org),
        model: non_empty(params.model),
        since,
        until,
    };
    let models = state
        .store
        .usage_by_model(filter.clone())
        .await
        .map_err(|e| ApiError::store("the usage query", e))?;
    let mut totals = ModelUsage::default();
    for m in &models {
        totals.requests += m.requests;
        totals.errors += m.errors;
        totals.prompt_tokens += m.prompt_tokens;
        totals.completion_tokens += m.completion_tokens;
        totals.total_tokens += m.total_tokens;
    }
    let millis_to_rfc3339 = |ms: Option<i64>| {
        ms.and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    };
    Ok(HttpResponse::Ok().json(json!({
        "object": "usage",
        "filters": {
            "user": filter.user,
            "org": filter.org,
            "model": filter.model,
            "since": millis_to_rfc3339(filter.since),
            "until": millis_to_rfc3339(filter.until),
        },
        "totals": {
            "requests": totals.requests,
            "errors": totals.errors,
            "prompt_tokens": totals.prompt_tokens,
            "completion_tokens": totals.completion_tokens,
            "total_tokens": totals.total_tokens,
        },
        "models": models,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageParams {
    user: Option<String>,
    org: Option<String>,
    model: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

/// RFC 3339 or unix seconds → unix milliseconds; a bad value is a 400 naming `param`.
fn time_param(param: &'static str, value: Option<&str>) -> Result<Option<i64>, ApiError> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if let Ok(secs) = value.parse::<i64>() {
        if let Some(ms) = secs
            .checked_mul(1000)
            .filter(|ms| chrono::DateTime::from_timestamp_millis(*ms).is_some())
        {
            return Ok(Some(ms));
        }
    } else if let Ok(t) = chrono::DateTime::parse_from_rfc3339(value) {
        return Ok(Some(t.timestamp_millis()));
    }
    let shown: String = value.chars().take(64).collect();
    Err(ApiError::invalid_param(
        param,
        format!(
            "`{param}` must be an RFC 3339 time (2026-11-23T00:00:00Z) or unix seconds; \
             got {shown:?}."
        ),
    ))
}

/// Applies new configuration and fixtures; 400 (naming the key or file) when they are
/// invalid, and the gateway keeps running on the old ones.
pub async fn reload(
    _: Admin,
    req: actix_web::HttpRequest,
    state: web::Data<AppState>,
) -> HttpResponse {
    match state.reloader.reload().await {
        Ok(report) => HttpResponse::Ok().json(json!({"status": "reloaded", "report": report})),
        Err(e @ crate::reload::ReloadError::Gateway) => {
            error_response(&ApiError::internal("reload", e), &request_id(&req))
        }
        Err(e) => error_response(&ApiError::invalid(e.to_string()), &request_id(&req)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_unix_seconds() {
        assert_eq!(time_param("since", None).unwrap(), None);
        assert_eq!(time_param("since", Some("")).unwrap(), None);
        assert_eq!(
            time_param("since", Some("1700000000")).unwrap(),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            time_param("since", Some("2023-11-14T22:13:20Z")).unwrap(),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            time_param("until", Some("2023-11-14T23:13:20+01:00")).unwrap(),
            Some(1_700_000_000_000)
        );
        for bad in ["yesterday", "2023-11-14", "99999999999999999"] {
            let err = time_param("until", Some(bad)).unwrap_err();
            assert_eq!(err.code(), "invalid_request", "{bad}");
            assert!(
                err.body().contains("\"param\":\"until\""),
                "{bad}: {}",
                err.body()
            );
        }
    }
}
