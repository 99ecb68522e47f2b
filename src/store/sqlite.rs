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

type Conn = SyncConnectionWrapper<SqliteConnection>;

pub struct SqliteStore {
    conn: Mutex<Conn>,
    timeout: Duration,
}

impl SqliteStore {
    /// Opens (creating if needed) the file at `path` with the gateway's pragmas.
    pub fn open(path: &Path, timeout: Duration) -> super::StoreResult<SqliteStore> {
        let mut conn = open_sqlite(path, true)?;
        conn.batch_execute(SQLITE_PRAGMAS)?;
        Ok(SqliteStore {
            conn: Mutex::new(SyncConnectionWrapper::new(conn)),
            timeout,
        })
    }

    async fn conn(&self) -> super::StoreResult<MutexGuard<'_, Conn>> {
        Ok(self.conn.lock().await)
    }

    /// The whole batch in one blocking task and one transaction, on the sync connection:
    /// one hop to the blocking pool per batch instead of one per row. Rows go in
    /// `INSERT_CHUNK` at a time through one statement of fixed shape (a fixed-size array
    /// has a static query id, so diesel prepares it once per connection); the last few
    /// one by one.
    async fn insert_log_rows(
        &self,
        rows: std::sync::Arc<[super::LogRow]>,
    ) -> super::StoreResult<usize> {
        use super::schema::request_log::table;
        use diesel::Connection;
        let mut conn = self.conn().await?;
        let inserted = conn
            .spawn_blocking(move |c| {
                c.transaction(|c| {
                    let mut n = 0;
                    // `OR IGNORE`: a row whose key is stored already is skipped. Unlike
                    // `ON CONFLICT DO NOTHING` the statement has a static query id, so
                    // diesel reuses the prepared statement without rebuilding its SQL.
                    let mut rest: &[super::LogRow] = &rows;
                    while let Some((chunk, tail)) = rest.split_first_chunk::<INSERT_CHUNK>() {
                        let insert = diesel::insert_or_ignore_into(table).values(chunk);
                        n += diesel::RunQueryDsl::execute(insert, c)?;
                        rest = tail;
                    }
                    for row in rest {
                        let insert = diesel::insert_or_ignore_into(table).values(row);
                        n += diesel::RunQueryDsl::execute(insert, c)?;
                    }
                    Ok(n)
                })
            })
            .await?;
        Ok(inserted)
    }

    async fn timed<T>(
        &self,
        work: impl Future<Output = super::StoreResult<T>>,
    ) -> super::StoreResult<T> {
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| super::StoreError::Timeout(self.timeout))?
    }
}

/// Rows per multi-row request-log INSERT (24 values each: 384 parameters, far below
/// SQLite's limit).
const INSERT_CHUNK: usize = 16;

impl super::Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

super::queries::impl_stores!(SqliteStore, per_row);
