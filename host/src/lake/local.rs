//! A lake in a local directory: an object is a file at its key's path under
//! the directory, written to a temporary file, synced, then renamed into place
//! (a reader never sees half an object, and a written object survives a crash).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::{ObjectError, ObjectMeta, key_parts};

/// A lake directory.
#[derive(Debug, Clone)]
pub struct LocalLake {
    dir: Arc<PathBuf>,
}

impl LocalLake {
    /// The lake in `dir`, created if missing.
    pub fn open(dir: &Path) -> std::io::Result<LocalLake> {
        std::fs::create_dir_all(dir)?;
        Ok(LocalLake { dir: Arc::new(dir.to_owned()) })
    }

    fn path(&self, key: &str) -> Result<PathBuf, ObjectError> {
        Ok(key_parts(key)?.iter().fold((*self.dir).clone(), |path, part| path.join(part)))
    }

    pub(super) async fn put(&self, key: &str, body: Bytes) -> Result<(), ObjectError> {
        let path = self.path(key)?;
        blocking(move || {
            let store = |e: std::io::Error| ObjectError::Store(format!("{}: {e}", path.display()));
            let dir = path.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir).map_err(store)?;
            let tmp = path.with_extension("weir-tmp");
            let mut file = std::fs::File::create(&tmp).map_err(store)?;
            file.write_all(&body).and_then(|()| file.sync_all()).map_err(store)?;
            std::fs::rename(&tmp, &path).map_err(store)?;
            // The rename is durable once the folder is synced.
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(store)
        })
        .await
    }

    pub(super) async fn head(&self, key: &str) -> Result<ObjectMeta, ObjectError> {
        let path = self.path(key)?;
        let key = key.to_owned();
        blocking(move || {
            let meta = std::fs::metadata(&path).map_err(|e| read_error(&key, &path, e))?;
            let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
            let version = format!("{}-{}", meta.len(), modified.map_or(0, |d| d.as_nanos()));
            Ok(ObjectMeta { version, size: meta.len() })
        })
        .await
    }

    pub(super) async fn get(&self, key: &str) -> Result<Bytes, ObjectError> {
        let path = self.path(key)?;
        let key = key.to_owned();
        blocking(move || std::fs::read(&path).map(Bytes::from).map_err(|e| read_error(&key, &path, e))).await
    }
}

impl LocalLake {
    pub(super) async fn list(&self, prefix: &str) -> Result<Vec<String>, ObjectError> {
        let dir = self.dir.clone();
        let prefix = prefix.to_owned();
        blocking(move || {
            // Only the folder the prefix names is walked, not the whole lake.
            let start = prefix.rsplit_once('/').map_or("", |(folder, _)| folder);
            let mut keys = Vec::new();
            let mut todo = vec![(dir.join(start), start.to_owned())];
            while let Some((folder, key)) = todo.pop() {
                let entries = match std::fs::read_dir(&folder) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(ObjectError::Store(format!("{}: {e}", folder.display()))),
                };
                for entry in entries {
                    let entry = entry.map_err(|e| ObjectError::Store(format!("{}: {e}", folder.display())))?;
                    let Ok(name) = entry.file_name().into_string() else { continue };
                    let child = if key.is_empty() { name.clone() } else { format!("{key}/{name}") };
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        todo.push((entry.path(), child));
                    } else if child.starts_with(&prefix) && !name.ends_with(".weir-tmp") {
                        keys.push(child);
                    }
                }
            }
            Ok(keys)
        })
        .await
    }
}

fn read_error(key: &str, path: &Path, e: std::io::Error) -> ObjectError {
    if e.kind() == std::io::ErrorKind::NotFound {
        ObjectError::NotFound(key.to_owned())
    } else {
        ObjectError::Store(format!("{}: {e}", path.display()))
    }
}

/// File system calls, off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ObjectError> + Send + 'static,
) -> Result<T, ObjectError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ObjectError::Store(format!("the file operation failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn objects_are_files_under_the_directory_and_keys_cannot_leave_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = LocalLake::open(&dir.path().join("lake")).expect("open");
        lake.put("rows/2026/12/a.json", Bytes::from_static(b"{}\n")).await.expect("put");
        assert_eq!(std::fs::read(dir.path().join("lake/rows/2026/12/a.json")).expect("file"), b"{}\n");
        assert_eq!(lake.get("rows/2026/12/a.json").await.expect("get"), Bytes::from_static(b"{}\n"));
        let first = lake.head("rows/2026/12/a.json").await.expect("head");
        assert_eq!(first.size, 3);
        lake.put("rows/2026/12/a.json", Bytes::from_static(b"{\"a\":1}\n")).await.expect("replace");
        assert_ne!(lake.head("rows/2026/12/a.json").await.expect("head").version, first.version);
        assert!(matches!(lake.get("missing").await, Err(ObjectError::NotFound(_))));
        for bad in ["../x", "a/../../x", "/etc/passwd", "a//b", "", "a/./b"] {
            assert!(matches!(lake.put(bad, Bytes::new()).await, Err(ObjectError::BadKey(_))), "{bad}");
        }
        assert!(!dir.path().join("x").exists());
    }
}
