//! The live dashboard, served by the host itself:
//!
//! - `GET /ui` (and `/ui/app.js`, `/ui/sigv4.js`, `/ui/style.css`): the page,
//!   embedded in the binary (no build step, no CDN). It holds no data, so it is
//!   served to anyone; everything it shows comes from the authenticated API.
//! - `GET /v1/pipeline/events`: a live feed (Server-Sent Events) of the
//!   pipeline: first its [`graph`] (`event: graph`), then every second its
//!   status, what crossed each edge since the start, each stage's pending dead
//!   letters and each delivery stream's pending error records, and the latest
//!   notifications the caller may read (`event: status`).
//!   It needs `admin:DescribePipeline`.
//!
//! The page signs its requests with AWS Signature V4 in the browser (WebCrypto),
//! with an access key of the manifest, so its buttons (a plugin's rollback, a
//! dead-letter redrive) are guarded like the admin API: they call it.

pub mod graph;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, State};
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Serialize;

use crate::access::Caller;
use crate::notify::Sent;
use crate::pipeline::{Host, PipelineStatus};
use graph::Graph;

/// How often the feed sends the pipeline's status.
const TICK: Duration = Duration::from_secs(1);
/// How often a stage's pending dead letters are counted again when nothing
/// new was set aside (a redrive takes some).
const PENDING_REFRESH: Duration = Duration::from_secs(5);
/// The same for a delivery stream's error records, listed from its lake.
const ERRORS_REFRESH: Duration = Duration::from_secs(30);

/// What the page is made of.
const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const SIGV4_JS: &str = include_str!("assets/sigv4.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// Only the page's own files and API: no inline script, no other origin, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// `GET /ui`
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /ui/app.js`
pub async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /ui/sigv4.js`
pub async fn sigv4_js() -> Response {
    asset("text/javascript; charset=utf-8", SIGV4_JS)
}

/// `GET /ui/style.css`
pub async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

/// One `event: status` of the feed.
#[derive(Serialize)]
struct Tick<'a> {
    status: &'a PipelineStatus,
    /// What crossed each edge of the graph since the start, by edge id.
    counts: BTreeMap<String, u64>,
    /// Each stage's pending dead letters.
    pending_dead_letters: &'a BTreeMap<String, usize>,
    /// Each delivery stream's pending error records.
    pending_errors: &'a BTreeMap<String, usize>,
    /// The latest notifications the caller may read, newest first.
    notifications: Vec<Sent>,
}

/// What the feed remembers between ticks.
struct Feed {
    host: Arc<Host>,
    caller: Caller,
    graph: Arc<Graph>,
    /// Each stage's pending dead letters.
    dead_letters: Pending,
    /// Each delivery stream's pending error records (listed from its lake).
    errors: Pending,
    first: bool,
}

/// `GET /v1/pipeline/events`
pub async fn events(
    State(api): State<Arc<super::ApiState>>,
    Extension(caller): Extension<Caller>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let host = api.host.clone();
    let graph = Arc::new(Graph::of(&host.pipeline));
    let feed = Feed {
        host,
        caller,
        graph,
        dead_letters: Pending::every(PENDING_REFRESH),
        errors: Pending::every(ERRORS_REFRESH),
        first: true,
    };
    let events = futures_util::stream::unfold(feed, |mut feed| async move {
        if feed.host.feeds_stopped() {
            return None;
        }
        if feed.first {
            feed.first = false;
            let graph = serde_json::to_string(feed.graph.as_ref()).unwrap_or_default();
            return Some((Ok(Event::default().event("graph").data(graph)), feed));
        }
        tokio::time::sleep(TICK).await;
        // Reading the streams' ends and the dead letters may wait for the disk.
        let (feed, data) = tokio::task::spawn_blocking(move || {
            let data = feed.tick();
            (feed, data)
        })
        .await
        .ok()?;
        Some((Ok(Event::default().event("status").data(data)), feed))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

impl Feed {
    /// The next `event: status`'s data.
    fn tick(&mut self) -> String {
        let status = self.host.status();
        let now = std::time::Instant::now();
        for stage in &status.stages {
            let host = &self.host;
            self.dead_letters.recount(&stage.name, stage.dead_lettered, now, || host.dead_letters(&stage.name, None));
        }
        for delivery in &status.deliveries {
            let host = &self.host;
            self.errors
                .recount(&delivery.name, delivery.records_failed, now, || host.delivery_errors(&delivery.name, None));
        }
        let policy = &self.caller.policy;
        let notifications = self
            .host
            .channels
            .recent()
            .into_iter()
            .filter(|n| policy.allows("inbox:Read", &format!("inbox/{}/{}", n.channel, n.recipient)))
            .collect();
        let tick = Tick {
            status: &status,
            counts: self.graph.counts(&status),
            pending_dead_letters: &self.dead_letters.counts,
            pending_errors: &self.errors.counts,
            notifications,
        };
        serde_json::to_string(&tick).unwrap_or_default()
    }
}

/// Pending entries by stage or delivery stream, counted again when more were
/// written or `refresh` has passed (a redrive takes some).
struct Pending {
    counts: BTreeMap<String, usize>,
    /// The count of entries written when they were counted, and when.
    counted: BTreeMap<String, (u64, std::time::Instant)>,
    refresh: Duration,
}

impl Pending {
    fn every(refresh: Duration) -> Pending {
        Pending { counts: BTreeMap::new(), counted: BTreeMap::new(), refresh }
    }

    /// Counts `name`'s pending entries again with `list`, if they may have changed.
    fn recount<T>(
        &mut self,
        name: &str,
        written: u64,
        now: std::time::Instant,
        list: impl FnOnce() -> Result<Vec<T>, crate::pipeline::dlq::DlqError>,
    ) {
        let changed = self.counted.get(name).is_none_or(|(before, at)| *before != written || now - *at >= self.refresh);
        if !changed {
            return;
        }
        match list() {
            Ok(entries) => {
                self.counts.insert(name.to_owned(), entries.len());
                self.counted.insert(name.to_owned(), (written, now));
            }
            Err(e) => tracing::debug!(name, error = %e, "dead letters not counted for the dashboard"),
        }
    }
}
