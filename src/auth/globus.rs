//! Globus Auth tokens: introspection (RFC 7662) with the gateway's confidential client,
//! then, when a group rule needs them (global, or any target's `allowed_globus_groups`), a
//! dependent token and the Groups API. Results are
//! cached by the token's SHA-256 (never the token itself) until `min(exp, cache_secs)`,
//! refusals for `failure_cache_secs`. Handlers read the cache directly; on a miss they ask
//! the `Introspector` actor, which keeps one call in flight per token however many requests
//! carry it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use serde::Deserialize;
use tokio::sync::oneshot;

use crate::auth::admin::sha256;
use crate::auth::identity::Identity;
use crate::auth::policy::{check_groups, identify, Introspection, Refusal, Rules};
use crate::config::Globus;
use crate::ttl_cache::TtlCache;

/// Most cached tokens; past it the cache evicts (bounded memory).
const CACHE_CAPACITY: usize = 100_000;
const GROUPS_RESOURCE_SERVER: &str = "groups.api.globus.org";
const BODY_LIMIT: usize = 4 * 1024 * 1024;

/// Why a token could not be turned into an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    Refused(Refusal),
    /// Globus could not be asked (down, timed out, or rejected the gateway's client).
    /// Not cached: the next request asks again.
    Unavailable(String),
}

type Outcome = Result<Arc<Identity>, AuthFailure>;

/// The identity cache, shared by every worker and the introspector.
pub struct IdentityCache {
    entries: TtlCache<[u8; 32], Outcome>,
}

impl Default for IdentityCache {
    fn default() -> Self {
        IdentityCache {
            entries: TtlCache::new(CACHE_CAPACITY),
        }
    }
}

impl IdentityCache {
    fn get(&self, key: &[u8; 32], now: Instant) -> Option<Outcome> {
        self.entries.get(key, now)
    }

    fn put(&self, key: [u8; 32], value: Outcome, ttl: Duration) {
        self.entries.insert(key, value, Instant::now() + ttl);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What the introspector needs to call Globus.
#[derive(Clone)]
pub struct GlobusClient {
    pub client_id: String,
    secret: String,
    pub auth_base: String,
    pub groups_base: String,
    pub timeout: Duration,
    pub policies: Vec<String>,
    pub cache_ttl: Duration,
    pub failure_ttl: Duration,
}

impl std::fmt::Debug for GlobusClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobusClient")
            .field("client_id", &self.client_id)
            .field("secret", &"***")
            .field("auth_base", &self.auth_base)
            .finish()
    }
}

impl GlobusClient {
    pub fn from_config(g: &Globus) -> Result<GlobusClient, crate::config::ConfigError> {
        let secret = std::env::var(&g.client_secret_env)
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                crate::config::ConfigError::new(
                    "auth.globus.client_secret_env",
                    format!("environment variable {} is not set", g.client_secret_env),
                )
            })?;
        Ok(GlobusClient {
            client_id: g.client_id.clone(),
            secret,
            auth_base: g.auth_base.as_str().trim_end_matches('/').to_string(),
            groups_base: g.groups_base.as_str().trim_end_matches('/').to_string(),
            timeout: g.timeout_ms.duration(),
            policies: g.globus_policies.clone(),
            cache_ttl: g.cache_secs.duration(),
            failure_ttl: g.failure_cache_secs.duration(),
        })
    }
}

/// Globus token checking as handlers use it.
pub struct GlobusAuth {
    cache: Arc<IdentityCache>,
    introspector: Addr<Introspector>,
    /// `gateway_introspection_cache_total{result}`.
    lookups: prometheus::IntCounterVec,
}

impl GlobusAuth {
    /// Starts the introspector actor (on the current arbiter).
    pub fn start(
        client: GlobusClient,
        rules: Rules,
        log: slog::Logger,
        lookups: prometheus::IntCounterVec,
    ) -> GlobusAuth {
        let cache = Arc::new(IdentityCache::default());
        let introspector = Introspector {
            client,
            rules,
            cache: Arc::clone(&cache),
            waiting: HashMap::new(),
            http: None,
            log,
        }
        .start();
        GlobusAuth {
            cache,
            introspector,
            lookups,
        }
    }

    pub fn cache(&self) -> &IdentityCache {
        &self.cache
    }

    pub async fn resolve(&self, token: &str) -> Outcome {
        let key = sha256(token);
        if let Some(hit) = self.cache.get(&key, Instant::now()) {
            self.lookups.with_label_values(&["hit"]).inc();
            return hit;
        }
        self.lookups.with_label_values(&["miss"]).inc();
        let receiver = self
            .introspector
            .send(Resolve {
                key,
                token: token.to_string(),
            })
            .await
            .map_err(|_| AuthFailure::Unavailable("introspector stopped".into()))?;
        receiver
            .await
            .map_err(|_| AuthFailure::Unavailable("introspection was dropped".into()))?
    }
}

/// The actor that talks to Globus, one call in flight per token.
pub struct Introspector {
    client: GlobusClient,
    rules: Rules,
    cache: Arc<IdentityCache>,
    waiting: HashMap<[u8; 32], Vec<oneshot::Sender<Outcome>>>,
    http: Option<awc::Client>,
    log: slog::Logger,
}

impl Actor for Introspector {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        self.http = Some(
            awc::Client::builder()
                .timeout(self.client.timeout)
                .disable_redirects()
                .finish(),
        );
    }
}

#[derive(Message)]
#[rtype(result = "oneshot::Receiver<Outcome>")]
struct Resolve {
    key: [u8; 32],
    token: String,
}

impl Handler<Resolve> for Introspector {
    type Result = MessageResult<Resolve>;

    fn handle(&mut self, msg: Resolve, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        // Another request asked first and it was answered meanwhile.
        if let Some(hit) = self.cache.get(&msg.key, Instant::now()) {
            let _ = tx.send(hit);
            return MessageResult(rx);
        }
        if let Some(waiters) = self.waiting.get_mut(&msg.key) {
            waiters.push(tx);
            return MessageResult(rx);
        }
        self.waiting.insert(msg.key, vec![tx]);
        let Some(http) = self.http.clone() else {
            return MessageResult(rx);
        };
        let call = check_token(http, self.client.clone(), self.rules.clone(), msg.token);
        let key = msg.key;
        ctx.spawn(call.into_actor(self).map(move |result, act, _| {
            let (outcome, ttl) = match result {
                Ok((identity, exp)) => {
                    let left = exp
                        .map(|exp| Duration::from_secs((exp - unix_now()).max(0) as u64))
                        .unwrap_or(act.client.cache_ttl);
                    (Ok(Arc::new(identity)), act.client.cache_ttl.min(left))
                }
                Err(AuthFailure::Refused(r)) => {
                    (Err(AuthFailure::Refused(r)), act.client.failure_ttl)
                }
                Err(AuthFailure::Unavailable(cause)) => {
                    slog::error!(act.log, "Globus Auth unavailable"; "error" => &cause);
                    (Err(AuthFailure::Unavailable(cause)), Duration::ZERO)
                }
            };
            if !ttl.is_zero() {
                act.cache.put(key, outcome.clone(), ttl);
            }
            for waiter in act.waiting.remove(&key).unwrap_or_default() {
                let _ = waiter.send(outcome.clone());
            }
        }));
        MessageResult(rx)
    }
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[derive(Deserialize)]
struct DependentToken {
    #[serde(default)]
    resource_server: String,
    #[serde(default)]
    access_token: String,
}

#[derive(Deserialize)]
struct Group {
    id: String,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> AuthFailure {
    AuthFailure::Unavailable(format!("{what}: {e}"))
}

/// Introspects the token, applies the identity rules, and (when a group rule needs them)
/// fetches the caller's groups and applies the group rules. Returns the identity and the
/// token's expiry.
async fn check_token(
    http: awc::Client,
    client: GlobusClient,
    rules: Rules,
    token: String,
) -> Result<(Identity, Option<i64>), AuthFailure> {
    let mut form: Vec<(&str, &str)> = vec![
        ("token", token.as_str()),
        ("include", "session_info,identity_set_detail"),
    ];
    let policies = client.policies.join(",");
    if !policies.is_empty() {
        form.push(("authentication_policies", policies.as_str()));
    }
    let mut res = http
        .post(format!("{}/v2/oauth2/token/introspect", client.auth_base))
        .basic_auth(&client.client_id, &client.secret)
        .send_form(&form)
        .await
        .map_err(|e| unavailable("introspection", e))?;
    if !res.status().is_success() {
        return Err(AuthFailure::Unavailable(format!(
            "introspection answered HTTP {}",
            res.status().as_u16()
        )));
    }
    let body = res
        .body()
        .limit(BODY_LIMIT)
        .await
        .map_err(|e| unavailable("introspection body", e))?;
    let introspection: Introspection =
        serde_json::from_slice(&body).map_err(|e| unavailable("introspection JSON", e))?;
    let mut identity =
        identify(&introspection, unix_now(), &rules).map_err(AuthFailure::Refused)?;

    if rules.needs_groups() {
        identity.groups = groups(&http, &client, &token).await?;
        check_groups(&identity, &rules).map_err(AuthFailure::Refused)?;
    }
    Ok((identity, introspection.exp))
}

/// The caller's group ids: a dependent token for the Groups API, then `my_groups`.
async fn groups(
    http: &awc::Client,
    client: &GlobusClient,
    token: &str,
) -> Result<Vec<String>, AuthFailure> {
    let mut res = http
        .post(format!("{}/v2/oauth2/token", client.auth_base))
        .basic_auth(&client.client_id, &client.secret)
        .send_form(&[
            ("grant_type", "urn:globus:auth:grant_type:dependent_token"),
            ("token", token),
        ])
        .await
        .map_err(|e| unavailable("dependent token", e))?;
    if !res.status().is_success() {
        return Err(AuthFailure::Unavailable(format!(
            "dependent token answered HTTP {}",
            res.status().as_u16()
        )));
    }
    let body = res
        .body()
        .limit(BODY_LIMIT)
        .await
        .map_err(|e| unavailable("dependent token body", e))?;
    let tokens: Vec<DependentToken> =
        serde_json::from_slice(&body).map_err(|e| unavailable("dependent token JSON", e))?;
    let groups_token = tokens
        .into_iter()
        .find(|t| t.resource_server == GROUPS_RESOURCE_SERVER && !t.access_token.is_empty())
        .ok_or_else(|| {
            AuthFailure::Unavailable(
                "no Groups API token among the dependent tokens (is the Groups scope a dependent scope of the gateway's scope?)".into(),
            )
        })?;
    let mut res = http
        .get(format!("{}/v2/groups/my_groups", client.groups_base))
        .bearer_auth(&groups_token.access_token)
        .send()
        .await
        .map_err(|e| unavailable("groups", e))?;
    if !res.status().is_success() {
        return Err(AuthFailure::Unavailable(format!(
            "groups answered HTTP {}",
            res.status().as_u16()
        )));
    }
    let body = res
        .body()
        .limit(BODY_LIMIT)
        .await
        .map_err(|e| unavailable("groups body", e))?;
    let groups: Vec<Group> =
        serde_json::from_slice(&body).map_err(|e| unavailable("groups JSON", e))?;
    Ok(groups.into_iter().map(|g| g.id).collect())
}
