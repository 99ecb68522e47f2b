//! File bytes on disk: `{data_dir}/files/{id}`, written to a temporary name, synced, then
//! renamed, so a reader never sees half a file. All disk work runs on the blocking pool.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::store::{now_ms, FileRow};

/// Where file bytes live.
pub fn dir(settings: &crate::config::Settings) -> PathBuf {
    settings.data_dir().join("files")
}

/// A new id whose sort order is its creation order (listings page by id).
fn time_ordered(prefix: &str) -> String {
    let now = u64::try_from(now_ms()).unwrap_or(0);
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}{now:012x}{}", &rand[..16])
}

pub fn new_file_id() -> String {
    time_ordered("file-")
}

pub fn new_batch_id() -> String {
    time_ordered("batch_")
}

/// The file id of a batch's output (`o`) or error (`e`) file: fixed per batch, so writing
/// it again after a restart replaces it instead of leaving an orphan.
pub fn batch_file_id(batch_id: &str, kind: char) -> String {
    format!(
        "file-{}{kind}",
        batch_id.strip_prefix("batch_").unwrap_or(batch_id)
    )
}

/// A file id is ours to join to a path: `file-` and then only [0-9a-z].
fn valid_id(id: &str) -> bool {
    id.strip_prefix("file-")
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn path_of(dir: &Path, id: &str) -> std::io::Result<PathBuf> {
    if !valid_id(id) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "bad file id",
        ));
    }
    Ok(dir.join(id))
}

/// Writes `bytes` as file `id` (replacing it) in `dir`, durably.
pub async fn write(dir: PathBuf, id: String, bytes: Vec<u8>) -> std::io::Result<()> {
    blocking(move || {
        std::fs::create_dir_all(&dir)?;
        let path = path_of(&dir, &id)?;
        write_atomic(&path, &bytes)
    })
    .await
}

/// Writes `bytes` to `path` via a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

pub async fn read(dir: PathBuf, id: String) -> std::io::Result<Vec<u8>> {
    blocking(move || std::fs::read(path_of(&dir, &id)?)).await
}

pub async fn remove(dir: PathBuf, id: String) -> std::io::Result<()> {
    blocking(move || match std::fs::remove_file(path_of(&dir, &id)?) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    })
    .await
}

/// Runs disk work on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
}

/// The file as OpenAI's API shows it.
pub fn file_json(f: &FileRow) -> Value {
    json!({
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_at / 1000,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "status_details": null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_only_ours_become_paths() {
        let a = new_file_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_file_id();
        assert!(a < b);
        assert!(valid_id(&a));
        assert!(valid_id(&batch_file_id(&new_batch_id(), 'o')));
        for bad in ["file-", "file-../x", "x", "file-a/b", "file-a.b"] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}
