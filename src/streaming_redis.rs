//! What replicas share through Redis (when `redis.url` is set): streaming callbacks and
//! the cold-start debounce (`{prefix}coldstart:{slug}`, `SET NX EX debounce_secs`).
//!
//! Streaming callbacks across replicas: The
//! replica that registered a stream writes `{prefix}stream:owner:{id}` = `{replica}
//! {sha256(token) hex}` (600 s), and listens on its own channel
//! `{prefix}stream:replica:{replica}`. A callback that lands on another replica is checked
//! against that key (constant time) and PUBLISHed to the owner's channel, whose subscriber
//! hands it to the local hub: one GET and one PUBLISH per cross-replica callback, no
//! polling.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::streaming::{token_hash, DeliverError, StreamEvent, StreamHub};

/// How long a stream's owner record lives (FIRST kept its token 600 s).
const OWNER_TTL_SECS: u64 = 600;

#[derive(Serialize, Deserialize)]
struct Wire {
    id: String,
    kind: String,
    #[serde(default)]
    text: String,
}

pub struct RedisStreams {
    url: String,
    pool: deadpool_redis::Pool,
    prefix: String,
    replica: String,
    /// Owner records already read (replica, token hash): later callbacks of the same
    /// stream skip the GET. Bounded; forgotten when the owner stops listening.
    owners: Mutex<HashMap<Uuid, (String, Vec<u8>)>>,
}

/// Most owner records kept in memory (cleared whole when full).
const OWNER_CACHE_LIMIT: usize = 10_000;

/// Why a cross-replica callback was not delivered.
#[derive(Debug)]
pub enum ForwardError {
    Deliver(DeliverError),
    Redis(String),
}

impl RedisStreams {
    pub fn new(url: &str, prefix: &str) -> Result<RedisStreams, String> {
        let pool = deadpool_redis::Config::from_url(url)
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .map_err(|e| e.to_string())?;
        Ok(RedisStreams {
            url: url.to_string(),
            pool,
            prefix: prefix.to_string(),
            replica: Uuid::new_v4().simple().to_string(),
            owners: Mutex::new(HashMap::new()),
        })
    }

    fn owner_key(&self, id: &Uuid) -> String {
        format!("{}stream:owner:{id}", self.prefix)
    }

    fn channel(&self, replica: &str) -> String {
        format!("{}stream:replica:{replica}", self.prefix)
    }

    /// Records this replica as the owner of stream `id` (with its token's hash).
    pub async fn announce(&self, id: &Uuid, token: &str) -> Result<(), String> {
        let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
        let value = format!("{} {}", self.replica, hex::encode(token_hash(token)));
        redis::cmd("SET")
            .arg(self.owner_key(id))
            .arg(value)
            .arg("EX")
            .arg(OWNER_TTL_SECS)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| e.to_string())
    }

    /// Sends a callback for a stream another replica owns.
    pub async fn forward(
        &self,
        id: &Uuid,
        token: &str,
        event: StreamEvent,
    ) -> Result<(), ForwardError> {
        let redis_err = |e: &dyn std::fmt::Display| ForwardError::Redis(e.to_string());
        let mut conn = self.pool.get().await.map_err(|e| redis_err(&e))?;
        let cached = self.owners.lock().ok().and_then(|o| o.get(id).cloned());
        let (replica, expected) = match cached {
            Some(owner) => owner,
            None => {
                let owner: Option<String> = redis::cmd("GET")
                    .arg(self.owner_key(id))
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| redis_err(&e))?;
                let owner = owner.ok_or(ForwardError::Deliver(DeliverError::Unknown))?;
                let (replica, hash_hex) = owner
                    .split_once(' ')
                    .ok_or(ForwardError::Deliver(DeliverError::Unknown))?;
                let expected = hex::decode(hash_hex)
                    .map_err(|_| ForwardError::Deliver(DeliverError::Unknown))?;
                if let Ok(mut owners) = self.owners.lock() {
                    if owners.len() >= OWNER_CACHE_LIMIT {
                        owners.clear();
                    }
                    owners.insert(*id, (replica.to_string(), expected.clone()));
                }
                (replica.to_string(), expected)
            }
        };
        if !bool::from(expected.as_slice().ct_eq(&token_hash(token)[..])) {
            return Err(ForwardError::Deliver(DeliverError::BadToken));
        }
        let (kind, text) = match event {
            StreamEvent::Data(b) => ("data", String::from_utf8_lossy(&b).into_owned()),
            StreamEvent::Done => ("done", String::new()),
            StreamEvent::Error(e) => ("error", e),
        };
        let message = serde_json::to_string(&Wire {
            id: id.to_string(),
            kind: kind.to_string(),
            text,
        })
        .map_err(|e| redis_err(&e))?;
        let receivers: i64 = redis::cmd("PUBLISH")
            .arg(self.channel(&replica))
            .arg(message)
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_err(&e))?;
        if receivers == 0 {
            // The owner is gone (restarted or stopped): nobody will relay it.
            if let Ok(mut owners) = self.owners.lock() {
                owners.remove(id);
            }
            return Err(ForwardError::Deliver(DeliverError::Unknown));
        }
        Ok(())
    }

    /// Listens on this replica's channel and hands messages to `hub`, reconnecting with
    /// backoff. Runs until the system stops.
    pub fn spawn_subscriber(self: &Arc<Self>, hub: Arc<StreamHub>, log: slog::Logger) {
        use futures_util::FutureExt;
        let this = Arc::clone(self);
        actix_rt::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                // A panic boundary: a bad message must not end cross-replica streaming.
                let run = std::panic::AssertUnwindSafe(this.subscribe_once(&hub)).catch_unwind();
                match run.await {
                    Ok(Ok(())) => backoff = Duration::from_millis(100),
                    Ok(Err(e)) => {
                        slog::warn!(log, "redis stream subscriber lost; reconnecting";
                            "error" => e, "retry_ms" => backoff.as_millis() as u64);
                    }
                    Err(_) => {
                        slog::error!(log, "redis stream subscriber panicked; restarting";
                            "retry_ms" => backoff.as_millis() as u64);
                    }
                }
                actix_rt::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
    }

    async fn subscribe_once(&self, hub: &StreamHub) -> Result<(), String> {
        let client = redis::Client::open(self.url.as_str()).map_err(|e| e.to_string())?;
        let mut pubsub = client.get_async_pubsub().await.map_err(|e| e.to_string())?;
        pubsub
            .subscribe(self.channel(&self.replica))
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = pubsub.on_message();
        while let Some(msg) = messages.next().await {
            let Ok(wire) = serde_json::from_slice::<Wire>(msg.get_payload_bytes()) else {
                continue;
            };
            let Ok(id) = Uuid::parse_str(&wire.id) else {
                continue;
            };
            let event = match wire.kind.as_str() {
                "data" => StreamEvent::Data(Bytes::from(wire.text)),
                "done" => StreamEvent::Done,
                _ => StreamEvent::Error(wire.text),
            };
            // Already authenticated by the replica that received it.
            let _ = hub.deliver_trusted(&id, event);
        }
        Err("subscription ended".into())
    }

    /// Claims a cold start of `slug` for `ttl` across replicas (`SET NX EX`): true when
    /// this replica may run the start command, false when another one already did.
    pub async fn claim_cold_start(&self, slug: &str, ttl: Duration) -> Result<bool, String> {
        let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("{}coldstart:{slug}", self.prefix))
            .arg(&self.replica)
            .arg("NX")
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(set.is_some())
    }

    /// Whether Redis answers (for tests and start-up checks).
    pub async fn ping(&self) -> Result<(), String> {
        let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
