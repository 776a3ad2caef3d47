//! The whole ABC Tolls manifest (`manifests/abc-tolls.toml` and its fragments,
//! as shipped, pointed at a temporary folder): toll lines put into the
//! transaction stream reach the warehouse, sum up to a billing message for the
//! customer past a threshold, and count up to traffic alerts for every station
//! below its reference minimum, the silent ones included. A simulated day,
//! with a restart in the middle, matches an oracle computed here from the
//! generated lines alone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_host::agent::{Agent, AgentConfig, AgentHandle};
use weir_host::pipeline::Producer;
use weir_host::stream::NewRecord;
use weir_tests::{TestHost, inbox_subjects, operations_desk, root, showcase_manifest};

/// A traffic alert's (station, window start, count, minimum), from its text:
/// "Station 5 counted 0 vehicles between <start> and <end>; its minimum for that slot is 25."
fn traffic_alert(text: &str) -> (String, String, u64, u64) {
    let words: Vec<&str> = text.split(' ').collect();
    let number = |word: &str| word.trim_end_matches('.').parse::<u64>().expect("a number");
    let minimum = number(words.last().copied().unwrap_or(""));
    (words[1].to_owned(), words[6].to_owned(), number(words[3]), minimum)
}

/// A toll line at 2026-11-26 (a Thursday) `hh:mm`.
fn line(n: u32, time: &str, station: u32, customer: &str, cents: u32) -> NewRecord {
    NewRecord {
        source: None,
        key: format!("station-{station}"),
        event_time_ms: None,
        data: Bytes::from(format!(
            "T{station:04}-{n:06},2026-11-26T{time}:00Z,{station},1,TAG{n:07},{customer},2,{cents}"
        )),
        explicit_hash_key: None,
        attributes: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_showcase_fills_the_warehouse_and_raises_billing_and_traffic_alerts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_desk, hook) = operations_desk().await;
    let manifest = showcase_manifest(dir.path(), "1s", &hook);
    let host = TestHost::start_in(dir, &manifest).await.expect("start");
    // C000123 has set a $5.00 threshold in the app.
    host.host.state.put("thresholds", "C000123", b"500").expect("threshold");
    let mut lines = vec![
        line(1, "14:01", 3, "C000123", 275),
        line(2, "14:02", 3, "C000456", 150),
        line(3, "14:04", 3, "C000123", 275),
        line(4, "14:05", 7, "C000456", 410),
    ];
    lines.push(NewRecord {
        source: None,
        data: Bytes::from_static(b"T0003-000005,not a line"),
        ..line(5, "14:06", 3, "C0", 1)
    });
    // 14:45 moves the watermark past 14:31: the 14:00-14:10 and 14:00-14:30 windows close.
    lines.push(line(6, "14:45", 3, "C000789", 100));
    host.host.put("toll-lines", lines, Producer::Native).expect("put");

    let deadline = Instant::now() + Duration::from_secs(30);
    let (billing, traffic) = loop {
        let billing = inbox_subjects(&host, "app", "C000123").await;
        let traffic = inbox_subjects(&host, "operators", "operators").await;
        if !billing.is_empty() && traffic.len() == 12 {
            break (billing, traffic);
        }
        assert!(Instant::now() < deadline, "so far: billing {billing:?}, traffic {traffic:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(billing, ["Your tolls for 2026-11 passed $5.00"]);
    assert!(inbox_subjects(&host, "app", "C000456").await.is_empty(), "C000456 is under the default $100.00");
    assert!(traffic.iter().any(|s| s.starts_with("Station 3 low 14:00-14:30: 3 vehicles")), "{traffic:?}");
    assert!(traffic.iter().any(|s| s.starts_with("Station 12 silent 14:00-14:30")), "{traffic:?}");

    // Requirement 1 on the same stream: well-formed lines in the warehouse, the malformed one aside.
    let status = loop {
        let status = host.host.status();
        if status.deliveries[0].rows_loaded == 5 {
            break status;
        }
        assert!(Instant::now() < deadline, "warehouse: {:?}", status.deliveries[0]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.stages.iter().find(|s| s.name == "etl").map(|s| s.dead_lettered), Some(1));
}

/// 2026-11-25T00:00:00Z, a Wednesday (weekday 3): in the past, so no record is
/// set aside as too far ahead of the clock.
const DAY: i64 = 1_795_564_800_000;
const WEEKDAY: u64 = 3;
const MINUTE: i64 = 60_000;

/// The end of the 10-minute window starting at an RFC 3339 time.
fn window_end(start: &str) -> i64 {
    weir_host::time::system_ms(humantime::parse_rfc3339(start).expect("a window start")) + 10 * MINUTE
}

/// Waits until every stage has read all of its input.
async fn caught_up(host: &TestHost) {
    // A day's backlog (or three) on two shared cores may take a while.
    host.wait_until_within(Duration::from_secs(120), "every stage to catch up", |s| {
        let stage = |name: &str| s.stages.iter().any(|st| st.name == name);
        s.consumers.iter().filter(|c| stage(&c.consumer)).all(|c| c.lag_records == 0)
    })
    .await;
}

/// Puts lines as a station sends them: each batch arrives at its last line's time on `clock`.
fn put_lines(host: &TestHost, lines: &[weir_host::simulate::TollLine], clock: &AtomicI64) {
    for chunk in lines.chunks(500) {
        if let Some(last) = chunk.last() {
            clock.fetch_max(last.time_ms, Ordering::SeqCst);
        }
        let records = chunk
            .iter()
            .map(|l| NewRecord {
                source: None,
                key: format!("station-{}", l.station),
                event_time_ms: Some(l.time_ms),
                data: Bytes::from(l.text.clone()),
                explicit_hash_key: None,
                attributes: Vec::new(),
            })
            .collect();
        assert!(host.host.put("toll-lines", records, Producer::Native).expect("put").iter().all(Result::is_ok));
    }
}

/// What the day must produce, from its lines alone: transaction ids, billing
/// crossings (customer, window start), month-to-date totals, and traffic alerts
/// (station, window start, count, minimum).
struct Oracle {
    rows: BTreeSet<String>,
    billing: BTreeSet<(String, String)>,
    totals: BTreeMap<String, u64>,
    traffic: BTreeSet<(String, String, u64, u64)>,
}

/// The oracle of a day whose windows closed as a sorted feed's do: once the latest time,
/// less the out-of-orderness, passes their end.
fn oracle(lines: &[weir_host::simulate::TollLine]) -> Oracle {
    let last = lines.iter().map(|l| l.time_ms).max().unwrap_or(DAY);
    oracle_until(lines, last - 5_000, last - MINUTE)
}

/// The oracle of a day whose billing windows closed up to `billing_watermark` and
/// traffic windows up to `traffic_watermark`.
fn oracle_until(lines: &[weir_host::simulate::TollLine], billing_watermark: i64, traffic_watermark: i64) -> Oracle {
    use weir_host::simulate::{STATIONS, threshold_cents};
    let time = |ms: i64| weir_host::time::format_ms(ms);
    let mut rows = BTreeSet::new();
    let mut sums: BTreeMap<(String, i64), u64> = BTreeMap::new();
    let mut counts: BTreeMap<(u32, i64), u64> = BTreeMap::new();
    for line in lines {
        let fields: Vec<&str> = line.text.split(',').collect();
        if fields.len() != 8 {
            continue;
        }
        rows.insert(fields[0].to_owned());
        let cents: u64 = fields[7].parse().expect("cents");
        *sums.entry((fields[5].to_owned(), line.time_ms - line.time_ms.rem_euclid(10 * MINUTE))).or_default() += cents;
        *counts.entry((line.station, line.time_ms - line.time_ms.rem_euclid(30 * MINUTE))).or_default() += 1;
    }
    let billing_closed = |start: i64| start + 10 * MINUTE <= billing_watermark;
    let traffic_closed = |start: i64| start + 30 * MINUTE <= traffic_watermark;
    let mut billing = BTreeSet::new();
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    for ((customer, start), cents) in &sums {
        if !billing_closed(*start) {
            continue;
        }
        let before = totals.get(customer.as_str()).copied().unwrap_or(0);
        let threshold = threshold_cents(customer[1..].parse().expect("customer number"));
        if before < threshold && before + cents >= threshold {
            billing.insert((customer.clone(), time(*start)));
        }
        totals.insert(customer, before + cents);
    }
    let minimums: BTreeMap<(u32, u32), u64> =
        std::fs::read_to_string(root().join("manifests/abc-tolls/station_minimums.csv"))
            .expect("minimums")
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<u64> = l.split(',').filter_map(|v| v.parse().ok()).collect();
                (f[1] == WEEKDAY).then(|| ((f[0] as u32, f[2] as u32), f[3]))
            })
            .collect();
    let mut traffic = BTreeSet::new();
    for slot in 0..48u32 {
        let start = DAY + i64::from(slot) * 30 * MINUTE;
        if !traffic_closed(start) {
            continue;
        }
        for station in 1..=STATIONS {
            let count = counts.get(&(station, start)).copied().unwrap_or(0);
            let minimum = minimums[&(station, slot)];
            if count < minimum {
                traffic.insert((station.to_string(), time(start), count, minimum));
            }
        }
    }
    let totals = totals.into_iter().map(|(customer, cents)| (customer.to_owned(), cents)).collect();
    Oracle { rows, billing, totals, traffic }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_day_matches_an_independent_oracle_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (desk, hook) = operations_desk().await;
    let manifest = showcase_manifest(dir.path(), "60s", &hook); // as shipped: the day's clock runs the buffer
    let warehouse = dir.path().join("out/warehouse.db");
    let day = weir_host::simulate::generate_day(42, DAY);
    let expected = oracle(&day);
    assert!(expected.billing.len() > 5 && !expected.traffic.is_empty(), "the day has something to find");

    // The host runs on the day's clock: lines arrive when they happen, and the
    // delivery's 60 s buffer interval is 60 simulated seconds.
    let now = Arc::new(AtomicI64::new(DAY));
    let clock = now.clone();
    let clock: weir_host::stream::Clock = Arc::new(move || clock.load(Ordering::SeqCst));
    let host = TestHost::start_with_clock(dir, &manifest, "127.0.0.1:0", clock).await.expect("start");
    for (customer, threshold) in weir_host::simulate::thresholds() {
        host.host.state.put("thresholds", &customer, threshold.as_bytes()).expect("threshold");
    }
    let (morning, afternoon) = day.split_at(day.len() / 2);
    put_lines(&host, morning, &now);
    caught_up(&host).await;
    let host = host.restart(&manifest).await.expect("restart");
    // The afternoon a few simulated minutes at a time: each billing message goes out as soon as
    // its crossing window closes, so within 10 minutes (and the 5 s of allowed disorder) of the
    // crossing in simulated time; each row is in the warehouse within 30 simulated minutes.
    let closed_by = |now: i64| expected.billing.iter().filter(|(_, start)| window_end(start) + 5_000 <= now).count();
    let sent_before = closed_by(now.load(Ordering::SeqCst));
    for chunk in afternoon.chunks(100) {
        put_lines(&host, chunk, &now);
        caught_up(&host).await;
        let now = now.load(Ordering::SeqCst);
        let sent = host.host.channels.sent().get("app").copied().unwrap_or(0) as usize;
        assert_eq!(sent_before + sent, closed_by(now), "billing messages sent by {}", weir_host::time::format_ms(now));
        // Counted since the restart: the morning's rows were loaded before it.
        let due = afternoon.iter().filter(|l| l.time_ms <= now - 30 * MINUTE && l.text.contains(',')).count() as u64;
        host.wait_until("rows no older than 30 simulated minutes", |s| s.deliveries[0].rows_loaded >= due).await;
    }
    let webhooks_sent = || desk.count() == expected.traffic.len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !webhooks_sent() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut host = host;
    host.stop().await; // the deliveries flush what they buffered

    // Requirement 1: every well-formed line is one row.
    let db = rusqlite::Connection::open(&warehouse).expect("warehouse");
    let mut query = db.prepare("SELECT transaction_id FROM toll_transactions").expect("query");
    let rows: Vec<String> = query.query_map([], |r| r.get(0)).expect("rows").map(|r| r.expect("row")).collect();
    assert_eq!(rows.len(), expected.rows.len(), "one row per well-formed line, none twice");
    assert_eq!(rows.into_iter().collect::<BTreeSet<_>>(), expected.rows);

    // Requirement 2: one message per customer past the threshold, as of the window that crossed it
    // (so within the 10-minute window, plus 5 s of allowed disorder, of the crossing).
    let state = host.host.state.clone();
    let mut billing = BTreeSet::new();
    for customer in 1..=weir_host::simulate::CUSTOMERS {
        let customer = weir_host::simulate::customer_id(customer);
        for message in state.inbox("app", &customer, 0, 10).expect("inbox") {
            let window = message.body.split("(as of ").nth(1).and_then(|r| r.split(')').next()).unwrap_or("");
            assert!(billing.insert((customer.clone(), window.to_owned())), "two messages for {customer}");
        }
    }
    assert_eq!(billing, expected.billing);

    // Requirement 3: an alert for every station and window below the minimum, silent ones included.
    let mut traffic = BTreeSet::new();
    for message in state.inbox("operators", "operators", 0, 1000).expect("inbox") {
        traffic.insert(traffic_alert(&message.body));
    }
    assert_eq!(traffic, expected.traffic);
    // The operations tool got the same alerts by webhook, signed, each delivery once.
    let hooks = desk.received();
    let by_hook: BTreeSet<_> = hooks.values().map(|m| traffic_alert(m["body"].as_str().unwrap_or_default())).collect();
    assert_eq!((hooks.len(), by_hook), (expected.traffic.len(), expected.traffic.clone()));
    assert_eq!(desk.refused(), 0, "every delivery signed with the channel's secret");
    assert!(traffic.iter().filter(|(station, ..)| station == "5").count() >= 4, "the silent station, 10:00-12:00");
}

/// The shipped agent config (`manifests/abc-tolls/agent.toml`) written to `dir`, pointed
/// at `url` and at the station logs and checkpoints under `out`.
fn shipped_agent_config(dir: &std::path::Path, out: &std::path::Path, url: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(root().join("manifests/abc-tolls/agent.toml"))
        .expect("the agent config")
        .replace("http://127.0.0.1:7070", url)
        .replace("../../out/abc-tolls", &out.display().to_string());
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).expect("write the agent config");
    path
}

/// The shipped agent config, started as `weir agent --config` does.
fn start_shipped_agent(dir: &std::path::Path, out: &std::path::Path, url: &str) -> AgentHandle {
    let path = shipped_agent_config(dir, out, url);
    Agent::start(AgentConfig::load(&path).expect("the shipped agent config is valid")).expect("the agent starts")
}

/// `weir agent --config CONFIG` in a process of its own: this test binary run again
/// with only [`weir_in_a_child_process`], which runs weir's command line.
fn spawn_weir_agent(config: &std::path::Path) -> std::process::Child {
    weir_tests::weir_command(&["agent", "--config", &config.display().to_string()])
        .env("WEIR_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start weir agent")
}

/// The README's first command, `weir simulate --run manifests/abc-tolls.toml`, as a
/// newcomer runs it: weir's command line in a process of its own, on the shipped
/// manifest pointed at a temporary folder. Its report counts the oracle's rows,
/// billing messages and traffic alerts.
#[test]
fn the_showcase_command_reports_what_the_oracle_finds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = weir_tests::free_port();
    let manifest = dir.path().join("abc-tolls.toml");
    std::fs::write(&manifest, showcase_manifest(dir.path(), "60s", &format!("http://127.0.0.1:{port}/hooks/weir")))
        .expect("the manifest");
    let day = weir_host::time::format_ms(DAY)[..10].to_owned();
    let output = weir_tests::weir_command(&["simulate", "--run", &manifest.display().to_string(), "--day", &day])
        .env("WEIR_LOG", "warn")
        .output()
        .expect("run weir simulate");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{report}\n{}", String::from_utf8_lossy(&output.stderr));
    let count = |label: &str| -> Option<usize> {
        let line = report.lines().find(|l| l.trim_start().starts_with(label))?;
        line.trim_start()[label.len()..].split_whitespace().next()?.parse().ok()
    };
    let expected = oracle(&weir_host::simulate::generate_day(42, DAY));
    assert_eq!(count("rows in the warehouse"), Some(expected.rows.len()), "{report}");
    assert_eq!(count("billing messages"), Some(expected.billing.len()), "{report}");
    assert_eq!(count("traffic alerts"), Some(expected.traffic.len()), "{report}");
    assert_eq!(count("webhook deliveries"), Some(expected.traffic.len()), "{report}");
    assert_eq!(count("late, set aside"), Some(0), "{report}");
}

/// Runs `weir` in a child process that [`weir_tests::weir_command`] started; does
/// nothing in an ordinary test run.
#[test]
fn weir_in_a_child_process() {
    weir_tests::run_weir_if_child();
}

/// Appends lines to their stations' logs (`station-07.log`), as the stations' servers do.
fn append_to_logs(logs: &std::path::Path, lines: &[weir_host::simulate::TollLine]) {
    use std::io::Write as _;
    std::fs::create_dir_all(logs).expect("the logs folder");
    let mut by_station: BTreeMap<u32, String> = BTreeMap::new();
    for line in lines {
        let text = by_station.entry(line.station).or_default();
        text.push_str(&line.text);
        text.push('\n');
    }
    for (station, text) in by_station {
        let path = logs.join(format!("station-{station:02}.log"));
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("a station log");
        file.write_all(text.as_bytes()).expect("append");
    }
}

/// Waits until `toll-lines` holds `lines` records and every stage has read its input.
async fn ingested(host: &TestHost, lines: usize) {
    ingested_at_least(host, lines).await;
    caught_up(host).await;
}

/// Waits until the lines' stream holds `lines` records.
async fn ingested_at_least(host: &TestHost, lines: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while host.host.status().streams.get("toll-lines").copied().unwrap_or(0) < lines as u64 {
        assert!(Instant::now() < deadline, "the agent sent {:?} of {lines} lines", host.host.status().streams);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An aggregator stage's watermark; `i64::MIN` before its first.
fn watermark(host: &TestHost, stage: &str) -> i64 {
    let status = host.host.status();
    let stage = status.stages.iter().find(|s| s.name == stage).expect("the stage");
    stage.windows.and_then(|w| w.watermark_ms).unwrap_or(i64::MIN)
}

/// What the pipeline produced from `lines`, and what the oracle says it must have, once
/// every stage has caught up with watermarks that closed the same windows before and
/// after it was read. (Once every source is idle the watermark moves on with the clock,
/// and a window it passes fires a moment later: a comparison must not straddle that.)
async fn settled(host: &TestHost, lines: &[weir_host::simulate::TollLine]) -> (Produced, Oracle) {
    let closed = || {
        let (billing, traffic) = (watermark(host, "billing-sum"), watermark(host, "traffic-count"));
        (billing, traffic, billing.div_euclid(10 * MINUTE), traffic.div_euclid(30 * MINUTE))
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (billing, traffic, billing_windows, traffic_windows) = closed();
        if billing > i64::MIN && traffic > i64::MIN {
            caught_up(host).await;
            let got = produced(host);
            let (.., billing_after, traffic_after) = closed();
            if (billing_windows, traffic_windows) == (billing_after, traffic_after) {
                return (got, oracle_until(lines, billing, traffic));
            }
        }
        assert!(Instant::now() < deadline, "the windows did not settle: {:?}", host.host.status().stages);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the pipeline produced for requirements 2 and 3: billing messages (customer,
/// as of window), month-to-date totals, traffic alerts and corrections (station, window start).
struct Produced {
    billing: BTreeSet<(String, String)>,
    totals: BTreeMap<String, u64>,
    traffic: BTreeSet<(String, String, u64, u64)>,
    corrections: BTreeSet<(String, String)>,
}

fn produced(host: &TestHost) -> Produced {
    let state = host.host.state.clone();
    let (mut billing, mut totals) = (BTreeSet::new(), BTreeMap::new());
    for customer in 1..=weir_host::simulate::CUSTOMERS {
        let customer = weir_host::simulate::customer_id(customer);
        for message in state.inbox("app", &customer, 0, 10).expect("inbox") {
            let window = message.body.split("(as of ").nth(1).and_then(|r| r.split(')').next()).unwrap_or("");
            assert!(billing.insert((customer.clone(), window.to_owned())), "two messages for {customer}");
        }
        if let Some(item) = state.get("month-totals", &format!("{customer}|2026-11")).expect("a month total") {
            let total: serde_json::Value = serde_json::from_slice(&item).expect("a month total is JSON");
            let cents = total["cents"].as_u64().expect("cents");
            if cents > 0 {
                totals.insert(customer, cents);
            }
        }
    }
    let (mut traffic, mut corrections) = (BTreeSet::new(), BTreeSet::new());
    for message in state.inbox("operators", "operators", 0, 10_000).expect("inbox") {
        if let Some(rest) = message.body.strip_prefix("Correction: station ") {
            let words: Vec<&str> = rest.split(' ').collect();
            corrections.insert((words[0].to_owned(), words[5].to_owned()));
        } else {
            assert!(traffic.insert(traffic_alert(&message.body)), "an alert twice: {}", message.body);
        }
    }
    Produced { billing, totals, traffic, corrections }
}

/// The showcase as shipped, served from a fresh folder, with the customers' thresholds
/// set (as the app does with `weir table put`); the host and its `out` folder, where the
/// station logs and the agent's checkpoints go.
async fn showcase() -> (TestHost, std::path::PathBuf) {
    showcase_with("").await
}

/// [`showcase`] with `extra` added to the manifest (a `[storage]` section).
async fn showcase_with(extra: &str) -> (TestHost, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    // The desk's server keeps it, and answers the traffic webhooks.
    let (_, hook) = operations_desk().await;
    let manifest = showcase_manifest(dir.path(), "60s", &hook) + extra;
    let out = dir.path().join("out");
    let host = TestHost::start_in(dir, &manifest).await.expect("start");
    for (customer, threshold) in weir_host::simulate::thresholds() {
        host.host.state.put("thresholds", &customer, threshold.as_bytes()).expect("threshold");
    }
    (host, out)
}

/// The documented path for real stations, as a new user takes it: the day's station
/// logs (`weir simulate --logs`), the shipped manifest served (`weir run`), the
/// customers' thresholds set (`weir table put`), and `weir agent` with the shipped
/// config following the twelve logs from the beginning. Every window the watermark
/// passed must give exactly the oracle's messages and totals, with nothing late.
async fn the_agent_path_matches_the_oracle(seed: u64) {
    let (host, out) = showcase().await;
    agent_path_matches_the_oracle(seed, host, out, None).await;
}

/// [`the_agent_path_matches_the_oracle`] on `host`, whose `out` folder gets the station logs.
/// With `nats`, the cluster keeping its streams: the server leading the lines' shard is
/// killed (SIGKILL) once a third of the day is in, and started again once all of it is.
async fn agent_path_matches_the_oracle(
    seed: u64,
    host: TestHost,
    out: std::path::PathBuf,
    nats: Option<&mut weir_tests::nats::NatsCluster>,
) {
    let day = weir_host::simulate::generate_day(seed, DAY);
    weir_host::simulate::write_logs(&day, &out.join("stations")).expect("the station logs");
    let agent_dir = tempfile::tempdir().expect("tempdir");
    let agent = start_shipped_agent(agent_dir.path(), &out, &host.url);
    let killed = match nats {
        Some(cluster) => {
            ingested_at_least(&host, day.len() / 3).await;
            let leader = cluster.stream_leader("weir-toll-lines-0").await.expect("the lines' shard has a leader");
            let node = cluster.node(&leader).expect("the leader is a node");
            cluster.kill(node);
            Some((cluster, node))
        }
        None => None,
    };
    ingested(&host, day.len()).await;
    agent.stop().await;
    if let Some((cluster, node)) = killed {
        cluster.start_node(node);
        cluster.wait_for_leader(Duration::from_secs(60), None).await;
    }

    let (got, expected) = settled(&host, &day).await;
    assert!(expected.billing.len() > 5 && expected.traffic.len() > 5, "seed {seed}: the day has something to find");
    assert_eq!(got.billing, expected.billing, "seed {seed}: billing messages");
    assert_eq!(got.totals, expected.totals, "seed {seed}: every toll of a closed window counted once");
    assert_eq!(got.traffic, expected.traffic, "seed {seed}: traffic alerts");
    assert!(got.corrections.is_empty(), "seed {seed}: nothing to correct");
    let status = host.host.status();
    for stage in ["billing-sum", "traffic-count"] {
        let stage = status.stages.iter().find(|s| s.name == stage).expect("the stage");
        assert_eq!((stage.late, stage.revisions), (0, 0), "seed {seed}: {}: nothing came late", stage.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_path_matches_the_oracle_seed_7() {
    the_agent_path_matches_the_oracle(7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_path_matches_the_oracle_seed_42() {
    the_agent_path_matches_the_oracle(42).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_path_matches_the_oracle_seed_2026() {
    the_agent_path_matches_the_oracle(2026).await;
}

/// The same pipeline, unchanged but for `[storage]`, with its streams on a
/// three-node NATS JetStream cluster, one of which is killed mid-day: the same
/// exact result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_path_on_a_nats_cluster_losing_a_node_matches_the_oracle() {
    let mut cluster = weir_tests::nats::NatsCluster::start(3).await;
    let servers: Vec<String> = cluster.servers().iter().map(|s| format!("{s:?}")).collect();
    let storage = format!("\n[storage]\nbackend = \"nats\"\nservers = [{}]\n", servers.join(", "));
    let (host, out) = showcase_with(&storage).await;
    agent_path_matches_the_oracle(7, host, out, Some(&mut cluster)).await;
}

/// A station's server offline for two hours: the other eleven logs go on, the idle
/// timeout lets the windows close without it (the traffic monitor then finds it silent),
/// and its backlog arrives afterwards, within the allowed lateness. Billing must count
/// every one of its tolls once; every alert its backlog proves wrong must be followed by
/// a correction, and every true alert stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_offline_for_two_hours_is_billed_exactly_and_its_false_alerts_corrected() {
    const OFFLINE: u32 = 3;
    let (from, to) = (DAY + 8 * 60 * MINUTE, DAY + 10 * 60 * MINUTE);
    let (host, out) = showcase().await;
    let logs = out.join("stations");
    let day: Vec<_> =
        weir_host::simulate::generate_day(11, DAY).into_iter().filter(|l| l.time_ms < to + 60 * MINUTE).collect();
    let agent_dir = tempfile::tempdir().expect("tempdir");
    let agent = start_shipped_agent(agent_dir.path(), &out, &host.url);
    // Until 08:00 every station logs; then station 3's server is offline until 10:00.
    let (before, rest): (Vec<_>, Vec<_>) = day.iter().cloned().partition(|l| l.time_ms < from);
    let (withheld, live): (Vec<_>, Vec<_>) = rest.into_iter().partition(|l| l.station == OFFLINE && l.time_ms < to);
    let (live_offline, after): (Vec<_>, Vec<_>) = live.into_iter().partition(|l| l.time_ms < to);
    append_to_logs(&logs, &before);
    ingested(&host, before.len()).await;
    append_to_logs(&logs, &live_offline);
    ingested(&host, before.len() + live_offline.len()).await;
    // Station 3 has been quiet for the idle timeout: the windows of 08:00-09:30 close without it.
    let deadline = Instant::now() + Duration::from_secs(120);
    while watermark(&host, "traffic-count") < to - 30 * MINUTE {
        assert!(Instant::now() < deadline, "the traffic windows did not close without station 3");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    caught_up(&host).await;
    let silent = produced(&host).traffic.iter().filter(|(station, ..)| station == "3").count();
    assert!(silent >= 3, "station 3 looked silent from 08:00 to 09:30 ({silent} alerts)");
    // Its server is back: the backlog comes, then the rest of the day.
    append_to_logs(&logs, &withheld);
    append_to_logs(&logs, &after);
    ingested(&host, day.len()).await;
    agent.stop().await;

    let (got, expected) = settled(&host, &day).await;
    assert_eq!(got.totals, expected.totals, "every toll counted once, station 3's late ones too");
    let customers = |set: &BTreeSet<(String, String)>| set.iter().map(|(c, _)| c.clone()).collect::<BTreeSet<_>>();
    assert_eq!(customers(&got.billing), customers(&expected.billing), "the customers past their threshold, once each");
    let alerted: BTreeSet<(String, String)> = got.traffic.iter().map(|(s, w, ..)| (s.clone(), w.clone())).collect();
    let due: BTreeSet<(String, String)> = expected.traffic.iter().map(|(s, w, ..)| (s.clone(), w.clone())).collect();
    let wrong: BTreeSet<(String, String)> = alerted.difference(&due).cloned().collect();
    assert!(due.is_subset(&alerted), "every true alert went out: {:?}", due.difference(&alerted).collect::<Vec<_>>());
    assert!(!wrong.is_empty() && wrong.iter().all(|(s, _)| s == "3"), "the false alerts are station 3's: {wrong:?}");
    assert_eq!(got.corrections, wrong, "each false alert, and only those, corrected");
    let status = host.host.status();
    let revisions = |name: &str| status.stages.iter().find(|s| s.name == name).map_or(0, |s| s.revisions);
    assert!(revisions("billing-sum") > 0 && revisions("traffic-count") > 0, "the backlog revised windows");
}

/// `weir agent` killed with SIGKILL three times in the middle of the day and started
/// again each time: what it sent after its last checkpoint goes again, and the stream
/// stores each line once; its pauses are too short for a station to count as idle, so
/// no window closes early. Billing messages, totals and traffic alerts are exactly the oracle's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_day_and_started_again_changes_nothing() {
    let (host, out) = showcase().await;
    let day = weir_host::simulate::generate_day(3, DAY);
    weir_host::simulate::write_logs(&day, &out.join("stations")).expect("the station logs");
    let agent_dir = tempfile::tempdir().expect("tempdir");
    let config = shipped_agent_config(agent_dir.path(), &out, &host.url);
    let stored = || host.host.status().streams.get("toll-lines").copied().unwrap_or(0) as usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    for quarter in 1..=3 {
        let mut agent = spawn_weir_agent(&config);
        while stored() < quarter * day.len() / 4 {
            assert!(Instant::now() < deadline, "the agent sent {} of {} lines", stored(), day.len());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        agent.kill().expect("SIGKILL the agent");
        agent.wait().expect("the agent is gone");
    }
    let mut agent = spawn_weir_agent(&config);
    ingested(&host, day.len()).await;
    agent.kill().expect("stop the agent");
    agent.wait().expect("the agent is gone");

    let (got, expected) = settled(&host, &day).await;
    assert_eq!(got.billing, expected.billing, "billing messages");
    assert_eq!(got.totals, expected.totals, "every toll counted once");
    assert_eq!(got.traffic, expected.traffic, "traffic alerts");
    assert!(got.corrections.is_empty(), "nothing to correct");
    let status = host.host.status();
    assert_eq!(status.streams["toll-lines"], day.len() as u64, "every line stored once");
    for stage in ["billing-sum", "traffic-count"] {
        let stage = status.stages.iter().find(|s| s.name == stage).expect("the stage");
        assert_eq!(stage.late, 0, "{}: nothing came late", stage.name);
    }
}

/// A backfill: three days of station logs sent at once by three agents in parallel
/// (one per day, as three station servers catching up would) give every customer the
/// month-to-date total of three live days, with nothing set aside as late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_days_backfilled_at_once_by_three_agents_bill_as_three_live_days() {
    let (host, out) = showcase().await;
    let days: Vec<Vec<weir_host::simulate::TollLine>> =
        (0..3).map(|d| weir_host::simulate::generate_day(100 + d, DAY - (2 - d as i64) * 24 * 60 * MINUTE)).collect();
    for (d, day) in days.iter().enumerate() {
        weir_host::simulate::write_logs(day, &out.join(format!("day-{d}")).join("stations")).expect("the logs");
    }
    let agent_dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let agents: Vec<AgentHandle> = agent_dirs
        .iter()
        .enumerate()
        .map(|(d, agent_dir)| start_shipped_agent(agent_dir.path(), &out.join(format!("day-{d}")), &host.url))
        .collect();
    let all: Vec<weir_host::simulate::TollLine> = days.concat();
    ingested(&host, all.len()).await;
    for agent in agents {
        agent.stop().await;
    }
    // Once every station has been quiet for the idle timeout, the last days' windows close too.
    let deadline = Instant::now() + Duration::from_secs(120);
    let last_day_end = DAY + 23 * 60 * MINUTE;
    while watermark(&host, "billing-sum") < last_day_end {
        assert!(Instant::now() < deadline, "the windows of the three days did not close");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let customers = |set: &BTreeSet<(String, String)>| set.iter().map(|(c, _)| c.clone()).collect::<BTreeSet<_>>();
    let (got, expected) = settled(&host, &all).await;
    let status = host.host.status();
    let late = status.stages.iter().find(|s| s.name == "billing-sum").map(|s| s.late);
    assert_eq!(late, Some(0), "nothing came later than the allowed lateness: {:?}", status.stages);
    let differ: Vec<(&String, Option<&u64>, u64)> = expected
        .totals
        .iter()
        .filter(|(customer, cents)| got.totals.get(customer.as_str()) != Some(cents))
        .map(|(customer, cents)| (customer, got.totals.get(customer.as_str()), *cents))
        .collect();
    assert!(differ.is_empty(), "every toll of the three days counted once: (customer, got, expected) {differ:?}");
    assert_eq!(got.totals.len(), expected.totals.len(), "no total for a customer without tolls");
    assert_eq!(customers(&got.billing), customers(&expected.billing), "the customers past their threshold");
}

/// The day sent twice: an agent that lost its checkpoints (killed between its puts and
/// its checkpoint, or started again from the beginning) sends every line again. Each
/// line is stored once by its transaction id, so the warehouse, the billing totals,
/// the messages and the alerts are those of one sending, and the repeats are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_sends_the_day_again_changes_nothing() {
    let (mut host, out) = showcase().await;
    let day = weir_host::simulate::generate_day(5, DAY);
    weir_host::simulate::write_logs(&day, &out.join("stations")).expect("the station logs");
    let agent_dir = tempfile::tempdir().expect("tempdir");
    let agent = start_shipped_agent(agent_dir.path(), &out, &host.url);
    ingested(&host, day.len()).await;
    agent.stop().await;
    // Its checkpoints are lost: the agent starts over from the beginning of every log.
    std::fs::remove_file(out.join("agent-checkpoints.json")).expect("the agent's checkpoints");
    let again = start_shipped_agent(agent_dir.path(), &out, &host.url);
    let deadline = Instant::now() + Duration::from_secs(120);
    while again.counters().records_sent < day.len() as u64 {
        assert!(Instant::now() < deadline, "the agent sent {:?} of {} lines again", again.counters(), day.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    again.stop().await;
    caught_up(&host).await;

    let status = host.host.status();
    assert_eq!(status.streams["toll-lines"], day.len() as u64, "every line stored once");
    assert_eq!(status.duplicates["toll-lines"], day.len() as u64, "and each repeat counted");
    let (got, expected) = settled(&host, &day).await;
    assert_eq!(got.billing, expected.billing, "billing messages");
    assert_eq!(got.totals, expected.totals, "every toll counted once");
    assert_eq!(got.traffic, expected.traffic, "traffic alerts");
    host.stop().await; // the deliveries flush what they buffered
    let db = rusqlite::Connection::open(host.path("out/warehouse.db")).expect("warehouse");
    let rows: i64 = db.query_row("SELECT count(*) FROM toll_transactions", [], |r| r.get(0)).expect("count");
    assert_eq!(rows as usize, expected.rows.len(), "one row per well-formed line, none twice");
}

/// The showcase's three keys with their secrets set (as `weir run` reads them from the environment).
const KEYS: [(&str, &str, &str); 3] = [
    ("ABCTOLLSPRODUCER", "ABC_TOLLS_PRODUCER_SECRET", "producer-secret"),
    ("ABCTOLLSAPP", "ABC_TOLLS_APP_SECRET", "app-secret"),
    ("ABCTOLLSOPERATOR", "ABC_TOLLS_OPERATOR_SECRET", "operator-secret"),
];

/// One call signed with SigV4 by key `id` (or with `bearer` as a recipient
/// token, or unsigned): its status and JSON answer.
async fn call_as(
    host: &TestHost,
    id: Option<&str>,
    bearer: Option<&str>,
    method: &str,
    path: &str,
    target: Option<&str>,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let body = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
    let bearer = bearer.map(|token| format!("Bearer {token}"));
    let mut headers = Vec::new();
    if let Some(target) = target {
        headers.extend([("x-amz-target", target), ("content-type", "application/x-amz-json-1.1")]);
    }
    if let Some(bearer) = &bearer {
        headers.push(("authorization", bearer));
    }
    let key = id.map(|id| (id, KEYS.iter().find(|(k, _, _)| *k == id).expect("a showcase key").2));
    let response = weir_tests::call(host, key, method, path, &headers, body).await;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

/// Each of the showcase's keys may do what its holder needs and nothing else:
/// the station agents put lines; the app backend reads `app` inboxes and mints
/// recipient tokens, with which a phone reads its one inbox and nothing more;
/// the operators may do everything. A refused call is `AccessDeniedException` (403).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_showcase_key_may_do_only_what_its_holder_needs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, hook) = operations_desk().await;
    let mut manifest = showcase_manifest(dir.path(), "60s", &hook);
    for (_, variable, secret) in KEYS {
        manifest = manifest.replace(&format!("secret-env = \"{variable}\""), &format!("secret = \"{secret}\""));
    }
    let host = TestHost::start_in(dir, &manifest).await.expect("start");
    let kinesis = |op: &str| Some(format!("Kinesis_20131202.{op}"));
    let denied = |(status, answer): (u16, serde_json::Value)| {
        status == 403 && answer["__type"].as_str().or(answer["error"]["code"].as_str()) == Some("AccessDeniedException")
    };
    let put = serde_json::json!({"StreamName": "toll-lines", "Records": [
        {"Data": "VDAwMDEtMDAwMDAxLDIwMjYtMTEtMjZUMDg6MDA6MDBaLDEsMSxUQUcsQzAwMDEyMywyLDE1MA==", "PartitionKey": "1"}]});
    let producer = Some("ABCTOLLSPRODUCER");
    let (status, answer) =
        call_as(&host, producer, None, "POST", "/", kinesis("PutRecords").as_deref(), put.clone()).await;
    assert_eq!((status, &answer["FailedRecordCount"]), (200, &serde_json::json!(0)), "{answer}");
    for (op, body) in [
        ("DeleteStream", serde_json::json!({"StreamName": "toll-lines"})),
        ("ListStreams", serde_json::json!({})),
        (
            "GetShardIterator",
            serde_json::json!({"StreamName": "toll-lines", "ShardId": "shardId-000000000000", "ShardIteratorType": "TRIM_HORIZON"}),
        ),
        ("PutRecords", serde_json::json!({"StreamName": "toll-rows", "Records": put["Records"]})),
        // A consumer ARN of the allowed stream does not make another stream allowed.
        (
            "PutRecords",
            serde_json::json!({"StreamName": "toll-rows", "Records": put["Records"],
            "ConsumerARN": "arn:aws:kinesis:us-east-1:000000000000:stream/toll-lines/consumer/x:1"}),
        ),
        (
            "DeleteStream",
            serde_json::json!({"StreamName": "toll-rows",
            "ConsumerARN": "arn:aws:kinesis:us-east-1:000000000000:stream/toll-lines/consumer/x:1"}),
        ),
    ] {
        let answer = call_as(&host, producer, None, "POST", "/", kinesis(op).as_deref(), body).await;
        assert!(denied(answer.clone()), "the producer key may not {op}: {answer:?}");
    }
    for (method, path) in
        [("GET", "/v1/inbox/C000123"), ("GET", "/v1/pipeline"), ("POST", "/v1/stages/etl/plugin/rollback")]
    {
        let answer = call_as(&host, producer, None, method, path, None, serde_json::Value::Null).await;
        assert!(denied(answer.clone()), "the producer key may not {method} {path}: {answer:?}");
    }

    let app = Some("ABCTOLLSAPP");
    let (status, inbox) =
        call_as(&host, app, None, "GET", "/v1/inbox/C000123?channel=app", None, serde_json::Value::Null).await;
    assert_eq!(status, 200, "{inbox}");
    // The app backend mints a token for customer C000123's phone, living `seconds`.
    let mint = |seconds: u64| {
        let body = serde_json::json!({"seconds": seconds});
        let host = &host;
        async move {
            let (status, minted) =
                call_as(host, app, None, "POST", "/v1/inbox/C000123/tokens?channel=app", None, body).await;
            assert_eq!(status, 200, "{minted}");
            minted["token"].as_str().expect("a token").to_owned()
        }
    };
    // A live feed with the token in the query (browsers' EventSource cannot set headers).
    let feed = |token: String| {
        let url = format!("{}/v1/inbox/C000123/events?channel=app&token={token}", host.url);
        async move {
            let response = reqwest::Client::new().get(url).send().await.expect("events");
            assert_eq!(response.status().as_u16(), 200);
            response
        }
    };
    let token = mint(600).await;
    for (method, path, target) in [
        ("GET", "/v1/inbox/C000123?channel=operators", None),
        ("POST", "/v1/inbox/C000123/tokens?channel=operators", None),
        ("POST", "/", kinesis("PutRecords")),
        ("GET", "/v1/pipeline", None),
    ] {
        let answer = call_as(&host, app, None, method, path, target.as_deref(), put.clone()).await;
        assert!(denied(answer.clone()), "the app key may not {method} {path} {target:?}: {answer:?}");
    }

    // The phone: its recipient token, and no key.
    let (status, own) =
        call_as(&host, None, Some(&token), "GET", "/v1/inbox/C000123?channel=app", None, serde_json::Value::Null).await;
    assert_eq!((status, &own["recipient"]), (200, &serde_json::json!("C000123")), "{own}");
    for path in [
        "/v1/inbox/C000999?channel=app",
        "/v1/inbox/C000123?channel=operators",
        "/v1/pipeline",
        "/v1/inbox/C000123/tokens",
    ] {
        let method = if path.ends_with("tokens") { "POST" } else { "GET" };
        let answer = call_as(&host, None, Some(&token), method, path, None, serde_json::Value::Null).await;
        assert!(denied(answer.clone()), "the token may not {method} {path}: {answer:?}");
    }
    drop(feed(token.clone()).await);
    // A live feed ends when its token does.
    let feed = feed(mint(1).await).await;
    let ended = tokio::time::timeout(Duration::from_secs(30), feed.bytes()).await;
    assert!(ended.is_ok(), "the feed outlived its token");
    let forged = format!("{}x", token.trim_end_matches('A'));
    let answer =
        call_as(&host, None, Some(&forged), "GET", "/v1/inbox/C000123?channel=app", None, serde_json::Value::Null)
            .await;
    assert!(denied(answer.clone()), "a forged token: {answer:?}");

    let operator = Some("ABCTOLLSOPERATOR");
    let (status, streams) =
        call_as(&host, operator, None, "POST", "/", kinesis("ListStreams").as_deref(), serde_json::json!({})).await;
    assert!(status == 200 && streams["StreamNames"].as_array().is_some_and(|s| !s.is_empty()), "{streams}");
    let (status, _) = call_as(&host, operator, None, "GET", "/v1/pipeline", None, serde_json::Value::Null).await;
    assert_eq!(status, 200);
    let (status, _) =
        call_as(&host, operator, None, "GET", "/v1/inbox/C000123?channel=operators", None, serde_json::Value::Null)
            .await;
    assert_eq!(status, 200);
    let tags = serde_json::json!({"StreamName": "toll-lines", "Tags": {"owner": "operations"}});
    let (status, _) = call_as(&host, operator, None, "POST", "/", kinesis("AddTagsToStream").as_deref(), tags).await;
    assert_eq!(status, 200);
    // Unsigned: refused before any policy is looked at.
    let (status, _) = call_as(&host, None, None, "GET", "/v1/pipeline", None, serde_json::Value::Null).await;
    assert_eq!(status, 403);

    // The audit log has the control plane's calls and every refusal, and no data-plane call.
    let log = std::fs::read_to_string(host.host.pipeline.data_dir.join("audit.log")).expect("the audit log");
    let entries: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    let has = |who: &str, action: &str, resource: &str, result: &str| {
        entries
            .iter()
            .any(|e| e["who"] == who && e["action"] == action && e["resource"] == resource && e["result"] == result)
    };
    assert!(has("ABCTOLLSPRODUCER", "kinesis:DeleteStream", "stream/toll-lines", "denied"), "{log}");
    assert!(has("ABCTOLLSPRODUCER", "admin:RollbackPlugin", "stage/etl", "denied"), "{log}");
    assert!(has("ABCTOLLSAPP", "inbox:IssueToken", "inbox/app/C000123", "ok"), "{log}");
    assert!(has("ABCTOLLSAPP", "inbox:IssueToken", "inbox/operators/C000123", "denied"), "{log}");
    assert!(has("recipient-token:app/C000123", "inbox:Read", "inbox/app/C000999", "denied"), "{log}");
    assert!(has("ABCTOLLSOPERATOR", "kinesis:AddTagsToStream", "stream/toll-lines", "ok"), "{log}");
    assert!(!log.contains("PutRecords\",\"resource\":\"stream/toll-lines\",\"result\":\"ok"), "{log}");
}

/// Who reads a stage's (or a delivery's) first input shard, as a status says.
fn holder_in(status: &serde_json::Value, name: &str) -> Option<String> {
    let all = status["stages"].as_array()?.iter().chain(status["deliveries"].as_array()?.iter());
    let found = all.into_iter().find(|s| s["name"] == name)?;
    found["shard_holders"][0].as_str().filter(|h| !h.is_empty()).map(str::to_owned)
}

/// The stages and deliveries that run on one host at a time.
const ONE_HOST_AT_A_TIME: [&str; 7] =
    ["billing-sum", "billing-alert", "traffic-count", "traffic-alert", "toll-transactions", "toll-raw", "toll-errors"];

/// The showcase on three hosts sharing a NATS cluster, fed by the shipped agent:
/// the first host to start runs every stage that runs on one host at a time, and
/// is killed (SIGKILL) a third of the way through the day. The two left take its
/// work over within the lease timeout, and the day's billing messages, month
/// totals, traffic alerts and warehouse rows are exactly the oracle's: nothing
/// lost, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_on_a_nats_cluster_lose_one_mid_day_and_match_the_oracle() {
    use weir_tests::ChildHost;
    let cluster = weir_tests::nats::NatsCluster::start(3).await;
    let servers: Vec<String> = cluster.servers().iter().map(|s| format!("{s:?}")).collect();
    let storage =
        format!("\n[storage]\nbackend = \"nats\"\nservers = [{}]\nlease-timeout = \"5s\"\n", servers.join(", "));
    let dir = tempfile::tempdir().expect("tempdir");
    let top = dir.path().to_owned();
    let (_desk, hook) = operations_desk().await;
    let manifest = showcase_manifest(&top, "1s", &hook) + &storage;
    let logs = |hosts: &[&ChildHost]| hosts.iter().map(|h| h.logged()).collect::<Vec<_>>().join("\n----\n");
    // The first host runs everything that runs on one host at a time.
    let first = ChildHost::start(&top, "host-a", &manifest);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let name = first.name();
        let status = first.status().await;
        let holds_all = status
            .as_ref()
            .is_some_and(|s| ONE_HOST_AT_A_TIME.iter().all(|stage| name.is_some() && holder_in(s, stage) == name));
        if holds_all {
            break;
        }
        assert!(Instant::now() < deadline, "the first host did not take its stages: {status:?}\n{}", logs(&[&first]));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then this process's host, and a third.
    let host = TestHost::start_in(dir, &manifest).await.expect("start");
    let third = ChildHost::start(&top, "host-c", &manifest);
    for (customer, threshold) in weir_host::simulate::thresholds() {
        host.host.state.put("thresholds", &customer, threshold.as_bytes()).expect("threshold");
    }
    let out = top.join("out");
    // The day until 14:00: a notifier on the cluster reads each item from its leader,
    // and the whole day's results would take minutes on two cores shared by six processes.
    let day: Vec<_> =
        weir_host::simulate::generate_day(7, DAY).into_iter().filter(|l| l.time_ms < DAY + 14 * 60 * MINUTE).collect();
    weir_host::simulate::write_logs(&day, &out.join("stations")).expect("the station logs");
    let agent_dir = tempfile::tempdir().expect("tempdir");
    let agent = start_shipped_agent(agent_dir.path(), &out, &host.url);
    ingested_at_least(&host, day.len() / 3).await;
    let mut first = first;
    first.child.kill().expect("kill -9 the first host");
    let killed = first.name().expect("its name");
    ingested(&host, day.len()).await;
    agent.stop().await;
    // The two left run everything the first ran.
    let here = host.host.status();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, theirs) = (serde_json::to_value(host.host.status()).expect("JSON"), third.status().await);
        let moved = ONE_HOST_AT_A_TIME.iter().all(|stage| {
            let holder = holder_in(&status, stage).or_else(|| theirs.as_ref().and_then(|t| holder_in(t, stage)));
            holder.is_some_and(|h| h != killed)
        });
        if moved {
            break;
        }
        assert!(Instant::now() < deadline, "the stages did not move: {status}\n{}", logs(&[&third]));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(here);

    // Settled: every stage caught up, with the windows each aggregator closed, on
    // whichever host runs it, the same before and after reading what was produced.
    let watermarks = || async {
        let (status, theirs) = (serde_json::to_value(host.host.status()).expect("JSON"), third.status().await);
        let mark = |stage: &str| {
            let running = [Some(status.clone()), theirs.clone()].into_iter().flatten().find(|s| {
                let me = s["host"].as_str().map(str::to_owned);
                holder_in(s, stage).is_some() && holder_in(s, stage) == me
            });
            let found =
                running.as_ref().and_then(|s| s["stages"].as_array()?.iter().find(|st| st["name"] == stage).cloned());
            found.and_then(|st| st["windows"]["watermark_ms"].as_i64()).unwrap_or(i64::MIN)
        };
        (mark("billing-sum"), mark("traffic-count"))
    };
    // (A window the watermark passed fires a moment later, on the host running it,
    // and its alert a moment after that, on the host running the notifier: what
    // was produced is read until it is what the oracle says for those windows.)
    let deadline = Instant::now() + Duration::from_secs(120);
    let (got, expected) = loop {
        let (billing, traffic) = watermarks().await;
        if billing > i64::MIN && traffic > i64::MIN {
            caught_up(&host).await;
            let got = produced(&host);
            let after = watermarks().await;
            let windows = |(b, t): (i64, i64)| (b.div_euclid(10 * MINUTE), t.div_euclid(30 * MINUTE));
            let expected = oracle_until(&day, billing, traffic);
            let same =
                got.billing == expected.billing && got.totals == expected.totals && got.traffic == expected.traffic;
            if windows((billing, traffic)) == windows(after) && (same || Instant::now() >= deadline) {
                break (got, expected);
            }
        }
        assert!(Instant::now() < deadline, "the windows did not settle\n{}", logs(&[&third]));
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(expected.billing.len() > 5 && !expected.traffic.is_empty(), "the day has something to find");
    assert_eq!(got.billing, expected.billing, "billing messages");
    assert_eq!(got.totals, expected.totals, "every toll of a closed window counted once");
    assert_eq!(got.traffic, expected.traffic, "traffic alerts");
    assert!(got.corrections.is_empty(), "nothing to correct");
    // The warehouse: one row per well-formed line.
    let warehouse = out.join("warehouse.db");
    let rows = || -> i64 {
        let Ok(db) = rusqlite::Connection::open(&warehouse) else { return 0 };
        db.query_row("SELECT count(*) FROM toll_transactions", [], |r| r.get(0)).unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while rows() < expected.rows.len() as i64 {
        assert!(Instant::now() < deadline, "{} of {} rows\n{}", rows(), expected.rows.len(), logs(&[&third]));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rows(), expected.rows.len() as i64, "one row per well-formed line, none twice");
    eprintln!(
        "{} lines; {} billing messages, {} traffic alerts and {} rows, as the oracle says, after host {killed} was killed",
        day.len(),
        got.billing.len(),
        got.traffic.len(),
        rows()
    );
}
