//! A shard's write limit as a token bucket (Kinesis's provisioned throughput).

use std::time::Instant;

use crate::NewRecord;

use super::settings::*;

/// A token bucket holding up to one second of the limit.
#[derive(Debug)]
pub(super) struct Bucket {
    pub(super) limit: WriteLimit,
    pub(super) bytes: f64,
    pub(super) records: f64,
    pub(super) refilled: Instant,
}

impl Bucket {
    pub(super) fn new(limit: WriteLimit) -> Self {
        Self {
            limit,
            bytes: limit.bytes_per_second as f64,
            records: limit.records_per_second as f64,
            refilled: Instant::now(),
        }
    }

    /// How many of `records` (a prefix) fit now; takes their tokens.
    pub(super) fn admit(&mut self, records: &[NewRecord]) -> usize {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.bytes =
            (self.bytes + elapsed * self.limit.bytes_per_second as f64).min(self.limit.bytes_per_second as f64);
        self.records =
            (self.records + elapsed * self.limit.records_per_second as f64).min(self.limit.records_per_second as f64);
        let mut admitted = 0;
        for r in records {
            let size = (r.key.len() + r.data.len()) as f64;
            if self.records < 1.0 || self.bytes < size {
                break;
            }
            self.records -= 1.0;
            self.bytes -= size;
            admitted += 1;
        }
        admitted
    }
}
