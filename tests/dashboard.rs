//! The live dashboard in a real browser (headless Chromium through WebDriver),
//! on the ABC Tolls showcase as shipped, with its access keys: the page asks
//! for a key and refuses one that may not describe the pipeline; signed in as
//! the operator it draws the manifest's graph, its counters move as a day of
//! toll lines is put, the latest notifications appear, and its buttons roll a
//! swapped plugin back and redrive the dead letters. A screenshot is kept in
//! `target/test-artifacts/dashboard.png` (and the page scrolled down in `dashboard-below.png`).

use std::time::Duration;

use serde_json::json;
use weir_tests::browser::{Browser, chromium, eventually};
use weir_tests::{TestHost, artifacts, call, operations_desk, root, showcase_manifest};

/// 2026-11-25, a Wednesday, midnight UTC.
const DAY: i64 = 1_795_564_800_000;
const OPERATOR: (&str, &str) = ("ABCTOLLSOPERATOR", "operator-secret");
const APP: (&str, &str) = ("ABCTOLLSAPP", "app-secret");
const PRODUCER: (&str, &str) = ("ABCTOLLSPRODUCER", "producer-secret");
const WAIT: Duration = Duration::from_secs(60);

/// The showcase with its three keys' secrets in the manifest, and the
/// customers' thresholds set.
async fn showcase() -> TestHost {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, hook) = operations_desk().await;
    let mut manifest = showcase_manifest(dir.path(), "1s", &hook);
    for (variable, (_, secret)) in [
        ("ABC_TOLLS_OPERATOR_SECRET", OPERATOR),
        ("ABC_TOLLS_APP_SECRET", APP),
        ("ABC_TOLLS_PRODUCER_SECRET", PRODUCER),
    ] {
        manifest = manifest.replace(&format!("secret-env = \"{variable}\""), &format!("secret = \"{secret}\""));
    }
    let host = TestHost::start_in(dir, &manifest).await.expect("the showcase starts");
    for (customer, threshold) in weir_host::simulate::thresholds() {
        host.host.state.put("thresholds", &customer, threshold.as_bytes()).expect("a threshold");
    }
    host
}

/// Puts `lines` as the stations' agents do (each station a producer), signed with the producers' key.
async fn put(host: &TestHost, lines: &[weir_host::simulate::TollLine]) {
    for chunk in lines.chunks(500) {
        let records: Vec<_> = chunk
            .iter()
            .map(|l| {
                json!({"partition_key": format!("station-{}", l.station), "data": l.text,
                       "event_time": l.time_ms, "source": format!("station-{}", l.station)})
            })
            .collect();
        let body = json!({"records": records}).to_string().into_bytes();
        let headers = [("content-type", "application/json")];
        let response = call(host, Some(PRODUCER), "POST", "/v1/streams/toll-lines/records", &headers, body).await;
        assert_eq!(response.status(), 200, "put: {}", response.text().await.unwrap_or_default());
    }
}

/// The number a stage card's figure starts with (`"1,234 in · ..."` is 1234).
fn leading_number(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.replace(',', "").parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_showcase_live_and_its_buttons_act_in_a_real_browser() {
    let Some((chromium, chromedriver)) = chromium() else {
        assert!(std::env::var("CI").is_err(), "CI needs Debian's `chromium` and `chromium-driver` packages");
        eprintln!("skipped: no chromium and chromedriver (apt-get install chromium chromium-driver)");
        return;
    };
    let mut host = showcase().await;

    // The page is public (it holds no data); the feed behind it is not.
    let page = reqwest::get(format!("{}/ui", host.url)).await.expect("GET /ui");
    assert_eq!(page.status(), 200);
    let policy = page.headers().get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(policy.contains("default-src 'self'"), "the page loads nothing from elsewhere: {policy}");
    let feed = reqwest::get(format!("{}/v1/pipeline/events", host.url)).await.expect("GET the feed");
    assert_eq!(feed.status(), 403, "the live feed needs a key");

    let browser = Browser::start(&chromium, &chromedriver).await;
    browser.open(&format!("{}/ui", host.url)).await;
    eventually("the sign-in form", WAIT, async || browser.visible("#sign-in-form").await.then_some(())).await;

    // The app's key may not describe the pipeline: refused, with the reason.
    browser.type_into("#key-id", APP.0).await;
    browser.type_into("#key-secret", APP.1).await;
    browser.click("#sign-in-button").await;
    let refusal = eventually("the refusal of the app's key", WAIT, async || {
        browser.text("#sign-in-error").await.filter(|t| !t.is_empty())
    })
    .await;
    assert!(refusal.contains("admin:DescribePipeline"), "{refusal}");

    // The operator's key: the graph of the manifest, every stage in it.
    browser.type_into("#key-id", OPERATOR.0).await;
    browser.type_into("#key-secret", OPERATOR.1).await;
    browser.click("#sign-in-button").await;
    let stages: Vec<String> = host.host.pipeline.stages.iter().map(|s| s.name.to_string()).collect();
    eventually("the graph's stages", WAIT, async || {
        let drawn = browser.texts("#graph .node.stage .name").await;
        (stages.iter().all(|s| drawn.contains(s)) && drawn.len() == stages.len()).then_some(())
    })
    .await;
    for stream in ["toll-lines", "toll-rows", "toll-rejects", "billing-windows", "traffic-windows"] {
        assert!(browser.texts("#graph .node.stream .name").await.contains(&stream.to_owned()), "stream {stream}");
    }
    assert_eq!(browser.text("#who").await.as_deref(), Some("signed in as ABCTOLLSOPERATOR"));
    let etl_records = "[data-stage='etl'] [data-figure='records']";
    let before =
        eventually("the etl card", WAIT, async || browser.text(etl_records).await.and_then(|t| leading_number(&t)))
            .await;
    assert_eq!(before, 0);

    // A counter moves after records are put.
    let day = weir_host::simulate::generate_day(7, DAY);
    put(&host, &day[..500]).await;
    eventually("etl's records counter to move", WAIT, async || {
        browser.text(etl_records).await.and_then(|t| leading_number(&t)).filter(|n| *n > 0)
    })
    .await;

    // The rest of the day: notifications arrive, the malformed lines wait as dead letters.
    put(&host, &day[500..]).await;
    eventually("the latest notifications", WAIT, async || {
        let listed = browser.texts("#notifications li:not(.empty)").await;
        (listed.len() >= 3).then_some(())
    })
    .await;
    let dead_lettered = host.host.status().stages.iter().find(|s| s.name == "etl").map_or(0, |s| s.dead_lettered);
    assert!(dead_lettered > 0, "the day has malformed lines");
    let pending = "[data-stage='etl'] [data-figure='dead-letters']";
    eventually("etl's pending dead letters", WAIT, async || {
        let text = browser.text(pending).await?;
        (leading_number(&text) == Some(dead_lettered)).then_some(())
    })
    .await;

    // Every delivery stream has a row, its error records counted (none: the showcase's deliveries fail nothing).
    for delivery in ["toll-transactions", "toll-raw", "toll-errors"] {
        let errors = format!("#deliveries tr[data-delivery='{delivery}'] td:nth-child(6)");
        eventually("the delivery's error records counted", WAIT, async || {
            (browser.text(&errors).await.as_deref() == Some("0")).then_some(())
        })
        .await;
    }

    // A second version of toll-etl swapped in through the admin API; the button rolls it back.
    let component = std::fs::read(artifacts::TOLL_ETL).expect("the toll-etl component");
    let headers = [("x-weir-plugin-version", "0.1.1-hotfix")];
    let swapped = call(&host, Some(OPERATOR), "PUT", "/v1/stages/etl/plugin", &headers, component).await;
    assert_eq!(swapped.status(), 200, "swap: {}", swapped.text().await.unwrap_or_default());
    eventually("the swapped version on the card", WAIT, async || {
        browser.text("[data-stage='etl'] [data-figure='plugin']").await.filter(|t| t.ends_with("0.1.1-hotfix"))
    })
    .await;
    let rollback = "[data-stage='etl'] button[data-action='rollback']";
    browser.click(rollback).await;
    assert!(browser.text(rollback).await.is_some_and(|t| t.starts_with("Roll back to toll-etl@")), "it asks first");
    browser.click(rollback).await;
    let result = "[data-stage='etl'] .result";
    let rolled = eventually("the rollback's answer", WAIT, async || {
        browser.text(result).await.filter(|t| t.starts_with("rolled back") || t.starts_with("not"))
    })
    .await;
    assert!(rolled.starts_with("rolled back"), "{rolled}");
    let active = host.host.status().stages.into_iter().find(|s| s.name == "etl").map(|s| s.plugin).unwrap_or_default();
    assert!(!active.ends_with("0.1.1-hotfix"), "the earlier version runs again: {active}");

    // Redrive: the malformed lines fail again (the plugin is right to refuse them), and are kept.
    let redrive = "[data-stage='etl'] button[data-action='redrive']";
    browser.click(redrive).await;
    browser.click(redrive).await;
    let redriven = eventually("the redrive's answer", WAIT, async || {
        browser.text(result).await.filter(|t| t.starts_with("redriven") || t.starts_with("not"))
    })
    .await;
    assert_eq!(redriven, format!("redriven: {dead_lettered}, set aside again: {dead_lettered}"));

    // Let the figures settle, then keep what the operator sees.
    eventually("the stages to catch up", WAIT, async || {
        host.host.consumer_lags().iter().all(|c| c.lag_records == 0).then_some(())
    })
    .await;
    let read = host.host.status().stages.iter().find(|s| s.name == "etl").map_or(0, |s| s.records_in);
    eventually("the card to show every record read", WAIT, async || {
        (browser.text(etl_records).await.and_then(|t| leading_number(&t)) == Some(read)).then_some(())
    })
    .await;
    let png = browser.screenshot().await;
    let artifacts = root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("the artifacts folder");
    std::fs::write(artifacts.join("dashboard.png"), &png).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    // And the rest of the page, as the operator scrolls down to it.
    browser.run("window.scrollTo(0, document.body.scrollHeight);", json!([])).await;
    std::fs::write(artifacts.join("dashboard-below.png"), browser.screenshot().await).expect("the second screenshot");
    browser.quit().await;
    host.stop().await;
}
