//! FIRST's path form: a path a client names must lie under one of `batches.allowed_roots`.
//! The path must be absolute and have no `..`. It is checked against the roots as written
//! before anything on disk is touched (so the host's other files cannot be probed: a path
//! outside the roots, a missing one and an unreadable one all get the same answer); then it
//! is canonicalized (every symlink resolved) and the result must still be under a
//! canonicalized root, so a symlink pointing out of the roots is refused the same way.

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

/// `path` without `.` components or a trailing slash (it is absolute and has no `..`).
fn lexical(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
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
    // One answer for outside, missing and unreadable alike.
    let unusable = || {
        let what = match kind {
            Kind::File => "a readable file",
            Kind::Dir => "a directory",
        };
        refuse(
            param,
            format!(
                "`{param}` (`{shown}`) is not {what} under a directory this gateway may use \
                 (batches.allowed_roots)."
            ),
        )
    };
    // The roots as configured and as they resolve (a root may be reached through a link).
    let mut allowed: Vec<PathBuf> = Vec::with_capacity(roots.len() * 2);
    let mut canonical_roots: Vec<PathBuf> = Vec::with_capacity(roots.len());
    for root in roots {
        allowed.push(lexical(root));
        if let Ok(c) = std::fs::canonicalize(root) {
            allowed.push(c.clone());
            canonical_roots.push(c);
        }
    }
    let written = lexical(path);
    if !allowed.iter().any(|r| written.starts_with(r)) {
        return Err(unusable());
    }
    let canonical = std::fs::canonicalize(&written).map_err(|_| unusable())?;
    if !canonical_roots.iter().any(|r| canonical.starts_with(r)) {
        return Err(unusable());
    }
    let meta = std::fs::metadata(&canonical).map_err(|_| unusable())?;
    let fits = match kind {
        Kind::File => meta.is_file(),
        Kind::Dir => meta.is_dir(),
    };
    if fits {
        Ok(canonical)
    } else {
        Err(unusable())
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

    /// Outside the roots, an existing file and a missing one get the same answer: the
    /// host's files cannot be probed through the error.
    #[test]
    fn outside_paths_cannot_be_told_apart() {
        let root = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let roots = vec![root.path().to_path_buf()];
        let exists = other.path().join("exists.jsonl");
        std::fs::write(&exists, "x").unwrap();
        let missing = other.path().join("missing.jsonl");
        let inside_missing = root.path().join("missing.jsonl");
        let message = |p: &std::path::Path| {
            let e = confine(p.to_str().unwrap(), &roots, Kind::File, "input_file_path")
                .unwrap_err()
                .to_string();
            e.replace(p.to_str().unwrap(), "PATH")
        };
        assert_eq!(message(&exists), message(&missing));
        assert_eq!(message(&exists), message(&inside_missing));
        assert_eq!(
            message(Path::new("/etc/shadow")),
            message(Path::new("/etc/nonexistent"))
        );
        // A symlink inside a root pointing out is refused with the same words.
        let link = root.path().join("link.jsonl");
        std::os::unix::fs::symlink(&exists, &link).unwrap();
        assert_eq!(message(&link), message(&missing));
        // A root given through a symlink still works.
        let via = other.path().join("via");
        std::os::unix::fs::symlink(root.path(), &via).unwrap();
        let file = root.path().join("ok.jsonl");
        std::fs::write(&file, "x").unwrap();
        assert!(confine(
            via.join("ok.jsonl").to_str().unwrap(),
            std::slice::from_ref(&via),
            Kind::File,
            "p"
        )
        .is_ok());
        assert!(confine(file.to_str().unwrap(), &[via], Kind::File, "p").is_ok());
    }
}
