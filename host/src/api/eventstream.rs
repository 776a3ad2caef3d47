//! The `application/vnd.amazon.eventstream` framing AWS uses to push events on
//! one response (Kinesis `SubscribeToShard`): each message is a prelude (total
//! length, headers length, their CRC32), headers (name, type 7 = string, value),
//! the payload, and a CRC32 of everything before it. All integers big-endian.

/// The media type of an event stream.
pub const CONTENT_TYPE: &str = "application/vnd.amazon.eventstream";

/// A header value of type string.
const STRING: u8 = 7;

/// One message with string headers and a payload.
pub fn message(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut encoded_headers = Vec::new();
    for (name, value) in headers {
        // Names are at most 255 bytes and values 32 KiB: the ones weir sends are short constants.
        encoded_headers.push(name.len().min(255) as u8);
        encoded_headers.extend_from_slice(&name.as_bytes()[..name.len().min(255)]);
        encoded_headers.push(STRING);
        let value = &value.as_bytes()[..value.len().min(u16::MAX as usize)];
        encoded_headers.extend_from_slice(&(value.len() as u16).to_be_bytes());
        encoded_headers.extend_from_slice(value);
    }
    let total = 12 + encoded_headers.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(encoded_headers.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&encoded_headers);
    out.extend_from_slice(payload);
    let message_crc = crc32fast::hash(&out);
    out.extend_from_slice(&message_crc.to_be_bytes());
    out
}

/// An event of type `event_type`, its payload encoded as `content_type` says.
pub fn event(event_type: &str, content_type: &str, payload: &[u8]) -> Vec<u8> {
    message(&[(":event-type", event_type), (":content-type", content_type), (":message-type", "event")], payload)
}

/// An error that ends the stream, as AWS names its exceptions; the payload
/// (`{"message": ...}`) encoded as `content_type` says.
pub fn exception(kind: &str, content_type: &str, payload: &[u8]) -> Vec<u8> {
    message(&[(":exception-type", kind), (":content-type", content_type), (":message-type", "exception")], payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_carries_its_lengths_and_checksums() {
        let m = event("SubscribeToShardEvent", "application/json", b"{}");
        let total = u32::from_be_bytes([m[0], m[1], m[2], m[3]]) as usize;
        let headers = u32::from_be_bytes([m[4], m[5], m[6], m[7]]) as usize;
        assert_eq!(total, m.len());
        assert_eq!(u32::from_be_bytes([m[8], m[9], m[10], m[11]]), crc32fast::hash(&m[..8]));
        assert_eq!(&m[12 + headers..total - 4], b"{}");
        assert_eq!(
            u32::from_be_bytes([m[total - 4], m[total - 3], m[total - 2], m[total - 1]]),
            crc32fast::hash(&m[..total - 4])
        );
        // The first header: `:event-type`, a string.
        assert_eq!(m[12] as usize, ":event-type".len());
        assert_eq!(&m[13..24], b":event-type");
        assert_eq!(m[24], STRING);
    }
}
