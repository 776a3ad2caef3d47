//! End to end over real HTTP on loopback: records put through the API flow
//! through plugin stages into sink files; failures are contained and every
//! accepted record ends up either in the output or in the dead letters.

use reqwest::StatusCode;
use serde_json::{Value, json};
use weir_tests::{TestHost, lines};

const ETL: &str = r#"
[pipeline]
name = "etl-test"
data-dir = "data"

[sources.http]
kind = "http"
stream = "toll-lines"

[streams.toll-lines]
[streams.closed]

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
"#;

const LINE_1: &str = "T0017-000001,2026-11-26T14:03:12.345Z,17,3,TAG0012345,C000123,2,275";
const LINE_2: &str = "T0017-000002,2026-11-26T14:03:13Z,17,4,TAG0012346,C000124,1,150";
const LINE_3: &str = "T0042-000003,2026-11-26T14:05:00.5Z,42,1,TAG0000007,C000123,3,410";

fn hostile_manifest(mode: &str, policy: &str, extra: &str) -> String {
    format!(
        r#"
[pipeline]
name = "hostile-test"
data-dir = "data"

[sources.http]
kind = "http"
stream = "in"

[streams.in]

[stages.risky]
plugin = "{{root}}/tests/guests/hostile"
input = "in"
output = "out"
on-error = "{policy}"
batch-size = 1
batch-wait = "1ms"
config = {{ mode = "{mode}" }}
{extra}

[sinks.out]
kind = "file"
path = "out.jsonl"
"#
    )
}

async fn put(host: &TestHost, stream: &str, body: Value) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/streams/{stream}/records", host.url))
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn put_text(host: &TestHost, stream: &str, text: &str) -> StatusCode {
    reqwest::Client::new()
        .post(format!("{}/v1/streams/{stream}/records", host.url))
        .header("content-type", "text/plain")
        .body(text.to_owned())
        .send()
        .await
        .expect("request")
        .status()
}

fn stage(status: &weir_host::pipeline::PipelineStatus) -> &weir_host::stage::StageStatus {
    &status.stages[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toll_lines_put_over_http_become_rows_and_malformed_lines_dead_letters() {
    let mut host = TestHost::start(ETL).await.expect("start");
    let (status, body) = put(&host, "toll-lines", json!({"partition_key": "17", "data": LINE_1})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["failed_record_count"], 0);
    assert_eq!(body["records"][0]["sequence_number"], "0");
    let (status, body) = put(
        &host,
        "toll-lines",
        json!({"records": [{"partition_key": "17", "data": LINE_2}, {"partition_key": "17", "data": "not,a,toll,line"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["records"].as_array().map(Vec::len), Some(2));
    assert_eq!(put_text(&host, "toll-lines", &format!("{LINE_3}\n\n")).await, StatusCode::OK);

    host.wait_until("4 records processed", |s| stage(s).records_in == 4).await;
    host.stop().await;

    let rows: Vec<Value> =
        lines(&host.path("rows.jsonl")).iter().map(|l| serde_json::from_str(l).expect("row is JSON")).collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["transaction_id"], "T0017-000001");
    assert_eq!(rows[0]["event_time"], "2026-11-26T14:03:12.345Z");
    assert_eq!(rows[0]["amount_cents"], 275);
    assert_eq!(rows[1]["customer_id"], "C000124");
    assert_eq!(rows[2]["event_time"], "2026-11-26T14:05:00.500Z");
    let rejected = lines(&host.path("rejected.jsonl"));
    assert_eq!(rejected.len(), 1);
    let letter: Value = serde_json::from_str(&rejected[0]).expect("dead letter is JSON");
    assert_eq!(letter["data"], "not,a,toll,line");
    assert_eq!(letter["error_code"], "processing-failed");
    assert_eq!(letter["stage"], "etl");
    assert_eq!((letter["shard"].as_str(), letter["sequence"].as_str()), (Some("shardId-000000000000"), Some("2")));
    assert_eq!(letter["plugin"], "toll-etl@0.1.0");
    assert!(letter["reason"].as_str().unwrap_or("").contains("expected 8 comma-separated fields"), "{letter}");
    let final_status = host.host.status();
    assert_eq!((stage(&final_status).records_out, stage(&final_status).dead_lettered), (3, 1));
    let lag = &final_status.consumers[0];
    assert_eq!(
        (lag.stream.as_str(), lag.consumer.as_str(), lag.checkpoint, lag.lag_records),
        ("toll-lines", "etl", 4, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_mistakes_get_a_4xx_that_says_what_to_fix() {
    let mut host = TestHost::start(&ETL.replace("[sinks.rows]", "[api]\nmax-body = \"64KiB\"\n\n[sinks.rows]"))
        .await
        .expect("start");
    let client = reqwest::Client::new();
    let url = |stream: &str| format!("{}/v1/streams/{stream}/records", host.url);

    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            client.post(url("toll-lines")).header("content-type", "application/json").body("{not json"),
            StatusCode::BAD_REQUEST,
            "A record is",
        ),
        (
            client.post(url("toll-lines")).json(&json!({"partition_key": "k"})),
            StatusCode::BAD_REQUEST,
            "exactly one of `data`",
        ),
        (
            client.post(url("toll-lines")).json(&json!({"data": "x", "data_base64": "eA=="})),
            StatusCode::BAD_REQUEST,
            "exactly one of `data`",
        ),
        (client.post(url("toll-lines")).json(&json!({"data_base64": "***"})), StatusCode::BAD_REQUEST, "not base64"),
        (
            client.post(url("toll-lines")).json(&json!({"data": "x", "event_time": "yesterday"})),
            StatusCode::BAD_REQUEST,
            "not RFC 3339",
        ),
        (client.post(url("toll-lines")).json(&json!({"records": []})), StatusCode::BAD_REQUEST, "no record"),
        (
            client.post(url("toll-lines")).json(&json!({"records": vec![json!({"data": "x"}); 501]})),
            StatusCode::BAD_REQUEST,
            "send at most 500",
        ),
        (
            client.post(url("toll-lines")).json(&json!({"data": "x", "partition_key": "k".repeat(300)})),
            StatusCode::BAD_REQUEST,
            "longer than 256",
        ),
        (client.post(url("nope")).json(&json!({"data": "x"})), StatusCode::NOT_FOUND, "no stream named `nope`"),
        (client.post(url("closed")).json(&json!({"data": "x"})), StatusCode::FORBIDDEN, "kind = \\\"http\\\""),
        (
            client.post(url("toll-lines")).header("content-type", "application/xml").body("<x/>"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/json or text/plain",
        ),
        (
            client.post(url("toll-lines")).header("content-type", "text/plain").body("x".repeat(70_000)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "",
        ),
    ];
    for (request, expected, message) in cases {
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert_eq!(status, expected, "{text}");
        assert!(text.contains(message), "{expected}: `{message}` not in {text}");
    }
    // Nothing was accepted by any of them.
    assert_eq!(host.host.status().streams["toll-lines"], 0);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_plugin_dead_letters_its_batch_and_the_pipeline_keeps_serving() {
    let mut host = TestHost::start(&hostile_manifest("trap-on-boom", "dead-letter", "")).await.expect("start");
    for data in ["a", "boom", "b"] {
        assert_eq!(put(&host, "in", json!({"partition_key": "k", "data": data})).await.0, StatusCode::OK);
    }
    host.wait_until("3 records handled", |s| stage(s).records_in == 3).await;
    let health = reqwest::get(format!("{}/v1/health", host.url)).await.expect("health");
    assert_eq!(health.status(), StatusCode::OK);
    host.stop().await;

    assert_eq!(lines(&host.path("out.jsonl")), vec!["A", "B"]);
    let letters = lines(&host.path("data/dead-letter/risky.jsonl"));
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter: Value = serde_json::from_str(&letters[0]).expect("json");
    assert_eq!((letter["data"].as_str(), letter["error_code"].as_str()), (Some("boom"), Some("trap")));
    assert!(
        letter["reason"].as_str().unwrap_or("").contains("stage `risky`, plugin `hostile@0.1.0`")
            || letter["reason"].as_str().unwrap_or("").contains("trapped"),
        "{letter}"
    );
    // The batch was tried 3 times, each on a fresh instance, before the policy set it aside.
    let s = host.host.status();
    assert_eq!((stage(&s).failures, stage(&s).restarts, stage(&s).records_out), (3, 3, 2));
    assert!(
        stage(&s)
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("pipeline `hostile-test`, stage `risky`, plugin `hostile@0.1.0`")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_is_cut_off_while_the_api_keeps_answering() {
    let manifest = hostile_manifest("loop", "dead-letter", "limits = { timeout = \"100ms\" }");
    let mut host = TestHost::start(&manifest).await.expect("start");
    assert_eq!(put(&host, "in", json!({"data": "spin"})).await.0, StatusCode::OK);
    // The API answers while the plugin spins.
    let (status, _) = put(&host, "in", json!({"data": "spin again"})).await;
    assert_eq!(status, StatusCode::OK);
    host.wait_until("both records dead-lettered", |s| stage(s).dead_lettered == 2).await;
    host.stop().await;
    let codes: Vec<String> = lines(&host.path("data/dead-letter/risky.jsonl"))
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).expect("json")["error_code"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(codes, vec!["timeout", "timeout"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_record_in_a_batch_of_256_costs_only_itself() {
    let manifest = hostile_manifest("bad-on-boom", "stop", "")
        .replace("batch-size = 1\nbatch-wait = \"1ms\"", "batch-size = 256\nbatch-wait = \"5s\"");
    let mut host = TestHost::start(&manifest).await.expect("start");
    let records: Vec<Value> =
        (0..256).map(|i| json!({"data": if i == 100 { "boom".to_owned() } else { format!("r{i}") }})).collect();
    let (status, answer) = put(&host, "in", json!({ "records": records })).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    host.wait_until("256 records handled", |s| stage(s).records_in == 256).await;
    assert_eq!(stage(&host.host.status()).phase, weir_host::stage::Phase::Running, "`stop` did not stop");
    host.stop().await;

    let out = lines(&host.path("out.jsonl"));
    assert_eq!(out.len(), 255, "every good record went through");
    assert_eq!((out[99].as_str(), out[100].as_str()), ("R99", "R101"));
    let letters = lines(&host.path("data/dead-letter/risky.jsonl"));
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter: Value = serde_json::from_str(&letters[0]).expect("json");
    assert_eq!((letter["data"].as_str(), letter["error_code"].as_str()), (Some("boom"), Some("processing-failed")));
    assert!(letter["reason"].as_str().unwrap_or("").contains("`boom` is no record of mine"), "{letter}");
    // A bad record is the record's fault, not the plugin's: no failure.
    let s = host.host.status();
    assert_eq!((stage(&s).batches, stage(&s).failures, stage(&s).dead_lettered), (1, 0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_retried_until_it_passes_and_sets_nothing_aside() {
    let mut host = TestHost::start(&hostile_manifest("transient-twice", "skip", "")).await.expect("start");
    for data in ["a", "b"] {
        put(&host, "in", json!({"data": data})).await;
    }
    host.wait_until("both records through", |s| stage(s).records_out == 2).await;
    host.stop().await;
    assert_eq!(lines(&host.path("out.jsonl")), vec!["A", "B"], "nothing skipped, in order");
    assert!(lines(&host.path("data/dead-letter/risky.jsonl")).is_empty());
    let s = host.host.status();
    assert_eq!((stage(&s).failures, stage(&s).skipped, stage(&s).restarts), (2, 0, 0), "the instance was kept");
    assert!(stage(&s).last_error.as_deref().unwrap_or("").contains("a service is down (2 of 2)"), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transformer_looks_rows_up_in_the_reference_table_its_config_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("reference")).expect("mkdir");
    std::fs::write(dir.path().join("reference/plates.csv"), "plate,owner\nAB-12,C000123\n").expect("csv");
    let manifest = hostile_manifest("lookup", "dead-letter", "")
        .replace("config = { mode = \"lookup\" }", "config = { mode = \"lookup\", table = \"plates\" }")
        .replace(
            "[streams.in]",
            "[streams.in]\n\n[reference.plates]\nlake = \"reference\"\nobject = \"plates.csv\"\nkey = \"plate\"",
        );
    let mut host = TestHost::start_in(dir, &manifest).await.expect("start");
    for data in ["AB-12", "ZZ-99"] {
        put(&host, "in", json!({"data": data})).await;
    }
    host.wait_until("both records handled", |s| stage(s).records_in == 2).await;
    host.stop().await;
    let out = lines(&host.path("out.jsonl"));
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(out[0].contains("C000123"), "the row of AB-12: {out:?}");
    let letters = lines(&host.path("data/dead-letter/risky.jsonl"));
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(letters[0].contains("ZZ-99") && letters[0].contains("no such row"), "{letters:?}");

    // Without `[reference.plates]` in the pipeline, the manifest is refused before anything runs.
    let undeclared = hostile_manifest("lookup", "dead-letter", "")
        .replace("config = { mode = \"lookup\" }", "config = { mode = \"lookup\", table = \"plates\" }");
    let err = TestHost::start(&undeclared).await.err().expect("refused");
    let message = format!("{err:#}");
    assert!(message.contains("uses reference table `plates` (config `table`)"), "{message}");
    assert!(message.contains("which the pipeline does not declare"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_drops_failed_batches_and_stop_keeps_them_in_the_stream() {
    let mut skip = TestHost::start(&hostile_manifest("trap-on-boom", "skip", "")).await.expect("start");
    for data in ["a", "boom", "b"] {
        put(&skip, "in", json!({"data": data})).await;
    }
    skip.wait_until("3 records handled", |s| stage(s).records_in == 3).await;
    skip.stop().await;
    assert_eq!(lines(&skip.path("out.jsonl")), vec!["A", "B"]);
    assert_eq!(stage(&skip.host.status()).skipped, 1);
    assert!(lines(&skip.path("data/dead-letter/risky.jsonl")).is_empty());

    let mut stop = TestHost::start(&hostile_manifest("trap-on-boom", "stop", "")).await.expect("start");
    for data in ["a", "boom", "b"] {
        put(&stop, "in", json!({"data": data})).await;
    }
    stop.wait_until("the stage stopped", |s| stage(s).phase == weir_host::stage::Phase::Stopped).await;
    stop.stop().await;
    assert_eq!(stop.host.status().consumers[0].lag_records, 2, "the failed batch and the one after it wait");
    assert_eq!(lines(&stop.path("out.jsonl")), vec!["A"], "nothing after the failed batch is processed");
    assert_eq!(stop.host.status().streams["in"], 3, "all three records were accepted and kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_chain_through_streams_and_shutdown_drains_everything_accepted() {
    let manifest = r#"
[pipeline]
name = "chain"
data-dir = "data"

[sources.http]
kind = "http"
stream = "raw"

[streams.raw]
[streams.upper]

[stages.shout]
plugin = "{root}/tests/guests/hostile"
input = "raw"
output = "upper"
batch-wait = "200ms"

[stages.record]
plugin = "{root}/tests/guests/hostile"
input = "upper"
output = "out"
batch-wait = "200ms"
config = { mode = "log" }

[sinks.out]
kind = "file"
path = "out.jsonl"
"#;
    let mut host = TestHost::start(manifest).await.expect("start");
    let mut expected = Vec::new();
    for chunk in 0..10 {
        let records: Vec<Value> =
            (0..200).map(|i| json!({"partition_key": "p", "data": format!("r{chunk}-{i}")})).collect();
        expected.extend((0..200).map(|i| format!("R{chunk}-{i}")));
        assert_eq!(put(&host, "raw", json!({"records": records})).await.0, StatusCode::OK);
    }
    // Stop at once: the drain must still deliver every accepted record, in order.
    host.stop().await;
    let got = lines(&host.path("out.jsonl"));
    assert_eq!(got.len(), expected.len(), "records lost or duplicated");
    assert!(got == expected, "records out of order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_cannot_start_keeps_its_records_waiting_and_does_not_block_shutdown() {
    let mut host = TestHost::start(&hostile_manifest("refuse-init", "dead-letter", "")).await.expect("start");
    assert_eq!(put(&host, "in", json!({"data": "waiting"})).await.0, StatusCode::OK);
    host.wait_until("the init failure is reported", |s| stage(s).failures >= 1).await;
    let s = host.host.status();
    assert!(stage(&s).last_error.as_deref().unwrap_or("").contains("init refused the configuration"), "{s:?}");
    assert_eq!(
        (stage(&s).records_in, stage(&s).dead_lettered),
        (0, 0),
        "records are not consumed by a plugin that never ran"
    );
    tokio::time::timeout(std::time::Duration::from_secs(20), host.stop()).await.expect("shutdown does not hang");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_stages_resume_after_their_checkpoint() {
    let host = TestHost::start(ETL).await.expect("start");
    put(&host, "toll-lines", json!({"records": [{"data": LINE_1}, {"data": LINE_2}]})).await;
    host.wait_until("2 records processed", |s| stage(s).records_in == 2).await;
    let mut host = host.restart(ETL).await.expect("restart");
    assert_eq!(host.host.status().streams["toll-lines"], 2, "the stream kept its records");
    put(&host, "toll-lines", json!({"data": LINE_3})).await;
    host.wait_until("the new record processed", |s| stage(s).records_in == 1).await;
    host.stop().await;
    let ids: Vec<String> = lines(&host.path("rows.jsonl"))
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).expect("json")["transaction_id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(ids, vec!["T0017-000001", "T0017-000002", "T0042-000003"], "each row once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_access_keys_unsigned_requests_are_refused_but_health_answers() {
    let manifest = ETL
        .replace("[sinks.rows]", "[api]\naccess-keys = [{ id = \"AKIAWEIR\", secret = \"s3cret\" }]\n\n[sinks.rows]");
    let mut host = TestHost::start(&manifest).await.expect("start");
    let (status, body) = put(&host, "toll-lines", json!({"data": LINE_1})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "MissingAuthenticationTokenException");
    let kinesis = reqwest::Client::new()
        .post(format!("{}/", host.url))
        .header("x-amz-target", "Kinesis_20131202.ListStreams")
        .header("content-type", "application/x-amz-json-1.1")
        .body("{}")
        .send()
        .await
        .expect("request");
    assert_eq!(kinesis.status(), StatusCode::FORBIDDEN);
    let error: Value = serde_json::from_str(&kinesis.text().await.unwrap_or_default()).expect("AWS-shaped error");
    assert_eq!(error["__type"], "MissingAuthenticationTokenException");
    let health = reqwest::get(format!("{}/v1/health", host.url)).await.expect("health");
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(host.host.status().streams["toll-lines"], 0, "nothing was accepted");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_limit_throttles_per_record_and_says_so() {
    // One record per second: the second put comes well within that second.
    let manifest = ETL.replace(
        "[streams.toll-lines]",
        "[streams.toll-lines]\nwrite-limit = { bytes-per-second = \"1MiB\", records-per-second = 1 }",
    );
    let mut host = TestHost::start(&manifest).await.expect("start");
    let records: Vec<Value> = (0..3).map(|_| json!({"data": LINE_1})).collect();
    let (status, body) = put(&host, "toll-lines", json!({"records": records})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["failed_record_count"], 2, "{body}");
    assert_eq!(body["records"][0]["sequence_number"], "0");
    assert_eq!(body["records"][1]["error_code"], "Throttled");
    let (status, body) = put(&host, "toll-lines", json!({"data": LINE_2})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or("").contains("write limit"), "{body}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_reads_every_shard_and_keeps_order_per_key() {
    let manifest = hostile_manifest("upper", "dead-letter", "")
        .replace("[streams.in]", "[streams.in]\nshards = 4")
        .replace("batch-size = 1\n", "batch-size = 16\n");
    let mut host = TestHost::start(&manifest).await.expect("start");
    for chunk in 0..4 {
        let records: Vec<Value> = (0..100)
            .map(|i| {
                let n = chunk * 100 + i;
                json!({"partition_key": format!("k{}", n % 10), "data": format!("k{}-{n}", n % 10)})
            })
            .collect();
        let (status, body) = put(&host, "in", json!({"records": records})).await;
        assert_eq!((status, body["failed_record_count"].as_u64()), (StatusCode::OK, Some(0)), "{body}");
    }
    host.wait_until("400 records processed", |s| stage(s).records_out == 400).await;
    let shards: std::collections::BTreeSet<String> =
        host.host.status().consumers.iter().map(|c| c.shard.clone()).collect();
    assert_eq!(shards.len(), 4, "the stage consumes every shard");
    host.stop().await;
    let mut per_key: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
    for line in lines(&host.path("out.jsonl")) {
        let (key, n) = line.split_once('-').expect("key-n");
        per_key.entry(key.to_owned()).or_default().push(n.parse().expect("n"));
    }
    assert_eq!(per_key.values().map(Vec::len).sum::<usize>(), 400);
    for (key, ns) in per_key {
        assert!(ns.windows(2).all(|w| w[0] < w[1]), "{key} out of order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_while_records_flow_keeps_order_per_key_and_loses_nothing() {
    let manifest = hostile_manifest("upper", "dead-letter", "")
        .replace("[streams.in]", "[streams.in]\nshards = 2")
        .replace("batch-size = 1\n", "batch-size = 8\n");
    let mut host = TestHost::start(&manifest).await.expect("start");
    let send = |from: u32| {
        let records: Vec<Value> = (from..from + 200)
            .map(|n| json!({"partition_key": format!("k{}", n % 10), "data": format!("k{}-{n}", n % 10)}))
            .collect();
        json!({"records": records})
    };
    assert_eq!(put(&host, "in", send(0)).await.0, StatusCode::OK);
    // The parents still hold a backlog when the children open and fill up.
    host.host.streams().reshard("in", weir_host::stream::Reshard::Uniform(3)).expect("reshard");
    assert_eq!(put(&host, "in", send(200)).await.0, StatusCode::OK);
    host.host.streams().reshard("in", weir_host::stream::Reshard::Uniform(1)).expect("merge back");
    assert_eq!(put(&host, "in", send(400)).await.0, StatusCode::OK);
    host.wait_until("600 records processed", |s| stage(s).records_out == 600).await;
    host.stop().await;
    let mut per_key: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
    for line in lines(&host.path("out.jsonl")) {
        let (key, n) = line.split_once('-').expect("key-n");
        per_key.entry(key.to_owned()).or_default().push(n.parse().expect("n"));
    }
    assert_eq!(per_key.values().map(Vec::len).sum::<usize>(), 600, "each record once");
    for (key, ns) in per_key {
        assert!(ns.windows(2).all(|w| w[0] < w[1]), "{key} out of order across resharding: {ns:?}");
    }
    let info = host.host.streams().info("in").expect("info");
    assert_eq!(info.shards.len(), 2 + 3 + 1);
    assert_eq!(info.shards[5].parents, vec![2, 3, 4], "the merged shard descends from all three");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bodies_are_accepted_and_the_limit_holds_after_decompression() {
    use std::io::Write as _;
    let gzip = |bytes: &[u8]| {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(bytes).expect("gzip");
        gz.finish().expect("gzip")
    };
    let mut host = TestHost::start(&ETL.replace("[sinks.rows]", "[api]\nmax-body = \"64KiB\"\n\n[sinks.rows]"))
        .await
        .expect("start");
    let client = reqwest::Client::new();
    let url = format!("{}/v1/streams/toll-lines/records", host.url);
    let body = json!({"records": [{"data": LINE_1}, {"data": LINE_2}]}).to_string();
    let ok = client
        .post(&url)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gzip(body.as_bytes()))
        .send()
        .await
        .expect("put");
    assert_eq!(ok.status(), StatusCode::OK, "{}", ok.text().await.unwrap_or_default());
    // 1 MiB of text compresses to a few KiB: under the limit sent, over it decompressed.
    let bomb = gzip(&vec![b'a'; 1 << 20]);
    assert!(bomb.len() < 64 << 10);
    let refused = client
        .post(&url)
        .header("content-type", "text/plain")
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .expect("put");
    assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(refused.text().await.unwrap_or_default().contains("decompressed body is larger"));
    let odd = client.post(&url).header("content-encoding", "br").body("x").send().await.expect("put");
    assert_eq!(odd.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(host.host.status().streams["toll-lines"], 2);
    host.stop().await;
}

/// Every API puts by the same rules (`Host::put`): a stage's output stream is its
/// stage's alone, and a record over the limits fails alone, whichever API sent it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kinesis_and_native_apis_put_by_the_same_rules() {
    let manifest = r#"
[pipeline]
name = "same-rules"
data-dir = "data"

[sources.http]
kind = "http"
stream = "lines"

[streams.lines]
[streams.rows]
[streams.quiet]

[stages.etl]
plugin = "{root}/plugins/toll-etl"
input = "lines"
output = "rows"
"#;
    let mut host = TestHost::start(manifest).await.expect("start");
    let client = reqwest::Client::new();
    let kinesis = |op: &str, body: Value| {
        client
            .post(format!("{}/", host.url))
            .header("x-amz-target", format!("Kinesis_20131202.{op}"))
            .header("content-type", "application/x-amz-json-1.1")
            .body(body.to_string())
            .send()
    };
    let b64 = |data: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, data);

    // A stage's output: refused through both APIs, naming the stage.
    let refused =
        kinesis("PutRecord", json!({"StreamName": "rows", "Data": b64(b"x"), "PartitionKey": "k"})).await.expect("put");
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let answer: Value = refused.json().await.expect("json");
    assert_eq!(answer["__type"], "AccessDeniedException", "{answer}");
    assert!(answer["message"].as_str().is_some_and(|m| m.contains("written by stage `etl` alone")), "{answer}");
    let (status, answer) = put(&host, "rows", json!({"data": "x"})).await;
    assert_eq!((status, &answer["error"]["code"]), (StatusCode::FORBIDDEN, &json!("StageOutput")), "{answer}");

    // A record over 1 MiB fails alone beside a good one, in both APIs.
    let big = vec![b'x'; (1 << 20) + 1];
    let records = json!({"StreamName": "lines", "Records": [
        {"Data": b64(LINE_1.as_bytes()), "PartitionKey": "k"},
        {"Data": b64(&big), "PartitionKey": "k"},
    ]});
    let answer: Value = kinesis("PutRecords", records).await.expect("put").json().await.expect("json");
    assert_eq!(answer["FailedRecordCount"], 1, "{answer}");
    assert_eq!(answer["Records"][1]["ErrorCode"], "InvalidArgumentException", "{answer}");
    assert!(answer["Records"][1]["ErrorMessage"].as_str().is_some_and(|m| m.contains("the limit is 1048576")));
    let body = json!({"records": [{"data": LINE_2}, {"data_base64": b64(&big)}]});
    let (status, answer) = put(&host, "lines", body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["failed_record_count"], 1, "{answer}");
    assert_eq!(answer["records"][1]["error_code"], "InvalidRecord", "{answer}");

    // Kinesis, as in AWS, writes a stream without an http source; the native API does not.
    let ok = kinesis("PutRecord", json!({"StreamName": "quiet", "Data": b64(b"x"), "PartitionKey": "k"}))
        .await
        .expect("put");
    assert_eq!(ok.status(), StatusCode::OK);
    let (status, _) = put(&host, "quiet", json!({"data": "x"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let streams = host.host.status().streams;
    assert_eq!((streams["lines"], streams["quiet"]), (2, 1), "only what the rules let through was stored");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_source_is_kept_through_every_put_path_and_a_transform_stage() {
    let manifest = r#"
[pipeline]
name = "sources"
data-dir = "data"

[sources.http]
kind = "http"
stream = "lines"

[streams.lines]
[streams.rows]

[stages.etl]
plugin = "{root}/plugins/toll-etl"
input = "lines"
output = "rows"
batch-wait = "5ms"
"#;
    let mut host = TestHost::start(manifest).await.expect("start");
    let client = reqwest::Client::new();
    let b64 = |data: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, data.as_bytes());
    // The native API: per record, or for a whole batch; Kinesis: weir's header, which AWS ignores.
    let body = json!({"source": "station-17", "records": [{"data": LINE_1}, {"data": LINE_2, "source": "station-9"}]});
    assert_eq!(put(&host, "lines", body).await.0, StatusCode::OK);
    let kinesis = client
        .post(format!("{}/", host.url))
        .header("x-amz-target", "Kinesis_20131202.PutRecords")
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-weir-source", "agent-7:/var/log/tolls.log")
        .body(json!({"StreamName": "lines", "Records": [{"Data": b64(LINE_3), "PartitionKey": "k"}]}).to_string())
        .send()
        .await
        .expect("put");
    assert_eq!(kinesis.status(), StatusCode::OK);
    let read = |stream: &'static str| {
        let (client, url) = (client.clone(), host.url.clone());
        async move {
            let answer: Value = client
                .get(format!("{url}/v1/streams/{stream}/records?shard=0&from=0&limit=10"))
                .send()
                .await
                .expect("get")
                .json()
                .await
                .expect("json");
            let records = answer["records"].as_array().cloned().unwrap_or_default();
            records.iter().map(|r| r["source"].as_str().unwrap_or("none").to_owned()).collect::<Vec<_>>()
        }
    };
    let expected = ["station-17", "station-9", "agent-7:/var/log/tolls.log"];
    assert_eq!(read("lines").await, expected);
    // toll-etl's rows keep the source of the line each came from.
    host.wait_until("the rows", |s| s.streams.get("rows").copied() == Some(3)).await;
    assert_eq!(read("rows").await, expected);
    let (status, answer) = put(&host, "lines", json!({"data": LINE_1, "source": ""})).await;
    assert_eq!((status, &answer["error"]["code"]), (StatusCode::BAD_REQUEST, &json!("InvalidRecord")), "{answer}");
    assert!(answer["error"]["message"].as_str().is_some_and(|m| m.contains("give 1 to 256")), "{answer}");
    host.stop().await;
}
