//! Loaded plugins and their instances, one pair per world. A loaded plugin is
//! compiled and type-checked once (`InstancePre`); each instance has its own
//! store, is initialised with the stage's configuration, and every call into
//! it runs under the CPU deadline and the memory cap.

use std::sync::Arc;

use wasmtime::Store;

use super::bad_records::BadRecords;
use super::batch::RecordRef;
use super::bindings::Batch;
use super::bindings::aggregator::exports::weir::plugin::aggregate::Window;
use super::bindings::aggregator::{Aggregator, AggregatorPre};
use super::bindings::notifier::{Notifier, NotifierPre};
use super::bindings::state_migrator::exports::weir::plugin::state_migration;
use super::bindings::transformer::exports::weir::plugin::transform::Outcome;
use super::bindings::transformer::weir::plugin::types::States;
use super::bindings::transformer::{Transformer, TransformerPre};
use super::engine::{CompiledComponent, PluginEngine};
use super::error::PluginError;
use super::sandbox::{SandboxSpec, StoreData, arm_deadline, classify, new_store};
use super::services::Services;
use crate::services::ReferenceLookup;
use crate::spec::World;

/// A compiled component checked against a world, ready to instantiate.
#[derive(Clone)]
pub struct Loaded<P> {
    pre: P,
    engine: Arc<PluginEngine>,
    /// What is running.
    pub compiled: CompiledComponent,
    /// The sandbox settings.
    pub spec: SandboxSpec,
    /// Configuration handed to `init`.
    pub config: Vec<(String, String)>,
    /// The reference tables its `reference.lookup` reads (notifiers read them through their services).
    references: Option<Arc<dyn ReferenceLookup>>,
}

impl<P> Loaded<P> {
    /// Lets its instances look rows up in `references`.
    pub fn with_references(mut self, references: Arc<dyn ReferenceLookup>) -> Self {
        self.references = Some(references);
        self
    }
}

fn wrong_world(compiled: &CompiledComponent, world: World) -> impl Fn(wasmtime::Error) -> PluginError + '_ {
    move |e| PluginError::WrongWorld {
        path: compiled.path.clone(),
        world: world.to_string(),
        message: format!("{e:#}"),
    }
}

/// Compiles `path` and checks it against `world`'s imports and exports.
pub fn check_world(
    engine: &PluginEngine,
    path: &std::path::Path,
    world: World,
) -> Result<CompiledComponent, PluginError> {
    let compiled = engine.compile(path)?;
    fits_world(engine, &compiled, world)?;
    Ok(compiled)
}

/// Checks a compiled component against `world`'s imports and exports.
pub fn fits_world(engine: &PluginEngine, compiled: &CompiledComponent, world: World) -> Result<(), PluginError> {
    let pre = engine.linker(world).instantiate_pre(&compiled.component).map_err(wrong_world(compiled, world))?;
    match world {
        World::Transformer => TransformerPre::new(pre).map(drop),
        World::Aggregator => AggregatorPre::new(pre).map(drop),
        World::Notifier => NotifierPre::new(pre).map(drop),
    }
    .map_err(wrong_world(compiled, world))
}

fn load<P>(
    engine: &Arc<PluginEngine>,
    compiled: CompiledComponent,
    world: World,
    spec: SandboxSpec,
    config: Vec<(String, String)>,
    make: impl FnOnce(wasmtime::component::InstancePre<StoreData>) -> wasmtime::Result<P>,
) -> Result<Loaded<P>, PluginError> {
    let pre = engine.linker(world).instantiate_pre(&compiled.component).map_err(wrong_world(&compiled, world))?;
    let pre = make(pre).map_err(wrong_world(&compiled, world))?;
    Ok(Loaded { pre, engine: engine.clone(), compiled, spec, config, references: None })
}

/// Runs `f` (a call into the guest) under the deadline, classifying failures.
fn guarded<T, E: Into<PluginError>>(
    store: &mut Store<StoreData>,
    spec: &SandboxSpec,
    f: impl FnOnce(&mut Store<StoreData>) -> wasmtime::Result<Result<T, E>>,
) -> Result<T, PluginError> {
    arm_deadline(store, spec.limits.timeout);
    match f(store) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(classify(store, &spec.limits, e)),
    }
}

/// What an instance's imports call: a notifier's services, and the reference tables.
type HostImports = (Option<Arc<dyn Services>>, Option<Arc<dyn ReferenceLookup>>);

/// Makes an instance: a new store, instantiation and `init`, all under the limits.
fn instantiate<B>(
    engine: &PluginEngine,
    spec: &SandboxSpec,
    (services, references): HostImports,
    make: impl FnOnce(&mut Store<StoreData>) -> wasmtime::Result<B>,
    init: impl FnOnce(&B, &mut Store<StoreData>) -> wasmtime::Result<Result<(), String>>,
) -> Result<(Store<StoreData>, B), PluginError> {
    let mut store = new_store(engine.engine(), spec, services, references)?;
    let bindings = match make(&mut store) {
        Ok(b) => b,
        Err(e) => return Err(PluginError::Instantiate(classify(&store, &spec.limits, e).to_string())),
    };
    guarded(&mut store, spec, |s| init(&bindings, s)).map_err(|e| match e {
        PluginError::Returned(m) => PluginError::Init(m),
        other => other,
    })?;
    Ok((store, bindings))
}

/// A transformer plugin, loaded.
pub type TransformerPlugin = Loaded<TransformerPre<StoreData>>;

impl TransformerPlugin {
    /// Loads a compiled component as a transformer.
    pub fn new(
        engine: &Arc<PluginEngine>,
        compiled: CompiledComponent,
        spec: SandboxSpec,
        config: Vec<(String, String)>,
    ) -> Result<Self, PluginError> {
        load(engine, compiled, World::Transformer, spec, config, TransformerPre::new)
    }

    /// A new, initialised instance.
    pub fn instantiate(&self) -> Result<TransformerInstance, PluginError> {
        let (store, bindings) = instantiate(
            &self.engine,
            &self.spec,
            (None, self.references.clone()),
            |s| self.pre.instantiate(s),
            |b: &Transformer, s| b.weir_plugin_transform().call_init(s, &self.config),
        )?;
        Ok(TransformerInstance { store, bindings, spec: self.spec.clone() })
    }
}

/// One outcome per input record and the records of the `ok` ones.
#[derive(Debug)]
pub struct Transformed {
    /// One per input record.
    pub outcomes: Vec<Outcome>,
    /// Output records, in input order.
    pub output: Batch,
}

impl Transformed {
    /// Pairs each input index with its outcome and output records.
    pub fn per_record(&self) -> impl Iterator<Item = (usize, &Outcome, RecordOutputs<'_>)> {
        let mut next = 0;
        self.outcomes.iter().enumerate().map(move |(i, o)| {
            let n = if let Outcome::Ok(n) = o { *n as usize } else { 0 };
            let end = (next + n).min(self.output.len());
            let outputs = RecordOutputs { batch: &self.output, range: next..end };
            next = end;
            (i, o, outputs)
        })
    }
}

/// One input record's output records (a view of [`Transformed::output`]).
#[derive(Debug, Clone)]
pub struct RecordOutputs<'a> {
    batch: &'a Batch,
    range: std::ops::Range<usize>,
}

impl<'a> RecordOutputs<'a> {
    /// How many.
    pub fn len(&self) -> usize {
        self.range.len()
    }

    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// The first, if any.
    pub fn first(&self) -> Option<RecordRef<'a>> {
        (!self.is_empty()).then(|| self.batch.record(self.range.start))
    }

    /// Each, in order.
    pub fn iter(&self) -> impl Iterator<Item = RecordRef<'a>> + use<'a> {
        let batch = self.batch;
        self.range.clone().map(move |i| batch.record(i))
    }
}

/// A running transformer instance.
pub struct TransformerInstance {
    store: Store<StoreData>,
    bindings: Transformer,
    spec: SandboxSpec,
}

impl TransformerInstance {
    /// Transforms a batch; checks the result against the contract. A record
    /// the plugin refuses with a `bad-record` error gets a `processing-failed`
    /// outcome, and the others are transformed again without it.
    pub fn transform(&mut self, input: &Batch) -> Result<Transformed, PluginError> {
        let mut bad = BadRecords::new(input.len());
        let done = loop {
            let called = match bad.kept() {
                _ if bad.is_whole() => self.transform_once(input),
                [] => Ok(Transformed { outcomes: Vec::new(), output: Batch::with_capacity(0, 0) }),
                kept => self.transform_once(&input.only(kept)),
            };
            match called {
                Ok(done) => break done,
                Err(e) => bad.refuse(e)?,
            }
        };
        if bad.is_whole() {
            return Ok(done);
        }
        let mut refused = bad.refused().iter().peekable();
        let mut outcomes = done.outcomes.into_iter();
        // `transform_once` checked one outcome per record it was given: none runs short.
        let outcomes = (0..input.len())
            .map(|i| match refused.next_if(|(at, _)| *at == i) {
                Some((_, reason)) => Ok(Outcome::ProcessingFailed(reason.clone())),
                None => outcomes.next().ok_or_else(|| PluginError::Contract("fewer outcomes than records".to_owned())),
            })
            .collect::<Result<_, _>>()?;
        Ok(Transformed { outcomes, output: done.output })
    }

    fn transform_once(&mut self, input: &Batch) -> Result<Transformed, PluginError> {
        let t =
            guarded(&mut self.store, &self.spec, |s| self.bindings.weir_plugin_transform().call_transform(s, input))?;
        if t.outcomes.len() != input.len() {
            return Err(PluginError::Contract(format!("{} outcomes for {} records", t.outcomes.len(), input.len())));
        }
        t.output.validate().map_err(PluginError::Contract)?;
        let promised: u64 = t.outcomes.iter().map(|o| if let Outcome::Ok(n) = o { u64::from(*n) } else { 0 }).sum();
        if promised != t.output.len() as u64 {
            return Err(PluginError::Contract(format!(
                "outcomes promise {promised} output records but the output holds {}",
                t.output.len()
            )));
        }
        Ok(Transformed { outcomes: t.outcomes, output: t.output })
    }
}

/// An aggregator plugin, loaded.
pub type AggregatorPlugin = Loaded<AggregatorPre<StoreData>>;

impl AggregatorPlugin {
    /// Loads a compiled component as an aggregator.
    pub fn new(
        engine: &Arc<PluginEngine>,
        compiled: CompiledComponent,
        spec: SandboxSpec,
        config: Vec<(String, String)>,
    ) -> Result<Self, PluginError> {
        load(engine, compiled, World::Aggregator, spec, config, AggregatorPre::new)
    }

    /// A new, initialised instance.
    pub fn instantiate(&self) -> Result<AggregatorInstance, PluginError> {
        let (store, (bindings, migration)) = instantiate(
            &self.engine,
            &self.spec,
            (None, self.references.clone()),
            |s| {
                let instance = self.pre.instance_pre().instantiate(&mut *s)?;
                let bindings = Aggregator::new(&mut *s, &instance)?;
                let migration = match self.migration_indices() {
                    Some(indices) => Some(indices.load(&mut *s, &instance)?),
                    None => None,
                };
                Ok((bindings, migration))
            },
            |(b, _): &(Aggregator, _), s| b.weir_plugin_aggregate().call_init(s, &self.config),
        )?;
        Ok(AggregatorInstance { store, bindings, migration, spec: self.spec.clone() })
    }

    /// Whether the component exports `state-migration` (the `migrating-aggregator` world).
    pub fn can_migrate(&self) -> bool {
        self.migration_indices().is_some()
    }

    fn migration_indices(&self) -> Option<state_migration::GuestIndices> {
        state_migration::GuestIndices::new(self.pre.instance_pre()).ok()
    }
}

/// A running aggregator instance.
pub struct AggregatorInstance {
    store: Store<StoreData>,
    bindings: Aggregator,
    migration: Option<state_migration::Guest>,
    spec: SandboxSpec,
}

impl AggregatorInstance {
    /// The layout version of the plugin's states.
    pub fn state_version(&mut self) -> Result<u32, PluginError> {
        guarded(&mut self.store, &self.spec, |s| {
            self.bindings.weir_plugin_aggregate().call_state_version(s).map(Ok::<_, PluginError>)
        })
    }

    /// Rewrites states kept by state version `from` in this plugin's layout.
    pub fn migrate(&mut self, from: u32, states: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, PluginError> {
        let Some(migration) = &self.migration else {
            return Err(PluginError::Contract("the plugin does not export `weir:plugin/state-migration`".into()));
        };
        let flat = flatten(states);
        let out = guarded(&mut self.store, &self.spec, |s| migration.call_migrate(s, from, &flat))?;
        let mut migrated = vec![Vec::new(); states.len()];
        unflatten_into(&out, &mut migrated)?;
        Ok(migrated)
    }

    /// Folds `input` into `states` (record `i` into `states[groups[i]]`), which it
    /// overwrites with the new states; on an error they are left as they were.
    pub fn fold(&mut self, input: &Batch, groups: &[u32], states: &mut [Vec<u8>]) -> Result<(), PluginError> {
        let flat = flatten(states);
        let out = guarded(&mut self.store, &self.spec, |s| {
            self.bindings.weir_plugin_aggregate().call_fold(s, input, groups, &flat)
        })?;
        unflatten_into(&out, states)
    }

    /// Turns the states of a closed window into result records.
    pub fn emit(
        &mut self,
        start_ms: i64,
        end_ms: i64,
        keys: &[String],
        states: &[Vec<u8>],
    ) -> Result<Batch, PluginError> {
        let window = Window { start: start_ms, end: end_ms };
        let flat = flatten(states);
        let out = guarded(&mut self.store, &self.spec, |s| {
            self.bindings.weir_plugin_aggregate().call_emit(s, window, keys, &flat)
        })?;
        out.validate().map_err(PluginError::Contract)?;
        Ok(out)
    }
}

/// States as they cross the boundary: one buffer and the end of each, not a list per state.
fn flatten(states: &[Vec<u8>]) -> States {
    let mut flat = States { bytes: Vec::with_capacity(states.iter().map(Vec::len).sum()), ends: Vec::new() };
    flat.ends.reserve_exact(states.len());
    for state in states {
        flat.bytes.extend_from_slice(state);
        flat.ends.push(flat.bytes.len() as u32);
    }
    flat
}

/// Copies a plugin's states into `targets` (reusing their buffers), after checking
/// there is one per target and the ends are in order; on an error nothing is written.
fn unflatten_into(flat: &States, targets: &mut [Vec<u8>]) -> Result<(), PluginError> {
    if flat.ends.len() != targets.len() {
        return Err(PluginError::Contract(format!("{} states returned for {}", flat.ends.len(), targets.len())));
    }
    let ordered = flat.ends.windows(2).all(|w| w[0] <= w[1]);
    if !ordered || flat.ends.last().is_some_and(|&end| end as usize > flat.bytes.len()) {
        return Err(PluginError::Contract("the states' ends are out of order or past their bytes".into()));
    }
    let mut start = 0;
    for (target, &end) in targets.iter_mut().zip(&flat.ends) {
        target.clear();
        target.extend_from_slice(&flat.bytes[start..end as usize]);
        start = end as usize;
    }
    Ok(())
}

/// A notifier plugin, loaded.
pub type NotifierPlugin = Loaded<NotifierPre<StoreData>>;

impl NotifierPlugin {
    /// Loads a compiled component as a notifier.
    pub fn new(
        engine: &Arc<PluginEngine>,
        compiled: CompiledComponent,
        spec: SandboxSpec,
        config: Vec<(String, String)>,
    ) -> Result<Self, PluginError> {
        load(engine, compiled, World::Notifier, spec, config, NotifierPre::new)
    }

    /// A new, initialised instance calling `services` for its imports.
    pub fn instantiate(&self, services: Arc<dyn Services>) -> Result<NotifierInstance, PluginError> {
        let (store, bindings) = instantiate(
            &self.engine,
            &self.spec,
            (Some(services), self.references.clone()),
            |s| self.pre.instantiate(s),
            |b: &Notifier, s| b.weir_plugin_consume().call_init(s, &self.config),
        )?;
        Ok(NotifierInstance { store, bindings, spec: self.spec.clone() })
    }
}

/// A running notifier instance.
pub struct NotifierInstance {
    store: Store<StoreData>,
    bindings: Notifier,
    spec: SandboxSpec,
}

impl NotifierInstance {
    /// Hands a batch to the plugin.
    pub fn consume(&mut self, input: &Batch) -> Result<(), PluginError> {
        guarded(&mut self.store, &self.spec, |s| self.bindings.weir_plugin_consume().call_consume(s, input))
    }
}
