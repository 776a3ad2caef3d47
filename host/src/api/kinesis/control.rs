//! What Kinesis keeps of a stream besides its shards and records, that tools set
//! and read back: tags, the stream mode, the encryption setting, and the
//! enhanced fan-out consumers registered on it. Kept in `<data-dir>/kinesis.json`,
//! written whole (to a temporary file, synced, renamed) at every change: control
//! calls are rare. A stream made again under the same name starts afresh: what
//! is kept names the creation time of the stream it belongs to.
//!
//! weir does not encrypt a stream with a KMS key (there is no KMS here): the
//! setting is kept and reported back, for tools that set it, and a warning says so.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::super::aws::AwsError;

/// Most tags on a stream, as Kinesis.
pub const MAX_TAGS: usize = 50;
/// Most enhanced fan-out consumers on a stream, as Kinesis.
pub const MAX_CONSUMERS: usize = 20;

/// A stream's mode, as tools set it (weir's capacity is its own either way).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StreamMode {
    /// Shards as asked (the default).
    #[default]
    Provisioned,
    /// Kinesis scales the shards itself.
    OnDemand,
}

/// What is kept of one stream.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StreamControl {
    /// The creation time of the stream this belongs to.
    pub created_ms: i64,
    /// Tags, by key.
    pub tags: BTreeMap<String, String>,
    /// The stream mode.
    pub mode: StreamMode,
    /// The KMS key id of `StartStreamEncryption`, if it was called since the last `Stop`.
    pub kms_key: Option<String>,
    /// Enhanced fan-out consumers, by name.
    pub consumers: BTreeMap<String, Consumer>,
}

/// A registered enhanced fan-out consumer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Consumer {
    /// When it was registered, ms since the Unix epoch (in its ARN, in seconds).
    pub created_ms: i64,
}

/// The kept control settings of every stream.
pub struct Control {
    path: PathBuf,
    streams: Mutex<Option<BTreeMap<String, StreamControl>>>,
}

impl Control {
    /// The settings kept at `path` (read at first use).
    pub fn at(path: PathBuf) -> Control {
        Control { path, streams: Mutex::new(None) }
    }

    /// What is kept of stream `name` (created at `created_ms`).
    pub fn get(&self, name: &str, created_ms: i64) -> Result<StreamControl, AwsError> {
        self.with(|streams| Ok(current(streams, name, created_ms).clone()), false)
    }

    /// Changes what is kept of stream `name` and records it before returning.
    pub fn update<T>(
        &self,
        name: &str,
        created_ms: i64,
        change: impl FnOnce(&mut StreamControl) -> Result<T, AwsError>,
    ) -> Result<T, AwsError> {
        self.with(|streams| change(current(streams, name, created_ms)), true)
    }

    /// Forgets a deleted stream.
    pub fn forget(&self, name: &str) -> Result<(), AwsError> {
        self.with(
            |streams| {
                streams.remove(name);
                Ok(())
            },
            true,
        )
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut BTreeMap<String, StreamControl>) -> Result<T, AwsError>,
        save: bool,
    ) -> Result<T, AwsError> {
        let mut guard = self.streams.lock().map_err(|_| AwsError::internal())?;
        if guard.is_none() {
            *guard = Some(self.load()?);
        }
        let Some(streams) = guard.as_mut() else { return Err(AwsError::internal()) };
        if !save {
            // A read changes nothing that is kept (at most it adds a stream's defaults).
            return f(streams);
        }
        // Changed on a copy: what is kept in memory is what is on disk.
        let mut changed = streams.clone();
        let answer = f(&mut changed)?;
        self.save(&changed)?;
        *streams = changed;
        Ok(answer)
    }

    fn load(&self) -> Result<BTreeMap<String, StreamControl>, AwsError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                tracing::error!(path = %self.path.display(), error = %e, "the Kinesis control settings are unreadable");
                AwsError::internal()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "cannot read the Kinesis control settings");
                Err(AwsError::internal())
            }
        }
    }

    fn save(&self, streams: &BTreeMap<String, StreamControl>) -> Result<(), AwsError> {
        let failed = |e: std::io::Error| {
            tracing::error!(path = %self.path.display(), error = %e, "cannot save the Kinesis control settings");
            AwsError::internal()
        };
        let text = serde_json::to_vec_pretty(streams).map_err(|e| failed(std::io::Error::other(e)))?;
        let tmp = self.path.with_extension("tmp");
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(failed)
    }
}

/// The entry of stream `name`, afresh if it belonged to an earlier stream of that name.
fn current<'a>(streams: &'a mut BTreeMap<String, StreamControl>, name: &str, created_ms: i64) -> &'a mut StreamControl {
    let entry = streams.entry(name.to_owned()).or_insert_with(|| StreamControl { created_ms, ..Default::default() });
    if entry.created_ms != created_ms {
        *entry = StreamControl { created_ms, ..Default::default() };
    }
    entry
}

/// The operations that set and read what is kept.
pub(super) mod operations {
    use serde_json::{Value, json};

    use super::super::{Args, arn};
    use super::{Consumer, Control, MAX_CONSUMERS, MAX_TAGS, StreamMode};
    use crate::api::aws::AwsError;
    use crate::stream::{StreamInfo, StreamStore, now_ms};

    fn stream(streams: &dyn StreamStore, args: &Args<'_>) -> Result<StreamInfo, AwsError> {
        Ok(streams.info(args.stream_name()?)?)
    }

    /// `AddTagsToStream`, `ListTagsForStream` and `RemoveTagsFromStream`.
    pub(in super::super) fn tags(
        control: &Control,
        streams: &dyn StreamStore,
        operation: &str,
        args: &Args<'_>,
    ) -> Result<Value, AwsError> {
        let info = stream(streams, args)?;
        match operation {
            "AddTagsToStream" => {
                let tags = args
                    .tags
                    .as_ref()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| AwsError::invalid("Tags is required"))?;
                check_tags(tags)?;
                control.update(&info.name, info.created_ms, |kept| {
                    let mut after = kept.tags.clone();
                    after.extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())));
                    if after.len() > MAX_TAGS {
                        return Err(AwsError::new(
                            "LimitExceededException",
                            format!("a stream has at most {MAX_TAGS} tags; this would make {}", after.len()),
                        ));
                    }
                    kept.tags = after;
                    Ok(json!({}))
                })
            }
            "RemoveTagsFromStream" => {
                let keys = args
                    .tag_keys
                    .as_ref()
                    .filter(|k| !k.is_empty())
                    .ok_or_else(|| AwsError::invalid("TagKeys is required"))?;
                control.update(&info.name, info.created_ms, |kept| {
                    for key in keys {
                        kept.tags.remove(key);
                    }
                    Ok(json!({}))
                })
            }
            _ => {
                let kept = control.get(&info.name, info.created_ms)?;
                let limit = args.limit.unwrap_or(MAX_TAGS).clamp(1, MAX_TAGS);
                let after = args.exclusive_start_tag_key.as_deref().unwrap_or("");
                let rest: Vec<(&String, &String)> = kept.tags.iter().filter(|(k, _)| k.as_str() > after).collect();
                let page: Vec<Value> = rest.iter().take(limit).map(|(k, v)| json!({"Key": k, "Value": v})).collect();
                Ok(json!({"Tags": page, "HasMoreTags": rest.len() > limit}))
            }
        }
    }

    /// Tags as Kinesis takes them: keys of 1 to 128 characters, values of at most 256.
    pub(in super::super) fn check_tags(tags: &std::collections::BTreeMap<String, String>) -> Result<(), AwsError> {
        for (key, value) in tags {
            if key.is_empty() || key.chars().count() > 128 || key.starts_with("aws:") {
                return Err(AwsError::invalid(format!(
                    "tag key `{key}` must have 1 to 128 characters and not start with `aws:`"
                )));
            }
            if value.chars().count() > 256 {
                return Err(AwsError::invalid(format!("the value of tag `{key}` is longer than 256 characters")));
            }
        }
        if tags.len() > MAX_TAGS {
            return Err(AwsError::invalid(format!("at most {MAX_TAGS} tags at once")));
        }
        Ok(())
    }

    /// `UpdateStreamMode`, `StartStreamEncryption` and `StopStreamEncryption`.
    pub(in super::super) fn settings(
        control: &Control,
        streams: &dyn StreamStore,
        operation: &str,
        args: &Args<'_>,
    ) -> Result<Value, AwsError> {
        let info = stream(streams, args)?;
        control.update(&info.name, info.created_ms, |kept| {
            match operation {
                "UpdateStreamMode" => {
                    let mode = args
                        .stream_mode_details
                        .as_ref()
                        .ok_or_else(|| AwsError::invalid("StreamModeDetails is required"))?;
                    kept.mode = mode.stream_mode;
                }
                "StartStreamEncryption" => {
                    if args.encryption_type.as_deref() != Some("KMS") {
                        return Err(AwsError::invalid("EncryptionType must be KMS"));
                    }
                    let key = args.key_id.as_deref().filter(|k| !k.is_empty()).ok_or_else(|| AwsError::invalid("KeyId is required"))?;
                    tracing::warn!(stream = %info.name, "StartStreamEncryption: the KMS setting is kept and reported, but weir does not encrypt records with KMS");
                    kept.kms_key = Some(key.to_owned());
                }
                _ => {
                    if args.encryption_type.as_deref() != Some("KMS") {
                        return Err(AwsError::invalid("EncryptionType must be KMS"));
                    }
                    kept.kms_key = None;
                }
            }
            Ok(json!({}))
        })
    }

    /// The mode and encryption fields of a stream's description.
    pub(in super::super) fn describe(
        control: &Control,
        info: &StreamInfo,
        description: &mut Value,
    ) -> Result<(), AwsError> {
        let kept = control.get(&info.name, info.created_ms)?;
        description["StreamModeDetails"] = json!({"StreamMode": mode_name(kept.mode)});
        match &kept.kms_key {
            Some(key) => {
                description["EncryptionType"] = json!("KMS");
                description["KeyId"] = json!(key);
            }
            None => description["EncryptionType"] = json!("NONE"),
        }
        Ok(())
    }

    pub(in super::super) fn mode_name(mode: StreamMode) -> &'static str {
        match mode {
            StreamMode::Provisioned => "PROVISIONED",
            StreamMode::OnDemand => "ON_DEMAND",
        }
    }

    /// How many consumers are registered on a stream.
    pub(in super::super) fn consumer_count(control: &Control, info: &StreamInfo) -> Result<usize, AwsError> {
        Ok(control.get(&info.name, info.created_ms)?.consumers.len())
    }

    fn consumer_arn(stream: &str, name: &str, consumer: &Consumer) -> String {
        format!("{}/consumer/{name}:{}", arn(stream), consumer.created_ms / 1000)
    }

    fn consumer_json(stream: &str, name: &str, consumer: &Consumer) -> Value {
        json!({
            "ConsumerName": name,
            "ConsumerARN": consumer_arn(stream, name, consumer),
            "ConsumerStatus": "ACTIVE",
            "ConsumerCreationTimestamp": consumer.created_ms as f64 / 1000.0,
        })
    }

    /// The stream and consumer names a call addresses: a `ConsumerARN`, or a
    /// `StreamARN` with a `ConsumerName`.
    pub(in super::super) fn addressed(args: &Args<'_>) -> Result<(String, String), AwsError> {
        if let Some(consumer_arn) = &args.consumer_arn {
            let invalid = || {
                AwsError::invalid(format!(
                    "ConsumerARN {consumer_arn} is not arn:aws:kinesis:<region>:<account>:stream/<stream>/consumer/<name>:<time>"
                ))
            };
            let (stream_arn, rest) = consumer_arn.split_once("/consumer/").ok_or_else(invalid)?;
            let stream = stream_arn.rsplit_once(":stream/").map(|(_, s)| s).ok_or_else(invalid)?;
            let name = rest.rsplit_once(':').map_or(rest, |(n, _)| n);
            return Ok((stream.to_owned(), name.to_owned()));
        }
        let name = args
            .consumer_name
            .as_deref()
            .ok_or_else(|| AwsError::invalid("ConsumerName (or ConsumerARN) is required"))?;
        Ok((args.stream_name()?.to_owned(), name.to_owned()))
    }

    /// `RegisterStreamConsumer`, `DescribeStreamConsumer`, `ListStreamConsumers` and
    /// `DeregisterStreamConsumer`.
    pub(in super::super) fn consumers(
        control: &Control,
        streams: &dyn StreamStore,
        operation: &str,
        args: &Args<'_>,
    ) -> Result<Value, AwsError> {
        if operation == "ListStreamConsumers" {
            let info = stream(streams, args)?;
            let kept = control.get(&info.name, info.created_ms)?;
            let limit = args.max_results.unwrap_or(100).clamp(1, 10_000);
            let after = args.next_token.as_deref().unwrap_or("");
            let rest: Vec<(&String, &Consumer)> = kept.consumers.iter().filter(|(n, _)| n.as_str() > after).collect();
            let page: Vec<Value> = rest.iter().take(limit).map(|(n, c)| consumer_json(&info.name, n, c)).collect();
            let mut answer = json!({"Consumers": page});
            if rest.len() > limit {
                answer["NextToken"] = json!(rest[limit - 1].0);
            }
            return Ok(answer);
        }
        let (stream_name, name) = addressed(args)?;
        crate::api::aws::check_name(crate::names::NameKind::Stream, "StreamARN", &stream_name)?;
        if name.is_empty() || name.len() > 128 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            return Err(AwsError::invalid(format!(
                "ConsumerName `{name}` must have 1 to 128 letters, digits, `_`, `.` or `-`"
            )));
        }
        let info = streams.info(&stream_name)?;
        let not_found = || {
            AwsError::new("ResourceNotFoundException", format!("Consumer {name} on stream {stream_name} not found."))
        };
        match operation {
            "RegisterStreamConsumer" => control.update(&info.name, info.created_ms, |kept| {
                if kept.consumers.contains_key(&name) {
                    return Err(AwsError::new(
                        "ResourceInUseException",
                        format!("Consumer {name} is already registered on stream {stream_name}."),
                    ));
                }
                if kept.consumers.len() >= MAX_CONSUMERS {
                    return Err(AwsError::new(
                        "LimitExceededException",
                        format!("stream {stream_name} has {MAX_CONSUMERS} consumers, the most it may have"),
                    ));
                }
                let consumer = Consumer { created_ms: now_ms() };
                let answer = consumer_json(&info.name, &name, &consumer);
                kept.consumers.insert(name.clone(), consumer);
                Ok(json!({"Consumer": answer}))
            }),
            "DeregisterStreamConsumer" => control.update(&info.name, info.created_ms, |kept| {
                kept.consumers.remove(&name).ok_or_else(not_found)?;
                Ok(json!({}))
            }),
            _ => {
                let kept = control.get(&info.name, info.created_ms)?;
                let consumer = kept.consumers.get(&name).ok_or_else(not_found)?;
                let mut description = consumer_json(&info.name, &name, consumer);
                description["StreamARN"] = json!(arn(&info.name));
                Ok(json!({"ConsumerDescription": description}))
            }
        }
    }
}
