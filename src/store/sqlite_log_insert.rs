//! The SQLite request-log insert as one hand-laid query fragment: `INSERT OR IGNORE INTO
//! request_log (...) VALUES (...), ...` for a fixed number of rows, whose SQL is one static
//! string per row count and whose binds are pushed straight from each [`LogRow`].
//!
//! It is what `diesel::insert_or_ignore_into(request_log).values(&[LogRow; N])` builds, at
//! a third of the cost: diesel's generic insert walks an `Insertable` tuple of 24 columns
//! per row several times per statement (to decide whether it may be cached, whether it is
//! empty, whether any value is `DEFAULT`, then to bind), and that walking cost about as
//! much as SQLite's own work for the row. The column list is checked against diesel's own
//! SQL for the table in a test, so a schema change that forgets this file fails there.

use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Bool, Double, Integer, Nullable, Text};
use diesel::sqlite::Sqlite;
use diesel::QueryResult;

use super::LogRow;

/// The statement's head, columns in `schema::request_log` order.
const HEAD: &str = "INSERT OR IGNORE INTO `request_log` (`id`, `request_id`, `created_at`, \
     `user_id`, `org_id`, `model`, `cluster`, `framework`, `target`, `route`, `status`, \
     `error_code`, `prompt_tokens`, `completion_tokens`, `total_tokens`, \
     `tokens_estimated`, `latency_ms`, `ttft_ms`, `client_ip`, `stream`, `attempts`, \
     `ending`, `prompt`, `completion`) VALUES ";

/// `N` rows in one statement (prepared once per connection and row count).
pub struct InsertLogRows<'a, const N: usize>(pub &'a [LogRow; N]);

/// The statement's cache key: one per row count.
pub struct InsertLogRowsId<const N: usize>;

impl<const N: usize> QueryId for InsertLogRows<'_, N> {
    type QueryId = InsertLogRowsId<N>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<const N: usize> QueryFragment<Sqlite> for InsertLogRows<'_, N> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_sql(HEAD);
        for (i, row) in self.0.iter().enumerate() {
            if i > 0 {
                out.push_sql(", ");
            }
            out.push_sql("(");
            bind_row(&mut out, row)?;
            out.push_sql(")");
        }
        Ok(())
    }
}

impl<const N: usize, Conn> diesel::RunQueryDsl<Conn> for InsertLogRows<'_, N> {}

/// Binds each value after the first with its `, ` (each bind writes its own `?`).
macro_rules! bind_all {
    ($out:ident, $ty0:ty => $v0:expr $(, $ty:ty => $v:expr)* $(,)?) => {{
        $out.push_bind_param::<$ty0, _>($v0)?;
        $(
            $out.push_sql(", ");
            $out.push_bind_param::<$ty, _>($v)?;
        )*
    }};
}

/// One row's 24 placeholders and values, in `HEAD`'s column order.
fn bind_row<'b>(out: &mut AstPass<'_, 'b, Sqlite>, r: &'b LogRow) -> QueryResult<()> {
    bind_all!(
        out,
        Text => &r.id,
        Text => &r.request_id,
        BigInt => &r.created_at,
        Text => &r.user_id,
        Text => &r.org_id,
        Text => &r.model,
        Text => &r.cluster,
        Text => &r.framework,
        Text => &r.target,
        Text => &r.route,
        Integer => &r.status,
        Nullable<Text> => &r.error_code,
        BigInt => &r.prompt_tokens,
        BigInt => &r.completion_tokens,
        BigInt => &r.total_tokens,
        Bool => &r.tokens_estimated,
        Double => &r.latency_ms,
        Nullable<Double> => &r.ttft_ms,
        Nullable<Text> => &r.client_ip,
        Bool => &r.stream,
        Integer => &r.attempts,
        Text => &r.ending,
        Nullable<Text> => &r.prompt,
        Nullable<Text> => &r.completion,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::schema::request_log;

    /// Every nullable column set, so each bind type is compared.
    fn row() -> LogRow {
        LogRow {
            error_code: Some("e".into()),
            ttft_ms: Some(0.5),
            client_ip: Some("127.0.0.1".into()),
            completion: Some("q".into()),
            ..LogRow::sample("a")
        }
    }

    #[test]
    fn the_statement_is_what_diesel_builds_for_the_table() {
        let rows = [row(), row()];
        let ours = diesel::debug_query::<Sqlite, _>(&InsertLogRows(&rows)).to_string();
        let diesels = diesel::debug_query::<Sqlite, _>(
            &diesel::insert_or_ignore_into(request_log::table).values(&rows[..]),
        )
        .to_string();
        assert_eq!(ours, diesels);
    }
}
