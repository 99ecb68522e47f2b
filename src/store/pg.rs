//! The PostgreSQL stores: diesel-async over a deadpool pool. The pool connects lazily, so a
//! database that is down costs the caller a failed query, never a blocked thread.

use std::future::Future;
use std::time::Duration;

use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::AsyncPgConnection;

use super::url::redact;

pub struct PgStore {
    pool: Pool<AsyncPgConnection>,
    timeout: Duration,
}

impl PgStore {
    /// A pool of at most `pool_size` connections to `url`; nothing connects yet.
    pub fn new(url: &str, pool_size: usize, timeout: Duration) -> super::StoreResult<PgStore> {
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .build()
            .map_err(|e| super::StoreError::Connection(redact(&e.to_string())))?;
        Ok(PgStore { pool, timeout })
    }

    async fn conn(&self) -> super::StoreResult<Object<AsyncPgConnection>> {
        self.pool
            .get()
            .await
            .map_err(|e| super::StoreError::Connection(redact(&e.to_string())))
    }

    /// One multi-row INSERT; ids already stored are skipped.
    async fn insert_log_rows(
        &self,
        rows: std::sync::Arc<[super::LogRow]>,
    ) -> super::StoreResult<usize> {
        use diesel_async::RunQueryDsl;
        let mut conn = self.conn().await?;
        Ok(diesel::insert_into(super::schema::request_log::table)
            .values(&rows[..])
            .on_conflict_do_nothing()
            .execute(&mut *conn)
            .await?)
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

impl super::Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }
}

super::queries::impl_stores!(PgStore, batch);
