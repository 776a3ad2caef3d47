//! `weir simulate`: a seeded day of ABC Tolls traffic. Twelve stations with
//! weekday and time-of-day profiles (the same curve `station_minimums.csv` was
//! made from: a minimum is a third of the expected traffic), two thousand
//! customers with monthly thresholds (a few low enough to be crossed in a day),
//! occasional malformed lines, one station that goes silent for two hours and
//! one that runs thin for an hour. The same seed gives the same day.
//!
//! `--run <manifest>` runs the pipeline in this process on the generated day
//! (thresholds set in its state table first) and prints a report;
//! `--logs <dir>` writes one log file per station for the agent instead.
//! A webhook channel on a loopback URL is answered by [`OperationsDesk`], the
//! simulation's stand-in for the operations team's incident tool.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::pipeline::Host;
use crate::stream::NewRecord;

/// Stations of the showcase, numbered from 1.
pub const STATIONS: u32 = 12;
/// Customers, `C000001` and up.
pub const CUSTOMERS: u32 = 2000;
/// The station that goes silent, and when (hours, UTC).
pub const SILENT: (u32, f64, f64) = (5, 10.0, 12.0);
/// The station that runs at a fifth of its traffic, and when.
pub const THIN: (u32, f64, f64) = (9, 16.0, 17.0);
/// Tolls by vehicle class 1 to 6, in cents.
const TOLLS: [u32; 6] = [150, 275, 410, 560, 760, 990];
/// One line in this many is malformed.
const MALFORMED_ONE_IN: u64 = 800;

/// Expected vehicles at `station` in the half hour starting at `hour` on ISO `weekday` (1 = Monday).
pub fn expected_vehicles(station: u32, weekday: u32, hour: f64) -> f64 {
    let scale = 0.6 + 0.1 * f64::from(station % 7);
    let curve = 0.15
        + (-(hour - 8.0).powi(2) / 4.0).exp()
        + 0.9 * (-(hour - 17.5).powi(2) / 5.0).exp()
        + 0.4 * (-(hour - 13.0).powi(2) / 10.0).exp();
    let weekend = if weekday >= 6 { 0.6 } else { 1.0 };
    120.0 * scale * curve * weekend
}

/// A customer's monthly threshold in cents: $500 for most, $15 for one in a hundred.
pub fn threshold_cents(customer: u32) -> u64 {
    if customer.is_multiple_of(100) { 1500 } else { 50_000 }
}

/// The customer id of number `n`.
pub fn customer_id(n: u32) -> String {
    format!("C{n:06}")
}

/// Every customer's id and alert threshold (cents, as text): the `thresholds` table's items.
pub fn thresholds() -> impl Iterator<Item = (String, String)> {
    (1..=CUSTOMERS).map(|customer| (customer_id(customer), threshold_cents(customer).to_string()))
}

/// A deterministic xorshift generator.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One generated toll line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TollLine {
    /// Milliseconds since the epoch.
    pub time_ms: i64,
    /// The station that read it.
    pub station: u32,
    /// The line as the station logs it.
    pub text: String,
}

/// The lines of one day (`day_start_ms` is its midnight UTC), in time order.
pub fn generate_day(seed: u64, day_start_ms: i64) -> Vec<TollLine> {
    let mut random = Random(seed.max(1) ^ 0x9e37_79b9_7f4a_7c15);
    let weekday = ((day_start_ms.div_euclid(86_400_000) + 3).rem_euclid(7) + 1) as u32;
    let mut lines = Vec::new();
    let mut sequence = BTreeMap::new();
    let date: String = crate::time::format_ms(day_start_ms).chars().take(10).filter(|c| *c != '-').collect();
    for slot in 0..48 {
        let hour = f64::from(slot) / 2.0;
        for station in 1..=STATIONS {
            let mut expected = expected_vehicles(station, weekday, hour) * (0.85 + 0.3 * random.unit());
            if station == SILENT.0 && (SILENT.1..SILENT.2).contains(&hour) {
                expected = 0.0;
            }
            if station == THIN.0 && (THIN.1..THIN.2).contains(&hour) {
                expected /= 5.0;
            }
            for _ in 0..expected.round() as u32 {
                let time_ms = day_start_ms + i64::from(slot) * 1_800_000 + random.below(1_800_000) as i64;
                // Most trips are a few regular customers' commutes: a skewed pick.
                let customer = 1 + (random.unit().powi(2) * f64::from(CUSTOMERS)) as u32;
                let class = 1 + random.below(6) as usize;
                let n = sequence.entry(station).or_insert(0u32);
                *n += 1;
                // Unique across days too, as a real transaction id is: `T0017-20261125-000042`.
                let text = format!(
                    "T{station:04}-{date}-{n:06},{},{station},{},TAG{customer:07},{},{class},{}",
                    crate::time::format_ms(time_ms),
                    1 + random.below(4),
                    customer_id(customer),
                    TOLLS[class - 1]
                );
                lines.push(TollLine { time_ms, station, text });
            }
        }
    }
    lines.sort_by_key(|l| l.time_ms);
    for line in &mut lines {
        if random.below(MALFORMED_ONE_IN) == 0 {
            // A garbled write: the fields run together.
            line.text = line.text.replace(',', ";");
        }
    }
    lines
}

/// Writes the day as one log file per station (`station-07.log`), for the agent.
pub fn write_logs(lines: &[TollLine], dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut files = BTreeMap::new();
    for line in lines {
        let file = match files.entry(line.station) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let path = dir.join(format!("station-{:02}.log", line.station));
                e.insert(std::io::BufWriter::new(
                    std::fs::File::create(&path).with_context(|| format!("cannot write {}", path.display()))?,
                ))
            }
        };
        writeln!(file, "{}", line.text)?;
    }
    for (_, mut file) in files {
        file.flush()?;
    }
    Ok(())
}

/// The operations team's incident tool, stood in for: it takes a webhook
/// channel's deliveries, refuses those whose signature does not match the
/// channel's secret, and keeps each delivery once by its `x-weir-delivery` id
/// (as a receiver must: a delivery can come again after a timeout or a restart).
pub struct OperationsDesk {
    secret: String,
    received: Mutex<BTreeMap<String, serde_json::Value>>,
    refused: AtomicU64,
}

impl OperationsDesk {
    /// A desk checking signatures with `secret`.
    pub fn new(secret: &str) -> Arc<OperationsDesk> {
        Arc::new(OperationsDesk { secret: secret.to_owned(), received: Mutex::default(), refused: AtomicU64::new(0) })
    }

    /// Serves the desk at every path.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        let desk = self.clone();
        axum::Router::new().fallback(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
            let desk = desk.clone();
            async move { desk.take(&headers, &body) }
        })
    }

    fn take(&self, headers: &axum::http::HeaderMap, body: &[u8]) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let expected = crate::notify::signature(&self.secret, body);
        let (Ok(message), false) = (serde_json::from_slice(body), header("x-weir-delivery").is_empty()) else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return StatusCode::BAD_REQUEST;
        };
        if header("x-weir-signature") != expected {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return StatusCode::UNAUTHORIZED;
        }
        self.received.lock().unwrap_or_else(|p| p.into_inner()).insert(header("x-weir-delivery").to_owned(), message);
        StatusCode::NO_CONTENT
    }

    /// How many deliveries were taken.
    pub fn count(&self) -> usize {
        self.received.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The deliveries taken, each once, by delivery id.
    pub fn received(&self) -> BTreeMap<String, serde_json::Value> {
        self.received.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Requests refused for a missing or wrong signature or a malformed body.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Serves the desk on `url`'s loopback address, on the host's runtime, for
    /// as long as the process lasts.
    pub fn serve(self: &Arc<Self>, url: &str) -> anyhow::Result<()> {
        let addr = loopback_addr(url).with_context(|| format!("{url} is not a loopback http:// URL"))?;
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot listen on {addr} for the stand-in operations tool"))?;
        listener.set_nonblocking(true)?;
        let router = self.router();
        crate::io::spawn(async move {
            let served = match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => axum::serve(listener, router).await,
                Err(e) => Err(e),
            };
            if let Err(e) = served {
                tracing::error!(error = %e, "the stand-in operations tool stopped serving");
            }
        })?;
        Ok(())
    }
}

/// The address of an `http://` URL on loopback (`127.0.0.1`, `[::1]`, `localhost`).
fn loopback_addr(url: &str) -> Option<std::net::SocketAddr> {
    let url: hyper::Uri = url.parse().ok().filter(|u: &hyper::Uri| u.scheme_str() == Some("http"))?;
    let ip: std::net::IpAddr = match url.host()? {
        "localhost" => std::net::Ipv4Addr::LOCALHOST.into(),
        other => other.trim_matches(['[', ']']).parse().ok()?,
    };
    ip.is_loopback().then_some(std::net::SocketAddr::new(ip, url.port_u16().unwrap_or(80)))
}

/// The file `weir simulate --run` leaves in a pipeline's data-dir: the data there is a simulation's.
const SIMULATION_MARK: &str = "made-by-weir-simulate";

/// Clears what an earlier `weir simulate --run` of `pipeline` left (its data-dir,
/// local lakes and SQLite warehouses), so that a rerun reports the same day
/// again instead of adding a second copy. A data-dir that a simulation did not
/// make is refused, untouched: it may be a real pipeline's. Remote lakes and
/// PostgreSQL warehouses are not cleared (the report says where the rows went).
pub fn start_afresh(pipeline: &crate::manifest::Pipeline) -> anyhow::Result<()> {
    let data = &pipeline.data_dir;
    let mark = data.join(SIMULATION_MARK);
    let empty = std::fs::read_dir(data).map_or(true, |mut d| d.next().is_none());
    anyhow::ensure!(
        empty || mark.is_file(),
        "{} holds data that weir simulate did not make (a running pipeline's?): a simulated day starts from an \
         empty data-dir, so give the manifest another data-dir, or remove that folder yourself",
        data.display()
    );
    let mut clear = vec![data.clone()];
    for delivery in &pipeline.deliveries {
        if let crate::lake::LakeSpec::Local(dir) = &delivery.lake {
            clear.push(dir.clone());
        }
        if let Some(crate::warehouse::Database::Sqlite(db)) = delivery.warehouse.as_ref().map(|w| &w.database) {
            let name = db.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            for suffix in ["", "-wal", "-shm"] {
                clear.push(db.with_file_name(format!("{name}{suffix}")));
            }
        }
    }
    for path in clear {
        let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow::anyhow!("cannot clear {} for a fresh day: {e}", path.display())),
        }
    }
    std::fs::create_dir_all(data).with_context(|| format!("cannot create {}", data.display()))?;
    std::fs::write(&mark, "the data here is a simulated day's; weir simulate --run clears it\n")
        .with_context(|| format!("cannot write {}", mark.display()))
}

/// What a run of the showcase produced, for the report.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Lines generated and put.
    pub lines: usize,
    /// Rows loaded into the warehouse.
    pub rows_loaded: u64,
    /// Records set aside with their reason: the stages' dead letters, the deliveries' failed records.
    pub set_aside: u64,
    /// Records later than their window's allowed lateness, set aside with the reason.
    pub late: u64,
    /// Window results revised by records within the allowed lateness.
    pub revisions: u64,
    /// Records not stored again because their stream held their id.
    pub duplicates: u64,
    /// Billing messages sent.
    pub billing_messages: u64,
    /// Traffic alerts raised.
    pub traffic_alerts: u64,
    /// Webhook deliveries taken by the stand-in operations tool, by channel and URL.
    pub webhooks: Vec<(String, String, usize)>,
    /// Where the time went, phase by phase, in order.
    pub timings: Vec<(String, Duration)>,
}

/// Thresholds per write: a pipeline whose state is on a cluster changes at most
/// 1,000 values at once.
const THRESHOLDS_PER_WRITE: usize = 500;

/// Sends `lines` to a running weir as the agent does: the customers' thresholds
/// through the state table API, then the lines with `PutRecords` into
/// `toll-lines`, each station a producer of its own, refused records sent again
/// after a growing wait. `progress` sees the share sent. Returns how many lines
/// weir refused for good.
pub async fn send_day(
    client: crate::client::Client,
    lines: &[TollLine],
    mut progress: impl FnMut(f64),
) -> anyhow::Result<u64> {
    use axum::http::{HeaderMap, HeaderValue, Method};
    let all: Vec<(String, String)> = thresholds().collect();
    for chunk in all.chunks(THRESHOLDS_PER_WRITE) {
        let items: serde_json::Map<String, serde_json::Value> =
            chunk.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
        let body = serde_json::json!({ "items": items }).to_string();
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        client.native_bytes(Method::POST, "/v1/tables/thresholds/items", headers, body.into()).await?;
    }
    let counters = Arc::new(crate::agent::Counters::default());
    let destination = crate::agent::Destination::Stream("toll-lines".into());
    let backoff = (Duration::from_millis(50), Duration::from_secs(5));
    let sender = crate::agent::Sender::to(client, destination, backoff, counters.clone());
    let (_running, mut stop) = tokio::sync::watch::channel(false);
    let mut sent = 0usize;
    for chunk in lines.chunks(crate::api::MAX_RECORDS_PER_PUT) {
        let records: Vec<crate::agent::Outgoing> = chunk
            .iter()
            .map(|l| crate::agent::Outgoing {
                data: l.text.clone().into_bytes(),
                key: format!("station-{}", l.station),
                source: Some(format!("station-{}", l.station).into()),
            })
            .collect();
        sender.send(&records, &mut stop).await?;
        sent += chunk.len();
        progress(sent as f64 / lines.len().max(1) as f64);
    }
    progress(1.0);
    Ok(counters.snapshot().records_refused)
}

/// Runs `host` (the ABC Tolls pipeline) on `lines`: thresholds first, then the
/// lines into `toll-lines`, then waits until every stage has processed them and
/// the deliveries have flushed (the host is drained). `progress` sees the share done.
pub fn run_day(host: &Arc<Host>, lines: &[TollLine], mut progress: impl FnMut(f64)) -> anyhow::Result<Report> {
    let mut timings = Vec::new();
    let mut phase = Instant::now();
    let mut lap = |name: &str, timings: &mut Vec<(String, Duration)>| {
        timings.push((name.to_owned(), phase.elapsed()));
        phase = Instant::now();
    };
    if host.state.tables().any(|t| t == "thresholds") {
        let items: Vec<(String, String)> = thresholds().collect();
        for chunk in items.chunks(THRESHOLDS_PER_WRITE) {
            host.state.put_many("thresholds", chunk.iter().map(|(k, v)| (k.as_str(), v.as_bytes())))?;
        }
    }
    lap("thresholds", &mut timings);
    // Webhooks on loopback go to the stand-in operations tool.
    let mut desks = Vec::new();
    for channel in &host.pipeline.channels {
        if let crate::notify::ChannelKind::Webhook(spec) = &channel.kind
            && loopback_addr(&spec.url).is_some()
        {
            let desk = OperationsDesk::new(&spec.secret);
            desk.serve(&spec.url)?;
            desks.push((channel.name.clone(), spec.url.clone(), desk));
        }
    }
    let sent_before = host.channels.sent();
    let ingest_started = Instant::now();
    for (i, chunk) in lines.chunks(500).enumerate() {
        let records: Vec<NewRecord> = chunk
            .iter()
            .map(|l| NewRecord {
                // Each station is a producer of its own, as its agent is.
                source: Some(format!("station-{}", l.station).into()),
                key: format!("station-{}", l.station),
                event_time_ms: Some(l.time_ms),
                data: bytes::Bytes::from(l.text.clone()),
                explicit_hash_key: None,
                attributes: Vec::new(),
            })
            .collect();
        let mut pending = records;
        // A full stream is backpressure: wait and put the rest.
        while !pending.is_empty() {
            let results = host.put("toll-lines", pending.clone(), crate::pipeline::Producer::Native)?;
            pending = pending.into_iter().zip(results).filter(|(_, r)| r.is_err()).map(|(rec, _)| rec).collect();
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        progress(((i + 1) * 500).min(lines.len()) as f64 / lines.len().max(1) as f64 * 0.8);
    }
    lap("ingest (lines acknowledged)", &mut timings);
    // Every stage has caught up when none lags behind its input (deliveries flush at the drain).
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut caught_up: BTreeMap<String, Duration> = BTreeMap::new();
    let mut catch_up = || -> anyhow::Result<()> {
        loop {
            let consumers = host.consumer_lags();
            let stage = |name: &str| host.pipeline.stages.iter().any(|s| s.name.as_str() == name);
            for c in consumers.iter().filter(|c| stage(&c.consumer)) {
                let lags = consumers.iter().filter(|o| o.consumer == c.consumer).any(|o| o.lag_records > 0);
                if !lags {
                    caught_up.entry(c.consumer.clone()).or_insert_with(|| ingest_started.elapsed());
                } else {
                    caught_up.remove(&c.consumer);
                }
            }
            if consumers.iter().filter(|c| stage(&c.consumer)).all(|c| c.lag_records == 0) {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "the pipeline did not catch up within 5 minutes");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    catch_up()?;
    // The day is all in: its windows close now, not after the wall-clock waits of a live stream.
    host.end_input(deadline.saturating_duration_since(Instant::now())).map_err(anyhow::Error::msg)?;
    catch_up()?;
    lap("stages caught up after ingest", &mut timings);
    progress(0.9);
    let sent = host.channels.sent();
    let new = |channel: &str| sent.get(channel).copied().unwrap_or(0) - sent_before.get(channel).copied().unwrap_or(0);
    // The webhooks go out on their own thread: give them until the deadline to arrive.
    while desks.iter().any(|(name, _, desk)| (desk.count() as u64) < new(name)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    lap("webhooks delivered", &mut timings);
    host.drain();
    lap("drain (deliveries flushed, rows loaded)", &mut timings);
    progress(1.0);
    for (stage, at) in caught_up {
        timings.push((format!("  stage {stage} done, from the first put"), at));
    }
    let status = host.status();
    Ok(Report {
        lines: lines.len(),
        rows_loaded: status.deliveries.iter().map(|d| d.rows_loaded).sum(),
        set_aside: status.stages.iter().map(|s| s.dead_lettered).sum::<u64>()
            + status.deliveries.iter().map(|d| d.records_failed).sum::<u64>(),
        late: status.stages.iter().map(|s| s.late).sum(),
        revisions: status.stages.iter().map(|s| s.revisions).sum(),
        duplicates: status.duplicates.values().sum(),
        billing_messages: new("app"),
        traffic_alerts: new("operators"),
        webhooks: desks.into_iter().map(|(name, url, desk)| (name, url, desk.count())).collect(),
        timings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-26T00:00:00Z, a Thursday.
    const DAY: i64 = 1_795_651_200_000;

    #[test]
    fn only_loopback_webhooks_get_the_stand_in() {
        let addr = |url: &str| loopback_addr(url).map(|a| a.to_string());
        assert_eq!(addr("http://127.0.0.1:7071/hooks/weir").as_deref(), Some("127.0.0.1:7071"));
        assert_eq!(addr("http://[::1]:7071/").as_deref(), Some("[::1]:7071"));
        assert_eq!(addr("http://localhost/x").as_deref(), Some("127.0.0.1:80"));
        assert_eq!(addr("http://10.0.0.5:7071/"), None);
        assert_eq!(addr("https://127.0.0.1:7071/"), None);
    }

    #[test]
    fn the_operations_desk_takes_signed_deliveries_once_and_refuses_the_rest() {
        use axum::http::{HeaderMap, HeaderValue, StatusCode};
        let desk = OperationsDesk::new("s3cret");
        let body = br#"{"subject":"Station 17 low"}"#;
        let headers = |id: &str, signature: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-weir-delivery", HeaderValue::from_str(id).expect("id"));
            h.insert("x-weir-signature", HeaderValue::from_str(signature).expect("signature"));
            h
        };
        let signed = crate::notify::signature("s3cret", body);
        assert_eq!(desk.take(&headers("d1", &signed), body), StatusCode::NO_CONTENT);
        assert_eq!(desk.take(&headers("d1", &signed), body), StatusCode::NO_CONTENT, "a redelivery is taken again");
        assert_eq!(desk.take(&headers("d2", "sha256=00"), body), StatusCode::UNAUTHORIZED);
        let other_secret = crate::notify::signature("other", body);
        assert_eq!(desk.take(&headers("d3", &other_secret), body), StatusCode::UNAUTHORIZED);
        assert_eq!(desk.take(&headers("d4", &signed), b"not json"), StatusCode::BAD_REQUEST);
        assert_eq!((desk.count(), desk.refused()), (1, 3), "d1 kept once; d2, d3 and d4 refused");
    }

    #[test]
    fn a_seed_gives_the_same_day_with_its_silent_station_and_malformed_lines() {
        let day = generate_day(42, DAY);
        assert_eq!(day, generate_day(42, DAY));
        assert_ne!(day, generate_day(7, DAY));
        assert!(day.windows(2).all(|w| w[0].time_ms <= w[1].time_ms), "in time order");
        let hour = |l: &TollLine| (l.time_ms - DAY) as f64 / 3_600_000.0;
        assert!(!day.iter().any(|l| l.station == SILENT.0 && (SILENT.1..SILENT.2).contains(&hour(l))));
        let malformed = day.iter().filter(|l| !l.text.contains(',')).count();
        assert!(malformed > 0 && malformed < day.len() / 100, "{malformed} of {}", day.len());
        let line = &day[day.len() / 2].text;
        assert_eq!(line.split(',').count(), 8, "{line}");
    }

    #[test]
    fn the_shipped_minimums_are_a_third_of_the_simulated_profile() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/abc-tolls/station_minimums.csv");
        let csv = std::fs::read_to_string(path).expect("station_minimums.csv");
        let mut rows = 0;
        for line in csv.lines().skip(1) {
            let f: Vec<f64> = line.split(',').map(|v| v.parse().expect("a number")).collect();
            let expected = expected_vehicles(f[0] as u32, f[1] as u32, f[2] / 2.0);
            assert_eq!(f[3], (expected / 3.0).floor(), "{line}");
            rows += 1;
        }
        assert_eq!(rows, STATIONS as usize * 7 * 48);
    }
}
