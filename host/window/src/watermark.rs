//! Event-time watermarks over the sources of a stream: how far time has surely progressed,
//! so that windows up to it can close.
//!
//! A *source* is one producer's records: those that name the same source (an agent's
//! file, a station; see `weir_stream::Source`), and, for records that name none, each
//! shard. Producers that share a shard are tracked apart, so a shard whose producers
//! are hours apart (a station shipping its backlog beside live ones) does not make
//! time jump back and forth. Each source's watermark is the newest time seen from it
//! minus the out-of-orderness bound. The operator's watermark is the lowest over the
//! *active* sources and never goes back. A source is active from its first record (a
//! shard also from [`Watermarks::add_shard`]: until its first record, of any source)
//! until it has had no record for the idle timeout, judged by the caller's `now_ms`;
//! its next record makes it active again. A declared shard's first named record does not
//! let the watermark move at once: for one idle timeout the shard's other producers may
//! still show up (several agents started together, one a little later), as a Kafka
//! partition with no record yet holds a Flink watermark until it is idle. A producer that
//! first appears after that is judged against the watermark as it stands. When every
//! source is idle, the watermark follows the clock from where the newest left it, so
//! the last windows close when a stream goes quiet. Time the host was down does not count as idleness. An aggregator
//! moves the watermark once per batch, after its last record (as Flink's periodic
//! watermarks do): no record is late because of one beside it in its batch. At most
//! [`MAX_SOURCES`] named sources are kept: a new one beyond them replaces the one
//! quiet the longest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Which time of a record places it in windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimeSource {
    /// The time its producer gave it (the stream uses the arrival time when it gave none).
    #[default]
    EventTime,
    /// The time the stream accepted it.
    ArrivalTime,
}

impl TimeSource {
    /// The time of a record with these event and arrival times.
    pub fn pick(self, event_time_ms: i64, arrival_ms: i64) -> i64 {
        match self {
            TimeSource::EventTime => event_time_ms,
            TimeSource::ArrivalTime => arrival_ms,
        }
    }
}

/// The most named sources one operator tracks.
pub const MAX_SOURCES: usize = 10_000;

/// What the watermark knows about one source (a shard, or a named producer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ShardClock {
    /// The newest record time seen on the shard; `None` before its first record.
    newest_ms: Option<i64>,
    /// The caller's clock when the shard last had a record (or was added).
    active_at_ms: i64,
}

/// Per-shard watermarks and the operator's watermark over them.
#[derive(Debug, Clone)]
pub struct Watermarks {
    out_of_orderness_ms: i64,
    idle_timeout_ms: Option<i64>,
    state: WatermarkState,
}

/// The part of [`Watermarks`] a snapshot keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WatermarkState {
    /// Shards, for their records that name no source (and until their first record).
    shards: BTreeMap<u32, ShardClock>,
    /// Named sources.
    #[serde(default)]
    sources: BTreeMap<String, ShardClock>,
    /// The operator's watermark; `None` until the first one.
    current_ms: Option<i64>,
    /// The latest `now_ms` the caller gave: where the clock stood at a snapshot.
    clock_ms: Option<i64>,
    /// Declared shards whose first record named a source, and when it came: until the
    /// idle timeout has passed since, the watermark waits for the shard's other producers.
    #[serde(default)]
    first_named_at_ms: BTreeMap<u32, i64>,
}

impl Watermarks {
    /// Watermarks that trail the newest time by `out_of_orderness_ms`; a shard idle for
    /// `idle_timeout_ms` stops holding them back (`None`: never).
    pub fn new(out_of_orderness_ms: i64, idle_timeout_ms: Option<i64>) -> Self {
        Watermarks { out_of_orderness_ms, idle_timeout_ms, state: WatermarkState::default() }
    }

    /// Continues from a snapshot at `now_ms`. The idle clocks resume where they stopped:
    /// the time the host was down is not idleness (the shards' records were probably
    /// written meanwhile, waiting to be read).
    pub(crate) fn restore(
        out_of_orderness_ms: i64,
        idle_timeout_ms: Option<i64>,
        mut state: WatermarkState,
        now_ms: i64,
    ) -> Self {
        let downtime = state.clock_ms.map_or(0, |then| now_ms.saturating_sub(then).max(0));
        for clock in state.shards.values_mut().chain(state.sources.values_mut()) {
            clock.active_at_ms = clock.active_at_ms.saturating_add(downtime);
        }
        for at in state.first_named_at_ms.values_mut() {
            *at = at.saturating_add(downtime);
        }
        state.clock_ms = Some(state.clock_ms.map_or(now_ms, |then| then.max(now_ms)));
        Watermarks { out_of_orderness_ms, idle_timeout_ms, state }
    }

    pub(crate) fn state(&self) -> &WatermarkState {
        &self.state
    }

    /// Declares a shard the stage reads before it has any record, so that it holds the
    /// watermark back until its first record or the idle timeout. Known shards are kept.
    pub fn add_shard(&mut self, shard: u32, now_ms: i64) {
        self.tick(now_ms);
        self.state.shards.entry(shard).or_insert(ShardClock { newest_ms: None, active_at_ms: now_ms });
    }

    /// Forgets a shard that will have no more records (a closed parent after a reshard).
    pub fn remove_shard(&mut self, shard: u32, now_ms: i64) -> Option<i64> {
        self.state.shards.remove(&shard);
        self.advance(now_ms)
    }

    /// Takes in the time of a record of `shard` that names no source; returns the
    /// operator's watermark after it.
    pub fn observe(&mut self, shard: u32, time_ms: i64, now_ms: i64) -> Option<i64> {
        self.note(shard, None, time_ms, now_ms);
        self.advance(now_ms)
    }

    /// Takes in the time of a record of `shard` from `source` (`None`: it names none)
    /// without moving the watermark: call [`Watermarks::advance`] after a batch.
    pub fn note(&mut self, shard: u32, source: Option<&str>, time_ms: i64, now_ms: i64) {
        let fresh = ShardClock { newest_ms: None, active_at_ms: now_ms };
        let clock = match source {
            None => self.state.shards.entry(shard).or_insert(fresh),
            Some(source) => {
                // The shard has begun: its named sources speak for it from now on, once
                // its other producers have had an idle timeout to show up.
                if self.state.shards.get(&shard).is_some_and(|clock| clock.newest_ms.is_none()) {
                    self.state.shards.remove(&shard);
                    if self.idle_timeout_ms.is_some() {
                        self.state.first_named_at_ms.insert(shard, now_ms);
                    }
                }
                // Looked up by `&str`: the name is copied only for a source seen the first time.
                if !self.state.sources.contains_key(source) {
                    if self.state.sources.len() >= MAX_SOURCES {
                        self.forget_quietest_source();
                    }
                    self.state.sources.insert(source.to_owned(), fresh);
                }
                let Some(clock) = self.state.sources.get_mut(source) else { return };
                clock
            }
        };
        clock.newest_ms = Some(clock.newest_ms.map_or(time_ms, |newest| newest.max(time_ms)));
        clock.active_at_ms = clock.active_at_ms.max(now_ms);
    }

    fn forget_quietest_source(&mut self) {
        let quietest =
            self.state.sources.iter().min_by_key(|(_, clock)| clock.active_at_ms).map(|(name, _)| name.clone());
        if let Some(name) = quietest {
            self.state.sources.remove(&name);
        }
    }

    /// A named source's own watermark; `None` if it is not known.
    pub fn source_watermark(&self, source: &str) -> Option<i64> {
        self.state.sources.get(source)?.newest_ms.map(|newest| newest.saturating_sub(self.out_of_orderness_ms))
    }

    /// How many sources (shards and named ones) are known.
    pub fn sources(&self) -> usize {
        self.state.shards.len() + self.state.sources.len()
    }

    /// Lets idle shards stop holding the watermark back at `now_ms`; returns the
    /// operator's watermark.
    pub fn advance(&mut self, now_ms: i64) -> Option<i64> {
        self.tick(now_ms);
        if let Some(candidate) = self.candidate(now_ms) {
            self.state.current_ms = Some(self.state.current_ms.map_or(candidate, |current| current.max(candidate)));
        }
        self.state.current_ms
    }

    /// The input has ended (a bounded run, such as a simulated day): nothing more
    /// is in flight, so the watermark moves up to the newest event time seen,
    /// without waiting for out-of-order records, idle sources or producers yet to
    /// start. Returns the operator's watermark.
    pub fn end_input(&mut self) -> Option<i64> {
        self.state.first_named_at_ms.clear();
        if let Some(newest) = self.clocks().filter_map(|clock| clock.newest_ms).max() {
            self.state.current_ms = Some(self.state.current_ms.map_or(newest, |current| current.max(newest)));
        }
        self.state.current_ms
    }

    /// The operator's watermark: every window ending at or before it may close.
    pub fn current(&self) -> Option<i64> {
        self.state.current_ms
    }

    /// A shard's own watermark; `None` before its first record.
    pub fn shard_watermark(&self, shard: u32) -> Option<i64> {
        self.state.shards.get(&shard)?.newest_ms.map(|newest| newest.saturating_sub(self.out_of_orderness_ms))
    }

    /// Whether a known shard has had no record for the idle timeout at `now_ms`.
    pub fn is_idle(&self, shard: u32, now_ms: i64) -> bool {
        self.state.shards.get(&shard).is_some_and(|clock| self.clock_is_idle(clock, now_ms))
    }

    /// How many known sources (shards and named ones) are idle at `now_ms`.
    pub fn idle_sources(&self, now_ms: i64) -> usize {
        self.clocks().filter(|clock| self.clock_is_idle(clock, now_ms)).count()
    }

    fn clocks(&self) -> impl Iterator<Item = &ShardClock> {
        self.state.shards.values().chain(self.state.sources.values())
    }

    fn tick(&mut self, now_ms: i64) {
        self.state.clock_ms = Some(self.state.clock_ms.map_or(now_ms, |clock| clock.max(now_ms)));
        if let Some(idle) = self.idle_timeout_ms {
            self.state.first_named_at_ms.retain(|_, at| now_ms.saturating_sub(*at) < idle);
        }
    }

    fn clock_is_idle(&self, clock: &ShardClock, now_ms: i64) -> bool {
        self.idle_timeout_ms.is_some_and(|idle| now_ms.saturating_sub(clock.active_at_ms) >= idle)
    }

    /// Where the watermark would be at `now_ms` if it could go back; `None` while an
    /// active source has no record yet (or there is no source).
    fn candidate(&self, now_ms: i64) -> Option<i64> {
        if !self.state.first_named_at_ms.is_empty() {
            return None; // a shard's other producers may still show up
        }
        let watermark_of = |clock: &ShardClock| clock.newest_ms.map(|n| n.saturating_sub(self.out_of_orderness_ms));
        let mut active = self.clocks().filter(|clock| !self.clock_is_idle(clock, now_ms)).peekable();
        if active.peek().is_some() {
            // The slowest active source holds everyone back; a shard with no record yet holds all.
            return active.map(watermark_of).try_fold(i64::MAX, |low, w| w.map(|w| low.min(w)));
        }
        // Every source is idle: the clock takes over from the newest one, starting when
        // the last one became idle, so the watermark does not jump.
        let idle_timeout = self.idle_timeout_ms?;
        let newest = self.clocks().filter_map(watermark_of).max()?;
        let last_active = self.clocks().map(|clock| clock.active_at_ms).max()?;
        let quiet_for = now_ms.saturating_sub(last_active.saturating_add(idle_timeout)).max(0);
        Some(newest.saturating_add(quiet_for))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1000;
    const DAY: i64 = 86_400 * SECOND;

    #[test]
    fn the_watermark_trails_the_newest_time_by_the_bound() {
        let mut marks = Watermarks::new(5 * SECOND, None);
        assert_eq!(marks.current(), None);
        assert_eq!(marks.observe(0, 100 * SECOND, 0), Some(95 * SECOND));
        assert_eq!(marks.observe(0, 90 * SECOND, 0), Some(95 * SECOND), "an older record does not move it back");
        assert_eq!(marks.observe(0, 110 * SECOND, 0), Some(105 * SECOND));
    }

    #[test]
    fn the_slowest_active_shard_holds_the_watermark_back() {
        let mut marks = Watermarks::new(0, Some(60 * SECOND));
        marks.observe(0, 100 * SECOND, 0);
        assert_eq!(marks.observe(1, 50 * SECOND, 0), Some(100 * SECOND), "never goes back");
        assert_eq!(marks.observe(0, 200 * SECOND, 1), Some(100 * SECOND), "shard 1 is at 50 s");
        assert_eq!(marks.observe(1, 150 * SECOND, 2), Some(150 * SECOND));
    }

    #[test]
    fn a_declared_shard_holds_the_watermark_until_its_first_record_or_the_idle_timeout() {
        let mut marks = Watermarks::new(0, Some(60 * SECOND));
        marks.add_shard(1, 0);
        assert_eq!(marks.observe(0, 100 * SECOND, 30 * SECOND), None);
        assert_eq!(marks.advance(59 * SECOND), None);
        assert_eq!(marks.advance(60 * SECOND), Some(100 * SECOND), "shard 1 is idle");
    }

    #[test]
    fn an_idle_shard_stops_holding_the_watermark_back_until_its_next_record() {
        let mut marks = Watermarks::new(0, Some(60 * SECOND));
        marks.observe(1, 10 * SECOND, 0);
        marks.observe(0, 100 * SECOND, 0);
        assert_eq!(marks.observe(0, 200 * SECOND, 59 * SECOND), Some(10 * SECOND));
        assert_eq!(marks.observe(0, 210 * SECOND, 60 * SECOND), Some(210 * SECOND), "shard 1 has been idle 60 s");
        assert!(marks.is_idle(1, 60 * SECOND) && !marks.is_idle(0, 60 * SECOND));
        assert_eq!(marks.observe(1, 20 * SECOND, 61 * SECOND), Some(210 * SECOND), "back, but never goes back");
        assert!(!marks.is_idle(1, 61 * SECOND));
        assert_eq!(marks.observe(0, 300 * SECOND, 62 * SECOND), Some(210 * SECOND), "shard 1 holds it again");
    }

    #[test]
    fn when_every_shard_is_idle_the_clock_takes_over() {
        let mut marks = Watermarks::new(5 * SECOND, Some(60 * SECOND));
        marks.observe(0, 1000 * SECOND, 0);
        marks.observe(1, 990 * SECOND, 10 * SECOND);
        assert_eq!(marks.advance(69 * SECOND), Some(995 * SECOND), "shard 1 is still active");
        assert_eq!(marks.advance(70 * SECOND), Some(995 * SECOND), "both idle: starts from the newest shard");
        assert_eq!(marks.advance(100 * SECOND), Some(1025 * SECOND));
        assert_eq!(marks.idle_sources(100 * SECOND), 2);
    }

    #[test]
    fn without_an_idle_timeout_a_quiet_shard_holds_the_watermark_forever() {
        let mut marks = Watermarks::new(0, None);
        marks.observe(0, 10 * SECOND, 0);
        marks.observe(1, 100 * SECOND, 0);
        assert_eq!(marks.advance(i64::MAX), Some(10 * SECOND));
        assert!(!marks.is_idle(0, i64::MAX));
    }

    #[test]
    fn a_removed_shard_no_longer_holds_the_watermark_back() {
        let mut marks = Watermarks::new(0, None);
        marks.observe(0, 10 * SECOND, 0);
        marks.observe(1, 100 * SECOND, 0);
        assert_eq!(marks.remove_shard(0, 0), Some(100 * SECOND));
    }

    #[test]
    fn the_time_the_host_was_down_is_not_idleness() {
        let mut marks = Watermarks::new(0, Some(60 * SECOND));
        marks.observe(1, 50 * SECOND, 0);
        marks.observe(0, 100 * SECOND, 10 * SECOND);
        let mut restored = Watermarks::restore(0, Some(60 * SECOND), marks.state().clone(), 3610 * SECOND);
        assert_eq!(restored.advance(3659 * SECOND), Some(50 * SECOND), "shard 1 has been quiet 59 s while up");
        assert_eq!(restored.advance(3660 * SECOND), Some(100 * SECOND), "now it is idle");
        assert_eq!(restored.advance(3670 * SECOND), Some(100 * SECOND), "shard 0 has just become idle too");
        assert_eq!(restored.advance(3680 * SECOND), Some(110 * SECOND), "the clock has taken over");
    }

    #[test]
    fn producers_sharing_a_shard_are_tracked_apart() {
        // Two stations write into shard 0: one live, one shipping a backlog an hour behind.
        let mut marks = Watermarks::new(0, Some(60 * SECOND));
        marks.add_shard(0, 0);
        marks.note(0, Some("live"), 3600 * SECOND, 0);
        assert_eq!(marks.advance(0), None, "the shard's other producers may still show up");
        marks.note(0, Some("backlog"), 10 * SECOND, 30 * SECOND);
        marks.note(0, Some("live"), 3700 * SECOND, 30 * SECOND);
        assert_eq!(marks.advance(60 * SECOND), Some(10 * SECOND), "the backlog holds the watermark back");
        marks.note(0, Some("live"), 3800 * SECOND, 61 * SECOND);
        marks.note(0, Some("backlog"), 20 * SECOND, 61 * SECOND);
        assert_eq!(
            marks.advance(61 * SECOND),
            Some(20 * SECOND),
            "it moves with the slowest producer, not the shard's jumps"
        );
        assert_eq!((marks.source_watermark("live"), marks.sources()), (Some(3800 * SECOND), 2));
        // The backlog is sent; that station goes quiet and stops holding the others back.
        marks.note(0, Some("live"), 3900 * SECOND, 121 * SECOND);
        assert_eq!(marks.advance(121 * SECOND), Some(3900 * SECOND));
        // A producer that first shows up now is judged against the watermark as it stands.
        marks.note(0, Some("newcomer"), 100 * SECOND, 122 * SECOND);
        assert_eq!(marks.advance(122 * SECOND), Some(3900 * SECOND));
    }

    #[test]
    fn a_declared_shard_waits_for_its_first_record_from_any_source() {
        let mut marks = Watermarks::new(0, None);
        marks.add_shard(0, 0);
        marks.add_shard(1, 0);
        marks.note(0, Some("a"), 100 * SECOND, 0);
        assert_eq!(marks.advance(0), None, "shard 1 has not begun");
        marks.note(1, Some("b"), 50 * SECOND, 0);
        assert_eq!(marks.advance(0), Some(50 * SECOND));
    }

    #[test]
    fn producers_that_start_a_little_apart_are_all_waited_for() {
        // Three agents backfill three days into one shard; the last one starts 20 s late.
        let mut marks = Watermarks::new(0, Some(30 * SECOND));
        marks.add_shard(0, 0);
        marks.note(0, Some("day-3"), 3 * DAY, 0);
        marks.note(0, Some("day-2"), 2 * DAY, 5 * SECOND);
        assert_eq!(marks.advance(5 * SECOND), None);
        marks.note(0, Some("day-1"), DAY, 20 * SECOND);
        marks.note(0, Some("day-3"), 3 * DAY + SECOND, 29 * SECOND);
        marks.note(0, Some("day-2"), 2 * DAY + SECOND, 29 * SECOND);
        assert_eq!(marks.advance(29 * SECOND), None);
        marks.note(0, Some("day-1"), DAY + SECOND, 30 * SECOND);
        assert_eq!(marks.advance(30 * SECOND), Some(DAY + SECOND), "the first day holds the others back");
        // Across a restart the wait goes on where it stopped.
        let mut fresh = Watermarks::new(0, Some(30 * SECOND));
        fresh.add_shard(0, 0);
        fresh.note(0, Some("day-3"), 3 * DAY, 0);
        let mut restored = Watermarks::restore(0, Some(30 * SECOND), fresh.state().clone(), 3600 * SECOND);
        assert_eq!(restored.advance(3629 * SECOND), None, "29 s of waiting while up");
        assert_eq!(restored.advance(3630 * SECOND), Some(3 * DAY));
    }

    #[test]
    fn at_the_end_of_the_input_the_watermark_goes_to_the_newest_time() {
        // A day put within a second: the producers' grace and the bound would hold it back.
        let mut marks = Watermarks::new(5 * SECOND, Some(30 * SECOND));
        marks.add_shard(0, 0);
        marks.note(0, Some("station-1"), DAY - 3 * SECOND, 0);
        marks.note(0, Some("station-2"), DAY - 20 * SECOND, 0);
        assert_eq!(marks.advance(SECOND), None, "waiting for other producers");
        assert_eq!(marks.end_input(), Some(DAY - 3 * SECOND), "nothing more will come");
        assert_eq!(marks.advance(2 * SECOND), Some(DAY - 3 * SECOND), "and it does not go back");
    }

    #[test]
    fn named_sources_are_bounded() {
        let mut marks = Watermarks::new(0, None);
        for i in 0..=MAX_SOURCES as i64 {
            marks.note(0, Some(&format!("s{i}")), 1000 * SECOND + i, i);
        }
        assert_eq!(marks.sources(), MAX_SOURCES);
        assert_eq!(marks.source_watermark("s0"), None, "the quietest one is forgotten");
    }

    #[test]
    fn the_time_source_picks_the_time() {
        assert_eq!(TimeSource::EventTime.pick(1, 2), 1);
        assert_eq!(TimeSource::ArrivalTime.pick(1, 2), 2);
    }
}
