//! `weir tail`: a stream's records as they arrive, like `tail -f`.

use anyhow::Context as _;
use base64::Engine as _;
use serde_json::{Value, json};

use crate::client::Client;

/// Where `weir tail` starts.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(super) enum TailFrom {
    /// The oldest record kept.
    TrimHorizon,
    /// Only records put from now on.
    Latest,
    /// Records that arrived at or after `--timestamp`.
    AtTimestamp,
    /// From the record `--sequence` names (in its shard; the other shards from their start).
    AtSequence,
}

/// How `weir tail` prints a record.
#[derive(Debug, Clone, Copy)]
pub(super) struct TailShow {
    /// Each record after its shard, sequence number and partition key.
    pub(super) keys: bool,
    /// JSON records indented over several lines.
    pub(super) pretty: bool,
}

pub(super) async fn tail(
    client: Client,
    stream: String,
    from: TailFrom,
    timestamp: Option<String>,
    sequence: Option<String>,
    no_follow: bool,
    show: TailShow,
) -> anyhow::Result<()> {
    let mut request = json!({"StreamName": stream});
    match from {
        TailFrom::AtSequence => {
            let sequence = sequence.ok_or_else(|| anyhow::anyhow!("--from at-sequence needs --sequence <number>"))?;
            request["ShardIteratorType"] = json!("AT_SEQUENCE_NUMBER");
            request["StartingSequenceNumber"] = json!(sequence);
        }
        TailFrom::TrimHorizon => request["ShardIteratorType"] = json!("TRIM_HORIZON"),
        TailFrom::Latest => request["ShardIteratorType"] = json!("LATEST"),
        TailFrom::AtTimestamp => {
            let text =
                timestamp.ok_or_else(|| anyhow::anyhow!("--from at-timestamp needs --timestamp <RFC 3339 time>"))?;
            let at = humantime::parse_rfc3339_weak(&text)
                .with_context(|| format!("--timestamp `{text}` is not RFC 3339"))?;
            request["ShardIteratorType"] = json!("AT_TIMESTAMP");
            request["Timestamp"] = json!(crate::time::system_ms(at) as f64 / 1000.0);
        }
    }
    // One iterator per shard, read in turn: order holds per shard (so per key).
    // A shard closed by resharding ends; its children are picked up from the start.
    let mut iterators: Vec<(String, Value)> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut first_listing = true;
    loop {
        let shards = client.call("ListShards", &json!({"StreamName": stream})).await?;
        for shard in shards["Shards"].as_array().into_iter().flatten() {
            let id = shard["ShardId"].as_str().unwrap_or("").to_owned();
            if !seen.insert(id.clone()) {
                continue;
            }
            let mut at = request.clone();
            at["ShardId"] = json!(id);
            if !first_listing {
                at["ShardIteratorType"] = json!("TRIM_HORIZON");
            }
            let iterator = match client.call("GetShardIterator", &at).await {
                Ok(answer) => answer["ShardIterator"].clone(),
                // A sequence number belongs to one shard: the others are read from their start.
                Err(_) if from_sequence(&at) => {
                    at["ShardIteratorType"] = json!("TRIM_HORIZON");
                    client.call("GetShardIterator", &at).await?["ShardIterator"].clone()
                }
                Err(e) => return Err(e.into()),
            };
            iterators.push((id, iterator));
        }
        first_listing = false;
        let mut printed = 0;
        let mut ended = false;
        for (id, iterator) in &mut iterators {
            if iterator.is_null() {
                continue;
            }
            let answer = client.call("GetRecords", &json!({"ShardIterator": iterator, "Limit": 1000})).await?;
            for record in answer["Records"].as_array().into_iter().flatten() {
                let data = base64::engine::general_purpose::STANDARD.decode(record["Data"].as_str().unwrap_or(""))?;
                if show.keys {
                    let text = |k: &str| record[k].as_str().unwrap_or("-").to_owned();
                    print!("{}  {}  {}  ", id, text("SequenceNumber"), text("PartitionKey"));
                }
                println!("{}", readable(data, show.pretty));
                printed += 1;
            }
            *iterator = answer["NextShardIterator"].clone();
            ended |= iterator.is_null();
        }
        if printed == 0 && !ended {
            if no_follow {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

/// Whether a `GetShardIterator` request starts at a sequence number.
fn from_sequence(request: &Value) -> bool {
    request["ShardIteratorType"] == "AT_SEQUENCE_NUMBER"
}

/// A record's data for people: JSON as JSON (indented with `pretty`), other
/// text as it is, anything else as `base64:` and its bytes.
fn readable(data: Vec<u8>, pretty: bool) -> String {
    if let Ok(json) = serde_json::from_slice::<Value>(&data)
        && (json.is_object() || json.is_array())
    {
        let written = if pretty { serde_json::to_string_pretty(&json) } else { serde_json::to_string(&json) };
        if let Ok(text) = written {
            return text;
        }
    }
    match String::from_utf8(data) {
        Ok(text) => text,
        Err(e) => format!("base64:{}", base64::engine::general_purpose::STANDARD.encode(e.as_bytes())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_records_read_as_json_text_as_text_and_bytes_as_base64() {
        assert_eq!(
            readable(br#"{ "station": 17,  "lanes": [1, 2] }"#.to_vec(), false),
            r#"{"lanes":[1,2],"station":17}"#
        );
        assert_eq!(readable(br#"{"station":17}"#.to_vec(), true), "{\n  \"station\": 17\n}");
        assert_eq!(readable(b"T0017-000001,2026-11-26".to_vec(), false), "T0017-000001,2026-11-26");
        assert_eq!(readable(b"42".to_vec(), true), "42");
        assert_eq!(readable(vec![0xff, 0x00], false), "base64:/wA=");
    }
}
