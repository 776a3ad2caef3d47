//! The host's one async runtime for the code that runs on threads of its own
//! (a stage's driver, a delivery's worker and loader lanes, the webhook sender,
//! the reference-table reloads, the warehouse): they run their I/O on it with
//! [`block_on`]. `weir run` installs the runtime it serves the API on, so the
//! host has one runtime; anywhere else (tests, the library) one is made on
//! first use and kept for the process. Also the one way small files that
//! record progress are replaced: [`write_durably`].

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle};

static RUNTIME: OnceLock<Handle> = OnceLock::new();

/// Makes `handle` (a multi-threaded runtime's) the host's runtime; called once, by
/// the binary, before a pipeline starts. Returns false if there already is one.
pub fn install(handle: Handle) -> bool {
    RUNTIME.set(handle).is_ok()
}

/// The host's runtime, made on first use when none was installed.
pub fn handle() -> std::io::Result<&'static Handle> {
    if let Some(handle) = RUNTIME.get() {
        return Ok(handle);
    }
    let runtime = Builder::new_multi_thread().worker_threads(2).thread_name("weir-io").enable_all().build()?;
    if RUNTIME.set(runtime.handle().clone()).is_ok() {
        // It serves the process until it exits.
        std::mem::forget(runtime);
    } else {
        // Another thread made one first: this one goes (dropping could block, which tokio forbids in async code).
        runtime.shutdown_background();
    }
    RUNTIME.get().ok_or_else(|| std::io::Error::other("the host's runtime is gone"))
}

/// Runs `future` to its end on the host's runtime, from any thread. Inside async
/// code (where tokio refuses to block a thread) it waits on a thread of its own.
pub fn block_on<F>(future: F) -> std::io::Result<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    let handle = handle()?;
    if Handle::try_current().is_err() {
        return Ok(handle.block_on(future));
    }
    std::thread::scope(|scope| scope.spawn(|| handle.block_on(future)).join())
        .map_err(|panic| std::panic::resume_unwind(panic))
}

/// Runs `future` on the host's runtime in the background (a server that lasts as long as the process).
pub fn spawn<F>(future: F) -> std::io::Result<tokio::task::JoinHandle<F::Output>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    Ok(handle()?.spawn(future))
}
/// Replaces `path` with `bytes` so that a crash leaves the old or the new
/// file, never a mix: a temporary file written and synced, renamed over it,
/// and the folder synced (which makes the rename durable). Creates the folder.
pub fn write_durably(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
