//! The PostgreSQL warehouse: rows are bulk-loaded with `COPY ... FROM STDIN`
//! in one transaction with their ledger entry. When the table refuses a row
//! (a data or constraint error), the batch is loaded again row by row under
//! savepoints, so only the refused rows are set aside. With a key, the rows
//! are copied into a temporary table and moved with `INSERT ... SELECT ... ON
//! CONFLICT (key) DO NOTHING` (`COPY` cannot skip rows): a row whose key is
//! there already is counted as a duplicate.

use std::ops::Range;

use bytes::{BufMut as _, Bytes, BytesMut};
use futures_util::SinkExt as _;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, Transaction};

use super::{
    Cell, LEDGER_TABLE, Loaded, ParsedRows, RowCells, Warehouse, WarehouseError, WarehouseSpec, ledger_rejected,
    ledger_text, missing_columns, no_unique_key, quoted,
};

/// A table in a PostgreSQL database.
pub struct PostgresWarehouse {
    client: Client,
    url: String,
    target: String,
    spec: WarehouseSpec,
    statements: Statements,
}

/// The SQL of a load.
struct Statements {
    /// Copies rows into the table, or into the staging table with a key.
    copy: String,
    keyed: Option<Keyed>,
}

/// With a key, rows go through a temporary staging table.
struct Keyed {
    /// Makes the staging table; once per connection.
    create: String,
    /// Moves the staged rows into the table, skipping keys it holds.
    insert: String,
}

/// The temporary table rows are copied into before they move, with a key.
const STAGING_TABLE: &str = "weir_staged_rows";

impl PostgresWarehouse {
    /// Connects, creates the ledger if needed and checks the table's columns.
    pub fn connect(url: &str, spec: &WarehouseSpec) -> Result<PostgresWarehouse, WarehouseError> {
        let target = format!("postgres `{}`", redacted(url));
        let client = run(&target, open(url, &target))?;
        let existing =
            run(&target, async { table_columns(&client, &spec.table).await.map_err(|e| error(&target, e)) })?;
        if existing.is_empty() {
            return Err(WarehouseError::Schema {
                target,
                message: format!(
                    "table `{}` does not exist; create it with the columns {}",
                    spec.table,
                    spec.columns.iter().map(|c| c.column.as_str()).collect::<Vec<_>>().join(", ")
                ),
            });
        }
        missing_columns(&target, spec, &existing)?;
        let table = quoted(&spec.table);
        let names = spec.columns.iter().map(|c| quoted(&c.column)).collect::<Vec<_>>().join(", ");
        let statements = if spec.key.is_empty() {
            Statements { copy: format!("COPY {table} ({names}) FROM STDIN"), keyed: None }
        } else {
            let key = spec.key.iter().map(|c| quoted(c)).collect::<Vec<_>>().join(", ");
            let keyed = Keyed {
                create: format!(
                    "CREATE TEMPORARY TABLE IF NOT EXISTS {STAGING_TABLE} (LIKE {table} INCLUDING DEFAULTS) \
                     ON COMMIT DELETE ROWS"
                ),
                insert: format!(
                    "INSERT INTO {table} ({names}) SELECT {names} FROM {STAGING_TABLE} ON CONFLICT ({key}) DO NOTHING"
                ),
            };
            // Planning the move checks that the key is the table's primary key or a unique index.
            run(&target, async {
                client.batch_execute(&keyed.create).await.map_err(|e| error(&target, e))?;
                match client.batch_execute(&format!("EXPLAIN {}", keyed.insert)).await {
                    Err(e) if e.code() == Some(&SqlState::INVALID_COLUMN_REFERENCE) => {
                        Err(WarehouseError::Schema { target: target.clone(), message: no_unique_key(spec) })
                    }
                    other => other.map(drop).map_err(|e| error(&target, e)),
                }
            })?;
            Statements { copy: format!("COPY {STAGING_TABLE} ({names}) FROM STDIN"), keyed: Some(keyed) }
        };
        Ok(PostgresWarehouse { client, url: url.to_owned(), target, spec: spec.clone(), statements })
    }
}

impl Warehouse for PostgresWarehouse {
    fn load(&mut self, staged_key: &str, rows: &ParsedRows) -> Result<Loaded, WarehouseError> {
        if self.client.is_closed() {
            let client = run(&self.target, open(&self.url, &self.target))?;
            if let Some(keyed) = &self.statements.keyed {
                let target = &self.target;
                run(target, async { client.batch_execute(&keyed.create).await.map_err(|e| error(target, e)) })?;
            }
            self.client = client;
        }
        let mut rejected = Vec::new();
        let mut text = BytesMut::with_capacity(rows.len() * 128);
        let mut lines: Vec<(usize, Range<usize>)> = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            match row {
                Ok(cells) => {
                    let start = text.len();
                    copy_line(cells, &mut text);
                    lines.push((i, start..text.len()));
                }
                Err(reason) => rejected.push((i, reason.to_owned())),
            }
        }
        let encoded = Encoded { text: text.freeze(), lines };
        let (client, target, sql, table) = (&mut self.client, &self.target, &self.statements, &self.spec.table);
        run(target, async move {
            let whole = load_all(client, staged_key, table, sql, &encoded).await;
            let mut loaded = match whole {
                Ok(loaded) => loaded,
                Err(e) if is_row_error(&e) => {
                    load_each(client, staged_key, table, sql, &encoded).await.map_err(|e| error(target, e))?
                }
                Err(e) => return Err(error(target, e)),
            };
            loaded.rejected.extend(rejected);
            loaded.rejected.sort_by_key(|(i, _)| *i);
            Ok(loaded)
        })
    }
}

/// Runs `future` on the host's runtime; a runtime that cannot start leaves the warehouse unavailable.
fn run<T: Send>(
    target: &str,
    future: impl Future<Output = Result<T, WarehouseError>> + Send,
) -> Result<T, WarehouseError> {
    crate::io::block_on(future).map_err(|e| WarehouseError::Unavailable {
        target: target.to_owned(),
        message: format!("cannot start a runtime: {e}"),
    })?
}

async fn open(url: &str, target: &str) -> Result<Client, WarehouseError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.map_err(|e| error(target, e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "warehouse connection closed");
        }
    });
    // `rejected` came after the first ledgers: added to those.
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} (object_key text PRIMARY KEY, table_name text NOT NULL, \
             row_count bigint NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now()); \
             ALTER TABLE {LEDGER_TABLE} ADD COLUMN IF NOT EXISTS rejected text NOT NULL DEFAULT '[]'"
        ))
        .await
        .map_err(|e| error(target, e))?;
    Ok(client)
}

/// Records the key in the ledger; if it was there already, what its load refused.
async fn record(tx: &Transaction<'_>, key: &str, table: &str) -> Result<Option<Loaded>, tokio_postgres::Error> {
    let sql = format!(
        "INSERT INTO {LEDGER_TABLE} (object_key, table_name, row_count) VALUES ($1, $2, 0) ON CONFLICT DO NOTHING"
    );
    if tx.execute(&sql, &[&key, &table]).await? == 1 {
        return Ok(None);
    }
    let row = tx.query_one(&format!("SELECT rejected FROM {LEDGER_TABLE} WHERE object_key = $1"), &[&key]).await?;
    Ok(Some(Loaded { already_loaded: true, rejected: ledger_rejected(row.get(0)), ..Loaded::default() }))
}

async fn finish(tx: Transaction<'_>, key: &str, loaded: Loaded) -> Result<Loaded, tokio_postgres::Error> {
    let sql = format!("UPDATE {LEDGER_TABLE} SET row_count = $1, rejected = $2 WHERE object_key = $3");
    tx.execute(&sql, &[&(loaded.rows as i64), &ledger_text(&loaded.rejected), &key]).await?;
    tx.commit().await?;
    Ok(loaded)
}

/// Rows in `COPY` text, and which row each line is.
struct Encoded {
    text: Bytes,
    lines: Vec<(usize, Range<usize>)>,
}

/// One `COPY` of every row (and with a key, one move into the table).
async fn load_all(
    client: &mut Client,
    key: &str,
    table: &str,
    sql: &Statements,
    rows: &Encoded,
) -> Result<Loaded, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    if let Some(before) = record(&tx, key, table).await? {
        return Ok(before);
    }
    let sink = tx.copy_in::<_, Bytes>(&sql.copy).await?;
    futures_util::pin_mut!(sink);
    // In slices of about 1 MiB, cut at line ends.
    let mut start = 0;
    for (_, line) in &rows.lines {
        if line.end - start >= 1 << 20 {
            sink.send(rows.text.slice(start..line.end)).await?;
            start = line.end;
        }
    }
    if start < rows.text.len() {
        sink.send(rows.text.slice(start..)).await?;
    }
    let copied = sink.finish().await?;
    let loaded = match &sql.keyed {
        None => Loaded { rows: copied, ..Loaded::default() },
        Some(keyed) => {
            let inserted = tx.execute(&keyed.insert, &[]).await?;
            Loaded { rows: inserted, duplicates: copied.saturating_sub(inserted), ..Loaded::default() }
        }
    };
    finish(tx, key, loaded).await
}

/// Row by row under savepoints: slow, only for a batch with refused rows.
async fn load_each(
    client: &mut Client,
    key: &str,
    table: &str,
    sql: &Statements,
    rows: &Encoded,
) -> Result<Loaded, tokio_postgres::Error> {
    let mut tx = client.transaction().await?;
    if let Some(before) = record(&tx, key, table).await? {
        return Ok(before);
    }
    let mut loaded = Loaded::default();
    for (i, line) in &rows.lines {
        let savepoint = tx.savepoint("weir_row").await?;
        let attempt = async {
            let sink = savepoint.copy_in::<_, Bytes>(&sql.copy).await?;
            futures_util::pin_mut!(sink);
            sink.send(rows.text.slice(line.clone())).await?;
            let copied = sink.finish().await?;
            let Some(keyed) = &sql.keyed else { return Ok((copied, 0)) };
            let inserted = savepoint.execute(&keyed.insert, &[]).await?;
            savepoint.batch_execute(&format!("DELETE FROM {STAGING_TABLE}")).await?;
            Ok((inserted, copied.saturating_sub(inserted)))
        }
        .await;
        match attempt {
            Ok((inserted, duplicates)) => {
                savepoint.commit().await?;
                loaded.rows += inserted;
                loaded.duplicates += duplicates;
            }
            Err(e) if is_row_error(&e) => {
                savepoint.rollback().await?;
                loaded.rejected.push((*i, row_reason(&e)));
            }
            Err(e) => return Err(e),
        }
    }
    finish(tx, key, loaded).await
}

/// The columns of `table` (`name` or `schema.name`), none if it does not exist.
async fn table_columns(client: &Client, table: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    let (schema, name) = match table.split_once('.') {
        Some((schema, name)) => (Some(schema), name),
        None => (None, table),
    };
    let rows = client
        .query(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = coalesce($1, current_schema()) AND table_name = $2 ORDER BY ordinal_position",
            &[&schema, &name],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

/// Appends one row in `COPY`'s text format: tab-separated, `\N` for null.
fn copy_line(row: RowCells<'_>, out: &mut BytesMut) {
    use std::fmt::Write as _;
    for (i, cell) in row.cells().enumerate() {
        if i > 0 {
            out.put_u8(b'\t');
        }
        match cell {
            Cell::Null => out.put_slice(b"\\N"),
            Cell::Bool(b) => out.put_u8(if b { b't' } else { b'f' }),
            Cell::Int(n) => {
                let _ = write!(out, "{n}");
            }
            Cell::Float(f) => {
                let _ = write!(out, "{f}");
            }
            Cell::Text(s) => {
                for &b in s.as_bytes() {
                    match b {
                        b'\\' => out.put_slice(b"\\\\"),
                        b'\t' => out.put_slice(b"\\t"),
                        b'\n' => out.put_slice(b"\\n"),
                        b'\r' => out.put_slice(b"\\r"),
                        b => out.put_u8(b),
                    }
                }
            }
        }
    }
    out.put_u8(b'\n');
}

/// A refused value: data exceptions (class 22) and integrity violations (class 23).
fn is_row_error(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"))
}

/// The database's message for a refused row, without the COPY line it quotes.
fn row_reason(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

fn error(target: &str, e: tokio_postgres::Error) -> WarehouseError {
    let message = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    };
    // Undefined tables or columns and permission problems will not pass by retrying.
    let schema = e.code().is_some_and(|c| {
        c == &SqlState::UNDEFINED_TABLE
            || c == &SqlState::UNDEFINED_COLUMN
            || c == &SqlState::INSUFFICIENT_PRIVILEGE
            || c == &SqlState::INVALID_PASSWORD
            || c == &SqlState::INVALID_AUTHORIZATION_SPECIFICATION
    });
    if schema {
        WarehouseError::Schema { target: target.to_owned(), message }
    } else {
        WarehouseError::Unavailable { target: target.to_owned(), message }
    }
}

/// The connection string without its password, for messages and logs.
fn redacted(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((credentials, host)) = rest.split_once('@')
    {
        let user = credentials.split(':').next().unwrap_or("");
        return format!("{scheme}://{user}@{host}");
    }
    url.split_whitespace().filter(|p| !p.starts_with("password=")).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_lines_escape_text_and_write_null() {
        let columns: Vec<crate::warehouse::ColumnMap> = ["t", "n", "i", "b", "f"]
            .iter()
            .map(|c| crate::warehouse::ColumnMap { column: (*c).to_owned(), field: (*c).to_owned() })
            .collect();
        let rows = ParsedRows::parse(&[br#"{"t":"a\tb\\c\nd","n":null,"i":-3,"b":true,"f":2.5}"#], &columns);
        let mut line = BytesMut::new();
        copy_line(rows.iter().next().expect("a row").expect("readable"), &mut line);
        assert_eq!(&line[..], b"a\\tb\\\\c\\nd\t\\N\t-3\tt\t2.5\n");
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(redacted("postgresql://weir:secret@127.0.0.1/tolls"), "postgresql://weir@127.0.0.1/tolls");
        assert_eq!(redacted("host=127.0.0.1 user=weir password=secret dbname=t"), "host=127.0.0.1 user=weir dbname=t");
    }
}
