//! A stream's shards through the Kinesis API: `ListShards` (with its filters and
//! pages) and `DescribeStream`'s shard list, and resharding (`UpdateShardCount`,
//! `SplitShard`, `MergeShards`), which is weir's own: children name their parents,
//! and every weir reader finishes a parent before its children.

use base64::Engine as _;
use serde_json::{Value, json};

use super::sequence::Sequences;
use super::{Args, ShardFilter, arn, shard_count, timestamp_seconds};
use crate::api::aws::{AwsError, check_name};
use crate::names::NameKind;
use crate::stream::{Reshard, ShardInfo, StreamInfo, StreamStore, now_ms, parse_shard_id, shard_id};

/// Most shards one `ListShards` answers, by default and at most.
const DEFAULT_MAX_RESULTS: usize = 1000;
const MAX_RESULTS: usize = 10_000;
/// Starts every `NextToken` weir gives (a `:` is in no stream name).
const TOKEN_PREFIX: &str = "shards:";

/// A shard as Kinesis lists it.
pub(super) fn shard(info: &ShardInfo, numbers: Sequences) -> Value {
    let mut shard = json!({
        "ShardId": shard_id(info.index),
        "HashKeyRange": {"StartingHashKey": info.hash_start.to_string(), "EndingHashKey": info.hash_end.to_string()},
        "SequenceNumberRange": {"StartingSequenceNumber": numbers.number(info.index, info.oldest)},
    });
    if let Some(end) = info.closed_at {
        shard["SequenceNumberRange"]["EndingSequenceNumber"] = json!(numbers.number(info.index, end.saturating_sub(1)));
    }
    if let Some(parent) = info.parents.first() {
        shard["ParentShardId"] = json!(shard_id(*parent));
    }
    if let Some(adjacent) = info.parents.get(1) {
        shard["AdjacentParentShardId"] = json!(shard_id(*adjacent));
    }
    shard
}

/// Where a listing goes on from: kept in `NextToken`.
#[derive(serde::Serialize, serde::Deserialize)]
struct Page {
    stream: String,
    /// The last shard listed.
    after: Option<u32>,
    /// The filter of the first call.
    filter: Option<ShardFilter>,
}

/// The stream a `ListShards` call with a `NextToken` goes on listing.
pub(super) fn listed_stream(args: &Args<'_>) -> Result<String, AwsError> {
    Ok(read_token(args.next_token.as_deref().unwrap_or_default())?.stream)
}

/// `ListShards`: by `StreamName` / `StreamARN` with an optional `ShardFilter` and
/// `ExclusiveStartShardId`, or by a `NextToken`; `MaxResults` a page.
pub(super) fn list_shards(streams: &dyn StreamStore, args: &Args<'_>) -> Result<Value, AwsError> {
    let page = match &args.next_token {
        Some(token) => {
            if args.stream_name.is_some() || args.stream_arn.is_some() {
                return Err(AwsError::invalid("NextToken and StreamName (or StreamARN) cannot both be given"));
            }
            read_token(token)?
        }
        None => Page {
            stream: args.stream_name()?.to_owned(),
            after: args.exclusive_start_shard_id.as_deref().map(shard_index).transpose()?,
            filter: args.shard_filter.clone(),
        },
    };
    let limit = args.max_results.unwrap_or(DEFAULT_MAX_RESULTS);
    if !(1..=MAX_RESULTS).contains(&limit) {
        return Err(AwsError::invalid(format!("MaxResults must be between 1 and {MAX_RESULTS}")));
    }
    let info = streams.info(&page.stream)?;
    let keep = match &page.filter {
        Some(f) => filter(&info, f)?,
        None => Box::new(|_: &ShardInfo| true) as Keep,
    };
    let matching: Vec<&ShardInfo> =
        info.shards.iter().filter(|s| page.after.is_none_or(|after| s.index > after)).filter(|s| keep(s)).collect();
    let numbers = Sequences::of(&info.name, info.created_ms);
    let listed: Vec<Value> = matching.iter().take(limit).map(|s| shard(s, numbers)).collect();
    let mut answer = json!({"Shards": listed});
    if matching.len() > limit {
        let next = Page { after: matching.get(limit - 1).map(|s| s.index), ..page };
        answer["NextToken"] = json!(token(&next));
    }
    Ok(answer)
}

/// Whether a shard is listed.
type Keep = Box<dyn Fn(&ShardInfo) -> bool>;

/// Which shards a `ShardFilter` keeps.
fn filter(info: &StreamInfo, f: &ShardFilter) -> Result<Keep, AwsError> {
    let created = info.created_ms;
    let time = |what: &str| -> Result<i64, AwsError> {
        let seconds = f
            .timestamp
            .as_ref()
            .and_then(timestamp_seconds)
            .ok_or_else(|| AwsError::invalid(format!("ShardFilter {what} needs a Timestamp")))?;
        Ok((seconds * 1000.0) as i64)
    };
    // Open at `t`: opened by then (the stream's first shards count as open from its start) and not closed.
    let open_at = move |t: i64| {
        let t = t.max(created);
        move |s: &ShardInfo| (s.parents.is_empty() || s.opened_ms <= t) && s.closed_ms.is_none_or(|c| c > t)
    };
    let open_from = |t: i64| move |s: &ShardInfo| s.closed_ms.is_none_or(|c| c > t);
    let horizon = now_ms() - info.retention.as_millis() as i64;
    Ok(match f.kind.as_str() {
        "AFTER_SHARD_ID" => {
            let id =
                f.shard_id.as_deref().ok_or_else(|| AwsError::invalid("ShardFilter AFTER_SHARD_ID needs a ShardId"))?;
            let after = shard_index(id)?;
            Box::new(move |s| s.index > after)
        }
        "AT_TRIM_HORIZON" => Box::new(open_at(horizon)),
        "FROM_TRIM_HORIZON" => Box::new(open_from(horizon)),
        "AT_LATEST" => Box::new(|s| s.closed_at.is_none()),
        "AT_TIMESTAMP" => Box::new(open_at(time("AT_TIMESTAMP")?)),
        "FROM_TIMESTAMP" => Box::new(open_from(time("FROM_TIMESTAMP")?)),
        other => {
            return Err(AwsError::invalid(format!(
                "ShardFilter Type {other} is not one of AFTER_SHARD_ID, AT_TRIM_HORIZON, FROM_TRIM_HORIZON, AT_LATEST, \
                 AT_TIMESTAMP, FROM_TIMESTAMP"
            )));
        }
    })
}

fn token(page: &Page) -> String {
    let text = serde_json::to_vec(page).unwrap_or_default();
    format!("{TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text))
}

fn read_token(token: &str) -> Result<Page, AwsError> {
    let invalid = || AwsError::invalid("NextToken is not one weir gave");
    let Some(encoded) = token.strip_prefix(TOKEN_PREFIX) else {
        // An older weir's token was the stream's name: the listing starts over.
        check_name(NameKind::Stream, "NextToken", token)?;
        return Ok(Page { stream: token.to_owned(), after: None, filter: None });
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded).map_err(|_| invalid())?;
    let page: Page = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    check_name(NameKind::Stream, "NextToken", &page.stream)?;
    Ok(page)
}

/// The index of a shard id (`shardId-000000000003`), or why it is none.
pub(super) fn shard_index(id: &str) -> Result<u32, AwsError> {
    parse_shard_id(id).ok_or_else(|| AwsError::invalid(format!("{id} is not a shard id (shardId-000000000000)")))
}

/// `UpdateShardCount`, `SplitShard` and `MergeShards`.
pub(super) fn reshard(streams: &dyn StreamStore, operation: &str, args: &Args<'_>) -> Result<Value, AwsError> {
    let name = args.stream_name()?;
    let info = streams.info(name)?;
    let open = info.shards.iter().filter(|s| s.closed_at.is_none()).count();
    let known = |id: &str| -> Result<u32, AwsError> {
        let index = shard_index(id)?;
        if info.shards.get(index as usize).is_none() {
            return Err(AwsError::new("ResourceNotFoundException", format!("Shard {id} in stream {name} not found.")));
        }
        Ok(index)
    };
    let change = match operation {
        "UpdateShardCount" => {
            let target = args.target_shard_count.ok_or_else(|| AwsError::invalid("TargetShardCount is required"))?;
            if args.scaling_type.as_deref().is_some_and(|t| t != "UNIFORM_SCALING") {
                return Err(AwsError::invalid("ScalingType must be UNIFORM_SCALING"));
            }
            shard_count("TargetShardCount", target)?;
            Reshard::Uniform(target as u32)
        }
        "SplitShard" => {
            let shard =
                known(args.shard_to_split.as_deref().ok_or_else(|| AwsError::invalid("ShardToSplit is required"))?)?;
            let at = args
                .new_starting_hash_key
                .as_deref()
                .and_then(|h| h.parse::<u128>().ok())
                .ok_or_else(|| AwsError::invalid("NewStartingHashKey must be a decimal between 0 and 2^128-1"))?;
            Reshard::Split { shard, at }
        }
        _ => {
            let shard =
                known(args.shard_to_merge.as_deref().ok_or_else(|| AwsError::invalid("ShardToMerge is required"))?)?;
            let adjacent = known(
                args.adjacent_shard_to_merge
                    .as_deref()
                    .ok_or_else(|| AwsError::invalid("AdjacentShardToMerge is required"))?,
            )?;
            Reshard::Merge { shard, adjacent }
        }
    };
    streams.reshard(name, change)?;
    Ok(match change {
        Reshard::Uniform(target) => json!({"StreamName": name, "StreamARN": arn(name), "CurrentShardCount": open,
            "TargetShardCount": target}),
        _ => json!({}),
    })
}
