//! Which windows a moment belongs to: tumbling and sliding windows, `[start, end)` in
//! milliseconds, aligned to the Unix epoch in UTC.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{MAX_WINDOWS_PER_RECORD, WindowError, format_span, format_time, span_ms};

/// One window: `start` inclusive, `end` exclusive, in milliseconds since the Unix epoch.
/// Ordered by start, which for windows of one size is also the order of their ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Window {
    /// First millisecond in the window.
    pub start: i64,
    /// First millisecond after it.
    pub end: i64,
}

impl Window {
    /// Whether `time_ms` falls in the window.
    pub fn contains(&self, time_ms: i64) -> bool {
        self.start <= time_ms && time_ms < self.end
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "window [{}, {})", format_time(self.start), format_time(self.end))
    }
}

/// The shape of a stage's windows. Build it with [`WindowKind::tumbling`] or
/// [`WindowKind::sliding`], which check the sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum WindowKind {
    /// Back-to-back windows of `size_ms`: each moment is in exactly one.
    Tumbling {
        /// Window length.
        size_ms: i64,
    },
    /// Windows of `size_ms` starting every `slide_ms`: they overlap.
    Sliding {
        /// Window length.
        size_ms: i64,
        /// Time between the starts of consecutive windows.
        slide_ms: i64,
    },
}

impl WindowKind {
    /// Tumbling windows of `size`.
    pub fn tumbling(size: Duration) -> Result<Self, WindowError> {
        let kind = WindowKind::Tumbling { size_ms: span_ms("window size", size)? };
        kind.validate()?;
        Ok(kind)
    }

    /// Windows of `size` starting every `slide`.
    pub fn sliding(size: Duration, slide: Duration) -> Result<Self, WindowError> {
        let kind =
            WindowKind::Sliding { size_ms: span_ms("window size", size)?, slide_ms: span_ms("window slide", slide)? };
        kind.validate()?;
        Ok(kind)
    }

    /// Checks the sizes of a kind built by hand or read from a snapshot.
    pub fn validate(&self) -> Result<(), WindowError> {
        let (size, slide) = (self.size_ms(), self.slide_ms());
        if size <= 0 {
            return Err(WindowError::ZeroSize);
        }
        span_ms("window size", Duration::from_millis(size as u64))?;
        if slide <= 0 || slide > size {
            return Err(WindowError::BadSlide { size: format_span(size), slide: format_span(slide) });
        }
        let count = windows_per_record(size, slide);
        if count > MAX_WINDOWS_PER_RECORD {
            return Err(WindowError::TooManyWindows { size: format_span(size), slide: format_span(slide), count });
        }
        Ok(())
    }

    /// Window length in milliseconds.
    pub fn size_ms(&self) -> i64 {
        match *self {
            WindowKind::Tumbling { size_ms } | WindowKind::Sliding { size_ms, .. } => size_ms,
        }
    }

    /// Time between window starts in milliseconds (the size for tumbling windows).
    pub fn slide_ms(&self) -> i64 {
        match *self {
            WindowKind::Tumbling { size_ms } => size_ms,
            WindowKind::Sliding { slide_ms, .. } => slide_ms,
        }
    }

    /// The windows holding `time_ms`, earliest first.
    pub fn assign(&self, time_ms: i64) -> impl Iterator<Item = Window> + use<> {
        let (size, slide) = (self.size_ms(), self.slide_ms());
        // The earliest start is the first multiple of the slide after `time - size`.
        let first_start = (time_ms.saturating_sub(size)).div_euclid(slide).saturating_mul(slide).saturating_add(slide);
        (0..)
            .map(move |i: i64| first_start.saturating_add(i.saturating_mul(slide)))
            .take_while(move |&start| start <= time_ms)
            .map(move |start| Window { start, end: start.saturating_add(size) })
    }

    /// The window that ends at `end_ms` (which need not be one of this kind's).
    pub fn window_ending_at(&self, end_ms: i64) -> Window {
        Window { start: end_ms - self.size_ms(), end: end_ms }
    }

    /// Whether the spec produces `window`.
    pub fn produces(&self, window: Window) -> bool {
        window.end - window.start == self.size_ms() && window.start.rem_euclid(self.slide_ms()) == 0
    }
}

impl fmt::Display for WindowKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WindowKind::Tumbling { size_ms } => write!(f, "tumbling {}", format_span(size_ms)),
            WindowKind::Sliding { size_ms, slide_ms } => {
                write!(f, "sliding {} (every {})", format_span(size_ms), format_span(slide_ms))
            }
        }
    }
}

/// How many windows of `size` starting every `slide` hold a moment, at most.
fn windows_per_record(size: i64, slide: i64) -> i64 {
    // Both are positive: this is the ceiling of size / slide.
    (size + slide - 1) / slide
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000;

    fn at(rfc3339: &str) -> i64 {
        weir_stream::time::system_ms(humantime::parse_rfc3339(rfc3339).expect("a valid test time"))
    }

    fn minutes(n: u64) -> Duration {
        Duration::from_secs(60 * n)
    }

    #[test]
    fn tumbling_windows_are_aligned_to_the_epoch_in_utc() {
        let kind = WindowKind::tumbling(minutes(10)).expect("valid");
        let windows: Vec<_> = kind.assign(at("2026-11-26T14:03:12Z")).collect();
        assert_eq!(windows, [Window { start: at("2026-11-26T14:00:00Z"), end: at("2026-11-26T14:10:00Z") }]);
    }

    #[test]
    fn a_window_holds_its_start_but_not_its_end() {
        let kind = WindowKind::tumbling(minutes(10)).expect("valid");
        let start = at("2026-11-26T14:10:00Z");
        assert_eq!(kind.assign(start).collect::<Vec<_>>(), [Window { start, end: start + 10 * MINUTE }]);
        assert_eq!(kind.assign(start - 1).next().expect("one window").end, start);
    }

    #[test]
    fn sliding_windows_hold_a_moment_size_over_slide_times_earliest_first() {
        let kind = WindowKind::sliding(minutes(30), minutes(10)).expect("valid");
        let t = at("2026-11-26T14:03:00Z");
        let starts: Vec<_> = kind.assign(t).map(|w| w.start).collect();
        assert_eq!(starts, [at("2026-11-26T13:40:00Z"), at("2026-11-26T13:50:00Z"), at("2026-11-26T14:00:00Z")]);
        assert!(kind.assign(t).all(|w| w.contains(t) && w.end - w.start == 30 * MINUTE));
    }

    #[test]
    fn a_slide_that_does_not_divide_the_size_still_finds_every_window() {
        let kind = WindowKind::sliding(minutes(25), minutes(10)).expect("valid");
        for t in [0, 1, 9 * MINUTE, 10 * MINUTE, 24 * MINUTE + 59_999, 25 * MINUTE] {
            let found: Vec<_> = kind.assign(t).collect();
            let brute: Vec<_> = (-5..5)
                .map(|k| Window { start: k * 10 * MINUTE, end: k * 10 * MINUTE + 25 * MINUTE })
                .filter(|w| w.contains(t))
                .collect();
            assert_eq!(found, brute, "at {t}");
        }
    }

    #[test]
    fn seven_minute_windows_straddle_midnight() {
        let kind = WindowKind::tumbling(minutes(7)).expect("valid");
        let window = kind.assign(at("2026-11-30T23:59:00Z")).next().expect("one window");
        assert!(window.start < at("2026-12-01T00:00:00Z") && window.end > at("2026-12-01T00:00:00Z"));
        assert!(kind.produces(window));
        assert!(!kind.produces(Window { start: window.start + 1, end: window.end + 1 }));
    }

    #[test]
    fn bad_sizes_are_refused_with_what_to_change() {
        assert!(matches!(WindowKind::tumbling(Duration::ZERO), Err(WindowError::ZeroSize)));
        let slide_too_long = WindowKind::sliding(minutes(10), minutes(20)).expect_err("slide > size");
        assert_eq!(
            slide_too_long.to_string(),
            "the window slide (20m) must be more than 0 and at most the window size (10m)"
        );
        assert!(matches!(WindowKind::sliding(minutes(10), Duration::ZERO), Err(WindowError::BadSlide { .. })));
        let dense = WindowKind::sliding(minutes(600), Duration::from_millis(100)).expect_err("too dense");
        assert!(dense.to_string().contains("make the slide longer"), "{dense}");
        let long = WindowKind::tumbling(Duration::from_secs(400 * 24 * 3600)).expect_err("too long");
        assert!(long.to_string().contains("366 days"), "{long}");
    }
}
