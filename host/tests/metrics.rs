//! `GET /metrics` as an operator uses it: `weir run` with access keys and a
//! metrics token, records put with `weir put` (signed), and a real Prometheus
//! (Debian's package) scraping weir with the token; PromQL through
//! Prometheus's HTTP API then returns the counts the records must give.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{WEIR, free_port, wait_ready};
use weir_tests::{Prometheus, prometheus_binary, root};

const SECRET: &str = "metrics-test-secret";
const TOKEN: &str = "scrape-token-4f1c";

fn manifest() -> String {
    format!(
        r#"
[pipeline]
name = "metrics-test"
data-dir = "data"

[api]
access-keys = [{{ id = "OPERATOR", secret-env = "METRICS_TEST_SECRET" }}]
metrics-token-env = "METRICS_TEST_TOKEN"

[sources.http]
kind = "http"
stream = "toll-lines"

[streams.toll-lines]
shards = 2

[stages.etl]
plugin = "{root}/plugins/toll-etl"
input = "toll-lines"
output = "rows"
dead-letter = "rejected"
batch-wait = "5ms"

[sinks.rows]
kind = "file"
path = "rows.jsonl"

[sinks.rejected]
kind = "file"
path = "rejected.jsonl"
format = "json"
"#,
        root = root().display()
    )
}

/// `weir put` of `lines` with `key` as the partition key, signed by the operator's key.
fn put(port: u16, key: &str, lines: &[String]) {
    let mut child = Command::new(WEIR)
        .args(["put", "toll-lines", "--partition-key", key, "--endpoint", &format!("http://127.0.0.1:{port}")])
        .env("AWS_ACCESS_KEY_ID", "OPERATOR")
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("weir put");
    let mut stdin = child.stdin.take().expect("stdin");
    std::io::Write::write_all(&mut stdin, lines.join("\n").as_bytes()).expect("write lines");
    drop(stdin);
    assert!(child.wait().expect("weir put ends").success(), "weir put failed");
}

fn toll_line(i: usize) -> String {
    format!("T0017-{i:06},2026-11-26T14:{:02}:{:02}.000Z,17,3,TAG0012345,C000123,2,275", i / 60 % 60, i % 60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_weir_with_its_token_and_promql_returns_the_counts() {
    let Some(binary) = tokio::task::spawn_blocking(prometheus_binary).await.expect("find prometheus") else {
        assert!(
            std::env::var("CI").is_err(),
            "CI needs a Prometheus: Debian's `prometheus` package, or WEIR_TEST_PROMETHEUS"
        );
        eprintln!("skipped: no Prometheus (install Debian's `prometheus`, or set WEIR_TEST_PROMETHEUS to its binary)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pipeline.toml");
    std::fs::write(&path, manifest()).expect("write manifest");
    let port = free_port();
    let mut weir = Command::new(WEIR)
        .args(["run", "--listen", &format!("127.0.0.1:{port}")])
        .arg(&path)
        .env("METRICS_TEST_SECRET", SECRET)
        .env("METRICS_TEST_TOKEN", TOKEN)
        .env("WEIR_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start weir");
    let client = reqwest::Client::new();
    wait_ready(&client, port).await;

    // The token reads /metrics and nothing else; no token, or a wrong one, reads nothing.
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let answer = client.get(&metrics).bearer_auth(TOKEN).send().await.expect("scrape");
    assert_eq!(answer.status(), 200);
    let content_type = answer.headers()["content-type"].to_str().expect("ascii").to_owned();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    assert_eq!(client.get(&metrics).send().await.expect("scrape").status(), 403);
    assert_eq!(client.get(&metrics).bearer_auth("wrong").send().await.expect("scrape").status(), 403);
    let status = client.get(format!("http://127.0.0.1:{port}/v1/pipeline")).bearer_auth(TOKEN).send().await;
    assert_eq!(status.expect("status").status(), 403, "the metrics token may only read /metrics");

    // 300 good lines over two partition keys, 7 that toll-etl refuses.
    let good: Vec<String> = (0..300).map(toll_line).collect();
    let bad: Vec<String> = (0..7).map(|i| format!("not a toll line {i}")).collect();
    tokio::task::spawn_blocking(move || {
        put(port, "C000123", &good[..150]);
        put(port, "C000999", &good[150..]);
        put(port, "C000123", &bad);
    })
    .await
    .expect("puts");

    let prometheus =
        tokio::task::spawn_blocking(move || Prometheus::start(&binary, &format!("127.0.0.1:{port}"), TOKEN))
            .await
            .expect("start prometheus");
    let expected = [
        ("up{job=\"weir\"}", 1.0),
        ("weir_stream_records_total{stream=\"toll-lines\"}", 307.0),
        ("sum(weir_stage_records_in_total{stage=\"etl\"})", 307.0),
        ("weir_stage_records_out_total{stage=\"etl\"}", 300.0),
        ("weir_stage_records_dead_lettered_total{stage=\"etl\"}", 7.0),
        ("sum(weir_consumer_lag_records{consumer=\"etl\",stream=\"toll-lines\"})", 0.0),
        ("count(weir_shard_newest_sequence{stream=\"toll-lines\"})", 2.0),
        ("weir_stage_up{stage=\"etl\"}", 1.0),
        ("weir_build_info{pipeline=\"metrics-test\"}", 1.0),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    for (query, want) in expected {
        loop {
            let got = prometheus.value(query).await;
            if got == Some(want) {
                break;
            }
            assert!(Instant::now() < deadline, "{query}: Prometheus says {got:?}, expected {want}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    // Bytes: each put line's length; batches timed.
    let bytes: usize = (0..300).map(|i| toll_line(i).len()).sum::<usize>()
        + (0..7).map(|i| format!("not a toll line {i}").len()).sum::<usize>();
    assert_eq!(prometheus.value("weir_stream_bytes_total{stream=\"toll-lines\"}").await, Some(bytes as f64));
    let batches = prometheus.value("weir_stage_batch_duration_seconds_count{stage=\"etl\"}").await;
    assert!(batches.is_some_and(|n| n >= 1.0), "batches timed: {batches:?}");
    let calls = prometheus.value("weir_stage_plugin_duration_seconds_count{stage=\"etl\"}").await;
    assert!(calls.is_some_and(|n| n >= 1.0), "plugin calls timed: {calls:?}");

    // `weir status` shows the same figures.
    let status = Command::new(WEIR)
        .args(["status", "--endpoint", &format!("http://127.0.0.1:{port}")])
        .env("AWS_ACCESS_KEY_ID", "OPERATOR")
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .output()
        .expect("weir status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.lines().any(|l| l.starts_with("etl ") && l.contains(" 307 ") && l.contains(" 300 ")), "{text}");
    let _ = weir.kill();
    let _ = weir.wait();
}
