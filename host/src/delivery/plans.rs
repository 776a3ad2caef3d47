//! Delivery plans: the bounds of a batch, written durably before any of its
//! objects, so that a batch redone after a crash has the same bounds, hence
//! the same object keys and the same warehouse ledger key. One file per batch
//! in flight (`<delivery>.<shard>.<first>.plan` holding `first last`): the
//! worker may stage a batch while the loader still finishes the one before.

use std::collections::VecDeque;
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
    /// order; plans of batches already checkpointed are removed. A plan that
    /// cannot be read is an error, never skipped: without its bounds the batch
    /// would be staged again with others, and loaded twice.
    pub fn pending(&self, shard: u32, position: u64) -> Result<VecDeque<(u64, u64)>, String> {
        let prefix = format!("{}.{shard}.", self.name);
        let unreadable = |path: &std::path::Path, e: &dyn std::fmt::Display| {
            format!(
                "the delivery plan {} cannot be read ({e}); fix or restore it (it holds `first last`, \
                 the bounds of a batch staged before a restart) and start again",
                path.display()
            )
        };
        let entries = std::fs::read_dir(&self.dir).map_err(|e| unreadable(&self.dir, &e))?;
        let mut found: Vec<(u64, u64, PathBuf)> = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| unreadable(&self.dir, &e))?.path();
            let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if !file_name.starts_with(&prefix) || !file_name.ends_with(".plan") {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|e| unreadable(&path, &e))?;
            let bounds = text.trim().split_once(' ').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
            match bounds {
                Some((first, last)) => found.push((first, last, path)),
                None => return Err(unreadable(&path, &format!("it holds {:?}", text.trim()))),
            }
        }
        found.sort_by_key(|(first, _, _)| *first);
        let mut chain = VecDeque::new();
        let mut next = position;
        for (first, last, path) in found {
            if first == next && last >= first {
                // Renamed to the current naming, so `remove` finds it.
                let current = self.file(shard, first);
                if path != current {
                    std::fs::rename(&path, &current).map_err(|e| unreadable(&path, &e))?;
                }
                chain.push_back((first, last));
                next = last + 1;
            } else {
                // Checkpointed already: a leftover is harmless (it never chains again), so only logged.
                remove_logged(&path);
            }
        }
        Ok(chain)
    }

    /// Records a batch's bounds durably before its objects are written; the
    /// batch must not be written when this fails.
    pub fn write(&self, shard: u32, first: u64, last: u64) -> std::io::Result<()> {
        crate::io::write_durably(&self.file(shard, first), format!("{first} {last}\n").as_bytes())
    }

    /// Forgets a batch once it is checkpointed. A plan left behind is harmless:
    /// its batch is behind the checkpoint, and [`Plans::pending`] removes it.
    pub fn remove(&self, shard: u32, first: u64) {
        remove_logged(&self.file(shard, first));
    }
}

/// Removes a plan that is no longer needed, saying so if it cannot.
fn remove_logged(path: &std::path::Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(plan = %path.display(), error = %e, "a finished delivery plan could not be removed");
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
        assert_eq!(plans.pending(0, 5), Ok(VecDeque::from([(5, 9), (10, 12)])), "0..=4 was checkpointed");
        assert!(!plans.file(0, 0).exists());
        assert_eq!(plans.pending(1, 0), Ok(VecDeque::from([(0, 3)])));
        assert_eq!(plans.pending(2, 7), Ok(VecDeque::from([(7, 8)])));
        plans.remove(2, 7);
        assert_eq!(plans.pending(2, 7), Ok(VecDeque::new()));
    }

    #[test]
    fn an_unreadable_plan_is_an_error_naming_the_file_not_a_silent_replan() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plans = Plans::open(dir.path().to_owned(), "d".into()).ok().expect("open");
        plans.write(0, 0, 9).expect("plan");
        std::fs::write(plans.file(0, 10), "garbage").expect("a torn plan");
        let error = plans.pending(0, 0).expect_err("an unreadable plan");
        assert!(error.contains(&plans.file(0, 10).display().to_string()) && error.contains("garbage"), "{error}");
        assert!(plans.file(0, 10).exists(), "the plan is kept for the operator to look at");
    }
}
