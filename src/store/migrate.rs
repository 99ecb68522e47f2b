//! Embedded migrations, run on a sync diesel connection before the server starts
//! (diesel-async's harness cannot run on actix's current-thread runtime). Start-up and
//! `inference-gateway migrate` both call [`run`].

use std::path::Path;

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::sqlite::SqliteConnection;
use diesel::Connection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::{DatabaseUrl, StoreError, StoreResult};

pub const POSTGRES: EmbeddedMigrations = embed_migrations!("migrations/postgres");
pub const SQLITE: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// Pragmas every SQLite connection gets: 16 KB pages for a new database (a no-op on an
/// existing one; the request log's appends then write a quarter as many WAL frames, half
/// the `pwrite`s per request), WAL (readers don't block the writer), a busy timeout instead
/// of instant SQLITE_BUSY, and durable-enough commits.
pub const SQLITE_PRAGMAS: &str = "PRAGMA page_size = 16384; PRAGMA journal_mode = WAL; \
     PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;";

/// A sync connection for migrations and tests.
pub enum SyncConn {
    Pg(PgConnection),
    Sqlite(SqliteConnection),
}

fn migration_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Connection(format!("migration failed: {e}"))
}

impl SyncConn {
    /// Connects; a SQLite file is created (with its directory) only when the URL allows it.
    pub fn connect(url: &DatabaseUrl) -> StoreResult<SyncConn> {
        match url {
            DatabaseUrl::Postgres(u) => PgConnection::establish(u)
                .map(SyncConn::Pg)
                .map_err(|e| StoreError::Connection(super::url::redact(&e.to_string()))),
            DatabaseUrl::Sqlite { path, create } => {
                let mut conn = open_sqlite(path, *create)?;
                conn.batch_execute(SQLITE_PRAGMAS)?;
                Ok(SyncConn::Sqlite(conn))
            }
        }
    }

    /// Applies pending migrations; returns the versions applied.
    pub fn run_pending(&mut self) -> StoreResult<Vec<String>> {
        let done = match self {
            SyncConn::Pg(c) => c.run_pending_migrations(POSTGRES).map(versions),
            SyncConn::Sqlite(c) => c.run_pending_migrations(SQLITE).map(versions),
        };
        done.map_err(migration_error)
    }

    /// Applies the next pending migration, if any.
    pub fn run_next(&mut self) -> StoreResult<Option<String>> {
        let version = match self {
            SyncConn::Pg(c) => {
                let pending = c.pending_migrations(POSTGRES).map_err(migration_error)?;
                match pending.first() {
                    Some(next) => c.run_migration(&**next).map(|v| v.to_string()),
                    None => return Ok(None),
                }
            }
            SyncConn::Sqlite(c) => {
                let pending = c.pending_migrations(SQLITE).map_err(migration_error)?;
                match pending.first() {
                    Some(next) => c.run_migration(&**next).map(|v| v.to_string()),
                    None => return Ok(None),
                }
            }
        }
        .map_err(migration_error)?;
        Ok(Some(version))
    }

    /// Reverts the last applied migration.
    pub fn revert_last(&mut self) -> StoreResult<String> {
        match self {
            SyncConn::Pg(c) => c.revert_last_migration(POSTGRES).map(|v| v.to_string()),
            SyncConn::Sqlite(c) => c.revert_last_migration(SQLITE).map(|v| v.to_string()),
        }
        .map_err(migration_error)
    }

    /// Reverts every applied migration, newest first.
    pub fn revert_all(&mut self) -> StoreResult<Vec<String>> {
        match self {
            SyncConn::Pg(c) => c.revert_all_migrations(POSTGRES).map(versions),
            SyncConn::Sqlite(c) => c.revert_all_migrations(SQLITE).map(versions),
        }
        .map_err(migration_error)
    }

    /// Number of migrations in this backend's tree.
    pub fn migration_count(&self) -> usize {
        use diesel::migration::MigrationSource;
        let n = match self {
            SyncConn::Pg(_) => {
                MigrationSource::<diesel::pg::Pg>::migrations(&POSTGRES).map(|m| m.len())
            }
            SyncConn::Sqlite(_) => {
                MigrationSource::<diesel::sqlite::Sqlite>::migrations(&SQLITE).map(|m| m.len())
            }
        };
        n.unwrap_or(0)
    }
}

fn versions(v: Vec<diesel::migration::MigrationVersion<'_>>) -> Vec<String> {
    v.into_iter().map(|v| v.to_string()).collect()
}

/// Opens a SQLite file. With `create`, its directory is created too; without, a missing
/// file is an error (SQLite would silently create an empty one).
pub fn open_sqlite(path: &Path, create: bool) -> StoreResult<SqliteConnection> {
    configure_sqlite_library();
    if !path.exists() {
        if !create {
            return Err(StoreError::Connection(format!(
                "{} does not exist",
                path.display()
            )));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Connection(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
    }
    let text = path
        .to_str()
        .ok_or_else(|| StoreError::Connection(format!("{} is not UTF-8", path.display())))?;
    SqliteConnection::establish(text).map_err(|e| StoreError::Connection(e.to_string()))
}

/// Sets SQLite's process-wide options, once, before its first connection: multi-thread
/// mode (no mutex taken per bind and step: a diesel connection is `Send` but not `Sync`,
/// so no two threads ever use one at once, which is all that mode asks) and no memory
/// statistics (a global mutex per allocation). SQLite ignores both (`SQLITE_MISUSE`) once
/// initialised, e.g. if another part of the process opened a database first; it then
/// keeps its serialized default, which is correct, only slower.
fn configure_sqlite_library() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use libsqlite3_sys as ffi;
        // SAFETY: sqlite3_config takes these two options with the documented argument
        // lists (none; one int) and is called before any connection of ours is opened;
        // past initialisation it only returns SQLITE_MISUSE.
        unsafe {
            ffi::sqlite3_config(ffi::SQLITE_CONFIG_MULTITHREAD);
            ffi::sqlite3_config(ffi::SQLITE_CONFIG_MEMSTATUS, 0 as std::ffi::c_int);
        }
    });
}

/// Connects and applies every pending migration; returns the versions applied.
pub fn run(url: &DatabaseUrl) -> StoreResult<Vec<String>> {
    SyncConn::connect(url)?.run_pending()
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::sql_types::BigInt;
    use diesel::RunQueryDsl;

    #[derive(diesel::QueryableByName)]
    struct PageSize {
        #[diesel(sql_type = BigInt)]
        page_size: i64,
    }

    fn page_size(path: &Path) -> i64 {
        let mut c = open_sqlite(path, true).unwrap_or_else(|e| panic!("{e}"));
        c.batch_execute(SQLITE_PRAGMAS)
            .unwrap_or_else(|e| panic!("{e}"));
        diesel::sql_query("PRAGMA page_size")
            .get_result::<PageSize>(&mut c)
            .unwrap_or_else(|e| panic!("{e}"))
            .page_size
    }

    #[test]
    fn a_new_database_gets_16k_pages_and_an_existing_one_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let new = dir.path().join("new.db");
        assert_eq!(page_size(&new), 16384);
        assert_eq!(page_size(&new), 16384, "reopened");

        let old = dir.path().join("old.db");
        let mut c = open_sqlite(&old, true).unwrap_or_else(|e| panic!("{e}"));
        c.batch_execute("PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; CREATE TABLE t (x);")
            .unwrap_or_else(|e| panic!("{e}"));
        drop(c);
        assert_eq!(
            page_size(&old),
            4096,
            "the pragma is a no-op on an existing WAL file"
        );
    }
}
