//! Test databases: SQLite in a temp dir, and PostgreSQL from `DATABASE_TEST_URL`, one fresh
//! database `igw_test_<random>` per test, dropped afterwards. Without `DATABASE_TEST_URL`
//! (or when it cannot be reached) the PostgreSQL half of a test says loudly that it did not
//! run, and the test passes on SQLite alone.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::Connection;
use inference_gateway::store::url::redact;
use inference_gateway::store::DatabaseUrl;

pub enum TestDb {
    Sqlite {
        dir: tempfile::TempDir,
        path: PathBuf,
    },
    Pg {
        admin_url: String,
        name: String,
        url: String,
    },
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.db");
        TestDb::Sqlite { dir, path }
    }

    /// A fresh PostgreSQL database, or None (with a NOT RUN notice naming `test`).
    pub fn pg(test: &str) -> Option<TestDb> {
        let Ok(admin_url) = std::env::var("DATABASE_TEST_URL") else {
            eprintln!(
                "NOT RUN on PostgreSQL: {test}: DATABASE_TEST_URL is not set \
                 (e.g. postgres://postgres@127.0.0.1:5432/postgres)"
            );
            return None;
        };
        let mut admin = match PgConnection::establish(&admin_url) {
            Ok(c) => c,
            Err(e) => {
                eprintln!(
                    "NOT RUN on PostgreSQL: {test}: cannot connect to {}: {e}",
                    redact(&admin_url)
                );
                return None;
            }
        };
        let name = format!("igw_test_{}", uuid::Uuid::new_v4().simple());
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let url = with_database(&admin_url, &name);
        Some(TestDb::Pg {
            admin_url,
            name,
            url,
        })
    }

    /// SQLite always, PostgreSQL when available.
    pub fn all(test: &str) -> Vec<TestDb> {
        let mut dbs = vec![TestDb::sqlite()];
        dbs.extend(TestDb::pg(test));
        dbs
    }

    pub fn url(&self) -> DatabaseUrl {
        match self {
            TestDb::Sqlite { path, .. } => DatabaseUrl::Sqlite {
                path: path.clone(),
                create: true,
            },
            TestDb::Pg { url, .. } => DatabaseUrl::Postgres(url.clone()),
        }
    }

    /// The value for `database.url` (GATEWAY__DATABASE__URL).
    pub fn config_url(&self) -> String {
        match self {
            TestDb::Sqlite { path, .. } => format!("sqlite://{}", path.display()),
            TestDb::Pg { url, .. } => url.clone(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            TestDb::Sqlite { .. } => "sqlite",
            TestDb::Pg { .. } => "postgres",
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let TestDb::Pg {
            admin_url, name, ..
        } = self
        {
            if let Ok(mut admin) = PgConnection::establish(admin_url) {
                let _ =
                    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        }
    }
}

/// `admin_url` with its database replaced by `name`.
pub fn with_database(admin_url: &str, name: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin_url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}
