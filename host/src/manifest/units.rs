//! Human-friendly values in manifests: names, durations (`"500ms"`, `"10m"`)
//! and byte sizes (`"64MiB"`).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A validated name of a pipeline, stream, stage, sink, source or plugin:
/// lowercase letters, digits and single hyphens, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    /// Checks `s`; the error says how to fix it.
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok_chars = s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let starts = s.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
        if s.is_empty() || s.len() > 63 || !ok_chars || !starts || s.ends_with('-') || s.contains("--") {
            let suggestion: String = s
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
                .collect::<String>()
                .split('-')
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join("-");
            let hint = if suggestion.is_empty() || !suggestion.starts_with(|c: char| c.is_ascii_lowercase()) {
                String::new()
            } else {
                format!(" (e.g. `{suggestion}`)")
            };
            return Err(format!(
                "`{s}` is not a valid name: use 1 to 63 lowercase letters, digits and single '-', starting with a letter{hint}"
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Name::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Parses a duration written as text: `"500ms"`, `"2s"`, `"10m"`, `"1h 30m"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| {
        format!("`{s}` is not a duration ({e}): write a number and a unit, such as \"500ms\", \"10s\" or \"10m\"")
    })
}

/// A size in bytes written as text: `"64MiB"`, `"512KiB"`, `"1GB"`, or a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"64MiB"`-style sizes.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let unit_mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1000,
            "KiB" => 1 << 10,
            "MB" => 1_000_000,
            "MiB" => 1 << 20,
            "GB" => 1_000_000_000,
            "GiB" => 1 << 30,
            _ => 0,
        };
        match num.parse::<u64>() {
            Ok(n) if unit_mult > 0 => {
                n.checked_mul(unit_mult).map(ByteSize).ok_or_else(|| format!("`{s}` is too large"))
            }
            _ => {
                Err(format!("`{s}` is not a size: write a number and a unit, such as \"64MiB\", \"512KiB\" or \"1GB\""))
            }
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_with_a_suggestion() {
        assert!(Name::parse("toll-lines").is_ok());
        let err = Name::parse("Toll_Lines").expect_err("uppercase");
        assert!(err.contains("e.g. `toll-lines`"), "{err}");
        for bad in ["", "-a", "a-", "a--b", "1abc"] {
            assert!(Name::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(ByteSize::parse("64MiB"), Ok(ByteSize(64 << 20)));
        assert_eq!(ByteSize::parse("1GB"), Ok(ByteSize(1_000_000_000)));
        assert_eq!(ByteSize::parse("512"), Ok(ByteSize(512)));
        assert!(ByteSize::parse("lots").is_err());
        assert!(ByteSize::parse("12 parsecs").is_err());
    }
}
