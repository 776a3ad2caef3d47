//! The plugin's configuration: the stage's `config` table from the manifest.

use std::str::FromStr;

/// Key/value configuration handed to a plugin when it starts. Strings arrive
/// verbatim; numbers, booleans, arrays and tables as their JSON text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    entries: Vec<(String, String)>,
}

impl Config {
    /// A configuration from key/value pairs.
    pub fn new(entries: Vec<(String, String)>) -> Self {
        Self { entries }
    }

    /// A configuration from borrowed pairs, handy in tests.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Self::new(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The value of `key` parsed as `T`, or `default` when absent. The error
    /// names the key and the value so the operator knows what to fix.
    pub fn parse_or<T: FromStr>(&self, key: &str, default: T) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(key) {
            None => Ok(default),
            Some(raw) => raw.parse().map_err(|e| format!("config `{key}` = `{raw}` is invalid: {e}")),
        }
    }

    /// All entries, in manifest order.
    pub fn entries(&self) -> &[(String, String)] {
        &self.entries
    }
}
