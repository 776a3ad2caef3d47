//! Reading a TOML manifest section by section, so that a mistake in one entry
//! does not hide the mistakes in the others.

use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::diagnostic::{Diagnostic, Diagnostics, SourceFile};
use super::units::Name;

/// A parsed document, with the spans of every key and value.
pub struct Document<'t> {
    pub source: SourceFile,
    pub root: Spanned<DeTable<'t>>,
}

impl<'t> Document<'t> {
    /// Parses `text`; syntax errors are all recorded (parsing recovers and goes on).
    pub fn parse(source: SourceFile, text: &'t str, diags: &mut Diagnostics) -> Self {
        let (root, errors) = DeTable::parse_recoverable(text);
        for e in &errors {
            diags.push_toml(&source, e, 0..0);
        }
        Self { source, root }
    }

    /// Reports top-level keys that are not among `known`.
    pub fn check_top_level(&self, known: &[&str], diags: &mut Diagnostics) {
        for (key, _) in self.root.get_ref() {
            if !known.contains(&key.get_ref().as_ref()) {
                diags.push(
                    Diagnostic::new(&self.source, key.span(), format!("unknown section `{}`", key.get_ref()))
                        .help(format!("the sections are: {}", known.join(", "))),
                );
            }
        }
    }

    /// The value of a top-level key.
    pub fn get(&self, key: &str) -> Option<&Spanned<DeValue<'t>>> {
        self.root.get_ref().iter().find(|(k, _)| k.get_ref() == key).map(|(_, v)| v)
    }

    /// Deserializes a table-valued section (`[api]`), or its default when absent.
    pub fn single<T: DeserializeOwned + Default>(&self, key: &str, diags: &mut Diagnostics) -> Option<T> {
        match self.get(key) {
            None => Some(T::default()),
            Some(v) => deserialize(&self.source, v, diags),
        }
    }

    /// The valid names of a named-entries section, including entries whose
    /// contents have problems (so references to them are not reported twice).
    pub fn entry_names(&self, section: &str) -> Vec<Name> {
        self.entry_spans(section).into_iter().map(|(name, _)| name).collect()
    }

    /// The valid entry names of a section with where each is written.
    pub fn entry_spans(&self, section: &str) -> Vec<(Name, Range<usize>)> {
        match self.get(section).map(|v| v.get_ref()) {
            Some(DeValue::Table(table)) => {
                table.iter().filter_map(|(k, _)| Some((Name::parse(k.get_ref()).ok()?, k.span()))).collect()
            }
            _ => Vec::new(),
        }
    }

    /// Deserializes every entry of a named-entries section (`[stages.<name>]`),
    /// checking each name. An entry with a problem is reported and skipped.
    pub fn entries<T: DeserializeOwned>(&self, section: &str, diags: &mut Diagnostics) -> Vec<Entry<T>> {
        let Some(value) = self.get(section) else { return Vec::new() };
        let DeValue::Table(table) = value.get_ref() else {
            diags.push(
                Diagnostic::new(&self.source, value.span(), format!("`{section}` must be a table of named entries"))
                    .help(format!("write entries as [{section}.<name>]")),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, v) in table {
            let name = match Name::parse(key.get_ref()) {
                Ok(n) => Some(n),
                Err(e) => {
                    diags.push(Diagnostic::new(&self.source, key.span(), e));
                    None
                }
            };
            let value = deserialize::<T>(&self.source, v, diags);
            if let (Some(name), Some(value)) = (name, value) {
                out.push(Entry { name, name_span: key.span(), value });
            }
        }
        out
    }
}

/// One named entry of a section, with where its name is.
pub struct Entry<T> {
    pub name: Name,
    pub name_span: Range<usize>,
    pub value: T,
}

fn deserialize<T: DeserializeOwned>(
    source: &SourceFile,
    v: &Spanned<DeValue<'_>>,
    diags: &mut Diagnostics,
) -> Option<T> {
    match T::deserialize(ValueDeserializer::from(v.clone())) {
        Ok(t) => Some(t),
        Err(e) => {
            diags.push_toml(source, &e, v.span());
            None
        }
    }
}
