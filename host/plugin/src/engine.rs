//! The one wasmtime `Engine` of a host: configuration, the epoch ticker that
//! enforces CPU deadlines, one linker per world, and a cache of compiled
//! components keyed by content hash (compiling a large component takes seconds).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine};

use super::bindings::{notifier, transformer};
use super::error::PluginError;
use super::sandbox::{EPOCH_TICK, StoreData};
use crate::spec::World;

/// A compiled component and what identifies it.
#[derive(Clone)]
pub struct CompiledComponent {
    /// The compiled code.
    pub component: Component,
    /// SHA-256 of the `.wasm` file, hex: which build is running.
    pub sha256: String,
    /// The file it came from.
    pub path: PathBuf,
}

/// The host's engine and linkers.
pub struct PluginEngine {
    engine: Engine,
    cache_dir: Option<PathBuf>,
    stop_ticker: Arc<AtomicBool>,
    /// What transformers and aggregators import: WASI, log, reference tables.
    records: Linker<StoreData>,
    /// That, and the state tables and channels of notifiers.
    notifier: Linker<StoreData>,
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

fn link_error(e: wasmtime::Error) -> PluginError {
    PluginError::Instantiate(format!("linking the host interfaces failed: {e:#}"))
}

impl PluginEngine {
    /// An engine with the sandbox settings, caching compiled components in the
    /// default cache folder (`$WEIR_CACHE_DIR`, else `~/.cache/weir/components`).
    pub fn new() -> Result<Self, PluginError> {
        Self::with_cache(default_cache_dir())
    }

    /// An engine caching compiled components in `cache_dir` (none: no cache).
    pub fn with_cache(cache_dir: Option<PathBuf>) -> Result<Self, PluginError> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(1 << 20)
            .cranelift_opt_level(wasmtime::OptLevel::Speed);
        // `WEIR_PERFMAP=1` lets `perf` name the functions of plugins.
        if std::env::var_os("WEIR_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(|e| PluginError::Instantiate(format!("engine: {e:#}")))?;

        let stop_ticker = Arc::new(AtomicBool::new(false));
        let (weak, stop) = (engine.weak(), stop_ticker.clone());
        std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| PluginError::Instantiate(format!("cannot start the epoch ticker: {e}")))?;

        let mut base = Linker::<StoreData>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut base).map_err(link_error)?;
        transformer::weir::plugin::log::add_to_linker::<_, HasSelf<_>>(&mut base, |d| d).map_err(link_error)?;
        transformer::weir::plugin::types::add_to_linker::<_, HasSelf<_>>(&mut base, |d| d).map_err(link_error)?;
        // Every world may look rows up in the reference tables its config names.
        transformer::weir::plugin::reference::add_to_linker::<_, HasSelf<_>>(&mut base, |d| d).map_err(link_error)?;
        let mut notifier_linker = base.clone();
        notifier::weir::plugin::state_table::add_to_linker::<_, HasSelf<_>>(&mut notifier_linker, |d| d)
            .map_err(link_error)?;
        notifier::weir::plugin::notify::add_to_linker::<_, HasSelf<_>>(&mut notifier_linker, |d| d)
            .map_err(link_error)?;

        Ok(Self { engine, cache_dir, stop_ticker, records: base, notifier: notifier_linker })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The linker for a world.
    pub(crate) fn linker(&self, world: World) -> &Linker<StoreData> {
        match world {
            World::Transformer | World::Aggregator => &self.records,
            World::Notifier => &self.notifier,
        }
    }

    /// Reads and compiles a component, from the cache when this exact file was compiled before.
    pub fn compile(&self, path: &Path) -> Result<CompiledComponent, PluginError> {
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read { path: path.to_owned(), source })?;
        self.compile_bytes(&bytes, path)
    }

    /// Compiles a component from its bytes (e.g. uploaded for a hot swap);
    /// `path` only names it in messages.
    pub fn compile_bytes(&self, bytes: &[u8], path: &Path) -> Result<CompiledComponent, PluginError> {
        let sha256 = sha256_hex(bytes);
        let cached = self.cache_dir.as_ref().map(|dir| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.engine.precompile_compatibility_hash().hash(&mut h);
            dir.join(format!("{sha256}-{:016x}.cwasm", h.finish()))
        });
        if let Some(file) = &cached
            && file.exists()
            && let Ok(component) = self.deserialize(file)
        {
            return Ok(CompiledComponent { component, sha256, path: path.to_owned() });
        }
        let compile_err =
            |e: wasmtime::Error| PluginError::Compile { path: path.to_owned(), message: format!("{e:#}") };
        let serialized = self.engine.precompile_component(bytes).map_err(compile_err)?;
        if let Some(file) = &cached {
            // Best effort: a cache that cannot be written only costs time.
            let _ = write_atomically(file, &serialized);
        }
        let component = self.deserialize_bytes(&serialized).map_err(compile_err)?;
        Ok(CompiledComponent { component, sha256, path: path.to_owned() })
    }

    #[allow(unsafe_code, reason = "deserializing our own cache entries, written atomically by `compile`")]
    fn deserialize(&self, file: &Path) -> wasmtime::Result<Component> {
        // SAFETY: the file was produced by `Engine::precompile_component` of a
        // compatible engine (its name carries the compatibility hash) and written
        // through a rename, so it is never seen half-written.
        unsafe { Component::deserialize_file(&self.engine, file) }
    }

    #[allow(unsafe_code, reason = "deserializing what `precompile_component` just produced")]
    fn deserialize_bytes(&self, bytes: &[u8]) -> wasmtime::Result<Component> {
        // SAFETY: `bytes` come straight from this engine's `precompile_component`.
        unsafe { Component::deserialize(&self.engine, bytes) }
    }
}

fn write_atomically(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, file)
}

fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("WEIR_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("weir").join("components"))
}

/// SHA-256 of a component's bytes, hex: how weir names a build.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
