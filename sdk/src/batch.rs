//! Columnar batches as plugin authors see them: [`Record`] views to read,
//! [`Output`] to write.

/// A batch of records in the columnar layout of the `weir:plugin/types.batch` WIT record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub(crate) keys: Vec<u8>,
    pub(crate) key_ends: Vec<u32>,
    pub(crate) event_times: Vec<i64>,
    pub(crate) payloads: Vec<u8>,
    pub(crate) payload_ends: Vec<u32>,
    pub(crate) attributes: Vec<(u32, String, String)>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.event_times.len()
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.event_times.is_empty()
    }

    /// Append a record.
    pub fn push(&mut self, key: &str, event_time_ms: i64, payload: &[u8]) {
        self.payloads.extend_from_slice(payload);
        self.push_header(key, event_time_ms);
    }

    /// Attach an attribute to the most recently pushed record.
    pub fn set_attribute(&mut self, name: &str, value: &str) {
        if let Some(last) = self.len().checked_sub(1) {
            self.attributes.push((last as u32, name.to_owned(), value.to_owned()));
        }
    }

    /// Records the key and time of a record whose payload was already written.
    fn push_header(&mut self, key: &str, event_time_ms: i64) {
        self.keys.extend_from_slice(key.as_bytes());
        self.key_ends.push(self.keys.len() as u32);
        self.event_times.push(event_time_ms);
        self.payload_ends.push(self.payloads.len() as u32);
    }

    /// Iterate over the records. Keys that are not valid UTF-8 read as `""`
    /// (the host only sends UTF-8 keys).
    pub fn iter(&self) -> impl Iterator<Item = Record<'_>> {
        let keys = std::str::from_utf8(&self.keys).unwrap_or("");
        let mut attr_pos = 0;
        (0..self.len()).map(move |i| {
            let key_start = if i == 0 { 0 } else { self.key_ends[i - 1] as usize };
            let pay_start = if i == 0 { 0 } else { self.payload_ends[i - 1] as usize };
            let key = keys.get(key_start..self.key_ends[i] as usize).unwrap_or("");
            let payload = self.payloads.get(pay_start..self.payload_ends[i] as usize).unwrap_or(&[]);
            let attr_start = attr_pos;
            while attr_pos < self.attributes.len() && self.attributes[attr_pos].0 as usize <= i {
                attr_pos += 1;
            }
            let attributes = &self.attributes[attr_start..attr_pos];
            Record { key, event_time_ms: self.event_times[i], payload, attributes, index: i as u32 }
        })
    }

    /// Keeps the first `len` records, dropping the rest.
    pub(crate) fn truncate(&mut self, len: usize) {
        if len >= self.len() {
            return;
        }
        let key_end = if len == 0 { 0 } else { self.key_ends[len - 1] as usize };
        let pay_end = if len == 0 { 0 } else { self.payload_ends[len - 1] as usize };
        self.keys.truncate(key_end);
        self.payloads.truncate(pay_end);
        self.key_ends.truncate(len);
        self.payload_ends.truncate(len);
        self.event_times.truncate(len);
        self.attributes.retain(|(i, _, _)| (*i as usize) < len);
    }

    /// Builds a batch from its columns; used by the bindings glue.
    #[doc(hidden)]
    pub fn from_columns(
        keys: Vec<u8>,
        key_ends: Vec<u32>,
        event_times: Vec<i64>,
        payloads: Vec<u8>,
        payload_ends: Vec<u32>,
        attributes: Vec<(u32, String, String)>,
    ) -> Self {
        Self { keys, key_ends, event_times, payloads, payload_ends, attributes }
    }

    /// Splits a batch into its columns; used by the bindings glue.
    #[doc(hidden)]
    #[allow(clippy::type_complexity, reason = "mirrors the WIT record field by field")]
    pub fn into_columns(self) -> (Vec<u8>, Vec<u32>, Vec<i64>, Vec<u8>, Vec<u32>, Vec<(u32, String, String)>) {
        (self.keys, self.key_ends, self.event_times, self.payloads, self.payload_ends, self.attributes)
    }
}

/// One record of a batch, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    key: &'a str,
    event_time_ms: i64,
    payload: &'a [u8],
    attributes: &'a [(u32, String, String)],
    index: u32,
}

impl<'a> Record<'a> {
    /// The partition key.
    pub fn key(&self) -> &'a str {
        self.key
    }

    /// Event time, milliseconds since the Unix epoch (UTC).
    pub fn event_time_ms(&self) -> i64 {
        self.event_time_ms
    }

    /// The payload bytes.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The payload as UTF-8 text, if it is.
    pub fn text(&self) -> Option<&'a str> {
        std::str::from_utf8(self.payload).ok()
    }

    /// The value of an attribute of this record.
    pub fn attribute(&self, name: &str) -> Option<&'a str> {
        self.attributes.iter().find(|(_, n, _)| n == name).map(|(_, _, v)| v.as_str())
    }

    /// Position of the record in its batch.
    pub fn index(&self) -> u32 {
        self.index
    }
}

/// Where a plugin writes its output records.
#[derive(Debug, Default)]
pub struct Output {
    pub(crate) batch: Batch,
}

impl Output {
    /// Emit one output record.
    pub fn emit(&mut self, key: &str, event_time_ms: i64, payload: &[u8]) {
        self.batch.push(key, event_time_ms, payload);
    }

    /// Emit one output record whose payload is written in place by `write`,
    /// without an intermediate buffer.
    pub fn emit_with(&mut self, key: &str, event_time_ms: i64, write: impl FnOnce(&mut Vec<u8>)) {
        write(&mut self.batch.payloads);
        self.batch.push_header(key, event_time_ms);
    }

    /// Attach an attribute to the last emitted record.
    pub fn set_attribute(&mut self, name: &str, value: &str) {
        self.batch.set_attribute(name, value);
    }

    /// Number of records emitted so far.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    /// Whether nothing was emitted yet.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// The emitted records.
    pub fn into_batch(self) -> Batch {
        self.batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_columns() {
        let mut b = Batch::new();
        b.push("a", 1, b"one");
        b.set_attribute("x", "1");
        b.push("", 2, b"");
        b.push("ccc", 3, b"three");
        b.set_attribute("y", "3");
        let recs: Vec<_> =
            b.iter().map(|r| (r.key(), r.event_time_ms(), r.payload(), r.attribute("x"), r.attribute("y"))).collect();
        assert_eq!(
            recs,
            vec![
                ("a", 1, &b"one"[..], Some("1"), None),
                ("", 2, &b""[..], None, None),
                ("ccc", 3, &b"three"[..], None, Some("3")),
            ]
        );
        b.truncate(1);
        assert_eq!(b.len(), 1);
        assert_eq!(b.payloads, b"one");
        assert_eq!(b.attributes.len(), 1);
    }
}
