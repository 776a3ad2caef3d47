//! A record as it is published: its key, event time, source and attributes in
//! front of its data, in one binary layout (little-endian lengths):
//!
//! ```text
//! version (1) | event time ms (i64) | key (u16 length, UTF-8) | source (u16 length, UTF-8, empty if none)
//! | attribute count (u8), each: name (u8 length) value (u16 length) | data (the rest)
//! ```
//!
//! The arrival time is not in it: it is the time JetStream stored the record.

use bytes::{BufMut as _, Bytes, BytesMut};
use weir_stream::{NewRecord, StoredRecord};

const VERSION: u8 = 1;

/// The published form of `record`; its event time defaults to now.
pub(crate) fn encode(record: &NewRecord) -> Bytes {
    let event_time_ms = record.event_time_ms.unwrap_or_else(super::now_ms);
    let source = record.source.as_deref().unwrap_or("");
    let attributes: usize = record.attributes.iter().map(|(n, v)| 3 + n.len() + v.len()).sum();
    let mut out = BytesMut::with_capacity(14 + record.key.len() + source.len() + attributes + record.data.len());
    out.put_u8(VERSION);
    out.put_i64_le(event_time_ms);
    // Checked by `check_record` before: keys, sources and attributes fit their lengths.
    out.put_u16_le(record.key.len() as u16);
    out.put_slice(record.key.as_bytes());
    out.put_u16_le(source.len() as u16);
    out.put_slice(source.as_bytes());
    out.put_u8(record.attributes.len() as u8);
    for (name, value) in &record.attributes {
        out.put_u8(name.len() as u8);
        out.put_slice(name.as_bytes());
        out.put_u16_le(value.len() as u16);
        out.put_slice(value.as_bytes());
    }
    out.put_slice(&record.data);
    out.freeze()
}

/// The record published as `payload`, stored at `sequence` of `shard` at `arrival_ms`.
pub(crate) fn decode(payload: Bytes, shard: u32, sequence: u64, arrival_ms: i64) -> Result<StoredRecord, String> {
    let mut r = Fields { payload: &payload, at: 0 };
    let version = r.take(1)?[0];
    if version != VERSION {
        return Err(format!("the record has layout {version}; this weir reads layout {VERSION}"));
    }
    let event_time_ms = i64::from_le_bytes(r.array()?);
    let key = r.text(2, "key")?;
    let source = r.text(2, "source")?;
    let count = r.take(1)?[0];
    let mut attributes = Vec::with_capacity(count as usize);
    for _ in 0..count {
        attributes.push((r.text(1, "attribute name")?, r.text(2, "attribute value")?));
    }
    let data = payload.slice(r.at..);
    Ok(StoredRecord {
        shard,
        sequence,
        key,
        event_time_ms,
        arrival_ms,
        data,
        source: (!source.is_empty()).then(|| weir_stream::Source::from(source)),
        attributes,
    })
}

/// Reads an envelope's fields in order.
struct Fields<'a> {
    payload: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let slice = self.payload.get(self.at..self.at + n);
        let slice = slice.ok_or_else(|| format!("the record is cut short at byte {}", self.at))?;
        self.at += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let bytes = self.take(N)?;
        bytes.try_into().map_err(|_| format!("the record is cut short at byte {}", self.at))
    }

    /// Text after its length, in `width` bytes (1 or 2).
    fn text(&mut self, width: usize, what: &str) -> Result<String, String> {
        let len = match width {
            1 => usize::from(self.take(1)?[0]),
            _ => usize::from(u16::from_le_bytes(self.array()?)),
        };
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| format!("its {what} is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_as_it_was_put() {
        let record = NewRecord {
            key: "plate-7".to_owned(),
            event_time_ms: Some(1_795_564_800_123),
            data: Bytes::from_static(b"{\"a\":1}"),
            source: Some("agent-3".into()),
            explicit_hash_key: None,
            attributes: vec![("weir-window".to_owned(), "w1".to_owned()), ("x".to_owned(), String::new())],
        };
        let stored = decode(encode(&record), 2, 41, 99).expect("decode");
        assert_eq!((stored.shard, stored.sequence, stored.arrival_ms), (2, 41, 99));
        assert_eq!(stored.key, record.key);
        assert_eq!(stored.event_time_ms, 1_795_564_800_123);
        assert_eq!(stored.data, record.data);
        assert_eq!(stored.source.as_deref(), Some("agent-3"));
        assert_eq!(stored.attributes, record.attributes);
        let bare = NewRecord { source: None, attributes: Vec::new(), ..record };
        assert_eq!(decode(encode(&bare), 0, 0, 0).expect("decode").source, None);
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_panic() {
        let whole = encode(&NewRecord {
            key: "k".to_owned(),
            event_time_ms: Some(1),
            data: Bytes::from_static(b"data"),
            source: None,
            explicit_hash_key: None,
            attributes: Vec::new(),
        });
        for cut in 0..whole.len() - 4 {
            assert!(decode(whole.slice(..cut), 0, 0, 0).is_err(), "cut at {cut}");
        }
        let mut other = whole.to_vec();
        other[0] = 9;
        assert!(decode(other.into(), 0, 0, 0).expect_err("layout").contains("layout 9"));
    }
}
