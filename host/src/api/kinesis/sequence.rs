//! Sequence numbers as Kinesis shapes them: 56-digit decimal strings, unique in
//! the stream, increasing within a shard, ordered the same as numbers and as
//! strings. Inside, a record's place is its shard and its position there; this
//! module is the only place that turns the two into a Kinesis number and back.
//!
//! Layout (digits): `49` (this encoding, v1), the stream's tag (14: from its name
//! and creation time, so a stream made again under the same name does not take
//! the old one's numbers), the shard (8), the record's position plus one (20: 0
//! is the number just before a shard's first record, which a subscription that
//! has sent nothing yet continues after), and a check (12) over the rest, so
//! that a mistyped or hand-made number is refused rather than read from
//! somewhere else. A number of another stream or shard is refused, as Kinesis
//! refuses it, with `InvalidArgumentException`.
//!
//! Before this encoding weir answered plain positions ("0", "1", ...): a number of
//! up to 20 digits is still taken as one, so checkpoints kept by older clients
//! keep working.

use super::super::aws::AwsError;
use crate::stream::shard_id;

/// How many digits a sequence number has.
pub const DIGITS: usize = 56;
/// The first digits of this encoding.
const VERSION: &str = "49";
const TEN_14: u64 = 100_000_000_000_000;
const TEN_12: u64 = 1_000_000_000_000;

/// The sequence numbers of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sequences {
    tag: u64,
}

impl Sequences {
    /// The numbers of the stream `name` created at `created_ms`.
    pub fn of(name: &str, created_ms: i64) -> Sequences {
        let mut hash = Fnv::default();
        hash.write(name.as_bytes());
        hash.write(&created_ms.to_le_bytes());
        Sequences { tag: hash.finish() % TEN_14 }
    }

    /// The number of the record at `position` of shard `shard`.
    pub fn number(&self, shard: u32, position: u64) -> String {
        self.encode(shard, u128::from(position) + 1)
    }

    /// The number just before `position`: reading after it starts at `position`.
    pub fn before(&self, shard: u32, position: u64) -> String {
        self.encode(shard, u128::from(position))
    }

    fn encode(&self, shard: u32, value: u128) -> String {
        format!("{VERSION}{:014}{shard:08}{value:020}{:012}", self.tag, self.check(shard, value))
    }

    /// The position of the record `number` (of field `field`) names in shard `shard`.
    pub fn at(&self, field: &str, number: &str, shard: u32) -> Result<u64, AwsError> {
        Ok(match self.decode(field, number, shard)? {
            Decoded::Plain(position) => position,
            // At most 2^64: one less fits.
            Decoded::Encoded(value) => u64::try_from(value.saturating_sub(1)).unwrap_or(u64::MAX),
        })
    }

    /// The position after the record `number` names in shard `shard`.
    pub fn after(&self, field: &str, number: &str, shard: u32) -> Result<u64, AwsError> {
        Ok(match self.decode(field, number, shard)? {
            Decoded::Plain(position) => position.saturating_add(1),
            // Past the last position there is nothing to read: the end is as far as it goes.
            Decoded::Encoded(value) => u64::try_from(value).unwrap_or(u64::MAX),
        })
    }

    fn decode(&self, field: &str, number: &str, shard: u32) -> Result<Decoded, AwsError> {
        let invalid = || AwsError::invalid(format!("{field} {number} is not a sequence number of this stream"));
        if !number.bytes().all(|b| b.is_ascii_digit()) || number.is_empty() {
            return Err(invalid());
        }
        if number.len() <= 20 {
            // A plain position, as weir answered before this encoding.
            return number.parse().map(Decoded::Plain).map_err(|_| invalid());
        }
        if number.len() != DIGITS || !number.starts_with(VERSION) {
            return Err(invalid());
        }
        let digits = |from: usize, len: usize| number[from..from + len].parse::<u64>().map_err(|_| invalid());
        let (tag, of_shard, check) = (digits(2, 14)?, digits(16, 8)?, digits(44, 12)?);
        let value: u128 = number[24..44].parse().map_err(|_| invalid())?;
        let of_shard = u32::try_from(of_shard).map_err(|_| invalid())?;
        // Every position is below 2^64: the value (position + 1) is at most 2^64.
        if value > u128::from(u64::MAX) + 1 || tag != self.tag || check != self.check(of_shard, value) {
            return Err(invalid());
        }
        if of_shard != shard {
            return Err(AwsError::invalid(format!(
                "Invalid {field}. It encodes {}, while it was used in a call to a shard with {}",
                shard_id(of_shard),
                shard_id(shard)
            )));
        }
        Ok(Decoded::Encoded(value))
    }

    fn check(&self, shard: u32, value: u128) -> u64 {
        let mut hash = Fnv::default();
        hash.write(&self.tag.to_le_bytes());
        hash.write(&shard.to_le_bytes());
        hash.write(&value.to_le_bytes());
        hash.finish() % TEN_12
    }
}

/// What a number says.
enum Decoded {
    /// A plain position (weir before this encoding).
    Plain(u64),
    /// The encoded value: a position plus one.
    Encoded(u128),
}

/// FNV-1a, 64 bits: stable across builds and platforms (the numbers outlive the process).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_56_digits_ordered_within_a_shard_as_numbers_and_as_text() {
        let s = Sequences::of("toll-lines", 1_795_701_600_000);
        let numbers: Vec<String> = [0, 1, 9, 10, 99_999, u64::MAX].iter().map(|&p| s.number(3, p)).collect();
        // Digit strings of one length are ordered as text as they are as numbers.
        for pair in numbers.windows(2) {
            assert_eq!((pair[0].len(), pair[1].len()), (DIGITS, DIGITS));
            assert!(pair[0] < pair[1], "{} < {}", pair[0], pair[1]);
        }
        for (n, p) in numbers.iter().zip([0, 1, 9, 10, 99_999, u64::MAX]) {
            assert_eq!(s.at("StartingSequenceNumber", n, 3).map_err(|e| e.kind), Ok(p));
            assert_eq!(s.after("StartingSequenceNumber", n, 3).map_err(|e| e.kind), Ok(p.saturating_add(1)));
        }
        // Just before the first record: reading after it starts at the first.
        let before = s.before(3, 0);
        assert!(before < numbers[0]);
        assert_eq!(s.after("ContinuationSequenceNumber", &before, 3).map_err(|e| e.kind), Ok(0));
    }

    #[test]
    fn a_number_of_another_shard_or_stream_or_a_mistyped_one_is_refused() {
        let s = Sequences::of("toll-lines", 1_795_701_600_000);
        let n = s.number(1, 42);
        let other_shard = s.at("StartingSequenceNumber", &n, 0).expect_err("another shard");
        assert_eq!(other_shard.kind, "InvalidArgumentException");
        assert!(other_shard.message.contains("It encodes shardId-000000000001"), "{}", other_shard.message);
        let again = Sequences::of("toll-lines", 1_795_701_600_001);
        assert!(again.at("StartingSequenceNumber", &n, 1).is_err(), "a stream made again");
        let mut typo = n.clone().into_bytes();
        typo[40] = if typo[40] == b'9' { b'8' } else { typo[40] + 1 };
        let typo = String::from_utf8(typo).unwrap_or_default();
        assert!(s.at("StartingSequenceNumber", &typo, 1).is_err(), "a mistyped number");
        assert!(s.at("StartingSequenceNumber", "12a", 1).is_err());
        // Plain positions, as weir answered before: still read.
        assert_eq!(s.at("StartingSequenceNumber", "17", 1).map_err(|e| e.kind), Ok(17));
        assert_eq!(s.after("StartingSequenceNumber", "17", 1).map_err(|e| e.kind), Ok(18));
    }
}
