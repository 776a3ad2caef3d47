//! A running pipeline: its streams, sinks and stages, wired as the manifest
//! says, and the graceful drain at shutdown.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::dedup::{DedupSpec, DedupStore};
use crate::delivery::{Delivery, DeliveryStatus, PlanPlace};
use crate::manifest::{DeadLetter, Pipeline, Storage, Target};
use crate::metrics::Seconds;
use crate::notify::Channels;
use crate::plugin::{
    AggregatorPlugin, NotifierPlugin, PluginEngine, PluginError, PluginIdent, SandboxSpec, TransformerPlugin,
};
use crate::reference::ReferenceTables;
use crate::sink::{FileSink, SinkError};
use crate::stage::aggregate::{AggregateOperator, is_aggregator};
use crate::stage::notify::{HostServices, NotifierOperator};
use crate::stage::transform::TransformOperator;
use crate::stage::{DeadLetters, StageHandle, StageOutput, StageStatus};
use crate::state::StateStore;
use crate::stream::{
    Appended, DEFAULT_CAPACITY, DEFAULT_FSYNC_INTERVAL, DiskStreamSpec, DiskStreams, FileSyncer, FsyncPolicy,
    NewRecord, StoredRecord, StreamError, StreamSettings, StreamStore, shard_id,
};

pub mod dlq;
pub mod lake_errors;
mod swap;

pub use swap::SwapError;
use swap::watch_component;
pub(crate) use swap::{check_self_tests, self_test_batch};

/// The stream a stage writes, if it writes one (the drain finishes upstream stages first).
fn output_stream(output: &StageOutput) -> Option<String> {
    match output {
        StageOutput::Stream(s) => Some(s.clone()),
        StageOutput::Sink(_) => None,
    }
}

/// Why a pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A plugin failed to load.
    #[error("stage `{stage}`: {source}")]
    Plugin {
        /// The stage.
        stage: String,
        /// Why.
        source: PluginError,
    },
    /// A sink could not be opened.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A stream could not be opened or recovered.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// A delivery stream could not start.
    #[error(transparent)]
    Delivery(#[from] crate::delivery::DeliveryError),
    /// A reference table could not be loaded.
    #[error(transparent)]
    Reference(#[from] crate::reference::ReferenceError),
    /// The state database could not be opened.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The NATS cluster of `[storage]` cannot be reached or set up.
    #[error("[storage]: {0}")]
    Nats(#[from] weir_nats::ConnectError),
    /// The NATS backend runs its client on the host's runtime, which could not start.
    #[error("[storage] the NATS client's runtime cannot start: {0}")]
    NoRuntime(std::io::Error),
    /// The host's name for the others sharing the cluster cannot be kept.
    #[error("[storage] cannot keep this host's name in {path}: {source}; set [storage] host instead")]
    HostName {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A stage thread could not start.
    #[error("cannot start stage `{stage}`: {source}")]
    Thread {
        /// The stage.
        stage: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Why a put was refused.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// The stream exists but has no `http` source.
    #[error(
        "stream `{0}` accepts no direct puts: add a [sources.<name>] with kind = \"http\" and stream = \"{0}\" to the manifest"
    )]
    NotASource(String),
    /// The delivery stream reads a weir stream and takes no direct puts.
    #[error("delivery stream `{delivery}` reads stream `{stream}`: put records into that stream instead")]
    FedByStream {
        /// The delivery stream.
        delivery: String,
        /// The stream it reads.
        stream: String,
    },
    /// The stream is a stage's output (or its dead letters): only that stage writes it.
    #[error("stream `{stream}` is written by stage `{stage}` alone: put into that stage's input")]
    StageOutput {
        /// The stream.
        stream: String,
        /// The stage writing it.
        stage: String,
    },
    /// The stream refused the records.
    #[error(transparent)]
    Stream(#[from] StreamError),
}

/// The API a producer puts through; the rules they share are [`Host::put`]'s,
/// and they differ only where AWS's do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Producer {
    /// The native API: only into streams with an `http` source in the manifest.
    Native,
    /// The Kinesis API: into any stream a producer may write, as in AWS.
    Kinesis,
}

/// Appends the records that keep the limits every producer shares (see
/// [`crate::stream::check_record`]); one that breaks one fails alone, with the reason.
fn append_checked(
    store: &dyn StreamStore,
    stream: &str,
    records: Vec<NewRecord>,
) -> Result<Vec<Result<Appended, StreamError>>, StreamError> {
    let checks: Vec<Result<(), StreamError>> = records.iter().map(crate::stream::check_record).collect();
    if checks.iter().all(Result::is_ok) {
        return store.append(stream, records);
    }
    let good: Vec<NewRecord> = records.into_iter().zip(&checks).filter(|(_, c)| c.is_ok()).map(|(r, _)| r).collect();
    let mut appended = if good.is_empty() { Vec::new() } else { store.append(stream, good)? }.into_iter();
    Ok(checks
        .into_iter()
        .map(|check| match check {
            Ok(()) => appended.next().unwrap_or_else(|| {
                Err(StreamError::Failed {
                    stream: stream.to_owned(),
                    reason: "the store answered for fewer records than it was given".into(),
                })
            }),
            Err(e) => Err(e),
        })
        .collect())
}

/// What `GET /v1/pipeline` shows (and `GET /metrics`, in Prometheus's format).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PipelineStatus {
    /// Pipeline name.
    pub pipeline: String,
    /// This host's name among the hosts sharing the streams (none on one host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// The host's clock when the status was taken, ms since the Unix epoch.
    pub now_ms: i64,
    /// Records ever accepted per stream (all shards).
    pub streams: BTreeMap<String, u64>,
    /// What puts brought per stream since the host started.
    pub puts: BTreeMap<String, PutCounts>,
    /// Every shard's newest position.
    pub shards: Vec<ShardStatus>,
    /// Per stream that declares an identity, the records not stored again because it
    /// held their id (since the host started).
    pub duplicates: BTreeMap<String, u64>,
    /// Each stage's counters.
    pub stages: Vec<StageStatus>,
    /// Every consumer's checkpoint and how far it lags behind its stream.
    pub consumers: Vec<ConsumerLag>,
    /// Each delivery stream's counters.
    pub deliveries: Vec<DeliveryStatus>,
    /// Each reference table's rows and reloads.
    pub references: Vec<crate::reference::ReferenceStatus>,
    /// Each notification channel's counts.
    pub channels: Vec<crate::notify::ChannelStatus>,
}

/// What `GET /metrics` shows: the status, and the latency histograms beside it.
#[derive(Debug)]
pub struct MetricsSnapshot {
    /// The counters `weir status` shows.
    pub status: PipelineStatus,
    /// Per stage (and delivery): how long its batches took (read to done) and its plugin calls.
    pub stage_times: Vec<(String, Seconds, Seconds)>,
    /// Per webhook channel: how long its requests took to be answered.
    pub webhook_times: Vec<(String, Seconds)>,
    /// The host's version.
    pub version: &'static str,
}

pub use crate::metrics::PutCounts;

/// Where a shard's records end.
#[derive(Debug, Clone, Serialize)]
pub struct ShardStatus {
    /// The stream.
    pub stream: String,
    /// The shard's id.
    pub shard: String,
    /// The position after its newest record.
    pub end: u64,
}

/// Where a consumer (a stage) is in its stream.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerLag {
    /// The stream.
    pub stream: String,
    /// The shard.
    pub shard: String,
    /// The consumer (stage name).
    pub consumer: String,
    /// Next sequence number it will read.
    pub checkpoint: u64,
    /// Records accepted but not yet checkpointed by it.
    pub lag_records: u64,
    /// How long ago the oldest of those arrived, in ms (Kinesis's
    /// `IteratorAgeMilliseconds`); 0 when it has caught up.
    pub lag_ms: i64,
}

/// How a [`Host`] starts besides its manifest.
#[derive(Clone)]
pub struct HostOptions {
    /// Where arrival times and buffer ages come from (a simulated day runs on its own clock).
    pub clock: crate::stream::Clock,
    /// Wraps each stream store the host opens (its streams, its delivery buffers):
    /// tests run the host on a [`crate::stream::FaultyStore`].
    pub store: Option<StoreWrapper>,
}

/// What [`HostOptions::store`] holds.
pub type StoreWrapper = Arc<dyn Fn(Arc<dyn StreamStore>) -> Arc<dyn StreamStore> + Send + Sync>;

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions { clock: crate::stream::system_clock(), store: None }
    }
}

/// A running pipeline.
pub struct Host {
    /// The manifest it runs.
    pub pipeline: Arc<Pipeline>,
    streams: Arc<dyn StreamStore>,
    /// The streams' deduplication (under any test wrapper), for its counts.
    dedup: Arc<DedupStore>,
    /// The same for the delivery streams' buffers.
    buffer_dedup: Arc<DedupStore>,
    stages: Vec<StageHandle>,
    /// Durable buffers of the delivery streams, one stream each.
    buffers: Arc<dyn StreamStore>,
    deliveries: Vec<Delivery>,
    references: Arc<ReferenceTables>,
    /// State tables and what channels sent.
    pub state: Arc<StateStore>,
    /// Notification channels.
    pub channels: Arc<Channels>,
    feeds_stopped: std::sync::atomic::AtomicBool,
    started: Instant,
    /// What puts brought per stream (for the status and `/metrics`).
    puts: crate::metrics::PutCounters,
    /// Compiles swapped-in plugins.
    engine: Arc<PluginEngine>,
    /// Its name among the hosts sharing the streams on a cluster.
    name: Option<String>,
}

impl Host {
    /// Opens sinks, loads every plugin (failing fast on any that does not load)
    /// and starts every stage.
    pub fn start(pipeline: Pipeline, engine: &Arc<PluginEngine>) -> Result<Arc<Host>, StartError> {
        Self::start_with(pipeline, engine, HostOptions::default())
    }

    /// [`Host::start`] with `options`: another clock, another stream store.
    pub fn start_with(
        pipeline: Pipeline,
        engine: &Arc<PluginEngine>,
        options: HostOptions,
    ) -> Result<Arc<Host>, StartError> {
        let HostOptions { clock, store } = options;
        let specs: Vec<DiskStreamSpec> = pipeline.streams.iter().map(|s| s.storage.clone()).collect();
        // The cluster keeping the streams keeps the state tables and channels too.
        let mut cluster = None;
        let disk: Arc<dyn StreamStore> = match &pipeline.storage {
            Storage::Local => {
                let streams_dir = pipeline.data_dir.join("streams");
                Arc::new(DiskStreams::open_with_clock(&streams_dir, &specs, Arc::new(FileSyncer), clock.clone())?)
            }
            Storage::Nats(settings) => {
                let runtime = crate::io::handle().map_err(StartError::NoRuntime)?.clone();
                let mut settings = settings.clone();
                if settings.host.is_empty() {
                    settings.host = host_name(&pipeline.data_dir)?;
                }
                let nats = weir_nats::NatsStreams::connect(settings.clone(), runtime)?;
                let declared: Vec<StreamSettings> = specs
                    .iter()
                    .map(|s| StreamSettings { name: s.name.clone(), retention: s.retention, shards: s.shards })
                    .collect();
                nats.ensure(&declared)?;
                tracing::info!(
                    servers = ?settings.servers,
                    replicas = settings.replicas,
                    host = %settings.host,
                    "streams are kept on NATS"
                );
                let nats = Arc::new(nats);
                cluster = Some(nats.clone());
                nats
            }
        };
        // Streams that declare an identity store each record once (every way in goes through this).
        let identities: Vec<(String, DedupSpec)> =
            pipeline.streams.iter().filter_map(|s| Some((s.name.to_string(), s.deduplicate.clone()?))).collect();
        let dedup = Arc::new(DedupStore::open(disk, identities, clock.clone())?);
        let streams = match &store {
            Some(wrap) => wrap(dedup.clone()),
            None => dedup.clone(),
        };
        let mut sinks: BTreeMap<String, Arc<FileSink>> = BTreeMap::new();
        for s in &pipeline.sinks {
            sinks.insert(s.name.to_string(), Arc::new(FileSink::open(&s.path, s.format)?));
        }
        let references = ReferenceTables::open(&pipeline.references)?;
        references.start_reloading();
        let tables = pipeline.tables.iter().cloned();
        let state = Arc::new(match cluster.clone() {
            Some(nats) => StateStore::shared(nats, tables),
            None if pipeline.tables.is_empty() && pipeline.channels.is_empty() => StateStore::in_memory()?,
            None => StateStore::open(&pipeline.data_dir.join("state.redb"), tables)?,
        });
        let channels = Arc::new(Channels::new(&pipeline.channels, state.clone()));
        channels.start_webhooks();
        let mut implicit: BTreeMap<PathBuf, Arc<FileSink>> = BTreeMap::new();
        let mut prepared = Vec::new();
        let mut aggregators = Vec::new();
        let mut notifiers = Vec::new();
        for spec in &pipeline.stages {
            if is_aggregator(spec) {
                aggregators.push(spec);
                continue;
            }
            if spec.output == Target::Effects {
                notifiers.push(spec);
                continue;
            }
            let plugin = load_transformer(
                engine,
                &pipeline,
                &spec.name,
                &spec.plugin,
                spec.limits,
                spec.grants.clone(),
                &spec.config,
            )?
            .with_references(references.clone());
            // Instantiate once now so a plugin that cannot start is reported before any record arrives.
            if let Err(e) = plugin.instantiate() {
                tracing::error!(stage = %spec.name, error = %e, "plugin does not start; its records will wait in the stream");
            }
            let output = stage_output(spec, &sinks)?;
            let output_stream = output_stream(&output);
            let dead_letters = dead_letter_sink(spec, &sinks, &mut implicit, &streams)?;
            let stage = TransformOperator::stage(
                pipeline.name.as_str(),
                Arc::new(spec.clone()),
                plugin,
                streams.clone(),
                output,
                dead_letters,
            );
            prepared.push((spec.name.to_string(), stage, output_stream));
        }
        let mut stages = Vec::new();
        for (name, stage, output_stream) in prepared {
            stages.push(stage.spawn(output_stream).map_err(|source| StartError::Thread { stage: name, source })?);
        }
        for spec in aggregators {
            let (compiled, sandbox) =
                compile_plugin(engine, &pipeline, &spec.name, &spec.plugin, spec.limits, spec.grants.clone())?;
            let plugin = AggregatorPlugin::new(engine, compiled, sandbox, spec.config.clone())
                .map_err(|source| StartError::Plugin { stage: spec.name.to_string(), source })?
                .with_references(references.clone());
            if let Err(e) = plugin.instantiate() {
                tracing::error!(stage = %spec.name, error = %e, "plugin does not start; its records will wait in the stream");
            }
            let output = stage_output(spec, &sinks)?;
            let output_stream = output_stream(&output);
            let dead_letters = dead_letter_sink(spec, &sinks, &mut implicit, &streams)?;
            let stage = AggregateOperator::stage(
                pipeline.name.as_str(),
                Arc::new(spec.clone()),
                plugin,
                streams.clone(),
                output,
                dead_letters,
                pipeline.data_dir.join("stage-state"),
                references.clone(),
            )
            .map_err(|e| StartError::Thread { stage: spec.name.to_string(), source: std::io::Error::other(e) })?;
            let spawned = stage.spawn(output_stream);
            stages.push(spawned.map_err(|source| StartError::Thread { stage: spec.name.to_string(), source })?);
        }
        for spec in notifiers {
            let (compiled, sandbox) =
                compile_plugin(engine, &pipeline, &spec.name, &spec.plugin, spec.limits, spec.grants.clone())?;
            let plugin = NotifierPlugin::new(engine, compiled, sandbox, spec.config.clone())
                .map_err(|source| StartError::Plugin { stage: spec.name.to_string(), source })?;
            // Each stage its own: a batch's changes are that stage's transaction.
            let services = Arc::new(HostServices::new(state.clone(), channels.clone(), references.clone(), spec));
            if let Err(e) = plugin.instantiate(services.clone()) {
                tracing::error!(stage = %spec.name, error = %e, "plugin does not start; its records will wait in the stream");
            }
            let dead_letters = dead_letter_sink(spec, &sinks, &mut implicit, &streams)?;
            let stage = NotifierOperator::stage(
                pipeline.name.as_str(),
                Arc::new(spec.clone()),
                plugin,
                services,
                streams.clone(),
                dead_letters,
            );
            stages
                .push(stage.spawn(None).map_err(|source| StartError::Thread { stage: spec.name.to_string(), source })?);
        }
        let buffer_specs: Vec<DiskStreamSpec> = pipeline
            .deliveries
            .iter()
            .filter(|d| d.source_stream.is_none())
            .map(|d| DiskStreamSpec::new(d.name.as_str(), DEFAULT_CAPACITY, FsyncPolicy::Group(DEFAULT_FSYNC_INTERVAL)))
            .collect();
        let buffers_dir = pipeline.data_dir.join("delivery");
        let buffers: Arc<dyn StreamStore> =
            Arc::new(DiskStreams::open_with_clock(&buffers_dir, &buffer_specs, Arc::new(FileSyncer), clock.clone())?);
        // Direct puts into a delivery that declares its records' ids are buffered once.
        let identities: Vec<(String, DedupSpec)> =
            pipeline.deliveries.iter().filter_map(|d| Some((d.name.to_string(), d.deduplicate.clone()?))).collect();
        let buffer_dedup = Arc::new(DedupStore::open(buffers, identities, clock.clone())?);
        let buffers: Arc<dyn StreamStore> = buffer_dedup.clone();
        let buffers = match &store {
            Some(wrap) => wrap(buffers),
            None => buffers,
        };
        let mut deliveries = Vec::new();
        for spec in &pipeline.deliveries {
            let transform = match &spec.transform {
                None => None,
                Some(t) => Some(
                    load_transformer(
                        engine,
                        &pipeline,
                        &spec.name,
                        &t.plugin,
                        t.limits,
                        crate::manifest::Grants { uses: t.uses.clone(), ..Default::default() },
                        &t.config,
                    )?
                    .with_references(references.clone()),
                ),
            };
            let state_dir = pipeline.data_dir.join("delivery-state");
            let (source, plans): (Arc<dyn StreamStore>, PlanPlace) = match (&spec.source_stream, &cluster) {
                // Reading a stream on a cluster, it keeps its plans there and may move between hosts.
                (Some(_), Some(nats)) => (streams.clone(), PlanPlace::Cluster(nats.clone())),
                (Some(_), None) => (streams.clone(), PlanPlace::Dir(state_dir)),
                // Its own buffer is on this host's disk, and so are its plans.
                (None, _) => (buffers.clone(), PlanPlace::Dir(state_dir)),
            };
            deliveries.push(Delivery::start_with_clock(spec.clone(), source, transform, plans, clock.clone())?);
        }
        for spec in &pipeline.stages {
            let plugin = format!("{}@{}", spec.plugin.info.name, spec.plugin.info.version.get_ref());
            let world = spec.plugin.info.world.to_string();
            tracing::info!(stage = %spec.name, %plugin, %world, input = %spec.input, "stage started");
        }
        for spec in &pipeline.deliveries {
            let transform = spec.transform.as_ref().map_or("none".to_owned(), |t| t.plugin.info.name.to_string());
            tracing::info!(delivery = %spec.name, lake = %spec.lake.describe(), %transform, "delivery stream started");
        }
        let host = Arc::new(Host {
            pipeline: Arc::new(pipeline),
            streams,
            dedup,
            buffer_dedup,
            stages,
            buffers,
            deliveries,
            references,
            state,
            channels,
            feeds_stopped: Default::default(),
            puts: crate::metrics::PutCounters::default(),
            started: Instant::now(),
            engine: engine.clone(),
            name: cluster.as_ref().map(|nats| nats.host().to_owned()),
        });
        for spec in host.pipeline.stages.iter().filter(|s| s.hot_swap.watch) {
            watch_component(Arc::downgrade(&host), spec.name.to_string(), spec.plugin.clone());
        }
        Ok(host)
    }

    /// Appends records to a stream that has an `http` source; one result per record.
    pub fn put(
        &self,
        stream: &str,
        records: Vec<NewRecord>,
        producer: Producer,
    ) -> Result<Vec<Result<Appended, StreamError>>, PutError> {
        self.streams.shard_count(stream)?;
        // A stage's output and dead-letter streams are written by that stage alone.
        let writes = |s: &&crate::manifest::StageSpec| {
            matches!(&s.output, Target::Stream(n) if n.as_str() == stream)
                || matches!(&s.dead_letter, DeadLetter::Stream(n) if n.as_str() == stream)
        };
        if let Some(stage) = self.pipeline.stages.iter().find(writes) {
            return Err(PutError::StageOutput { stream: stream.to_owned(), stage: stage.name.to_string() });
        }
        if producer == Producer::Native && !self.pipeline.sources.iter().any(|s| s.stream.as_str() == stream) {
            return Err(PutError::NotASource(stream.to_owned()));
        }
        let sizes: Vec<u64> = records.iter().map(|r| r.data.len() as u64).collect();
        let answer = append_checked(self.streams.as_ref(), stream, records);
        self.count_put(stream, &sizes, &answer);
        Ok(answer?)
    }

    /// Counts what a put into `stream` brought: the bytes accepted, the records throttled.
    fn count_put(&self, stream: &str, sizes: &[u64], answer: &Result<Vec<Result<Appended, StreamError>>, StreamError>) {
        let (bytes, throttled) = match answer {
            Ok(results) => results.iter().zip(sizes).fold((0, 0), |(bytes, throttled), (result, size)| match result {
                Ok(_) => (bytes + size, throttled),
                Err(e) if e.is_throttle() => (bytes, throttled + 1),
                Err(_) => (bytes, throttled),
            }),
            Err(e) if e.is_throttle() => (0, sizes.len() as u64),
            Err(_) => (0, 0),
        };
        self.puts.count(stream, bytes, throttled);
    }

    /// Puts records into a delivery stream's buffer; one result per record.
    pub fn deliver(
        &self,
        delivery: &str,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Result<Appended, StreamError>>, PutError> {
        if let Some(d) = self.deliveries.iter().find(|d| d.spec.name.as_str() == delivery)
            && let Some(stream) = &d.spec.source_stream
        {
            return Err(PutError::FedByStream { delivery: delivery.to_owned(), stream: stream.to_string() });
        }
        Ok(append_checked(self.buffers.as_ref(), delivery, records)?)
    }

    /// The delivery streams' settings and counters.
    pub fn deliveries(&self) -> Vec<(Arc<crate::manifest::DeliverySpec>, DeliveryStatus)> {
        self.deliveries.iter().map(|d| (d.spec.clone(), d.status())).collect()
    }

    /// The pipeline's stream store.
    pub fn streams(&self) -> Arc<dyn StreamStore> {
        self.streams.clone()
    }

    /// Up to `max` records of a stream's shard from sequence `from`.
    pub fn read(&self, stream: &str, shard: u32, from: u64, max: usize) -> Result<Vec<StoredRecord>, StreamError> {
        self.streams.read(stream, shard, from, max)
    }

    /// Counters of every stage and stream.
    pub fn status(&self) -> PipelineStatus {
        let stages = self.stages.iter().map(StageHandle::status).collect();
        let now_ms = crate::stream::now_ms();
        let (streams, shards, consumers) = self.walk_streams(Some(now_ms));
        let buffer_duplicates = self.buffer_dedup.duplicates();
        PipelineStatus {
            pipeline: self.pipeline.name.to_string(),
            host: self.name.clone(),
            uptime_seconds: self.started.elapsed().as_secs(),
            now_ms,
            streams,
            puts: self.puts.snapshot(),
            shards,
            duplicates: self.dedup.duplicates(),
            stages,
            consumers,
            deliveries: self
                .deliveries
                .iter()
                .map(|d| DeliveryStatus {
                    records_duplicate: buffer_duplicates.get(d.spec.name.as_str()).copied().unwrap_or(0),
                    ..d.status()
                })
                .collect(),
            references: self.references.status(),
            channels: self.channels.status(),
        }
    }

    /// A stage's pending dead letters (those `plugin`, `name@version`, set aside, if given), oldest first.
    pub fn dead_letters(&self, stage: &str, plugin: Option<&str>) -> Result<Vec<dlq::Letter>, dlq::DlqError> {
        let (spec, _) = self.stage_of(stage)?;
        dlq::pending(&self.pipeline, self.streams.as_ref(), spec, plugin)
    }

    /// Feeds a stage's pending dead letters through the stage's running plugin again.
    pub fn redrive(&self, stage: &str, plugin: Option<&str>) -> Result<dlq::Redrive, dlq::DlqError> {
        let (spec, handle) = self.stage_of(stage)?;
        dlq::redrive(&self.pipeline, self.streams.as_ref(), spec, handle, plugin)
    }

    /// A delivery stream's pending error records (those of its transform `plugin`, if given), oldest first.
    pub fn delivery_errors(&self, delivery: &str, plugin: Option<&str>) -> Result<Vec<dlq::Letter>, dlq::DlqError> {
        lake_errors::pending(&self.pipeline, self.delivery_of(delivery)?, plugin)
    }

    /// Feeds a delivery stream's pending error records through it again.
    pub fn redrive_delivery(&self, delivery: &str, plugin: Option<&str>) -> Result<dlq::Redrive, dlq::DlqError> {
        lake_errors::redrive(&self.pipeline, self.delivery_of(delivery)?, plugin)
    }

    fn delivery_of(&self, delivery: &str) -> Result<&Delivery, dlq::DlqError> {
        self.deliveries.iter().find(|d| d.spec.name.as_str() == delivery).ok_or_else(|| {
            dlq::DlqError::UnknownDelivery { pipeline: self.pipeline.name.to_string(), delivery: delivery.to_owned() }
        })
    }

    fn stage_of(&self, stage: &str) -> Result<(&crate::manifest::StageSpec, &StageHandle), dlq::DlqError> {
        let unknown =
            || dlq::DlqError::UnknownStage { pipeline: self.pipeline.name.to_string(), stage: stage.to_owned() };
        let spec = self.pipeline.stages.iter().find(|s| s.name.as_str() == stage).ok_or_else(unknown)?;
        let handle = self.stages.iter().find(|h| h.name() == stage).ok_or_else(unknown)?;
        Ok((spec, handle))
    }

    /// Every consumer's checkpoint and lag in records, without their age: for
    /// waiting until a pipeline has caught up, cheaply and often.
    pub fn consumer_lags(&self) -> Vec<ConsumerLag> {
        self.walk_streams(None).2
    }

    /// Records per stream, every shard's end, and every consumer's lag; with
    /// `now_ms`, also how old the oldest record each consumer has not
    /// checkpointed is (one read per lagging consumer and shard).
    fn walk_streams(&self, now_ms: Option<i64>) -> (BTreeMap<String, u64>, Vec<ShardStatus>, Vec<ConsumerLag>) {
        let mut streams = BTreeMap::new();
        let mut shards = Vec::new();
        let mut consumers = Vec::new();
        for name in self.streams.list() {
            let Ok(info) = self.streams.info(&name) else { continue };
            for shard in &info.shards {
                shards.push(ShardStatus { stream: name.clone(), shard: shard_id(shard.index), end: shard.end });
                for (consumer, checkpoint) in &shard.consumers {
                    // The age of the oldest record not checkpointed; unknown (0) if it cannot be read now.
                    let age = now_ms.filter(|_| *checkpoint < shard.end).and_then(|now| {
                        let oldest = self.streams.read(&name, shard.index, *checkpoint, 1).ok()?;
                        Some((now - oldest.first()?.arrival_ms).max(0))
                    });
                    consumers.push(ConsumerLag {
                        stream: name.clone(),
                        shard: shard_id(shard.index),
                        consumer: consumer.clone(),
                        checkpoint: *checkpoint,
                        lag_records: shard.end.saturating_sub(*checkpoint),
                        lag_ms: age.unwrap_or(0),
                    });
                }
            }
            streams.insert(name, info.appended());
        }
        (streams, shards, consumers)
    }

    /// The status and the latency histograms, for `GET /metrics`.
    pub fn metrics(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            status: self.status(),
            stage_times: self
                .stages
                .iter()
                .map(|s| (s.name().to_owned(), s.stats.batch_seconds.clone(), s.stats.plugin_seconds.clone()))
                .chain(self.deliveries.iter().map(|d| {
                    let (batch, plugin) = d.times();
                    (d.spec.name.to_string(), batch, plugin)
                }))
                .collect(),
            webhook_times: self.channels.webhook_times(),
            version: env!("CARGO_PKG_VERSION"),
        }
    }

    /// The API is shutting down: live feeds (inbox events) end, so the server
    /// can finish its connections.
    pub fn stop_feeds(&self) {
        self.feeds_stopped.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether [`Host::stop_feeds`] was called.
    pub fn feeds_stopped(&self) -> bool {
        self.feeds_stopped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Lets every stage finish the records already accepted, then stops them.
    /// Upstream stages finish first, so records they still pass downstream are
    /// not stranded. Blocks; call it after the HTTP API stopped accepting puts.
    pub fn drain(&self) {
        let mut done = vec![false; self.stages.len()];
        while done.contains(&false) {
            for (i, stage) in self.stages.iter().enumerate() {
                let upstream_busy =
                    self.stages.iter().zip(&done).any(|(other, finished)| {
                        !finished && other.output_stream.as_deref() == Some(stage.input.as_str())
                    });
                if !done[i] && !upstream_busy {
                    stage.drain();
                    done[i] = true;
                }
            }
        }
        for delivery in &self.deliveries {
            delivery.drain();
        }
    }

    /// Says the input has ended (a bounded run, such as the day `weir simulate
    /// --run` puts): each aggregator, in the pipeline's order and once it has
    /// read all of its input, closes every window its records complete, without
    /// waiting for late records or for producers that may start later (wall-clock
    /// waits mean nothing in a day put within seconds). Blocks until the windows
    /// are written; call it once the sources have stopped.
    pub fn end_input(&self, timeout: std::time::Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        for spec in self.pipeline.stages.iter().filter(|s| is_aggregator(s)) {
            let name = spec.name.as_str();
            let Some(handle) = self.stages.iter().find(|h| h.name() == name) else { continue };
            // An aggregator upstream may just have written its last windows: they are read first.
            while self.consumer_lags().iter().any(|c| c.consumer == name && c.lag_records > 0) {
                if Instant::now() >= deadline {
                    return Err(format!("stage `{name}` did not read all of its input within {timeout:?}"));
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            handle
                .command(crate::swap::StageCommand::EndOfInput, deadline.saturating_duration_since(Instant::now()))?;
        }
        Ok(())
    }
}

/// Compiles and checks the transformer a stage or delivery stream runs, sandboxed as the manifest says.
fn load_transformer(
    engine: &Arc<PluginEngine>,
    pipeline: &Pipeline,
    owner: &crate::manifest::Name,
    plugin: &crate::manifest::PluginManifest,
    limits: crate::manifest::Limits,
    grants: crate::manifest::Grants,
    config: &[(String, String)],
) -> Result<TransformerPlugin, StartError> {
    let (compiled, sandbox) = compile_plugin(engine, pipeline, owner, plugin, limits, grants)?;
    TransformerPlugin::new(engine, compiled, sandbox, config.to_vec())
        .map_err(|source| StartError::Plugin { stage: owner.to_string(), source })
}

/// Compiles the component a stage or delivery stream runs, and its sandbox as the manifest says.
fn compile_plugin(
    engine: &Arc<PluginEngine>,
    pipeline: &Pipeline,
    owner: &crate::manifest::Name,
    plugin: &crate::manifest::PluginManifest,
    limits: crate::manifest::Limits,
    grants: crate::manifest::Grants,
) -> Result<(crate::plugin::CompiledComponent, SandboxSpec), StartError> {
    let ident = Arc::new(PluginIdent {
        pipeline: pipeline.name.to_string(),
        stage: owner.to_string(),
        plugin: format!("{}@{}", plugin.info.name, plugin.info.version.get_ref()),
    });
    let compiled = engine
        .compile(&plugin.component_path())
        .map_err(|source| StartError::Plugin { stage: owner.to_string(), source })?;
    Ok((compiled, SandboxSpec { ident, limits, grants }))
}

/// Where a stage's results go.
fn stage_output(
    spec: &crate::manifest::StageSpec,
    sinks: &BTreeMap<String, Arc<FileSink>>,
) -> Result<StageOutput, StartError> {
    Ok(match &spec.output {
        Target::Stream(name) => StageOutput::Stream(name.to_string()),
        Target::Effects => {
            return Err(StartError::Plugin {
                stage: spec.name.to_string(),
                source: PluginError::Contract("a notifier stage writes no records".into()),
            });
        }
        Target::Sink(name) => match sinks.get(name.as_str()) {
            Some(sink) => StageOutput::Sink(sink.clone()),
            None => unreachable_sink(name.as_str())?,
        },
    })
}

/// Where a stage's failed (or late) records go; default files are shared by path.
fn dead_letter_sink(
    spec: &crate::manifest::StageSpec,
    sinks: &BTreeMap<String, Arc<FileSink>>,
    implicit: &mut BTreeMap<PathBuf, Arc<FileSink>>,
    streams: &Arc<dyn StreamStore>,
) -> Result<DeadLetters, StartError> {
    Ok(match &spec.dead_letter {
        DeadLetter::Sink(name) => match sinks.get(name.as_str()) {
            Some(sink) => DeadLetters::Sink(sink.clone()),
            None => unreachable_sink(name.as_str())?,
        },
        DeadLetter::Stream(name) => DeadLetters::Stream { streams: streams.clone(), stream: name.to_string() },
        DeadLetter::File(path) => DeadLetters::Sink(match implicit.get(path) {
            Some(sink) => sink.clone(),
            None => {
                let sink = Arc::new(FileSink::open(path, crate::manifest::FileFormat::Json)?);
                implicit.insert(path.clone(), sink.clone());
                sink
            }
        }),
    })
}

/// The manifest checker guarantees every named sink exists; this keeps the
/// host honest if that ever changes.
fn unreachable_sink<T>(name: &str) -> Result<T, StartError> {
    Err(StartError::Sink(SinkError {
        path: PathBuf::from(name),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "sink not declared"),
    }))
}

/// This host's name for the others sharing a NATS cluster: made once and kept
/// in `<data-dir>/host-name`, so that a restarted host takes its own leases
/// back, and two hosts (two data dirs) never share one.
fn host_name(data_dir: &std::path::Path) -> Result<String, StartError> {
    let path = data_dir.join("host-name");
    let failed = |source| StartError::HostName { path: path.clone(), source };
    match std::fs::read_to_string(&path) {
        Ok(name) if !name.trim().is_empty() => return Ok(name.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed(e)),
    }
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let name = format!("{machine}-{:08x}", (nanos as u64 ^ u64::from(std::process::id()).rotate_left(32)) as u32);
    std::fs::create_dir_all(data_dir).map_err(failed)?;
    let temporary = data_dir.join("host-name.new");
    std::fs::write(&temporary, &name).map_err(failed)?;
    std::fs::rename(&temporary, &path).map_err(failed)?;
    Ok(name)
}
