//! The latency histograms the host records beside its counters: a stage's
//! batches and plugin calls, webhook requests. Each is observed once per batch
//! or request, never per record; `GET /metrics` (`api::metrics`) exports them.

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// A latency histogram in seconds, from 100 µs to about 2.4 s (and more).
#[derive(Debug, Clone)]
pub struct Seconds(Histogram);

impl Default for Seconds {
    fn default() -> Self {
        Seconds(Histogram::new(exponential_buckets(0.000_1, 2.5, 12)))
    }
}

impl Seconds {
    /// Records one duration.
    pub fn observe(&self, elapsed: std::time::Duration) {
        self.0.observe(elapsed.as_secs_f64());
    }

    /// The histogram, to export.
    pub fn histogram(&self) -> &Histogram {
        &self.0
    }
}
