//! The one loop every stage and delivery runs, whatever its plugin's world: which shard
//! to read next (a parent shard before its children, so order per key holds
//! across resharding), reading batches, handing each to the stage's
//! [`Operator`], the error policy, retries with backoff, checkpoints, hot
//! swaps at batch boundaries, and the drain at shutdown.
//!
//! # At least once
//!
//! A shard's position advances past a batch only after everything the batch
//! caused is durably recorded: its output written, its dead letters written,
//! its state committed. The operator reports an effect it could not record as
//! [`BatchError::Effect`]; the driver then keeps the position where it was and
//! redoes the batch after a backoff (1 s doubling to 30 s), or stops the stage
//! when its policy is `on-error = "stop"`. A checkpoint that cannot be written
//! is retried the same way. Either is shown in the stage's status (`phase`,
//! `last_error`) and logged. A redone batch may repeat outputs that were
//! written before the failure, never lose them: consumers deduplicate by the
//! ids the outputs carry (notifications by their idempotency keys).
//!
//! An operator whose effects complete later than [`Operator::process`]
//! returns (a delivery buffers records until its size or age threshold, then
//! its loader commits them) keeps the rule itself: its
//! [`Operator::checkpoint`] records nothing, and it writes the stream's
//! checkpoint once the effects are durable. The driver's positions are then
//! only how far it has read.
//!
//! # The error policy
//!
//! A batch the plugin fails on ([`BatchError::Plugin`]) is settled by
//! [`bisect`](super::bisect): tried again in halves (a fresh instance after a
//! trap), down to the records that fail alone, each part checkpointed once it
//! is done; a record that keeps failing ([`PLUGIN_TRIES`] times) gets the
//! stage's `on-error`: `dead-letter` sets it aside with the reason
//! ([`Operator::set_aside`]) and goes on, `skip` goes on without it, `stop`
//! stops the stage with it still in the stream. With `failed-batch = "whole"`
//! the same applies to the whole batch. What the plugin itself
//! says of a failure comes first: a record it calls bad is set aside by the
//! operator, which goes on with the others (never a driver error), and a
//! failure it calls transient ([`BatchError::Transient`]) is retried with
//! backoff like an effect, never set aside.
//!
//! # Shutdown
//!
//! One path stops a host: `weir run` turns Ctrl-C or SIGTERM into
//! `Host::stop_feeds` (the API stops taking puts and ends live feeds), then
//! `Host::drain`, which drains the stages in pipeline order, upstream first,
//! and then the deliveries, so what an upstream stage still passes on is not
//! stranded. That order is why each driver has its own drain flag (set by
//! [`StageHandle::drain`](super::StageHandle::drain), read between batches and
//! during backoff) rather than one token for the whole host: a draining driver
//! stops waiting for partial batches, finishes what its input holds,
//! checkpoints it, and returns.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use super::bisect::{BISECT_BUDGET, FailedBatch, Part, Parts, Settle};
use super::{Phase, StageHandle, StageStats, backoff_delay};
use crate::manifest::{ErrorPolicy, StageSpec};
use crate::stream::{Sharing, StoredRecord, StreamError, StreamStore, kpl, parents_finished, shard_finished};
use crate::swap::{CommandReply, StageCommand};

/// How often a stage with nothing to read looks again (and at a shutdown).
pub const IDLE_POLL: Duration = Duration::from_millis(100);
/// How many times a batch is tried before the error policy applies to it.
pub const PLUGIN_TRIES: u32 = 3;

/// Why an operator did not finish a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// The plugin failed on the batch (a trap, a deadline, an error it
    /// returned): tried again, then the error policy applies.
    Plugin {
        /// What failed, for the log and the status.
        message: String,
        /// A version on probation was rolled back because of it: the batch
        /// goes to the version rolled back to at once, as a first try.
        rolled_back: bool,
    },
    /// The plugin could not start: it never saw the batch, which waits in the
    /// stream (retried with backoff; `stop` stops the stage).
    Unavailable(String),
    /// The plugin said its failure may pass (`error.transient`): the batch is
    /// retried after a backoff as long as it takes, nothing set aside (`stop`
    /// stops the stage).
    Transient(String),
    /// An effect of the batch (output, dead letters, state) could not be
    /// recorded: the batch is redone after a backoff, the position stays.
    Effect(String),
    /// The stage cannot go on (its state is unreadable, say): it stops.
    Fatal(String),
    /// A shutdown cut the batch short before its effects were recorded: the
    /// stage ends quietly, and the batch is redone at the next start.
    Interrupted,
}

impl BatchError {
    /// A plugin failure that rolled nothing back.
    pub fn plugin(message: impl Into<String>) -> BatchError {
        BatchError::Plugin { message: message.into(), rolled_back: false }
    }

    /// What failed, for the log and the status.
    pub fn message(&self) -> &str {
        match self {
            BatchError::Plugin { message, .. }
            | BatchError::Unavailable(message)
            | BatchError::Transient(message)
            | BatchError::Effect(message)
            | BatchError::Fatal(message) => message,
            BatchError::Interrupted => "interrupted by a shutdown",
        }
    }
}

/// What a stage's world does in the driver's loop. Every method is called on
/// the stage's own thread, one at a time, in the order documented on each.
pub trait Operator: Send + 'static {
    /// Called once, before anything else: restores what the operator keeps
    /// between runs. Returns the positions to resume from, one per shard in
    /// shard order (an aggregator keeps them with its windows), or `None` to
    /// resume from the stream's consumer checkpoints. An error stops the stage
    /// before it reads anything, with the reason in its status.
    fn open(&mut self) -> Result<Option<Vec<u64>>, String>;

    /// Called when the stage starts reading a shard it had not read before
    /// (at the start, and when resharding opened new shards), with the
    /// position it reads from; the shard is read only after this returned
    /// `Ok`. [`BatchError::Fatal`] stops the stage (what it keeps of the shard
    /// cannot be read); any other error is retried with backoff.
    fn shard_added(&mut self, _shard: u32, _position: u64) -> Result<(), BatchError> {
        Ok(())
    }

    /// Called once a shard closed by resharding has been read to its end: it
    /// will have no more records (an aggregator stops waiting for its clock, a
    /// delivery sends what it buffered of it). Its children are read only
    /// after this returned `Ok`; an error is handled as
    /// [`Operator::process`]'s are, and the call repeated.
    fn shard_finished(&mut self, _shard: u32) -> Result<(), BatchError> {
        Ok(())
    }

    /// Called with each batch of one shard's records, in order. Returns `Ok`
    /// once every effect of the batch is durably recorded; the driver then
    /// checkpoints past it. May be called again with the same batch after an
    /// error, or with parts of it, in order, after a plugin failure (a failed
    /// batch is settled in halves, [`bisect`](super::bisect)).
    fn process(&mut self, records: &[StoredRecord]) -> Result<(), BatchError>;

    /// Called when there is nothing to read: time-driven work (an aggregator
    /// closes windows the clock has passed). Returns whether it changed what
    /// [`Operator::checkpoint`] saves; an error is handled as
    /// [`Operator::process`]'s are, with no batch to set aside.
    fn idle(&mut self) -> Result<bool, BatchError> {
        Ok(false)
    }

    /// Called after a batch was done (`shard` is the one that moved) or an
    /// idle step changed something (`None`): records the positions durably.
    /// The default writes the stream's consumer checkpoint of the shard.
    fn checkpoint(&mut self, positions: &[u64], shard: Option<u32>) -> Result<(), String>;

    /// How the stage's reading is shared among hosts that share its streams
    /// (a NATS cluster): by shard, for an operator that keeps nothing but
    /// the stream's checkpoints; whole, by one host at a time, for one that
    /// keeps state on its host's disk (the default). Asked once, at the start.
    fn sharing(&self) -> Sharing {
        Sharing::Whole
    }

    /// Called with records the plugin failed on [`PLUGIN_TRIES`] times when the
    /// policy is `dead-letter` (`code` is `None`: the operator's code for the
    /// plugin's last failure), or with a record that cannot be read (a broken KPL
    /// aggregate, `code` says so): writes them to the dead letters with `reason`.
    /// Returns once they are durable. The default, for an operator without dead
    /// letters, refuses.
    fn set_aside(&mut self, records: &[StoredRecord], _code: Option<&'static str>, reason: &str) -> Result<(), String> {
        Err(format!("{} records failed ({reason}), and this stage has no dead letters", records.len()))
    }

    /// Called at a batch boundary with a hot-swap command; the answer goes to
    /// whoever sent it.
    fn command(&mut self, command: StageCommand) -> CommandReply;

    /// Called once, when the stage finished draining (everything in its input
    /// was processed): makes its outputs durable.
    fn close(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// What the driver reads, and how: the stream, the consumer whose
/// checkpoints it keeps, batches, and what a failure does.
#[derive(Debug, Clone)]
pub struct Reading {
    /// The stream read.
    pub input: String,
    /// The consumer name its positions are checkpointed under.
    pub consumer: String,
    /// Records per batch, at most.
    pub batch_size: usize,
    /// How long a partial batch waits for more records.
    pub batch_wait: Duration,
    /// What a batch that keeps failing does.
    pub on_error: ErrorPolicy,
    /// Whether a failed batch is tried again in halves.
    pub failed_batch: FailedBatch,
    /// Whether KPL aggregates are taken apart before the operator sees them.
    pub deaggregate: bool,
}

impl Reading {
    /// How a stage reads: its input, under its own name.
    pub fn of(spec: &StageSpec) -> Reading {
        Reading {
            input: spec.input.to_string(),
            consumer: spec.name.to_string(),
            batch_size: spec.batch_size,
            batch_wait: spec.batch_wait,
            on_error: spec.on_error,
            failed_batch: spec.failed_batch,
            deaggregate: true,
        }
    }

    /// The stream's consumer checkpoint of `shard` (of every shard for
    /// `None`): what [`Operator::checkpoint`] usually does.
    pub fn checkpoint(&self, streams: &dyn StreamStore, positions: &[u64], shard: Option<u32>) -> Result<(), String> {
        let shards: Vec<u32> = match shard {
            Some(s) => vec![s],
            None => (0..positions.len() as u32).collect(),
        };
        for s in shards {
            streams.checkpoint(&self.input, s, &self.consumer, positions[s as usize]).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// A stage's loop over its input, around its operator.
pub struct Driver<O: Operator> {
    spec: Reading,
    streams: Arc<dyn StreamStore>,
    stats: Arc<StageStats>,
    draining: Arc<AtomicBool>,
    operator: O,
    /// Per shard, whether the operator was told it is finished.
    finished: Vec<bool>,
    /// Per shard, whether this host reads it ([`StreamStore::claim`]).
    held: Vec<bool>,
}

/// Why the driver could not tell which shard to read next.
enum ShardsError {
    Stream(StreamError),
    Operator(BatchError),
}

impl From<StreamError> for ShardsError {
    fn from(e: StreamError) -> Self {
        ShardsError::Stream(e)
    }
}

/// What happened to a step the driver retries until it succeeds.
enum Retried {
    Done,
    /// The stage stops (draining, or its policy is `stop`).
    Stop,
}

/// How settling a batch the plugin failed on ended.
enum Settled {
    /// Every part processed or given up on, and checkpointed.
    Done,
    /// A part's effects were refused because another host took the stage.
    Moved,
    /// The stage stops.
    Stop,
}

impl<O: Operator> Driver<O> {
    /// A stage reading `spec.input` through `operator`.
    pub fn new(spec: Reading, streams: Arc<dyn StreamStore>, stats: Arc<StageStats>, operator: O) -> Self {
        Driver { spec, streams, stats, draining: Arc::default(), operator, finished: Vec::new(), held: Vec::new() }
    }

    /// The same driver, draining when `draining` is set (by its owner's drain).
    pub fn draining_with(mut self, draining: Arc<AtomicBool>) -> Self {
        self.draining = draining;
        self
    }

    /// Runs the loop on the calling thread until drained or stopped, with no
    /// hot-swap commands.
    pub fn run_here(self) {
        let (_commands, requests) = std::sync::mpsc::channel();
        self.run(requests)
    }

    /// Starts the stage on a thread of its own. `output_stream` is the stream
    /// it writes, if any (the drain finishes upstream stages first).
    pub fn spawn(self, output_stream: Option<String>) -> std::io::Result<StageHandle> {
        let (commands, requests) = std::sync::mpsc::channel();
        let name = self.spec.consumer.clone();
        let (stats, draining, input) = (self.stats.clone(), self.draining.clone(), self.spec.input.clone());
        let thread = std::thread::Builder::new().name(format!("stage-{name}")).spawn(move || self.run(requests))?;
        Ok(StageHandle::running(name, stats, commands, input, output_stream, draining, thread))
    }

    fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    fn run(mut self, requests: Receiver<(StageCommand, Sender<CommandReply>)>) {
        let mut positions = match self.operator.open() {
            Ok(resumed) => resumed.unwrap_or_default(),
            Err(e) => return self.stop(&format!("the stage cannot start: {e}")),
        };
        for (shard, position) in positions.iter().enumerate() {
            if let Err(e) = self.operator.shard_added(shard as u32, *position) {
                return self.stop(&format!("the stage cannot start reading shard {shard}: {}", e.message()));
            }
        }
        self.stats.set_phase(Phase::Running);
        let input = self.spec.input.clone();
        let (mut next_shard, mut tries) = (0usize, 0u32);
        // Reads in a row the store could not answer for now (a networked store's election).
        let mut unavailable = 0u32;
        loop {
            // A batch boundary: swaps and rollbacks happen here, never inside a batch.
            while let Ok((command, reply)) = requests.try_recv() {
                if let StageCommand::Redrive(records) = command {
                    let answer = self.redrive(&records).and_then(|()| {
                        self.stats.active_version().map(|v| v.status()).ok_or_else(|| "the stage has no plugin".into())
                    });
                    // The sender may have given up waiting: the records were redriven all the same.
                    let _ = reply.send(answer);
                    continue;
                }
                let swap = !matches!(command, StageCommand::EndOfInput);
                let counter = match command {
                    StageCommand::Rollback => Some(&self.stats.rollbacks),
                    StageCommand::Swap(_) | StageCommand::SwapAggregator(_) => Some(&self.stats.swaps),
                    StageCommand::EndOfInput | StageCommand::Redrive(_) => None,
                };
                let started = Instant::now();
                let mut answer = self.operator.command(command);
                if let (Some(counter), Ok(_)) = (counter, &answer) {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                if swap && let Ok(version) = &mut answer {
                    // The stage read nothing while the switch happened: that is the swap's pause.
                    let pause_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    if let Some(active) = self.stats.active_version() {
                        // A version just swapped in: its pause is not set yet.
                        let _ = active.swap_pause_us.set(pause_us);
                    }
                    version.swap_pause_ms = Some(pause_us as f64 / 1000.0);
                    tracing::info!(plugin = %version.plugin, pause_us, "the swap paused the stage");
                }
                // The sender may have given up waiting: the swap happened all the same.
                let _ = reply.send(answer);
            }
            let seen = match self.streams.changes(&input) {
                Ok(seen) => seen,
                Err(e) => return self.stop(&format!("the input stream failed: {e}")),
            };
            let ready = match self.next_ready_shard(&mut positions, next_shard) {
                Ok(ready) => ready,
                // Not an error of the stage's: it waits for the store, whatever its policy.
                Err(ShardsError::Stream(e @ StreamError::Unavailable { .. })) => {
                    unavailable += 1;
                    tracing::warn!(error = %e, tries = unavailable, "the input stream cannot be read now; it is read again");
                    self.stats.set_error(format!("reading the input's shards failed: {e}"));
                    self.back_off(unavailable + 1);
                    continue;
                }
                Err(ShardsError::Stream(e)) => {
                    match self.retry_step(&BatchError::Effect(format!("reading the input's shards: {e}")), 1) {
                        Retried::Done => continue,
                        Retried::Stop => return,
                    }
                }
                Err(ShardsError::Operator(BatchError::Interrupted)) => return self.interrupted(),
                Err(ShardsError::Operator(BatchError::Fatal(e))) => return self.stop(&e),
                Err(ShardsError::Operator(e)) => {
                    tries += 1;
                    match self.retry_step(&e, tries) {
                        Retried::Done => continue,
                        Retried::Stop => return,
                    }
                }
            };
            let Some(shard) = ready else {
                if self.draining() {
                    break;
                }
                // Time-driven work and its checkpoint belong to the host reading the stage.
                let idle = if self.held.iter().any(|h| *h) { self.operator.idle() } else { Ok(false) };
                match idle {
                    Ok(false) => {}
                    Ok(true) => {
                        if let Retried::Stop = self.checkpoint(&positions, None) {
                            return;
                        }
                    }
                    Err(BatchError::Interrupted) => return self.interrupted(),
                    Err(e) => {
                        tries += 1;
                        if let Retried::Stop = self.retry_step(&e, tries) {
                            return;
                        }
                        continue;
                    }
                }
                // Nothing arrived within the poll: not an error, the loop looks again.
                let _ = self.streams.wait_change(&input, seen, IDLE_POLL);
                continue;
            };
            next_shard = shard + 1;
            let records = match self.read_batch(&mut positions, shard) {
                Ok(records) => records,
                // Nothing was read: the same position is read again after a backoff.
                Err(e @ StreamError::Unavailable { .. }) => {
                    unavailable += 1;
                    tracing::warn!(error = %e, tries = unavailable, "the input stream cannot be read now; it is read again");
                    self.stats.set_error(format!("reading the input stream failed: {e}"));
                    self.back_off(unavailable + 1);
                    next_shard = shard;
                    continue;
                }
                Err(e) => return self.stop(&format!("reading the input stream failed: {e}")),
            };
            unavailable = 0;
            let Some(next) = records.last().map(|r| r.sequence + 1) else { continue };
            // KPL aggregates come apart into their user records; broken ones are set aside.
            let (records, units) = match self.unpack(records) {
                Ok(unpacked) => unpacked,
                Err(Stopped) => return,
            };
            if records.is_empty() {
                // Every record of the batch was set aside.
                if let Retried::Stop = self.done(0, next, &mut positions, shard) {
                    return;
                }
                continue;
            }
            let started = Instant::now();
            let processed = self.operator.process(&records);
            self.stats.batch_seconds.observe(started.elapsed());
            match processed {
                Ok(()) => {}
                Err(BatchError::Plugin { message, rolled_back: true }) => {
                    tracing::warn!(error = %message, "the batch goes to the version rolled back to");
                    tries = 0;
                    next_shard = shard;
                    continue;
                }
                Err(BatchError::Plugin { message, .. }) => {
                    self.note_failure(&message);
                    // The batch is settled here: its records are done or given up on, and checkpointed.
                    tries = 0;
                    // Each stored record is a unit, unless KPL aggregates made several records of one.
                    let units = units.unwrap_or_else(|| (0..=records.len()).collect());
                    match self.settle(&records, &units, &mut positions, shard, message) {
                        Settled::Done => {}
                        // The host that took the stage goes on from the last checkpoint.
                        Settled::Moved => continue,
                        Settled::Stop => return,
                    }
                    // Past broken aggregates at the batch's end too.
                    if let Retried::Stop = self.done(0, next, &mut positions, shard) {
                        return;
                    }
                    continue;
                }
                Err(BatchError::Effect(e)) if !self.still_held(Some(shard as u32), positions.len()) => {
                    // Its effects were refused (a shared store fences them): the host that
                    // took the stage goes on from the last checkpoint.
                    tracing::warn!(error = %e, shard, "the stage went to another host; it goes on from the last checkpoint");
                    tries = 0;
                    continue;
                }
                Err(e @ (BatchError::Unavailable(_) | BatchError::Transient(_) | BatchError::Effect(_))) => {
                    tries += 1;
                    if let BatchError::Unavailable(_) | BatchError::Transient(_) = e {
                        self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    }
                    match self.retry_step(&e, tries) {
                        Retried::Done => {
                            next_shard = shard;
                            continue;
                        }
                        Retried::Stop => return,
                    }
                }
                Err(BatchError::Fatal(e)) => return self.stop(&e),
                Err(BatchError::Interrupted) => return self.interrupted(),
            }
            tries = 0;
            if let Retried::Stop = self.done(records.len(), next, &mut positions, shard) {
                return;
            }
        }
        if let Err(e) = self.operator.close() {
            tracing::error!(error = %e, "the stage's outputs could not be made durable at shutdown");
            self.stats.set_error(e);
        }
        // Another host takes the shards at once rather than after the lease timeout.
        if let Err(e) = self.streams.release(&self.spec.input, &self.spec.consumer) {
            tracing::warn!(error = %e, "the stage's leases could not be let go of; they expire instead");
        }
        self.stats.set_phase(Phase::Finished);
    }

    /// Processes dead-lettered records again ([`crate::pipeline::dlq`]), with no position
    /// to move: as a batch, or record by record if the plugin fails on the
    /// batch; a record that fails alone is set aside again with its new reason.
    /// Returns once every effect is durable; an effect that cannot be recorded
    /// fails the redrive, and the records stay pending.
    fn redrive(&mut self, records: &[StoredRecord]) -> Result<(), String> {
        let span = tracing::info_span!("stage.redrive", records = records.len());
        let _enter = span.enter();
        match self.operator.process(records) {
            Ok(()) => return Ok(()),
            Err(BatchError::Plugin { .. }) => {}
            Err(e) => return Err(e.message().to_owned()),
        }
        for record in records.chunks(1) {
            match self.operator.process(record) {
                Ok(()) => {}
                Err(BatchError::Plugin { message, .. }) => {
                    self.operator.set_aside(record, None, &message)?;
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => return Err(e.message().to_owned()),
            }
        }
        Ok(())
    }

    /// Counts a plugin failure and shows it in the status.
    fn note_failure(&self, message: &str) {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        self.stats.set_error(message.to_owned());
    }

    /// After `count` records of `shard` were processed or set aside: the position
    /// moves to `next` (if it is not there already) and is checkpointed.
    fn done(&mut self, count: usize, next: u64, positions: &mut [u64], shard: usize) -> Retried {
        if count > 0 {
            self.stats.records_in.fetch_add(count as u64, Ordering::Relaxed);
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
        }
        if positions[shard] >= next {
            return Retried::Done;
        }
        positions[shard] = next;
        self.checkpoint(positions, Some(shard as u32))
    }

    /// Takes KPL aggregated records apart into their user records ([`kpl`]); one
    /// that is broken goes to the dead letters with the reason. Returns the records
    /// to process and, when aggregates were taken apart, where each stored record's
    /// user records start (and the end): a failed batch is split only between
    /// stored records, whose positions are what checkpoints count.
    fn unpack(&mut self, records: Vec<StoredRecord>) -> Result<(Vec<StoredRecord>, Option<Vec<usize>>), Stopped> {
        if !self.spec.deaggregate || !records.iter().any(|r| r.data.starts_with(&kpl::MAGIC)) {
            return Ok((records, None));
        }
        let (mut out, mut units) = (Vec::with_capacity(records.len()), Vec::with_capacity(records.len() + 1));
        for record in records {
            match kpl::contents(&record) {
                kpl::Contents::Plain => {
                    units.push(out.len());
                    out.push(record);
                }
                kpl::Contents::Aggregated(users) => {
                    units.push(out.len());
                    out.extend(users);
                }
                kpl::Contents::Corrupt(reason) => {
                    let mut tries = 0;
                    while let Err(e) =
                        self.operator.set_aside(std::slice::from_ref(&record), Some("kpl-corrupt"), &reason)
                    {
                        tries += 1;
                        let e = BatchError::Effect(format!("writing a broken KPL aggregate's dead letter: {e}"));
                        if let Retried::Stop = self.retry_step(&e, tries) {
                            return Err(Stopped);
                        }
                    }
                    tracing::warn!(sequence = record.sequence, error = %reason, "a broken KPL aggregate was dead-lettered");
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        units.push(out.len());
        // A unit with no user records (an empty aggregate) would be an empty part.
        units.dedup();
        Ok((out, Some(units)))
    }

    /// Settles a batch the plugin failed on ([`bisect`](super::bisect)): its parts
    /// are processed or set aside in order, each checkpointed when it is.
    fn settle(
        &mut self,
        records: &[StoredRecord],
        units: &[usize],
        positions: &mut [u64],
        shard: usize,
        message: String,
    ) -> Settled {
        let settle = Settle { how: self.spec.failed_batch, tries: PLUGIN_TRIES, budget: BISECT_BUDGET };
        if settle.how == FailedBatch::Bisect && records.len() > 1 {
            tracing::warn!(error = %message, records = records.len(), "the plugin failed on a batch; it is tried in halves");
        }
        let mut parts = DriverParts { driver: self, records, units, positions, shard, moved: false };
        match settle.run(&mut parts, units.len() - 1, message) {
            Ok(()) => Settled::Done,
            Err(Stopped) if parts.moved => Settled::Moved,
            Err(Stopped) => Settled::Stop,
        }
    }

    /// The policy for records the plugin keeps failing on, for `reason`.
    fn apply_policy(&mut self, records: &[StoredRecord], reason: &str) -> Retried {
        match self.spec.on_error {
            ErrorPolicy::Stop => {
                self.stop(&format!("{reason}; stopped by the `stop` error policy, the records stay in the stream"));
                Retried::Stop
            }
            ErrorPolicy::Skip => {
                tracing::error!(error = reason, records = records.len(), "records skipped by the error policy");
                self.stats.skipped.fetch_add(records.len() as u64, Ordering::Relaxed);
                Retried::Done
            }
            ErrorPolicy::DeadLetter => {
                tracing::error!(error = reason, records = records.len(), "records dead-lettered by the error policy");
                let mut tries = 0;
                loop {
                    match self.operator.set_aside(records, None, reason) {
                        Ok(()) => {
                            self.stats.dead_lettered.fetch_add(records.len() as u64, Ordering::Relaxed);
                            return Retried::Done;
                        }
                        Err(e) => {
                            tries += 1;
                            let e = BatchError::Effect(format!("writing the records' dead letters: {e}"));
                            if let Retried::Stop = self.retry_step(&e, tries) {
                                return Retried::Stop;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Records the positions, retrying with backoff until they are. A shard
    /// whose lease another host took is not retried: that host goes on from
    /// the last checkpoint this one wrote, and this one stops reading it.
    fn checkpoint(&mut self, positions: &[u64], shard: Option<u32>) -> Retried {
        let mut tries = 0;
        loop {
            match self.operator.checkpoint(positions, shard) {
                Ok(()) => return Retried::Done,
                Err(e) if !self.still_held(shard, positions.len()) => {
                    tracing::warn!(error = %e, shard, "the shard went to another host; it goes on from the last checkpoint");
                    return Retried::Done;
                }
                Err(e) => {
                    tries += 1;
                    let e = BatchError::Effect(format!("writing the checkpoint: {e}"));
                    if let Retried::Stop = self.retry_step(&e, tries) {
                        return Retried::Stop;
                    }
                }
            }
        }
    }

    /// After a step failed `tries` times in a row: stop (draining, or the
    /// `stop` policy), or wait before it is tried again.
    fn retry_step(&mut self, error: &BatchError, tries: u32) -> Retried {
        let message = error.message().to_owned();
        self.stats.set_error(message.clone());
        if self.spec.on_error == ErrorPolicy::Stop {
            self.stop(&format!("{message}; stopped by the `stop` error policy, the records stay in the stream"));
            return Retried::Stop;
        }
        if self.draining() {
            // Shutting down: do not hang the shutdown; nothing past the last checkpoint is lost.
            self.stop(&format!("{message}; shutting down with records this stage could not process"));
            return Retried::Stop;
        }
        tracing::error!(error = %message, tries, "the stage retries after a backoff; its position stays");
        self.back_off(tries.max(2));
        Retried::Done
    }

    /// Sleeps before a retry, as long as [`backoff_delay`] says; a shutdown cuts it short.
    fn back_off(&self, streak: u32) {
        let delay = backoff_delay(streak);
        if delay.is_zero() {
            return;
        }
        self.stats.set_phase(Phase::BackingOff);
        let until = Instant::now() + delay;
        while Instant::now() < until && !self.draining() {
            std::thread::sleep(IDLE_POLL.min(until.saturating_duration_since(Instant::now())));
        }
        self.stats.set_phase(Phase::Running);
    }

    /// A shutdown cut a batch short: nothing past the last checkpoint is lost.
    fn interrupted(&self) {
        tracing::warn!("a shutdown interrupted a batch; it is redone at the next start");
        self.stats.set_phase(Phase::Finished);
    }

    fn stop(&self, why: &str) {
        tracing::error!(error = why, "stage stopped");
        self.stats.set_error(why.to_owned());
        self.stats.set_phase(Phase::Stopped);
    }

    /// Whether this host still reads `shard` (any shard, for `None`), as the
    /// store says now (after a checkpoint failed: a lost lease is why it would not).
    fn still_held(&mut self, shard: Option<u32>, shards: usize) -> bool {
        let (input, consumer) = (self.spec.input.as_str(), self.spec.consumer.as_str());
        match self.streams.claim(input, consumer, shards as u32, self.operator.sharing()) {
            Ok(claim) => match shard {
                Some(shard) => claim.held.get(shard as usize).copied().unwrap_or(false),
                None => claim.held.iter().any(|h| *h),
            },
            // Not known: the checkpoint is retried, as any failed one.
            Err(_) => true,
        }
    }

    /// Which shards this host reads now. A shard it took from another host is
    /// read from its checkpoint, which that host moved (a whole stage keeps the
    /// positions its operator resumed from: its state is on this host); one
    /// another host reads keeps that host's position, so that its children
    /// wait for it.
    fn claim(&mut self, positions: &mut [u64]) -> Result<(), ShardsError> {
        let (input, consumer) = (self.spec.input.as_str(), self.spec.consumer.as_str());
        let sharing = self.operator.sharing();
        let claim = self.streams.claim(input, consumer, positions.len() as u32, sharing)?;
        let first = self.held.is_empty();
        let taken_over = !first
            && sharing == Sharing::Single
            && (claim.taken.iter().any(|t| *t) || (!self.held.iter().any(|h| *h) && claim.held.iter().any(|h| *h)));
        self.held.resize(positions.len(), false);
        for (shard, position) in positions.iter_mut().enumerate() {
            let held = claim.held.get(shard).copied().unwrap_or(false);
            let theirs = claim.positions.get(shard).copied().flatten();
            // Taken anew, also while this host thought it still held it (it was frozen,
            // another host moved the shard on, and this one took it back).
            let taken = claim.taken.get(shard).copied().unwrap_or(false) || !self.held[shard];
            if held && taken && !first {
                if sharing == Sharing::Shards {
                    // Where the lease just taken says: read with it, so never older.
                    *position = match theirs {
                        Some(p) => p,
                        None => self.streams.register_consumer(input, shard as u32, consumer)?,
                    };
                }
                tracing::info!(shard, position = *position, "this host reads the shard now");
            } else if !held {
                if self.held[shard] {
                    tracing::info!(shard, "another host reads the shard now");
                }
                if let Some(theirs) = theirs {
                    *position = theirs;
                }
            }
            self.held[shard] = held;
        }
        self.stats.set_holders(claim.holders);
        if taken_over && let Err(e) = self.take_over(positions) {
            // Not taken over yet: the next round tries again.
            self.held.iter_mut().for_each(|h| *h = false);
            return Err(e);
        }
        Ok(())
    }

    /// This host took over a stage whose state the store keeps, from a host
    /// that stopped: the operator opens that state again, with its positions.
    fn take_over(&mut self, positions: &mut [u64]) -> Result<(), ShardsError> {
        let (input, consumer) = (self.spec.input.as_str(), self.spec.consumer.as_str());
        // Retried with backoff: the saved state may be unreadable only for now.
        let resumed = self.operator.open().map_err(|e| ShardsError::Operator(BatchError::Effect(e)))?;
        for (shard, position) in positions.iter_mut().enumerate() {
            *position = match resumed.as_ref().and_then(|r| r.get(shard)) {
                Some(p) => *p,
                None => self.streams.register_consumer(input, shard as u32, consumer)?,
            };
            self.operator.shard_added(shard as u32, *position).map_err(ShardsError::Operator)?;
        }
        self.finished.iter_mut().for_each(|f| *f = false);
        tracing::info!(positions = ?positions, "this host took the stage over, from its saved state");
        Ok(())
    }

    /// The first shard this host reads, from `from` and going round, with records
    /// past its position and no unfinished parent: a parent's records all come
    /// before its children's. Shards opened since the last call are registered
    /// first, and the operator hears of shards read to their end.
    fn next_ready_shard(&mut self, positions: &mut Vec<u64>, from: usize) -> Result<Option<usize>, ShardsError> {
        let (input, consumer) = (self.spec.input.as_str(), self.spec.consumer.as_str());
        let lineage = self.streams.lineage(input)?;
        while positions.len() < lineage.len() {
            let shard = positions.len() as u32;
            let position = self.streams.register_consumer(input, shard, consumer)?;
            self.operator.shard_added(shard, position).map_err(ShardsError::Operator)?;
            positions.push(position);
        }
        self.claim(positions)?;
        let input = self.spec.input.as_str();
        self.finished.resize(positions.len(), false);
        for shard in 0..positions.len() {
            if shard_finished(&lineage, positions, shard) && !self.finished[shard] {
                self.operator.shard_finished(shard as u32).map_err(ShardsError::Operator)?;
                self.finished[shard] = true;
            }
        }
        for k in 0..positions.len() {
            let shard = (from + k) % positions.len();
            if self.held[shard]
                && parents_finished(&lineage, positions, shard)
                && self.streams.end(input, shard as u32)? > positions[shard]
            {
                return Ok(Some(shard));
            }
        }
        Ok(None)
    }

    /// The next batch of a shard: unless draining, a partial batch first gets
    /// `batch-wait` to fill up. Records that retention dropped before they were
    /// read are gone, as in Kinesis: the position moves past them.
    fn read_batch(&self, positions: &mut [u64], shard: usize) -> Result<Vec<StoredRecord>, StreamError> {
        let (input, position) = (self.spec.input.as_str(), positions[shard]);
        if !self.draining() {
            // Waiting is only a chance to fill the batch: what is there is read either way.
            let _ = self.streams.wait_for(input, shard as u32, position, self.spec.batch_size, self.spec.batch_wait);
        }
        match self.streams.read(input, shard as u32, position, self.spec.batch_size) {
            Err(StreamError::Trimmed { oldest, .. }) => {
                tracing::warn!(expired = oldest - position, "records expired before this stage read them");
                positions[shard] = oldest;
                Ok(Vec::new())
            }
            other => other,
        }
    }
}

/// The stage stopped while a failed batch was being settled.
struct Stopped;

/// A failed batch's parts, run by the driver: each part that works, or is given
/// up on, is checkpointed at once, so none of it is redone. Parts are ranges of
/// stored records (`units`: where each one's records start), never a piece of a
/// KPL aggregate.
struct DriverParts<'a, O: Operator> {
    driver: &'a mut Driver<O>,
    records: &'a [StoredRecord],
    units: &'a [usize],
    positions: &'a mut [u64],
    shard: usize,
    /// Set when a part's effects were refused because another host took the stage.
    moved: bool,
}

impl<'a, O: Operator> DriverParts<'a, O> {
    /// The records of a range of stored records.
    fn records(&self, part: Range<usize>) -> &'a [StoredRecord] {
        let all: &'a [StoredRecord] = self.records;
        &all[self.units[part.start]..self.units[part.end]]
    }

    /// The part's records are done: the position moves past its last stored record.
    fn done(&mut self, count: usize, next: u64) -> Result<(), Stopped> {
        match self.driver.done(count, next, self.positions, self.shard) {
            Retried::Done => Ok(()),
            Retried::Stop => Err(Stopped),
        }
    }
}

impl<O: Operator> Parts for DriverParts<'_, O> {
    type Stop = Stopped;

    fn attempt(&mut self, part: Range<usize>) -> Result<Part, Stopped> {
        let records = self.records(part);
        let (count, next) = (records.len(), records.last().map_or(0, |r| r.sequence + 1));
        let mut tries = 0;
        loop {
            match self.driver.operator.process(records) {
                Ok(()) => break,
                // The version rolled back to tries it at once.
                Err(BatchError::Plugin { rolled_back: true, .. }) => {}
                Err(BatchError::Plugin { message, .. }) => {
                    self.driver.note_failure(&message);
                    return Ok(Part::Failed(message));
                }
                Err(BatchError::Effect(e))
                    if !self.driver.still_held(Some(self.shard as u32), self.positions.len()) =>
                {
                    // As for a whole batch: the host that took the stage redoes the rest.
                    tracing::warn!(error = %e, shard = self.shard, "the stage went to another host while it settled a failed batch; it goes on from the last checkpoint");
                    self.moved = true;
                    return Err(Stopped);
                }
                Err(e @ (BatchError::Unavailable(_) | BatchError::Transient(_) | BatchError::Effect(_))) => {
                    tries += 1;
                    if let BatchError::Unavailable(_) | BatchError::Transient(_) = e {
                        self.driver.stats.failures.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Retried::Stop = self.driver.retry_step(&e, tries) {
                        return Err(Stopped);
                    }
                }
                Err(BatchError::Fatal(e)) => {
                    self.driver.stop(&e);
                    return Err(Stopped);
                }
                Err(BatchError::Interrupted) => {
                    self.driver.interrupted();
                    return Err(Stopped);
                }
            }
        }
        self.done(count, next).map(|()| Part::Done)
    }

    fn give_up(&mut self, part: Range<usize>, reason: &str) -> Result<(), Stopped> {
        let records = self.records(part);
        let (count, next) = (records.len(), records.last().map_or(0, |r| r.sequence + 1));
        if let Retried::Stop = self.driver.apply_policy(records, reason) {
            return Err(Stopped);
        }
        self.done(count, next)
    }

    fn before_retry(&mut self, failures: u32) {
        self.driver.back_off(failures);
    }

    fn hurry(&self) -> bool {
        self.driver.draining()
    }
}
