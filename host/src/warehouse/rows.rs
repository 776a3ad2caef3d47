//! Staged rows read into cells. Each row is a JSON object; the manifest's
//! mapping says which field fills which column. A batch's cells live in two
//! flat buffers (no allocation per row or per string). Flat rows whose strings
//! have no escapes, the common case, are read by a direct scan; any other row
//! (escapes, fractions, nested values, malformed text) goes through
//! serde_json, which also words the reason a row cannot be read.

use std::borrow::Cow;
use std::ops::Range;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use super::ColumnMap;

/// A cell of a row, as read from its JSON field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell<'a> {
    /// Missing field or JSON null.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// Any other number.
    Float(f64),
    /// A string, or an object or array as JSON text.
    Text(&'a str),
}

/// A cell as kept: text is a range of the row's part of the text buffer.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text { start: u32, len: u32 },
}

/// The rows of a staged batch, read into cells.
#[derive(Debug, Default)]
pub struct ParsedRows {
    width: usize,
    slots: Vec<Slot>,
    text: String,
    /// Per row: where its slots start and its text is, or why it cannot be loaded.
    rows: Vec<Result<(usize, Range<usize>), String>>,
}

/// The cells of one row, in column order.
#[derive(Debug, Clone, Copy)]
pub struct RowCells<'a> {
    slots: &'a [Slot],
    text: &'a str,
}

impl<'a> RowCells<'a> {
    pub fn cells(self) -> impl ExactSizeIterator<Item = Cell<'a>> + Clone {
        self.slots.iter().map(move |slot| match *slot {
            Slot::Null => Cell::Null,
            Slot::Bool(b) => Cell::Bool(b),
            Slot::Int(i) => Cell::Int(i),
            Slot::Float(f) => Cell::Float(f),
            Slot::Text { start, len } => Cell::Text(&self.text[start as usize..(start + len) as usize]),
        })
    }
}

impl ParsedRows {
    /// Reads each row (a JSON object, one per line) into the mapped columns' cells.
    pub fn parse(rows: &[&[u8]], columns: &[ColumnMap]) -> ParsedRows {
        let fields = Fields::new(columns);
        let width = columns.len();
        let mut out = ParsedRows {
            width,
            slots: Vec::with_capacity(rows.len() * width),
            text: String::with_capacity(rows.iter().map(|r| r.len()).sum()),
            rows: Vec::with_capacity(rows.len()),
        };
        for row in rows {
            let (slot_start, text_start) = (out.slots.len(), out.text.len());
            out.slots.resize(slot_start + width, Slot::Null);
            let mut target = Target { slots: &mut out.slots[slot_start..], text: &mut out.text, base: text_start };
            let scanned = std::str::from_utf8(row).ok().and_then(|row| scan_flat(row, &fields, &mut target));
            let read = match scanned {
                Some(()) => Ok(()),
                None => {
                    target.reset();
                    read_with_serde(row, &fields, &mut target)
                }
            };
            match read {
                Ok(()) => out.rows.push(Ok((slot_start, text_start..out.text.len()))),
                Err(reason) => {
                    out.slots.truncate(slot_start);
                    out.text.truncate(text_start);
                    out.rows.push(Err(reason));
                }
            }
        }
        out
    }

    /// How many rows, readable or not.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Each row's cells, or why it cannot be loaded.
    pub fn iter(&self) -> impl Iterator<Item = Result<RowCells<'_>, &str>> {
        self.rows.iter().map(|row| match row {
            Ok((slots, text)) => {
                Ok(RowCells { slots: &self.slots[*slots..slots + self.width], text: &self.text[text.clone()] })
            }
            Err(reason) => Err(reason.as_str()),
        })
    }
}

/// The mapped fields, each with the columns it fills.
struct Fields<'c> {
    fields: Vec<(&'c str, Vec<usize>)>,
}

impl<'c> Fields<'c> {
    fn new(columns: &'c [ColumnMap]) -> Fields<'c> {
        let mut fields: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, c) in columns.iter().enumerate() {
            match fields.iter_mut().find(|(f, _)| *f == c.field) {
                Some((_, targets)) => targets.push(i),
                None => fields.push((&c.field, vec![i])),
            }
        }
        Fields { fields }
    }

    /// The columns a field fills, trying first the field after the one found
    /// `last` (rows written by one program list their fields in one order).
    fn columns(&self, field: &str, last: &mut usize) -> Option<&[usize]> {
        let guess = last.wrapping_add(1);
        if let Some((f, targets)) = self.fields.get(guess)
            && same(f, field)
        {
            *last = guess;
            return Some(targets);
        }
        let found = self.fields.iter().position(|(f, _)| same(f, field))?;
        *last = found;
        Some(&self.fields[found].1)
    }
}

/// `a == b`, compared inline: field names are short, and a call to `memcmp`
/// per field was a tenth of the time spent reading rows.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| x == y)
}

/// Where one row's cells go.
struct Target<'a> {
    slots: &'a mut [Slot],
    text: &'a mut String,
    /// Where the row's text starts in `text`.
    base: usize,
}

impl Target<'_> {
    fn text_slot(&mut self, s: &str) -> Option<Slot> {
        let start = u32::try_from(self.text.len() - self.base).ok()?;
        let len = u32::try_from(s.len()).ok()?;
        start.checked_add(len)?;
        self.text.push_str(s);
        Some(Slot::Text { start, len })
    }

    fn set(&mut self, columns: &[usize], slot: Slot) {
        for &c in columns {
            self.slots[c] = slot;
        }
    }

    fn reset(&mut self) {
        self.slots.fill(Slot::Null);
        self.text.truncate(self.base);
    }
}

/// Reads a flat object with unescaped strings and integer numbers; `None`
/// when the row needs serde_json (which then accepts or words the error).
fn scan_flat(row: &str, fields: &Fields<'_>, target: &mut Target<'_>) -> Option<()> {
    let bytes = row.as_bytes();
    let mut at = skip_space(bytes, 0);
    if bytes.get(at) != Some(&b'{') {
        return None;
    }
    at = skip_space(bytes, at + 1);
    if bytes.get(at) == Some(&b'}') {
        return (skip_space(bytes, at + 1) == bytes.len()).then_some(());
    }
    let mut last = usize::MAX;
    loop {
        if bytes.get(at) != Some(&b'"') {
            return None;
        }
        let key_end = plain_string_end(bytes, at + 1)?;
        let key = &row[at + 1..key_end];
        at = skip_space(bytes, key_end + 1);
        if bytes.get(at) != Some(&b':') {
            return None;
        }
        at = skip_space(bytes, at + 1);
        let columns = fields.columns(key, &mut last);
        let (slot, end) = match *bytes.get(at)? {
            b'"' => {
                let end = plain_string_end(bytes, at + 1)?;
                let slot = match columns {
                    Some(_) => target.text_slot(&row[at + 1..end])?,
                    None => Slot::Null,
                };
                (slot, end + 1)
            }
            b't' if bytes[at..].starts_with(b"true") => (Slot::Bool(true), at + 4),
            b'f' if bytes[at..].starts_with(b"false") => (Slot::Bool(false), at + 5),
            b'n' if bytes[at..].starts_with(b"null") => (Slot::Null, at + 4),
            b'-' | b'0'..=b'9' => integer(bytes, at)?,
            _ => return None,
        };
        if let Some(columns) = columns {
            target.set(columns, slot);
        }
        at = skip_space(bytes, end);
        match bytes.get(at) {
            Some(b',') => at = skip_space(bytes, at + 1),
            Some(b'}') => return (skip_space(bytes, at + 1) == bytes.len()).then_some(()),
            _ => return None,
        }
    }
}

fn skip_space(bytes: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = bytes.get(at) {
        at += 1;
    }
    at
}

/// The closing quote of a string starting at `at`, if it has no escapes and
/// no control characters (which JSON forbids raw).
fn plain_string_end(bytes: &[u8], at: usize) -> Option<usize> {
    let len = bytes.get(at..)?.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    (bytes[at + len] == b'"').then_some(at + len)
}

/// A JSON integer of at most 18 digits (so it fits an i64); fractions,
/// exponents and longer numbers are left to serde_json.
fn integer(bytes: &[u8], at: usize) -> Option<(Slot, usize)> {
    let negative = bytes[at] == b'-';
    let digits_start = at + usize::from(negative);
    let digits = bytes.get(digits_start..)?.iter().take_while(|b| b.is_ascii_digit()).count();
    let end = digits_start + digits;
    let leading_zero = digits > 1 && bytes[digits_start] == b'0';
    if digits == 0 || digits > 18 || leading_zero || matches!(bytes.get(end), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    let magnitude = bytes[digits_start..end].iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
    match (negative, magnitude) {
        (true, 0) => None, // serde_json reads `-0` as the float -0.0
        (true, n) => Some((Slot::Int(-n), end)),
        (false, n) => Some((Slot::Int(n), end)),
    }
}

/// The full parser, for any row the scan did not take.
fn read_with_serde(row: &[u8], fields: &Fields<'_>, target: &mut Target<'_>) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_slice(row);
    let seed = RowSeed { fields, target };
    match seed.deserialize(&mut de).and_then(|()| de.end()) {
        Ok(()) => Ok(()),
        // The error path only: say plainly what the row is.
        Err(e) => Err(match serde_json::from_slice::<Value>(row) {
            Ok(_) => "row is not a JSON object".to_owned(),
            Err(_) => format!("row is not JSON: {e}"),
        }),
    }
}

/// Reads a JSON object into the cells of the mapped columns.
struct RowSeed<'f, 't, 'a> {
    fields: &'f Fields<'f>,
    target: &'t mut Target<'a>,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut last = usize::MAX;
        while let Some(key) = map.next_key::<FieldName<'de>>()? {
            match self.fields.columns(&key.0, &mut last) {
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
                Some(columns) => {
                    let slot = map.next_value_seed(SlotSeed { target: self.target })?;
                    self.target.set(columns, slot);
                }
            }
        }
        Ok(())
    }
}

/// An object key, borrowed from the row unless it has escapes.
struct FieldName<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for FieldName<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = FieldName<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<FieldName<'de>, E> {
                Ok(FieldName(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FieldName<'de>, E> {
                Ok(FieldName(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Reads one value into a slot, its text into the row's text.
struct SlotSeed<'t, 'a> {
    target: &'t mut Target<'a>,
}

impl SlotSeed<'_, '_> {
    fn text<E: serde::de::Error>(self, s: &str) -> Result<Slot, E> {
        self.target.text_slot(s).ok_or_else(|| E::custom("the row is larger than 4 GiB"))
    }
}

impl<'de> DeserializeSeed<'de> for SlotSeed<'_, '_> {
    type Value = Slot;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Slot, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for SlotSeed<'_, '_> {
    type Value = Slot;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Slot, E> {
        Ok(Slot::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Slot, E> {
        Ok(Slot::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Slot, E> {
        Ok(Slot::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Slot, E> {
        Ok(i64::try_from(v).map_or(Slot::Float(v as f64), Slot::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Slot, E> {
        Ok(Slot::Float(v))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Slot, E> {
        self.text(v)
    }
    // Objects and arrays are kept as JSON text (for json/jsonb columns).
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Slot, A::Error> {
        let value = Value::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        self.text(&value.to_string())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Slot, A::Error> {
        let value = Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
        self.text(&value.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(names: &[&str]) -> Vec<ColumnMap> {
        names.iter().map(|n| ColumnMap { column: (*n).to_owned(), field: (*n).to_owned() }).collect()
    }

    /// Each row's cells (or reason), read by the scan where it can.
    fn read(rows: &[&[u8]], columns: &[ColumnMap]) -> Vec<Result<Vec<String>, String>> {
        let parsed = ParsedRows::parse(rows, columns);
        parsed
            .iter()
            .map(|r| r.map(|cells| cells.cells().map(|c| format!("{c:?}")).collect()).map_err(str::to_owned))
            .collect()
    }

    /// The same, always through serde_json.
    fn read_by_serde(rows: &[&[u8]], columns: &[ColumnMap]) -> Vec<Result<Vec<String>, String>> {
        let fields = Fields::new(columns);
        rows.iter()
            .map(|row| {
                let mut slots = vec![Slot::Null; columns.len()];
                let mut text = String::new();
                let mut target = Target { slots: &mut slots, text: &mut text, base: 0 };
                read_with_serde(row, &fields, &mut target)?;
                Ok(RowCells { slots: &slots, text: &text }.cells().map(|c| format!("{c:?}")).collect())
            })
            .collect()
    }

    #[test]
    fn rows_become_cells_in_column_order_and_missing_fields_are_null() {
        let rows: [&[u8]; 3] =
            [br#"{"b":2,"a":"x","c":1.5,"d":true,"e":{"k":1}}"#, br#"{"a":"y","b":-7}"#, br#"{"b":null}"#];
        let parsed = ParsedRows::parse(&rows, &columns(&["a", "b", "c", "d", "e", "missing"]));
        let cells: Vec<Vec<Cell<'_>>> = parsed.iter().map(|r| r.expect("row").cells().collect()).collect();
        use Cell::*;
        assert_eq!(
            cells,
            vec![
                vec![Text("x"), Int(2), Float(1.5), Bool(true), Text(r#"{"k":1}"#), Null],
                vec![Text("y"), Int(-7), Null, Null, Null, Null],
                vec![Null, Null, Null, Null, Null, Null],
            ]
        );
    }

    #[test]
    fn rows_that_are_not_objects_say_what_they_are() {
        let rows: [&[u8]; 4] = [b"[1]", b"T0017,2026", br#"{"a":1} x"#, br#"{"a":"x"}"#];
        let read = read(&rows, &columns(&["a"]));
        assert_eq!(read[0], Err("row is not a JSON object".to_owned()));
        assert!(read[1].as_ref().expect_err("not json").starts_with("row is not JSON"), "{read:?}");
        assert!(read[2].as_ref().expect_err("trailing").starts_with("row is not JSON"), "{read:?}");
        assert_eq!(read[3], Ok(vec![r#"Text("x")"#.to_owned()]), "rows after a refused one keep their text");
    }

    #[test]
    fn a_field_can_fill_several_columns_and_the_last_duplicate_wins() {
        let mapping = vec![
            ColumnMap { column: "id".into(), field: "k".into() },
            ColumnMap { column: "copy".into(), field: "k".into() },
        ];
        let rows: [&[u8]; 2] = [br#"{"k":"a","k":"b"}"#, br#"{"k":"\u0041","k":1}"#];
        let read = read(&rows, &mapping);
        assert_eq!(read[0], Ok(vec![r#"Text("b")"#.to_owned(), r#"Text("b")"#.to_owned()]));
        assert_eq!(read[1], Ok(vec!["Int(1)".to_owned(), "Int(1)".to_owned()]));
    }

    /// The scan takes the common rows; whatever it takes, serde_json reads the same.
    #[test]
    fn the_scan_and_serde_json_agree() {
        let rows: Vec<&[u8]> = vec![
            br#"{"a":"plain","b":42}"#,
            br#" { "a" : "spaced" , "b" : -0 } "#,
            br#"{"a":"esc\"aped","b":1}"#,
            br#"{"a":"tab	raw","b":1}"#,
            br#"{"a":"x","b":01}"#,
            br#"{"a":"x","b":-}"#,
            br#"{"a":"x","b":1e3}"#,
            br#"{"a":"x","b":2.50}"#,
            br#"{"a":"x","b":123456789012345678}"#,
            br#"{"a":"x","b":12345678901234567890}"#,
            br#"{"a":"x","b":-9223372036854775809}"#,
            br#"{"a":"x","b":truex}"#,
            br#"{"a":"x","b":nul}"#,
            br#"{"a":"x",}"#,
            br#"{"a":"x""b":1}"#,
            br#"{"a":"x","b":[1,{"c":null}]}"#,
            br#"{"ignored":"\ud800","a":"y"}"#,
            br#"{}"#,
            br#"{"#,
            b"{\"a\":\"\xff\"}",
            br#"{"a":"caf\u00e9","b":false}"#,
            "{\"a\":\"café\",\"b\":true}".as_bytes(),
            b"",
            b"null",
        ];
        let mapping = columns(&["a", "b"]);
        let scanned = read(&rows, &mapping);
        let by_serde = read_by_serde(&rows, &mapping);
        for ((row, scanned), by_serde) in rows.iter().zip(&scanned).zip(&by_serde) {
            assert_eq!(scanned, by_serde, "{}", String::from_utf8_lossy(row));
        }
        assert_eq!(scanned[0], Ok(vec![r#"Text("plain")"#.to_owned(), "Int(42)".to_owned()]));
        assert_eq!(scanned[9], Ok(vec![r#"Text("x")"#.to_owned(), "Float(1.2345678901234567e19)".to_owned()]));
    }

    /// Many generated objects, some of them damaged: the scan never reads one differently.
    #[test]
    fn generated_rows_read_the_same_by_scan_and_by_serde_json() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let keys = ["\"a\"", "\"b\"", "\"c\"", "\"a\\u0062\"", "\"\""];
        let values = [
            "\"text\"",
            "\"\"",
            "\"caf\u{e9}\"",
            "\"q\\\"q\"",
            "0",
            "-12",
            "7",
            "99999999999999999999",
            "1.5",
            "-0",
            "2e2",
            "true",
            "false",
            "null",
            "[1,2]",
            "{\"k\":\"v\"}",
        ];
        let spaces = ["", " ", "\n", "\t "];
        let mut rows: Vec<Vec<u8>> = Vec::new();
        for _ in 0..5_000 {
            let mut row = String::from(spaces[next(4)]);
            row.push('{');
            for field in 0..next(4) {
                if field > 0 {
                    row.push(',');
                }
                row.push_str(spaces[next(4)]);
                row.push_str(keys[next(keys.len())]);
                row.push_str(spaces[next(4)]);
                row.push(':');
                row.push_str(values[next(values.len())]);
                row.push_str(spaces[next(4)]);
            }
            row.push('}');
            let mut row = row.into_bytes();
            // One row in four is damaged at one byte.
            if next(4) == 0 {
                let at = next(row.len());
                row[at] = b"{}[]\",: x\\\x01\xff"[next(12)];
            }
            rows.push(row);
        }
        let rows: Vec<&[u8]> = rows.iter().map(Vec::as_slice).collect();
        let mapping = columns(&["a", "b", "ab"]);
        let scanned = read(&rows, &mapping);
        let by_serde = read_by_serde(&rows, &mapping);
        for ((row, scanned), by_serde) in rows.iter().zip(&scanned).zip(&by_serde) {
            assert_eq!(scanned, by_serde, "{}", String::from_utf8_lossy(row));
        }
        let readable = scanned.iter().filter(|r| r.is_ok()).count();
        assert!(readable > 2_000 && readable < 5_000, "{readable} of 5000 readable");
    }
}
