//! FIRST's path form: a path a client names must lie under one of `batches.allowed_roots`.
//! The path must be absolute and have no `..`; it is canonicalized (every symlink
//! resolved) and the result must still be under a canonicalized root, so a symlink
//! pointing out of the roots is refused like any other outside path.

use std::path::{Component, Path, PathBuf};

use crate::error::ApiError;

/// What the path must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

fn refuse(param: &'static str, message: String) -> ApiError {
    ApiError::PathNotAllowed { message, param }
}

/// The canonical form of `raw` if it is allowed, else a 400 naming `param`.
pub fn confine(
    raw: &str,
    roots: &[PathBuf],
    kind: Kind,
    param: &'static str,
) -> Result<PathBuf, ApiError> {
    if roots.is_empty() {
        return Err(refuse(
            param,
            "Path batches are disabled on this gateway (no batches.allowed_roots configured)."
                .into(),
        ));
    }
    let shown: String = raw.chars().take(300).collect();
    let path = Path::new(raw);
    if raw.is_empty() || !path.is_absolute() {
        return Err(refuse(
            param,
            format!("`{param}` must be an absolute path; got `{shown}`."),
        ));
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(refuse(
            param,
            format!("`{param}` must not contain `..`; got `{shown}`."),
        ));
    }
    let outside = || {
        refuse(
            param,
            format!("`{param}` (`{shown}`) is not under a directory this gateway may use."),
        )
    };
    let canonical = std::fs::canonicalize(path).map_err(|_| {
        refuse(
            param,
            format!("`{param}` (`{shown}`) does not exist or cannot be read."),
        )
    })?;
    let inside = roots
        .iter()
        .any(|root| std::fs::canonicalize(root).is_ok_and(|r| canonical.starts_with(&r)));
    if !inside {
        return Err(outside());
    }
    let meta = std::fs::metadata(&canonical).map_err(|_| outside())?;
    match kind {
        Kind::File if !meta.is_file() => Err(refuse(
            param,
            format!("`{param}` (`{shown}`) is not a regular file."),
        )),
        Kind::Dir if !meta.is_dir() => Err(refuse(
            param,
            format!("`{param}` (`{shown}`) is not a directory."),
        )),
        _ => Ok(canonical),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::ResponseError;

    #[test]
    fn only_paths_under_the_roots_pass() {
        let root = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let roots = vec![root.path().to_path_buf()];
        let inside = root.path().join("in.jsonl");
        std::fs::write(&inside, "x").unwrap();
        let secret = other.path().join("secret.jsonl");
        std::fs::write(&secret, "x").unwrap();
        let ok = confine(inside.to_str().unwrap(), &roots, Kind::File, "input_file").unwrap();
        assert!(ok.ends_with("in.jsonl"));
        let code = |p: &str, k| confine(p, &roots, k, "input_file").unwrap_err().code();
        assert_eq!(
            code(secret.to_str().unwrap(), Kind::File),
            "path_not_allowed"
        );
        let dotdot = format!("{}/../{}", root.path().display(), secret.display());
        assert_eq!(code(&dotdot, Kind::File), "path_not_allowed");
        assert_eq!(code("relative.jsonl", Kind::File), "path_not_allowed");
        let link = root.path().join("link.jsonl");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        assert_eq!(code(link.to_str().unwrap(), Kind::File), "path_not_allowed");
        assert_eq!(
            code(root.path().to_str().unwrap(), Kind::File),
            "path_not_allowed"
        );
        assert!(confine(root.path().to_str().unwrap(), &roots, Kind::Dir, "d").is_ok());
        assert_eq!(
            confine(inside.to_str().unwrap(), &[], Kind::File, "input_file")
                .unwrap_err()
                .status_code(),
            400
        );
    }
}
