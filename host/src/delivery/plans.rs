//! Delivery plans: the bounds of a batch, written durably before any of its
//! objects, so that a batch redone after a crash has the same bounds, hence
//! the same object keys and the same warehouse ledger key. One plan per batch
//! in flight, holding `first last`: the worker may stage a batch while the
//! loader still finishes the one before. On this host's disk, one file each
//! (`<delivery>.<shard>.<first>.plan`); when the delivery reads a stream on a
//! NATS cluster, one value each in the cluster (`p.<delivery>.<shard>.<first>`),
//! written under the delivery's lease, so that the host taking the delivery
//! over redoes a batch with the bounds the first host planned, and a host
//! that lost it plans nothing more.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use weir_nats::{NatsStreams, SharedError, SharedWrite};

/// Where a delivery keeps its plans.
pub enum PlanPlace {
    /// Files in this directory.
    Dir(PathBuf),
    /// The cluster its source stream is on.
    Cluster(Arc<NatsStreams>),
}

impl From<PathBuf> for PlanPlace {
    fn from(dir: PathBuf) -> PlanPlace {
        PlanPlace::Dir(dir)
    }
}

/// The plans of one delivery stream.
pub struct Plans {
    place: Place,
    name: String,
}

enum Place {
    Dir(PathBuf),
    /// With the source stream and consumer whose lease fences the plans.
    Cluster {
        nats: Arc<NatsStreams>,
        stream: String,
        consumer: String,
    },
}

/// The state directory cannot be created.
pub struct PlansError(pub PathBuf, pub std::io::Error);

/// Why the pending plans are not known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingError {
    /// A plan is there but cannot be read: an operator must look.
    Unreadable(String),
    /// The cluster keeping the plans did not answer: asked again later.
    Unavailable(String),
}

impl std::fmt::Display for PendingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PendingError::Unreadable(e) | PendingError::Unavailable(e) => f.write_str(e),
        }
    }
}

impl Plans {
    /// Plans of delivery `name`, which reads `consumer` of `stream`, kept at `place`.
    pub fn open(place: PlanPlace, name: String, stream: &str, consumer: &str) -> Result<Plans, PlansError> {
        match place {
            PlanPlace::Dir(dir) => Self::open_dir(dir, name),
            PlanPlace::Cluster(nats) => Ok(Plans {
                place: Place::Cluster { nats, stream: stream.to_owned(), consumer: consumer.to_owned() },
                name,
            }),
        }
    }

    fn open_dir(dir: PathBuf, name: String) -> Result<Plans, PlansError> {
        // A plan's file name is the name, then digits and dots: one plain component if the name is.
        crate::names::child_path(&dir, &name)
            .map_err(|e| PlansError(dir.clone(), std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        std::fs::create_dir_all(&dir).map_err(|e| PlansError(dir.clone(), e))?;
        Ok(Plans { place: Place::Dir(dir), name })
    }

    /// Whether the plans are on a cluster, shared by its hosts: then the
    /// delivery runs on one host at a time, and may move to another.
    pub fn is_shared(&self) -> bool {
        matches!(self.place, Place::Cluster { .. })
    }

    fn file(&self, dir: &std::path::Path, shard: u32, first: u64) -> PathBuf {
        dir.join(format!("{}.{shard}.{first:020}.plan", self.name))
    }

    fn key(&self, shard: u32, first: u64) -> String {
        format!("{}{first:020}", self.prefix(shard))
    }

    fn prefix(&self, shard: u32) -> String {
        format!("p.{}.{shard}.", weir_nats::token(&self.name))
    }

    /// Changes plans on the cluster under the delivery's lease.
    fn commit(&self, writes: Vec<SharedWrite>) -> Result<(), SharedError> {
        let Place::Cluster { nats, stream, consumer } = &self.place else { return Ok(()) };
        nats.shared_commit(writes, Some((stream, consumer)))
    }

    /// The batches planned before a restart (or by the host this one took the
    /// delivery from) that continue from `position`, in order; plans of batches
    /// already checkpointed are removed. A plan that cannot be read is an error,
    /// never skipped: without its bounds the batch would be staged again with
    /// others, and loaded twice.
    pub fn pending(&self, shard: u32, position: u64) -> Result<VecDeque<(u64, u64)>, PendingError> {
        let dir = match &self.place {
            Place::Dir(dir) => dir,
            Place::Cluster { nats, .. } => {
                let prefix = self.prefix(shard);
                let found = nats
                    .shared_scan(&prefix)
                    .map_err(|e| PendingError::Unavailable(format!("the delivery's plans cannot be read now: {e}")))?;
                let mut plans = Vec::new();
                for (key, value, _) in found {
                    let text = String::from_utf8_lossy(&value);
                    let bounds = parse_bounds(&text).ok_or_else(|| {
                        PendingError::Unreadable(format!(
                            "the delivery plan `{key}` in the cluster holds {:?}; fix or remove it",
                            text.trim()
                        ))
                    })?;
                    plans.push(bounds);
                }
                let (chain, stale) = chain(plans, position);
                let stale = stale.iter().map(|(first, _)| SharedWrite {
                    key: self.key(shard, *first),
                    value: None,
                    expected: None,
                });
                match self.commit(stale.collect()) {
                    Ok(()) => {}
                    // A host not running the delivery leaves them to the one that does.
                    Err(SharedError::LeaseLost { .. }) => {}
                    Err(e) => tracing::warn!(error = %e, "finished delivery plans could not be removed"),
                }
                return Ok(chain);
            }
        };
        let prefix = format!("{}.{shard}.", self.name);
        let unreadable = |path: &std::path::Path, e: &dyn std::fmt::Display| {
            PendingError::Unreadable(format!(
                "the delivery plan {} cannot be read ({e}); fix or restore it (it holds `first last`, \
                 the bounds of a batch staged before a restart) and start again",
                path.display()
            ))
        };
        let entries = std::fs::read_dir(dir).map_err(|e| unreadable(dir, &e))?;
        let mut found: Vec<(u64, u64, PathBuf)> = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| unreadable(dir, &e))?.path();
            let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if !file_name.starts_with(&prefix) || !file_name.ends_with(".plan") {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|e| unreadable(&path, &e))?;
            match parse_bounds(&text) {
                Some((first, last)) => found.push((first, last, path)),
                None => return Err(unreadable(&path, &format!("it holds {:?}", text.trim()))),
            }
        }
        let paths: std::collections::HashMap<u64, PathBuf> = found.iter().map(|(f, _, p)| (*f, p.clone())).collect();
        let bounds: std::collections::BTreeMap<u64, u64> =
            found.iter().map(|(first, last, _)| (*first, *last)).collect();
        let (chain, stale) = chain(bounds.into_iter().collect(), position);
        for (first, _) in &chain {
            // Renamed to the current naming, so `remove` finds it.
            let (path, current) = (&paths[first], self.file(dir, shard, *first));
            if *path != current {
                std::fs::rename(path, &current).map_err(|e| unreadable(path, &e))?;
            }
        }
        for (first, _) in stale {
            // Checkpointed already: a leftover is harmless (it never chains again), so only logged.
            remove_logged(&paths[&first]);
        }
        Ok(chain)
    }

    /// Records a batch's bounds durably before its objects are written; the
    /// batch must not be written when this fails (on a cluster: when this host
    /// no longer runs the delivery).
    pub fn write(&self, shard: u32, first: u64, last: u64) -> std::io::Result<()> {
        let text = format!("{first} {last}\n");
        match &self.place {
            Place::Dir(dir) => crate::io::write_durably(&self.file(dir, shard, first), text.as_bytes()),
            Place::Cluster { .. } => {
                let write = SharedWrite { key: self.key(shard, first), value: Some(text.into()), expected: None };
                self.commit(vec![write]).map_err(|e| std::io::Error::other(e.to_string()))
            }
        }
    }

    /// Forgets a batch once it is checkpointed. A plan left behind is harmless:
    /// its batch is behind the checkpoint, and [`Plans::pending`] removes it.
    pub fn remove(&self, shard: u32, first: u64) {
        match &self.place {
            Place::Dir(dir) => remove_logged(&self.file(dir, shard, first)),
            Place::Cluster { .. } => {
                let write = SharedWrite { key: self.key(shard, first), value: None, expected: None };
                match self.commit(vec![write]) {
                    Ok(()) => {}
                    // Taken over: the new host removes it once its checkpoint passes it.
                    Err(SharedError::LeaseLost { .. }) => {}
                    Err(e) => tracing::warn!(error = %e, shard, first, "a finished delivery plan could not be removed"),
                }
            }
        }
    }
}

/// A batch's first and last positions.
type Bounds = (u64, u64);

/// `first last`, as a plan holds them.
fn parse_bounds(text: &str) -> Option<(u64, u64)> {
    text.trim().split_once(' ').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
}

/// The plans that chain from `position` (each starting where the one before
/// ended), in order, and the others (checkpointed already).
fn chain(mut plans: Vec<Bounds>, position: u64) -> (VecDeque<Bounds>, Vec<Bounds>) {
    plans.sort_by_key(|(first, _)| *first);
    let (mut chain, mut stale) = (VecDeque::new(), Vec::new());
    let mut next = position;
    for (first, last) in plans {
        if first == next && last >= first {
            chain.push_back((first, last));
            next = last + 1;
        } else {
            stale.push((first, last));
        }
    }
    (chain, stale)
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
        let plans = Plans::open_dir(dir.path().to_owned(), "d".into()).ok().expect("open");
        for (shard, first, last) in [(0, 0, 4), (0, 5, 9), (0, 10, 12), (1, 0, 3)] {
            plans.write(shard, first, last).expect("plan");
        }
        // An older release's single plan file.
        std::fs::write(dir.path().join("d.2.plan"), "7 8\n").expect("legacy plan");
        assert_eq!(plans.pending(0, 5), Ok(VecDeque::from([(5, 9), (10, 12)])), "0..=4 was checkpointed");
        assert!(!plans.file(dir.path(), 0, 0).exists());
        assert_eq!(plans.pending(1, 0), Ok(VecDeque::from([(0, 3)])));
        assert_eq!(plans.pending(2, 7), Ok(VecDeque::from([(7, 8)])));
        plans.remove(2, 7);
        assert_eq!(plans.pending(2, 7), Ok(VecDeque::new()));
    }

    #[test]
    fn an_unreadable_plan_is_an_error_naming_the_file_not_a_silent_replan() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plans = Plans::open_dir(dir.path().to_owned(), "d".into()).ok().expect("open");
        plans.write(0, 0, 9).expect("plan");
        std::fs::write(plans.file(dir.path(), 0, 10), "garbage").expect("a torn plan");
        let error = plans.pending(0, 0).expect_err("an unreadable plan");
        assert!(matches!(error, PendingError::Unreadable(_)), "{error}");
        let error = error.to_string();
        assert!(
            error.contains(&plans.file(dir.path(), 0, 10).display().to_string()) && error.contains("garbage"),
            "{error}"
        );
        assert!(plans.file(dir.path(), 0, 10).exists(), "the plan is kept for the operator to look at");
    }
}
