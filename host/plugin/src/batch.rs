//! The columnar batch on the host side: building one from records, checking
//! one a plugin returned, and reading its records back.

use super::bindings::{Attribute, Batch};

/// One record, borrowed from a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Partition key.
    pub key: &'a str,
    /// Event time, ms since the Unix epoch.
    pub event_time_ms: i64,
    /// Payload.
    pub payload: &'a [u8],
}

impl Batch {
    /// An empty batch with room for `records` records of `bytes` payload bytes.
    pub fn with_capacity(records: usize, bytes: usize) -> Self {
        Batch {
            keys: Vec::with_capacity(records * 8),
            key_ends: Vec::with_capacity(records),
            event_times: Vec::with_capacity(records),
            payloads: Vec::with_capacity(bytes),
            payload_ends: Vec::with_capacity(records),
            attributes: Vec::new(),
        }
    }

    /// Appends a record.
    pub fn push(&mut self, key: &str, event_time_ms: i64, payload: &[u8]) {
        self.keys.extend_from_slice(key.as_bytes());
        self.key_ends.push(self.keys.len() as u32);
        self.event_times.push(event_time_ms);
        self.payloads.extend_from_slice(payload);
        self.payload_ends.push(self.payloads.len() as u32);
    }

    /// Appends a record with its attributes (name, value).
    pub fn push_with_attributes(
        &mut self,
        key: &str,
        event_time_ms: i64,
        payload: &[u8],
        attributes: &[(String, String)],
    ) {
        let index = self.len() as u32;
        self.push(key, event_time_ms, payload);
        for (name, value) in attributes {
            self.add_attribute(index, name, value);
        }
    }

    /// Attaches an attribute to record `index`.
    pub fn add_attribute(&mut self, index: u32, name: &str, value: &str) {
        self.attributes.push(Attribute { index, name: name.to_owned(), value: value.to_owned() });
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.event_times.len()
    }

    /// Whether there is no record.
    pub fn is_empty(&self) -> bool {
        self.event_times.is_empty()
    }

    /// Checks that a batch from a plugin is well formed, so reading it cannot go wrong.
    pub fn validate(&self) -> Result<(), String> {
        let n = self.event_times.len();
        if self.key_ends.len() != n || self.payload_ends.len() != n {
            return Err(format!(
                "batch columns disagree: {n} event times, {} key ends, {} payload ends",
                self.key_ends.len(),
                self.payload_ends.len()
            ));
        }
        check_ends("key", &self.key_ends, self.keys.len())?;
        check_ends("payload", &self.payload_ends, self.payloads.len())?;
        let keys = std::str::from_utf8(&self.keys).map_err(|e| format!("keys are not UTF-8: {e}"))?;
        let mut start = 0;
        for &end in &self.key_ends {
            if !keys.is_char_boundary(start) || !keys.is_char_boundary(end as usize) {
                return Err("a key ends inside a UTF-8 character".to_owned());
            }
            start = end as usize;
        }
        if let Some(a) = self.attributes.iter().find(|a| a.index as usize >= n) {
            return Err(format!("attribute `{}` names record {} of {n}", a.name, a.index));
        }
        Ok(())
    }

    /// A batch of only the records at `indices`, in that order (attributes are not kept).
    pub fn only(&self, indices: &[usize]) -> Batch {
        let records: Vec<RecordRef<'_>> = self.records().collect();
        let picked: Vec<&RecordRef<'_>> = indices.iter().filter_map(|&i| records.get(i)).collect();
        let mut batch = Batch::with_capacity(picked.len(), picked.iter().map(|r| r.payload.len()).sum());
        for r in picked {
            batch.push(r.key, r.event_time_ms, r.payload);
        }
        batch
    }

    /// The records, in order. Call [`Batch::validate`] first on untrusted batches.
    pub fn records(&self) -> impl Iterator<Item = RecordRef<'_>> {
        (0..self.len()).map(|i| self.record(i))
    }

    /// Record `i` (empty if out of range, as a malformed guest batch would be
    /// refused before it is read).
    pub fn record(&self, i: usize) -> RecordRef<'_> {
        let keys = std::str::from_utf8(&self.keys).unwrap_or("");
        let (k0, p0) = match i.checked_sub(1) {
            None => (0, 0),
            Some(before) => (
                self.key_ends.get(before).map_or(0, |&e| e as usize),
                self.payload_ends.get(before).map_or(0, |&e| e as usize),
            ),
        };
        let (k1, p1) =
            (self.key_ends.get(i).map_or(k0, |&e| e as usize), self.payload_ends.get(i).map_or(p0, |&e| e as usize));
        RecordRef {
            key: keys.get(k0..k1).unwrap_or(""),
            event_time_ms: self.event_times.get(i).copied().unwrap_or(0),
            payload: self.payloads.get(p0..p1).unwrap_or(&[]),
        }
    }
}

fn check_ends(what: &str, ends: &[u32], len: usize) -> Result<(), String> {
    let mut prev = 0u32;
    for (i, &end) in ends.iter().enumerate() {
        if end < prev || end as usize > len {
            return Err(format!("{what} end {end} of record {i} is out of order or past the data ({len} bytes)"));
        }
        prev = end;
    }
    if ends.last().map_or(0, |&e| e as usize) != len {
        return Err(format!("{what} data has {len} bytes but the last record ends at {prev}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_batches_validate_and_read_back() {
        let mut b = Batch::with_capacity(2, 8);
        b.push("k1", 1, b"abc");
        b.push("", 2, b"");
        b.push("é", 3, b"xyz");
        assert_eq!(b.validate(), Ok(()));
        let recs: Vec<_> = b.records().map(|r| (r.key, r.event_time_ms, r.payload)).collect();
        assert_eq!(recs, vec![("k1", 1, &b"abc"[..]), ("", 2, &b""[..]), ("é", 3, &b"xyz"[..])]);
    }

    #[test]
    fn malformed_batches_are_refused() {
        let mut b = Batch::with_capacity(1, 1);
        b.push("é", 1, b"a");
        b.key_ends[0] = 1;
        b.keys.truncate(1);
        assert!(b.validate().is_err(), "split UTF-8 key");
        let mut b = Batch::with_capacity(1, 1);
        b.push("k", 1, b"abc");
        b.payload_ends[0] = 99;
        assert!(b.validate().is_err(), "end past data");
        let mut b = Batch::with_capacity(1, 1);
        b.push("k", 1, b"abc");
        b.event_times.push(5);
        assert!(b.validate().is_err(), "columns disagree");
    }
}
