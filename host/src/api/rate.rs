//! Requests per second per access key (`requests-per-second` on a key), as a
//! token bucket holding one second's worth: a key over its rate is answered
//! `ProvisionedThroughputExceededException` (AWS protocol) or 429 (native API),
//! which SDKs back off from and retry.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// The buckets of the keys that have a rate.
pub struct KeyRates {
    rates: HashMap<String, u32>,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl KeyRates {
    /// `rates`: requests per second, by key id (keys without one are not limited).
    pub fn new(rates: HashMap<String, u32>) -> Self {
        Self { rates, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one request from `key`'s bucket; false if it is empty.
    pub fn admit(&self, key: &str, now: Instant) -> bool {
        let Some(&rate) = self.rates.get(key) else { return true };
        let rate = f64::from(rate.max(1));
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = buckets.entry(key.to_owned()).or_insert((rate, now));
        *tokens = (*tokens + now.saturating_duration_since(*last).as_secs_f64() * rate).min(rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_key_gets_its_rate_and_a_second_of_burst() {
        let rates = KeyRates::new(HashMap::from([("slow".to_owned(), 10)]));
        let start = Instant::now();
        let admitted = (0..25).filter(|_| rates.admit("slow", start)).count();
        assert_eq!(admitted, 10, "one second's worth at once");
        assert!(!rates.admit("slow", start + Duration::from_millis(50)));
        assert!(rates.admit("slow", start + Duration::from_millis(100)), "refilled at 10 per second");
        assert!((0..1000).all(|_| rates.admit("unlimited", start)));
    }
}
