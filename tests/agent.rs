//! `weir agent` end to end: a writer appends numbered lines to a log that is
//! rotated both by rename-and-create and by copytruncate while the agent
//! follows it; every line reaches the weir stream exactly once. The agent
//! also waits out a weir that is not up yet, resumes from its checkpoint
//! after a restart, and feeds delivery streams through Firehose.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_host::agent::{Agent, AgentConfig, AgentHandle};
use weir_tests::{TestHost, files};

const STREAM_MANIFEST: &str = r#"
[pipeline]
name = "agent-test"
data-dir = "data"

[streams.lines]
"#;

const DEADLINE: Duration = Duration::from_secs(30);

/// Writes an agent config next to the logs and starts the agent with it.
fn start_agent(dir: &Path, endpoint: &str, flow: &str) -> AgentHandle {
    let path = dir.join("agent.toml");
    let text = format!(
        "endpoint = \"{endpoint}\"\ncheckpoint-file = \"checkpoints.json\"\npoll-interval = \"50ms\"\n\n[[flows]]\n{flow}"
    );
    std::fs::write(&path, text).expect("write agent config");
    let config = AgentConfig::load(&path).expect("agent config is valid");
    Agent::start(config).expect("agent starts")
}

/// Every record of the stream's only shard, as text.
fn stream_lines(host: &TestHost) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let records = host.host.read("lines", 0, out.len() as u64, 1000).expect("read the stream");
        if records.is_empty() {
            return out;
        }
        out.extend(records.iter().map(|r| String::from_utf8_lossy(&r.data).into_owned()));
    }
}

async fn wait_for_records(host: &TestHost, n: usize) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let have = stream_lines(host).len();
        if have >= n {
            return;
        }
        assert!(Instant::now() < deadline, "timed out: the stream has {have} of {n} records");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts each of `expected` appears exactly once, and nothing else.
fn assert_exactly_once(got: &[String], expected: &[String]) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for line in got {
        *counts.entry(line.as_str()).or_default() += 1;
    }
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).map(|(l, n)| format!("{l} x{n}")).collect();
    let missing: Vec<_> = expected.iter().filter(|l| !counts.contains_key(l.as_str())).collect();
    assert!(
        duplicated.is_empty(),
        "{} lines sent more than once, e.g. {:?}",
        duplicated.len(),
        &duplicated[..duplicated.len().min(5)]
    );
    assert!(missing.is_empty(), "{} lines missing, e.g. {:?}", missing.len(), &missing[..missing.len().min(5)]);
    assert_eq!(got.len(), expected.len());
}

fn append_lines(path: &Path, lines: impl IntoIterator<Item = String>) {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("open the log");
    for line in lines {
        file.write_all(format!("{line}\n").as_bytes()).expect("write a line");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_arrives_once_across_rename_and_copytruncate_rotations() {
    let mut host = TestHost::start(STREAM_MANIFEST).await.expect("start weir");
    let logs = tempfile::tempdir().expect("tempdir");
    let agent = start_agent(
        logs.path(),
        &host.url,
        "files = \"app.log*\"\nstream = \"lines\"\nstart = \"beginning\"\nmax-batch-age = \"100ms\"\n",
    );

    const LINES: usize = 4000;
    const EVERY: usize = 250;
    let dir = logs.path().to_owned();
    let writer = std::thread::spawn(move || {
        let log = dir.join("app.log");
        let open = || std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("open the log");
        let mut file = open();
        let mut rotations = (0, 0);
        for i in 1..=LINES {
            file.write_all(format!("line-{i:06}\n").as_bytes()).expect("write a line");
            if i % 10 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
            if i % EVERY == 0 && i < LINES {
                let rotated = dir.join(format!("app.log.{}", i / EVERY));
                if (i / EVERY) % 2 == 1 {
                    // rename-and-create: the writer moves on to a new file under the old name.
                    std::fs::rename(&log, &rotated).expect("rename");
                    file = open();
                    rotations.0 += 1;
                } else {
                    // copytruncate: nothing is written between the copy and the truncation.
                    std::fs::copy(&log, &rotated).expect("copy");
                    file.set_len(0).expect("truncate");
                    rotations.1 += 1;
                }
            }
        }
        rotations
    });
    let rotations = tokio::task::spawn_blocking(move || writer.join().expect("writer")).await.expect("join");
    assert!(rotations.0 >= 4 && rotations.1 >= 4, "{rotations:?}");

    wait_for_records(&host, LINES).await;
    // Stopped, the agent has sent all it ever will: a record sent twice is in the stream by now.
    let counters = agent.stop().await;
    let expected: Vec<String> = (1..=LINES).map(|i| format!("line-{i:06}")).collect();
    assert_exactly_once(&stream_lines(&host), &expected);
    assert_eq!(counters.records_sent, LINES as u64, "{counters:?}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_several_files_is_sent_in_time_order_each_file_named_as_its_source() {
    let mut host = TestHost::start(STREAM_MANIFEST).await.expect("start weir");
    let logs = tempfile::tempdir().expect("tempdir");
    // Three stations' logs of the same hour, written before the agent starts.
    let mut expected = Vec::new();
    for (offset, station) in ["a", "b", "c"].iter().enumerate() {
        let lines: Vec<String> = (0..300).map(|i| format!("{station}-{i:04},{}", 1_000 * i + offset)).collect();
        expected.extend(lines.iter().cloned());
        append_lines(&logs.path().join(format!("{station}.log")), lines);
    }
    let flow = "files = \"*.log\"\nstream = \"lines\"\nstart = \"beginning\"\nmax-batch-records = 100\n\
                max-batch-age = \"50ms\"\nrecord-time = \"^[^,]*,([0-9]+)$\"\n";
    let agent = start_agent(logs.path(), &host.url, flow);
    wait_for_records(&host, expected.len()).await;
    agent.stop().await;
    let got = stream_lines(&host);
    assert_exactly_once(&got, &expected);
    // A batch of 100 is one put per file, so the stream holds the files side by side a
    // batch at a time: no record is more than a batch's span (~33 s) behind the newest
    // before it. One file after another would put b and c 300 s behind a.
    let times: Vec<u64> = got.iter().filter_map(|l| l.split(',').nth(1)?.parse().ok()).collect();
    let (mut newest, mut behind) = (0, 0);
    for &t in &times {
        newest = newest.max(t);
        behind = behind.max(newest - t);
    }
    assert_eq!(times.len(), expected.len());
    assert!(behind < 40_000, "{behind} ms behind: {:?}", &got[..got.len().min(12)]);
    let records = host.host.read("lines", 0, 0, 1).expect("read");
    let source = records.first().and_then(|r| r.source.as_deref()).unwrap_or_default().to_owned();
    assert!(source.contains(':') && source.ends_with("a.log"), "{source}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_waits_for_weir_and_resumes_from_its_checkpoint_after_a_restart() {
    // A port nobody listens on yet: weir starts there later.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port");
    let endpoint = format!("http://{addr}");
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("app.log");
    let flow = "files = \"*.log\"\nstream = \"lines\"\nstart = \"beginning\"\nmax-batch-records = 25\n\
                max-batch-age = \"50ms\"\nretry-initial-backoff = \"50ms\"\nretry-max-backoff = \"400ms\"\n";
    let first: Vec<String> = (1..=100).map(|i| format!("first-{i:04}")).collect();
    append_lines(&log, first.clone());
    let agent = start_agent(logs.path(), &endpoint, flow);

    let deadline = Instant::now() + DEADLINE;
    while agent.counters().retries < 3 {
        assert!(Instant::now() < deadline, "the agent never retried: {:?}", agent.counters());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(agent.counters().records_sent, 0);
    let mut host = TestHost::start_on(tempfile::tempdir().expect("tempdir"), STREAM_MANIFEST, &addr.to_string())
        .await
        .expect("start weir");
    wait_for_records(&host, first.len()).await;
    let counters = agent.stop().await;
    assert_eq!(counters.records_sent, 100, "{counters:?}");
    assert_exactly_once(&stream_lines(&host), &first);

    // Written while the agent is stopped: the next run sends only these.
    append_lines(&log, (1..=50).map(|i| format!("second-{i:04}")));
    let agent = start_agent(logs.path(), &endpoint, flow);
    wait_for_records(&host, 150).await;
    let counters = agent.stop().await;
    assert_eq!(counters.lines_read, 50, "resumed at the checkpoint, not at the start: {counters:?}");
    let expected: Vec<String> = first.iter().cloned().chain((1..=50).map(|i| format!("second-{i:04}"))).collect();
    assert_exactly_once(&stream_lines(&host), &expected);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_lines_reach_a_delivery_stream_as_json_through_firehose() {
    let manifest = r#"
[pipeline]
name = "agent-delivery-test"
data-dir = "data"

[delivery.tolls]
buffer-interval = "15m"
lake = "lake"
prefix = "tolls/"
"#;
    let mut host = TestHost::start(manifest).await.expect("start weir");
    let logs = tempfile::tempdir().expect("tempdir");
    append_lines(&logs.path().join("tolls.csv"), (1..=30).map(|i| format!("T{i:04},{}", i * 10)));
    let agent = start_agent(
        logs.path(),
        &host.url,
        "files = \"*.csv\"\ndelivery-stream = \"tolls\"\nstart = \"beginning\"\nmax-batch-age = \"50ms\"\n\
         preprocess = [{ kind = \"csv-to-json\", fields = [\"id\", \"cents\"] }]\n",
    );
    // Acknowledged means kept in the delivery stream's durable buffer.
    let deadline = Instant::now() + DEADLINE;
    while agent.counters().records_sent < 30 {
        assert!(Instant::now() < deadline, "timed out: {:?}", agent.counters());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let counters = agent.stop().await;
    assert_eq!(counters.records_sent, 30, "{counters:?}");
    // The shutdown delivers what the delivery stream buffered.
    host.stop().await;
    let objects = files(&host.path("lake").join("tolls"));
    let rows: Vec<Value> = objects
        .iter()
        .flat_map(|p| std::fs::read_to_string(p).expect("object").lines().map(str::to_owned).collect::<Vec<_>>())
        .map(|l| serde_json::from_str(&l).expect("a JSON row"))
        .collect();
    assert_eq!(rows.len(), 30);
    assert_eq!(rows[0], serde_json::json!({"id": "T0001", "cents": "10"}));
}
