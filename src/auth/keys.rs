//! API keys: `igw_` followed by 64 random hex characters, shown once at creation; only
//! the SHA-256 is stored. A key belongs to a user and optionally an org, has the role
//! `user` or `admin`, may expire, and may be limited to some models. Resolved keys are
//! cached for `KEY_CACHE_TTL`, so a request costs no database query; revoking a key on
//! this replica drops it from the cache at once (other replicas within the TTL).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::admin::sha256;
use crate::auth::identity::{Identity, Method};
use crate::error::ApiError;
use crate::store::{now_ms, ApiKeyRow, Store, StoreError};
use crate::ttl_cache::TtlCache;

/// Every key starts with this, so it is recognisable (and found by secret scanners).
pub const KEY_PREFIX: &str = "igw_";
/// How long a resolved key (or an unknown one) is trusted without asking the database.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(30);
/// How often a key's `last_used_at` is written while it is in use (per replica).
const TOUCH_EVERY_MS: i64 = 60_000;
/// Most keys cached; past it the cache evicts (bounded memory under a flood of bad keys).
const CACHE_CAPACITY: usize = 100_000;

pub const ROLE_USER: &str = "user";
pub const ROLE_ADMIN: &str = "admin";

pub fn looks_like_key(token: &str) -> bool {
    token.starts_with(KEY_PREFIX)
}

/// A fresh key (secret).
pub fn generate() -> String {
    format!(
        "{KEY_PREFIX}{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The stored form of a key.
pub fn hash(key: &str) -> String {
    hex::encode(sha256(key))
}

/// What an admin asks for.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub user: String,
    pub org: Option<String>,
    pub admin: bool,
    /// Unix milliseconds.
    pub expires_at: Option<i64>,
    pub models: Vec<String>,
}

/// Creates and stores a key; returns the secret (to show once) and the stored row.
pub async fn create(store: &dyn Store, new: NewKey) -> Result<(String, ApiKeyRow), StoreError> {
    let secret = generate();
    let row = ApiKeyRow {
        id: format!("key_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]),
        user_id: new.user,
        org_id: new.org.unwrap_or_default(),
        role: if new.admin { ROLE_ADMIN } else { ROLE_USER }.to_string(),
        hash: hash(&secret),
        prefix: secret[..KEY_PREFIX.len() + 8].to_string(),
        created_at: now_ms(),
        expires_at: new.expires_at,
        revoked_at: None,
        allowed_models: serde_json::to_string(&new.models).unwrap_or_else(|_| "[]".into()),
        last_used_at: None,
    };
    store.create_key(row.clone()).await?;
    Ok((secret, row))
}

/// The caller a key stands for.
pub fn identity_of(row: &ApiKeyRow) -> Identity {
    let models = row.allowed_models().unwrap_or_default();
    Identity {
        id: row.user_id.clone(),
        username: row.user_id.clone(),
        name: row.user_id.clone(),
        org: (!row.org_id.is_empty()).then(|| row.org_id.clone()),
        groups: Vec::new(),
        idp_id: String::new(),
        idp_name: String::new(),
        method: Method::ApiKey,
        admin: row.role == ROLE_ADMIN,
        models: (!models.is_empty()).then_some(models),
        key_id: Some(row.id.clone()),
    }
}

/// A key found by its hash: its identity, expiry, and whether it was revoked (kept so a
/// refusal can name the key in the audit log).
#[derive(Clone)]
struct Found {
    identity: Arc<Identity>,
    expires_at: Option<i64>,
    revoked: bool,
    /// The `last_used_at` written last (unix ms), shared by every copy of this entry.
    last_used: Arc<AtomicI64>,
}

/// A resolved key, or `None` for a hash nobody issued.
type Resolved = Option<Found>;

/// Resolves keys through a short-lived cache in front of the store.
pub struct ApiKeys {
    store: Arc<dyn Store>,
    /// By key hash: what it resolved to, for `KEY_CACHE_TTL`.
    cache: TtlCache<String, Resolved>,
    log: slog::Logger,
}

impl ApiKeys {
    pub fn new(store: Arc<dyn Store>, log: slog::Logger) -> ApiKeys {
        ApiKeys {
            store,
            cache: TtlCache::new(CACHE_CAPACITY),
            log,
        }
    }

    pub async fn resolve(&self, token: &str) -> Result<Arc<Identity>, ApiError> {
        let hashed = hash(token);
        let now = Instant::now();
        let found = match self.cache.get(&hashed, now) {
            Some(found) => found,
            None => {
                let row = self
                    .store
                    .find_key_by_hash(hashed.clone())
                    .await
                    .map_err(|e| {
                        slog::error!(self.log, "API key lookup failed"; "error" => e.to_string());
                        ApiError::AuthUnavailable
                    })?;
                let found = row.map(|r| Found {
                    identity: Arc::new(identity_of(&r)),
                    expires_at: r.expires_at,
                    revoked: r.revoked_at.is_some(),
                    last_used: Arc::new(AtomicI64::new(r.last_used_at.unwrap_or(0))),
                });
                self.cache
                    .insert(hashed, found.clone(), now + KEY_CACHE_TTL);
                found
            }
        };
        let wall = now_ms();
        match found {
            Some(f) if f.revoked => Err(ApiError::Unauthorized("Invalid API key.".into())),
            Some(f) if f.expires_at.is_none_or(|at| at > wall) => {
                self.touch(&f, wall);
                Ok(f.identity)
            }
            Some(_) => Err(ApiError::Unauthorized("This API key has expired.".into())),
            None => Err(ApiError::Unauthorized("Invalid API key.".into())),
        }
    }

    /// Writes the key's `last_used_at` in the background when the stored one is a minute
    /// old or more; one request per key and minute wins the race and writes it.
    fn touch(&self, found: &Found, now: i64) {
        let last = found.last_used.load(Ordering::Relaxed);
        if now - last < TOUCH_EVERY_MS
            || found
                .last_used
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let Some(id) = found.identity.key_id.clone() else {
            return;
        };
        let (store, log) = (self.store.clone(), self.log.clone());
        actix_rt::spawn(async move {
            if let Err(e) = store.touch_key(id.clone(), now).await {
                slog::warn!(log, "could not record an API key's last use";
                    "key_id" => id, "error" => e.to_string());
            }
        });
    }

    /// The id of the key `token` is, when this replica has looked it up lately (a refused
    /// key that was issued: expired or revoked). For the audit log; never the secret.
    pub fn recent_id(&self, token: &str) -> Option<String> {
        let found = self.cache.get(&hash(token), Instant::now())?;
        found.and_then(|f| f.identity.key_id.clone())
    }

    /// Forgets every cached key (after a revocation on this replica).
    pub fn forget_all(&self) {
        self.cache.clear();
    }
}

/// The longest lifetime a key may be given (ten years): anything longer is a typo or an
/// attempt to overflow `expires_at`.
pub const MAX_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Parses `30d`, `12h`, `90m`, `3600s` (or a plain number of seconds), at most
/// [`MAX_LIFETIME`].
pub fn parse_lifetime(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let too_long = || format!("{text:?} is longer than the longest lifetime, 3650d (ten years)");
    if digits.is_empty() {
        return Err(format!(
            "{text:?} is not a lifetime like 30d, 12h, 90m or 3600s"
        ));
    }
    // More digits than a u64 holds is too long, not malformed.
    let n: u64 = digits.parse().map_err(|_| too_long())?;
    let unit_secs: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("{text:?}: unit must be s, m, h, d or w")),
    };
    let secs = n.checked_mul(unit_secs).ok_or_else(too_long)?;
    if secs == 0 {
        return Err("a lifetime must be more than zero".into());
    }
    if secs > MAX_LIFETIME.as_secs() {
        return Err(too_long());
    }
    Ok(Duration::from_secs(secs))
}

/// `expires_at` (unix milliseconds) for a key created at `now_ms` with the lifetime `text`.
pub fn expires_at(text: &str, now_ms: i64) -> Result<i64, String> {
    let lifetime = parse_lifetime(text)?;
    // At most ten years in milliseconds: far from overflowing an i64.
    let millis =
        i64::try_from(lifetime.as_millis()).map_err(|_| "lifetime too long".to_string())?;
    now_ms
        .checked_add(millis)
        .ok_or_else(|| "lifetime too long".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_recognisable_and_random() {
        let a = generate();
        assert!(looks_like_key(&a));
        assert_eq!(a.len(), KEY_PREFIX.len() + 64);
        assert_ne!(a, generate());
        assert_eq!(hash(&a).len(), 64);
        assert!(!looks_like_key("eyJhbGciOi.x.y"));
    }

    #[test]
    fn lifetimes() {
        assert_eq!(
            parse_lifetime("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(parse_lifetime("12h").unwrap(), Duration::from_secs(43_200));
        assert_eq!(parse_lifetime("90").unwrap(), Duration::from_secs(90));
        assert!(parse_lifetime("0d").is_err());
        assert!(parse_lifetime("soon").is_err());
        assert!(parse_lifetime("3y").is_err());
        assert_eq!(parse_lifetime("3650d").unwrap(), MAX_LIFETIME);
        for overflow in ["30000000000000w", "18446744073709551615", "3651d", "522w"] {
            let err = parse_lifetime(overflow).unwrap_err();
            assert!(err.contains("ten years"), "{overflow}: {err}");
        }
        assert!(expires_at("1d", 1_000).unwrap() == 1_000 + 86_400_000);
    }
}
