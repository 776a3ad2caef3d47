//! The `weir` binary.

// Record batches allocate many small buffers across threads: mimalloc keeps
// that cheap (the delivery benchmark measures with it too).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs the command line; an error is one line with its causes, for people
/// (not a Rust backtrace).
fn main() -> std::process::ExitCode {
    match weir_host::cli::main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<weir_host::cli::Reported>() {
                Some(reported) => eprintln!("{reported}"),
                None => eprintln!("error: {e:#}"),
            }
            std::process::ExitCode::FAILURE
        }
    }
}
