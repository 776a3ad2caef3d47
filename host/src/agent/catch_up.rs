//! Catching up in time order. When a flow starts on many files with a
//! backlog (twelve station logs sent from the beginning, an agent back after
//! an outage), sending one file after another makes the stream's time jump
//! back by hours at every file, and windows downstream close before the later
//! files arrive. With `record-time` set, the agent reads each record's time
//! and sends what it read from the files interleaved by it, so a catch-up
//! looks like the live stream it replays. Each file's own order is kept
//! (checkpoints move forward only), so a file whose times go back is sent
//! as written.

use regex::bytes::Regex;

/// Reads a record's time: a regex whose first capture group holds it, as
/// RFC 3339 (`2026-11-26T14:03:12.345Z`) or as milliseconds since 1970.
#[derive(Debug, Clone)]
pub struct RecordTime {
    pattern: Regex,
}

impl RecordTime {
    /// The reader of `pattern`; refused without a capture group.
    pub fn new(pattern: &str) -> Result<Self, String> {
        let pattern = Regex::new(pattern).map_err(|e| format!("not a valid regex: {e}"))?;
        if pattern.captures_len() < 2 {
            return Err("has no capture group: put the time in one, e.g. \"^[^,]*,([^,]+),\"".to_owned());
        }
        Ok(RecordTime { pattern })
    }

    /// The time of a record, ms since 1970; `None` when it has none this reads.
    pub fn of(&self, record: &[u8]) -> Option<i64> {
        let found = self.pattern.captures(record)?.get(1)?;
        let text = std::str::from_utf8(found.as_bytes()).ok()?.trim();
        if let Ok(ms) = text.parse::<i64>() {
            return Some(ms);
        }
        humantime::parse_rfc3339_weak(text).ok().map(crate::time::system_ms)
    }
}

/// The order to send records in, read from several files: merged by time,
/// each file's records in their own order. `records[i]` is (file, time); a
/// record without a time goes with the one before it in its file.
pub fn merge_by_time(records: &[(u64, Option<i64>)]) -> Vec<usize> {
    use std::cmp::Reverse;
    use std::collections::{BinaryHeap, HashMap};

    // Each file's records in order, each with the time it is sent by.
    let mut files: Vec<Vec<(usize, i64)>> = Vec::new();
    let mut file_of: HashMap<u64, usize> = HashMap::new();
    for (i, (file, time)) in records.iter().enumerate() {
        let at = *file_of.entry(*file).or_insert_with(|| {
            files.push(Vec::new());
            files.len() - 1
        });
        let previous = files[at].last().map_or(i64::MIN, |(_, t)| *t);
        files[at].push((i, time.unwrap_or(previous)));
    }
    // The file whose next record is earliest goes next (ties: the file read first).
    let mut next = vec![0usize; files.len()];
    let mut heads: BinaryHeap<Reverse<(i64, usize)>> =
        files.iter().enumerate().filter_map(|(f, list)| list.first().map(|(_, t)| Reverse((*t, f)))).collect();
    let mut order = Vec::with_capacity(records.len());
    while let Some(Reverse((_, f))) = heads.pop() {
        order.push(files[f][next[f]].0);
        next[f] += 1;
        if let Some((_, t)) = files[f].get(next[f]) {
            heads.push(Reverse((*t, f)));
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_interleaved_by_time_each_in_its_own_order() {
        // File 1 is an hour ahead of file 2 at first; file 2 has a record without a time.
        let records = [(1, Some(3_600)), (1, Some(3_601)), (2, Some(10)), (2, None), (2, Some(3_600)), (1, Some(5))];
        // At 3600 both files tie: the one read first goes first.
        assert_eq!(merge_by_time(&records), [2, 3, 0, 4, 1, 5], "file 1's record at 5 stays after its others");
        assert!(merge_by_time(&[]).is_empty());
    }

    #[test]
    fn the_time_is_read_from_the_capture_group() {
        let time = RecordTime::new("^[^,]*,([^,]+),").expect("a valid pattern");
        assert_eq!(time.of(b"T0017-000001,2026-11-26T14:03:12.345Z,17"), Some(1_795_701_792_345));
        assert_eq!(time.of(b"x,1795701792345,17"), Some(1_795_701_792_345));
        assert_eq!(time.of(b"no time here"), None);
        assert!(RecordTime::new("[").is_err());
        assert!(RecordTime::new("^[^,]*,[^,]+,").is_err_and(|e| e.contains("no capture group")));
    }
}
