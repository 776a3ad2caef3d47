//! The embedded warehouse: a SQLite file. The table is created (with untyped
//! columns, which keep each value's JSON type, and the key as its primary key)
//! when it does not exist yet. With a key, rows go in with `ON CONFLICT (key)
//! DO NOTHING`: a row whose key is there already is counted as a duplicate.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode, TransactionBehavior};

use super::{
    Cell, LEDGER_TABLE, Loaded, ParsedRows, RowCells, Warehouse, WarehouseError, WarehouseSpec, ledger_rejected,
    ledger_text, missing_columns, no_unique_key, quoted,
};

/// How long a load waits for another writer's lock before it counts as unavailable.
const BUSY_TIMEOUT: Duration = Duration::from_millis(500);

/// A SQLite database file holding the table.
pub struct SqliteWarehouse {
    connection: Connection,
    target: String,
    spec: WarehouseSpec,
    insert: String,
    /// The same for `rows_per_insert` rows at once: one statement per row
    /// costs more than binding the rows.
    insert_many: String,
    rows_per_insert: usize,
}

/// Bound parameters per statement that any SQLite allows (newer ones allow more).
const MAX_PARAMETERS: usize = 999;

impl SqliteWarehouse {
    /// Opens (or creates) the database, the table and the ledger.
    pub fn open(path: &Path, spec: &WarehouseSpec) -> Result<SqliteWarehouse, WarehouseError> {
        let target = format!("sqlite `{}`", path.display());
        let unavailable = |e: rusqlite::Error| unavailable(&target, e);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| WarehouseError::Unavailable {
                target: target.clone(),
                message: format!("cannot create its folder: {e}"),
            })?;
        }
        let connection = Connection::open(path).map_err(unavailable)?;
        connection.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
        // WAL lets readers query the table while a load is being written.
        connection.pragma_update(None, "journal_mode", "WAL").map_err(unavailable)?;
        connection
            .execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (object_key TEXT PRIMARY KEY, table_name TEXT NOT NULL, \
                 row_count INTEGER NOT NULL, loaded_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
            ))
            .map_err(unavailable)?;
        // `rejected` came after the first ledgers: added to those.
        if !table_columns(&connection, LEDGER_TABLE).map_err(unavailable)?.iter().any(|c| c == "rejected") {
            connection
                .execute_batch(&format!("ALTER TABLE {LEDGER_TABLE} ADD COLUMN rejected TEXT NOT NULL DEFAULT '[]'"))
                .map_err(unavailable)?;
        }
        let table = quoted(&spec.table);
        let existing = table_columns(&connection, &spec.table).map_err(unavailable)?;
        let key = spec.key.iter().map(|c| quoted(c)).collect::<Vec<_>>().join(", ");
        if existing.is_empty() {
            let mut columns: Vec<String> = spec.columns.iter().map(|c| quoted(&c.column)).collect();
            if !spec.key.is_empty() {
                columns.push(format!("PRIMARY KEY ({key})"));
            }
            connection.execute_batch(&format!("CREATE TABLE {table} ({})", columns.join(", "))).map_err(unavailable)?;
            tracing::info!(table = %spec.table, "created the warehouse table");
        } else {
            missing_columns(&target, spec, &existing)?;
        }
        let names = spec.columns.iter().map(|c| quoted(&c.column)).collect::<Vec<_>>().join(", ");
        let values = |rows: usize| {
            let row = format!("({})", vec!["?"; spec.columns.len()].join(", "));
            vec![row; rows].join(", ")
        };
        let on_conflict = if spec.key.is_empty() { String::new() } else { format!(" ON CONFLICT ({key}) DO NOTHING") };
        let insert = format!("INSERT INTO {table} ({names}) VALUES {}{on_conflict}", values(1));
        // Preparing checks that the key is the table's primary key or a unique index.
        if let Err(e) = connection.prepare(&insert) {
            if e.to_string().contains("ON CONFLICT clause does not match") {
                return Err(WarehouseError::Schema { target, message: no_unique_key(spec) });
            }
            return Err(unavailable(e));
        }
        let rows_per_insert = (MAX_PARAMETERS / spec.columns.len().max(1)).clamp(1, 64);
        let insert_many = format!("INSERT INTO {table} ({names}) VALUES {}{on_conflict}", values(rows_per_insert));
        Ok(SqliteWarehouse { connection, target, spec: spec.clone(), insert, insert_many, rows_per_insert })
    }
}

impl Warehouse for SqliteWarehouse {
    fn load(&mut self, staged_key: &str, rows: &ParsedRows) -> Result<Loaded, WarehouseError> {
        let target = self.target.clone();
        let unavailable = |e: rusqlite::Error| unavailable(&target, e);
        let tx = self.connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(unavailable)?;
        let recorded = tx
            .execute(
                &format!("INSERT OR IGNORE INTO {LEDGER_TABLE} (object_key, table_name, row_count) VALUES (?1, ?2, 0)"),
                rusqlite::params![staged_key, self.spec.table],
            )
            .map_err(unavailable)?;
        if recorded == 0 {
            let rejected: String = tx
                .query_row(&format!("SELECT rejected FROM {LEDGER_TABLE} WHERE object_key = ?1"), [staged_key], |r| {
                    r.get(0)
                })
                .map_err(unavailable)?;
            return Ok(Loaded { already_loaded: true, rejected: ledger_rejected(&rejected), ..Loaded::default() });
        }
        let mut loaded = Loaded::default();
        {
            let mut insert = tx.prepare_cached(&self.insert).map_err(unavailable)?;
            let mut insert_many = tx.prepare_cached(&self.insert_many).map_err(unavailable)?;
            let many = self.rows_per_insert;
            let mut pending: Vec<(usize, RowCells<'_>)> = Vec::with_capacity(many);
            let mut flush = |pending: &mut Vec<(usize, RowCells<'_>)>, loaded: &mut Loaded| -> rusqlite::Result<()> {
                if pending.len() == many {
                    let values = pending.iter().flat_map(|(_, row)| row.cells().map(sql_value));
                    match insert_many.execute(rusqlite::params_from_iter(values)) {
                        Ok(n) => {
                            loaded.rows += n as u64;
                            loaded.duplicates += (many - n) as u64;
                            pending.clear();
                            return Ok(());
                        }
                        // A refused row fails its statement only: the rows go one by one to find it.
                        Err(e) if is_row_error(&e) => {}
                        Err(e) => return Err(e),
                    }
                }
                for (i, row) in pending.drain(..) {
                    match insert.execute(rusqlite::params_from_iter(row.cells().map(sql_value))) {
                        Ok(0) => loaded.duplicates += 1,
                        Ok(_) => loaded.rows += 1,
                        Err(e) if is_row_error(&e) => loaded.rejected.push((i, e.to_string())),
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            };
            for (i, row) in rows.iter().enumerate() {
                match row {
                    Ok(cells) => pending.push((i, cells)),
                    Err(reason) => loaded.rejected.push((i, reason.to_owned())),
                }
                if pending.len() == many {
                    flush(&mut pending, &mut loaded).map_err(unavailable)?;
                }
            }
            flush(&mut pending, &mut loaded).map_err(unavailable)?;
            loaded.rejected.sort_by_key(|(i, _)| *i);
        }
        tx.execute(
            &format!("UPDATE {LEDGER_TABLE} SET row_count = ?1, rejected = ?2 WHERE object_key = ?3"),
            rusqlite::params![loaded.rows as i64, ledger_text(&loaded.rejected), staged_key],
        )
        .map_err(unavailable)?;
        tx.commit().map_err(unavailable)?;
        Ok(loaded)
    }
}

fn table_columns(connection: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    let (schema, name) = table.split_once('.').unwrap_or(("main", table));
    let mut query = connection.prepare(&format!("SELECT name FROM \"{schema}\".pragma_table_info(?1)"))?;
    // No rows: the table does not exist.
    query.query_map([name], |row| row.get::<_, String>(0))?.collect()
}

fn sql_value(cell: Cell<'_>) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(match cell {
        Cell::Null => ValueRef::Null,
        Cell::Bool(b) => ValueRef::Integer(i64::from(b)),
        Cell::Int(i) => ValueRef::Integer(i),
        Cell::Float(f) => ValueRef::Real(f),
        Cell::Text(s) => ValueRef::Text(s.as_bytes()),
    })
}

/// Errors of one row (constraints, types of a STRICT table), not of the database.
fn is_row_error(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(ErrorCode::ConstraintViolation | ErrorCode::TypeMismatch | ErrorCode::TooBig))
}

fn unavailable(target: &str, e: rusqlite::Error) -> WarehouseError {
    WarehouseError::Unavailable { target: target.to_owned(), message: e.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::warehouse::{ColumnMap, Database};

    fn load(w: &mut SqliteWarehouse, key: &str, rows: &[&[u8]]) -> Result<Loaded, WarehouseError> {
        let parsed = ParsedRows::parse(rows, &w.spec.columns);
        w.load(key, &parsed)
    }

    fn spec(path: &Path, columns: &[(&str, &str)]) -> WarehouseSpec {
        WarehouseSpec {
            database: Database::Sqlite(path.to_owned()),
            table: "tolls".into(),
            columns: columns
                .iter()
                .map(|(c, f)| ColumnMap { column: (*c).to_owned(), field: (*f).to_owned() })
                .collect(),
            key: Vec::new(),
            retry_duration: Duration::from_secs(1),
        }
    }

    fn count(path: &Path) -> i64 {
        let c = Connection::open(path).expect("open");
        c.query_row("SELECT count(*) FROM tolls", [], |r| r.get(0)).expect("count")
    }

    #[test]
    fn a_staged_object_is_loaded_once_even_when_loaded_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("w.db");
        let spec = spec(&db, &[("id", "transaction_id"), ("cents", "amount_cents")]);
        let mut w = SqliteWarehouse::open(&db, &spec).expect("open");
        let rows: [&[u8]; 2] = [br#"{"transaction_id":"a","amount_cents":275}"#, br#"{"transaction_id":"b"}"#];
        assert_eq!(load(&mut w, "rows/1", &rows).expect("load"), Loaded { rows: 2, ..Loaded::default() });
        assert!(load(&mut w, "rows/1", &rows).expect("load").already_loaded);
        assert_eq!(count(&db), 2);
        let c = Connection::open(&db).expect("open");
        let cents: Option<i64> = c.query_row("SELECT cents FROM tolls WHERE id = 'b'", [], |r| r.get(0)).expect("b");
        assert_eq!(cents, None, "a missing field is NULL");
        let ledger: i64 = c
            .query_row("SELECT row_count FROM weir_loads WHERE object_key = 'rows/1'", [], |r| r.get(0))
            .expect("ledger");
        assert_eq!(ledger, 2);
    }

    #[test]
    fn rows_the_table_refuses_are_reported_and_the_others_loaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("w.db");
        Connection::open(&db)
            .and_then(|c| c.execute_batch("CREATE TABLE tolls (id TEXT NOT NULL, cents INTEGER) STRICT"))
            .expect("create");
        let spec = spec(&db, &[("id", "id"), ("cents", "cents")]);
        let mut w = SqliteWarehouse::open(&db, &spec).expect("open");
        let rows: [&[u8]; 4] =
            [br#"{"id":"a","cents":1}"#, br#"{"cents":2}"#, b"not json", br#"{"id":"d","cents":"many"}"#];
        let loaded = load(&mut w, "k", &rows).expect("load");
        assert_eq!(loaded.rows, 1);
        let reasons: Vec<(usize, &str)> = loaded.rejected.iter().map(|(i, r)| (*i, r.as_str())).collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons[0].0 == 1 && reasons[0].1.contains("NOT NULL"), "{reasons:?}");
        assert!(reasons[1].0 == 2 && reasons[1].1.contains("not JSON"), "{reasons:?}");
        assert!(reasons[2].0 == 3 && reasons[2].1.contains("cannot store TEXT"), "{reasons:?}");
        assert_eq!(count(&db), 1);
    }

    #[test]
    fn a_refused_row_among_many_sets_aside_only_that_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("w.db");
        Connection::open(&db)
            .and_then(|c| c.execute_batch("CREATE TABLE tolls (id TEXT PRIMARY KEY, cents INTEGER) STRICT"))
            .expect("create");
        let spec = spec(&db, &[("id", "id"), ("cents", "cents")]);
        let mut w = SqliteWarehouse::open(&db, &spec).expect("open");
        // Rows 70 and 150 repeat an id: each fails the multi-row statement it is in.
        let rows: Vec<String> = (0..200)
            .map(|i| {
                let id = match i {
                    70 => 3,
                    150 => 140,
                    i => i,
                };
                format!(r#"{{"id":"r{id}","cents":{i}}}"#)
            })
            .collect();
        let rows: Vec<&[u8]> = rows.iter().map(|r| r.as_bytes()).collect();
        let loaded = load(&mut w, "k", &rows).expect("load");
        assert_eq!(loaded.rows, 198);
        let refused: Vec<usize> = loaded.rejected.iter().map(|(i, _)| *i).collect();
        assert_eq!(refused, vec![70, 150]);
        assert!(loaded.rejected[0].1.contains("UNIQUE"), "{:?}", loaded.rejected);
        assert_eq!(count(&db), 198);
        let again = load(&mut w, "k", &rows).expect("load again");
        assert!(again.already_loaded && again.rejected == loaded.rejected, "a redo reports the same refused rows");
        assert_eq!(count(&db), 198);
        let c = Connection::open(&db).expect("open");
        let cents: i64 = c.query_row("SELECT cents FROM tolls WHERE id = 'r140'", [], |r| r.get(0)).expect("r140");
        assert_eq!(cents, 140, "the first row with an id stays");
    }

    #[test]
    fn with_a_key_a_row_whose_key_is_in_the_table_is_counted_as_a_duplicate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("w.db");
        let spec = WarehouseSpec { key: vec!["id".into()], ..spec(&db, &[("id", "id"), ("cents", "cents")]) };
        let mut w = SqliteWarehouse::open(&db, &spec).expect("open creates the table with the key");
        // 200 rows in multi-row statements, ids 0..150: 50 repeat an id of the same object.
        let rows: Vec<String> = (0..200).map(|i| format!(r#"{{"id":"r{}","cents":{i}}}"#, i % 150)).collect();
        let rows: Vec<&[u8]> = rows.iter().map(|r| r.as_bytes()).collect();
        let loaded = load(&mut w, "rows/1", &rows).expect("load");
        assert_eq!((loaded.rows, loaded.duplicates, loaded.rejected.len()), (150, 50, 0), "{loaded:?}");
        // Another object with the same ids and 10 new ones.
        let more: Vec<String> = (140..160).map(|i| format!(r#"{{"id":"r{i}","cents":0}}"#)).collect();
        let more: Vec<&[u8]> = more.iter().map(|r| r.as_bytes()).collect();
        let loaded = load(&mut w, "rows/2", &more).expect("load");
        assert_eq!((loaded.rows, loaded.duplicates), (10, 10));
        assert_eq!(count(&db), 160);
        let c = Connection::open(&db).expect("open");
        let cents: i64 = c.query_row("SELECT cents FROM tolls WHERE id = 'r140'", [], |r| r.get(0)).expect("r140");
        assert_eq!(cents, 140, "the row loaded first stays");
    }

    #[test]
    fn a_table_without_the_mapped_columns_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("w.db");
        Connection::open(&db).and_then(|c| c.execute_batch("CREATE TABLE tolls (id TEXT)")).expect("create");
        let err = SqliteWarehouse::open(&db, &spec(&db, &[("id", "id"), ("amount", "amount")]))
            .err()
            .expect("the table lacks `amount`");
        assert!(!err.is_retryable());
        let message = err.to_string();
        assert!(message.contains("table `tolls` has no column `amount` (it has: id)"), "{message}");
    }

    #[test]
    fn a_locked_database_is_unavailable_and_retried_later() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("w.db");
        let spec = spec(&db, &[("id", "id")]);
        let mut w = SqliteWarehouse::open(&db, &spec).expect("open");
        let other = Connection::open(&db).expect("open");
        other.execute_batch("BEGIN EXCLUSIVE").expect("lock");
        let err = load(&mut w, "k", &[br#"{"id":"a"}"#]).expect_err("locked");
        assert!(err.is_retryable(), "{err}");
        other.execute_batch("COMMIT").expect("unlock");
        assert_eq!(load(&mut w, "k", &[br#"{"id":"a"}"#]).expect("load").rows, 1);
        assert_eq!(count(&db), 1);
    }
}
