//! Event-time windows: the host side of an aggregator stage.
//!
//! The [`WindowOperator`] owns open windows and, in each, one opaque state per key. It
//! decides which windows a record belongs to ([`assign`]), when a window closes
//! ([`watermark`]), and which records come too late ([`operator`]). It never looks inside
//! a state: the caller folds records into states (through the plugin's `fold`) and turns
//! the states of a closed window into results (through `emit`).
//!
//! # The semantics
//!
//! - **Windows** are `[start, end)` in milliseconds since the Unix epoch, aligned to the
//!   epoch in UTC: 10-minute windows start at :00, :10, :20 ... Tumbling windows do not
//!   overlap; a sliding window of `size` starts every `slide`, so a record belongs to about
//!   `size / slide` of them.
//! - **Time** is the record's event time (set by its producer, the arrival time when it
//!   had none) or its arrival time, per [`TimeSource`].
//! - **The watermark** says "no record older than this is still expected". Each shard's
//!   is the newest time seen on it minus the out-of-orderness bound; the operator's is
//!   the lowest of its active shards' and never goes back. A shard with no record for the
//!   idle timeout stops holding it back until its next record; a shard's first record
//!   from a named source holds it one idle timeout more, for the shard's other producers
//!   (see [`watermark`]). When every shard is idle,
//!   the clock takes over: the watermark moves on as the host's clock does, so the last
//!   windows close when the stream goes quiet.
//! - **A window fires** once the watermark passes its end: its on-time pane (revision 0)
//!   holds every key's state. It fires exactly once on time, in order of its end. With
//!   expected keys, the pane holds every expected key (an empty state for one that had no
//!   record), and every window from the first one the operator saw fires, even one with
//!   no record at all: a silent station still gets its result.
//! - **Late records revise results.** With an allowed lateness, a fired window is kept
//!   until the watermark passes its end plus the lateness; a record for it folds into its
//!   state and the window fires again for the keys that changed (revision 1, 2, ...), each
//!   pane with the key's whole state so far, so a consumer replaces its previous result
//!   for that window and key (see [`operator`]).
//! - **A record is late** when every window it belongs to has closed (its lateness has
//!   passed, or it fired with no lateness). It is never dropped silently: the caller sets
//!   it aside with the reason [`Route::Late`] gives. A sliding-window record that is late
//!   for some of its windows only goes to the others.
//! - **Restarts**: [`WindowOperator::snapshot`] holds everything needed to continue as
//!   if nothing happened (open and kept windows and states, each source's watermark, the
//!   last window fired); the stage stores it with its input positions. The time the host was down
//!   does not count towards the idle timeout.
//!
//! The operator is deterministic: it reads no clock; every call that needs the time
//! takes `now_ms` from the caller.

pub mod assign;
pub mod operator;
pub mod watermark;

#[cfg(test)]
mod golden;

use std::time::Duration;

pub use assign::{Window, WindowKind};
pub use operator::{FoldPlan, FoldRecord, Pane, RewriteError, Route, SetAside, WindowMetrics, WindowOperator};
pub use watermark::{TimeSource, Watermarks};

/// The last millisecond a window time may be: 9999-12-31T23:59:59.999Z. Times must also
/// not be before 1970, so every time can be written in RFC 3339.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// The longest window, out-of-orderness bound, allowed lateness or idle timeout: 366 days.
pub const MAX_SPAN: Duration = Duration::from_secs(366 * 24 * 3600);

/// At most this many sliding windows hold one record (`size / slide`).
pub const MAX_WINDOWS_PER_RECORD: i64 = 1000;

/// How an aggregator stage windows its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    /// Tumbling or sliding, and how long.
    pub kind: WindowKind,
    /// Which time of a record places it in windows.
    pub time: TimeSource,
    /// How far behind the newest time of its source a record may be and still count.
    pub out_of_orderness: Duration,
    /// How long a window stays open after the watermark passes its end.
    pub allowed_lateness: Duration,
    /// A source with no record for this long stops holding the watermark back; `None`:
    /// never.
    pub idle_timeout: Option<Duration>,
    /// A record whose time is further than this ahead of the host's clock is refused,
    /// since it would move the watermark past every window up to it; `None`: no limit.
    pub max_ahead: Option<Duration>,
}

impl WindowSpec {
    /// Windows of `kind` over event time, with no out-of-orderness, lateness, idle
    /// timeout or limit ahead: set the fields to change them.
    pub fn new(kind: WindowKind) -> Self {
        WindowSpec {
            kind,
            time: TimeSource::EventTime,
            out_of_orderness: Duration::ZERO,
            allowed_lateness: Duration::ZERO,
            idle_timeout: None,
            max_ahead: None,
        }
    }

    /// What these settings mean for a user, in a few sentences (`weir check` prints them).
    pub fn explain(&self) -> Vec<String> {
        let span = |d: Duration| humantime::format_duration(d).to_string();
        let time = match self.time {
            TimeSource::EventTime => "event time",
            TimeSource::ArrivalTime => "arrival time",
        };
        let mut lines = vec![format!(
            "{} windows by {time}; each gives its results once every active source's newest time is {} past \
             its end",
            self.kind,
            span(self.out_of_orderness),
        )];
        lines.push(match self.allowed_lateness.is_zero() {
            true => "no allowed lateness: a window is closed once it gave its results".to_owned(),
            false => format!(
                "a record up to {} (allowed lateness) behind that still counts: its window gives a revised \
                 result for its key (revision 1, 2, ...), which replaces the one before",
                span(self.allowed_lateness)
            ),
        });
        lines.push(match self.idle_timeout {
            Some(idle) => format!(
                "a source (a producer, or a shard for records that name none) quiet for {0} stops holding \
                 windows back: one offline longer is treated as silent until it sends again; at the \
                 start, the first results wait {0} for producers that begin a little after the first",
                span(idle)
            ),
            None => {
                "no idle timeout: a source that stops sending holds every window back until it sends again".to_owned()
            }
        });
        lines.push(
            "a record later than that is late: it goes to the stage's `late` stream (or its dead letters) \
             with the reason, and is counted in the stage's status"
                .to_owned(),
        );
        if let Some(ahead) = self.max_ahead {
            lines.push(format!("a record more than {} ahead of the host's clock is refused", span(ahead)));
        }
        lines
    }

    /// Checks every bound; the error says which one is wrong.
    pub fn validate(&self) -> Result<(), WindowError> {
        self.kind.validate()?;
        span_ms("out-of-orderness", self.out_of_orderness)?;
        span_ms("allowed-lateness", self.allowed_lateness)?;
        if let Some(idle) = self.idle_timeout {
            if idle.is_zero() {
                return Err(WindowError::ZeroIdleTimeout);
            }
            span_ms("idle-timeout", idle)?;
        }
        if let Some(ahead) = self.max_ahead {
            span_ms("max-ahead", ahead)?;
        }
        Ok(())
    }
}

/// A span in milliseconds, refused beyond [`MAX_SPAN`].
pub(crate) fn span_ms(what: &'static str, span: Duration) -> Result<i64, WindowError> {
    if span > MAX_SPAN {
        return Err(WindowError::SpanTooLong { what, span: humantime::format_duration(span).to_string() });
    }
    // At most 366 days of milliseconds: fits in an i64.
    Ok(span.as_millis() as i64)
}

/// Writes a window time for people: RFC 3339 in UTC, or the raw number out of range.
pub(crate) fn format_time(ms: i64) -> String {
    if (0..=MAX_TIME_MS).contains(&ms) { weir_stream::time::format_ms(ms) } else { format!("{ms} ms since 1970") }
}

/// Writes a span of milliseconds for people: `10m`, `1h 30m`.
pub(crate) fn format_span(ms: i64) -> String {
    humantime::format_duration(Duration::from_millis(ms.max(0) as u64)).to_string()
}

/// What is wrong with a window spec, a fold's answer or a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    /// A window size of zero.
    #[error("the window size must be more than 0")]
    ZeroSize,
    /// A slide of zero or longer than the size.
    #[error("the window slide ({slide}) must be more than 0 and at most the window size ({size})")]
    BadSlide {
        /// The size, for people.
        size: String,
        /// The slide, for people.
        slide: String,
    },
    /// Sliding windows so dense that a record would belong to too many of them.
    #[error(
        "a {size} window sliding by {slide} holds each record {count} times; at most {MAX_WINDOWS_PER_RECORD} \
         are supported: make the slide longer"
    )]
    TooManyWindows {
        /// The size, for people.
        size: String,
        /// The slide, for people.
        slide: String,
        /// Windows per record.
        count: i64,
    },
    /// A span beyond [`MAX_SPAN`].
    #[error("the {what} ({span}) is longer than the longest supported, 366 days")]
    SpanTooLong {
        /// Which setting.
        what: &'static str,
        /// The span, for people.
        span: String,
    },
    /// A zero idle timeout would make every shard idle at once.
    #[error("the idle-timeout must be more than 0 (leave it out to never treat a shard as idle)")]
    ZeroIdleTimeout,
    /// A window that the spec never produces.
    #[error("{window} is not one of this operator's {kind} windows")]
    NotAWindow {
        /// The window asked for.
        window: Window,
        /// The operator's windows, for people.
        kind: String,
    },
    /// A state written for a window that already closed.
    #[error("{window} has already closed; its results were emitted")]
    WindowClosed {
        /// The window.
        window: Window,
    },
    /// A snapshot that cannot be read.
    #[error("the window snapshot cannot be read: {0}")]
    Snapshot(String),
    /// A snapshot taken with other windows than the stage now has.
    #[error(
        "the window snapshot was taken with {saved} windows but the stage now has {current} windows: \
         the open windows cannot carry over; remove the stage's checkpoint to start afresh"
    )]
    SnapshotKindChanged {
        /// The windows in the snapshot, for people.
        saved: String,
        /// The windows of the spec, for people.
        current: String,
    },
}
