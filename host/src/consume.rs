//! A notifier stage (like Lambda on a Kinesis stream): reads its input stream
//! in batches and hands each to the notifier plugin, whose effects go through
//! the host services it imports: state tables, notification channels and
//! reference tables ([`HostServices`]).
//!
//! At least once: a shard's position is checkpointed only after its batch
//! succeeded, so a crash redoes the batch, and the plugin's effects must be
//! idempotent (notifications are, by their keys). A failing batch is retried
//! with backoff; after [`GIVE_UP_AFTER`] failures in a row the stage's error
//! policy applies (`dead-letter`: the batch goes to the dead letters with the
//! reason; `skip`; `stop`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::manifest::{ErrorPolicy, StageSpec};
use crate::notify::Channels;
use crate::plugin::{Batch, Notification, NotifierInstance, NotifierPlugin, ReferenceLookup, Services};
use crate::reference::ReferenceTables;
use crate::sink::{DeadLetter, DeadLetterOrigin, FileSink};
use crate::stage::{Phase, StageHandle, StageStats, backoff_delay, next_ready_shard, read_batch};
use crate::state::{StateError, StateStore, StateTx};
use crate::stream::{StoredRecord, StreamStore};
use crate::swap::{PluginVersion, SwapCommand, SwapReply};

/// Failures in a row on one batch before the error policy applies.
pub const GIVE_UP_AFTER: u32 = 5;
/// How often an idle stage looks for records and for a shutdown.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// What a notifier plugin's imports reach. Between [`HostServices::begin`]
/// and [`HostServices::commit`] every change a batch makes (items, sent
/// notifications) goes into one state transaction; outside one, each call is its own.
pub struct HostServices {
    /// State tables.
    pub state: Arc<StateStore>,
    /// Notification channels.
    pub channels: Arc<Channels>,
    /// Reference tables.
    pub references: Arc<ReferenceTables>,
    /// The open batch, if any.
    batch: Mutex<Option<OpenBatch>>,
}

/// A batch's transaction and the channels of the notifications it sent (counted once it commits).
type OpenBatch = (StateTx, Vec<String>);

impl HostServices {
    /// The services of one stage (each stage has its own open batch).
    pub fn new(state: Arc<StateStore>, channels: Arc<Channels>, references: Arc<ReferenceTables>) -> HostServices {
        HostServices { state, channels, references, batch: Mutex::new(None) }
    }

    /// Starts a batch: changes wait for [`HostServices::commit`].
    pub fn begin(&self) -> Result<(), String> {
        let tx = self.state.begin().map_err(|e| e.to_string())?;
        *self.open_batch()? = Some((tx, Vec::new()));
        Ok(())
    }

    /// Makes the batch's changes durable, all at once.
    pub fn commit(&self) -> Result<(), String> {
        let Some((tx, sent)) = self.open_batch()?.take() else { return Ok(()) };
        tx.commit().map_err(|e| e.to_string())?;
        for channel in sent {
            self.channels.count_sent(&channel);
        }
        Ok(())
    }

    /// Undoes the batch's changes (its plugin failed: the batch is redone or set aside).
    pub fn abort(&self) {
        if let Ok(mut batch) = self.batch.lock() {
            *batch = None;
        }
    }

    fn open_batch(&self) -> Result<std::sync::MutexGuard<'_, Option<OpenBatch>>, String> {
        self.batch.lock().map_err(|_| "the state of this batch is unusable after an earlier failure".to_owned())
    }

    /// Runs `op` in the open batch, or else in a transaction of its own.
    fn with_tx<T>(&self, op: impl FnOnce(&StateTx) -> Result<T, StateError>) -> Result<T, String> {
        let batch = self.open_batch()?;
        match batch.as_ref() {
            Some((tx, _)) => op(tx).map_err(|e| e.to_string()),
            None => {
                drop(batch);
                let tx = self.state.begin().map_err(|e| e.to_string())?;
                let out = op(&tx).map_err(|e| e.to_string())?;
                tx.commit().map_err(|e| e.to_string())?;
                Ok(out)
            }
        }
    }
}

impl Services for HostServices {
    fn get(&self, table: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.with_tx(|tx| tx.get(table, key))
    }
    fn put(&self, table: &str, key: &str, value: Vec<u8>) -> Result<(), String> {
        self.with_tx(|tx| tx.put(table, key, &value))
    }
    fn delete(&self, table: &str, key: &str) -> Result<(), String> {
        self.with_tx(|tx| tx.delete(table, key))
    }
    fn put_if(&self, table: &str, key: &str, expected: Option<Vec<u8>>, value: Vec<u8>) -> Result<bool, String> {
        self.with_tx(|tx| tx.put_if(table, key, expected.as_deref(), &value))
    }
    fn add(&self, table: &str, key: &str, delta: i64) -> Result<i64, String> {
        self.with_tx(|tx| tx.add(table, key, delta))
    }
    fn send(&self, notification: Notification) -> Result<bool, String> {
        let mut batch = self.open_batch()?;
        match batch.as_mut() {
            Some((tx, sent)) => {
                let channel = notification.channel.clone();
                let new = self.channels.send_in(notification, tx)?;
                if new {
                    sent.push(channel);
                }
                Ok(new)
            }
            None => {
                drop(batch);
                self.channels.send(notification)
            }
        }
    }
    fn lookup(&self, table: &str, key: &str) -> Result<Option<String>, String> {
        self.references.lookup(table, key)
    }
}

/// A notifier stage, ready to [`NotifierStage::spawn`].
pub struct NotifierStage {
    spec: Arc<StageSpec>,
    plugin: NotifierPlugin,
    services: Arc<HostServices>,
    streams: Arc<dyn StreamStore>,
    dead_letters: Arc<FileSink>,
    origin: DeadLetterOrigin,
    stats: Arc<StageStats>,
    version: Arc<PluginVersion>,
    draining: Arc<AtomicBool>,
}

impl NotifierStage {
    /// A stage calling `plugin` with `services`.
    pub fn new(
        pipeline: &str,
        spec: Arc<StageSpec>,
        plugin: NotifierPlugin,
        services: Arc<HostServices>,
        streams: Arc<dyn StreamStore>,
        dead_letters: Arc<FileSink>,
    ) -> Self {
        let origin = DeadLetterOrigin::of_stage(pipeline, &spec, &plugin.spec.ident.plugin, &plugin.compiled.sha256);
        let stats = Arc::new(StageStats::default());
        let version = PluginVersion::new(origin.plugin.clone(), origin.plugin_sha256.clone());
        stats.start_version(version.clone());
        Self { spec, plugin, services, streams, dead_letters, origin, stats, version, draining: Arc::default() }
    }

    /// Starts the stage on its own thread.
    pub fn spawn(self) -> std::io::Result<StageHandle> {
        let (commands, requests) = std::sync::mpsc::channel();
        let (name, stats, draining) = (self.spec.name.to_string(), self.stats.clone(), self.draining.clone());
        let input = self.spec.input.to_string();
        let thread = std::thread::Builder::new().name(format!("stage-{name}")).spawn(move || self.run(requests))?;
        Ok(StageHandle::running(name, stats, commands, input, None, draining, thread))
    }

    fn run(self, requests: Receiver<(SwapCommand, Sender<SwapReply>)>) {
        let span = tracing::info_span!("stage", pipeline = %self.origin.pipeline, stage = %self.origin.stage, plugin = %self.origin.plugin);
        let _enter = span.enter();
        let (input, consumer) = (self.spec.input.as_str(), self.spec.name.as_str());
        self.stats.set_phase(Phase::Running);
        let mut instance: Option<NotifierInstance> = None;
        let mut positions: Vec<u64> = Vec::new();
        let mut next_shard = 0usize;
        let mut failures = 0u32;
        loop {
            while let Ok((_, reply)) = requests.try_recv() {
                let _ =
                    reply.send(Err(format!("stage `{consumer}`: hot swap of notifier stages is not supported yet")));
            }
            let seen = self.streams.changes(input).unwrap_or(0);
            let ready = match next_ready_shard(self.streams.as_ref(), &self.spec, &mut positions, next_shard) {
                Ok(r) => r,
                Err(e) => return self.stop(&format!("the input stream failed: {e}")),
            };
            let Some(shard) = ready else {
                if self.draining.load(Ordering::Relaxed) {
                    break;
                }
                let _ = self.streams.wait_change(input, seen, IDLE_POLL);
                continue;
            };
            next_shard = shard + 1;
            let shard_index = shard as u32;
            let draining = self.draining.load(Ordering::Relaxed);
            let records = match read_batch(self.streams.as_ref(), &self.spec, &mut positions, shard, draining) {
                Ok(r) => r,
                Err(e) => return self.stop(&format!("reading the input stream failed: {e}")),
            };
            let Some(next) = records.last().map(|r| r.sequence + 1) else { continue };
            match self.consume(&mut instance, &records) {
                Ok(()) => failures = 0,
                Err(e) if failures + 1 < GIVE_UP_AFTER && !self.draining.load(Ordering::Relaxed) => {
                    failures += 1;
                    self.back_off(&e, failures);
                    next_shard = shard;
                    continue;
                }
                Err(e) => {
                    failures = 0;
                    match self.spec.on_error {
                        ErrorPolicy::Stop => {
                            return self.stop(&format!("{e}; stopped by the `stop` error policy, the records stay"));
                        }
                        ErrorPolicy::Skip => {
                            tracing::error!(error = %e, records = records.len(), "batch skipped by the error policy");
                            self.stats.skipped.fetch_add(records.len() as u64, Ordering::Relaxed);
                        }
                        ErrorPolicy::DeadLetter => self.set_aside(&records, &e),
                    }
                }
            }
            positions[shard] = next;
            if let Err(e) = self.streams.checkpoint(input, shard_index, consumer, next) {
                tracing::error!(error = %e, "checkpoint failed");
            }
        }
        if let Err(e) = self.dead_letters.sync() {
            tracing::error!(error = %e, "syncing the dead-letter sink failed");
        }
        self.stats.set_phase(Phase::Finished);
    }

    /// Hands a batch to the plugin.
    fn consume(&self, instance: &mut Option<NotifierInstance>, records: &[StoredRecord]) -> Result<(), String> {
        let mut batch = Batch::with_capacity(records.len(), records.iter().map(|r| r.data.len()).sum());
        for r in records {
            batch.push(&r.key, r.event_time_ms, &r.data);
        }
        self.version.batches.fetch_add(1, Ordering::Relaxed);
        let running = match instance {
            Some(running) => running,
            None => {
                let fresh = self.plugin.instantiate(self.services.clone()).map_err(|e| e.to_string())?;
                instance.insert(fresh)
            }
        };
        // The batch's changes commit together, before the position advances past it.
        self.services.begin()?;
        if let Err(e) = running.consume(&batch) {
            self.services.abort();
            if e.poisons_instance() {
                *instance = None;
            }
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            self.version.failures.fetch_add(1, Ordering::Relaxed);
            return Err(format!("{}: {e}", self.plugin.spec.ident));
        }
        self.services.commit().map_err(|e| format!("recording the batch's changes failed: {e}"))?;
        self.stats.records_in.fetch_add(records.len() as u64, Ordering::Relaxed);
        self.version.records_in.fetch_add(records.len() as u64, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn back_off(&self, error: &str, streak: u32) {
        tracing::error!(error, failures_in_a_row = streak, "notifier failed; the batch is retried");
        self.stats.set_error(error.to_owned());
        let delay = backoff_delay(streak);
        self.stats.set_phase(Phase::BackingOff);
        std::thread::sleep(delay);
        self.stats.set_phase(Phase::Running);
    }

    fn set_aside(&self, records: &[StoredRecord], error: &str) {
        let reason = format!("the notifier failed on this batch {GIVE_UP_AFTER} times: {error}");
        let letters: Vec<DeadLetter<'_>> = records
            .iter()
            .map(|record| DeadLetter { origin: &self.origin, record, error_code: "consume-failed", reason: &reason })
            .collect();
        match self.dead_letters.write_dead_letters(&letters) {
            Ok(()) => {
                self.stats.dead_lettered.fetch_add(records.len() as u64, Ordering::Relaxed);
            }
            Err(e) => tracing::error!(error = %e, "writing dead letters failed"),
        }
    }

    fn stop(&self, why: &str) {
        tracing::error!(error = why, "stage stopped");
        self.stats.set_error(why.to_owned());
        self.stats.set_phase(Phase::Stopped);
    }
}
