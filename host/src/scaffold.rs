//! `weir plugin new`: a working plugin to start from, in any language weir
//! builds — its plugin.toml (with the `[build]` command of its language's
//! toolchain and `[[self-test]]` records), the source, and a README. Every
//! scaffold behaves the same, so each language's passes the same test:
//! `weir plugin test <folder> --build` builds it and runs its self-tests.
//!
//! The scaffold refers to a weir checkout for the WIT package, the SDKs and the
//! toolchain scripts: relatively when it sits inside that checkout.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context as _, bail};

/// A language `weir plugin new` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, with weir-sdk (cargo, wasm32-wasip2).
    Rust,
    /// Python, with componentize-py.
    Python,
    /// JavaScript, with componentize-js.
    Js,
    /// C, with clang and wasi-libc.
    C,
}

/// Writes a new transformer plugin named `name` into `dir`, for the weir checkout at `weir`.
pub fn new_plugin(
    name: &str,
    world: crate::manifest::World,
    lang: Lang,
    dir: &Path,
    weir: &Path,
) -> anyhow::Result<()> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        bail!("plugin name `{name}`: use lowercase letters, digits and '-', e.g. `toll-enrich`");
    }
    if world != crate::manifest::World::Transformer {
        bail!(
            "`weir plugin new` writes transformers for now; for a {} start from a plugin of plugins/ \
             (toll-billing-sum is an aggregator, traffic-monitor-alert and traffic-monitor-alert-py are notifiers)",
            format!("{world:?}").to_lowercase()
        );
    }
    if dir.exists() {
        bail!("{} exists already: choose another name or --dir", dir.display());
    }
    if !weir.join("wit/plugin.wit").is_file() || !weir.join("sdk/toolchains").is_dir() {
        bail!("{} is not a weir checkout (no wit/plugin.wit): pass --weir <checkout>", weir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (weir, dir_abs) = (absolute(weir)?, absolute(dir)?);
    // In weir's own plugins/ folder a Rust plugin is a member of weir's workspace.
    let member = dir_abs.parent() == Some(weir.join("plugins").as_path());
    let root = relative_to(&weir, &dir_abs);
    let root = root.to_string_lossy().replace('\\', "/");
    let under = name.replace('-', "_");
    let (files, build, output): (Vec<(&str, String)>, String, String) = match lang {
        Lang::Rust if member => (
            vec![("Cargo.toml", RUST_MEMBER_CARGO.to_owned()), ("src/lib.rs", RUST_LIB.to_owned())],
            format!("cargo build --release --target wasm32-wasip2 --target-dir {root}/target/wasm -p {name}"),
            format!("{root}/target/wasm/wasm32-wasip2/release/{under}.wasm"),
        ),
        Lang::Rust => (
            vec![("Cargo.toml", RUST_CARGO.replace("{root}", &root)), ("src/lib.rs", RUST_LIB.to_owned())],
            format!("cargo build --release --target wasm32-wasip2 --target-dir {root}/target/wasm"),
            format!("{root}/target/wasm/wasm32-wasip2/release/{under}.wasm"),
        ),
        Lang::Python => (
            vec![("app.py", PYTHON_APP.to_owned())],
            format!(
                "sh {root}/sdk/toolchains/componentize-py.sh transformer {root}/target/wasm/python/{under}.wasm app"
            ),
            format!("{root}/target/wasm/python/{under}.wasm"),
        ),
        Lang::Js => (
            vec![("app.js", JS_APP.to_owned())],
            format!(
                "sh {root}/sdk/toolchains/componentize-js.sh transformer {root}/target/wasm/js/{under}.wasm app.js"
            ),
            format!("{root}/target/wasm/js/{under}.wasm"),
        ),
        Lang::C => (
            vec![("plugin.c", C_PLUGIN.to_owned())],
            format!(
                "sh {root}/sdk/toolchains/componentize-c.sh transformer {root}/target/wasm/c/{under}.wasm plugin.c"
            ),
            format!("{root}/target/wasm/c/{under}.wasm"),
        ),
    };
    let lang_name = format!("{lang:?}");
    let manifest = PLUGIN_TOML
        .replace("{name}", name)
        .replace("{lang}", &lang_name)
        .replace("{build}", &build)
        .replace("{output}", &output);
    let readme = README.replace("{name}", name).replace("{lang}", &lang_name);
    let mut all = files;
    all.push(("plugin.toml", manifest));
    all.push(("README.md", readme));
    if lang == Lang::Rust && !member {
        // weir's own lock: the same dependency versions, so the shared target dir is reused.
        if let Ok(lock) = std::fs::read_to_string(weir.join("Cargo.lock")) {
            all.push(("Cargo.lock", lock));
        }
    }
    for (file, text) in all {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let text = text.replace("{name}", name).replace("{crate}", &under);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    let path = std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))?;
    // Resolve `..` lexically: the target folder does not exist yet.
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Ok(out)
}

/// `target` as seen from `from`: relative when they share a prefix below the root, else absolute.
fn relative_to(target: &Path, from: &Path) -> PathBuf {
    let (t, f): (Vec<_>, Vec<_>) = (target.components().collect(), from.components().collect());
    let common = t.iter().zip(&f).take_while(|(a, b)| a == b).count();
    if common <= 1 {
        return target.to_owned();
    }
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    if out.as_os_str().is_empty() { PathBuf::from(".") } else { out }
}

const PLUGIN_TOML: &str = r#"[plugin]
name = "{name}"
version = "0.1.0"
world = "transformer"
description = "A transformer written in {lang}: trims each record and upper-cases it; an empty record is set aside."

[config.prefix]
type = "string"
default = ""
description = "Text put before each output record."

[build]
command = "{build}"
output = "{output}"

# `weir plugin test . --build` builds the plugin and checks these; a hot-swap candidate must pass them too.
[[self-test]]
input = "  hello weir  "
outcome = "ok"
output = "HELLO WEIR"

[[self-test]]
input = "   "
outcome = "processing-failed"
"#;

const README: &str = r#"# {name}

A weir transformer written in {lang}, as scaffolded by `weir plugin new`: it trims each
record and upper-cases it (after the configured `prefix`); a record that is empty once
trimmed is set aside as `processing-failed` with the reason. Change it to do your work,
and keep the `[[self-test]]` records of plugin.toml saying what it must do.

```sh
weir plugin test . --build                      # build with plugin.toml's [build], run the self-tests
weir plugin test . --input records.txt          # one record per line: outcomes and output
weir plugin inspect <the [build] output>        # world, WIT version, imports, toolchain
```

In a pipeline: `plugin = "<this folder>"` on a stage (`weir run --build` builds it).
weir's guide, `sdk/README.md` ("Writing plugins"), covers the contract and each language.
"#;

const RUST_CARGO: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
weir-sdk = { path = "{root}/sdk" }

# A crate of its own, not a member of weir's workspace.
[workspace]
"#;

const RUST_MEMBER_CARGO: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition.workspace = true
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
weir-sdk.workspace = true
"#;

const RUST_LIB: &str = r#"//! {name}: trims each record and upper-cases it; an empty record is set aside.

use weir_sdk::{Config, Outcome, Output, Record, Transformer};

pub struct Plugin {
    prefix: String,
}

impl Transformer for Plugin {
    fn init(config: &Config) -> Result<Self, String> {
        weir_sdk::log::debug("starting");
        Ok(Plugin { prefix: config.get("prefix").unwrap_or("").to_owned() })
    }

    fn transform(&mut self, record: &Record<'_>, out: &mut Output) -> Outcome {
        let Some(text) = record.text() else { return Outcome::Failed("not UTF-8 text".into()) };
        let text = text.trim();
        if text.is_empty() {
            return Outcome::Failed("empty record".into());
        }
        let upper = format!("{}{}", self.prefix, text.to_uppercase());
        out.emit(record.key(), record.event_time_ms(), upper.as_bytes());
        Outcome::Ok
    }
}

weir_sdk::export_transformer!(Plugin);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::{TestOutcome, TransformerHarness};

    #[test]
    fn records_are_trimmed_and_upper_cased_and_empty_ones_set_aside() {
        let mut h = TransformerHarness::<Plugin>::new(&[("prefix", "> ")]).expect("init");
        let out = h.transform_texts(&["  hello weir ", "  "]);
        let TestOutcome::Ok(records) = &out[0] else { panic!("{out:?}") };
        assert_eq!(records[0].payload, b"> HELLO WEIR");
        assert!(matches!(&out[1], TestOutcome::Failed(reason) if reason == "empty record"));
    }
}
"#;

const PYTHON_APP: &str = r#""""{name}: trims each record and upper-cases it; an empty record is set aside."""

import weir
from wit_world import exports
from wit_world.exports import transform
from wit_world.imports import log


class Transform(exports.Transform):
    prefix = ""

    def init(self, config):
        Transform.prefix = weir.Config(config).get("prefix", "")
        log.log(log.Level.DEBUG, "starting")

    def transform(self, input):
        outcomes = []
        out = weir.BatchBuilder()
        for record in weir.records(input):
            text = record.payload.decode("utf-8", errors="replace").strip()
            if not text:
                outcomes.append(transform.Outcome_ProcessingFailed("empty record"))
                continue
            out.push(record.key, record.event_time_ms, (Transform.prefix + text.upper()).encode())
            outcomes.append(transform.Outcome_Ok(1))
        return transform.Transformed(outcomes=outcomes, output=out.build())
"#;

const JS_APP: &str = r#"// {name}: trims each record and upper-cases it; an empty record is set aside.

import { log } from 'weir:plugin/log@0.1.0';
import { BatchBuilder, Config, records, text } from './weir.js';

let prefix = '';

export const transform = {
  init(pairs) {
    prefix = new Config(pairs).get('prefix', '');
    log('debug', 'starting');
  },

  transform(input) {
    const outcomes = [];
    const output = new BatchBuilder();
    for (const record of records(input)) {
      const line = text(record.payload).trim();
      if (line === '') {
        outcomes.push({ tag: 'processing-failed', val: 'empty record' });
        continue;
      }
      output.push(record.key, record.eventTime, prefix + line.toUpperCase());
      outcomes.push({ tag: 'ok', val: 1 });
    }
    return { outcomes, output: output.build() };
  },
};
"#;

const C_PLUGIN: &str = r#"// {name}: trims each record and upper-cases it; an empty record is set aside.

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "transformer.h"

static char *prefix = NULL;
static size_t prefix_len = 0;

bool exports_weir_plugin_transform_init(exports_weir_plugin_transform_config_t *config, transformer_string_t *err) {
    for (size_t i = 0; i < config->len; i++) {
        transformer_string_t *key = &config->ptr[i].f0, *value = &config->ptr[i].f1;
        if (key->len == 6 && memcmp(key->ptr, "prefix", 6) == 0) {
            free(prefix);
            prefix = malloc(value->len + 1);
            if (!prefix) {
                transformer_string_dup(err, "out of memory");
                weir_plugin_types_config_free(config);
                return false;
            }
            memcpy(prefix, value->ptr, value->len);
            prefix_len = value->len;
        }
    }
    weir_plugin_types_config_free(config);
    transformer_string_t message;
    transformer_string_set(&message, "starting");
    weir_plugin_log_log(WEIR_PLUGIN_LOG_LEVEL_DEBUG, &message);
    return true;
}

bool exports_weir_plugin_transform_transform(exports_weir_plugin_transform_batch_t *input,
                                             exports_weir_plugin_transform_transformed_t *ret,
                                             transformer_string_t *err) {
    size_t n = input->payload_ends.len;
    exports_weir_plugin_transform_outcome_t *outcomes = calloc(n ? n : 1, sizeof *outcomes);
    uint8_t *keys = malloc(input->keys.len + 1);
    uint8_t *payloads = malloc(input->payloads.len + n * prefix_len + 1);
    uint32_t *key_ends = malloc((n ? n : 1) * sizeof(uint32_t));
    uint32_t *payload_ends = malloc((n ? n : 1) * sizeof(uint32_t));
    int64_t *times = malloc((n ? n : 1) * sizeof(int64_t));
    if (!outcomes || !keys || !payloads || !key_ends || !payload_ends || !times) {
        free(outcomes), free(keys), free(payloads), free(key_ends), free(payload_ends), free(times);
        weir_plugin_types_batch_free(input);
        transformer_string_dup(err, "out of memory");
        return false;
    }
    size_t out = 0, key_at = 0, payload_at = 0, key_start = 0, payload_start = 0;
    for (size_t i = 0; i < n; i++) {
        size_t key_end = input->key_ends.ptr[i], payload_end = input->payload_ends.ptr[i];
        const uint8_t *s = input->payloads.ptr + payload_start, *e = input->payloads.ptr + payload_end;
        while (s < e && isspace(*s)) s++;
        while (e > s && isspace(e[-1])) e--;
        if (s == e) {
            outcomes[i].tag = EXPORTS_WEIR_PLUGIN_TRANSFORM_OUTCOME_PROCESSING_FAILED;
            transformer_string_dup(&outcomes[i].val.processing_failed, "empty record");
        } else {
            outcomes[i].tag = EXPORTS_WEIR_PLUGIN_TRANSFORM_OUTCOME_OK;
            outcomes[i].val.ok = 1;
            memcpy(keys + key_at, input->keys.ptr + key_start, key_end - key_start);
            key_at += key_end - key_start;
            memcpy(payloads + payload_at, prefix, prefix_len);
            payload_at += prefix_len;
            for (; s < e; s++) payloads[payload_at++] = (uint8_t)toupper(*s);
            key_ends[out] = key_at;
            payload_ends[out] = payload_at;
            times[out] = input->event_times.ptr[i];
            out++;
        }
        key_start = key_end;
        payload_start = payload_end;
    }
    weir_plugin_types_batch_free(input);
    ret->outcomes = (exports_weir_plugin_transform_list_outcome_t){outcomes, n};
    ret->output.keys = (transformer_list_u8_t){keys, key_at};
    ret->output.key_ends = (transformer_list_u32_t){key_ends, out};
    ret->output.event_times = (weir_plugin_types_list_timestamp_ms_t){times, out};
    ret->output.payloads = (transformer_list_u8_t){payloads, payload_at};
    ret->output.payload_ends = (transformer_list_u32_t){payload_ends, out};
    ret->output.attributes = (weir_plugin_types_list_attribute_t){NULL, 0};
    return true;
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkout_is_named_relatively_when_the_plugin_is_inside_it() {
        let rel = |t: &str, f: &str| relative_to(Path::new(t), Path::new(f)).display().to_string();
        assert_eq!(rel("/work/weir", "/work/weir/plugins/p"), "../..");
        assert_eq!(rel("/work/weir", "/work/mine/p"), "../../weir");
        assert_eq!(rel("/work/weir", "/tmp/p"), "/work/weir");
    }

    #[test]
    fn a_bad_name_or_another_world_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let weir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let err = |name: &str, world| {
            new_plugin(name, world, Lang::C, &dir.path().join("x"), &weir).expect_err("refused").to_string()
        };
        assert!(err("Toll_Enrich", crate::manifest::World::Transformer).contains("lowercase letters"));
        assert!(err("sums", crate::manifest::World::Aggregator).contains("toll-billing-sum"));
    }
}
