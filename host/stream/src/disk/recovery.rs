//! Recovery on open: a segment's frames read back and checked; a torn tail
//! truncated, damage followed by valid frames refused.

use std::fs::File;
use std::path::Path;

use crate::StreamError;

use super::failure::corrupt;
use super::frame::{FrameRef, frame_arrival, parse_frame};

/// Reads a segment's frames into the shard's index (`frames`, from sequence
/// `next` on, which advances); truncates a torn tail of the last segment;
/// refuses damage that valid frames follow. Returns the valid length and the
/// arrival time of the newest record.
pub(super) fn recover_segment(
    path: &Path,
    file: &File,
    is_last: bool,
    index: usize,
    next: &mut u64,
    frames: &mut Vec<FrameRef>,
) -> Result<(u64, i64), StreamError> {
    let bytes = std::fs::read(path).map_err(|e| corrupt(path, 0, format!("cannot read: {e}")))?;
    let mut offset = 0usize;
    let mut newest_ms = i64::MIN;
    while offset < bytes.len() {
        match parse_frame(&bytes[offset..]) {
            Ok((first, count, len)) if first == *next => {
                newest_ms = newest_ms.max(frame_arrival(&bytes[offset..]));
                frames.push(FrameRef {
                    first,
                    count,
                    segment: index,
                    offset: offset as u64,
                    len: len as u32,
                    arrival_ms: newest_ms,
                });
                *next += u64::from(count);
                offset += len;
            }
            Ok((first, ..)) => {
                return Err(corrupt(
                    path,
                    offset as u64,
                    format!("frame starts at sequence {first}, expected {}", *next),
                ));
            }
            Err(reason) => {
                let valid_after = (offset + 1..bytes.len()).any(|p| parse_frame(&bytes[p..]).is_ok());
                if !is_last || valid_after {
                    return Err(corrupt(path, offset as u64, reason));
                }
                tracing::warn!(file = %path.display(), offset, dropped_bytes = bytes.len() - offset, "truncating a torn write at the end of the stream log");
                file.set_len(offset as u64)
                    .map_err(|e| corrupt(path, offset as u64, format!("cannot truncate: {e}")))?;
                file.sync_all().map_err(|e| corrupt(path, offset as u64, format!("cannot sync: {e}")))?;
                return Ok((offset as u64, newest_ms));
            }
        }
    }
    Ok((bytes.len() as u64, newest_ms))
}
