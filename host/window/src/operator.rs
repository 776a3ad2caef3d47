//! The window operator: open windows and their per-key states, routing records into
//! them, firing them in order as the watermark passes, keeping them for late records
//! within the allowed lateness, and snapshots to restart from.
//!
//! # Panes
//!
//! A window's results go out in panes, as in Beam and Flink. The on-time pane
//! (revision 0) fires once the watermark passes the window's end, with every key
//! (and every expected key). With an allowed lateness, the window is then kept until
//! the watermark passes its end plus the lateness: a late record still folds into its
//! state, and the window fires again at the end of that batch, for the keys that
//! changed only, as revision 1, 2, ... Each pane holds a key's whole state so far
//! (accumulating): a consumer replaces what it had for that (window, key), which is
//! right however often a pane is repeated after a restart. Past the lateness a
//! record is late and set aside with the reason.
//!
//! An aggregator stage drives it per batch:
//!
//! 1. [`WindowOperator::plan_fold`] routes the batch's records and groups them by
//!    (window, key) in the shape of the plugin's `fold(input, groups, states)`: `rows`
//!    says which record each input row repeats (a sliding-window record is folded once per
//!    window), `groups` which state each row folds into. Late records come back in
//!    `set_aside`, with the reason, for the stage's side output.
//! 2. The stage calls `fold`, which overwrites the plan's states, and hands the plan back
//!    to [`WindowOperator::apply_fold`], where the watermark takes in the records' times.
//!    If the fold fails, [`WindowOperator::undo_fold`] puts the states back and nothing
//!    changes: the records can be folded again (or in parts) as if never seen.
//! 3. [`WindowOperator::close_due`] (or [`WindowOperator::pop_due`] one at a time) gives
//!    the panes due: windows the watermark has passed, and windows late records
//!    changed, each with its keys and states for `emit`.
//! 4. [`WindowOperator::snapshot`] goes into the checkpoint with the input positions.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::watermark::WatermarkState;
use super::{MAX_TIME_MS, Watermarks, Window, WindowError, WindowKind, WindowSpec, format_span, format_time, span_ms};

/// The version of the snapshot layout [`WindowOperator::snapshot`] writes: 2 adds the
/// windows kept after firing (format 1, which has none, is still read).
const SNAPSHOT_FORMAT: u32 = 2;

/// Where a record goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Into these windows, earliest first: every window holding its time that is still
    /// open.
    Windows(Vec<Window>),
    /// Every window holding its time has closed (the watermark passed its end plus the
    /// allowed lateness): the record is set aside with the reason.
    Late {
        /// Which window closed and where the watermark is, for people.
        reason: String,
    },
    /// Its time cannot be placed in a window (before 1970, or too far ahead of the host's
    /// clock): the record is set aside with the reason.
    Refused {
        /// What is wrong with the time, for people.
        reason: String,
    },
}

/// One record of a batch to fold, as [`WindowOperator::plan_fold`] needs it.
#[derive(Debug, Clone, Copy)]
pub struct FoldRecord<'a> {
    /// The shard it was read from.
    pub shard: u32,
    /// The producer it names, if any: watermarks are kept per source.
    pub source: Option<&'a str>,
    /// The key it is aggregated under.
    pub key: &'a str,
    /// Its time per the stage's [`super::TimeSource`].
    pub time_ms: i64,
}

/// A record of a batch that goes to the side output instead of a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    /// Its index in the batch.
    pub index: usize,
    /// Why, for people.
    pub reason: String,
}

/// A batch routed and grouped for the plugin's `fold(input, groups, states)`. The
/// groups' states are moved out of the operator into the plan: the fold overwrites
/// them, and [`WindowOperator::apply_fold`] puts them back ([`WindowOperator::undo_fold`]
/// when the fold failed: they are as they were).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FoldPlan<'a> {
    /// For each row of the fold's input, the index of the batch record it is.
    pub rows: Vec<usize>,
    /// For each row of the fold's input, the index of the state it folds into.
    pub groups: Vec<u32>,
    /// The (window, key) of each state.
    pub group_keys: Vec<(Window, &'a str)>,
    /// The state of each group (empty for a new one): the fold's input and output.
    pub states: Vec<Vec<u8>>,
    /// Records that are late or refused, with the reason.
    pub set_aside: Vec<SetAside>,
    /// The time of each record placed (shard, source, time), for the watermark once the fold is done.
    seen: Vec<(u32, Option<&'a str>, i64)>,
    /// The host's clock when the plan was made.
    now_ms: i64,
}

/// A window's results due: hand it to the plugin's `emit`. See the module doc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pane {
    /// Its bounds.
    pub window: Window,
    /// Its keys in order: every key (and expected key) in the on-time pane, the keys
    /// late records changed in a later one.
    pub keys: Vec<String>,
    /// `states[i]` belongs to `keys[i]`: all the key's records so far (empty for a key
    /// that had none).
    pub states: Vec<Vec<u8>>,
    /// 0 for the on-time pane, then 1, 2, ... for each firing late records caused.
    pub revision: u32,
}

/// What the operator holds, for the stage's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct WindowMetrics {
    /// The operator's watermark; `None` until the first.
    pub watermark_ms: Option<i64>,
    /// Windows with at least one state, not yet fired.
    pub open_windows: usize,
    /// Windows fired and kept for late records (until their allowed lateness passes).
    pub kept_windows: usize,
    /// (window, key) states held, in open and kept windows.
    pub open_keys: usize,
    /// Bytes of those states.
    pub state_bytes: usize,
    /// Sources (producers, and shards for records that name none) the watermark follows.
    pub sources: usize,
    /// Of those, the ones not holding the watermark back because they are idle.
    pub idle_sources: usize,
}

/// Why [`WindowOperator::rewrite_states`] changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError<E> {
    /// The rewrite failed.
    #[error("{0}")]
    Failed(E),
    /// It returned the wrong number of states.
    #[error("{returned} states returned for {states}")]
    Count {
        /// States handed over.
        states: usize,
        /// States returned.
        returned: usize,
    },
}

/// Why a record goes to no window ([`Route::Late`] and [`Route::Refused`]).
enum NotPlaced {
    Late { reason: String },
    Refused { reason: String },
}

/// One window's states by key. A hash map of boxed keys: millions of keys cost less than
/// in a sorted map; keys are sorted once, when the window closes.
/// Hashed with foldhash (seeded at random per process): several times faster than
/// SipHash on short keys, and the fold looks a state up twice per record.
type States = HashMap<Box<str>, Vec<u8>, foldhash::fast::RandomState>;

/// A window that fired on time, kept until the watermark passes its end plus the
/// allowed lateness: late records still fold into its states.
#[derive(Debug, Default)]
struct Kept {
    states: States,
    /// The revision of its last pane (0: only the on-time one).
    revision: u32,
    /// Keys whose state late records changed since its last pane.
    changed: BTreeSet<Box<str>>,
}

/// Open windows and their per-key states; see the [module docs](super) for the semantics.
#[derive(Debug)]
pub struct WindowOperator {
    spec: WindowSpec,
    allowed_lateness_ms: i64,
    max_ahead_ms: Option<i64>,
    watermarks: Watermarks,
    /// Open windows by start (the order they fire in), each with its states by key.
    open: BTreeMap<Window, States>,
    /// Windows fired on time and kept for late records, by start.
    kept: BTreeMap<Window, Kept>,
    /// The earliest window a record was routed to: with expected keys, every window from
    /// it on fires, records or not.
    first_window: Option<Window>,
    /// The end of the last window fired on time: none at or before it fires on time
    /// again, and only the kept ones take records.
    last_fired_end: Option<i64>,
    /// Keys of the window closed last: a new window's map starts that big, not growing
    /// (and rehashing) its way there.
    last_closed_keys: usize,
    expected_keys: BTreeSet<String>,
}

impl WindowOperator {
    /// An operator with no window open yet.
    pub fn new(spec: WindowSpec) -> Result<Self, WindowError> {
        spec.validate()?;
        let idle_timeout_ms = spec.idle_timeout.map(|idle| span_ms("idle-timeout", idle)).transpose()?;
        Ok(WindowOperator {
            allowed_lateness_ms: span_ms("allowed-lateness", spec.allowed_lateness)?,
            max_ahead_ms: spec.max_ahead.map(|ahead| span_ms("max-ahead", ahead)).transpose()?,
            watermarks: Watermarks::new(span_ms("out-of-orderness", spec.out_of_orderness)?, idle_timeout_ms),
            spec,
            open: BTreeMap::new(),
            kept: BTreeMap::new(),
            first_window: None,
            last_fired_end: None,
            last_closed_keys: 0,
            expected_keys: BTreeSet::new(),
        })
    }

    /// The spec it runs.
    pub fn spec(&self) -> &WindowSpec {
        &self.spec
    }

    /// Keys every closed window must hold, with an empty state when they had no record
    /// (e.g. every station of the reference table). Not part of the snapshot: the stage
    /// sets them again after a restart.
    pub fn set_expected_keys(&mut self, keys: BTreeSet<String>) {
        self.expected_keys = keys;
    }

    /// Declares a shard the stage reads: it holds the watermark back from now until its
    /// first record or the idle timeout.
    pub fn add_shard(&mut self, shard: u32, now_ms: i64) {
        self.watermarks.add_shard(shard, now_ms);
    }

    /// Forgets a shard that will have no more records (a closed parent after a reshard).
    pub fn remove_shard(&mut self, shard: u32, now_ms: i64) {
        self.watermarks.remove_shard(shard, now_ms);
    }

    /// The operator's watermark; `None` until the first.
    pub fn watermark(&self) -> Option<i64> {
        self.watermarks.current()
    }

    /// Decides where a record read from `shard` with time `time_ms` goes, taking its time
    /// into the watermark. Does not open a window: folding states does.
    pub fn route(&mut self, shard: u32, time_ms: i64, now_ms: i64) -> Route {
        let route = self.place(time_ms, now_ms);
        if !matches!(route, Route::Refused { .. }) {
            self.watermarks.note(shard, None, time_ms, now_ms);
        }
        self.watermarks.advance(now_ms);
        route
    }

    /// Where a record with time `time_ms` goes, leaving the watermark as it is
    /// (the caller lets it take the time in).
    fn place(&mut self, time_ms: i64, now_ms: i64) -> Route {
        let mut open = Vec::new();
        match self.place_into(time_ms, now_ms, &mut open) {
            Ok(()) => Route::Windows(open),
            Err(NotPlaced::Late { reason }) => Route::Late { reason },
            Err(NotPlaced::Refused { reason }) => Route::Refused { reason },
        }
    }

    /// [`WindowOperator::place`] into a buffer the caller reuses, so a batch
    /// allocates nothing per record: fills `open` with the windows the record goes
    /// to, or says why it goes to none.
    fn place_into(&mut self, time_ms: i64, now_ms: i64, open: &mut Vec<Window>) -> Result<(), NotPlaced> {
        open.clear();
        if !(0..=MAX_TIME_MS).contains(&time_ms) {
            return Err(NotPlaced::Refused {
                reason: format!(
                    "time {} is outside 1970-01-01 to 9999-12-31: it cannot be placed in a window",
                    format_time(time_ms)
                ),
            });
        }
        if let Some(ahead) = self.max_ahead_ms
            && time_ms > now_ms.saturating_add(ahead)
        {
            return Err(NotPlaced::Refused {
                reason: format!(
                    "time {} is {} ahead of the host's clock ({}), more than the max-ahead of {}: \
                     it would close every window up to it",
                    format_time(time_ms),
                    format_span(time_ms - now_ms),
                    format_time(now_ms),
                    format_span(ahead)
                ),
            });
        }
        open.extend(self.spec.kind.assign(time_ms).filter(|window| !self.is_closed(*window)));
        let Some(&earliest) = open.first() else {
            let holding: Vec<Window> = self.spec.kind.assign(time_ms).collect();
            return Err(NotPlaced::Late { reason: self.late_reason(time_ms, &holding) });
        };
        self.first_window = Some(self.first_window.map_or(earliest, |first| first.min(earliest)));
        Ok(())
    }

    /// The state of `key` in `window`, created empty if absent, for a caller that folds
    /// natively (in a kept window, the key fires again). Opening a window the spec never
    /// produces, or one already closed, fails.
    pub fn state_mut(&mut self, window: Window, key: &str) -> Result<&mut Vec<u8>, WindowError> {
        self.check_writable(window)?;
        if let Some(kept) = self.kept.get_mut(&window) {
            kept.changed.insert(Box::from(key));
            return Ok(kept.states.entry(Box::from(key)).or_default());
        }
        self.first_window = Some(self.first_window.map_or(window, |first| first.min(window)));
        Ok(self.open.entry(window).or_default().entry(Box::from(key)).or_default())
    }

    /// Routes a batch and groups its records by (window, key) for the plugin's `fold`;
    /// see [`FoldPlan`].
    pub fn plan_fold<'a>(&mut self, records: impl IntoIterator<Item = FoldRecord<'a>>, now_ms: i64) -> FoldPlan<'a> {
        let records = records.into_iter();
        let expected = records.size_hint().0;
        let mut plan = FoldPlan {
            rows: Vec::with_capacity(expected),
            groups: Vec::with_capacity(expected),
            group_keys: Vec::with_capacity(expected),
            states: Vec::with_capacity(expected),
            set_aside: Vec::new(),
            seen: Vec::with_capacity(expected),
            now_ms,
        };
        let mut group_of: HashMap<(Window, &'a str), u32, foldhash::fast::RandomState> =
            HashMap::with_capacity_and_hasher(expected, Default::default());
        let mut windows = Vec::new();
        for (index, record) in records.enumerate() {
            match self.place_into(record.time_ms, now_ms, &mut windows) {
                Ok(()) => {}
                Err(NotPlaced::Late { reason }) => {
                    plan.seen.push((record.shard, record.source, record.time_ms));
                    plan.set_aside.push(SetAside { index, reason });
                    continue;
                }
                Err(NotPlaced::Refused { reason }) => {
                    plan.set_aside.push(SetAside { index, reason });
                    continue;
                }
            }
            plan.seen.push((record.shard, record.source, record.time_ms));
            for &window in &windows {
                let group = *group_of.entry((window, record.key)).or_insert_with(|| {
                    // Moved out, not copied: apply_fold puts it back.
                    let state = match self.kept.get_mut(&window) {
                        Some(kept) => kept.states.get_mut(record.key),
                        None => self.open.get_mut(&window).and_then(|states| states.get_mut(record.key)),
                    };
                    plan.states.push(state.map(std::mem::take).unwrap_or_default());
                    plan.group_keys.push((window, record.key));
                    // A batch holds far fewer than 2^32 records.
                    (plan.group_keys.len() - 1) as u32
                });
                plan.rows.push(index);
                plan.groups.push(group);
            }
        }
        plan
    }

    /// Puts the plan's folded states back into their windows, and lets the watermark
    /// take in the batch's times. Nothing can fire a window between `plan_fold` and
    /// this. A kept window's changed keys fire again at the next [`WindowOperator::pop_due`].
    pub fn apply_fold(&mut self, mut plan: FoldPlan<'_>) {
        for (shard, source, time_ms) in std::mem::take(&mut plan.seen) {
            self.watermarks.note(shard, source, time_ms, plan.now_ms);
        }
        self.watermarks.advance(plan.now_ms);
        self.put_back(plan, true);
    }

    /// Puts the plan's states back as they were, after the fold failed: the
    /// watermark has not seen its records, which can be folded again.
    pub fn undo_fold(&mut self, plan: FoldPlan<'_>) {
        self.put_back(plan, false);
    }

    fn put_back(&mut self, plan: FoldPlan<'_>, folded: bool) {
        let capacity = self.last_closed_keys;
        for ((window, key), state) in plan.group_keys.into_iter().zip(plan.states) {
            if let Some(kept) = self.kept.get_mut(&window) {
                if folded && !state.is_empty() {
                    kept.changed.insert(Box::from(key));
                    kept.states.insert(Box::from(key), state);
                }
                continue;
            }
            let states = self
                .open
                .entry(window)
                .or_insert_with(|| States::with_capacity_and_hasher(capacity, Default::default()));
            match states.get_mut(key) {
                Some(slot) => *slot = state,
                // Still empty: every record of this group was set aside.
                None if state.is_empty() => {}
                None => {
                    states.insert(Box::from(key), state);
                }
            }
        }
    }

    /// Lets idle shards stop holding the watermark back at `now_ms`; returns the watermark.
    pub fn advance(&mut self, now_ms: i64) -> Option<i64> {
        self.watermarks.advance(now_ms)
    }

    /// The input has ended: the watermark moves up to the newest event time seen
    /// ([`Watermarks::end_input`]), so every window the records complete is due.
    pub fn end_input(&mut self) -> Option<i64> {
        self.watermarks.end_input()
    }

    /// The next pane due, if any: first the kept windows late records changed (oldest
    /// first), then the next window the watermark has passed. Kept windows whose allowed
    /// lateness has passed are freed on the way. Call it until `None` after
    /// [`WindowOperator::advance`]; one pane at a time keeps a long run of empty windows
    /// (expected keys after a long gap) from piling up.
    pub fn pop_due(&mut self) -> Option<Pane> {
        let watermark = self.watermarks.current()?;
        if let Some(pane) = self.pop_late_pane() {
            return Some(pane);
        }
        let lateness = self.allowed_lateness_ms;
        while let Some(entry) = self.kept.first_entry() {
            if entry.key().end.saturating_add(lateness) > watermark {
                break;
            }
            entry.remove();
        }
        let first_open_end = self.open.first_key_value().map(|(window, _)| window.end);
        let end = if self.expected_keys.is_empty() {
            first_open_end?
        } else {
            // Every window in turn from the first one seen, records or not.
            let next_in_turn = match self.last_fired_end {
                Some(last) => last.saturating_add(self.spec.kind.slide_ms()),
                None => self.first_window?.end,
            };
            first_open_end.map_or(next_in_turn, |open_end| open_end.min(next_in_turn))
        };
        if end > watermark {
            return None;
        }
        let window = self.spec.kind.window_ending_at(end);
        let mut states = self.open.remove(&window).unwrap_or_default();
        for key in &self.expected_keys {
            states.entry(Box::from(key.as_str())).or_default();
        }
        self.last_fired_end = Some(end);
        self.last_closed_keys = states.len();
        let mut sorted: Vec<(Box<str>, Vec<u8>)> = states.into_iter().collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if end.saturating_add(lateness) > watermark {
            // Kept for late records: they fold into what the window has so far.
            let states = sorted.iter().filter(|(_, state)| !state.is_empty()).cloned().collect();
            self.kept.insert(window, Kept { states, ..Kept::default() });
        }
        let (keys, states) = sorted.into_iter().map(|(key, state)| (key.into_string(), state)).unzip();
        Some(Pane { window, keys, states, revision: 0 })
    }

    /// The next revision of the oldest kept window late records changed.
    fn pop_late_pane(&mut self) -> Option<Pane> {
        let (&window, kept) = self.kept.iter_mut().find(|(_, kept)| !kept.changed.is_empty())?;
        kept.revision += 1;
        let changed = std::mem::take(&mut kept.changed);
        let states = changed.iter().map(|key| kept.states.get(key).cloned().unwrap_or_default()).collect();
        let keys = changed.into_iter().map(String::from).collect();
        Some(Pane { window, keys, states, revision: kept.revision })
    }

    /// Advances to `now_ms` and gives every pane due, in order.
    pub fn close_due(&mut self, now_ms: i64) -> Vec<Pane> {
        self.advance(now_ms);
        std::iter::from_fn(|| self.pop_due()).collect()
    }

    /// Rewrites every (window, key) state held, open or kept, at once, for a plugin
    /// swap that migrates them: `rewrite` gets them all and returns one per input, in
    /// the same order. All or nothing: on an error no state changes.
    pub fn rewrite_states<E>(
        &mut self,
        rewrite: impl FnOnce(Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, E>,
    ) -> Result<(), RewriteError<E>> {
        let states: Vec<Vec<u8>> = self.all_states().cloned().collect();
        let count = states.len();
        let rewritten = rewrite(states).map_err(RewriteError::Failed)?;
        if rewritten.len() != count {
            return Err(RewriteError::Count { states: count, returned: rewritten.len() });
        }
        // The maps have not changed since they were read: same iteration order.
        let open = self.open.values_mut().flat_map(HashMap::values_mut);
        let kept = self.kept.values_mut().flat_map(|kept| kept.states.values_mut());
        for (slot, state) in open.chain(kept).zip(rewritten) {
            *slot = state;
        }
        Ok(())
    }

    /// Drops the states of every open and kept window (a plugin swap that resets them)
    /// and says how many there were. The windows still fire, with empty states; late
    /// records then start kept windows' states afresh.
    pub fn reset_states(&mut self) -> usize {
        let open: usize = self.open.values_mut().map(|states| std::mem::take(states).len()).sum();
        let kept: usize = self.kept.values_mut().map(|kept| std::mem::take(&mut kept.states).len()).sum();
        open + kept
    }

    /// Every state held: the open windows' and then the kept ones'.
    fn all_states(&self) -> impl Iterator<Item = &Vec<u8>> {
        let open = self.open.values().flat_map(HashMap::values);
        open.chain(self.kept.values().flat_map(|kept| kept.states.values()))
    }

    /// What the operator holds at `now_ms`.
    pub fn metrics(&self, now_ms: i64) -> WindowMetrics {
        WindowMetrics {
            watermark_ms: self.watermarks.current(),
            open_windows: self.open.len(),
            kept_windows: self.kept.len(),
            open_keys: self.open.values().map(HashMap::len).sum::<usize>()
                + self.kept.values().map(|kept| kept.states.len()).sum::<usize>(),
            state_bytes: self.all_states().map(Vec::len).sum(),
            sources: self.watermarks.sources(),
            idle_sources: self.watermarks.idle_sources(now_ms),
        }
    }

    /// Everything needed to continue after a restart exactly as without one (JSON).
    pub fn snapshot(&self) -> Vec<u8> {
        let base64 = base64::engine::general_purpose::STANDARD;
        let snapshot = Snapshot {
            format: SNAPSHOT_FORMAT,
            windows: self.spec.kind,
            watermarks: self.watermarks.state().clone(),
            first_window: self.first_window,
            last_closed_end: self.last_fired_end,
            open: self
                .open
                .iter()
                .map(|(window, states)| SavedWindow {
                    start: window.start,
                    end: window.end,
                    states: states.iter().map(|(key, state)| (key.to_string(), base64.encode(state))).collect(),
                })
                .collect(),
            kept: self
                .kept
                .iter()
                .map(|(window, kept)| SavedKept {
                    start: window.start,
                    end: window.end,
                    revision: kept.revision,
                    changed: kept.changed.iter().map(|key| key.to_string()).collect(),
                    states: kept.states.iter().map(|(key, state)| (key.to_string(), base64.encode(state))).collect(),
                })
                .collect(),
        };
        serde_json::to_vec(&snapshot).expect("a snapshot is plain data with string keys, which always serializes")
    }

    /// An operator continuing from `snapshot` at `now_ms`, with `spec` (whose windows must
    /// be the snapshot's; its bounds may have changed). The time the host was down does
    /// not count towards the idle timeout.
    pub fn restore(spec: WindowSpec, snapshot: &[u8], now_ms: i64) -> Result<Self, WindowError> {
        let saved: Snapshot = serde_json::from_slice(snapshot).map_err(|e| WindowError::Snapshot(e.to_string()))?;
        if !(1..=SNAPSHOT_FORMAT).contains(&saved.format) {
            return Err(WindowError::Snapshot(format!(
                "it has format {}, this host reads formats 1 to {SNAPSHOT_FORMAT}",
                saved.format
            )));
        }
        if saved.windows != spec.kind {
            return Err(WindowError::SnapshotKindChanged {
                saved: saved.windows.to_string(),
                current: spec.kind.to_string(),
            });
        }
        let mut operator = WindowOperator::new(spec)?;
        let base64 = base64::engine::general_purpose::STANDARD;
        for saved_window in saved.open {
            let window = Window { start: saved_window.start, end: saved_window.end };
            if !operator.spec.kind.produces(window) || saved.last_closed_end.is_some_and(|last| window.end <= last) {
                return Err(WindowError::Snapshot(format!("{window} cannot be open")));
            }
            let mut states = States::default();
            for (key, state) in saved_window.states {
                let state = base64.decode(&state).map_err(|e| WindowError::Snapshot(format!("{window}: {e}")))?;
                states.insert(key.into_boxed_str(), state);
            }
            operator.open.insert(window, states);
        }
        for saved_kept in saved.kept {
            let window = Window { start: saved_kept.start, end: saved_kept.end };
            if !operator.spec.kind.produces(window) || saved.last_closed_end.is_none_or(|last| window.end > last) {
                return Err(WindowError::Snapshot(format!("{window} cannot be kept: it has not fired")));
            }
            let mut kept = Kept { revision: saved_kept.revision, ..Kept::default() };
            kept.changed = saved_kept.changed.into_iter().map(String::into_boxed_str).collect();
            for (key, state) in saved_kept.states {
                let state = base64.decode(&state).map_err(|e| WindowError::Snapshot(format!("{window}: {e}")))?;
                kept.states.insert(key.into_boxed_str(), state);
            }
            operator.kept.insert(window, kept);
        }
        operator.watermarks = Watermarks::restore(
            span_ms("out-of-orderness", operator.spec.out_of_orderness)?,
            operator.spec.idle_timeout.map(|idle| span_ms("idle-timeout", idle)).transpose()?,
            saved.watermarks,
            now_ms,
        );
        operator.first_window = saved.first_window;
        operator.last_fired_end = saved.last_closed_end;
        Ok(operator)
    }

    /// Whether `window` has closed or is due to: records for it are late. A window that
    /// fired is closed unless it is kept; any is once its allowed lateness has passed.
    fn is_closed(&self, window: Window) -> bool {
        let due = self
            .watermarks
            .current()
            .is_some_and(|watermark| window.end.saturating_add(self.allowed_lateness_ms) <= watermark);
        self.fired_and_gone(window) || due
    }

    /// Whether `window` fired and was not kept (or no longer is).
    fn fired_and_gone(&self, window: Window) -> bool {
        self.last_fired_end.is_some_and(|last| window.end <= last) && !self.kept.contains_key(&window)
    }

    /// States may be written to `window`: one of the spec's, open or kept.
    fn check_writable(&self, window: Window) -> Result<(), WindowError> {
        if !self.spec.kind.produces(window) {
            return Err(WindowError::NotAWindow { window, kind: self.spec.kind.to_string() });
        }
        if self.fired_and_gone(window) {
            return Err(WindowError::WindowClosed { window });
        }
        Ok(())
    }

    fn late_reason(&self, time_ms: i64, holding: &[Window]) -> String {
        let watermark = self.watermarks.current().map_or_else(|| "not set".to_owned(), format_time);
        let closed = match holding {
            [only] => format!("its {only} has closed"),
            [.., last] => format!("all {} windows holding it have closed, the last being {last}", holding.len()),
            [] => "it is in no window".to_owned(),
        };
        format!(
            "late: time {} is behind the watermark {watermark} (allowed lateness {}): {closed}",
            format_time(time_ms),
            format_span(self.allowed_lateness_ms)
        )
    }
}

/// The layout of [`WindowOperator::snapshot`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot {
    format: u32,
    windows: WindowKind,
    watermarks: WatermarkState,
    first_window: Option<Window>,
    /// The end of the last window fired on time.
    last_closed_end: Option<i64>,
    open: Vec<SavedWindow>,
    /// Windows fired and kept for late records (format 2).
    #[serde(default)]
    kept: Vec<SavedKept>,
}

/// A kept window in a snapshot: its last revision, the keys changed since, its states.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedKept {
    start: i64,
    end: i64,
    revision: u32,
    changed: Vec<String>,
    states: BTreeMap<String, String>,
}

/// An open window in a snapshot, its states in base64 by key.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedWindow {
    start: i64,
    end: i64,
    states: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MINUTE: i64 = 60_000;
    /// 2026-11-26T14:00:00Z.
    const T0: i64 = 1_795_701_600_000;

    fn tumbling(minutes: u64) -> WindowSpec {
        WindowSpec::new(WindowKind::tumbling(Duration::from_secs(60 * minutes)).expect("valid size"))
    }

    fn window(start_minute: i64, minutes: i64) -> Window {
        Window { start: T0 + start_minute * MINUTE, end: T0 + (start_minute + minutes) * MINUTE }
    }

    /// Folds one record natively: the state is a count, one byte per record.
    fn count(operator: &mut WindowOperator, shard: u32, key: &str, time_ms: i64) -> Route {
        let route = operator.route(shard, time_ms, time_ms);
        if let Route::Windows(windows) = &route {
            for window in windows {
                operator.state_mut(*window, key).expect("an open window").push(1);
            }
        }
        route
    }

    fn counts(closed: &Pane) -> Vec<(&str, usize)> {
        closed.keys.iter().map(String::as_str).zip(closed.states.iter().map(Vec::len)).collect()
    }

    #[test]
    fn producers_hours_apart_in_one_shard_lose_no_record_as_late() {
        // Twelve stations' logs, each an hour behind the next, sent in batches of 500
        // lines a file, the files in turn: the shard's time jumps by hours at every batch.
        let mut operator = WindowOperator::new(tumbling(10)).expect("valid spec");
        operator.add_shard(0, T0 + 12 * 60 * MINUTE);
        let stations: Vec<String> = (0..12).map(|s| format!("station-{s}")).collect();
        let mut batches = Vec::new();
        for first in (0..3000).step_by(500) {
            for (hour, station) in (0..).zip(&stations) {
                let batch: Vec<FoldRecord<'_>> = (first..first + 500)
                    .map(|i| FoldRecord {
                        shard: 0,
                        source: Some(station),
                        key: "C1",
                        time_ms: T0 + hour * 60 * MINUTE + i * 1000,
                    })
                    .collect();
                batches.push(batch);
            }
        }
        let mut folded = 0;
        for (n, batch) in batches.into_iter().enumerate() {
            let now = T0 + 12 * 60 * MINUTE + n as i64;
            let mut plan = operator.plan_fold(batch, now);
            assert!(plan.set_aside.is_empty(), "batch {n}: {:?}", plan.set_aside.first());
            folded += plan.rows.len();
            for state in &mut plan.states {
                state.push(1);
            }
            operator.apply_fold(plan);
            operator.close_due(now);
        }
        assert_eq!(folded, 12 * 3000);
        assert!(operator.watermark() <= Some(T0 + 2999 * 1000), "held by the slowest station");
    }

    #[test]
    fn windows_close_in_order_once_the_watermark_passes_their_end() {
        let mut operator = WindowOperator::new(tumbling(10)).expect("valid spec");
        count(&mut operator, 0, "C1", T0 + MINUTE);
        count(&mut operator, 0, "C2", T0 + 2 * MINUTE);
        count(&mut operator, 0, "C1", T0 + 12 * MINUTE);
        assert_eq!(operator.close_due(T0 + 12 * MINUTE).len(), 1);
        count(&mut operator, 0, "C1", T0 + 19 * MINUTE);
        assert!(operator.close_due(T0 + 19 * MINUTE).is_empty(), "the watermark is before 14:20");
        count(&mut operator, 0, "C3", T0 + 20 * MINUTE);
        let closed = operator.close_due(T0 + 20 * MINUTE);
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].window, counts(&closed[0])), (window(10, 10), vec![("C1", 2)]));
    }

    #[test]
    fn a_rewrite_changes_every_open_state_or_none() {
        let mut operator = WindowOperator::new(tumbling(10)).expect("valid spec");
        for (key, minute) in [("a", 1), ("b", 2), ("a", 3), ("a", 12)] {
            count(&mut operator, 0, key, T0 + minute * MINUTE);
        }
        let failed = operator.rewrite_states(|_| Err::<Vec<Vec<u8>>, _>("no"));
        assert!(matches!(failed, Err(RewriteError::Failed("no"))));
        let short = operator.rewrite_states(|_| Ok::<_, ()>(vec![]));
        assert!(matches!(short, Err(RewriteError::Count { states: 3, returned: 0 })));
        // Each count of n bytes becomes n bytes of 2.
        operator.rewrite_states(|states| Ok::<_, ()>(states.iter().map(|s| vec![2; s.len()]).collect())).expect("ok");
        count(&mut operator, 0, "a", T0 + 25 * MINUTE);
        let closed = operator.close_due(T0 + 25 * MINUTE);
        assert_eq!(closed[0].states, [vec![2, 2], vec![2]], "a: 2 records, b: 1");
        assert_eq!(closed[1].states, [vec![2]]);
    }

    #[test]
    fn a_reset_drops_the_open_states_and_the_windows_still_close() {
        let mut operator = WindowOperator::new(tumbling(10)).expect("valid spec");
        operator.set_expected_keys(["a".to_owned()].into());
        count(&mut operator, 0, "a", T0 + MINUTE);
        count(&mut operator, 0, "b", T0 + 2 * MINUTE);
        assert_eq!(operator.reset_states(), 2);
        count(&mut operator, 0, "b", T0 + 3 * MINUTE);
        count(&mut operator, 0, "c", T0 + 10 * MINUTE);
        let closed = operator.close_due(T0 + 10 * MINUTE);
        assert_eq!(counts(&closed[0]), [("a", 0), ("b", 1)], "only the record after the reset counts");
    }

    #[test]
    fn a_closed_window_holds_its_keys_in_order() {
        let mut operator = WindowOperator::new(tumbling(10)).expect("valid spec");
        for key in ["b", "a", "b"] {
            count(&mut operator, 0, key, T0);
        }
        count(&mut operator, 0, "c", T0 + 10 * MINUTE);
        let closed = operator.close_due(T0 + 10 * MINUTE);
        assert_eq!(counts(&closed[0]), [("a", 1), ("b", 2)]);
    }

    #[test]
    fn a_record_for_a_closed_window_is_late_with_the_window_and_watermark() {
        let mut operator = WindowOperator::new(tumbling(10)).expect("valid spec");
        count(&mut operator, 0, "C1", T0 + 25 * MINUTE);
        let Route::Late { reason } = count(&mut operator, 0, "C1", T0 + 3 * MINUTE) else {
            panic!("the 14:00 window closed when the watermark reached 14:25");
        };
        assert_eq!(
            reason,
            "late: time 2026-11-26T14:03:00.000Z is behind the watermark 2026-11-26T14:25:00.000Z \
             (allowed lateness 0s): its window [2026-11-26T14:00:00.000Z, 2026-11-26T14:10:00.000Z) has closed"
        );
        assert_eq!(operator.metrics(T0).open_keys, 1, "the late record opened nothing");
    }

    #[test]
    fn a_late_record_within_the_allowed_lateness_revises_the_window_for_its_key() {
        let mut spec = tumbling(10);
        spec.allowed_lateness = Duration::from_secs(60);
        let mut operator = WindowOperator::new(spec).expect("valid spec");
        count(&mut operator, 0, "C1", T0 + MINUTE);
        count(&mut operator, 0, "C2", T0 + 2 * MINUTE);
        count(&mut operator, 0, "C1", T0 + 10 * MINUTE + 30_000);
        let on_time = operator.close_due(T0);
        assert_eq!(on_time.len(), 1, "fired once the watermark passed its end, not its end plus the lateness");
        assert_eq!((on_time[0].revision, counts(&on_time[0])), (0, vec![("C1", 1), ("C2", 1)]));
        assert_eq!(operator.metrics(T0).kept_windows, 1);

        // Within the lateness: folded into what the window had, and fired again for that key only.
        assert_eq!(count(&mut operator, 0, "C1", T0 + 9 * MINUTE), Route::Windows(vec![window(0, 10)]));
        count(&mut operator, 0, "C1", T0 + 8 * MINUTE);
        let revised = operator.close_due(T0);
        assert_eq!(revised.len(), 1, "one pane for the batch's changes");
        assert_eq!((revised[0].window, revised[0].revision, counts(&revised[0])), (window(0, 10), 1, vec![("C1", 3)]));
        assert!(operator.close_due(T0).is_empty(), "nothing changed since");
        count(&mut operator, 0, "C2", T0 + 9 * MINUTE);
        let again = operator.close_due(T0);
        assert_eq!((again.len(), again[0].revision, counts(&again[0])), (1, 2, vec![("C2", 2)]));

        // Past the lateness the window is gone: a record for it is late.
        count(&mut operator, 0, "C3", T0 + 11 * MINUTE);
        assert!(operator.close_due(T0).is_empty());
        assert_eq!(operator.metrics(T0).kept_windows, 0);
        assert!(matches!(count(&mut operator, 0, "C1", T0 + 9 * MINUTE), Route::Late { .. }));
    }

    /// A record of the property test: (shard, source, key, time, value).
    type Timed = (u32, String, String, i64, i64);

    /// A sum per (window, key): the state is an i64, little-endian.
    fn add(state: &mut Vec<u8>, value: i64) {
        let sum = if state.is_empty() { 0 } else { i64::from_le_bytes(state[..8].try_into().expect("8 bytes")) };
        *state = (sum + value).to_le_bytes().to_vec();
    }

    /// Runs records (shard, source, key, time, value) through the operator in batches of
    /// the sizes given (round robin); returns each (window, key)'s last pane and the count
    /// of records set aside.
    fn final_sums(
        spec: &WindowSpec,
        records: &[Timed],
        batch_sizes: &[usize],
    ) -> (BTreeMap<(Window, String), i64>, usize) {
        let mut operator = WindowOperator::new(spec.clone()).expect("valid spec");
        let mut last: BTreeMap<(Window, String), i64> = BTreeMap::new();
        let mut set_aside = 0;
        let mut rest = records;
        for &size in batch_sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (batch, after) = rest.split_at(size.min(rest.len()));
            rest = after;
            let now = batch.iter().map(|r| r.3).max().unwrap_or(T0);
            let fold = batch.iter().map(|(shard, source, key, time, _)| FoldRecord {
                shard: *shard,
                source: Some(source),
                key,
                time_ms: *time,
            });
            let mut plan = operator.plan_fold(fold, now);
            set_aside += plan.set_aside.len();
            let values: Vec<i64> = batch.iter().map(|r| r.4).collect();
            for (row, group) in plan.rows.iter().zip(&plan.groups) {
                add(&mut plan.states[*group as usize], values[*row]);
            }
            operator.apply_fold(plan);
            for pane in operator.close_due(now) {
                for (key, state) in pane.keys.iter().zip(&pane.states) {
                    let sum = if state.is_empty() { 0 } else { i64::from_le_bytes(state[..8].try_into().expect("8")) };
                    last.insert((pane.window, key.clone()), sum);
                }
            }
        }
        (last, set_aside)
    }

    #[test]
    fn any_arrival_order_within_the_allowed_lateness_ends_with_the_sorted_runs_results() {
        // Property: records whose arrival is at most the allowed lateness after their time,
        // in any order and any batching, give every window the sorted run's final result.
        let mut spec = tumbling(10);
        spec.out_of_orderness = Duration::from_secs(5);
        spec.allowed_lateness = Duration::from_secs(20 * 60);
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = move |below: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % below
        };
        for case in 0..60 {
            let sources: Vec<String> = (0..1 + random(5)).map(|s| format!("station-{s}")).collect();
            let mut records: Vec<Timed> = (0..200 + random(300))
                .map(|_| {
                    let source = sources[random(sources.len() as u64) as usize].clone();
                    let key = format!("C{}", random(7));
                    (random(2) as u32, source, key, T0 + random(3 * 60) as i64 * 30_000, 1 + random(900) as i64)
                })
                .collect();
            records.sort_by_key(|r| r.3);
            let (sorted, none_late) = final_sums(&spec, &records, &[1]);
            assert_eq!(none_late, 0);
            // Each record arrives up to the lateness after its time: sorted by arrival.
            let mut arrivals: Vec<(i64, Timed)> = records
                .iter()
                .map(|r| (r.3 + random(spec.allowed_lateness.as_millis() as u64) as i64, r.clone()))
                .collect();
            arrivals.sort_by_key(|(arrival, _)| *arrival);
            let disordered: Vec<_> = arrivals.into_iter().map(|(_, r)| r).collect();
            let sizes: Vec<usize> = (0..5).map(|_| 1 + random(40) as usize).collect();
            let (revised, late) = final_sums(&spec, &disordered, &sizes);
            assert_eq!(late, 0, "case {case}: nothing arrived later than the allowed lateness");
            // Windows the disordered run's watermark passed have their final result; it is the sorted run's.
            for (window_key, sum) in &revised {
                assert_eq!(sorted.get(window_key), Some(sum), "case {case}: {window_key:?}");
            }
            assert_eq!(revised.len(), sorted.len(), "case {case}: the same windows and keys gave results");
        }
    }

    #[test]
    fn a_sliding_record_late_for_some_windows_goes_to_the_others() {
        let spec = WindowSpec::new(
            WindowKind::sliding(Duration::from_secs(20 * 60), Duration::from_secs(10 * 60)).expect("valid"),
        );
        let mut operator = WindowOperator::new(spec).expect("valid spec");
        count(&mut operator, 0, "k", T0 + 10 * MINUTE);
        assert_eq!(count(&mut operator, 0, "k", T0 + 5 * MINUTE), Route::Windows(vec![window(0, 20)]));
        assert_eq!(count(&mut operator, 0, "k", T0 + 15 * MINUTE), Route::Windows(vec![window(0, 20), window(10, 20)]));
    }

    #[test]
    fn expected_keys_get_a_result_even_in_a_window_without_records() {
        let mut operator = WindowOperator::new(tumbling(30)).expect("valid spec");
        operator.set_expected_keys(["S17".to_owned(), "S18".to_owned()].into());
        count(&mut operator, 0, "S17", T0 + MINUTE);
        count(&mut operator, 0, "S17", T0 + 95 * MINUTE);
        let closed = operator.close_due(T0 + 95 * MINUTE);
        let got: Vec<_> = closed.iter().map(|c| (c.window, counts(c))).collect();
        assert_eq!(
            got,
            [
                (window(0, 30), vec![("S17", 1), ("S18", 0)]),
                (window(30, 30), vec![("S17", 0), ("S18", 0)]),
                (window(60, 30), vec![("S17", 0), ("S18", 0)]),
            ]
        );
    }

    #[test]
    fn without_records_nothing_closes_even_with_expected_keys() {
        let mut operator = WindowOperator::new(tumbling(30)).expect("valid spec");
        operator.set_expected_keys(["S17".to_owned()].into());
        assert!(operator.close_due(T0).is_empty());
    }

    #[test]
    fn a_plan_groups_a_batch_by_window_and_key_for_the_fold() {
        let spec = WindowSpec::new(
            WindowKind::sliding(Duration::from_secs(20 * 60), Duration::from_secs(10 * 60)).expect("valid"),
        );
        let mut operator = WindowOperator::new(spec).expect("valid spec");
        operator.state_mut(window(0, 20), "a").expect("open").push(7);
        let batch = [
            FoldRecord { shard: 0, source: None, key: "a", time_ms: T0 + 12 * MINUTE },
            FoldRecord { shard: 0, source: None, key: "b", time_ms: T0 + 12 * MINUTE },
            FoldRecord { shard: 0, source: None, key: "a", time_ms: T0 + 15 * MINUTE },
            FoldRecord { shard: 0, source: None, key: "a", time_ms: -5 },
        ];
        let plan = operator.plan_fold(batch, T0 + 20 * MINUTE);
        assert_eq!(plan.rows, [0, 0, 1, 1, 2, 2]);
        assert_eq!(plan.groups, [0, 1, 2, 3, 0, 1]);
        let keys: Vec<_> = plan.group_keys.iter().map(|(w, k)| (*w, *k)).collect();
        assert_eq!(keys, [(window(0, 20), "a"), (window(10, 20), "a"), (window(0, 20), "b"), (window(10, 20), "b")]);
        assert_eq!(plan.states, [vec![7], vec![], vec![], vec![]]);
        assert_eq!(plan.set_aside.len(), 1);
        assert!(plan.set_aside[0].reason.contains("outside 1970-01-01"), "{:?}", plan.set_aside);

        let mut plan = plan;
        plan.states = vec![vec![7, 1, 1], vec![1, 1], vec![1], vec![1]];
        operator.apply_fold(plan);
        assert_eq!(
            operator.metrics(T0),
            WindowMetrics {
                watermark_ms: Some(T0 + 15 * MINUTE),
                open_windows: 2,
                kept_windows: 0,
                open_keys: 4,
                state_bytes: 7,
                sources: 1,
                idle_sources: 0
            }
        );
    }

    #[test]
    fn a_record_far_ahead_of_the_clock_is_refused_and_does_not_move_the_watermark() {
        let mut spec = tumbling(10);
        spec.max_ahead = Some(Duration::from_secs(3600));
        let mut operator = WindowOperator::new(spec).expect("valid spec");
        let Route::Refused { reason } = operator.route(0, T0 + 61 * MINUTE, T0) else { panic!("too far ahead") };
        assert!(reason.contains("1h 1m ahead of the host's clock"), "{reason}");
        assert_eq!(operator.watermark(), None);
        assert!(matches!(operator.route(0, T0 + 60 * MINUTE, T0), Route::Windows(_)));
    }

    #[test]
    fn closed_windows_cannot_be_written() {
        let mut operator = WindowOperator::new(tumbling(10)).expect("valid spec");
        count(&mut operator, 0, "a", T0);
        count(&mut operator, 0, "a", T0 + 10 * MINUTE);
        operator.close_due(T0);
        assert!(matches!(operator.state_mut(window(0, 10), "a"), Err(WindowError::WindowClosed { .. })));
        assert!(matches!(operator.state_mut(window(1, 10), "a"), Err(WindowError::NotAWindow { .. })));
    }

    #[test]
    fn a_restored_operator_continues_exactly_like_an_uninterrupted_one() {
        let mut spec = tumbling(10);
        spec.out_of_orderness = Duration::from_secs(30);
        spec.idle_timeout = Some(Duration::from_secs(120));
        spec.allowed_lateness = Duration::from_secs(15 * 60);
        // Some records minutes behind the others: kept windows fire again after a restart too.
        let records: Vec<(u32, &str, i64)> = (0..40)
            .map(|i| (i % 2, ["a", "b", "c"][i as usize % 3], T0 + i as i64 * 97_000 - (i as i64 % 5) * 150_000))
            .collect();
        let run = |restart_at: Option<usize>| {
            let mut operator = WindowOperator::new(spec.clone()).expect("valid spec");
            operator.set_expected_keys(["z".to_owned()].into());
            let mut closed = Vec::new();
            let mut clock = T0;
            for (i, &(shard, key, time)) in records.iter().enumerate() {
                if restart_at == Some(i) {
                    // Restarted at once: no downtime to pause the idle clocks for.
                    let snapshot = operator.snapshot();
                    operator = WindowOperator::restore(spec.clone(), &snapshot, clock).expect("restores");
                    operator.set_expected_keys(["z".to_owned()].into());
                }
                count(&mut operator, shard, key, time);
                closed.extend(operator.close_due(time));
                clock = time;
            }
            closed.extend(operator.close_due(T0 + 600 * MINUTE));
            closed
        };
        let uninterrupted = run(None);
        assert!(uninterrupted.len() > 6, "{uninterrupted:?}");
        assert!(uninterrupted.iter().any(|pane| pane.revision > 0), "late records revised some windows");
        for restart_at in [0, 1, 7, 20, 39] {
            assert_eq!(run(Some(restart_at)), uninterrupted, "restarted before record {restart_at}");
        }
    }

    #[test]
    fn a_snapshot_is_refused_for_other_windows_or_when_damaged() {
        let mut operator = WindowOperator::new(tumbling(10)).expect("valid spec");
        count(&mut operator, 0, "a", T0);
        let snapshot = operator.snapshot();
        let changed = WindowOperator::restore(tumbling(30), &snapshot, T0).expect_err("other windows");
        assert!(changed.to_string().contains("taken with tumbling 10m windows but the stage now has tumbling 30m"));
        let damaged = WindowOperator::restore(tumbling(10), &snapshot[..snapshot.len() - 1], T0).expect_err("cut");
        assert!(damaged.to_string().starts_with("the window snapshot cannot be read"), "{damaged}");
        let restored = WindowOperator::restore(tumbling(10), &snapshot, T0).expect("same windows");
        assert_eq!(restored.snapshot(), snapshot);
    }
}
