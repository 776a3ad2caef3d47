//! ABC Tolls requirement 1 end to end, with the shipped fragment
//! `manifests/abc-tolls/ingest.toml` and agent config
//! `manifests/abc-tolls/agent.toml`: a station's log is followed by the agent
//! (and rotated on the way), every well-formed line becomes one row of
//! `toll_transactions` (SQLite, then PostgreSQL), every malformed line is under
//! the error prefix with the field at fault, `toll-etl` runs once per line, and
//! a line written is queryable within the buffer interval plus a small margin.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_host::agent::{Agent, AgentConfig};
use weir_tests::{TestHost, files, postgres, postgres_database, root};

const BUFFER_INTERVAL: Duration = Duration::from_secs(1);

/// The shipped fragment and agent config, pointed at `dir` and at a 1 s buffer interval.
fn shipped(dir: &Path, warehouse: Option<&str>) -> (String, String) {
    let out = dir.display().to_string();
    let plugins = root().join("plugins").display().to_string();
    let mut fragment = std::fs::read_to_string(root().join("manifests/abc-tolls/ingest.toml"))
        .expect("the fragment")
        .replace("../../out/abc-tolls", &out)
        .replace("../../plugins", &plugins);
    let interval = "buffer-interval = \"60s\"";
    assert!(fragment.contains(interval), "the fragment's interval changed; update this test");
    fragment = fragment.replace(interval, "buffer-interval = \"1s\"");
    if let Some(warehouse) = warehouse {
        let sqlite = format!("database = \"{out}/warehouse.db\"");
        assert!(fragment.contains(&sqlite));
        fragment = fragment.replace(&sqlite, warehouse);
    }
    let agent = std::fs::read_to_string(root().join("manifests/abc-tolls/agent.toml"))
        .expect("the agent config")
        .replace("../../out/abc-tolls", &out);
    (fragment, agent)
}

fn toll_line(i: usize) -> String {
    // Every 25th line charges an impossible vehicle class.
    let class = if i % 25 == 24 { 0 } else { 1 + i % 6 };
    format!(
        "T0042-{i:06},2026-11-26T09:{:02}:{:02}.250Z,42,{},TAG{i:07},C{:06},{class},{}",
        i / 60 % 60,
        i % 60,
        1 + i % 4,
        i % 40,
        150 + i % 300
    )
}

fn append(path: &Path, lines: std::ops::Range<usize>) {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("open the log");
    for i in lines {
        file.write_all(format!("{}\n", toll_line(i)).as_bytes()).expect("write");
    }
}

/// Runs requirement 1 against a warehouse; `rows` reads the table's transaction ids.
async fn requirement_1<F, Fut>(warehouse: Option<&str>, rows: F)
where
    F: Fn(std::path::PathBuf) -> Fut,
    Fut: Future<Output = Vec<String>>,
{
    let dir = tempfile::tempdir().expect("tempdir");
    let (fragment, agent_config) = shipped(dir.path(), warehouse);
    std::fs::write(dir.path().join("ingest.toml"), fragment).expect("fragment");
    let manifest = format!(
        "[pipeline]\nname = \"abc-tolls\"\ndata-dir = \"data\"\ninclude = [\"{}/ingest.toml\"]\n",
        dir.path().display()
    );
    let mut host = TestHost::start(&manifest).await.expect("start weir");
    let agent_path = dir.path().join("agent.toml");
    std::fs::write(&agent_path, agent_config.replace("http://127.0.0.1:7070", &host.url)).expect("agent config");
    let stations = dir.path().join("stations");
    std::fs::create_dir_all(&stations).expect("stations");
    let log = stations.join("station-42.log");
    append(&log, 0..300);
    let agent = Agent::start(AgentConfig::load(&agent_path).expect("the shipped agent config")).expect("agent");

    // Freshness: the first rows are queryable within the buffer interval, the
    // agent's batch age and a margin for a loaded machine.
    let written = Instant::now();
    host.wait_until("the first rows", |s| s.deliveries[0].rows_loaded >= 288).await;
    let fresh = written.elapsed();
    assert!(fresh < BUFFER_INTERVAL + Duration::from_secs(1) + Duration::from_secs(4), "first rows after {fresh:?}");

    // The station's log rotates (rename-and-create) while lines keep coming.
    append(&log, 300..400);
    std::fs::rename(&log, stations.join("station-42.log.1")).expect("rotate");
    append(&log, 400..600);
    host.wait_until("every row", |s| s.deliveries[0].rows_loaded == 576).await;
    agent.stop().await;
    host.stop().await;

    let mut ids = rows(dir.path().to_owned()).await;
    ids.sort();
    let expected: Vec<String> = (0..600).filter(|i| i % 25 != 24).map(|i| toll_line(i)[..12].to_owned()).collect();
    assert_eq!(ids, expected, "every well-formed line is one row, once");

    let errors: Vec<Value> = files(&dir.path().join("lake/errors/processing-failed"))
        .iter()
        .flat_map(|f| weir_tests::lines(f))
        .map(|l| serde_json::from_str(&l).expect("JSON"))
        .collect();
    let mut malformed: Vec<String> = errors
        .iter()
        .map(|e| {
            assert!(e["reason"].as_str().is_some_and(|m| m.contains("vehicle_class")), "{e}");
            assert_eq!(e["error_code"], "processing-failed", "{e}");
            e["data"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    malformed.sort();
    let expected: Vec<String> = (0..600).filter(|i| i % 25 == 24).map(toll_line).collect();
    assert_eq!(malformed, expected, "every malformed line is under the error prefix with its reason");
    let raw: usize = files(&dir.path().join("lake/raw")).iter().map(|f| weir_tests::lines(f).len()).sum();
    assert_eq!(raw, 600, "the raw lines are archived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn station_logs_reach_the_sqlite_warehouse_through_the_agent() {
    requirement_1(None, |dir| async move {
        let db = rusqlite::Connection::open(dir.join("warehouse.db")).expect("open");
        let mut query = db.prepare("SELECT transaction_id FROM toll_transactions").expect("query");
        query.query_map([], |r| r.get(0)).expect("rows").map(|r| r.expect("row")).collect()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn station_logs_reach_the_postgres_warehouse_through_the_agent() {
    let url = postgres_database().await;
    let table = std::fs::read_to_string(root().join("manifests/abc-tolls/ingest.toml"))
        .expect("fragment")
        .lines()
        .skip_while(|l| !l.contains("CREATE TABLE"))
        .map(|l| l.trim_start_matches('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let pg = postgres(&url).await;
    pg.batch_execute(&table).await.expect("the fragment's CREATE TABLE");
    let warehouse = format!("kind = \"postgres\"\ndatabase = \"{url}\"");
    requirement_1(Some(&warehouse), |_| {
        let pg = &pg;
        async move {
            let rows = pg.query("SELECT transaction_id FROM toll_transactions", &[]).await.expect("select");
            rows.iter().map(|r| r.get(0)).collect()
        }
    })
    .await;
}

/// The showcase parses each line once: one stage runs `toll-etl`, and what needs
/// rows (the warehouse, billing, traffic) reads that stage's output.
#[test]
fn the_showcase_runs_toll_etl_once_per_line() {
    let pipeline = weir_host::manifest::load(&root().join("manifests/abc-tolls.toml")).expect("the showcase");
    let stages = pipeline.stages.iter().filter(|s| s.plugin.info.name.as_str() == "toll-etl").count();
    let transforms = pipeline
        .deliveries
        .iter()
        .filter(|d| d.transform.as_ref().is_some_and(|t| t.plugin.info.name.as_str() == "toll-etl"))
        .count();
    assert_eq!((stages, transforms), (1, 0), "toll-etl runs in one stage and nowhere else");
}
