//! What the agent does to lines before sending them, as the Kinesis Agent's
//! data processing options: grouping lines into multi-line records by a start
//! pattern, folding a record onto one line, and turning CSV or well-known log
//! formats (Apache common/combined, RFC 3164 and RFC 5424 syslog) into JSON.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use regex::Regex;
use serde_json::{Map, Value};

/// One processing step applied to every record, in the configured order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Removes newlines and each line's leading and trailing spaces.
    SingleLine,
    /// Splits the record on `delimiter` and names the values `fields`.
    CsvToJson {
        /// Field names, in column order.
        fields: Vec<String>,
        /// The column separator (a literal string).
        delimiter: String,
    },
    /// Parses a log line of a known format into a JSON object.
    LogToJson {
        /// The line format.
        format: LogFormat,
        /// Names replacing the format's own field names, in order.
        fields: Option<Vec<String>>,
    },
}

/// The log formats `log-to-json` understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Apache common log format.
    CommonApache,
    /// Apache combined log format (common plus referrer and user agent).
    CombinedApache,
    /// BSD syslog, RFC 3164.
    Syslog,
    /// Syslog, RFC 5424.
    Rfc5424Syslog,
}

impl LogFormat {
    /// The JSON field names this format produces, in capture order.
    pub fn field_names(self) -> &'static [&'static str] {
        match self {
            LogFormat::CommonApache => &["host", "ident", "authuser", "datetime", "request", "response", "bytes"],
            LogFormat::CombinedApache => {
                &["host", "ident", "authuser", "datetime", "request", "response", "bytes", "referer", "agent"]
            }
            LogFormat::Syslog => &["timestamp", "hostname", "program", "processid", "message"],
            LogFormat::Rfc5424Syslog => &[
                "pri",
                "version",
                "timestamp",
                "hostname",
                "program",
                "processid",
                "msgid",
                "structureddata",
                "message",
            ],
        }
    }

    fn regex(self) -> &'static Regex {
        // Constant patterns, checked by the tests below.
        static COMMON: LazyLock<Regex> = LazyLock::new(|| compile(APACHE_COMMON));
        static COMBINED: LazyLock<Regex> =
            LazyLock::new(|| compile(&format!(r#"{} "([^"]*)" "([^"]*)"$"#, APACHE_COMMON.trim_end_matches('$'))));
        static SYSLOG: LazyLock<Regex> = LazyLock::new(|| {
            compile(r"^(?:<\d{1,3}>)?([A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2}) (\S+) ([^\s\[:]+)(?:\[(\d+)\])?: ?(.*)$")
        });
        static RFC5424: LazyLock<Regex> = LazyLock::new(|| {
            compile(r"^<(\d{1,3})>(\d{1,2}) (\S+) (\S+) (\S+) (\S+) (\S+) (-|(?:\[(?:[^\]\\]|\\.)*\])+)(?: (.*))?$")
        });
        match self {
            LogFormat::CommonApache => &COMMON,
            LogFormat::CombinedApache => &COMBINED,
            LogFormat::Syslog => &SYSLOG,
            LogFormat::Rfc5424Syslog => &RFC5424,
        }
    }
}

const APACHE_COMMON: &str = r#"^(\S+) (\S+) (\S+) \[([^\]]+)\] "([^"]*)" (\d{3}|-) (\d+|-)$"#;

fn compile(pattern: &str) -> Regex {
    Regex::new(pattern).expect("built-in log format pattern compiles")
}

/// Applies the steps to whole records.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    steps: Vec<Step>,
}

impl Preprocessor {
    /// A preprocessor running `steps` in order.
    pub fn new(steps: Vec<Step>) -> Self {
        Self { steps }
    }

    /// The record after every step, or `None` if a step cannot parse it
    /// (a log line not in the configured format); the caller counts those.
    pub fn apply(&self, mut record: Vec<u8>) -> Option<Vec<u8>> {
        for step in &self.steps {
            record = match step {
                Step::SingleLine => single_line(&record),
                Step::CsvToJson { fields, delimiter } => csv_to_json(&record, fields, delimiter),
                Step::LogToJson { format, fields } => log_to_json(&record, *format, fields.as_deref())?,
            };
        }
        Some(record)
    }
}

fn single_line(record: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(record.len());
    for line in record.split(|b| *b == b'\n') {
        out.extend_from_slice(line.trim_ascii());
    }
    out
}

fn csv_to_json(record: &[u8], fields: &[String], delimiter: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(record);
    let mut values = text.trim_end_matches(['\r', '\n']).split(delimiter);
    let object: Map<String, Value> = fields
        .iter()
        .map(|name| (name.clone(), values.next().map_or(Value::Null, |v| Value::String(v.to_owned()))))
        .collect();
    Value::Object(object).to_string().into_bytes()
}

fn log_to_json(record: &[u8], format: LogFormat, custom: Option<&[String]>) -> Option<Vec<u8>> {
    let text = String::from_utf8_lossy(record);
    let captures = format.regex().captures(text.trim_end_matches(['\r', '\n']))?;
    let mut object = Map::new();
    for (i, default_name) in format.field_names().iter().enumerate() {
        let name = custom.and_then(|c| c.get(i)).map_or(*default_name, String::as_str);
        // As the Kinesis Agent: `-` means "no value".
        let value = match captures.get(i + 1).map(|m| m.as_str()) {
            None | Some("-") => Value::Null,
            Some(v) => Value::String(v.to_owned()),
        };
        object.insert(name.to_owned(), value);
    }
    Some(Value::Object(object).to_string().into_bytes())
}

/// A record in the making: its text so far and where its last line ends.
#[derive(Debug)]
struct Open {
    data: Vec<u8>,
    end: u64,
    since: Instant,
}

/// Groups lines into records that begin at a line matching a start pattern;
/// one group per file lineage (see the tailer), keyed by its id.
#[derive(Debug)]
pub struct MultiLine {
    start: Regex,
    open: HashMap<u64, Open>,
}

impl MultiLine {
    /// Records start at lines matching `start`.
    pub fn new(start: Regex) -> Self {
        Self { start, open: HashMap::new() }
    }

    /// Adds a line of `lineage` ending at file offset `end`; returns the record
    /// it completed, with the offset its last line ends at.
    pub fn push(&mut self, lineage: u64, line: Vec<u8>, end: u64, now: Instant) -> Option<(Vec<u8>, u64)> {
        let starts = self.start.is_match(&String::from_utf8_lossy(&line));
        match self.open.get_mut(&lineage) {
            Some(open) if !starts => {
                open.data.push(b'\n');
                open.data.extend_from_slice(&line);
                open.end = end;
                open.since = now;
                None
            }
            _ => {
                let done = self.open.insert(lineage, Open { data: line, end, since: now });
                done.map(|o| (o.data, o.end))
            }
        }
    }

    /// Records that got no new line for `idle`: the writer finished them.
    pub fn flush_idle(&mut self, now: Instant, idle: Duration) -> Vec<(u64, Vec<u8>, u64)> {
        let ids: Vec<u64> =
            self.open.iter().filter(|(_, o)| now.duration_since(o.since) >= idle).map(|(id, _)| *id).collect();
        ids.into_iter().filter_map(|id| self.open.remove(&id).map(|o| (id, o.data, o.end))).collect()
    }

    /// Every open record, e.g. at shutdown.
    pub fn flush_all(&mut self) -> Vec<(u64, Vec<u8>, u64)> {
        self.open.drain().map(|(id, o)| (id, o.data, o.end)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(steps: Vec<Step>, line: &str) -> Option<Value> {
        let out = Preprocessor::new(steps).apply(line.as_bytes().to_vec())?;
        Some(serde_json::from_slice(&out).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&out).into())))
    }

    #[test]
    fn single_line_strips_newlines_and_indentation() {
        let out = Preprocessor::new(vec![Step::SingleLine]).apply(b"{\n  \"a\": 1,\n  \"b\": 2\n}\n".to_vec());
        assert_eq!(out.as_deref(), Some(&b"{\"a\": 1,\"b\": 2}"[..]));
    }

    #[test]
    fn csv_to_json_names_fields_and_fills_missing_with_null() {
        let steps = vec![Step::CsvToJson { fields: vec!["a".into(), "b".into(), "c".into()], delimiter: "|".into() }];
        assert_eq!(run(steps, "1|x y"), Some(serde_json::json!({"a": "1", "b": "x y", "c": null})));
    }

    #[test]
    fn apache_logs_become_json() {
        let line = r#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326"#;
        let common = run(vec![Step::LogToJson { format: LogFormat::CommonApache, fields: None }], line);
        assert_eq!(
            common,
            Some(serde_json::json!({"host": "127.0.0.1", "ident": null, "authuser": "frank",
                "datetime": "10/Oct/2000:13:55:36 -0700", "request": "GET /apache_pb.gif HTTP/1.0",
                "response": "200", "bytes": "2326"}))
        );
        let combined = format!(r#"{line} "http://www.example.com/start.html" "Mozilla/4.08""#);
        let out = run(vec![Step::LogToJson { format: LogFormat::CombinedApache, fields: None }], &combined)
            .expect("combined parses");
        assert_eq!(out["referer"], "http://www.example.com/start.html");
        assert_eq!(out["agent"], "Mozilla/4.08");
        assert_eq!(out["response"], "200");
        let renamed =
            run(vec![Step::LogToJson { format: LogFormat::CommonApache, fields: Some(vec!["ip".into()]) }], line)
                .expect("parses");
        assert_eq!(renamed["ip"], "127.0.0.1");
        assert_eq!(run(vec![Step::LogToJson { format: LogFormat::CommonApache, fields: None }], "garbage"), None);
    }

    #[test]
    fn syslog_formats_become_json() {
        let bsd = "Mar 12 12:00:08 server2 rcd[308]: Loaded 12 packages in 'ximian-red-carpet|351' (0.01878 seconds)";
        let out = run(vec![Step::LogToJson { format: LogFormat::Syslog, fields: None }], bsd).expect("3164 parses");
        assert_eq!(out["timestamp"], "Mar 12 12:00:08");
        assert_eq!(out["hostname"], "server2");
        assert_eq!(out["program"], "rcd");
        assert_eq!(out["processid"], "308");
        assert_eq!(out["message"], "Loaded 12 packages in 'ximian-red-carpet|351' (0.01878 seconds)");

        let rfc = r#"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" eventSource="Application"] An application event"#;
        let out =
            run(vec![Step::LogToJson { format: LogFormat::Rfc5424Syslog, fields: None }], rfc).expect("5424 parses");
        assert_eq!(out["pri"], "165");
        assert_eq!(out["version"], "1");
        assert_eq!(out["hostname"], "mymachine.example.com");
        assert_eq!(out["program"], "evntslog");
        assert_eq!(out["processid"], Value::Null);
        assert_eq!(out["msgid"], "ID47");
        assert_eq!(out["structureddata"], r#"[exampleSDID@32473 iut="3" eventSource="Application"]"#);
        assert_eq!(out["message"], "An application event");
    }

    #[test]
    fn multi_line_groups_by_start_pattern_per_lineage() {
        let now = Instant::now();
        let mut ml = MultiLine::new(Regex::new(r"^\d{4}-").expect("pattern"));
        assert_eq!(ml.push(1, b"2026-01-01 first".to_vec(), 17, now), None);
        assert_eq!(ml.push(1, b"  at frame".to_vec(), 28, now), None);
        assert_eq!(ml.push(2, b"2026-01-01 other file".to_vec(), 22, now), None);
        let done = ml.push(1, b"2026-01-02 second".to_vec(), 46, now);
        assert_eq!(done, Some((b"2026-01-01 first\n  at frame".to_vec(), 28)));
        assert!(ml.flush_idle(now, Duration::from_secs(1)).is_empty());
        let mut rest = ml.flush_idle(now + Duration::from_secs(2), Duration::from_secs(1));
        rest.sort();
        assert_eq!(rest, vec![(1, b"2026-01-02 second".to_vec(), 46), (2, b"2026-01-01 other file".to_vec(), 22)]);
        assert!(ml.flush_all().is_empty());
    }
}
