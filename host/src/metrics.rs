//! What the host records for `GET /metrics` (`api::metrics`) besides the
//! counters each part keeps: latency histograms (a stage's batches and plugin
//! calls, webhook requests), each observed once per batch or request, never per
//! record; and what puts brought per stream, counted once per put.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

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

/// What puts into one stream brought, since the host started.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PutCounts {
    /// Bytes of data accepted.
    pub bytes: u64,
    /// Records refused as over a shard's write limit or the stream's capacity.
    pub throttled: u64,
}

/// [`PutCounts`] by stream.
#[derive(Debug, Default)]
pub struct PutCounters(Mutex<BTreeMap<String, PutCounts>>);

impl PutCounters {
    /// Counts one put into `stream`: the bytes accepted and the records throttled.
    pub fn count(&self, stream: &str, bytes: u64, throttled: u64) {
        // A poisoned lock only loses counts, never records.
        let Ok(mut puts) = self.0.lock() else { return };
        let counts = match puts.get_mut(stream) {
            Some(counts) => counts,
            None => puts.entry(stream.to_owned()).or_default(),
        };
        counts.bytes += bytes;
        counts.throttled += throttled;
    }

    /// The counts so far.
    pub fn snapshot(&self) -> BTreeMap<String, PutCounts> {
        self.0.lock().map(|p| p.clone()).unwrap_or_default()
    }
}
