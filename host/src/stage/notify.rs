//! A notifier stage's [`Operator`] (like Lambda on a Kinesis stream): each
//! batch goes to the notifier plugin, whose effects go through the host
//! services it imports: state tables, notification channels and reference
//! tables ([`HostServices`]).
//!
//! At least once: everything a batch changes (items, notifications sent)
//! commits in one transaction when the plugin is done with it, before its
//! position advances; a batch the plugin fails on changes nothing. A record
//! the plugin calls bad is written to the dead letters, and the batch's other
//! records are handed over again without it. A crash
//! between the commit and the checkpoint redoes the batch, so the plugin's
//! effects must be idempotent (notifications are, by their keys).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::DeadLetters;
use super::StageStats;
use super::driver::{BatchError, Driver, Operator, Reading};
use crate::manifest::StageSpec;
use crate::notify::Channels;
use crate::notify::Notification;
use crate::plugin::{BadRecords, Batch, NotifierInstance, NotifierPlugin, PluginError, Services};
use crate::reference::ReferenceLookup;
use crate::reference::ReferenceTables;
use crate::sink::{DeadLetter, DeadLetterOrigin};
use crate::state::{StateError, StateStore, StateTx};
use crate::stream::{StoredRecord, StreamStore};
use crate::swap::{CommandReply, PluginVersion, StageCommand};

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
    /// The stage's input and name: on shared state, a batch commits only
    /// while this host runs the stage.
    fence: (String, String),
}

/// A batch's transaction and the notifications it sent (counted once it commits).
type OpenBatch = (StateTx, Vec<crate::notify::Sent>);

impl HostServices {
    /// The services of the stage `spec` (each stage has its own open batch).
    pub fn new(
        state: Arc<StateStore>,
        channels: Arc<Channels>,
        references: Arc<ReferenceTables>,
        spec: &StageSpec,
    ) -> HostServices {
        let fence = (spec.input.to_string(), spec.name.to_string());
        HostServices { state, channels, references, batch: Mutex::new(None), fence }
    }

    /// Starts a batch: changes wait for [`HostServices::commit`].
    pub fn begin(&self) -> Result<(), String> {
        let tx = self.state.begin_for(Some((&self.fence.0, &self.fence.1))).map_err(|e| e.to_string())?;
        *self.open_batch()? = Some((tx, Vec::new()));
        Ok(())
    }

    /// Makes the batch's changes durable, all at once.
    pub fn commit(&self) -> Result<(), StateError> {
        let batch = self.open_batch().map_err(StateError::Storage)?.take();
        let Some((tx, sent)) = batch else { return Ok(()) };
        tx.commit()?;
        for sent in sent {
            self.channels.count_sent(sent);
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
                let new = self.channels.send_in(notification, tx)?;
                let is_new = new.is_some();
                sent.extend(new);
                Ok(is_new)
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

/// How often a batch whose changes raced another host's is redone at once
/// (then it is retried after a backoff, as any failed effect).
const RACES_REDONE: usize = 5;

/// Most records per batch of a notifier whose state is on a cluster: each item
/// it reads is a request to the cluster, and a batch is one plugin call, which
/// must end within the plugin's time limit.
const SHARED_STATE_BATCH: usize = 100;

/// A notifier stage's batches.
pub struct NotifierOperator {
    spec: Arc<StageSpec>,
    plugin: NotifierPlugin,
    services: Arc<HostServices>,
    streams: Arc<dyn StreamStore>,
    dead_letters: DeadLetters,
    origin: DeadLetterOrigin,
    stats: Arc<StageStats>,
    version: Arc<PluginVersion>,
    instance: Option<NotifierInstance>,
}

impl NotifierOperator {
    /// [`NotifierOperator::consume`], redone at once when its changes raced
    /// another host's on shared state, and in halves when they are more than
    /// one commit takes.
    fn consume_part(&mut self, records: &[StoredRecord]) -> Result<(), BatchError> {
        let mut raced = 0;
        loop {
            match self.consume(records)? {
                Ok(()) => return Ok(()),
                Err(StateError::Conflict) if raced < RACES_REDONE => raced += 1,
                Err(StateError::TooLarge { .. }) if records.len() > 1 => {
                    let (first, second) = records.split_at(records.len() / 2);
                    self.consume_part(first)?;
                    return self.consume_part(second);
                }
                Err(e) => return Err(BatchError::Effect(format!("recording the batch's changes: {e}"))),
            }
        }
    }

    /// A notifier stage of `pipeline` calling `plugin` with `services`, ready to spawn.
    pub fn stage(
        pipeline: &str,
        spec: Arc<StageSpec>,
        plugin: NotifierPlugin,
        services: Arc<HostServices>,
        streams: Arc<dyn StreamStore>,
        dead_letters: DeadLetters,
    ) -> Driver<NotifierOperator> {
        let origin = DeadLetterOrigin::of_stage(pipeline, &spec, &plugin.spec.ident.plugin, &plugin.compiled.sha256);
        let stats = Arc::new(StageStats::default());
        let version = PluginVersion::new(origin.plugin.clone(), origin.plugin_sha256.clone());
        stats.start_version(version.clone());
        let operator = NotifierOperator {
            spec: spec.clone(),
            plugin,
            services,
            streams: streams.clone(),
            dead_letters,
            origin,
            stats: stats.clone(),
            version,
            instance: None,
        };
        let mut reading = Reading::of(&spec);
        if operator.services.state.is_shared() {
            reading.batch_size = reading.batch_size.min(SHARED_STATE_BATCH);
        }
        Driver::new(reading, streams, stats, operator)
    }
}

impl NotifierOperator {
    /// Hands `records` to the plugin and commits what it changed; the inner
    /// result is the commit's.
    fn consume(&mut self, records: &[StoredRecord]) -> Result<Result<(), StateError>, BatchError> {
        let mut whole = Batch::with_capacity(records.len(), records.iter().map(|r| r.data.len()).sum());
        for r in records {
            whole.push_with_attributes(&r.key, r.event_time_ms, &r.data, &r.attributes);
        }
        let mut bad = BadRecords::new(records.len());
        loop {
            // The batch's changes commit together, before the position advances past it.
            self.services.begin().map_err(BatchError::Effect)?;
            let stats = self.stats.clone();
            let consumed = match bad.kept() {
                _ if bad.is_whole() => {
                    let instance = self.instance()?;
                    stats.plugin_call(|| instance.consume(&whole))
                }
                [] => Ok(()),
                kept => {
                    let instance = self.instance()?;
                    stats.plugin_call(|| instance.consume(&whole.only(kept)))
                }
            };
            let Err(e) = consumed else { break };
            // Its changes are undone: a bad record is set aside and the others go through again.
            self.services.abort();
            if e.poisons_instance() {
                self.instance = None;
            }
            let message = format!("{}: {e}", self.plugin.spec.ident);
            if let Err(e) = bad.refuse(e) {
                self.version.failures.fetch_add(1, Ordering::Relaxed);
                return Err(match e {
                    PluginError::Transient(_) => BatchError::Transient(message),
                    _ => BatchError::plugin(message),
                });
            }
        }
        let letters: Vec<DeadLetter<'_>> = bad
            .refused()
            .iter()
            .map(|(at, reason)| DeadLetter {
                origin: &self.origin,
                record: &records[*at],
                error_code: "processing-failed",
                reason,
            })
            .collect();
        if let Err(e) = self.dead_letters.write_dead_letters(&letters) {
            self.services.abort();
            return Err(BatchError::Effect(format!("writing a bad record to the dead letters: {e}")));
        }
        self.stats.dead_lettered.fetch_add(letters.len() as u64, Ordering::Relaxed);
        Ok(self.services.commit())
    }

    /// The running instance, made first if there is none (at the start, or after a trap).
    fn instance(&mut self) -> Result<&mut NotifierInstance, BatchError> {
        if self.instance.is_none() {
            let fresh = self
                .plugin
                .instantiate(self.services.clone())
                .map_err(|e| BatchError::Unavailable(format!("{}: {e}", self.plugin.spec.ident)))?;
            self.instance = Some(fresh);
        }
        self.instance.as_mut().ok_or_else(|| BatchError::Unavailable("no plugin instance".into()))
    }
}

impl Operator for NotifierOperator {
    fn open(&mut self) -> Result<Option<Vec<u64>>, String> {
        Ok(None)
    }

    fn process(&mut self, records: &[StoredRecord]) -> Result<(), BatchError> {
        self.instance()?;
        self.version.batches.fetch_add(1, Ordering::Relaxed);
        self.consume_part(records)?;
        self.version.records_in.fetch_add(records.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn checkpoint(&mut self, positions: &[u64], shard: Option<u32>) -> Result<(), String> {
        Reading::of(&self.spec).checkpoint(self.streams.as_ref(), positions, shard)
    }

    /// With its state on this host's disk the stage stays here; with it shared
    /// on the cluster it runs on one host at a time and moves when that host
    /// stops renewing it (its changes are fenced by its lease).
    fn sharing(&self) -> crate::stream::Sharing {
        if self.services.state.is_shared() { crate::stream::Sharing::Single } else { crate::stream::Sharing::Whole }
    }

    fn set_aside(&mut self, records: &[StoredRecord], code: Option<&'static str>, reason: &str) -> Result<(), String> {
        let error_code = code.unwrap_or("consume-failed");
        let letters: Vec<DeadLetter<'_>> =
            records.iter().map(|record| DeadLetter { origin: &self.origin, record, error_code, reason }).collect();
        self.dead_letters.write_dead_letters(&letters)
    }

    fn command(&mut self, _command: StageCommand) -> CommandReply {
        Err(format!("stage `{}`: hot swap of notifier stages is not supported yet", self.spec.name))
    }

    fn close(&mut self) -> Result<(), String> {
        self.dead_letters.sync().map_err(|e| format!("syncing the dead letters: {e}"))
    }
}
