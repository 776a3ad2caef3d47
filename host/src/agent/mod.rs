//! `weir agent`: the Kinesis Agent's job for weir. Each flow follows the
//! files matching a glob, turns their lines into records (optionally grouped
//! and converted, see [`preprocess`]), batches them by count, size and age,
//! and sends them to a weir stream or delivery stream through the HTTP API.
//!
//! Delivery is at-least-once: a file's checkpoint advances only after weir
//! acknowledged every record of the batch holding its lines, and is then
//! saved durably. Rotation (rename-and-create or copytruncate, see
//! [`tailer`]) never duplicates or loses lines; an agent crash between an
//! acknowledgement and the checkpoint write sends that last batch again.

pub mod catch_up;
pub mod checkpoint;
pub mod config;
pub mod preprocess;
mod sender;
pub mod tailer;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::stream::Source;

pub use config::{AgentConfig, ConfigError, Destination, FlowConfig, PartitionKey, StartPosition};
pub use sender::{Outgoing, Sender};

use checkpoint::{CheckpointError, CheckpointStore};
use preprocess::{MultiLine, Preprocessor};
use tailer::Tailer;

use crate::client::{Client, ClientError};

/// A multi-line record is complete when no line was added to it for this long.
const MULTI_LINE_IDLE: Duration = Duration::from_secs(1);

/// Why the agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The checkpoint file is unreadable.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// An endpoint is not usable.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// What the agent did so far, over all flows.
#[derive(Debug, Default)]
pub struct Counters {
    lines_read: AtomicU64,
    records_sent: AtomicU64,
    records_refused: AtomicU64,
    records_skipped: AtomicU64,
    retries: AtomicU64,
    batches: AtomicU64,
}

/// A copy of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Whole lines read from files.
    pub lines_read: u64,
    /// Records weir acknowledged.
    pub records_sent: u64,
    /// Records weir refused for good (dropped).
    pub records_refused: u64,
    /// Records a preprocessing step could not parse (not sent).
    pub records_skipped: u64,
    /// Requests sent again after a failure.
    pub retries: u64,
    /// Batches fully acknowledged.
    pub batches: u64,
}

impl Counters {
    pub fn snapshot(&self) -> CounterSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            lines_read: get(&self.lines_read),
            records_sent: get(&self.records_sent),
            records_refused: get(&self.records_refused),
            records_skipped: get(&self.records_skipped),
            retries: get(&self.retries),
            batches: get(&self.batches),
        }
    }
}

/// Starts agents.
#[derive(Debug)]
pub struct Agent;

/// A running agent: stop it with [`AgentHandle::stop`].
#[derive(Debug)]
pub struct AgentHandle {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl Agent {
    /// Starts every flow of `config` on the current Tokio runtime.
    pub fn start(config: AgentConfig) -> Result<AgentHandle, AgentError> {
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        let store = Arc::new(CheckpointStore::load(&config.checkpoint_file)?);
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        for flow in config.flows {
            let client = Client::new(&flow.endpoint)?;
            let span = tracing::info_span!("agent.flow", flow = %flow.name());
            let runner = FlowRunner {
                sender: Sender::new(client, &flow, counters.clone()),
                flow,
                store: store.clone(),
                counters: counters.clone(),
                poll_interval: config.poll_interval,
                stop: stopped.clone(),
            };
            tasks.push(tokio::spawn(runner.run().instrument(span)));
        }
        Ok(AgentHandle { stop, tasks, counters })
    }
}

impl AgentHandle {
    /// The counters so far.
    pub fn counters(&self) -> CounterSnapshot {
        self.counters.snapshot()
    }

    /// Sends what is batched, saves the checkpoints and stops every flow.
    pub async fn stop(self) -> CounterSnapshot {
        let _ = self.stop.send(true);
        for task in self.tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "an agent flow failed");
            }
        }
        self.counters.snapshot()
    }
}

/// This machine's name, for the sources of the records its files give.
fn machine_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "agent".to_owned())
}

/// A record read and processed, waiting in the batch.
struct Pending {
    lineage: u64,
    end: u64,
    /// `None` for a line that yields no record (empty or unparsable): it only moves the checkpoint.
    record: Option<Outgoing>,
}

struct FlowRunner {
    flow: FlowConfig,
    sender: Sender,
    store: Arc<CheckpointStore>,
    counters: Arc<Counters>,
    poll_interval: Duration,
    stop: watch::Receiver<bool>,
}

/// The batch being filled.
#[derive(Default)]
struct Batch {
    items: Vec<Pending>,
    records: usize,
    bytes: u64,
    since: Option<Instant>,
}

impl FlowRunner {
    async fn run(mut self) {
        let name = self.flow.name();
        let mut tailer = Some(Tailer::new(self.flow.files.clone(), self.flow.start, self.store.flow(&name)));
        let preprocessor = Preprocessor::new(self.flow.steps.clone());
        let mut multi_line = self.flow.multi_line_start.clone().map(MultiLine::new);
        let mut keys = KeyMaker::new(match self.flow.destination {
            Destination::Stream(_) => Some(self.flow.partition_key),
            Destination::Delivery(_) => None,
        });
        let mut batch = Batch::default();
        // Each file is a source of its own (see `crate::stream::Source`): `<host>:<path>`.
        // Delivery streams have no windows downstream: their puts name none.
        let named = matches!(self.flow.destination, Destination::Stream(_));
        let machine = machine_name();
        let mut sources: HashMap<u64, Source> = HashMap::new();
        tracing::info!(destination = %self.flow.destination, "following files");
        loop {
            let stopping = *self.stop.borrow();
            let Some(mut t) = tailer.take() else { return };
            let budget = usize::try_from(self.flow.max_batch_bytes).unwrap_or(usize::MAX).saturating_mul(2);
            let polled = tokio::task::spawn_blocking(move || {
                let lines = t.poll(budget, Instant::now());
                (t, lines)
            })
            .await;
            let (t, lines) = match polled {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(error = %e, "the file reader failed; this flow stops");
                    return;
                }
            };
            tailer = Some(t);
            let now = Instant::now();
            let mut done = Vec::new();
            for line in lines {
                self.counters.lines_read.fetch_add(1, Ordering::Relaxed);
                match &mut multi_line {
                    Some(m) => {
                        if let Some((data, end)) = m.push(line.lineage, line.data, line.end, now) {
                            done.push((line.lineage, data, end));
                        }
                    }
                    None => done.push((line.lineage, line.data, line.end)),
                }
            }
            if let Some(m) = &mut multi_line {
                done.extend(if stopping { m.flush_all() } else { m.flush_idle(now, MULTI_LINE_IDLE) });
            }
            let mut abandoned = false;
            let mut read: Vec<Option<Pending>> = Vec::with_capacity(done.len());
            for (lineage, data, end) in done {
                let source = sources.entry(lineage).or_insert_with(|| {
                    let path = tailer.as_ref().and_then(|t| t.first_path(lineage));
                    Source::from(format!(
                        "{machine}:{}",
                        path.map_or_else(|| lineage.to_string(), |p| p.display().to_string())
                    ))
                });
                let record = match preprocessor.apply(data) {
                    Some(data) if data.is_empty() => None,
                    Some(data) => Some(Outgoing { key: keys.key(&data), data, source: named.then(|| source.clone()) }),
                    None => {
                        self.counters.records_skipped.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                };
                read.push(Some(Pending { lineage, end, record }));
            }
            // What several files gave is sent in time order when the flow can read the time.
            let order: Vec<usize> = match &self.flow.record_time {
                None => (0..read.len()).collect(),
                Some(time) => {
                    let timed: Vec<(u64, Option<i64>)> = read
                        .iter()
                        .flatten()
                        .map(|p| (p.lineage, p.record.as_ref().and_then(|r| time.of(&r.data))))
                        .collect();
                    catch_up::merge_by_time(&timed)
                }
            };
            for i in order {
                let Some(Pending { lineage, end, record }) = read.get_mut(i).and_then(Option::take) else { continue };
                let size = record.as_ref().map_or(0, |r| (r.data.len() + r.key.len()) as u64);
                if batch.records > 0 && batch.bytes + size > self.flow.max_batch_bytes {
                    abandoned = abandoned || !self.flush(&mut batch, &mut tailer, &name).await;
                }
                batch.records += usize::from(record.is_some());
                batch.bytes += size;
                batch.since.get_or_insert(now);
                batch.items.push(Pending { lineage, end, record });
                if batch.records >= self.flow.max_batch_records {
                    abandoned = abandoned || !self.flush(&mut batch, &mut tailer, &name).await;
                }
            }
            let aged = batch.since.is_some_and(|s| s.elapsed() >= self.flow.max_batch_age);
            if !batch.items.is_empty() && (aged || stopping) {
                abandoned = abandoned || !self.flush(&mut batch, &mut tailer, &name).await;
            }
            if stopping || abandoned {
                if abandoned {
                    tracing::warn!("stopped with records weir did not acknowledge; they are sent on the next start");
                }
                tracing::info!("flow stopped");
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(self.poll_interval) => {}
                changed = self.stop.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Sends the batch; on acknowledgement moves and saves the checkpoints.
    /// False if the agent stopped before weir acknowledged it.
    async fn flush(&mut self, batch: &mut Batch, tailer: &mut Option<Tailer>, name: &str) -> bool {
        let items = std::mem::take(batch).items;
        let mut records = Vec::with_capacity(items.len());
        let mut marks = Vec::with_capacity(items.len());
        for p in items {
            marks.push((p.lineage, p.end));
            records.extend(p.record);
        }
        if !records.is_empty() && self.sender.send(&records, &mut self.stop).await.is_err() {
            return false;
        }
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        let Some(t) = tailer.as_mut() else { return true };
        for (lineage, end) in marks {
            t.ack(lineage, end);
        }
        let checkpoints = t.checkpoints();
        let store = self.store.clone();
        let name = name.to_owned();
        match tokio::task::spawn_blocking(move || store.save(&name, checkpoints)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot save checkpoints; will try again after the next batch"),
            Err(e) => tracing::error!(error = %e, "cannot save checkpoints"),
        }
        true
    }
}

/// Partition keys for stream records.
struct KeyMaker {
    /// `None`: delivery streams take no keys.
    kind: Option<PartitionKey>,
    state: u64,
}

impl KeyMaker {
    fn new(kind: Option<PartitionKey>) -> Self {
        use std::hash::{BuildHasher as _, Hasher as _};
        // A random seed from the standard library's per-process hash keys.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
        Self { kind, state: h.finish() | 1 }
    }

    fn key(&mut self, data: &[u8]) -> String {
        match self.kind {
            None => String::new(),
            Some(PartitionKey::Random) => {
                // xorshift64*: spread, not security.
                self.state ^= self.state >> 12;
                self.state ^= self.state << 25;
                self.state ^= self.state >> 27;
                format!("{:016x}", self.state.wrapping_mul(0x2545_f491_4f6c_dd1d))
            }
            Some(PartitionKey::LineHash) => Sha256::digest(data)[..16].iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}
