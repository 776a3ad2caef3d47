//! The agent's configuration: a weir TOML file, or the Kinesis Agent's own
//! `agent.json` (chosen by the `.json` extension), both resolved into one
//! [`AgentConfig`]. Every mistake is reported with the key and how to fix it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use super::catch_up::RecordTime;
use super::preprocess::{LogFormat, Step};
use crate::manifest::units::{ByteSize, parse_duration};

/// Most records one `PutRecords` or `PutRecordBatch` may carry.
pub const MAX_BATCH_RECORDS: usize = 500;
/// Most bytes one `PutRecords` may carry (data plus partition keys).
pub const MAX_STREAM_BATCH_BYTES: u64 = 5 << 20;
/// Most bytes one `PutRecordBatch` may carry.
pub const MAX_DELIVERY_BATCH_BYTES: u64 = 4 << 20;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read agent config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML / JSON or has a wrong key.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// Where a flow's records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A weir stream, through Kinesis `PutRecords`.
    Stream(String),
    /// A delivery stream, through Firehose `PutRecordBatch`.
    Delivery(String),
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Stream(s) => write!(f, "stream {s}"),
            Destination::Delivery(d) => write!(f, "delivery stream {d}"),
        }
    }
}

/// Where to start in a file seen for the first time at startup, without a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StartPosition {
    /// Send the whole file.
    Beginning,
    /// Send only what is written from now on.
    End,
}

/// How records of a stream flow get their partition keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionKey {
    /// A random key per record: spreads records over every shard.
    Random,
    /// A hash of the record: equal records go to the same shard.
    LineHash,
}

/// One set of files and where their lines go.
#[derive(Debug, Clone)]
pub struct FlowConfig {
    /// The glob of files to follow (absolute).
    pub files: String,
    /// weir's HTTP API.
    pub endpoint: String,
    /// Where records go.
    pub destination: Destination,
    /// Where to start in files found at startup without a checkpoint.
    pub start: StartPosition,
    /// Stream flows only.
    pub partition_key: PartitionKey,
    /// Most records per request.
    pub max_batch_records: usize,
    /// Most bytes per request.
    pub max_batch_bytes: u64,
    /// A batch is sent at the latest this long after its first record was read.
    pub max_batch_age: Duration,
    /// Records begin at lines matching this (else every line is a record).
    pub multi_line_start: Option<Regex>,
    /// Steps applied to each record, in order.
    pub steps: Vec<Step>,
    /// Reads each record's time, to send a backlog of several files interleaved by it.
    pub record_time: Option<RecordTime>,
    /// First wait after a failed request.
    pub retry_initial_backoff: Duration,
    /// Longest wait between retries.
    pub retry_max_backoff: Duration,
}

impl FlowConfig {
    /// A stable name for logs and the checkpoint file.
    pub fn name(&self) -> String {
        format!("{} -> {}", self.files, self.destination)
    }
}

/// The whole agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where file positions are kept.
    pub checkpoint_file: PathBuf,
    /// How often files are looked at.
    pub poll_interval: Duration,
    /// The flows.
    pub flows: Vec<FlowConfig>,
    /// Settings that were accepted but ignored, to be logged.
    pub warnings: Vec<String>,
}

/// The default API address.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7070";

impl AgentConfig {
    /// Reads a config file: `agent.json` syntax if it ends in `.json`, else weir TOML.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let parsed = if path.extension().is_some_and(|e| e == "json") {
            from_agent_json(&text, base)
        } else {
            from_toml(&text, base)
        };
        parsed.map_err(|message| ConfigError::Invalid { path: path.to_owned(), message })
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawToml {
    endpoint: Option<String>,
    checkpoint_file: Option<PathBuf>,
    poll_interval: Option<String>,
    #[serde(default)]
    flows: Vec<RawFlow>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawFlow {
    files: String,
    stream: Option<String>,
    delivery_stream: Option<String>,
    start: Option<StartPosition>,
    partition_key: Option<PartitionKey>,
    max_batch_records: Option<usize>,
    max_batch_bytes: Option<ByteSize>,
    max_batch_age: Option<String>,
    retry_initial_backoff: Option<String>,
    retry_max_backoff: Option<String>,
    #[serde(default)]
    preprocess: Vec<RawStep>,
    record_time: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", rename_all_fields = "kebab-case", deny_unknown_fields)]
enum RawStep {
    SingleLine,
    MultiLine { start_pattern: String },
    CsvToJson { fields: Vec<String>, delimiter: Option<String> },
    LogToJson { format: RawLogFormat, fields: Option<Vec<String>> },
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RawLogFormat {
    CommonApacheLog,
    CombinedApacheLog,
    Syslog,
    Rfc5424Syslog,
}

/// A flow's settings before checking, common to both syntaxes.
struct Draft {
    files: String,
    endpoint: String,
    stream: Option<String>,
    delivery: Option<String>,
    start: StartPosition,
    partition_key: PartitionKey,
    max_batch_records: Option<usize>,
    max_batch_bytes: Option<u64>,
    max_batch_age: Duration,
    multi_line_start: Option<String>,
    steps: Vec<Step>,
    record_time: Option<String>,
    retry_initial_backoff: Duration,
    retry_max_backoff: Duration,
}

fn duration(key: &str, text: Option<&str>, default: Duration) -> Result<Duration, String> {
    text.map_or(Ok(default), |t| parse_duration(t).map_err(|e| format!("`{key}`: {e}")))
}

fn from_toml(text: &str, base: &Path) -> Result<AgentConfig, String> {
    let raw: RawToml = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
    let endpoint = raw.endpoint.unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
    let mut flows = Vec::new();
    for (i, flow) in raw.flows.into_iter().enumerate() {
        let at = format!("flows[{i}]");
        let mut multi_line_start = None;
        let mut steps = Vec::new();
        for (j, step) in flow.preprocess.into_iter().enumerate() {
            match step {
                RawStep::MultiLine { start_pattern } if j == 0 => multi_line_start = Some(start_pattern),
                RawStep::MultiLine { .. } => {
                    return Err(format!(
                        "{at}.preprocess[{j}]: `multi-line` decides where records begin, so it must be the first step"
                    ));
                }
                RawStep::SingleLine => steps.push(Step::SingleLine),
                RawStep::CsvToJson { fields, delimiter } => steps.push(csv_step(&at, fields, delimiter)?),
                RawStep::LogToJson { format, fields } => {
                    let format = match format {
                        RawLogFormat::CommonApacheLog => LogFormat::CommonApache,
                        RawLogFormat::CombinedApacheLog => LogFormat::CombinedApache,
                        RawLogFormat::Syslog => LogFormat::Syslog,
                        RawLogFormat::Rfc5424Syslog => LogFormat::Rfc5424Syslog,
                    };
                    steps.push(Step::LogToJson { format, fields });
                }
            }
        }
        let draft = Draft {
            files: flow.files,
            endpoint: endpoint.clone(),
            stream: flow.stream,
            delivery: flow.delivery_stream,
            start: flow.start.unwrap_or(StartPosition::End),
            partition_key: flow.partition_key.unwrap_or(PartitionKey::Random),
            max_batch_records: flow.max_batch_records,
            max_batch_bytes: flow.max_batch_bytes.map(|b| b.0),
            max_batch_age: duration(&format!("{at}.max-batch-age"), flow.max_batch_age.as_deref(), SECOND)?,
            multi_line_start,
            steps,
            record_time: flow.record_time,
            retry_initial_backoff: duration(
                &format!("{at}.retry-initial-backoff"),
                flow.retry_initial_backoff.as_deref(),
                INITIAL_BACKOFF,
            )?,
            retry_max_backoff: duration(
                &format!("{at}.retry-max-backoff"),
                flow.retry_max_backoff.as_deref(),
                MAX_BACKOFF,
            )?,
        };
        flows.push(finish_flow(&at, draft, base, Keys::TOML)?);
    }
    let checkpoint_file = base.join(raw.checkpoint_file.unwrap_or_else(|| PathBuf::from("agent-checkpoints.json")));
    let poll_interval = duration("poll-interval", raw.poll_interval.as_deref(), DEFAULT_POLL)?;
    finish(checkpoint_file, poll_interval, flows, Vec::new(), "[[flows]]")
}

const SECOND: Duration = Duration::from_secs(1);
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const DEFAULT_POLL: Duration = Duration::from_millis(200);

fn finish(
    checkpoint_file: PathBuf,
    poll_interval: Duration,
    flows: Vec<FlowConfig>,
    warnings: Vec<String>,
    flows_key: &str,
) -> Result<AgentConfig, String> {
    if flows.is_empty() {
        return Err(format!("no flows: add at least one `{flows_key}` naming the files to follow and where they go"));
    }
    if poll_interval.is_zero() {
        return Err("`poll-interval` must be more than 0".into());
    }
    Ok(AgentConfig { checkpoint_file, poll_interval, flows, warnings })
}

fn csv_step(at: &str, fields: Vec<String>, delimiter: Option<String>) -> Result<Step, String> {
    if fields.is_empty() {
        return Err(format!("{at}: csv-to-json needs the field names, e.g. fields = [\"id\", \"time\"]"));
    }
    let delimiter = delimiter.unwrap_or_else(|| ",".to_owned());
    if delimiter.is_empty() {
        return Err(format!("{at}: the csv-to-json delimiter must not be empty"));
    }
    Ok(Step::CsvToJson { fields, delimiter })
}

/// How the keys are spelled in each syntax, for messages.
struct Keys {
    files: &'static str,
    stream: &'static str,
    delivery: &'static str,
    partition_key: &'static str,
    records: &'static str,
    bytes: &'static str,
    multi_line: &'static str,
}

impl Keys {
    const TOML: Keys = Keys {
        files: "files",
        stream: "stream",
        delivery: "delivery-stream",
        partition_key: "partition-key",
        records: "max-batch-records",
        bytes: "max-batch-bytes",
        multi_line: "multi-line start-pattern",
    };
    const JSON: Keys = Keys {
        files: "filePattern",
        stream: "kinesisStream",
        delivery: "deliveryStream",
        partition_key: "partitionKeyOption",
        records: "maxBufferSizeRecords",
        bytes: "maxBufferSizeBytes",
        multi_line: "multiLineStartPattern",
    };
}

fn finish_flow(at: &str, d: Draft, base: &Path, keys: Keys) -> Result<FlowConfig, String> {
    let files = base.join(&d.files).to_string_lossy().into_owned();
    if d.files.trim().is_empty() {
        return Err(format!("{at}: `{}` is empty: name the files to follow, e.g. \"/var/log/app/*.log\"", keys.files));
    }
    glob::Pattern::new(&files).map_err(|e| format!("{at}: `{}` = \"{}\" is not a glob: {e}", keys.files, d.files))?;
    if files.ends_with('/') {
        return Err(format!("{at}: `{}` names a folder: add a file pattern such as `*.log`", keys.files));
    }
    let (destination, bytes_limit) = match (d.stream, d.delivery) {
        (Some(s), None) => (Destination::Stream(s), MAX_STREAM_BATCH_BYTES),
        (None, Some(ds)) => (Destination::Delivery(ds), MAX_DELIVERY_BATCH_BYTES),
        _ => {
            return Err(format!(
                "{at}: set exactly one of `{}` (a weir stream) or `{}` (a delivery stream)",
                keys.stream, keys.delivery
            ));
        }
    };
    if matches!(destination, Destination::Delivery(_)) && d.partition_key != PartitionKey::Random {
        return Err(format!(
            "{at}: `{}` applies to streams only; delivery streams have no partition keys",
            keys.partition_key
        ));
    }
    let max_batch_records = d.max_batch_records.unwrap_or(MAX_BATCH_RECORDS);
    if !(1..=MAX_BATCH_RECORDS).contains(&max_batch_records) {
        return Err(format!("{at}: `{}` = {max_batch_records}: use 1 to {MAX_BATCH_RECORDS}", keys.records));
    }
    let max_batch_bytes = d.max_batch_bytes.unwrap_or(1 << 20);
    if max_batch_bytes == 0 || max_batch_bytes > bytes_limit {
        return Err(format!(
            "{at}: `{}` = {max_batch_bytes}: use 1 to {bytes_limit} bytes (the API's limit for one request to a {})",
            keys.bytes,
            if bytes_limit == MAX_STREAM_BATCH_BYTES { "stream" } else { "delivery stream" }
        ));
    }
    let multi_line_start = match d.multi_line_start {
        Some(p) => Some(Regex::new(&p).map_err(|e| format!("{at}: `{}` is not a valid regex: {e}", keys.multi_line))?),
        None => None,
    };
    let record_time = match d.record_time {
        Some(p) => Some(RecordTime::new(&p).map_err(|e| format!("{at}: `record-time` {e}"))?),
        None => None,
    };
    if d.retry_initial_backoff.is_zero() || d.retry_max_backoff < d.retry_initial_backoff {
        return Err(format!("{at}: retry backoffs must be more than 0, the maximum at least the initial one"));
    }
    crate::client::Client::new(&d.endpoint).map_err(|e| format!("endpoint: {e}"))?;
    Ok(FlowConfig {
        files,
        endpoint: d.endpoint,
        destination,
        start: d.start,
        partition_key: d.partition_key,
        max_batch_records,
        max_batch_bytes,
        max_batch_age: d.max_batch_age,
        multi_line_start,
        steps: d.steps,
        record_time,
        retry_initial_backoff: d.retry_initial_backoff,
        retry_max_backoff: d.retry_max_backoff,
    })
}

/// Top-level `agent.json` keys weir accepts but ignores, with the reason.
fn ignored_top_level(key: &str) -> Option<&'static str> {
    const CREDENTIALS: &str =
        "ignored: weir signs requests with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the environment";
    match key {
        "awsAccessKeyId" | "awsSecretAccessKey" | "awsSessionToken" | "assumeRoleARN" | "assumeRoleExternalId" => {
            Some(CREDENTIALS)
        }
        k if k.starts_with("userDefinedCredentialsProvider.") || k.starts_with("sts.") => Some(CREDENTIALS),
        k if k.starts_with("cloudwatch.") => {
            Some("ignored: weir has no CloudWatch metrics; the agent logs its counters")
        }
        k if k.starts_with("log.") => Some("ignored: the agent logs to stderr; WEIR_LOG sets the level"),
        "maxSendingThreads"
        | "sendingThreadsKeepAliveMillis"
        | "sendingThreadsMaxQueueSize"
        | "shutdownTimeoutSeconds" => Some("ignored: weir sends each flow's batches one at a time"),
        _ => None,
    }
}

fn from_agent_json(text: &str, base: &Path) -> Result<AgentConfig, String> {
    let root: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(top) = root else {
        return Err("the top level must be a JSON object like {\"flows\": [...]}".into());
    };
    let mut warnings = Vec::new();
    let mut kinesis_endpoint = None;
    let mut firehose_endpoint = None;
    let mut checkpoint_file = None;
    let mut raw_flows = Vec::new();
    for (key, value) in &top {
        match key.as_str() {
            "kinesis.endpoint" => kinesis_endpoint = Some(json_str(key, value)?),
            "firehose.endpoint" => firehose_endpoint = Some(json_str(key, value)?),
            "checkpointFile" => checkpoint_file = Some(json_str(key, value)?),
            "flows" => {
                raw_flows = value.as_array().cloned().ok_or_else(|| "`flows` must be an array of objects".to_owned())?
            }
            other => match ignored_top_level(other) {
                Some(why) => warnings.push(format!("`{other}`: {why}")),
                None => return Err(format!("unknown key `{other}`: weir's agent does not support it; remove it")),
            },
        }
    }
    let mut flows = Vec::new();
    for (i, raw) in raw_flows.iter().enumerate() {
        let at = format!("flows[{i}]");
        let Value::Object(flow) = raw else { return Err(format!("{at} must be an object")) };
        let mut draft = Draft {
            files: String::new(),
            endpoint: String::new(),
            stream: None,
            delivery: None,
            start: StartPosition::End,
            partition_key: PartitionKey::Random,
            max_batch_records: None,
            max_batch_bytes: None,
            // The Kinesis Agent's default.
            max_batch_age: Duration::from_secs(60),
            multi_line_start: None,
            steps: Vec::new(),
            record_time: None,
            retry_initial_backoff: INITIAL_BACKOFF,
            retry_max_backoff: MAX_BACKOFF,
        };
        let mut files = None;
        for (key, value) in flow {
            let k = |e: String| format!("{at}.{key}: {e}");
            match key.as_str() {
                "filePattern" => files = Some(json_str(key, value).map_err(k)?),
                "kinesisStream" => draft.stream = Some(json_str(key, value).map_err(k)?),
                "deliveryStream" => draft.delivery = Some(json_str(key, value).map_err(k)?),
                "initialPosition" => {
                    draft.start = match json_str(key, value).map_err(k)?.as_str() {
                        "START_OF_FILE" => StartPosition::Beginning,
                        "END_OF_FILE" => StartPosition::End,
                        other => return Err(k(format!("`{other}`: use START_OF_FILE or END_OF_FILE"))),
                    }
                }
                "partitionKeyOption" => {
                    draft.partition_key = match json_str(key, value).map_err(k)?.as_str() {
                        "RANDOM" => PartitionKey::Random,
                        "DETERMINISTIC" => PartitionKey::LineHash,
                        other => return Err(k(format!("`{other}`: use RANDOM or DETERMINISTIC"))),
                    }
                }
                "maxBufferAgeMillis" => draft.max_batch_age = Duration::from_millis(json_u64(value).map_err(k)?),
                "maxBufferSizeRecords" => {
                    draft.max_batch_records = Some(usize::try_from(json_u64(value).map_err(k)?).unwrap_or(usize::MAX))
                }
                "maxBufferSizeBytes" => draft.max_batch_bytes = Some(json_u64(value).map_err(k)?),
                "retryInitialBackoffMillis" => {
                    draft.retry_initial_backoff = Duration::from_millis(json_u64(value).map_err(k)?)
                }
                "retryMaxBackoffMillis" => draft.retry_max_backoff = Duration::from_millis(json_u64(value).map_err(k)?),
                "multiLineStartPattern" => draft.multi_line_start = Some(json_str(key, value).map_err(k)?),
                "dataProcessingOptions" => {
                    let options = value.as_array().ok_or_else(|| k("must be an array of options".into()))?;
                    for (j, option) in options.iter().enumerate() {
                        draft.steps.push(json_step(&format!("{at}.dataProcessingOptions[{j}]"), option)?);
                    }
                }
                "minTimeBetweenFilePollsMillis" | "maxFileCheckpointAge" | "publishQueueCapacity" => {
                    warnings.push(format!("{at}.{key}: ignored: weir polls every flow at the agent's poll interval"))
                }
                other => {
                    return Err(format!(
                        "{at}: `{other}` is not supported by weir's agent (it would change what is sent); remove it"
                    ));
                }
            }
        }
        draft.files = files.ok_or_else(|| format!("{at}: `filePattern` is missing: name the files to follow"))?;
        draft.endpoint = match (&draft.stream, &draft.delivery) {
            (Some(_), _) => kinesis_endpoint.clone(),
            (None, _) => firehose_endpoint.clone(),
        }
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
        flows.push(finish_flow(&at, draft, base, Keys::JSON)?);
    }
    let checkpoint_file = base.join(checkpoint_file.unwrap_or_else(|| "agent-checkpoints.json".to_owned()));
    finish(checkpoint_file, DEFAULT_POLL, flows, warnings, "flows")
}

fn json_step(at: &str, option: &Value) -> Result<Step, String> {
    let Value::Object(option) = option else { return Err(format!("{at} must be an object")) };
    let name =
        option.get("optionName").and_then(Value::as_str).ok_or_else(|| format!("{at}: `optionName` is missing"))?;
    let allowed: &[&str] = match name {
        "SINGLELINE" => &[],
        "CSVTOJSON" => &["customFieldNames", "delimiter"],
        "LOGTOJSON" => &["logFormat", "customFieldNames"],
        other => {
            return Err(format!(
                "{at}: optionName `{other}` is not supported; use SINGLELINE, CSVTOJSON or LOGTOJSON \
                 (multiLineStartPattern is a flow key)"
            ));
        }
    };
    if let Some(extra) = option.keys().find(|k| *k != "optionName" && !allowed.contains(&k.as_str())) {
        return Err(format!("{at}: `{extra}` is not supported with {name}; remove it"));
    }
    let names = |required: bool| -> Result<Option<Vec<String>>, String> {
        match option.get("customFieldNames") {
            None if required => Err(format!("{at}: {name} needs `customFieldNames`, e.g. [\"id\", \"time\"]")),
            None => Ok(None),
            Some(v) => v
                .as_array()
                .and_then(|a| a.iter().map(|s| s.as_str().map(str::to_owned)).collect::<Option<Vec<_>>>())
                .map(Some)
                .ok_or_else(|| format!("{at}: `customFieldNames` must be an array of strings")),
        }
    };
    match name {
        "SINGLELINE" => Ok(Step::SingleLine),
        "CSVTOJSON" => {
            let delimiter = match option.get("delimiter") {
                None => None,
                Some(v) => Some(json_str("delimiter", v).map_err(|e| format!("{at}: {e}"))?),
            };
            csv_step(at, names(true)?.unwrap_or_default(), delimiter)
        }
        _ => {
            let format = match option.get("logFormat").and_then(Value::as_str) {
                Some("COMMONAPACHELOG") => LogFormat::CommonApache,
                Some("COMBINEDAPACHELOG") => LogFormat::CombinedApache,
                Some("SYSLOG") => LogFormat::Syslog,
                Some("RFC5424SYSLOG") => LogFormat::Rfc5424Syslog,
                _ => {
                    return Err(format!(
                        "{at}: `logFormat` must be COMMONAPACHELOG, COMBINEDAPACHELOG, SYSLOG or RFC5424SYSLOG"
                    ));
                }
            };
            Ok(Step::LogToJson { format, fields: names(false)? })
        }
    }
}

fn json_str(key: &str, value: &Value) -> Result<String, String> {
    value.as_str().map(str::to_owned).ok_or_else(|| format!("`{key}` must be a string"))
}

fn json_u64(value: &Value) -> Result<u64, String> {
    value.as_u64().ok_or_else(|| "must be a whole number of at least 0".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml(text: &str) -> Result<AgentConfig, String> {
        from_toml(text, Path::new("/etc/weir"))
    }

    fn json(text: &str) -> Result<AgentConfig, String> {
        from_agent_json(text, Path::new("/etc/weir"))
    }

    #[test]
    fn the_toml_example_parses() {
        let config = toml(
            r#"
endpoint = "http://127.0.0.1:7070"
checkpoint-file = "cp.json"
[[flows]]
files = "/var/log/tolls/*.log"
delivery-stream = "toll-transactions"
start = "beginning"
max-batch-records = 100
max-batch-bytes = "1MiB"
max-batch-age = "500ms"
preprocess = [{ kind = "multi-line", start-pattern = "^\\d{4}-" }, { kind = "csv-to-json", fields = ["a","b"], delimiter = ";" }]
[[flows]]
files = "logs/app.log*"
stream = "toll-lines"
partition-key = "line-hash"
preprocess = [{ kind = "log-to-json", format = "combined-apache-log" }, { kind = "single-line" }]
"#,
        )
        .expect("valid");
        assert_eq!(config.checkpoint_file, Path::new("/etc/weir/cp.json"));
        let [a, b] = &config.flows[..] else { panic!("two flows") };
        assert_eq!(a.destination, Destination::Delivery("toll-transactions".into()));
        assert_eq!(a.start, StartPosition::Beginning);
        assert_eq!(
            (a.max_batch_records, a.max_batch_bytes, a.max_batch_age),
            (100, 1 << 20, Duration::from_millis(500))
        );
        assert!(a.multi_line_start.as_ref().is_some_and(|r| r.is_match("2026-01-01")));
        assert_eq!(a.steps, vec![Step::CsvToJson { fields: vec!["a".into(), "b".into()], delimiter: ";".into() }]);
        assert_eq!(b.files, "/etc/weir/logs/app.log*");
        assert_eq!(b.destination, Destination::Stream("toll-lines".into()));
        assert_eq!(b.partition_key, PartitionKey::LineHash);
        assert_eq!(b.start, StartPosition::End);
        assert_eq!(b.steps.len(), 2);
    }

    #[test]
    fn toml_mistakes_name_the_key() {
        let cases = [
            ("[[flows]]\nfiles = \"a\"\nstreem = \"x\"", "streem"),
            ("[[flows]]\nfiles = \"a\"", "set exactly one of `stream`"),
            ("[[flows]]\nfiles = \"a\"\nstream = \"x\"\ndelivery-stream = \"y\"", "exactly one"),
            ("[[flows]]\nfiles = \"a\"\nstream = \"x\"\nmax-batch-records = 501", "`max-batch-records` = 501"),
            ("[[flows]]\nfiles = \"a\"\ndelivery-stream = \"x\"\nmax-batch-bytes = \"5MiB\"", "max-batch-bytes"),
            ("[[flows]]\nfiles = \"a\"\nstream = \"x\"\nmax-batch-age = \"soon\"", "flows[0].max-batch-age"),
            ("[[flows]]\nfiles = \"a\"\nstream = \"x\"\nstart = \"middle\"", "middle"),
            (
                "[[flows]]\nfiles = \"a\"\nstream = \"x\"\npreprocess = [{ kind = \"multi-line\", start-pattern = \"(\" }]",
                "regex",
            ),
            (
                "[[flows]]\nfiles = \"a\"\nstream = \"x\"\npreprocess = [{ kind = \"single-line\" }, { kind = \"multi-line\", start-pattern = \"a\" }]",
                "first step",
            ),
            (
                "[[flows]]\nfiles = \"a\"\nstream = \"x\"\npreprocess = [{ kind = \"log-to-json\", format = \"iis\" }]",
                "iis",
            ),
            ("[[flows]]\nfiles = \"a\"\ndelivery-stream = \"x\"\npartition-key = \"line-hash\"", "streams only"),
            (
                "[[flows]]\nfiles = \"a\"\nstream = \"x\"\nrecord-time = \"^[^,]*,\"",
                "`record-time` has no capture group",
            ),
            ("endpoint = \"https://kinesis.example\"\n[[flows]]\nfiles = \"a\"\nstream = \"x\"", "http://"),
            ("", "no flows"),
        ];
        for (text, expected) in cases {
            let err = toml(text).expect_err(text);
            assert!(err.contains(expected), "{text}: `{err}` should mention `{expected}`");
        }
    }

    #[test]
    fn agent_json_is_understood() {
        let config = json(
            r#"{
  "cloudwatch.emitMetrics": false,
  "awsAccessKeyId": "AKIA",
  "kinesis.endpoint": "http://127.0.0.1:7071",
  "firehose.endpoint": "http://127.0.0.1:7072",
  "checkpointFile": "/tmp/cp.json",
  "flows": [
    { "filePattern": "/var/log/app/*.log", "kinesisStream": "lines", "initialPosition": "START_OF_FILE",
      "partitionKeyOption": "DETERMINISTIC", "maxBufferAgeMillis": 250, "maxBufferSizeRecords": 10,
      "maxBufferSizeBytes": 4096, "multiLineStartPattern": "^\\[",
      "dataProcessingOptions": [{ "optionName": "SINGLELINE" }] },
    { "filePattern": "/var/log/httpd/access*", "deliveryStream": "web",
      "dataProcessingOptions": [{ "optionName": "LOGTOJSON", "logFormat": "COMMONAPACHELOG" },
                                { "optionName": "CSVTOJSON", "customFieldNames": ["a"], "delimiter": "\t" }] }
  ]
}"#,
        )
        .expect("valid");
        assert_eq!(config.warnings.len(), 2, "{:?}", config.warnings);
        assert_eq!(config.checkpoint_file, Path::new("/tmp/cp.json"));
        let [a, b] = &config.flows[..] else { panic!("two flows") };
        assert_eq!(a.endpoint, "http://127.0.0.1:7071");
        assert_eq!(a.start, StartPosition::Beginning);
        assert_eq!(a.partition_key, PartitionKey::LineHash);
        assert_eq!((a.max_batch_records, a.max_batch_bytes, a.max_batch_age), (10, 4096, Duration::from_millis(250)));
        assert!(a.multi_line_start.is_some());
        assert_eq!(a.steps, vec![Step::SingleLine]);
        assert_eq!(b.endpoint, "http://127.0.0.1:7072");
        assert_eq!(b.destination, Destination::Delivery("web".into()));
        assert_eq!(b.start, StartPosition::End);
        assert_eq!(b.max_batch_age, Duration::from_secs(60));
        assert_eq!(b.steps[0], Step::LogToJson { format: LogFormat::CommonApache, fields: None });
    }

    #[test]
    fn agent_json_mistakes_are_explained() {
        let cases = [
            (r#"{"flows": [{"filePattern": "/a", "kinesisStream": "x", "skipHeaderLines": 1}]}"#, "skipHeaderLines"),
            (r#"{"flows": [{"kinesisStream": "x"}]}"#, "`filePattern` is missing"),
            (r#"{"flows": [{"filePattern": "/a", "kinesisStream": "x", "initialPosition": "LATEST"}]}"#, "END_OF_FILE"),
            (
                r#"{"flows": [{"filePattern": "/a", "kinesisStream": "x", "dataProcessingOptions": [{"optionName": "ADDEC2METADATA"}]}]}"#,
                "ADDEC2METADATA",
            ),
            (
                r#"{"flows": [{"filePattern": "/a", "kinesisStream": "x", "dataProcessingOptions": [{"optionName": "CSVTOJSON"}]}]}"#,
                "customFieldNames",
            ),
            (
                r#"{"flows": [{"filePattern": "/a", "kinesisStream": "x", "dataProcessingOptions": [{"optionName": "LOGTOJSON", "logFormat": "COMMONAPACHELOG", "matchPattern": "x"}]}]}"#,
                "matchPattern",
            ),
            (
                r#"{"flows": [{"filePattern": "/a", "kinesisStream": "x", "maxBufferAgeMillis": "1s"}]}"#,
                "maxBufferAgeMillis",
            ),
            (r#"{"kinesis.region": "us-east-1", "flows": []}"#, "kinesis.region"),
            (r#"{"flows": []}"#, "no flows"),
            ("[1]", "JSON object"),
        ];
        for (text, expected) in cases {
            let err = json(text).expect_err(text);
            assert!(err.contains(expected), "{text}: `{err}` should mention `{expected}`");
        }
    }
}
