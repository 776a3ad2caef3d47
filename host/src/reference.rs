//! Reference tables (the reference data source of Kinesis Data Analytics):
//! small tables loaded from one object in the lake — CSV with a header row, or
//! JSON lines — that plugins look up by key through the `reference` import,
//! and that aggregator stages can name as their expected keys.
//!
//! A table is reloaded when its object changes, without a restart: the new
//! object is read and parsed in full, then swapped in at once, so a lookup sees
//! the old rows or the new ones, never a mix. An object that cannot be read or
//! parsed leaves the last good version in place and is reported.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value};

pub use weir_plugin::ReferenceLookup;

use crate::lake::LakeSpec;

/// How a reference object is written (`format = "csv"` or `"jsonl"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum ReferenceFormat {
    /// Comma-separated, a header row naming the columns, `"` quoting; every value is a string.
    #[serde(rename = "csv")]
    Csv,
    /// One JSON object per line.
    #[serde(rename = "jsonl")]
    JsonLines,
}

/// A `[reference.<name>]` entry of the pipeline manifest.
#[derive(Debug, Clone)]
pub struct ReferenceSpec {
    /// The table's name, as plugins and stages name it.
    pub name: String,
    /// The lake holding the object.
    pub lake: LakeSpec,
    /// The object's key in the lake.
    pub object: String,
    /// How the object is written.
    pub format: ReferenceFormat,
    /// The columns whose values, joined with `|`, make a row's key.
    pub key: Vec<String>,
    /// How often the object is checked for a change.
    pub refresh: Duration,
}

/// Why a reference table could not be (re)loaded.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// The lake could not be opened or the object read.
    #[error("reference table `{table}`: cannot read `{object}` from lake {lake}: {message}")]
    Read {
        /// The table.
        table: String,
        /// The object.
        object: String,
        /// The lake.
        lake: String,
        /// Why.
        message: String,
    },
    /// The object's content does not fit the format or the key.
    #[error("reference table `{table}`: `{object}` line {line}: {message}")]
    Parse {
        /// The table.
        table: String,
        /// The object.
        object: String,
        /// 1-based line of the problem.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// One loaded version of a table.
#[derive(Default)]
struct Version {
    /// Each row as a JSON object, and as its compact text (what lookups return).
    rows: Vec<(Map<String, Value>, String)>,
    /// Row index by key.
    index: HashMap<String, usize>,
    /// What identifies the object's content (entity tag, modification time and size).
    tag: String,
    loaded_at_ms: i64,
}

/// What the API shows of a reference table.
#[derive(Debug, Clone, Serialize)]
pub struct ReferenceStatus {
    /// The table.
    pub name: String,
    /// Its object in the lake.
    pub object: String,
    /// Rows of the version in use.
    pub rows: usize,
    /// Versions loaded since the start (1: the first).
    pub generation: u64,
    /// When the version in use was loaded (RFC 3339).
    pub loaded_at: String,
    /// Why the last reload failed, if it did (the previous version stays in use).
    pub last_error: Option<String>,
}

/// A reference table: the version in use, swapped whole on reload.
pub struct ReferenceTable {
    spec: ReferenceSpec,
    lake: crate::lake::Lake,
    current: RwLock<Arc<Version>>,
    generation: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl ReferenceTable {
    /// The row of `key` as JSON object text, if there is one.
    pub fn lookup(&self, key: &str) -> Option<String> {
        let version = self.version();
        version.index.get(key).map(|&i| version.rows[i].1.clone())
    }

    /// The distinct values of `column` (numbers as their text); rows without it are skipped.
    pub fn distinct(&self, column: &str) -> BTreeSet<String> {
        self.version().rows.iter().filter_map(|(row, _)| row.get(column).and_then(value_text)).collect()
    }

    /// Goes up by one with every version loaded: a cheap way to notice a reload.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A snapshot for the API.
    pub fn status(&self) -> ReferenceStatus {
        let version = self.version();
        ReferenceStatus {
            name: self.spec.name.clone(),
            object: self.spec.object.clone(),
            rows: version.rows.len(),
            generation: self.generation(),
            loaded_at: crate::time::format_ms(version.loaded_at_ms),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }

    fn version(&self) -> Arc<Version> {
        match self.current.read() {
            Ok(v) => v.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Loads the object if it changed since the version in use; returns whether it did.
    async fn refresh(&self) -> Result<bool, ReferenceError> {
        let object = self.spec.object.as_str();
        let tag = self.lake.head(object).await.map_err(|e| self.read_error(e))?.version;
        if tag == self.version().tag {
            return Ok(false);
        }
        let bytes = self.lake.get(object).await.map_err(|e| self.read_error(e))?;
        let mut version = self.parse(&bytes)?;
        version.tag = tag;
        version.loaded_at_ms = crate::stream::now_ms();
        let rows = version.rows.len();
        match self.current.write() {
            Ok(mut current) => *current = Arc::new(version),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(version),
        }
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        tracing::info!(table = %self.spec.name, rows, generation, "reference table loaded");
        Ok(true)
    }

    fn read_error(&self, e: crate::lake::ObjectError) -> ReferenceError {
        ReferenceError::Read {
            table: self.spec.name.clone(),
            object: self.spec.object.clone(),
            lake: self.spec.lake.describe(),
            message: e.to_string(),
        }
    }

    fn parse(&self, bytes: &[u8]) -> Result<Version, ReferenceError> {
        let error = |line: usize, message: String| ReferenceError::Parse {
            table: self.spec.name.clone(),
            object: self.spec.object.clone(),
            line,
            message,
        };
        let text = std::str::from_utf8(bytes).map_err(|e| error(1, format!("not UTF-8: {e}")))?;
        let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
        let header = match self.spec.format {
            ReferenceFormat::Csv => match lines.next() {
                Some((n, line)) => csv_fields(line).map_err(|e| error(n + 1, e))?,
                None => return Err(error(1, "no header row: the first line names the columns".into())),
            },
            ReferenceFormat::JsonLines => Vec::new(),
        };
        let mut version = Version::default();
        for (n, line) in lines {
            let row = match self.spec.format {
                ReferenceFormat::Csv => {
                    let fields = csv_fields(line).map_err(|e| error(n + 1, e))?;
                    if fields.len() != header.len() {
                        let message = format!("{} fields, but the header names {}", fields.len(), header.len());
                        return Err(error(n + 1, message));
                    }
                    header.iter().cloned().zip(fields.into_iter().map(Value::String)).collect()
                }
                ReferenceFormat::JsonLines => match serde_json::from_str::<Value>(line) {
                    Ok(Value::Object(row)) => row,
                    Ok(_) => return Err(error(n + 1, "not a JSON object".into())),
                    Err(e) => return Err(error(n + 1, format!("not JSON: {e}"))),
                },
            };
            let mut parts = Vec::with_capacity(self.spec.key.len());
            for column in &self.spec.key {
                match row.get(column).and_then(value_text) {
                    Some(part) => parts.push(part),
                    None => return Err(error(n + 1, format!("no value for the key column `{column}`"))),
                }
            }
            let key = parts.join("|");
            if version.index.insert(key.clone(), version.rows.len()).is_some() {
                return Err(error(n + 1, format!("key `{key}` appears twice")));
            }
            let text = Value::Object(row.clone()).to_string();
            version.rows.push((row, text));
        }
        Ok(version)
    }
}

/// A key part or expected key: strings as they are, numbers and booleans as their text.
fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The fields of one CSV line: `,` separated, `"` quoted with `""` for a quote.
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.trim_end_matches('\r').chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => fields.push(std::mem::take(&mut field)),
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err("a quoted field is not closed".into());
    }
    fields.push(field);
    Ok(fields)
}

/// The pipeline's reference tables, by name.
pub struct ReferenceTables {
    tables: BTreeMap<String, Arc<ReferenceTable>>,
}

impl ReferenceTables {
    /// Opens and loads every table; a table that cannot be loaded is an error
    /// (a stage must not start with half its reference data).
    pub fn open(specs: &[ReferenceSpec]) -> Result<Arc<ReferenceTables>, ReferenceError> {
        let mut tables = BTreeMap::new();
        for spec in specs {
            let lake = crate::lake::open(&spec.lake).map_err(|e| ReferenceError::Read {
                table: spec.name.clone(),
                object: spec.object.clone(),
                lake: spec.lake.describe(),
                message: e.message,
            })?;
            let table = ReferenceTable {
                spec: spec.clone(),
                lake,
                current: RwLock::default(),
                generation: AtomicU64::new(0),
                last_error: Mutex::default(),
            };
            tables.insert(spec.name.clone(), Arc::new(table));
        }
        let tables = Arc::new(ReferenceTables { tables });
        if !tables.tables.is_empty() {
            tables.tables.values().try_for_each(|t| refresh(t).map(drop))?;
        }
        Ok(tables)
    }

    /// No tables at all.
    pub fn empty() -> Arc<ReferenceTables> {
        Arc::new(ReferenceTables { tables: BTreeMap::new() })
    }

    /// A table by name.
    pub fn get(&self, name: &str) -> Option<&Arc<ReferenceTable>> {
        self.tables.get(name)
    }

    /// Every table's status.
    pub fn status(&self) -> Vec<ReferenceStatus> {
        self.tables.values().map(|t| t.status()).collect()
    }

    /// Checks each table's object every `refresh` on a thread of its own, which
    /// ends when the tables are dropped.
    pub fn start_reloading(self: &Arc<Self>) {
        if self.tables.is_empty() {
            return;
        }
        let tables: Weak<ReferenceTables> = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("reference-reload".into()).spawn(move || {
            let span = tracing::info_span!("reference.reload");
            let _enter = span.enter();
            let mut due: BTreeMap<String, Instant> = BTreeMap::new();
            loop {
                std::thread::sleep(RELOAD_TICK);
                let Some(tables) = tables.upgrade() else { return };
                for (name, table) in &tables.tables {
                    let next = due.entry(name.clone()).or_insert_with(|| Instant::now() + table.spec.refresh);
                    if Instant::now() < *next {
                        continue;
                    }
                    *next = Instant::now() + table.spec.refresh;
                    let result = refresh(table);
                    if let Ok(mut last) = table.last_error.lock() {
                        match &result {
                            Err(e) => {
                                tracing::error!(error = %e, "reference table not reloaded; the last version stays");
                                *last = Some(e.to_string());
                            }
                            Ok(true) => *last = None,
                            Ok(false) => {}
                        }
                    }
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start reloading reference tables");
        }
    }
}

/// How often the reload thread wakes to see which tables are due.
const RELOAD_TICK: Duration = Duration::from_millis(100);

/// Reloads a table on the host's runtime (whether or not the caller is async code).
fn refresh(table: &ReferenceTable) -> Result<bool, ReferenceError> {
    crate::io::block_on(table.refresh()).map_err(|e| ReferenceError::Read {
        table: table.spec.name.to_string(),
        object: String::new(),
        lake: String::new(),
        message: format!("cannot start an I/O runtime: {e}"),
    })?
}

impl ReferenceLookup for ReferenceTables {
    fn lookup(&self, table: &str, key: &str) -> Result<Option<String>, String> {
        match self.tables.get(table) {
            Some(t) => Ok(t.lookup(key)),
            None => Err(format!("no reference table `{table}`: declare it as [reference.{table}] in the pipeline")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &std::path::Path, object: &str, format: ReferenceFormat, key: &[&str]) -> ReferenceSpec {
        ReferenceSpec {
            name: "minimums".into(),
            lake: LakeSpec::Local(dir.to_owned()),
            object: object.into(),
            format,
            key: key.iter().map(|k| (*k).to_owned()).collect(),
            refresh: Duration::from_millis(10),
        }
    }

    #[test]
    fn csv_rows_are_looked_up_by_their_joined_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let csv = "station_id,weekday,slot,minimum,name\n17,4,28,40,\"Exit 17, north\"\n42,4,28,5,\"say \"\"hi\"\"\"\n";
        std::fs::write(dir.path().join("m.csv"), csv).expect("write");
        let tables = ReferenceTables::open(&[spec(
            dir.path(),
            "m.csv",
            ReferenceFormat::Csv,
            &["station_id", "weekday", "slot"],
        )])
        .expect("load");
        let row = tables.lookup("minimums", "17|4|28").expect("known table").expect("a row");
        assert_eq!(row, r#"{"minimum":"40","name":"Exit 17, north","slot":"28","station_id":"17","weekday":"4"}"#);
        assert!(tables.lookup("minimums", "17|4|29").expect("known table").is_none());
        assert!(tables.lookup("other", "x").expect_err("unknown").contains("[reference.other]"));
        let table = tables.get("minimums").expect("table");
        assert_eq!(table.distinct("station_id"), BTreeSet::from(["17".to_owned(), "42".to_owned()]));
        assert_eq!(table.generation(), 1);
    }

    #[test]
    fn json_lines_keys_may_be_numbers() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("m.jsonl"), "{\"station_id\":17,\"minimum\":40}\n\n{\"station_id\":42}\n")
            .expect("write");
        let tables = ReferenceTables::open(&[spec(dir.path(), "m.jsonl", ReferenceFormat::JsonLines, &["station_id"])])
            .expect("load");
        assert_eq!(
            tables.lookup("minimums", "17").expect("table").as_deref(),
            Some(r#"{"minimum":40,"station_id":17}"#)
        );
    }

    #[test]
    fn bad_objects_are_refused_with_the_line_and_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases = [
            ("a,b\n1\n", "line 2: 1 fields, but the header names 2"),
            ("a,b\n1,2\n1,3\n", "line 3: key `1` appears twice"),
            ("b\n2\n", "line 2: no value for the key column `a`"),
            ("a\n\"open\n", "line 2: a quoted field is not closed"),
        ];
        for (csv, expected) in cases {
            std::fs::write(dir.path().join("m.csv"), csv).expect("write");
            let Err(e) = ReferenceTables::open(&[spec(dir.path(), "m.csv", ReferenceFormat::Csv, &["a"])]) else {
                panic!("{csv:?} loaded");
            };
            assert!(e.to_string().contains(expected), "{csv:?}: {e}");
        }
        let Err(missing) = ReferenceTables::open(&[spec(dir.path(), "none.csv", ReferenceFormat::Csv, &["a"])]) else {
            panic!("a missing object loaded");
        };
        assert!(missing.to_string().contains("cannot read `none.csv`"), "{missing}");
    }

    #[test]
    fn a_changed_object_is_swapped_in_and_a_broken_one_keeps_the_last_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("m.csv");
        std::fs::write(&file, "a,min\n1,10\n").expect("write");
        let tables = ReferenceTables::open(&[spec(dir.path(), "m.csv", ReferenceFormat::Csv, &["a"])]).expect("load");
        tables.start_reloading();
        let table = tables.get("minimums").expect("table").clone();
        let wait_for = |generation: u64| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while table.generation() < generation {
                assert!(Instant::now() < deadline, "no reload to generation {generation}");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        std::fs::write(&file, "a,min\n1,20\n2,5\n").expect("write");
        wait_for(2);
        assert_eq!(table.lookup("1").as_deref(), Some(r#"{"a":"1","min":"20"}"#));
        std::fs::write(&file, "a,min\n1\n").expect("write");
        let deadline = Instant::now() + Duration::from_secs(10);
        while table.status().last_error.is_none() {
            assert!(Instant::now() < deadline, "the broken object was not reported");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(table.generation(), 2);
        assert_eq!(table.status().rows, 2, "the last good version stays");
    }
}
