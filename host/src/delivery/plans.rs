//! Delivery plans: the bounds of a batch, written durably before any of its
//! objects, so that a batch redone after a crash has the same bounds, hence
//! the same object keys and the same warehouse ledger key. One file per batch
//! in flight (`<delivery>.<shard>.<first>.plan` holding `first last`): the
//! worker may stage a batch while the loader still finishes the one before.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::PathBuf;

/// The plan files of one delivery stream.
pub struct Plans {
    dir: PathBuf,
    name: String,
}

/// The state directory cannot be created.
pub struct PlansError(pub PathBuf, pub std::io::Error);

impl Plans {
    /// Plans of delivery `name`, kept in `dir`.
    pub fn open(dir: PathBuf, name: String) -> Result<Plans, PlansError> {
        // A plan's file name is the name, then digits and dots: one plain component if the name is.
        crate::names::child_path(&dir, &name)
            .map_err(|e| PlansError(dir.clone(), std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        std::fs::create_dir_all(&dir).map_err(|e| PlansError(dir.clone(), e))?;
        Ok(Plans { dir, name })
    }

    fn file(&self, shard: u32, first: u64) -> PathBuf {
        self.dir.join(format!("{}.{shard}.{first:020}.plan", self.name))
    }

    /// The batches planned before a restart that continue from `position`, in
    /// order; plans of batches already checkpointed are removed.
    pub fn pending(&self, shard: u32, position: u64) -> VecDeque<(u64, u64)> {
        let prefix = format!("{}.{shard}.", self.name);
        let mut found: Vec<(u64, u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if !file_name.starts_with(&prefix) || !file_name.ends_with(".plan") {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let bounds = text.trim().split_once(' ').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
            match bounds {
                Some((first, last)) => found.push((first, last, entry.path())),
                None => {
                    tracing::warn!(plan = %entry.path().display(), "ignoring an unreadable delivery plan");
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        found.sort_by_key(|(first, _, _)| *first);
        let mut chain = VecDeque::new();
        let mut next = position;
        for (first, last, path) in found {
            if first == next && last >= first {
                // Renamed to the current naming, so `remove` finds it.
                let _ = std::fs::rename(&path, self.file(shard, first));
                chain.push_back((first, last));
                next = last + 1;
            } else {
                let _ = std::fs::remove_file(path);
            }
        }
        chain
    }

    /// Records a batch's bounds durably before its objects are written; the
    /// batch must not be written when this fails.
    pub fn write(&self, shard: u32, first: u64, last: u64) -> std::io::Result<()> {
        let plan = self.file(shard, first);
        let tmp = plan.with_extension("tmp");
        std::fs::File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(format!("{first} {last}\n").as_bytes())?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &plan))
            .and_then(|()| std::fs::File::open(&self.dir)?.sync_all())
    }

    /// Forgets a batch once it is checkpointed.
    pub fn remove(&self, shard: u32, first: u64) {
        let _ = std::fs::remove_file(self.file(shard, first));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_plans_chain_from_the_checkpoint_and_stale_ones_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plans = Plans::open(dir.path().to_owned(), "d".into()).ok().expect("open");
        for (shard, first, last) in [(0, 0, 4), (0, 5, 9), (0, 10, 12), (1, 0, 3)] {
            plans.write(shard, first, last).expect("plan");
        }
        // An older release's single plan file.
        std::fs::write(dir.path().join("d.2.plan"), "7 8\n").expect("legacy plan");
        assert_eq!(plans.pending(0, 5), VecDeque::from([(5, 9), (10, 12)]), "0..=4 was checkpointed");
        assert!(!plans.file(0, 0).exists());
        assert_eq!(plans.pending(1, 0), VecDeque::from([(0, 3)]));
        assert_eq!(plans.pending(2, 7), VecDeque::from([(7, 8)]));
        plans.remove(2, 7);
        assert_eq!(plans.pending(2, 7), VecDeque::new());
    }
}
