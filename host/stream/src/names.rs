//! Names that reach storage, and the one way a name becomes a path.
//!
//! Every name a client, a plugin or a manifest gives (streams, delivery
//! streams, consumers, state tables, channels, inbox recipients, stages) is
//! checked where it enters, by [`check`], with an error that names the field.
//! The rule is the one the Kinesis API uses for stream names: 1 to 128 (64 for
//! delivery streams, as Firehose) of `a-z A-Z 0-9 _ . -`, and never `.` or `..`
//! alone. Item keys of state tables are values, not names: any text of 1 to
//! [`MAX_ITEM_KEY_BYTES`] bytes ([`check_item_key`]).
//!
//! Storage turns a name into a path only through [`child_path`], which refuses
//! anything that is not a single plain path component, so no caller can reach
//! outside its folder whatever it was handed.

use std::path::{Component, Path, PathBuf};

/// The longest item key of a state table, in bytes (as DynamoDB's partition key).
pub const MAX_ITEM_KEY_BYTES: usize = 2048;

/// What a name names; each kind has its longest length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// A stream (Kinesis `StreamName`).
    Stream,
    /// A delivery stream (Firehose `DeliveryStreamName`).
    DeliveryStream,
    /// A stream consumer (Kinesis `ConsumerName`, a stage's checkpoint).
    Consumer,
    /// A state or reference table.
    Table,
    /// A notification channel.
    Channel,
    /// A recipient of notifications (an inbox).
    Recipient,
    /// A pipeline stage.
    Stage,
}

impl NameKind {
    /// The longest name of this kind, in characters.
    pub fn max_len(self) -> usize {
        match self {
            NameKind::DeliveryStream => 64,
            _ => 128,
        }
    }
}

/// A name that breaks its kind's rule; the message says which field and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {shown} is not a valid name: {rule}")]
pub struct InvalidName {
    /// The field that carried it (`StreamName`, `recipient`, ...).
    pub field: String,
    shown: String,
    rule: String,
}

/// Checks a name of `kind` given in `field`.
pub fn check(kind: NameKind, field: &str, name: &str) -> Result<(), InvalidName> {
    let max = kind.max_len();
    let ok_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !name.is_empty() && name.len() <= max && ok_chars && name != "." && name != ".." {
        return Ok(());
    }
    Err(InvalidName {
        field: field.to_owned(),
        shown: shown(name),
        rule: format!("use 1 to {max} of the characters a-z, A-Z, 0-9, `_`, `.` and `-` (and not `.` or `..` alone)"),
    })
}

/// Checks an item key of a state table given in `field`.
pub fn check_item_key(field: &str, key: &str) -> Result<(), InvalidName> {
    if !key.is_empty() && key.len() <= MAX_ITEM_KEY_BYTES {
        return Ok(());
    }
    Err(InvalidName {
        field: field.to_owned(),
        shown: shown(key),
        rule: format!("an item key is 1 to {MAX_ITEM_KEY_BYTES} bytes of text"),
    })
}

/// A name as an error shows it: quoted, control characters escaped, long ones cut.
fn shown(name: &str) -> String {
    const SHOWN: usize = 64;
    let cut: String = name.chars().take(SHOWN).collect();
    let more = name.chars().count() > SHOWN;
    format!("{:?}{}", cut, if more { format!(" ({} characters)", name.chars().count()) } else { String::new() })
}

/// A name that cannot be a file name in a folder of weir's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{shown} cannot be a file name: it must be one plain path component")]
pub struct UnsafePath {
    shown: String,
}

/// `dir/name`, if `name` is one plain path component: not empty, not `.` or
/// `..`, no `/`, `\`, NUL or other control character, at most 255 bytes.
pub fn child_path(dir: &Path, name: &str) -> Result<PathBuf, UnsafePath> {
    let plain = !name.is_empty()
        && name.len() <= 255
        && !name.chars().any(|c| c == '/' || c == '\\' || c.is_control())
        && matches!(Path::new(name).components().collect::<Vec<_>>().as_slice(), [Component::Normal(n)] if *n == name);
    if plain { Ok(dir.join(name)) } else { Err(UnsafePath { shown: shown(name) }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names that must never reach storage, of every shape a traversal takes.
    const HOSTILE: &[&str] = &[
        "",
        ".",
        "..",
        "../x",
        "../../escape-x",
        "a/b",
        "a\\b",
        "/etc",
        "/",
        "a\0b",
        "x\n",
        "\u{2024}\u{2024}",   // one dot leader twice: looks like ".."
        "\u{ff0e}\u{ff0e}/x", // fullwidth full stops
        "a\u{2215}b",         // division slash: looks like "/"
        "caf\u{e9}",
    ];

    #[test]
    fn the_kinesis_rule_takes_plain_names_and_refuses_the_rest_naming_the_field() {
        for good in ["toll-lines", "Toll_Lines.v2", "a", "...", ".hidden", &"x".repeat(128)] {
            assert_eq!(check(NameKind::Stream, "StreamName", good), Ok(()), "{good}");
        }
        for bad in HOSTILE.iter().copied().chain([&*"x".repeat(129), &*"x".repeat(300)]) {
            let e = check(NameKind::Stream, "StreamName", bad).expect_err(bad);
            assert_eq!(e.field, "StreamName");
            assert!(e.to_string().starts_with("StreamName "), "{e}");
        }
        assert!(check(NameKind::DeliveryStream, "DeliveryStreamName", &"x".repeat(65)).is_err());
        let long = check(NameKind::Stream, "StreamName", &"y".repeat(300)).expect_err("long").to_string();
        assert!(long.contains("(300 characters)") && long.len() < 300, "{long}");
    }

    #[test]
    fn only_one_plain_component_becomes_a_path() {
        let dir = Path::new("/data/streams");
        assert_eq!(child_path(dir, "toll-lines"), Ok(dir.join("toll-lines")));
        assert_eq!(child_path(dir, "etl.checkpoint"), Ok(dir.join("etl.checkpoint")));
        for bad in ["", ".", "..", "../x", "a/b", "a\\b", "/etc", "/", "a\0b", "x\n", "./a", "a/"] {
            assert!(child_path(dir, bad).is_err(), "{bad:?}");
        }
        assert!(child_path(dir, &"x".repeat(256)).is_err());
    }

    #[test]
    fn item_keys_are_any_text_within_a_length() {
        assert_eq!(check_item_key("key", "C000123"), Ok(()));
        assert_eq!(check_item_key("key", "../ a key / with anything"), Ok(()));
        assert!(check_item_key("key", "").is_err());
        assert!(check_item_key("key", &"k".repeat(MAX_ITEM_KEY_BYTES + 1)).is_err());
    }
}
