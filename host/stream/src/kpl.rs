//! Records the Kinesis Producer Library aggregated: many user records in one
//! Kinesis record, as the magic bytes `F3 89 9A C2`, an `AggregatedRecord`
//! protobuf (a table of partition keys, one of explicit hash keys, and the
//! records, each naming its keys by index), and the MD5 of the protobuf.
//!
//! Streams keep such a record as it came (Kinesis API readers de-aggregate it
//! themselves, as the KCL does); weir's own readers take it apart here into its
//! user records, each with its own partition key, its explicit hash key and its
//! sub-sequence number as attributes ([`SUB_SEQUENCE`], [`EXPLICIT_HASH_KEY`]),
//! and the container's shard, sequence, times and producer.

use md5::Digest as _;

use crate::StoredRecord;

/// The first bytes of an aggregated record.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
/// The attribute holding a user record's index in its aggregate.
pub const SUB_SEQUENCE: &str = "weir-sub-sequence";
/// The attribute holding a user record's explicit hash key, when it has one.
pub const EXPLICIT_HASH_KEY: &str = "weir-explicit-hash-key";

/// What a stored record holds.
#[derive(Debug)]
pub enum Contents {
    /// A plain record.
    Plain,
    /// An aggregate's user records, in order.
    Aggregated(Vec<StoredRecord>),
    /// Something that starts like an aggregate but is not a valid one: why.
    Corrupt(String),
}

/// Looks inside `record`.
pub fn contents(record: &StoredRecord) -> Contents {
    let data = &record.data[..];
    if data.len() < MAGIC.len() + 16 || data[..MAGIC.len()] != MAGIC {
        return Contents::Plain;
    }
    let (message, digest) = data[MAGIC.len()..].split_at(data.len() - MAGIC.len() - 16);
    if md5::Md5::digest(message)[..] != digest[..] {
        return Contents::Corrupt("a KPL aggregated record whose MD5 does not match its contents".to_owned());
    }
    match decode(message) {
        Ok(aggregate) => aggregate.user_records(record).map_or_else(Contents::Corrupt, Contents::Aggregated),
        Err(e) => Contents::Corrupt(format!("a KPL aggregated record that is not a valid AggregatedRecord: {e}")),
    }
}

/// An `AggregatedRecord`, its byte fields borrowed.
#[derive(Default)]
struct Aggregate<'a> {
    partition_keys: Vec<&'a [u8]>,
    explicit_hash_keys: Vec<&'a [u8]>,
    records: Vec<UserRecord<'a>>,
}

#[derive(Default)]
struct UserRecord<'a> {
    partition_key: Option<u64>,
    explicit_hash_key: Option<u64>,
    data: Option<&'a [u8]>,
}

impl Aggregate<'_> {
    fn user_records(&self, container: &StoredRecord) -> Result<Vec<StoredRecord>, String> {
        let text = |bytes: &[u8], what: &str| {
            std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| format!("a KPL {what} that is not UTF-8"))
        };
        let mut out = Vec::with_capacity(self.records.len());
        for (index, r) in self.records.iter().enumerate() {
            let key_index = r.partition_key.ok_or("a KPL user record without a partition key index")?;
            let key = self.partition_keys.get(key_index as usize).ok_or_else(|| {
                format!("KPL user record {index} names partition key {key_index}, which is not in its table")
            })?;
            let mut attributes = container.attributes.clone();
            attributes.push((SUB_SEQUENCE.to_owned(), index.to_string()));
            if let Some(h) = r.explicit_hash_key {
                let hash = self.explicit_hash_keys.get(h as usize).ok_or_else(|| {
                    format!("KPL user record {index} names explicit hash key {h}, which is not in its table")
                })?;
                attributes.push((EXPLICIT_HASH_KEY.to_owned(), text(hash, "explicit hash key")?));
            }
            let data = r.data.ok_or_else(|| format!("KPL user record {index} has no data"))?;
            out.push(StoredRecord {
                key: text(key, "partition key")?,
                data: container.data.slice_ref(data),
                attributes,
                ..container.clone()
            });
        }
        Ok(out)
    }
}

/// Decodes the protobuf of an `AggregatedRecord` (fields 1 and 2: key tables, 3: records).
fn decode(mut bytes: &[u8]) -> Result<Aggregate<'_>, String> {
    let mut aggregate = Aggregate::default();
    while !bytes.is_empty() {
        let (field, value) = next_field(&mut bytes)?;
        match (field, value) {
            (1, Value::Bytes(b)) => aggregate.partition_keys.push(b),
            (2, Value::Bytes(b)) => aggregate.explicit_hash_keys.push(b),
            (3, Value::Bytes(mut b)) => {
                let mut record = UserRecord::default();
                while !b.is_empty() {
                    match next_field(&mut b)? {
                        (1, Value::Varint(v)) => record.partition_key = Some(v),
                        (2, Value::Varint(v)) => record.explicit_hash_key = Some(v),
                        (3, Value::Bytes(d)) => record.data = Some(d),
                        _ => {} // tags, and fields of later versions
                    }
                }
                aggregate.records.push(record);
            }
            _ => {}
        }
    }
    Ok(aggregate)
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The next field of a protobuf message: its number and value.
fn next_field<'a>(bytes: &mut &'a [u8]) -> Result<(u64, Value<'a>), String> {
    let tag = varint(bytes)?;
    let value = match tag & 7 {
        0 => Value::Varint(varint(bytes)?),
        1 | 5 => {
            let len = if tag & 7 == 1 { 8 } else { 4 };
            if bytes.len() < len {
                return Err("a fixed-size field runs past the end".to_owned());
            }
            *bytes = &bytes[len..];
            Value::Fixed
        }
        2 => {
            let len = usize::try_from(varint(bytes)?).map_err(|_| "a length does not fit")?;
            if bytes.len() < len {
                return Err("a field runs past the end".to_owned());
            }
            let (value, rest) = bytes.split_at(len);
            *bytes = rest;
            Value::Bytes(value)
        }
        other => return Err(format!("wire type {other} is not one protobuf writes here")),
    };
    Ok((tag >> 3, value))
}

fn varint(bytes: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first().ok_or("a number runs past the end")?;
        *bytes = rest;
        value |= u64::from(b & 0x7F) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("a number longer than 64 bits".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(number: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(number << 3 | 2) as u8, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    /// An aggregate of `(key index, data)` records over the key table `keys`.
    fn aggregate(keys: &[&str], records: &[(u8, &str)]) -> Vec<u8> {
        let mut message = Vec::new();
        for k in keys {
            message.extend(field(1, k.as_bytes()));
        }
        for (key, data) in records {
            let mut record = vec![1 << 3, *key];
            record.extend(field(3, data.as_bytes()));
            message.extend(field(3, &record));
        }
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&message);
        out.extend_from_slice(&md5::Md5::digest(&message));
        out
    }

    fn stored(data: Vec<u8>) -> StoredRecord {
        StoredRecord {
            shard: 0,
            sequence: 7,
            key: "container".into(),
            event_time_ms: 1,
            arrival_ms: 2,
            data: bytes::Bytes::from(data),
            source: None,
            attributes: Vec::new(),
        }
    }

    #[test]
    fn an_aggregate_comes_apart_into_its_user_records_with_their_own_keys() {
        let record = stored(aggregate(&["a", "b"], &[(0, "one"), (1, "two"), (0, "three")]));
        let Contents::Aggregated(users) = contents(&record) else { panic!("an aggregate") };
        let seen: Vec<(&str, &[u8], u64)> = users.iter().map(|u| (u.key.as_str(), &u.data[..], u.sequence)).collect();
        assert_eq!(seen, vec![("a", &b"one"[..], 7), ("b", &b"two"[..], 7), ("a", &b"three"[..], 7)]);
        assert_eq!(users[2].attributes, vec![(SUB_SEQUENCE.to_owned(), "2".to_owned())]);
    }

    #[test]
    fn plain_records_stay_and_broken_aggregates_say_why() {
        assert!(matches!(contents(&stored(b"a plain record of some length".to_vec())), Contents::Plain));
        let mut bad_digest = aggregate(&["a"], &[(0, "x")]);
        let last = bad_digest.len() - 1;
        bad_digest[last] ^= 1;
        let Contents::Corrupt(why) = contents(&stored(bad_digest)) else { panic!("corrupt") };
        assert!(why.contains("MD5"), "{why}");
        let Contents::Corrupt(why) = contents(&stored(aggregate(&["a"], &[(3, "x")]))) else { panic!("corrupt") };
        assert!(why.contains("names partition key 3"), "{why}");
    }
}
