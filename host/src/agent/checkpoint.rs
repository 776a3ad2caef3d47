//! The agent's checkpoint file: for every flow, each followed file's identity
//! and the offset up to which its lines were acknowledged by weir. Written
//! whole to a temporary file, fsynced, then renamed over the old one, so a
//! crash leaves either the old or the new checkpoints, never a torn file.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// A checkpoint file that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing failed.
    #[error("checkpoint file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a checkpoint file.
    #[error(
        "checkpoint file {path} is damaged ({message}); move it away to start over (files are then read per `start`)"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Where one file was acknowledged up to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCheckpoint {
    /// The file's name when last seen (informative: files are matched by identity).
    pub path: PathBuf,
    /// Device of the file.
    pub dev: u64,
    /// Inode of the file.
    pub ino: u64,
    /// How many leading bytes `head` covers.
    pub head_len: u64,
    /// SHA-256 (hex) of the file's first `head_len` bytes.
    pub head: String,
    /// Lines up to this byte offset were acknowledged.
    pub offset: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Document {
    version: u32,
    flows: BTreeMap<String, Vec<FileCheckpoint>>,
}

/// Every flow's checkpoints, shared by the flows, saved to one file.
#[derive(Debug)]
pub struct CheckpointStore {
    path: PathBuf,
    flows: Mutex<BTreeMap<String, Vec<FileCheckpoint>>>,
}

impl CheckpointStore {
    /// Reads the file at `path`; none there means no checkpoints yet.
    pub fn load(path: &Path) -> Result<Self, CheckpointError> {
        let flows = match std::fs::read(path) {
            Ok(bytes) => {
                let doc: Document = serde_json::from_slice(&bytes)
                    .map_err(|e| CheckpointError::Damaged { path: path.to_owned(), message: e.to_string() })?;
                doc.flows
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(CheckpointError::Io { path: path.to_owned(), source }),
        };
        Ok(Self { path: path.to_owned(), flows: Mutex::new(flows) })
    }

    /// The checkpoints of one flow.
    pub fn flow(&self, flow: &str) -> Vec<FileCheckpoint> {
        self.flows.lock().map(|f| f.get(flow).cloned().unwrap_or_default()).unwrap_or_default()
    }

    /// Replaces one flow's checkpoints and writes the file durably.
    pub fn save(&self, flow: &str, files: Vec<FileCheckpoint>) -> Result<(), CheckpointError> {
        // The lock also serializes writers of the shared file.
        let mut flows = self.flows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        flows.insert(flow.to_owned(), files);
        let doc = Document { version: 1, flows: flows.clone() };
        let io = |source| CheckpointError::Io { path: self.path.clone(), source };
        let bytes = serde_json::to_vec_pretty(&doc).map_err(|e| io(std::io::Error::other(e)))?;
        let tmp = self.path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        // The rename is durable once the folder is synced.
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_survive_a_reload_and_damage_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cp.json");
        let store = CheckpointStore::load(&path).expect("no file yet is fine");
        assert!(store.flow("f").is_empty());
        let cp =
            FileCheckpoint { path: "/x/app.log".into(), dev: 1, ino: 2, head_len: 3, head: "ab".into(), offset: 42 };
        store.save("f", vec![cp.clone()]).expect("save");
        store.save("g", Vec::new()).expect("save");
        let again = CheckpointStore::load(&path).expect("reload");
        assert_eq!(again.flow("f"), vec![cp]);
        assert!(!path.with_extension("tmp").exists());
        std::fs::write(&path, "{").expect("damage");
        let err = CheckpointStore::load(&path).expect_err("damaged");
        assert!(err.to_string().contains("damaged"), "{err}");
    }
}
