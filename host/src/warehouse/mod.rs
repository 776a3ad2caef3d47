//! Warehouse destinations of delivery streams: rows staged as an object in the
//! lake are bulk-loaded into a table, PostgreSQL with `COPY` or SQLite (the
//! embedded default). Each row is a JSON object; the manifest maps table
//! columns to its fields.
//!
//! Loads are idempotent: the staged object's key is recorded in the ledger
//! table `weir_loads` in the same transaction as its rows (with the rows the
//! table refused), so a batch redone after a crash (loaded, but not yet
//! checkpointed) is recognised and skipped, and its refused rows reported again.
//! Rows are idempotent too when the warehouse declares a `key`: a row whose key
//! the table holds already (a record a producer sent twice) is skipped and
//! counted as a duplicate.

mod postgres;
mod rows;
mod sqlite;

use std::path::PathBuf;

pub use postgres::PostgresWarehouse;
pub use rows::{Cell, ParsedRows, RowCells};
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
    /// The columns that identify a row (none: rows are not compared). A row
    /// whose key the table holds already is skipped and counted as a
    /// duplicate: a record sent twice is one row.
    pub key: Vec<String>,
    /// How long a load is retried while the database is unavailable.
    pub retry_duration: std::time::Duration,
}

impl WarehouseSpec {
    /// How many staged batches load at once: PostgreSQL works in its own
    /// processes, so two `COPY`s keep two busy; SQLite takes one writer.
    pub fn load_lanes(&self) -> usize {
        match self.database {
            Database::Postgres(_) => 2,
            Database::Sqlite(_) => 1,
        }
    }
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
    /// Rows skipped because the table held their key already.
    pub duplicates: u64,
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
    fn load(&mut self, staged_key: &str, rows: &ParsedRows) -> Result<Loaded, WarehouseError>;
}

/// Connects to the warehouse and checks the table against the mapping.
pub fn connect(spec: &WarehouseSpec) -> Result<Box<dyn Warehouse>, WarehouseError> {
    Ok(match &spec.database {
        Database::Sqlite(path) => Box::new(SqliteWarehouse::open(path, spec)?),
        Database::Postgres(url) => Box::new(PostgresWarehouse::connect(url, spec)?),
    })
}

/// The rows a load refused, as the ledger keeps them (JSON `[[index, reason], ...]`).
fn ledger_text(rejected: &[(usize, String)]) -> String {
    serde_json::to_string(rejected).unwrap_or_else(|_| "[]".to_owned())
}

/// The rows a load refused, from the ledger (nothing if it cannot be read).
fn ledger_rejected(text: &str) -> Vec<(usize, String)> {
    serde_json::from_str(text).unwrap_or_default()
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

/// What to fix when the table has no primary key or unique index on the key.
fn no_unique_key(spec: &WarehouseSpec) -> String {
    let key = spec.key.join(", ");
    format!(
        "table `{}` has no primary key or unique index on ({key}), which `key` needs to skip rows loaded before; \
         add one (CREATE UNIQUE INDEX ON {} ({key})) or remove `key`",
        spec.table, spec.table
    )
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
