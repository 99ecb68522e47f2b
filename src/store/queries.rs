//! The queries, written once and instantiated for each backend's store type. Both backends
//! speak the same diesel DSL over the same schema; the macro only fixes the connection
//! type, so a query cannot drift between PostgreSQL and SQLite.
//!
//! A store type using the macro provides `async fn conn(&self) -> StoreResult<impl
//! DerefMut<Target = Connection>>` and `async fn timed(&self, fut) -> StoreResult<T>`
//! (bounds the whole operation by the configured timeout).

/// SQL for the error count of `/admin/usage`: a request is an error when it got an error
/// status or ended with an error code (an interrupted stream is a 200 with an error code).
pub(super) const ERRORS_SQL: &str =
    "CAST(COALESCE(SUM(CASE WHEN status >= 400 OR error_code IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT)";
pub(super) const PROMPT_SQL: &str = "CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT)";
pub(super) const COMPLETION_SQL: &str = "CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT)";
pub(super) const TOTAL_SQL: &str = "CAST(COALESCE(SUM(total_tokens), 0) AS BIGINT)";

/// Narrows a boxed `request_log` query to the rows a [`UsageFilter`] selects.
macro_rules! log_filter {
    ($q:expr, $filter:expr) => {{
        let mut q = $q;
        let filter = $filter;
        if let Some(user) = filter.user {
            q = q.filter(request_log::user_id.eq(user));
        }
        if let Some(org) = filter.org {
            q = q.filter(request_log::org_id.eq(org));
        }
        if let Some(model) = filter.model {
            q = q.filter(request_log::model.eq(model));
        }
        if let Some(since) = filter.since {
            q = q.filter(request_log::created_at.ge(since));
        }
        if let Some(until) = filter.until {
            q = q.filter(request_log::created_at.lt(until));
        }
        q
    }};
}

macro_rules! impl_stores {
    ($store:ty, $batch:ident) => {
        use diesel::prelude::*;
        use diesel_async::scoped_futures::ScopedFutureExt;
        use diesel_async::{AsyncConnection, RunQueryDsl};
        use futures_util::future::BoxFuture;

        use $crate::store::queries::{COMPLETION_SQL, ERRORS_SQL, PROMPT_SQL, TOTAL_SQL};
        use $crate::store::schema::{
            api_keys, batch_items, batches, files, quota_overrides, request_log, usage_counters,
        };
        use $crate::store::{
            ApiKeyRow, BatchPatch, BatchRow, BatchStore, BucketUsage, CounterRow, CounterStore,
            FileRow, ItemRow, KeyStore, LogRow, ModelUsage, QuotaOverrideRow, RequestLogStore,
            StoreError, StoreResult, UsageBucket, UsageFilter, UsageRow, ACTIVE_BATCH_STATES,
        };

        impl KeyStore for $store {
            fn create_key(&self, key: ApiKeyRow) -> BoxFuture<'_, StoreResult<()>> {
                Box::pin(self.timed(async move {
                    let mut conn = self.conn().await?;
                    diesel::insert_into(api_keys::table)
                        .values(&key)
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                }))
            }

            fn list_keys(
                &self,
                user: Option<String>,
            ) -> BoxFuture<'_, StoreResult<Vec<ApiKeyRow>>> {
                Box::pin(self.timed(async move {
                    let mut conn = self.conn().await?;
                    let mut q = api_keys::table
                        .select(ApiKeyRow::as_select())
                        .order((api_keys::created_at.asc(), api_keys::id.asc()))
                        .into_boxed();
                    if let Some(user) = user {
                        q = q.filter(api_keys::user_id.eq(user));
                    }
                    Ok(q.load(&mut *conn).await?)
                }))
            }

            fn revoke_key(&self, id: String, at: i64) -> BoxFuture<'_, StoreResult<bool>> {
                Box::pin(self.timed(async move {
                    let mut conn = self.conn().await?;
                    let n = diesel::update(
                        api_keys::table
                            .filter(api_keys::id.eq(id))
                            .filter(api_keys::revoked_at.is_null()),
                    )
                    .set(api_keys::revoked_at.eq(Some(at)))
                    .execute(&mut *conn)
                    .await?;
                    Ok(n > 0)
                }))
            }

            fn find_key_by_hash(
                &self,
                hash: String,
            ) -> BoxFuture<'_, StoreResult<Option<ApiKeyRow>>> {
                Box::pin(self.timed(async move {
                    let mut conn = self.conn().await?;
                    Ok(api_keys::table
                        .filter(api_keys::hash.eq(hash))
                        .select(ApiKeyRow::as_select())
                        .first(&mut *conn)
                        .await
                        .optional()?)
                }))
            }

            fn touch_key(&self, id: String, at: i64) -> BoxFuture<'_, StoreResult<()>> {
                Box::pin(self.timed(async move {
                    let mut conn = self.conn().await?;
                    diesel::update(
                        api_keys::table.filter(api_keys::id.eq(id)).filter(
                            api_keys::last_used_at
                                .is_null()
                                .or(api_keys::last_used_at.lt(at)),
                        ),
                    )
                    .set(api_keys::last_used_at.eq(Some(at)))
                    .execute(&mut *conn)
                    .await?;
                    Ok(())
                }))
            }
        }

        impl CounterStore for $store {
            fn add_usage(
                &self,
                subject: String,
                window_kind: String,
                window_start: i64,
                requests: i64,
                tokens: i64,
            ) -> BoxFuture<'_, StoreResult<CounterRow>> {
                Box::pin(self.timed(async move {
                    let mut conn = self.conn().await?;
                    let row = CounterRow {
                        subject,
                        window_kind,
                        window_start,
                        requests,
                        tokens,
                    };
                    conn.transaction::<_, StoreError, _>(|conn| {
                        async move {
                            use diesel::upsert::excluded;
                            diesel::insert_into(usage_counters::table)
                                .values(&row)
                                .on_conflict((
                                    usage_counters::subject,
                                    usage_counters::window_kind,
                                    usage_counters::window_start,
                                ))
                                .do_update()
                                .set((
                                    usage_counters::requests.eq(usage_counters::requests
                                        + excluded(usage_counters::requests)),
                                    usage_counters::tokens
                                        .eq(usage_counters::tokens
                                            + excluded(usage_counters::tokens)),
                                ))
                                .execute(conn)
                                .await?;
                            Ok(usage_counters::table
                                .find((&row.subject, &row.window_kind, row.window_start))
                                .select(CounterRow::as_select())
                                .first(conn)
                                .await?)
                        }
                        .scope_boxed()
                    })
                    .await
                }))
            }

            fn get_usage(
                &self,
                subject: String,
                window_kind: String,
                window_start: i64,
            ) -> BoxFuture<'_, StoreResult<CounterRow>> {
                Box::pin(self.timed(async move {
                    let mut conn = self.conn().await?;
                    let found = usage_counters::table
                        .find((&subject, &window_kind, window_start))
                        .select(CounterRow::as_select())
                        .first(&mut *conn)
                        .await
                        .optional()?;
                    Ok(found.unwrap_or(CounterRow {
                        subject,
                        window_kind,
                        window_start,
                        requests: 0,
                        tokens: 0,
                    }))
                }))
            }

            fn reset_usage(&self, subject: String) -> BoxFuture<'_, StoreResult<usize>> {
                Box::pin(self.timed(async move {
                    let mut conn = self.conn().await?;
                    Ok(diesel::delete(
                        usage_counters::table.filter(usage_counters::subject.eq(subject)),
                    )
                    .execute(&mut *conn)
                    .await?)
                }))
            }

            fn prune_usage(&self, before: i64) -> BoxFuture<'_, StoreResult<usize>> {
                Box::pin(self.timed(async move {
                    let mut conn = self.conn().await?;
                    Ok(diesel::delete(
                        usage_counters::table.filter(usage_counters::window_start.lt(before)),
                    )
                    .execute(&mut *conn)
                    .await?)
                }))
            }

            fn put_override(&self, row: QuotaOverrideRow) -> BoxFuture<'_, StoreResult<()>> {
                Box::pin(self.timed(async move {
                    let mut conn = self.conn().await?;
                    diesel::insert_into(quota_overrides::table)
                        .values(&row)
                        .on_conflict(quota_overrides::subject)
                        .do_update()
                        .set(&row)
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                }))
            }

            fn get_override(
                &self,
                subject: String,
            ) -> BoxFuture<'_, StoreResult<Option<QuotaOverrideRow>>> {
                Box::pin(self.timed(async move {
                    let mut conn = self.conn().await?;
                    Ok(quota_overrides::table
                        .find(subject)
                        .select(QuotaOverrideRow::as_select())
                        .first(&mut *conn)
                        .await
                        .optional()?)
                }))
            }

            fn list_overrides(&self) -> BoxFuture<'_, StoreResult<Vec<QuotaOverrideRow>>> {
                Box::pin(self.timed(async move {
                    let mut conn = self.conn().await?;
                    Ok(quota_overrides::table
                        .select(QuotaOverrideRow::as_select())
                        .order(quota_overrides::subject.asc())
                        .load(&mut *conn)
                        .await?)
                }))
            }

            fn delete_override(&self, subject: String) -> BoxFuture<'_, StoreResult<bool>> {
                Box::pin(self.timed(async move {
                    let mut conn = self.conn().await?;
                    let n = diesel::delete(quota_overrides::table.find(subject))
                        .execute(&mut *conn)
                        .await?;
                    Ok(n > 0)
                }))
            }
        }

        impl RequestLogStore for $store {
            fn insert_log(
                &self,
                rows: std::sync::Arc<[LogRow]>,
            ) -> BoxFuture<'_, StoreResult<usize>> {
                Box::pin(self.timed(async move {
                    if rows.is_empty() {
                        return Ok(0);
                    }
                    // Client text (a NUL in `model`...) must not cost the batch its insert.
                    self.insert_log_rows($crate::store::storable::log_rows(rows))
                        .await
                }))
            }

            fn prune_log(&self, before: i64) -> BoxFuture<'_, StoreResult<usize>> {
                Box::pin(self.timed(async move {
                    let mut conn = self.conn().await?;
                    Ok(diesel::delete(
                        request_log::table.filter(request_log::created_at.lt(before)),
                    )
                    .execute(&mut *conn)
                    .await?)
                }))
            }

            fn usage_by_model(
                &self,
                filter: UsageFilter,
            ) -> BoxFuture<'_, StoreResult<Vec<ModelUsage>>> {
                Box::pin(self.timed(async move {
                    use diesel::dsl::{count_star, sql};
                    use diesel::sql_types::BigInt;
                    let mut conn = self.conn().await?;
                    let q = request_log::table
                        .group_by(request_log::model)
                        .select((
                            request_log::model,
                            count_star(),
                            sql::<BigInt>(ERRORS_SQL),
                            sql::<BigInt>(PROMPT_SQL),
                            sql::<BigInt>(COMPLETION_SQL),
                            sql::<BigInt>(TOTAL_SQL),
                        ))
                        .order(request_log::model.asc())
                        .into_boxed();
                    let q = $crate::store::queries::log_filter!(q, filter);
                    let rows: Vec<UsageRow> = q.load(&mut *conn).await?;
                    Ok(rows.into_iter().map(ModelUsage::from_row).collect())
                }))
            }

            fn usage_series(
                &self,
                filter: UsageFilter,
                bucket: UsageBucket,
            ) -> BoxFuture<'_, StoreResult<Vec<BucketUsage>>> {
                Box::pin(self.timed(async move {
                    use diesel::dsl::sql;
                    use diesel::sql_types::{BigInt, Text};
                    let mut conn = self.conn().await?;
                    // Integer division floors the (non-negative) start time to its bucket
                    // in both dialects; the bucket width is one of three constants.
                    let ms = bucket.millis();
                    let q = request_log::table
                        .select(sql::<(
                            BigInt,
                            (Text, BigInt, BigInt, BigInt, BigInt, BigInt),
                        )>(&format!(
                            "(created_at / {ms}) * {ms}, model, COUNT(*), {ERRORS_SQL}, \
                                 {PROMPT_SQL}, {COMPLETION_SQL}, {TOTAL_SQL}"
                        )))
                        .group_by(sql::<BigInt>("1, 2"))
                        .order(sql::<BigInt>("1, 2"))
                        .into_boxed();
                    let q = $crate::store::queries::log_filter!(q, filter);
                    let rows: Vec<(i64, UsageRow)> = q.load(&mut *conn).await?;
                    Ok(rows
                        .into_iter()
                        .map(|(start, row)| BucketUsage {
                            start,
                            usage: ModelUsage::from_row(row),
                        })
                        .collect())
                }))
            }

            fn list_log(
                &self,
                filter: UsageFilter,
                limit: i64,
            ) -> BoxFuture<'_, StoreResult<Vec<LogRow>>> {
                Box::pin(self.timed(async move {
                    let mut conn = self.conn().await?;
                    let q = request_log::table
                        .select(LogRow::as_select())
                        .order((request_log::created_at.asc(), request_log::id.asc()))
                        .limit(limit)
                        .into_boxed();
                    let q = $crate::store::queries::log_filter!(q, filter);
                    Ok(q.load(&mut *conn).await?)
                }))
            }
        }

        impl BatchStore for $store {
            fn create_file(&self, row: FileRow) -> BoxFuture<'_, StoreResult<()>> {
                let row = $crate::store::storable::file_row(row);
                Box::pin(self.timed(async move {
                    let mut conn = self.conn().await?;
                    diesel::insert_into(files::table)
                        .values(&row)
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                }))
            }

            fn put_file(&self, row: FileRow) -> BoxFuture<'_, StoreResult<()>> {
                let row = $crate::store::storable::file_row(row);
                Box::pin(self.timed(async move {
                    let mut conn = self.conn().await?;
                    diesel::insert_into(files::table)
                        .values(&row)
                        .on_conflict(files::id)
                        .do_update()
                        .set((
                            files::bytes.eq(row.bytes),
                            files::filename.eq(&row.filename),
                            files::created_at.eq(row.created_at),
                        ))
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                }))
            }

            fn get_file(&self, id: String) -> BoxFuture<'_, StoreResult<Option<FileRow>>> {
                let id = $crate::store::storable::lookup(id);
                Box::pin(self.timed(async move {
                    let mut conn = self.conn().await?;
                    Ok(files::table
                        .find(id)
                        .select(FileRow::as_select())
                        .first(&mut *conn)
                        .await
                        .optional()?)
                }))
            }

            fn list_files(
                &self,
                owner: String,
                after: Option<String>,
                limit: i64,
            ) -> BoxFuture<'_, StoreResult<Vec<FileRow>>> {
                Box::pin(self.timed(async move {
                    let mut conn = self.conn().await?;
                    let mut q = files::table
                        .filter(files::owner.eq(owner))
                        .select(FileRow::as_select())
                        .order(files::id.desc())
                        .limit(limit)
                        .into_boxed();
                    if let Some(after) = after {
                        q = q.filter(files::id.lt(after));
                    }
                    Ok(q.load(&mut *conn).await?)
                }))
            }

            fn delete_file(&self, id: String) -> BoxFuture<'_, StoreResult<bool>> {
                Box::pin(self.timed(async move {
                    let mut conn = self.conn().await?;
                    let n = diesel::delete(files::table.find(id))
                        .execute(&mut *conn)
                        .await?;
                    Ok(n > 0)
                }))
            }

            fn create_batch(&self, row: BatchRow) -> BoxFuture<'_, StoreResult<()>> {
                let row = $crate::store::storable::batch_row(row);
                Box::pin(self.timed(async move {
                    let mut conn = self.conn().await?;
                    diesel::insert_into(batches::table)
                        .values(&row)
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                }))
            }

            fn get_batch(&self, id: String) -> BoxFuture<'_, StoreResult<Option<BatchRow>>> {
                let id = $crate::store::storable::lookup(id);
                Box::pin(self.timed(async move {
                    let mut conn = self.conn().await?;
                    Ok(batches::table
                        .find(id)
                        .select(BatchRow::as_select())
                        .first(&mut *conn)
                        .await
                        .optional()?)
                }))
            }

            fn list_batches(
                &self,
                owner: Option<String>,
                status: Option<String>,
                after: Option<String>,
                limit: i64,
            ) -> BoxFuture<'_, StoreResult<Vec<BatchRow>>> {
                Box::pin(self.timed(async move {
                    let mut conn = self.conn().await?;
                    let mut q = batches::table
                        .select(BatchRow::as_select())
                        .order(batches::id.desc())
                        .limit(limit)
                        .into_boxed();
                    if let Some(owner) = owner {
                        q = q.filter(batches::owner.eq(owner));
                    }
                    if let Some(status) = status {
                        q = q.filter(batches::status.eq(status));
                    }
                    if let Some(after) = after {
                        q = q.filter(batches::id.lt(after));
                    }
                    Ok(q.load(&mut *conn).await?)
                }))
            }

            fn count_active_batches(&self, owner: String) -> BoxFuture<'_, StoreResult<i64>> {
                Box::pin(self.timed(async move {
                    let mut conn = self.conn().await?;
                    Ok(batches::table
                        .filter(batches::owner.eq(owner))
                        .filter(batches::status.eq_any(ACTIVE_BATCH_STATES))
                        .count()
                        .get_result(&mut *conn)
                        .await?)
                }))
            }

            fn claim_batch(
                &self,
                worker: String,
                now: i64,
                until: i64,
                skip: Vec<String>,
                avoid_owners: Vec<String>,
            ) -> BoxFuture<'_, StoreResult<Option<BatchRow>>> {
                Box::pin(self.timed(async move {
                    let mut conn = self.conn().await?;
                    conn.transaction::<_, StoreError, _>(|conn| {
                        async move {
                            let free = batches::lease_until
                                .is_null()
                                .or(batches::lease_until.lt(now))
                                .or(batches::lease_owner.eq(&worker));
                            let candidates = batches::table
                                .select(batches::id)
                                .filter(batches::status.eq_any(ACTIVE_BATCH_STATES))
                                .filter(free)
                                .filter(diesel::dsl::not(batches::id.eq_any(&skip)))
                                .filter(diesel::dsl::not(batches::owner.eq_any(&avoid_owners)))
                                .order(batches::id.asc())
                                .limit(8);
                            let ids: Vec<String> =
                                $crate::store::queries::lock_rows!($batch, candidates)
                                    .load(conn)
                                    .await?;
                            for id in ids {
                                let n = diesel::update(
                                    batches::table.filter(batches::id.eq(&id)).filter(
                                        batches::lease_until
                                            .is_null()
                                            .or(batches::lease_until.lt(now))
                                            .or(batches::lease_owner.eq(&worker)),
                                    ),
                                )
                                .set((
                                    batches::lease_owner.eq(Some(&worker)),
                                    batches::lease_until.eq(Some(until)),
                                ))
                                .execute(conn)
                                .await?;
                                if n == 1 {
                                    return Ok(batches::table
                                        .find(&id)
                                        .select(BatchRow::as_select())
                                        .first(conn)
                                        .await
                                        .optional()?);
                                }
                            }
                            Ok(None)
                        }
                        .scope_boxed()
                    })
                    .await
                }))
            }

            fn update_batch(
                &self,
                id: String,
                worker: Option<String>,
                from: Vec<String>,
                patch: BatchPatch,
            ) -> BoxFuture<'_, StoreResult<bool>> {
                Box::pin(self.timed(async move {
                    let mut conn = self.conn().await?;
                    let base = batches::table
                        .filter(batches::id.eq(id))
                        .filter(batches::status.eq_any(from));
                    let n = match worker {
                        Some(w) => {
                            diesel::update(base.filter(batches::lease_owner.eq(w)))
                                .set(&patch)
                                .execute(&mut *conn)
                                .await?
                        }
                        None => diesel::update(base).set(&patch).execute(&mut *conn).await?,
                    };
                    Ok(n > 0)
                }))
            }

            fn insert_items(&self, rows: Vec<ItemRow>) -> BoxFuture<'_, StoreResult<usize>> {
                let rows = $crate::store::storable::item_rows(rows);
                Box::pin(self.timed(async move {
                    let mut conn = self.conn().await?;
                    $crate::store::queries::insert_many!($batch, &mut *conn, rows, |rows, conn| {
                        diesel::insert_into(batch_items::table)
                            .values(rows)
                            .on_conflict_do_nothing()
                            .execute(conn)
                            .await?
                    })
                }))
            }

            fn list_items(&self, batch_id: String) -> BoxFuture<'_, StoreResult<Vec<ItemRow>>> {
                Box::pin(self.timed(async move {
                    let mut conn = self.conn().await?;
                    Ok(batch_items::table
                        .filter(batch_items::batch_id.eq(batch_id))
                        .select(ItemRow::as_select())
                        .order(batch_items::line_index.asc())
                        .load(&mut *conn)
                        .await?)
                }))
            }

            fn done_items(&self, batch_id: String) -> BoxFuture<'_, StoreResult<Vec<(i64, bool)>>> {
                Box::pin(self.timed(async move {
                    let mut conn = self.conn().await?;
                    Ok(batch_items::table
                        .filter(batch_items::batch_id.eq(batch_id))
                        .select((batch_items::line_index, batch_items::ok))
                        .load(&mut *conn)
                        .await?)
                }))
            }
        }
    };
}

/// Inserts `rows` (a Vec) with `$insert` (an expression of `rows` and `conn`): in one
/// multi-row statement (`batch`, PostgreSQL), or row by row inside one transaction
/// (`per_row`, SQLite, where diesel builds no multi-row INSERT for async connections).
/// Evaluates to `Result<usize, StoreError>`, the rows inserted.
macro_rules! insert_many {
    (batch, $conn:expr, $rows:expr, |$r:ident, $c:ident| $insert:expr) => {{
        let rows = $rows;
        let $c = $conn;
        let result: StoreResult<usize> = if rows.is_empty() {
            Ok(0)
        } else {
            async {
                let $r = &rows;
                Ok::<usize, StoreError>($insert)
            }
            .await
        };
        result
    }};
    (per_row, $conn:expr, $rows:expr, |$r:ident, $c:ident| $insert:expr) => {{
        let rows = $rows;
        let conn = $conn;
        let result: StoreResult<usize> = if rows.is_empty() {
            Ok(0)
        } else {
            conn.transaction::<_, StoreError, _>(|$c| {
                async move {
                    let mut n = 0;
                    for row in &rows {
                        let $r = row;
                        n += $insert;
                    }
                    Ok(n)
                }
                .scope_boxed()
            })
            .await
        };
        result
    }};
}

/// Locks the candidate rows a claim selects: `FOR UPDATE SKIP LOCKED` on PostgreSQL (so
/// replicas claiming at once take different batches); SQLite has one writer, so the
/// conditional UPDATE that follows is enough.
macro_rules! lock_rows {
    (batch, $q:expr) => {
        $q.for_update().skip_locked()
    };
    (per_row, $q:expr) => {
        $q
    };
}

pub(super) use impl_stores;
pub(super) use insert_many;
pub(super) use lock_rows;
pub(super) use log_filter;
