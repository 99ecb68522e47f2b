//! The SQLite stores: one connection (WAL, busy timeout) behind diesel-async's
//! `SyncConnectionWrapper`, which runs each query on tokio's blocking pool. Queries are
//! serialized by an async mutex; SQLite has one writer anyway.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::sqlite::SqliteConnection;
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use tokio::sync::{Mutex, MutexGuard};

use super::migrate::{open_sqlite, SQLITE_PRAGMAS};
use super::sqlite_log_insert::InsertLogRows;

type Conn = SyncConnectionWrapper<SqliteConnection>;

pub struct SqliteStore {
    conn: Mutex<Conn>,
    timeout: Duration,
}

impl SqliteStore {
    /// Opens (creating if needed) the file at `path` with the gateway's pragmas.
    pub fn open(path: &Path, timeout: Duration) -> super::StoreResult<SqliteStore> {
        Ok(SqliteStore {
            conn: Mutex::new(connect(path)?),
            timeout,
        })
    }

    /// The connection, waited for at most `timeout`.
    async fn conn(&self) -> super::StoreResult<MutexGuard<'_, Conn>> {
        tokio::time::timeout(self.timeout, self.conn.lock())
            .await
            .map_err(|_| super::StoreError::Timeout(self.timeout))
    }

    /// The whole batch in one blocking task and one transaction, on the sync connection:
    /// one hop to the blocking pool per batch instead of one per row. Rows go 16 at a time
    /// through one statement of fixed shape, prepared once per connection
    /// ([`InsertLogRows`]); the last few one by one. (Larger statements for the
    /// remainder were tried: per-statement costs are too small here to matter.)
    async fn insert_log_rows(
        &self,
        rows: std::sync::Arc<[super::LogRow]>,
    ) -> super::StoreResult<usize> {
        use diesel::Connection;
        let mut conn = self.conn().await?;
        let inserted = conn
            .spawn_blocking(move |c| {
                c.transaction(|c| {
                    // `OR IGNORE`: a row whose key is stored already (a replay) is skipped.
                    let mut rest: &[super::LogRow] = &rows;
                    let n = insert_chunks::<16>(c, &mut rest)?;
                    Ok(n + insert_chunks::<1>(c, &mut rest)?)
                })
            })
            .await?;
        Ok(inserted)
    }

    /// Runs `work` to its end: only the wait for the connection is bounded by `timeout`
    /// ([`Self::conn`]); a statement waiting for a lock is bounded by SQLite's busy timeout
    /// (5 s, `SQLITE_PRAGMAS`). An operation is never cancelled part way: cancelled inside
    /// a transaction, it would leave the shared connection in that transaction (never
    /// committed, every later write inside it) or panic diesel's wrapper on its next one.
    async fn timed<T>(
        &self,
        work: impl Future<Output = super::StoreResult<T>>,
    ) -> super::StoreResult<T> {
        work.await
    }
}

/// A connection to `path` (created if needed) with the gateway's pragmas.
fn connect(path: &Path) -> super::StoreResult<Conn> {
    let mut conn = open_sqlite(path, true)?;
    conn.batch_execute(SQLITE_PRAGMAS)?;
    Ok(SyncConnectionWrapper::new(conn))
}

/// Inserts `N` rows at a time from the front of `rest` while `N` are left; returns the
/// rows inserted. `N` ≤ 41: 24 values a row stays under 999 parameters, the limit of
/// SQLite builds older than 3.32.
fn insert_chunks<const N: usize>(
    c: &mut SqliteConnection,
    rest: &mut &[super::LogRow],
) -> diesel::QueryResult<usize> {
    let mut n = 0;
    while let Some((chunk, tail)) = rest.split_first_chunk::<N>() {
        n += diesel::RunQueryDsl::execute(InsertLogRows(chunk), c)?;
        *rest = tail;
    }
    Ok(n)
}

impl super::Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

super::queries::impl_stores!(SqliteStore, per_row);
