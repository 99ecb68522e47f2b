//! `database.url`: which backend, and where. "" is the embedded SQLite file under the data
//! directory; `sqlite://PATH` (or `sqlite:PATH`) a SQLite file; a bare path an existing SQLite
//! file (so a typo cannot start an empty database); `postgres://` / `postgresql://` PostgreSQL.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::{ConfigError, Settings};

/// The name of the default SQLite file in the data directory.
pub const DEFAULT_SQLITE_FILE: &str = "gateway.db";

#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Postgres(String),
    Sqlite {
        path: PathBuf,
        /// Whether a missing file may be created (the default file, or an explicit
        /// `sqlite://` URL whose directory exists).
        create: bool,
    },
}

impl DatabaseUrl {
    /// Resolves `database.url` against `storage.data_dir`. Checks what can be checked
    /// without connecting; errors name `database.url`.
    pub fn from_settings(settings: &Settings) -> Result<DatabaseUrl, ConfigError> {
        Self::parse(&settings.database.url, &settings.data_dir())
    }

    pub fn parse(url: &str, data_dir: &Path) -> Result<DatabaseUrl, ConfigError> {
        let url = url.trim();
        let key = "database.url";
        if url.is_empty() {
            return Ok(DatabaseUrl::Sqlite {
                path: data_dir.join(DEFAULT_SQLITE_FILE),
                create: true,
            });
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(url.to_string()));
        }
        if let Some(rest) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if rest.is_empty() {
                return Err(ConfigError::new(key, "sqlite: URL without a file path"));
            }
            let path = PathBuf::from(rest);
            let dir = match path.parent() {
                Some(p) if p != Path::new("") => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            if !path.exists() && !dir.is_dir() {
                return Err(ConfigError::new(
                    key,
                    format!(
                        "the directory of {} does not exist (create it first)",
                        path.display()
                    ),
                ));
            }
            return Ok(DatabaseUrl::Sqlite { path, create: true });
        }
        if let Some((scheme, _)) = url.split_once("://") {
            return Err(ConfigError::new(
                key,
                format!("unsupported scheme {scheme:?}; use postgres://, sqlite:// or a file path"),
            ));
        }
        let path = PathBuf::from(url);
        if !path.is_file() {
            return Err(ConfigError::new(
                key,
                format!(
                    "{} does not exist; a bare path must name an existing SQLite file \
                     (write sqlite://{} to create one)",
                    path.display(),
                    path.display()
                ),
            ));
        }
        Ok(DatabaseUrl::Sqlite {
            path,
            create: false,
        })
    }

    pub fn backend(&self) -> &'static str {
        match self {
            DatabaseUrl::Postgres(_) => "postgres",
            DatabaseUrl::Sqlite { .. } => "sqlite",
        }
    }
}

/// Prints without the password, so the URL can go into logs and errors.
impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseUrl::Postgres(url) => f.write_str(&redact(url)),
            DatabaseUrl::Sqlite { path, .. } => write!(f, "sqlite://{}", path.display()),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `scheme://user:secret@host/db?password=x` → `scheme://user:***@host/db?password=***`.
pub fn redact(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let auth_start = scheme_end + 3;
        let rest_end = out[auth_start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| auth_start + i);
        if let Some(at) = out[auth_start..rest_end].rfind('@') {
            let userinfo = &out[auth_start..auth_start + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(auth_start + colon + 1..auth_start + at, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out = format!("{head}{}", query.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_the_default_file_in_the_data_dir() {
        let url = DatabaseUrl::parse("", Path::new("/var/lib/igw")).unwrap();
        assert_eq!(
            url,
            DatabaseUrl::Sqlite {
                path: PathBuf::from("/var/lib/igw/gateway.db"),
                create: true
            }
        );
    }

    #[test]
    fn schemes_pick_the_backend() {
        let dir = tempfile::tempdir().unwrap();
        let pg = DatabaseUrl::parse("postgres://u@h/db", dir.path()).unwrap();
        assert_eq!(pg.backend(), "postgres");
        let pg = DatabaseUrl::parse("postgresql://u@h/db", dir.path()).unwrap();
        assert_eq!(pg.backend(), "postgres");
        let file = dir.path().join("new.db");
        let lite = DatabaseUrl::parse(&format!("sqlite://{}", file.display()), dir.path()).unwrap();
        assert_eq!(
            lite,
            DatabaseUrl::Sqlite {
                path: file,
                create: true
            }
        );
        let err = DatabaseUrl::parse("mysql://h/db", dir.path()).unwrap_err();
        assert_eq!(err.key, "database.url");
    }

    #[test]
    fn a_bare_path_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gatway.db");
        let err = DatabaseUrl::parse(missing.to_str().unwrap(), dir.path()).unwrap_err();
        assert_eq!(err.key, "database.url");
        assert!(err.message.contains("does not exist"), "{err}");
        let existing = dir.path().join("gateway.db");
        std::fs::write(&existing, b"").unwrap();
        let url = DatabaseUrl::parse(existing.to_str().unwrap(), dir.path()).unwrap();
        assert_eq!(
            url,
            DatabaseUrl::Sqlite {
                path: existing,
                create: false
            }
        );
    }

    #[test]
    fn sqlite_url_in_a_missing_directory_is_an_error() {
        let err = DatabaseUrl::parse("sqlite:///no/such/dir/x.db", Path::new(".")).unwrap_err();
        assert_eq!(err.key, "database.url");
    }

    #[test]
    fn passwords_never_print() {
        let url = DatabaseUrl::Postgres(
            "postgres://igw:s3cret@db:5432/igw?password=x&sslmode=require".into(),
        );
        let shown = url.to_string();
        assert!(
            !shown.contains("s3cret") && !shown.contains("=x"),
            "{shown}"
        );
        assert_eq!(
            shown,
            "postgres://igw:***@db:5432/igw?password=***&sslmode=require"
        );
        assert_eq!(redact("postgres://igw@db/igw"), "postgres://igw@db/igw");
        assert_eq!(format!("{url:?}"), shown);
    }
}
