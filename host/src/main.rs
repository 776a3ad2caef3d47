//! The `weir` binary.

// Record batches allocate many small buffers across threads: mimalloc keeps
// that cheap (the delivery benchmark measures with it too).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    weir_host::cli::main()
}
