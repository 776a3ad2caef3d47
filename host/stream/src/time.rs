//! Time as weir keeps it: milliseconds since the Unix epoch (as Kinesis's
//! arrival timestamps), their RFC 3339 text, and the clock that arrival times
//! and buffer ages come from.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds of a `SystemTime` since the Unix epoch.
pub fn system_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    system_ms(SystemTime::now())
}

/// Milliseconds since the epoch as RFC 3339 text, to the millisecond, in UTC.
pub fn format_ms(ms: i64) -> String {
    let t = if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    };
    humantime::format_rfc3339_millis(t).to_string()
}

/// Where arrival times and buffer ages come from: the system clock, or a
/// simulated one when a test or `weir simulate` replays a day faster than real time.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock, as a [`Clock`].
pub fn system_clock() -> Clock {
    Arc::new(now_ms)
}
