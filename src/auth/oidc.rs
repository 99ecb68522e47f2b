//! OIDC/JWT bearer tokens, for sites without Globus: signatures checked against the keys
//! of a JWKS URL, plus issuer, audience and expiry. Keys are fetched at start, refreshed
//! periodically and when a token names an unknown key id (each unknown id at most every
//! 10 s). Handlers verify on their own thread; only a key refresh goes through the
//! `JwksActor`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use arc_swap::ArcSwap;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::auth::identity::{Identity, Method};
use crate::auth::policy::Refusal;
use crate::config::Oidc;

const MIN_REFRESH_GAP: Duration = Duration::from_secs(10);
const JWKS_BODY_LIMIT: usize = 1024 * 1024;

struct Key {
    key: DecodingKey,
    algorithm: Algorithm,
}

/// The verifier handlers use.
pub struct OidcAuth {
    keys: Arc<ArcSwap<HashMap<String, Arc<Key>>>>,
    jwks: Addr<JwksActor>,
    settings: Oidc,
}

/// Whether a bearer token looks like a JWT (three base64url parts).
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
    };
    ok(parts.next()) && ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

impl OidcAuth {
    pub fn start(settings: Oidc, log: slog::Logger) -> OidcAuth {
        let keys = Arc::new(ArcSwap::from_pointee(HashMap::new()));
        let jwks = JwksActor {
            // Set whenever OIDC is on (`Settings::validate`).
            url: settings
                .jwks_url
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            refresh_every: settings.jwks_refresh_secs.duration(),
            keys: Arc::clone(&keys),
            forced: HashMap::new(),
            waiting: Vec::new(),
            waiting_next: Vec::new(),
            fetching: false,
            http: None,
            log,
        }
        .start();
        OidcAuth {
            keys,
            jwks,
            settings,
        }
    }

    /// Verifies the token and returns who it stands for, and when it expires.
    pub async fn verify(&self, token: &str) -> Result<(Identity, Option<i64>), Refusal> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Refusal::Unauthorized("Malformed token.".into()))?;
        let kid = header.kid.unwrap_or_default();
        let key = match self.keys.load().get(&kid).cloned() {
            Some(key) => key,
            None => {
                // A key rotated in since the last fetch: refresh once and look again.
                if let Ok(done) = self.jwks.send(Refresh { kid: kid.clone() }).await {
                    let _ = done.await;
                }
                self.keys.load().get(&kid).cloned().ok_or_else(|| {
                    Refusal::Unauthorized("Token signed by an unknown key.".into())
                })?
            }
        };
        if key.algorithm != header.alg {
            return Err(Refusal::Unauthorized(
                "Token algorithm does not match its key.".into(),
            ));
        }
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = self.settings.leeway_secs.get();
        validation.set_issuer(&[self.settings.issuer.as_str()]);
        if self.settings.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.settings.audience);
        }
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        let data = jsonwebtoken::decode::<Value>(token, &key.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            Refusal::Unauthorized(match e.kind() {
                ErrorKind::ExpiredSignature => "Access token expired.".into(),
                ErrorKind::InvalidIssuer => "Token issued by an untrusted issuer.".into(),
                ErrorKind::InvalidAudience => "Token is not meant for this gateway.".into(),
                ErrorKind::InvalidSignature => "Token signature is invalid.".into(),
                _ => format!("Invalid token ({e})."),
            })
        })?;
        let identity = self.identity(&data.claims)?;
        Ok((identity, data.claims.get("exp").and_then(Value::as_i64)))
    }

    fn identity(&self, claims: &Value) -> Result<Identity, Refusal> {
        let s = &self.settings;
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_string);
        let sub = text("sub").unwrap_or_default();
        let username = text(&s.username_claim).unwrap_or_else(|| sub.clone());
        let groups: Vec<String> = match claims.get(&s.groups_claim) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            Some(Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        };
        if !s.required_groups.is_empty() && !s.required_groups.iter().any(|g| groups.contains(g)) {
            return Err(Refusal::Forbidden(
                "auth.oidc.required_groups: you are not a member of any group authorised to use this gateway."
                    .into(),
            ));
        }
        if username.is_empty() || username.contains(['<', '>']) {
            return Err(Refusal::Forbidden(
                "The identity's username is empty or invalid.".into(),
            ));
        }
        Ok(Identity {
            id: sub,
            name: text(&s.name_claim).unwrap_or_else(|| username.clone()),
            username,
            org: (!s.org_claim.is_empty())
                .then(|| text(&s.org_claim))
                .flatten(),
            groups,
            idp_id: s.issuer.clone(),
            idp_name: s.issuer.clone(),
            method: Method::Oidc,
            admin: false,
            models: None,
            key_id: None,
        })
    }
}

/// Fetches and publishes the JWKS.
pub struct JwksActor {
    url: String,
    refresh_every: Duration,
    keys: Arc<ArcSwap<HashMap<String, Arc<Key>>>>,
    /// When each unknown key id last forced a refresh (rate limited per id, bounded).
    forced: HashMap<String, Instant>,
    /// Answered when the fetch in flight ends.
    waiting: Vec<oneshot::Sender<()>>,
    /// Answered after one more fetch: they asked while a fetch was already in flight,
    /// whose answer may predate the key they need.
    waiting_next: Vec<oneshot::Sender<()>>,
    fetching: bool,
    http: Option<awc::Client>,
    log: slog::Logger,
}

impl JwksActor {
    fn fetch(&mut self, ctx: &mut Context<Self>) {
        if self.fetching {
            return;
        }
        let Some(http) = self.http.clone() else {
            return;
        };
        self.fetching = true;
        let url = self.url.clone();
        let call = async move {
            let mut res = http.get(&url).send().await.map_err(|e| e.to_string())?;
            if !res.status().is_success() {
                return Err(format!("HTTP {}", res.status().as_u16()));
            }
            let body = res
                .body()
                .limit(JWKS_BODY_LIMIT)
                .await
                .map_err(|e| e.to_string())?;
            serde_json::from_slice::<JwkSet>(&body).map_err(|e| e.to_string())
        };
        ctx.spawn(call.into_actor(self).map(|result, act, ctx| {
            act.fetching = false;
            match result {
                Ok(set) => {
                    let mut keys = HashMap::new();
                    for jwk in &set.keys {
                        let algorithm = jwk
                            .common
                            .key_algorithm
                            .and_then(|a| a.to_string().parse::<Algorithm>().ok())
                            .or(match &jwk.algorithm {
                                jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => {
                                    Some(Algorithm::EdDSA)
                                }
                                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => {
                                    Some(Algorithm::ES256)
                                }
                                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => {
                                    Some(Algorithm::RS256)
                                }
                                _ => None,
                            });
                        match (algorithm, DecodingKey::from_jwk(jwk)) {
                            (Some(algorithm), Ok(key)) => {
                                let kid = jwk.common.key_id.clone().unwrap_or_default();
                                keys.insert(kid, Arc::new(Key { key, algorithm }));
                            }
                            _ => slog::warn!(act.log, "JWKS key skipped (unsupported)";
                                "kid" => jwk.common.key_id.clone().unwrap_or_default()),
                        }
                    }
                    act.keys.store(Arc::new(keys));
                }
                Err(error) => {
                    slog::error!(act.log, "JWKS fetch failed"; "url" => &act.url, "error" => error)
                }
            }
            for waiter in act.waiting.drain(..) {
                let _ = waiter.send(());
            }
            if !act.waiting_next.is_empty() {
                act.waiting = std::mem::take(&mut act.waiting_next);
                act.fetch(ctx);
            }
        }));
    }
}

impl Actor for JwksActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.http = Some(
            awc::Client::builder()
                .timeout(Duration::from_secs(10))
                .finish(),
        );
        self.fetch(ctx);
        ctx.run_interval(self.refresh_every, |act, ctx| act.fetch(ctx));
    }
}

/// Refresh the keys now, because a token named the unknown key id `kid` (unless that id
/// forced a refresh in the last 10 s); answers when done.
#[derive(Message)]
#[rtype(result = "oneshot::Receiver<()>")]
struct Refresh {
    kid: String,
}

/// Unknown key ids remembered for the rate limit; past this, every id shares one limit.
const MAX_FORCED_KIDS: usize = 256;

impl Handler<Refresh> for JwksActor {
    type Result = MessageResult<Refresh>;

    fn handle(&mut self, msg: Refresh, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        let now = Instant::now();
        self.forced
            .retain(|_, t| now.duration_since(*t) < MIN_REFRESH_GAP);
        // Past the bound (many made-up ids), all share one entry and so one limit.
        let kid = if self.forced.len() >= MAX_FORCED_KIDS {
            String::from("\0many")
        } else {
            msg.kid
        };
        if self.forced.contains_key(&kid) {
            // Refreshed for lately: wait for a fetch still to come (another request's
            // refresh for the same id may be it), else answer at once.
            if !self.waiting_next.is_empty() {
                self.waiting_next.push(tx);
            } else if self.fetching {
                self.waiting.push(tx);
            } else {
                let _ = tx.send(());
            }
            return MessageResult(rx);
        }
        self.forced.insert(kid, now);
        if self.fetching {
            // The fetch in flight may have left before the key was published.
            self.waiting_next.push(tx);
        } else {
            self.waiting.push(tx);
            self.fetch(ctx);
        }
        MessageResult(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("eyJh.eyJz.c2ln"));
        assert!(!looks_like_jwt("tok-alice"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt("a..c"));
        assert!(!looks_like_jwt("igw-abc.def.g+h"));
    }
}
