//! The sandbox of one plugin instance: its `Store` data, memory cap, CPU
//! deadline, and the little of WASI it may use. No filesystem, network,
//! environment or real clock unless the stage grants it.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, Trap};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::WitError;
use super::bindings::notifier::weir::plugin::{notify, state_table};
use super::bindings::transformer::weir::plugin::{log, reference};
use super::error::{PluginError, PluginIdent};
use super::services::Services;
use crate::services::{Notification, ReferenceLookup};
use crate::spec::{Grants, Limits, Resource, Uses};

/// How often the epoch advances; CPU deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The guest's most recent log lines are capped so a chatty plugin cannot flood the host log.
const MAX_LOG_MESSAGE: usize = 4096;

/// Everything a plugin instance's `Store` holds.
pub struct StoreData {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryCap,
    pub(crate) ident: Arc<PluginIdent>,
    /// The state tables, channels and reference tables its calls may name.
    uses: Uses,
    pub(crate) services: Option<Arc<dyn Services>>,
    pub(crate) references: Option<Arc<dyn ReferenceLookup>>,
}

/// Caps linear memory and remembers that the cap was hit, so the resulting
/// trap is reported as "memory cap" rather than a generic trap.
struct MemoryCap {
    cap: u64,
    hit: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired as u64 > self.cap {
            self.hit = true;
            return Err(wasmtime::format_err!("memory cap of {} bytes reached", self.cap));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl log::Host for StoreData {
    fn log(&mut self, level: log::Level, message: String) {
        let mut message = message;
        if message.len() > MAX_LOG_MESSAGE {
            let mut cut = MAX_LOG_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let id = &self.ident;
        let (pipeline, stage, plugin) = (&id.pipeline, &id.stage, &id.plugin);
        match level {
            log::Level::Trace => tracing::trace!(target: "weir::plugin", pipeline, stage, plugin, "{message}"),
            log::Level::Debug => tracing::debug!(target: "weir::plugin", pipeline, stage, plugin, "{message}"),
            log::Level::Info => tracing::info!(target: "weir::plugin", pipeline, stage, plugin, "{message}"),
            log::Level::Warn => tracing::warn!(target: "weir::plugin", pipeline, stage, plugin, "{message}"),
            log::Level::Error => tracing::error!(target: "weir::plugin", pipeline, stage, plugin, "{message}"),
        }
    }
}

impl super::bindings::transformer::weir::plugin::types::Host for StoreData {}

/// Clocks frozen at the Unix epoch, for plugins that were not granted the clock:
/// their output then depends on their input only.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// The sandbox settings of one stage's plugin.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// Who the plugin is.
    pub ident: Arc<PluginIdent>,
    /// CPU and memory limits.
    pub limits: Limits,
    /// Clock and directory grants.
    pub grants: Grants,
}

// What the imports of a plugin reach: the stage's services, if it has them,
// and of those only the resources its plugin.toml declares. A name it did not
// declare is the plugin's mistake (`failed`); a service that fails may pass
// (`transient`).
impl StoreData {
    /// Whether the plugin declared the resource `name`, and the stage's services.
    fn services(&self, kind: Resource, name: &str) -> Result<&dyn Services, WitError> {
        self.may_use(kind, name)?;
        self.services.as_deref().ok_or_else(|| WitError::Failed("this stage has no host services".to_owned()))
    }

    fn may_use(&self, kind: Resource, name: &str) -> Result<(), WitError> {
        if self.uses.of(kind).contains(name) {
            return Ok(());
        }
        let declared: Vec<&str> = self.uses.of(kind).iter().map(String::as_str).collect();
        Err(WitError::Failed(format!(
            "plugin `{}` may not use {kind} `{name}`: plugin.toml declares no config key of type `{}` naming it (it may use: {})",
            self.ident.plugin,
            kind.config_type(),
            if declared.is_empty() { "none".to_owned() } else { declared.join(", ") }
        )))
    }
}

fn transient(message: String) -> WitError {
    WitError::Transient(message)
}

impl state_table::Host for StoreData {
    fn get(&mut self, table: String, key: String) -> Result<Option<Vec<u8>>, WitError> {
        self.services(Resource::StateTable, &table)?.get(&table, &key).map_err(transient)
    }
    fn put(&mut self, table: String, key: String, value: Vec<u8>) -> Result<(), WitError> {
        self.services(Resource::StateTable, &table)?.put(&table, &key, value).map_err(transient)
    }
    fn delete(&mut self, table: String, key: String) -> Result<(), WitError> {
        self.services(Resource::StateTable, &table)?.delete(&table, &key).map_err(transient)
    }
    fn put_if(
        &mut self,
        table: String,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Result<bool, WitError> {
        self.services(Resource::StateTable, &table)?.put_if(&table, &key, expected, value).map_err(transient)
    }
    fn add(&mut self, table: String, key: String, delta: i64) -> Result<i64, WitError> {
        self.services(Resource::StateTable, &table)?.add(&table, &key, delta).map_err(transient)
    }
}

impl notify::Host for StoreData {
    fn send(&mut self, n: notify::Notification) -> Result<bool, WitError> {
        self.services(Resource::Channel, &n.channel)?
            .send(Notification {
                channel: n.channel,
                recipient: n.recipient,
                subject: n.subject,
                body: n.body,
                idempotency_key: n.idempotency_key,
            })
            .map_err(transient)
    }
}

impl reference::Host for StoreData {
    fn lookup(&mut self, table: String, key: String) -> Result<Option<String>, WitError> {
        self.may_use(Resource::Reference, &table)?;
        // Transformers and aggregators read the tables directly; notifiers through their services.
        match &self.references {
            Some(references) => references.lookup(&table, &key).map_err(transient),
            None => self.services(Resource::Reference, &table)?.lookup(&table, &key).map_err(transient),
        }
    }
}

/// A fresh store for one instance.
pub fn new_store(
    engine: &wasmtime::Engine,
    spec: &SandboxSpec,
    services: Option<Arc<dyn Services>>,
    references: Option<Arc<dyn ReferenceLookup>>,
) -> Result<Store<StoreData>, PluginError> {
    let mut wasi = WasiCtxBuilder::new();
    // Denied by default already; said explicitly because it is a promise.
    wasi.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
    if !spec.grants.clock {
        wasi.wall_clock(FrozenClock).monotonic_clock(FrozenClock);
    }
    for dir in &spec.grants.dirs {
        let perms = if dir.writable { FsPerms::ReadWrite } else { FsPerms::ReadOnly };
        wasi.preopened_dir(&dir.host, &dir.guest, perms)
            .map_err(|e| PluginError::Instantiate(format!("cannot grant directory `{}`: {e}", dir.host.display())))?;
    }
    let data = StoreData {
        wasi: wasi.build(),
        table: ResourceTable::new(),
        limiter: MemoryCap { cap: spec.limits.memory_bytes, hit: false },
        ident: spec.ident.clone(),
        uses: spec.grants.uses.clone(),
        services,
        references,
    };
    let mut store = Store::new(engine, data);
    store.limiter(|d| &mut d.limiter);
    store.set_epoch_deadline(deadline_ticks(spec.limits.timeout));
    Ok(store)
}

fn deadline_ticks(timeout: Duration) -> u64 {
    (timeout.as_millis() as u64).div_ceil(EPOCH_TICK.as_millis() as u64).max(1) + 1
}

/// Arms the CPU deadline before a call into the plugin.
pub fn arm_deadline(store: &mut Store<StoreData>, timeout: Duration) {
    store.set_epoch_deadline(deadline_ticks(timeout));
}

/// Turns a wasmtime error from a call into what the operator needs to know.
pub fn classify(store: &Store<StoreData>, limits: &Limits, err: wasmtime::Error) -> PluginError {
    if store.data().limiter.hit {
        return PluginError::MemoryCap(limits.memory_bytes);
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => PluginError::Timeout(limits.timeout),
        Some(trap) => PluginError::Trap(format!("{trap}{}", backtrace_hint(&err))),
        None => PluginError::Trap(format!("{err:#}")),
    }
}

fn backtrace_hint(err: &wasmtime::Error) -> String {
    match err.downcast_ref::<wasmtime::WasmBacktrace>() {
        Some(bt) => bt.frames().iter().find_map(|f| f.func_name().map(|n| format!(" in `{n}`"))).unwrap_or_default(),
        None => String::new(),
    }
}
