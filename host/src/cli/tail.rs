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
}

pub(super) async fn tail(
    client: Client,
    stream: String,
    from: TailFrom,
    timestamp: Option<String>,
    no_follow: bool,
) -> anyhow::Result<()> {
    let mut request = json!({"StreamName": stream});
    match from {
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
            let iterator = client.call("GetShardIterator", &at).await?["ShardIterator"].clone();
            iterators.push((id, iterator));
        }
        first_listing = false;
        let mut printed = 0;
        let mut ended = false;
        for (_, iterator) in &mut iterators {
            if iterator.is_null() {
                continue;
            }
            let answer = client.call("GetRecords", &json!({"ShardIterator": iterator, "Limit": 1000})).await?;
            for record in answer["Records"].as_array().into_iter().flatten() {
                let data = base64::engine::general_purpose::STANDARD.decode(record["Data"].as_str().unwrap_or(""))?;
                match String::from_utf8(data) {
                    Ok(text) => println!("{text}"),
                    Err(e) => println!("base64:{}", base64::engine::general_purpose::STANDARD.encode(e.as_bytes())),
                }
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
