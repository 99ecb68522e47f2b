//! The admin API (admin role only): `GET /admin/backends` lists every target with what an
//! operator needs and a user must not see (base URLs, fixture extras); `GET /admin/usage`
//! aggregates the request log; `POST /admin/reload` re-reads configuration and fixtures
//! (like SIGHUP).

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::auth::admin::Admin;
use crate::error::ApiError;
use crate::routes::catalog::model_status;
use crate::state::AppState;
use crate::store::{now_ms, BucketUsage, ModelUsage, UsageBucket, UsageFilter};

/// `GET /admin/backends`: every target (`data`) with its live state and what only an
/// operator may see, and every model (`models`) with its status and targets.
pub async fn backends(_: Admin, state: web::Data<AppState>) -> HttpResponse {
    let directory = state.directory.load();
    let targets: Vec<Value> = directory
        .targets
        .iter()
        .map(|t| {
            let ewma = t.ewma_ttfb_us();
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
                "scheduler": t.sched().name(),
                "maintenance": t.in_maintenance(),
                "in_flight": t.in_flight(),
                "ewma_ttfb_ms": (ewma > 0).then(|| ewma as f64 / 1000.0),
                "requests": t.requests_total(),
                "failures": t.failures_total(),
                "last_error": t.last_error(),
                "extra": t.spec.extra,
            })
        })
        .collect();
    let models: Vec<Value> = directory
        .model_order
        .iter()
        .filter_map(|name| directory.model(name))
        .map(|m| {
            json!({
                "id": m.spec.name,
                "status": model_status(m),
                "targets": m.targets.iter().map(|t| t.slug()).collect::<Vec<_>>(),
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({"object": "list", "data": targets, "models": models}))
}

/// `GET /admin/usage?user=&org=&model=&since=&until=&bucket=`: the request log aggregated,
/// totals and per model. `since` (inclusive) and `until` (exclusive) are RFC 3339 or unix
/// seconds. With `bucket=minute|hour|day` the answer adds `series`, one entry per bucket
/// from `since` to `until` (empty buckets included), and the window defaults to the last
/// hour, day or 30 days; the database groups the rows, one query for the whole answer.
pub async fn usage(
    _: Admin,
    params: web::Query<UsageParams>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // A bad query string is refused by the app's `QueryConfig` (400, naming the problem).
    let params = params.into_inner();
    let bucket = match non_empty(params.bucket) {
        None => None,
        Some(b) => Some(UsageBucket::parse(&b).ok_or_else(|| {
            ApiError::invalid_param("bucket", "`bucket` must be minute, hour or day.")
        })?),
    };
    let mut since = time_param("since", params.since.as_deref())?;
    let mut until = time_param("until", params.until.as_deref())?;
    if let Some(bucket) = bucket {
        (since, until) = bucket_window(bucket, since, until, now_ms())?;
    }
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
    let (models, series) = match bucket {
        None => {
            let models = state
                .store
                .usage_by_model(filter.clone())
                .await
                .map_err(|e| ApiError::store("the usage query", e))?;
            (models, None)
        }
        Some(bucket) => {
            let rows = state
                .store
                .usage_series(filter.clone(), bucket)
                .await
                .map_err(|e| ApiError::store("the usage query", e))?;
            let (since, until) = (since.unwrap_or(0), until.unwrap_or(0));
            (
                per_model(&rows),
                Some(dense_series(&rows, bucket, since, until)),
            )
        }
    };
    let mut totals = ModelUsage::default();
    for m in &models {
        totals.add(m);
    }
    let mut body = json!({
        "object": "usage",
        "filters": {
            "user": filter.user,
            "org": filter.org,
            "model": filter.model,
            "since": millis_to_rfc3339(filter.since),
            "until": millis_to_rfc3339(filter.until),
        },
        "totals": usage_json(&totals),
        "models": models,
    });
    if let (Some(bucket), Some(series)) = (bucket, series) {
        body["bucket"] = json!(bucket.name());
        body["series"] = series;
    }
    Ok(HttpResponse::Ok().json(body))
}

/// Most buckets one answer may hold (a month of hours fits; a month of minutes does not).
const MAX_BUCKETS: i64 = 2000;

/// The window of a bucketed report: `until` defaults to the end of the current bucket,
/// `since` to `until` less the bucket's default span; both are floored to bucket starts.
fn bucket_window(
    bucket: UsageBucket,
    since: Option<i64>,
    until: Option<i64>,
    now: i64,
) -> Result<(Option<i64>, Option<i64>), ApiError> {
    let ms = bucket.millis();
    let floor = |t: i64| t.div_euclid(ms) * ms;
    let until = until.map(|u| floor(u + ms - 1)).unwrap_or(floor(now) + ms);
    let since = since.map(floor).unwrap_or(until - bucket.default_span());
    if since < 0 {
        return Err(ApiError::invalid_param(
            "since",
            "`since` must not be before 1970 in a bucketed report.",
        ));
    }
    if until > since && (until - since) / ms > MAX_BUCKETS {
        return Err(ApiError::invalid_param(
            "bucket",
            format!(
                "That window holds more than {MAX_BUCKETS} {}s; pick a wider bucket or a \
                 shorter window.",
                bucket.name()
            ),
        ));
    }
    Ok((Some(since), Some(until)))
}

fn usage_json(u: &ModelUsage) -> Value {
    json!({
        "requests": u.requests,
        "errors": u.errors,
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    })
}

fn millis_to_rfc3339(ms: Option<i64>) -> Option<String> {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// The series' rows summed per model, by model name.
fn per_model(rows: &[BucketUsage]) -> Vec<ModelUsage> {
    let mut by_model: BTreeMap<&str, ModelUsage> = BTreeMap::new();
    for r in rows {
        let u = &r.usage;
        by_model
            .entry(&u.model)
            .or_insert_with(|| ModelUsage {
                model: u.model.clone(),
                ..ModelUsage::default()
            })
            .add(u);
    }
    by_model.into_values().collect()
}

/// One entry per bucket in `[since, until)`, in time order, empty ones included: the
/// bucket's totals (`start` in unix seconds) and its per-model split.
fn dense_series(rows: &[BucketUsage], bucket: UsageBucket, since: i64, until: i64) -> Value {
    let ms = bucket.millis();
    let mut rows = rows.iter().peekable();
    let mut out = Vec::new();
    let mut start = since;
    while start < until {
        let mut totals = ModelUsage::default();
        let mut models = Map::new();
        while let Some(r) = rows.next_if(|r| r.start < start + ms) {
            if r.start < start {
                continue;
            }
            let u = &r.usage;
            totals.add(u);
            models.insert(
                u.model.clone(),
                json!({"requests": u.requests, "errors": u.errors, "total_tokens": u.total_tokens}),
            );
        }
        let mut entry = usage_json(&totals);
        entry["start"] = json!(start / 1000);
        entry["models"] = Value::Object(models);
        out.push(entry);
        start += ms;
    }
    Value::Array(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageParams {
    user: Option<String>,
    org: Option<String>,
    model: Option<String>,
    since: Option<String>,
    until: Option<String>,
    bucket: Option<String>,
}

/// An empty query parameter (`?user=`) is no filter.
pub(crate) fn non_empty(v: Option<String>) -> Option<String> {
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
pub async fn reload(_: Admin, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    match state.reloader.reload().await {
        Ok(report) => Ok(HttpResponse::Ok().json(json!({"status": "reloaded", "report": report}))),
        Err(e @ crate::reload::ReloadError::Gateway) => Err(ApiError::internal("reload", e)),
        Err(e) => Err(ApiError::invalid(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(start: i64, model: &str, requests: i64) -> BucketUsage {
        BucketUsage {
            start,
            usage: ModelUsage {
                model: model.into(),
                requests,
                errors: 1,
                total_tokens: 10 * requests,
                ..ModelUsage::default()
            },
        }
    }

    #[test]
    fn bucket_windows_default_to_the_last_span_and_floor_to_bucket_starts() {
        let now = 1_700_000_123_456; // 2023-11-14T22:15:23.456Z
        let (s, u) = bucket_window(UsageBucket::Minute, None, None, now).unwrap();
        assert_eq!(u, Some(1_700_000_160_000)); // end of the current minute
        assert_eq!(s, Some(1_700_000_160_000 - 3_600_000));
        let (s, u) = bucket_window(UsageBucket::Day, None, None, now).unwrap();
        assert_eq!((u.unwrap() % 86_400_000, s.unwrap() % 86_400_000), (0, 0));
        assert_eq!(u.unwrap() - s.unwrap(), 30 * 86_400_000);
        // An explicit window is widened to whole buckets.
        let (s, u) =
            bucket_window(UsageBucket::Hour, Some(3_600_001), Some(7_200_001), now).unwrap();
        assert_eq!((s, u), (Some(3_600_000), Some(10_800_000)));
        let err = bucket_window(UsageBucket::Minute, Some(0), Some(now), now).unwrap_err();
        assert!(
            err.body().contains("\"param\":\"bucket\""),
            "{}",
            err.body()
        );
    }

    #[test]
    fn series_are_dense_and_split_per_model() {
        let rows = [row(0, "a", 2), row(0, "b", 1), row(120_000, "a", 5)];
        let series = dense_series(&rows, UsageBucket::Minute, 0, 180_000);
        let series = series.as_array().unwrap();
        assert_eq!(series.len(), 3);
        assert_eq!(series[0]["start"], 0);
        assert_eq!(series[0]["requests"], 3);
        assert_eq!(series[0]["errors"], 2);
        assert_eq!(series[0]["models"]["b"]["requests"], 1);
        assert_eq!(series[1]["requests"], 0);
        assert_eq!(series[1]["models"], json!({}));
        assert_eq!(series[2]["start"], 120);
        assert_eq!(series[2]["total_tokens"], 50);
        let models = per_model(&rows);
        assert_eq!(models.len(), 2);
        assert_eq!((models[0].model.as_str(), models[0].requests), ("a", 7));
        assert_eq!(models[1].requests, 1);
    }

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
