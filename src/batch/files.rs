//! File bytes on disk: `{data_dir}/files/{id}`, written to a temporary name, synced, then
//! renamed, so a reader never sees half a file. All disk work runs on the blocking pool.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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

/// Bytes gathered before one write to disk.
const WRITE_CHUNK: usize = 256 * 1024;

/// A file being written into the files directory under a temporary name, chunk by chunk
/// (so an upload is never held whole in memory). `commit` syncs it and renames it to its
/// id; dropped before that (an error, or the request future dropped at any await), the
/// temporary file is removed.
pub struct Incoming {
    file: Option<std::fs::File>,
    tmp: TmpGuard,
    buf: Vec<u8>,
    len: u64,
}

/// Removes its path on drop. `dropped` tells a blocking task that creates the file after
/// the drop to remove it itself (whichever runs second removes it).
struct TmpGuard {
    path: PathBuf,
    dropped: Arc<AtomicBool>,
}

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            self.dropped.store(true, Ordering::SeqCst);
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Incoming {
    pub async fn create(dir: PathBuf) -> std::io::Result<Incoming> {
        let tmp = TmpGuard {
            path: dir.join(format!("incoming.tmp-{}", uuid::Uuid::new_v4().simple())),
            dropped: Arc::new(AtomicBool::new(false)),
        };
        let (path, dropped) = (tmp.path.clone(), Arc::clone(&tmp.dropped));
        let file = blocking(move || {
            std::fs::create_dir_all(&dir)?;
            let file = std::fs::File::create(&path)?;
            if dropped.load(Ordering::SeqCst) {
                let _ = std::fs::remove_file(&path);
            }
            Ok(file)
        })
        .await?;
        Ok(Incoming {
            file: Some(file),
            tmp,
            buf: Vec::with_capacity(WRITE_CHUNK),
            len: 0,
        })
    }

    /// Bytes taken so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub async fn push(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.len += chunk.len() as u64;
        self.buf.extend_from_slice(chunk);
        if self.buf.len() >= WRITE_CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        let Some(mut file) = self.file.take() else {
            return Err(std::io::Error::other("file already closed"));
        };
        let buf = std::mem::replace(&mut self.buf, Vec::with_capacity(WRITE_CHUNK));
        let file = blocking(move || file.write_all(&buf).map(|()| file)).await?;
        self.file = Some(file);
        Ok(())
    }

    /// Makes the bytes file `id` in the same directory, durably.
    pub async fn commit(mut self, id: &str) -> std::io::Result<()> {
        self.flush().await?;
        let Some(file) = self.file.take() else {
            return Err(std::io::Error::other("file already closed"));
        };
        let tmp = self.tmp.path.clone();
        let dir = tmp.parent().map(Path::to_path_buf).unwrap_or_default();
        let path = path_of(&dir, id)?;
        blocking(move || {
            file.sync_all()?;
            drop(file);
            std::fs::rename(&tmp, path)
        })
        .await?;
        self.tmp.path = PathBuf::new();
        Ok(())
    }
}

/// Copies `src` (FIRST's input path) into file `id` without holding it in memory. `Err`
/// inside: the file is larger than `limit` (its size), and nothing was kept.
pub async fn import(
    dir: PathBuf,
    id: String,
    src: PathBuf,
    limit: u64,
) -> std::io::Result<Result<u64, u64>> {
    blocking(move || {
        let mut from = std::fs::File::open(&src)?;
        let size = from.metadata()?.len();
        if size > limit {
            return Ok(Err(size));
        }
        std::fs::create_dir_all(&dir)?;
        let path = path_of(&dir, &id)?;
        let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
        let copied = (|| {
            let mut to = std::fs::File::create(&tmp)?;
            // The file may grow after the size was read: never take more than the limit.
            let n = std::io::copy(&mut std::io::Read::take(&mut from, limit + 1), &mut to)?;
            to.sync_all()?;
            Ok::<u64, std::io::Error>(n)
        })();
        match copied {
            Ok(n) if n <= limit => std::fs::rename(&tmp, &path).map(|()| Ok(n)),
            other => {
                let _ = std::fs::remove_file(&tmp);
                other.map(Err)
            }
        }
    })
    .await
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
