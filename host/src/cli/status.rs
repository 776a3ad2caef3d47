//! `weir status`: what a running pipeline is doing, as an operator reads it: each
//! stage's phase and counts (late records and revised window results among them),
//! each delivery stream's, and how far behind each consumer is.

use axum::http::{HeaderMap, Method};
use serde_json::Value;

use crate::client::Client;

pub(super) async fn status(client: Client) -> anyhow::Result<()> {
    let status = client.native(Method::GET, "/v1/pipeline", HeaderMap::new(), Default::default()).await?;
    print!("{}", render(&status));
    Ok(())
}

/// The status answer (`GET /v1/pipeline`) as text tables.
fn render(status: &Value) -> String {
    let number = |v: &Value| v.as_u64().map_or_else(|| "-".to_owned(), |n| n.to_string());
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let mut out = format!(
        "pipeline {}, up {}\n\n",
        text(&status["pipeline"]),
        humantime::format_duration(std::time::Duration::from_secs(status["uptime_seconds"].as_u64().unwrap_or(0)))
    );
    let mut stages = vec![
        ["stage", "phase", "in", "out", "dead-lettered", "late", "revisions", "watermark", "last error"]
            .map(str::to_owned),
    ];
    for s in status["stages"].as_array().into_iter().flatten() {
        let watermark = s["windows"]["watermark_ms"].as_i64().map_or_else(|| "-".to_owned(), crate::time::format_ms);
        stages.push([
            text(&s["name"]),
            text(&s["phase"]),
            number(&s["records_in"]),
            number(&s["records_out"]),
            number(&s["dead_lettered"]),
            number(&s["late"]),
            number(&s["revisions"]),
            watermark,
            text(&s["last_error"]),
        ]);
    }
    out.push_str(&table(&stages));
    let mut plugins = vec![["stage", "plugin", "swaps", "rollbacks", "failures"].map(str::to_owned)];
    for s in status["stages"].as_array().into_iter().flatten() {
        let failures: Vec<String> = s["plugin_failures"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(kind, n)| format!("{kind} {}", number(n)))
            .collect();
        let failures = if failures.is_empty() { "-".to_owned() } else { failures.join(", ") };
        plugins.push([text(&s["name"]), text(&s["plugin"]), number(&s["swaps"]), number(&s["rollbacks"]), failures]);
    }
    if plugins.len() > 1 {
        out.push('\n');
        out.push_str(&table(&plugins));
    }
    // Hosts sharing the streams: who reads which shard of each stage's input.
    let mut holders = vec![["stage", "shard", "read by"].map(str::to_owned)];
    let deliveries = status["deliveries"].as_array().into_iter().flatten();
    for s in status["stages"].as_array().into_iter().flatten().chain(deliveries) {
        for (shard, holder) in s["shard_holders"].as_array().into_iter().flatten().enumerate() {
            holders.push([text(&s["name"]), crate::stream::shard_id(shard as u32), text(holder)]);
        }
    }
    if holders.len() > 1 {
        out.push('\n');
        out.push_str(&table(&holders));
    }
    let mut streams = vec![["stream", "records", "bytes", "throttled", "duplicates"].map(str::to_owned)];
    for (name, records) in status["streams"].as_object().into_iter().flatten() {
        let puts = &status["puts"][name.as_str()];
        streams.push([
            name.clone(),
            number(records),
            number(&puts["bytes"]),
            number(&puts["throttled"]),
            number(&status["duplicates"][name.as_str()]),
        ]);
    }
    if streams.len() > 1 {
        out.push('\n');
        out.push_str(&table(&streams));
    }
    let mut deliveries = vec![
        [
            "delivery",
            "phase",
            "in",
            "sent again",
            "delivered",
            "failed",
            "buffered",
            "buffer age",
            "rows loaded",
            "rows again",
            "last error",
        ]
        .map(str::to_owned),
    ];
    for d in status["deliveries"].as_array().into_iter().flatten() {
        deliveries.push([
            text(&d["name"]),
            text(&d["phase"]),
            number(&d["records_in"]),
            number(&d["records_duplicate"]),
            number(&d["records_delivered"]),
            number(&d["records_failed"]),
            number(&d["records_buffered"]),
            seconds(&d["buffer_age_ms"]),
            number(&d["rows_loaded"]),
            number(&d["rows_duplicate"]),
            text(&d["last_error"]),
        ]);
    }
    if deliveries.len() > 1 {
        out.push('\n');
        out.push_str(&table(&deliveries));
    }
    let mut lag = vec![["consumer", "stream", "shard", "behind (records)", "behind (time)"].map(str::to_owned)];
    for c in status["consumers"].as_array().into_iter().flatten() {
        lag.push([
            text(&c["consumer"]),
            text(&c["stream"]),
            text(&c["shard"]),
            number(&c["lag_records"]),
            seconds(&c["lag_ms"]),
        ]);
    }
    if lag.len() > 1 {
        out.push('\n');
        out.push_str(&table(&lag));
    }
    let mut channels = vec![["channel", "sent", "webhook attempts", "delivered", "given up"].map(str::to_owned)];
    for c in status["channels"].as_array().into_iter().flatten() {
        channels.push([
            text(&c["name"]),
            number(&c["sent"]),
            number(&c["attempts"]),
            number(&c["delivered"]),
            number(&c["given_up"]),
        ]);
    }
    if channels.len() > 1 {
        out.push('\n');
        out.push_str(&table(&channels));
    }
    out
}

/// Milliseconds as seconds with one decimal (`-` when absent).
fn seconds(ms: &Value) -> String {
    ms.as_u64().map_or_else(|| "-".to_owned(), |ms| format!("{:.1}s", ms as f64 / 1000.0))
}

/// Rows as columns padded to their widest cell, the first row the header.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_s_late_records_and_revisions_are_shown_beside_its_counts() {
        let status = serde_json::json!({
            "pipeline": "abc-tolls", "uptime_seconds": 75,
            "stages": [{"name": "billing-sum", "phase": "running", "records_in": 33211, "records_out": 4100,
                        "dead_lettered": 0, "late": 2, "revisions": 5, "last_error": null,
                        "windows": {"watermark_ms": 1_795_651_200_000_i64}}],
            "deliveries": [], "consumers": [{"consumer": "billing-sum", "stream": "toll-rows", "shard": "shardId-000000000000", "lag_records": 0}]
        });
        let text = render(&status);
        assert!(text.starts_with("pipeline abc-tolls, up 1m 15s\n"), "{text}");
        assert!(
            text.contains("stage        phase    in     out   dead-lettered  late  revisions  watermark"),
            "{text}"
        );
        assert!(
            text.contains(
                "billing-sum  running  33211  4100  0              2     5          2026-11-26T00:00:00.000Z  -"
            ),
            "{text}"
        );
        assert!(text.contains("billing-sum  toll-rows  shardId-000000000000  0"), "{text}");
        assert!(!text.contains("read by"), "one host names no holders: {text}");
    }

    #[test]
    fn hosts_sharing_a_stage_are_named_beside_the_shards_they_read() {
        let status = serde_json::json!({
            "pipeline": "shared", "uptime_seconds": 5,
            "stages": [{"name": "etl", "phase": "running", "shard_holders": ["host-a", "host-b", null]}],
            "deliveries": [{"name": "toll-transactions", "phase": "running", "shard_holders": ["host-b"]}],
        });
        let text = render(&status);
        assert!(text.contains("stage              shard                 read by\n"), "{text}");
        assert!(text.contains("etl                shardId-000000000000  host-a\n"), "{text}");
        assert!(text.contains("etl                shardId-000000000001  host-b\n"), "{text}");
        assert!(text.contains("etl                shardId-000000000002  -\n"), "{text}");
        assert!(text.contains("toll-transactions  shardId-000000000000  host-b\n"), "{text}");
    }
}
