//! Warehouse destinations of delivery streams: rows staged as an object in the
//! lake are bulk-loaded into a table, PostgreSQL with `COPY` or SQLite (the
//! embedded default). Each row is a JSON object; the manifest maps table
//! columns to its fields.
//!
//! Loads are idempotent: the staged object's key is recorded in the ledger
//! table `weir_loads` in the same transaction as its rows, so a batch redone
//! after a crash (loaded, but not yet checkpointed) is recognised and skipped.

mod postgres;
mod sqlite;

use std::path::PathBuf;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

pub use postgres::PostgresWarehouse;
pub use sqlite::SqliteWarehouse;

/// The ledger of loaded objects, one row per staged object.
pub const LEDGER_TABLE: &str = "weir_loads";

/// Where a delivery stream loads its rows.
#[derive(Debug, Clone)]
pub struct WarehouseSpec {
    /// The database.
    pub database: Database,
    /// The table, `name` or `schema.name` (lowercase identifiers).
    pub table: String,
    /// Which field of a row fills which column.
    pub columns: Vec<ColumnMap>,
    /// How long a load is retried while the database is unavailable.
    pub retry_duration: std::time::Duration,
}

/// The database of a warehouse.
#[derive(Debug, Clone)]
pub enum Database {
    /// A SQLite file, created with the table if missing.
    Sqlite(PathBuf),
    /// A PostgreSQL connection string (`host=127.0.0.1 user=weir dbname=tolls`
    /// or `postgresql://...`); the table must exist.
    Postgres(String),
}

/// One column and the row field that fills it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnMap {
    /// The table column.
    pub column: String,
    /// The JSON field of a row.
    pub field: String,
}

/// What a load did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Rows inserted.
    pub rows: u64,
    /// Rows the table refused, by index in the batch, with the database's reason.
    pub rejected: Vec<(usize, String)>,
    /// The object had been loaded before: nothing was inserted.
    pub already_loaded: bool,
}

/// Why a load did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    /// The database cannot be reached or is busy: worth retrying.
    #[error("warehouse {target} is unavailable: {message}")]
    Unavailable {
        /// The database.
        target: String,
        /// Why.
        message: String,
    },
    /// The table does not fit the manifest's mapping: retrying will not help.
    #[error("warehouse {target}: {message}")]
    Schema {
        /// The database.
        target: String,
        /// What to fix.
        message: String,
    },
}

impl WarehouseError {
    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, WarehouseError::Unavailable { .. })
    }

    /// The error code written under the error prefix.
    pub fn code(&self) -> &'static str {
        match self {
            WarehouseError::Unavailable { .. } => "Warehouse.Unavailable",
            WarehouseError::Schema { .. } => "Warehouse.Schema",
        }
    }
}

/// A table rows are loaded into.
pub trait Warehouse: Send {
    /// Loads the rows of the object staged at `staged_key`, once: if the
    /// ledger already holds the key, nothing is inserted. Rows that could not
    /// be read and rows the table refuses are reported (the others are
    /// loaded); a failure of the whole load inserts nothing.
    fn load(&mut self, staged_key: &str, rows: &[Row]) -> Result<Loaded, WarehouseError>;
}

/// Connects to the warehouse and checks the table against the mapping.
pub fn connect(spec: &WarehouseSpec) -> Result<Box<dyn Warehouse>, WarehouseError> {
    Ok(match &spec.database {
        Database::Sqlite(path) => Box::new(SqliteWarehouse::open(path, spec)?),
        Database::Postgres(url) => Box::new(PostgresWarehouse::connect(url, spec)?),
    })
}

/// A cell of a row, as read from its JSON field.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Missing field or JSON null.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// Any other number.
    Float(f64),
    /// A string, or an object or array as JSON text.
    Text(String),
}

/// A row's cells in column order, or why it cannot be loaded.
pub type Row = Result<Vec<Cell>, String>;

/// Reads staged rows (JSON objects, one per line) into their cells.
pub fn parse_rows(rows: &[&[u8]], columns: &[ColumnMap]) -> Vec<Row> {
    rows.iter().map(|row| row_cells(row, columns)).collect()
}

/// The cells of one row in column order, or why the row is not a JSON object.
/// One pass over the row: only mapped fields are kept, the others skipped.
pub fn row_cells(row: &[u8], columns: &[ColumnMap]) -> Result<Vec<Cell>, String> {
    let mut de = serde_json::Deserializer::from_slice(row);
    let seed = RowSeed { columns };
    match seed.deserialize(&mut de).and_then(|cells| de.end().map(|()| cells)) {
        Ok(cells) => Ok(cells),
        // The error path only: say plainly what the row is.
        Err(e) => Err(match serde_json::from_slice::<Value>(row) {
            Ok(_) => "row is not a JSON object".to_owned(),
            Err(_) => format!("row is not JSON: {e}"),
        }),
    }
}

/// Reads a JSON object into the cells of the mapped columns.
struct RowSeed<'c> {
    columns: &'c [ColumnMap],
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = Vec<Cell>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<Cell>, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = Vec<Cell>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Cell>, A::Error> {
        let mut cells = vec![Cell::Null; self.columns.len()];
        while let Some(key) = map.next_key::<FieldName<'de>>()? {
            let field = key.0.as_ref();
            let mut targets = self.columns.iter().enumerate().filter(|(_, c)| c.field == field).map(|(i, _)| i);
            match targets.next() {
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
                Some(first) => {
                    let cell: Cell = map.next_value()?;
                    for other in targets {
                        cells[other] = cell.clone();
                    }
                    cells[first] = cell;
                }
            }
        }
        Ok(cells)
    }
}

/// An object key, borrowed from the row unless it has escapes.
struct FieldName<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for FieldName<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = FieldName<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<FieldName<'de>, E> {
                Ok(FieldName(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FieldName<'de>, E> {
                Ok(FieldName(std::borrow::Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Cell {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CellVisitor;
        impl<'de> Visitor<'de> for CellVisitor {
            type Value = Cell;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Cell, E> {
                Ok(Cell::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Cell, E> {
                Ok(Cell::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Cell, E> {
                Ok(Cell::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Cell, E> {
                Ok(i64::try_from(v).map_or(Cell::Float(v as f64), Cell::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Cell, E> {
                Ok(Cell::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Cell, E> {
                Ok(Cell::Text(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Cell, E> {
                Ok(Cell::Text(v))
            }
            // Objects and arrays are kept as JSON text (for json/jsonb columns).
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Cell, A::Error> {
                let value = Value::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(Cell::Text(value.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Cell, A::Error> {
                let value = Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
                Ok(Cell::Text(value.to_string()))
            }
        }
        deserializer.deserialize_any(CellVisitor)
    }
}

/// Checks a table or column name: lowercase SQL identifiers only, so the name
/// means the same quoted or not, in PostgreSQL and in SQLite.
pub fn check_identifier(name: &str) -> Result<(), String> {
    let ok = name.split('.').all(|part| {
        let mut chars = part.chars();
        chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    });
    if ok && name.split('.').count() <= 2 {
        Ok(())
    } else {
        Err(format!("`{name}` is not a lowercase SQL identifier such as `toll_transactions` or `sales.orders`"))
    }
}

/// `"name"` or `"schema"."name"`.
fn quoted(name: &str) -> String {
    name.split('.').map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join(".")
}

/// The columns of the mapping the table lacks, as an error saying what to fix.
fn missing_columns(target: &str, spec: &WarehouseSpec, existing: &[String]) -> Result<(), WarehouseError> {
    let missing: Vec<&str> =
        spec.columns.iter().map(|c| c.column.as_str()).filter(|c| !existing.iter().any(|e| e == c)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(WarehouseError::Schema {
        target: target.to_owned(),
        message: format!(
            "table `{}` has no column {} (it has: {}); add the column or map the field to an existing one in `columns`",
            spec.table,
            missing.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", "),
            existing.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(names: &[&str]) -> Vec<ColumnMap> {
        names.iter().map(|n| ColumnMap { column: (*n).to_owned(), field: (*n).to_owned() }).collect()
    }

    #[test]
    fn rows_become_cells_in_column_order_and_missing_fields_are_null() {
        let row = br#"{"b":2,"a":"x","c":1.5,"d":true,"e":{"k":1}}"#;
        let cells = row_cells(row, &columns(&["a", "b", "c", "d", "e", "missing"])).expect("cells");
        assert_eq!(
            cells,
            vec![
                Cell::Text("x".into()),
                Cell::Int(2),
                Cell::Float(1.5),
                Cell::Bool(true),
                Cell::Text(r#"{"k":1}"#.into()),
                Cell::Null
            ]
        );
        assert_eq!(row_cells(b"[1]", &columns(&["a"])), Err("row is not a JSON object".to_owned()));
        assert!(row_cells(b"T0017,2026", &columns(&["a"])).expect_err("not json").starts_with("row is not JSON"));
    }

    #[test]
    fn identifiers_are_lowercase_sql_names() {
        assert_eq!(check_identifier("toll_transactions"), Ok(()));
        assert_eq!(check_identifier("sales.orders2"), Ok(()));
        for bad in ["Tolls", "a-b", "1x", "", "a.b.c", "x;drop table y"] {
            assert!(check_identifier(bad).is_err(), "{bad}");
        }
        assert_eq!(quoted("sales.orders"), "\"sales\".\"orders\"");
    }
}
