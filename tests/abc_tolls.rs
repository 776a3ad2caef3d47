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
use weir_host::pipeline::Producer;
use weir_host::simulate::OperationsDesk;
use weir_host::stream::NewRecord;
use weir_tests::{TestHost, inbox_subjects, root};

/// The shipped manifest and fragments in `dir`, writing under `dir`, with the
/// delivery's buffer interval and the operations webhook's URL replaced.
fn shipped(dir: &std::path::Path, buffer_interval: &str, operations_hook: &str) -> String {
    let out = dir.join("out").display().to_string();
    let plugins = root().join("plugins").display().to_string();
    let fix = |text: String| {
        text.replace("../../out/abc-tolls", &out)
            .replace("../out/abc-tolls", &out)
            .replace("../../plugins", &plugins)
            .replace("buffer-interval = \"60s\"", &format!("buffer-interval = \"{buffer_interval}\""))
            .replace("http://127.0.0.1:7071/hooks/weir", operations_hook)
    };
    std::fs::create_dir_all(dir.join("abc-tolls")).expect("mkdir");
    for fragment in ["ingest.toml", "billing.toml", "traffic.toml"] {
        let text = std::fs::read_to_string(root().join("manifests/abc-tolls").join(fragment)).expect("fragment");
        std::fs::write(dir.join("abc-tolls").join(fragment), fix(text)).expect("write fragment");
    }
    std::fs::copy(root().join("manifests/abc-tolls/station_minimums.csv"), dir.join("abc-tolls/station_minimums.csv"))
        .expect("minimums");
    let manifest = std::fs::read_to_string(root().join("manifests/abc-tolls.toml")).expect("manifest");
    fix(manifest).replace("listen = \"127.0.0.1:7070\"", "listen = \"127.0.0.1:0\"")
}

/// The stand-in operations tool on a free loopback port, and its webhook URL.
async fn operations_desk() -> (Arc<OperationsDesk>, String) {
    let desk = OperationsDesk::new("abc-tolls-showcase");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hooks/weir", listener.local_addr().expect("address"));
    let router = desk.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (desk, url)
}

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
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_showcase_fills_the_warehouse_and_raises_billing_and_traffic_alerts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_desk, hook) = operations_desk().await;
    let manifest = shipped(dir.path(), "1s", &hook);
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
    host.wait_until("every stage to catch up", |s| {
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
            })
            .collect();
        assert!(host.host.put("toll-lines", records, Producer::Native).expect("put").iter().all(Result::is_ok));
    }
}

/// What the day must produce, from its lines alone: transaction ids, billing
/// crossings (customer, window start) and traffic alerts (station, window start, count, minimum).
struct Oracle {
    rows: BTreeSet<String>,
    billing: BTreeSet<(String, String)>,
    traffic: BTreeSet<(String, String, u64, u64)>,
}

fn oracle(lines: &[weir_host::simulate::TollLine]) -> Oracle {
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
    let last = lines.iter().map(|l| l.time_ms).max().unwrap_or(DAY);
    // A window closes once the watermark (the latest time less the out-of-orderness) passes its end.
    let billing_closed = |start: i64| start + 10 * MINUTE <= last - 5_000;
    let traffic_closed = |start: i64| start + 30 * MINUTE <= last - MINUTE;
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
    Oracle { rows, billing, traffic }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_day_matches_an_independent_oracle_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (desk, hook) = operations_desk().await;
    let manifest = shipped(dir.path(), "60s", &hook); // as shipped: the day's clock runs the buffer
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
