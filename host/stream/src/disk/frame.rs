//! The segment format: segment file names and frames
//! `magic | payload length u32 | CRC32C(payload) u32 | payload`, where the
//! payload holds the first sequence number, the record count, the arrival time
//! and the records. A record is `event time i64 | key length u16 | key |
//! data length u32 | data` in a frame with magic "WR" (format 1), and has
//! `source length u16 | source` after its key in a frame with magic "WS"
//! (format 2, written only for batches with a source, so the other frames
//! stay as they were), then `attribute count u8 | (name length u8 | name |
//! value length u16 | value)*` after its source in a frame with magic "WA"
//! (format 3, only for batches with attributes). All three are read.

use bytes::Bytes;

use crate::{NewRecord, Source, StoredRecord};

/// A frame whose records have no source (format 1).
pub(super) const MAGIC: [u8; 2] = *b"WR";
/// A frame whose records carry a source (format 2).
pub(super) const MAGIC_SOURCES: [u8; 2] = *b"WS";
/// A frame whose records carry a source and attributes (format 3).
pub(super) const MAGIC_ATTRIBUTES: [u8; 2] = *b"WA";
/// Magic, payload length, payload checksum.
pub(super) const HEADER: usize = 2 + 4 + 4;
/// First sequence, record count, arrival time.
pub(super) const PAYLOAD_HEADER: usize = 8 + 4 + 8;
/// A frame larger than this is damage, not data (a put holds at most 500 records of 1 MiB).
pub(super) const MAX_PAYLOAD: u32 = 600 << 20;

pub(super) fn segment_name(base: u64) -> String {
    format!("{base:020}.log")
}

/// The arrival time stored in a checked frame.
pub(super) fn frame_arrival(frame: &[u8]) -> i64 {
    let at = HEADER + 12;
    frame.get(at..at + 8).and_then(|b| b.try_into().ok()).map_or(i64::MIN, i64::from_le_bytes)
}

/// Checks one frame at the start of `bytes`: (first sequence, record count, frame length).
pub(super) fn parse_frame(bytes: &[u8]) -> Result<(u64, u32, usize), String> {
    if bytes.len() < HEADER {
        return Err("frame header cut short".to_owned());
    }
    if bytes[..2] != MAGIC && bytes[..2] != MAGIC_SOURCES && bytes[..2] != MAGIC_ATTRIBUTES {
        return Err("bad frame marker".to_owned());
    }
    let len = u32::from_le_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
    if len > MAX_PAYLOAD || (len as usize) < PAYLOAD_HEADER {
        return Err(format!("implausible frame length {len}"));
    }
    let end = HEADER + len as usize;
    if bytes.len() < end {
        return Err("frame cut short".to_owned());
    }
    let crc = u32::from_le_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]);
    let payload = &bytes[HEADER..end];
    if crc32c::crc32c(payload) != crc {
        return Err("checksum mismatch".to_owned());
    }
    let first = u64::from_le_bytes(payload[..8].try_into().map_err(|_| "short payload")?);
    let count = u32::from_le_bytes(payload[8..12].try_into().map_err(|_| "short payload")?);
    Ok((first, count, end))
}

/// Encodes records as one frame into `frame` (cleared first; a caller reuses it).
pub(super) fn encode_frame(frame: &mut Vec<u8>, first: u64, arrival_ms: i64, records: &[NewRecord]) {
    let attributes = records.iter().any(|r| !r.attributes.is_empty());
    let sources = attributes || records.iter().any(|r| r.source.is_some());
    let source_len = |r: &NewRecord| if sources { 2 + r.source.as_ref().map_or(0, |s| s.len()) } else { 0 };
    let attributes_len = |r: &NewRecord| {
        if attributes { 1 + r.attributes.iter().map(|(n, v)| 1 + n.len() + 2 + v.len()).sum::<usize>() } else { 0 }
    };
    let size: usize =
        records.iter().map(|r| 8 + 2 + r.key.len() + source_len(r) + attributes_len(r) + 4 + r.data.len()).sum();
    frame.clear();
    frame.reserve(HEADER + PAYLOAD_HEADER + size);
    frame.extend_from_slice(match (attributes, sources) {
        (true, _) => &MAGIC_ATTRIBUTES,
        (false, true) => &MAGIC_SOURCES,
        (false, false) => &MAGIC,
    });
    frame.extend_from_slice(&[0; 8]);
    frame.extend_from_slice(&first.to_le_bytes());
    frame.extend_from_slice(&(records.len() as u32).to_le_bytes());
    frame.extend_from_slice(&arrival_ms.to_le_bytes());
    for r in records {
        frame.extend_from_slice(&r.event_time_ms.unwrap_or(arrival_ms).to_le_bytes());
        frame.extend_from_slice(&(r.key.len() as u16).to_le_bytes());
        frame.extend_from_slice(r.key.as_bytes());
        if sources {
            // Checked by `check_record`: at most MAX_SOURCE_BYTES.
            let source = r.source.as_deref().unwrap_or_default();
            frame.extend_from_slice(&(source.len() as u16).to_le_bytes());
            frame.extend_from_slice(source.as_bytes());
        }
        if attributes {
            // Checked by `check_record`: at most MAX_ATTRIBUTES, names and values within their limits.
            frame.push(r.attributes.len() as u8);
            for (name, value) in &r.attributes {
                frame.push(name.len() as u8);
                frame.extend_from_slice(name.as_bytes());
                frame.extend_from_slice(&(value.len() as u16).to_le_bytes());
                frame.extend_from_slice(value.as_bytes());
            }
        }
        frame.extend_from_slice(&(r.data.len() as u32).to_le_bytes());
        frame.extend_from_slice(&r.data);
    }
    let len = (frame.len() - HEADER) as u32;
    let crc = crc32c::crc32c(&frame[HEADER..]);
    frame[2..6].copy_from_slice(&len.to_le_bytes());
    frame[6..10].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the records of a checked frame; their data are slices of it, not copies.
pub(super) fn decode_frame(frame: &Bytes, shard: u32) -> Result<Vec<StoredRecord>, String> {
    let attributes = frame.get(..2) == Some(&MAGIC_ATTRIBUTES[..]);
    let sources = attributes || frame.get(..2) == Some(&MAGIC_SOURCES[..]);
    let payload = frame.get(HEADER..).ok_or("short frame")?;
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let slice = payload.get(at..at + n).ok_or("record runs past its frame")?;
        at += n;
        Ok(slice)
    };
    let first = u64::from_le_bytes(take(8)?.try_into().map_err(|_| "first")?);
    let count = u32::from_le_bytes(take(4)?.try_into().map_err(|_| "count")?);
    let arrival_ms = i64::from_le_bytes(take(8)?.try_into().map_err(|_| "arrival")?);
    let mut records = Vec::with_capacity(count as usize);
    // Records of one frame mostly share a source: they share its allocation too.
    let mut last_source: Option<Source> = None;
    for i in 0..u64::from(count) {
        let event_time_ms = i64::from_le_bytes(take(8)?.try_into().map_err(|_| "event time")?);
        let key_len = u16::from_le_bytes(take(2)?.try_into().map_err(|_| "key length")?) as usize;
        let key = std::str::from_utf8(take(key_len)?).map_err(|_| "key is not UTF-8")?.to_owned();
        let source = if sources {
            let source_len = u16::from_le_bytes(take(2)?.try_into().map_err(|_| "source length")?) as usize;
            let source = std::str::from_utf8(take(source_len)?).map_err(|_| "source is not UTF-8")?;
            match &last_source {
                _ if source.is_empty() => None,
                Some(last) if **last == *source => Some(last.clone()),
                _ => {
                    last_source = Some(Source::from(source));
                    last_source.clone()
                }
            }
        } else {
            None
        };
        let mut record_attributes = Vec::new();
        if attributes {
            let count = take(1)?[0];
            for _ in 0..count {
                let name_len = take(1)?[0] as usize;
                let name = std::str::from_utf8(take(name_len)?).map_err(|_| "attribute name is not UTF-8")?.to_owned();
                let value_len = u16::from_le_bytes(take(2)?.try_into().map_err(|_| "attribute length")?) as usize;
                let value = std::str::from_utf8(take(value_len)?).map_err(|_| "attribute value is not UTF-8")?;
                record_attributes.push((name, value.to_owned()));
            }
        }
        let data_len = u32::from_le_bytes(take(4)?.try_into().map_err(|_| "data length")?) as usize;
        let data = frame.slice_ref(take(data_len)?);
        records.push(StoredRecord {
            shard,
            sequence: first + i,
            key,
            event_time_ms,
            arrival_ms,
            data,
            source,
            attributes: record_attributes,
        });
    }
    Ok(records)
}

/// Where a frame is in a shard's segments: the shard's index holds one per frame.
#[derive(Clone, Copy)]
pub(super) struct FrameRef {
    pub(super) first: u64,
    pub(super) count: u32,
    /// Which segment, counted from the first one ever (see `State::dropped_segments`).
    pub(super) segment: usize,
    pub(super) offset: u64,
    pub(super) len: u32,
    /// When its records arrived (never decreasing along the log).
    pub(super) arrival_ms: i64,
}
