//! `weir-c-bindings`: writes the C bindings of every world of weir's WIT
//! package (`<world>.h`, `<world>.c` and `<world>_component_type.o`, which
//! carries the world for the component encoder) into `sdk/c/`. weir carries
//! those files, so C plugins build with no wit-bindgen installed. Run it after
//! changing `wit/`; a test fails while the files are stale.
//!
//! ```text
//! cargo run -p weir-c-bindings            # regenerates sdk/c/
//! ```

use std::path::Path;

use anyhow::Context as _;

/// The worlds a C plugin may export.
const WORLDS: [&str; 3] = ["transformer", "aggregator", "notifier"];

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..");
    for world in WORLDS {
        write_bindings(&root.join("wit"), world, &root.join("sdk/c"))?;
    }
    println!("wrote the C bindings of {} into sdk/c/", WORLDS.join(", "));
    Ok(())
}

/// Writes the C bindings of `world` from the WIT package in `wit` into `out`.
fn write_bindings(wit: &Path, world: &str, out: &Path) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bindings_weir_carries_are_those_of_the_wit_package() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..");
        let fresh = tempfile::tempdir().expect("tempdir");
        for world in WORLDS {
            write_bindings(&root.join("wit"), world, fresh.path()).expect("bindings");
        }
        for entry in std::fs::read_dir(fresh.path()).expect("list") {
            let name = entry.expect("entry").file_name();
            let now = std::fs::read(fresh.path().join(&name)).expect("fresh");
            let carried = std::fs::read(root.join("sdk/c").join(&name)).unwrap_or_default();
            assert!(now == carried, "sdk/c/{} is stale: run `cargo run -p weir-c-bindings`", name.to_string_lossy());
        }
    }
}
