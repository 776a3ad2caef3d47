//! Window results and their revisions, for plugins that read an aggregator's
//! output. The host says which window each result is for and which revision
//! of it (attributes `weir-window-start`, `weir-window-end`, `weir-revision`):
//! 0 when the window closed on time, then 1, 2, ... each time late records
//! changed it, every revision carrying the key's whole value so far. A result
//! can also come twice (batches are delivered at least once). [`apply_once`]
//! applies each (window, revision) once, in order, and gives what changed.

use crate::{Error, Record, host};

/// Which window a result is for, and which revision of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pane {
    /// First millisecond of the window (ms since the Unix epoch).
    pub start_ms: i64,
    /// First millisecond after it.
    pub end_ms: i64,
    /// 0 on time; 1, 2, ... for the revisions late records caused.
    pub revision: u32,
}

impl Pane {
    /// The pane of an aggregator's result; `None` for a record that is not one.
    pub fn of(record: &Record<'_>) -> Option<Pane> {
        Some(Pane {
            start_ms: record.attribute("weir-window-start")?.parse().ok()?,
            end_ms: record.attribute("weir-window-end")?.parse().ok()?,
            revision: record.attribute("weir-revision")?.parse().ok()?,
        })
    }
}

/// What [`apply_once`] did with a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A revision newer than the one applied before (or the first).
    Changed {
        /// The value applied so far (0 for the first).
        before: i64,
        /// What to add: the new value less `before`.
        delta: i64,
    },
    /// This revision, or a newer one, was applied already: nothing to do.
    Seen,
}

/// Conditional-put attempts before the batch is retried.
const ATTEMPTS: usize = 16;

/// Applies a numeric window result for `key` once per (window, revision): the
/// state table `table` keeps, per key and window, the last revision applied and
/// its value (item `<key>|<window start>`, text `<revision> <value>`). A repeat
/// or an older revision is [`Applied::Seen`]; a newer one replaces the value
/// and gives the difference, so a running total stays exact whatever the order.
/// In a notifier, the item and what the plugin does with the delta commit
/// together with its batch.
pub fn apply_once(table: &str, key: &str, pane: &Pane, value: i64) -> Result<Applied, Error> {
    let item = format!("{key}|{}", pane.start_ms);
    for _ in 0..ATTEMPTS {
        let current = host::get(table, &item)?;
        let applied = match &current {
            None => None,
            Some(bytes) => Some(
                parse(bytes)
                    .ok_or_else(|| Error::failed(format!("item `{item}` of `{table}` is not `<revision> <value>`")))?,
            ),
        };
        if applied.is_some_and(|(revision, _)| revision >= pane.revision) {
            return Ok(Applied::Seen);
        }
        let before = applied.map_or(0, |(_, value)| value);
        let text = format!("{} {value}", pane.revision);
        if host::put_if(table, &item, current.as_deref(), text.as_bytes())? {
            return Ok(Applied::Changed { before, delta: value - before });
        }
    }
    Err(Error::transient(format!("item `{item}` of `{table}` kept changing; the batch will be retried")))
}

fn parse(bytes: &[u8]) -> Option<(u32, i64)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (revision, value) = text.split_once(' ')?;
    Some((revision.parse().ok()?, value.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Batch;
    use crate::testing;

    #[test]
    fn a_result_is_applied_once_per_revision_and_gives_what_changed() {
        testing::reset();
        let pane = |revision| Pane { start_ms: 600_000, end_ms: 1_200_000, revision };
        assert_eq!(apply_once("t", "C1", &pane(0), 600), Ok(Applied::Changed { before: 0, delta: 600 }));
        assert_eq!(apply_once("t", "C1", &pane(0), 600), Ok(Applied::Seen), "a repeat");
        assert_eq!(apply_once("t", "C1", &pane(2), 900), Ok(Applied::Changed { before: 600, delta: 300 }));
        assert_eq!(apply_once("t", "C1", &pane(1), 750), Ok(Applied::Seen), "older than the one applied");
        assert_eq!(apply_once("t", "C2", &pane(0), 5), Ok(Applied::Changed { before: 0, delta: 5 }), "per key");
        assert_eq!(testing::item("t", "C1|600000").as_deref(), Some(&b"2 900"[..]));
    }

    #[test]
    fn the_pane_is_read_from_the_results_attributes() {
        let mut batch = Batch::new();
        batch.push("C1", 0, b"{}");
        for (name, value) in [("weir-window-start", "600000"), ("weir-window-end", "1200000"), ("weir-revision", "1")] {
            batch.set_attribute(name, value);
        }
        batch.push("C2", 0, b"{}");
        let records: Vec<Record<'_>> = batch.iter().collect();
        assert_eq!(Pane::of(&records[0]), Some(Pane { start_ms: 600_000, end_ms: 1_200_000, revision: 1 }));
        assert_eq!(Pane::of(&records[1]), None, "not an aggregator's result");
    }
}
