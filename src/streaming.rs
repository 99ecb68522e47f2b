//! The streaming hub: where chunks a remote function POSTs to the callback routes meet the
//! client's response stream. Keyed by the gateway-made stream task id (a UUID), each entry
//! holds the SHA-256 of its per-task token and the sender of a bounded channel whose
//! receiver feeds the client's SSE body. A channel is right here: the producer is another
//! HTTP request. Sharded so callbacks for different tasks do not contend.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use uuid::Uuid;

const SHARDS: usize = 16;

/// One callback's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// Raw SSE lines (`data: {...}` joined by `\n`), as FIRST's function batches them.
    Data(Bytes),
    Done,
    /// The function's error text (`API request failed with status code: NNN ...`).
    Error(String),
}

struct Entry {
    token_hash: [u8; 32],
    tx: mpsc::Sender<StreamEvent>,
}

/// Why a callback was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliverError {
    /// No such task here (finished, client gone, or never registered).
    Unknown,
    /// The token does not match the task's.
    BadToken,
    /// The client reads more slowly than the function sends.
    Full,
}

#[derive(Default)]
pub struct StreamHub {
    shards: [Mutex<HashMap<Uuid, Entry>>; SHARDS],
    /// Channel capacity per task, in callbacks.
    capacity: usize,
}

pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new random per-task token (256 bits, URL-safe).
pub fn new_token() -> String {
    format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

impl StreamHub {
    pub fn new(capacity: usize) -> Self {
        StreamHub {
            shards: Default::default(),
            capacity: capacity.max(1),
        }
    }

    fn shard(&self, id: &Uuid) -> &Mutex<HashMap<Uuid, Entry>> {
        &self.shards[(id.as_u128() as usize) % SHARDS]
    }

    /// Registers a task; the registration removes it when dropped.
    pub fn register(
        self: &Arc<Self>,
        id: Uuid,
        token: &str,
    ) -> (Registration, mpsc::Receiver<StreamEvent>) {
        let (tx, rx) = mpsc::channel(self.capacity);
        if let Ok(mut shard) = self.shard(&id).lock() {
            shard.insert(
                id,
                Entry {
                    token_hash: token_hash(token),
                    tx,
                },
            );
        }
        (
            Registration {
                hub: Arc::clone(self),
                id,
            },
            rx,
        )
    }

    /// Hands one callback to its task's stream (token compared in constant time).
    pub fn deliver(&self, id: &Uuid, token: &str, event: StreamEvent) -> Result<(), DeliverError> {
        let hash = token_hash(token);
        let tx = {
            let shard = self.shard(id).lock().map_err(|_| DeliverError::Unknown)?;
            let entry = shard.get(id).ok_or(DeliverError::Unknown)?;
            if !bool::from(entry.token_hash.ct_eq(&hash)) {
                return Err(DeliverError::BadToken);
            }
            entry.tx.clone()
        };
        tx.try_send(event).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => DeliverError::Full,
            mpsc::error::TrySendError::Closed(_) => DeliverError::Unknown,
        })
    }

    /// Hands an event that another replica already authenticated (through Redis).
    pub fn deliver_trusted(&self, id: &Uuid, event: StreamEvent) -> Result<(), DeliverError> {
        let tx = {
            let shard = self.shard(id).lock().map_err(|_| DeliverError::Unknown)?;
            shard.get(id).ok_or(DeliverError::Unknown)?.tx.clone()
        };
        tx.try_send(event).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => DeliverError::Full,
            mpsc::error::TrySendError::Closed(_) => DeliverError::Unknown,
        })
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A registered task; dropping it (stream ended or client gone) forgets the task.
pub struct Registration {
    hub: Arc<StreamHub>,
    id: Uuid,
}

impl Registration {
    pub fn id(&self) -> Uuid {
        self.id
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut shard) = self.hub.shard(&self.id).lock() {
            shard.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliver_checks_token_and_forgets_on_drop() {
        let hub = Arc::new(StreamHub::new(2));
        let id = Uuid::new_v4();
        let token = new_token();
        assert_eq!(token.len(), 64);
        let (reg, mut rx) = hub.register(id, &token);
        assert_eq!(
            hub.deliver(&id, "wrong", StreamEvent::Done),
            Err(DeliverError::BadToken)
        );
        hub.deliver(&id, &token, StreamEvent::Data(Bytes::from("data: 1")))
            .unwrap();
        hub.deliver(&id, &token, StreamEvent::Done).unwrap();
        assert_eq!(
            hub.deliver(&id, &token, StreamEvent::Done),
            Err(DeliverError::Full)
        );
        assert_eq!(
            rx.try_recv().unwrap(),
            StreamEvent::Data(Bytes::from("data: 1"))
        );
        drop(reg);
        assert!(hub.is_empty());
        assert_eq!(
            hub.deliver(&id, &token, StreamEvent::Done),
            Err(DeliverError::Unknown)
        );
        assert_eq!(
            hub.deliver(&Uuid::new_v4(), &token, StreamEvent::Done),
            Err(DeliverError::Unknown)
        );
    }
}
