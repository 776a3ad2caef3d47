//! The `weir` binary.

fn main() -> anyhow::Result<()> {
    weir_host::cli::main()
}
