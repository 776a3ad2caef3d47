//! `weir-componentize-c`: the two steps that turn C into a weir plugin, without
//! installing the wit-bindgen and wasm-tools command-line tools.
//!
//! ```text
//! weir-componentize-c bindings <wit-dir> <world> <out-dir>   # <world>.h, <world>.c, <world>_component_type.o
//! weir-componentize-c component <core.wasm> <out.wasm>        # with the WASI preview-1 reactor adapter
//! ```
//!
//! Between them, clang (`--target=wasm32-wasi -mexec-model=reactor`, Debian's
//! clang, lld, wasi-libc and libclang-rt-dev-wasm32) compiles the plugin and the
//! generated `<world>.c` and links the `_component_type.o` object, which carries
//! the world the component encoder needs.

use std::path::Path;

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["bindings", wit, world, out] => bindings(Path::new(wit), world, Path::new(out)),
        ["component", core, out] => component(Path::new(core), Path::new(out)),
        _ => bail!(
            "usage:\n  weir-componentize-c bindings <wit-dir> <world> <out-dir>\n  \
             weir-componentize-c component <core.wasm> <out.wasm>"
        ),
    }
}

/// Writes the C bindings of `world` from the WIT package in `wit`.
fn bindings(wit: &Path, world: &str, out: &Path) -> anyhow::Result<()> {
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) =
        resolve.push_path(wit).with_context(|| format!("cannot read the WIT package in {}", wit.display()))?;
    let world = resolve.select_world(&[package], Some(world)).with_context(|| format!("no world `{world}`"))?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default().build().generate(&mut resolve, world, &mut files)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for (name, contents) in files.iter() {
        let path = out.join(name);
        std::fs::write(&path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Makes a core module (with its component-type section) into a component.
fn component(core: &Path, out: &Path) -> anyhow::Result<()> {
    let module = std::fs::read(core).with_context(|| format!("cannot read {}", core.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&module)
        .context("the module carries no world: link the bindings' _component_type.o")?
        .adapter(
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )?
        .validate(true)
        .encode()
        .context("cannot make a component of the module")?;
    std::fs::write(out, component).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}
