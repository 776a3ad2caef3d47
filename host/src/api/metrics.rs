//! `GET /metrics`: a running pipeline's figures in the OpenMetrics text format
//! that Prometheus scrapes.
//!
//! The counters are the ones `weir status` shows ([`crate::pipeline::PipelineStatus`]), read
//! when Prometheus scrapes: recording a record costs nothing more than the
//! status counters it already bumps. What the status has no room for is kept
//! beside them: latency histograms ([`crate::metrics::Seconds`]), observed
//! once per batch or request, never per record.
//!
//! The client is the Prometheus project's own `prometheus-client` crate: it
//! keeps no global registry, so every host (tests run many in one process)
//! exports only its own figures, and a scrape encodes what a [`MetricsSnapshot`] holds.
//!
//! Every name starts with `weir_`; counters end in `_total`; times are in
//! seconds. Labels: `stream`, `shard`, `consumer`, `stage`, `delivery`,
//! `channel`, `plugin`, `kind`. The README lists them.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::ApiError;
use crate::metrics::Seconds;
use crate::pipeline::MetricsSnapshot;

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics`: the pipeline's figures for Prometheus.
pub async fn metrics(State(state): State<Arc<super::ApiState>>) -> Response {
    let host = state.host.clone();
    match tokio::task::spawn_blocking(move || render(host.metrics())).await {
        Ok(text) => ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()).into_response(),
    }
}

/// A snapshot in the OpenMetrics text format.
pub fn render(snapshot: MetricsSnapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(snapshot)));
    let mut text = String::new();
    // Writing to a String cannot fail.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        tracing::error!(error = %e, "cannot encode the metrics");
    }
    text
}

/// Writes families, one metric type and label set at a time.
struct Families<'a> {
    encoder: DescriptorEncoder<'a>,
}

impl Families<'_> {
    /// A counter family: `name` gets `_total`.
    fn counter<I>(&mut self, name: &str, help: &str, series: I) -> std::fmt::Result
    where
        I: IntoIterator<Item = (Labels, u64)>,
    {
        let mut family = self.encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, value) in series {
            ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// A gauge family.
    fn gauge<I>(&mut self, name: &str, help: &str, series: I) -> std::fmt::Result
    where
        I: IntoIterator<Item = (Labels, f64)>,
    {
        let mut family = self.encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, value) in series {
            ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// A histogram family.
    fn histogram<'s, I>(&mut self, name: &str, help: &str, series: I) -> std::fmt::Result
    where
        I: IntoIterator<Item = (Labels, &'s Seconds)>,
    {
        let mut family = self.encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (labels, seconds) in series {
            seconds.histogram().encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// One label.
fn one(key: &'static str, value: &str) -> Labels {
    vec![(key, value.to_owned())]
}

/// A series' labels: constant keys, values from the pipeline.
type Labels = Vec<(&'static str, String)>;

/// What one scrape encodes.
#[derive(Debug)]
struct Scrape(MetricsSnapshot);

impl Collector for Scrape {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let snapshot = &self.0;
        let s = &snapshot.status;
        let mut f = Families { encoder };
        f.gauge(
            "weir_build_info",
            "The running weir's version (always 1).",
            [(vec![("version", snapshot.version.to_owned()), ("pipeline", s.pipeline.clone())], 1.0)],
        )?;
        f.gauge("weir_uptime_seconds", "Seconds since the host started.", [(Vec::new(), s.uptime_seconds as f64)])?;

        // Streams.
        f.counter(
            "weir_stream_records",
            "Records the stream accepted (all shards).",
            s.streams.iter().map(|(n, v)| (one("stream", n), *v)),
        )?;
        f.counter(
            "weir_stream_bytes",
            "Bytes of data the stream accepted through puts.",
            s.puts.iter().map(|(n, p)| (one("stream", n), p.bytes)),
        )?;
        f.counter(
            "weir_stream_throttled_records",
            "Records refused as over a shard's write limit or the stream's capacity (ProvisionedThroughputExceeded).",
            s.puts.iter().map(|(n, p)| (one("stream", n), p.throttled)),
        )?;
        f.counter(
            "weir_stream_duplicate_records",
            "Records put again that the stream's identity kept from being stored twice.",
            s.duplicates.iter().map(|(n, v)| (one("stream", n), *v)),
        )?;
        f.gauge(
            "weir_shard_newest_sequence",
            "Position of the newest record of the shard (-1 when it holds none yet).",
            s.shards
                .iter()
                .map(|sh| (vec![("stream", sh.stream.clone()), ("shard", sh.shard.clone())], sh.end as f64 - 1.0)),
        )?;
        let consumer = |c: &crate::pipeline::ConsumerLag| {
            vec![("stream", c.stream.clone()), ("shard", c.shard.clone()), ("consumer", c.consumer.clone())]
        };
        f.gauge(
            "weir_consumer_lag_records",
            "Records of the shard the consumer has not checkpointed yet.",
            s.consumers.iter().map(|c| (consumer(c), c.lag_records as f64)),
        )?;
        f.gauge(
            "weir_consumer_lag_seconds",
            "How long ago the oldest record the consumer has not checkpointed arrived (Kinesis's IteratorAge); 0 when caught up.",
            s.consumers.iter().map(|c| (consumer(c), c.lag_ms as f64 / 1000.0)),
        )?;

        // Stages.
        type StageCounter = fn(&crate::stage::StageStatus) -> u64;
        let stage_counters: [(&str, &str, StageCounter); 11] = [
            ("weir_stage_batches", "Batches the stage processed.", |t| t.batches),
            ("weir_stage_records_in", "Records the stage read and finished.", |t| t.records_in),
            ("weir_stage_records_out", "Records the stage wrote.", |t| t.records_out),
            ("weir_stage_records_dropped", "Records the plugin dropped.", |t| t.dropped),
            ("weir_stage_records_dead_lettered", "Records set aside to the dead letters.", |t| t.dead_lettered),
            ("weir_stage_records_skipped", "Records given up on by the `skip` policy.", |t| t.skipped),
            ("weir_stage_late_records", "Records later than their window's allowed lateness.", |t| t.late),
            ("weir_stage_revisions", "Revised window results late records caused.", |t| t.revisions),
            ("weir_stage_plugin_restarts", "Plugin instances created after the first.", |t| t.restarts),
            ("weir_plugin_swaps", "Plugin versions swapped in.", |t| t.swaps),
            ("weir_plugin_rollbacks", "Rollbacks, asked for or automatic.", |t| t.rollbacks),
        ];
        for (name, help, value) in stage_counters {
            f.counter(name, help, s.stages.iter().map(|t| (one("stage", &t.name), value(t))))?;
        }
        f.counter(
            "weir_plugin_failures",
            "Plugin calls that failed, by kind (trap, timeout, memory-cap, batch-failed, ...).",
            s.stages.iter().flat_map(|t| {
                t.plugin_failures
                    .iter()
                    .map(|(kind, n)| (vec![("stage", t.name.clone()), ("kind", (*kind).to_owned())], *n))
            }),
        )?;
        f.gauge(
            "weir_plugin_info",
            "The plugin version each stage runs (always 1).",
            s.stages.iter().map(|t| {
                (
                    vec![("stage", t.name.clone()), ("plugin", t.plugin.clone()), ("sha256", t.plugin_sha256.clone())],
                    1.0,
                )
            }),
        )?;
        f.gauge(
            "weir_stage_up",
            "1 while the stage runs or waits for records, 0 when it backs off, stopped or finished.",
            s.stages
                .iter()
                .map(|t| (one("stage", &t.name), if t.phase == crate::stage::Phase::Running { 1.0 } else { 0.0 })),
        )?;
        let windows = || s.stages.iter().filter_map(|t| Some((t, t.windows?)));
        f.gauge(
            "weir_stage_watermark_seconds",
            "The aggregator's event-time watermark, seconds since the Unix epoch.",
            windows().filter_map(|(t, w)| Some((one("stage", &t.name), w.watermark_ms? as f64 / 1000.0))),
        )?;
        f.gauge(
            "weir_stage_watermark_lag_seconds",
            "How far the watermark is behind the host's clock.",
            windows().filter_map(|(t, w)| {
                Some((one("stage", &t.name), (s.now_ms - w.watermark_ms?).max(0) as f64 / 1000.0))
            }),
        )?;
        f.gauge(
            "weir_stage_open_windows",
            "Windows the aggregator holds open.",
            windows().map(|(t, w)| (one("stage", &t.name), w.open_windows as f64)),
        )?;
        f.gauge(
            "weir_stage_window_states",
            "(window, key) states the aggregator holds, in open windows and those kept for late records.",
            windows().map(|(t, w)| (one("stage", &t.name), w.open_keys as f64)),
        )?;
        f.gauge(
            "weir_stage_window_state_bytes",
            "Bytes of those states.",
            windows().map(|(t, w)| (one("stage", &t.name), w.state_bytes as f64)),
        )?;
        f.histogram(
            "weir_stage_batch_duration_seconds",
            "How long a batch took, from being read to being done (outputs written).",
            snapshot.stage_times.iter().map(|(stage, batch, _)| (one("stage", stage), batch)),
        )?;
        f.histogram(
            "weir_stage_plugin_duration_seconds",
            "How long one call into the plugin took.",
            snapshot.stage_times.iter().map(|(stage, _, plugin)| (one("stage", stage), plugin)),
        )?;

        // Deliveries.
        type DeliveryCounter = fn(&crate::delivery::DeliveryStatus) -> u64;
        let delivery_counters: [(&str, &str, DeliveryCounter); 9] = [
            ("weir_delivery_records_in", "Records taken from the delivery's buffer.", |d| d.records_in),
            ("weir_delivery_records_delivered", "Records written to the lake.", |d| d.records_delivered),
            ("weir_delivery_records_failed", "Records written under the error prefix.", |d| d.records_failed),
            ("weir_delivery_objects", "Lake objects written (one per flush).", |d| d.objects),
            ("weir_delivery_rows_loaded", "Rows loaded into the warehouse.", |d| d.rows_loaded),
            ("weir_delivery_rows_duplicate", "Rows the warehouse held by their key already.", |d| d.rows_duplicate),
            ("weir_delivery_rows_rejected", "Rows the warehouse table refused.", |d| d.rows_rejected),
            ("weir_delivery_loads_failed", "Staged objects not loaded within the retry duration.", |d| d.loads_failed),
            ("weir_delivery_retries", "Lake writes and warehouse loads tried again.", |d| d.retries),
        ];
        for (name, help, value) in delivery_counters {
            f.counter(name, help, s.deliveries.iter().map(|d| (one("delivery", &d.name), value(d))))?;
        }
        f.gauge(
            "weir_delivery_buffered_records",
            "Records read and waiting for their flush.",
            s.deliveries.iter().map(|d| (one("delivery", &d.name), d.records_buffered as f64)),
        )?;
        f.gauge(
            "weir_delivery_buffered_bytes",
            "Bytes read and waiting for their flush.",
            s.deliveries.iter().map(|d| (one("delivery", &d.name), d.bytes_buffered as f64)),
        )?;
        f.gauge(
            "weir_delivery_buffer_age_seconds",
            "How long the oldest buffered record has waited.",
            s.deliveries.iter().map(|d| (one("delivery", &d.name), d.buffer_age_ms as f64 / 1000.0)),
        )?;

        // Notifications.
        f.counter(
            "weir_notifications_sent",
            "Notifications sent (each idempotency key once).",
            s.channels.iter().map(|c| (one("channel", &c.name), c.sent)),
        )?;
        f.counter(
            "weir_webhook_attempts",
            "Webhook requests made, first tries and retries.",
            s.channels.iter().map(|c| (one("channel", &c.name), c.attempts)),
        )?;
        f.counter(
            "weir_webhook_delivered",
            "Webhook deliveries the receiver acknowledged.",
            s.channels.iter().map(|c| (one("channel", &c.name), c.delivered)),
        )?;
        f.counter(
            "weir_notifications_failed",
            "Webhook deliveries given up on after the retry duration.",
            s.channels.iter().map(|c| (one("channel", &c.name), c.given_up)),
        )?;
        f.histogram(
            "weir_webhook_duration_seconds",
            "How long a webhook request took to be answered (or to fail).",
            snapshot.webhook_times.iter().map(|(channel, t)| (one("channel", channel), t)),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::PipelineStatus;

    #[test]
    fn a_histogram_counts_in_seconds_and_the_text_ends_like_openmetrics() {
        let t = Seconds::default();
        t.observe(std::time::Duration::from_millis(3));
        let snapshot = MetricsSnapshot {
            status: PipelineStatus { pipeline: "p".into(), ..PipelineStatus::default() },
            stage_times: vec![("etl".into(), t.clone(), t)],
            webhook_times: Vec::new(),
            version: "0.1.0",
        };
        let text = render(snapshot);
        assert!(text.contains("weir_build_info{version=\"0.1.0\",pipeline=\"p\"} 1"), "{text}");
        assert!(text.contains("weir_stage_batch_duration_seconds_count{stage=\"etl\"} 1"), "{text}");
        assert!(text.contains("weir_stage_batch_duration_seconds_bucket{le=\"0.00390625\",stage=\"etl\"} 1"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
