//! The quota admin API (admin role): `GET /admin/quotas?limit=&after=` lists subjects
//! (live ones and those with an override) with usage and limits; `GET /admin/quota/{subject}`
//! shows one; `PUT /admin/quota/{subject}` sets its overrides (a JSON object of limit
//! fields, `null` = default); `POST /admin/quota/{subject}/reset` forgets its usage.
//! Subjects are written `user:<id>`, `org:<name>`, `model:<name>`. Changes apply at once
//! to the live state; in Redis mode also on every other replica (a message on
//! `{prefix}quota:changes`), and usage is the shared usage read from Redis.

use std::collections::BTreeSet;

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::admin::Admin;
use crate::error::ApiError;
use crate::quota::limits::{override_json, parse_override};
use crate::quota::math::Window;
use crate::quota::Subject;
use crate::state::AppState;
use crate::store::{now_ms, QuotaOverrideRow};

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

fn subject_of(path: &str) -> Result<Subject, ApiError> {
    Subject::parse(path).ok_or_else(|| {
        ApiError::invalid_param(
            "subject",
            format!("`{path}` is not a subject; write user:<id>, org:<name> or model:<name>."),
        )
    })
}

/// Redis mode: tells the other replicas (they reload the override or reset their state).
/// Redis down: logged; those replicas pick overrides up when their subscriber reconnects.
async fn notify(state: &AppState, op: &str, subject: &Subject, limits: Option<&QuotaOverrideRow>) {
    if let Some(redis) = state.quotas.redis() {
        if let Err(e) = redis.publish(op, subject, limits).await {
            slog::warn!(state.log, "quota change not sent to other replicas";
                "op" => op, "subject" => subject.key(), "error" => e);
        }
    }
}

/// One subject's limits (in force), override and usage. Live subjects report their
/// in-memory counters (which include what is not yet written); others the database's.
async fn describe(
    state: &AppState,
    subject: &Subject,
    stored: Option<QuotaOverrideRow>,
) -> Result<Value, ApiError> {
    let now = now_ms();
    let limits = state.quotas.defaults(subject.kind).with(stored.as_ref());
    let redis = state.quotas.redis();
    let live = state.quotas.get(subject);
    if let (Some(redis), Some(live)) = (redis, live.as_ref()) {
        // Push this replica's counts and read the shared totals back first.
        let _ = redis.sync(std::slice::from_ref(live)).await;
    }
    // Redis mode, a subject not live here: the shared counters as Redis has them.
    let shared = match (redis, &live) {
        (Some(redis), None) => redis.usage(subject).await.ok(),
        _ => None,
    };
    let source = match (redis, &live, &shared) {
        (Some(r), Some(_), _) if r.is_up() => "redis",
        (Some(_), None, Some(_)) => "redis",
        (_, Some(_), _) => "local",
        _ => "database",
    };
    let usage = match (live, shared) {
        (None, Some([minute, day, month])) => json!({
            "live": false,
            "source": source,
            "in_flight": 0,
            "active_batches": 0,
            "minute": {"requests": minute.requests, "tokens": minute.tokens},
            "day": {"requests": day.requests, "tokens": day.tokens},
            "month": {"requests": month.requests, "tokens": month.tokens},
        }),
        (Some(live), _) => {
            let s = live.snapshot(now);
            json!({
                "live": true,
                "source": source,
                "in_flight": s.in_flight,
                "active_batches": s.batches,
                "minute": {"requests": s.minute.requests, "tokens": s.minute.tokens},
                "day": {"requests": s.day.requests, "tokens": s.day.tokens},
                "month": {"requests": s.month.requests, "tokens": s.month.tokens},
            })
        }
        (None, None) => {
            let key = subject.key().to_string();
            let day = state
                .store
                .get_usage(key.clone(), "day".into(), Window::Day.start(now))
                .await
                .map_err(|e| ApiError::store("quota usage", e))?;
            let month = state
                .store
                .get_usage(key, "month".into(), Window::Month.start(now))
                .await
                .map_err(|e| ApiError::store("quota usage", e))?;
            json!({
                "live": false,
                "source": source,
                "in_flight": 0,
                "active_batches": 0,
                "day": {"requests": day.requests, "tokens": day.tokens},
                "month": {"requests": month.requests, "tokens": month.tokens},
            })
        }
    };
    Ok(json!({
        "subject": subject.key(),
        "kind": subject.kind,
        "limits": limits,
        "override": stored.as_ref().map(override_json),
        "usage": usage,
        "day_resets_in_ms": Window::Day.remaining_ms(now),
        "month_resets_in_ms": Window::Month.remaining_ms(now),
    }))
}

#[derive(Deserialize)]
pub struct Page {
    limit: Option<usize>,
    after: Option<String>,
}

/// `GET /admin/quotas?limit=&after=`: subjects in key order, `limit` per page (default
/// 100, at most 1000), starting after the subject `after`; `next` is the cursor.
pub async fn list(
    _: Admin,
    page: web::Query<Page>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // A bad query string is refused by the app's `QueryConfig` (400, naming the problem).
    let page = page.into_inner();
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::invalid_param(
            "limit",
            format!("`limit` must be between 1 and {MAX_PAGE}."),
        ));
    }
    let overrides = state
        .store
        .list_overrides()
        .await
        .map_err(|e| ApiError::store("quota overrides", e))?;
    let mut keys: BTreeSet<String> = overrides.iter().map(|o| o.subject.clone()).collect();
    keys.extend(
        state
            .quotas
            .live()
            .iter()
            .map(|s| s.subject.key().to_string()),
    );
    let after = page.after.unwrap_or_default();
    let selected: Vec<String> = keys
        .into_iter()
        .filter(|k| k.as_str() > after.as_str())
        .take(limit + 1)
        .collect();
    let more = selected.len() > limit;
    let mut data = Vec::with_capacity(limit);
    for key in selected.iter().take(limit) {
        let Some(subject) = Subject::parse(key) else {
            continue;
        };
        let stored = overrides.iter().find(|o| &o.subject == key).cloned();
        data.push(describe(&state, &subject, stored).await?);
    }
    let next = if more {
        selected.get(limit - 1).cloned()
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(json!({
        "object": "list",
        "data": data,
        "next": next,
    })))
}

/// `GET /admin/quota/{subject}`.
pub async fn get(
    _: Admin,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let subject = subject_of(&path)?;
    let stored = state
        .store
        .get_override(subject.key().to_string())
        .await
        .map_err(|e| ApiError::store("quota override", e))?;
    Ok(HttpResponse::Ok().json(describe(&state, &subject, stored).await?))
}

/// `PUT /admin/quota/{subject}`: replaces the subject's overrides. An object with no
/// non-null field removes the override (the defaults apply again).
pub async fn put(
    _: Admin,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let subject = subject_of(&path)?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::InvalidJson(format!("The body is not valid JSON: {e}")))?;
    let row = parse_override(&subject, &value, now_ms()).map_err(|(field, message)| {
        match crate::quota::limits::FIELDS
            .iter()
            .find(|f| **f == field.as_str())
        {
            Some(f) => ApiError::invalid_param(f, message),
            None => ApiError::invalid(message),
        }
    })?;
    let empty = row.rps.is_none()
        && row.burst.is_none()
        && row.max_in_flight.is_none()
        && row.tokens_per_minute.is_none()
        && row.daily_requests.is_none()
        && row.daily_tokens.is_none()
        && row.monthly_tokens.is_none()
        && row.max_batches.is_none();
    let stored = if empty {
        state
            .store
            .delete_override(subject.key().to_string())
            .await
            .map_err(|e| ApiError::store("quota override", e))?;
        None
    } else {
        state
            .store
            .put_override(row.clone())
            .await
            .map_err(|e| ApiError::store("quota override", e))?;
        Some(row)
    };
    state.quotas.apply_override(&subject, stored.as_ref());
    notify(&state, "override", &subject, stored.as_ref()).await;
    slog::info!(state.log, "quota override set"; "subject" => subject.key(), "removed" => empty);
    Ok(HttpResponse::Ok().json(describe(&state, &subject, stored).await?))
}

/// `POST /admin/quota/{subject}/reset`: forgets the subject's counted usage (stored and
/// live) and refills its bucket; the override stays.
pub async fn reset(
    _: Admin,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let subject = subject_of(&path)?;
    if let Some(live) = state.quotas.get(&subject) {
        live.reset(now_ms());
    }
    if let Some(redis) = state.quotas.redis() {
        if let Err(e) = redis.reset(&subject).await {
            slog::warn!(state.log, "shared quota counters not reset in redis";
                "subject" => subject.key(), "error" => e);
        }
    }
    notify(&state, "reset", &subject, None).await;
    let windows = state
        .store
        .reset_usage(subject.key().to_string())
        .await
        .map_err(|e| ApiError::store("quota reset", e))?;
    slog::info!(state.log, "quota usage reset"; "subject" => subject.key(), "windows" => windows);
    let stored = state
        .store
        .get_override(subject.key().to_string())
        .await
        .map_err(|e| ApiError::store("quota override", e))?;
    Ok(HttpResponse::Ok().json(describe(&state, &subject, stored).await?))
}
