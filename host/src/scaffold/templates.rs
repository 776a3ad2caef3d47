//! The files `weir plugin new` writes; `{name}`, `{crate}`, `{build}` and the
//! like are filled in. Every language's plugin of a world behaves the same, so
//! one `sample.txt` and `expected.txt` per world test them all.

use super::Lang;
use crate::manifest::World;

pub(super) const PLUGIN_TOML: &str = r#"[plugin]
name = "{name}"
version = "0.1.0"
world = "{world}"
description = "{description} ({world}, written in {lang})"
{config}
[build]
{build}
{self_tests}"#;

pub(super) const README: &str = r#"# {name}

A weir plugin (world `{world}`) written in {lang}, as scaffolded by `weir plugin new`. {description}
Change it to do your work, and keep `sample.txt` and `expected.txt` saying what it must do.

```sh
weir plugin build .                                                  # build it as [build] says
weir plugin test . --build --input sample.txt --expect expected.txt   # build, then what it does with the sample
weir plugin test . --input my-records.txt                           # one record per line
weir plugin inspect .                                                # name, version, world, WIT version, imports, toolchain
```

In a pipeline: `plugin = "<this folder>"` on a stage (`weir run --build` builds it).
weir's guide, `sdk/README.md` ("Writing plugins"), covers the contract and each language.
"#;

pub(super) const RUST_CARGO: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
# The SDK and the WIT package, as weir plugin new wrote them (weir's own copy).
weir-sdk = { path = ".weir/sdk" }

# A crate of its own, not a member of any workspace around it.
[workspace]
"#;

pub(super) const RUST_MEMBER_CARGO: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition.workspace = true
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
weir-sdk.workspace = true
"#;

/// plugin.toml's description, `[config.*]` and `[[self-test]]` text, and the
/// sample with what `weir plugin test` must print for it.
pub(super) fn world_files(world: World) -> (&'static str, &'static str, &'static str, &'static str, &'static str) {
    match world {
        World::Transformer => (
            "Trims each record and upper-cases it (after the configured prefix); a record that is empty once trimmed is set aside.",
            TRANSFORMER_CONFIG,
            TRANSFORMER_SELF_TESTS,
            "  hello weir  \n   \n",
            "record 1: ok, 1 out\n  HELLO WEIR\nrecord 2: processing-failed: empty record\n2 records, 1 set aside, 0 failed\n",
        ),
        World::Notifier => (
            "Sends each non-empty record's text as a notification, once however often its batch is redone.",
            NOTIFIER_CONFIG,
            "",
            "station 5 silent 10:00-10:30\n\nstation 9 low 16:00-16:30\nstation 5 silent 10:00-10:30\n",
            "inbox -> operators [station 5 silent 10:00-10:30]: station 5 silent 10:00-10:30\n\
             inbox -> operators [station 9 low 16:00-16:30]: station 9 low 16:00-16:30\n\
             4 records, 0 set aside, 2 notifications\n",
        ),
        World::Aggregator => (
            "Counts each key's records per window and emits the count when the window closes.",
            "",
            "",
            "a\nb\nc\n",
            "{\"count\":3}\n3 records folded into one window, 0 set aside, 1 results\n",
        ),
    }
}

const TRANSFORMER_CONFIG: &str = r#"
[config.prefix]
type = "string"
default = ""
description = "Text put before each output record."
"#;

const TRANSFORMER_SELF_TESTS: &str = r#"
# A hot-swap candidate must pass these too; `weir plugin test .` runs them.
[[self-test]]
input = "  hello weir  "
outcome = "ok"
output = "HELLO WEIR"

[[self-test]]
input = "   "
outcome = "processing-failed"
"#;

const NOTIFIER_CONFIG: &str = r#"
[config.channel]
type = "channel"
default = "inbox"
description = "The channel the notifications go to (declared in the pipeline manifest)."

[config.recipient]
type = "string"
default = "operators"
description = "Who they are for."
"#;

/// The plugin's source for a world and language.
pub(super) fn source(world: World, lang: Lang) -> &'static str {
    match (world, lang) {
        (World::Transformer, Lang::Rust) => RUST_TRANSFORMER,
        (World::Transformer, Lang::Python) => PYTHON_TRANSFORMER,
        (World::Transformer, Lang::Js) => JS_TRANSFORMER,
        (World::Transformer, Lang::C) => C_TRANSFORMER,
        (World::Notifier, Lang::Rust) => RUST_NOTIFIER,
        (World::Notifier, Lang::Python) => PYTHON_NOTIFIER,
        (World::Notifier, Lang::Js) => JS_NOTIFIER,
        (World::Notifier, Lang::C) => C_NOTIFIER,
        (World::Aggregator, Lang::Rust) => RUST_AGGREGATOR,
        (World::Aggregator, Lang::Python) => PYTHON_AGGREGATOR,
        (World::Aggregator, Lang::Js) => JS_AGGREGATOR,
        (World::Aggregator, Lang::C) => C_AGGREGATOR,
    }
}

const RUST_TRANSFORMER: &str = r#"//! {name}: trims each record and upper-cases it; an empty record is set aside.

use weir_sdk::{Config, Error, Outcome, Output, Record, Transformer};

pub struct Plugin {
    prefix: String,
}

impl Transformer for Plugin {
    fn init(config: &Config) -> Result<Self, String> {
        weir_sdk::log::debug("starting");
        Ok(Plugin { prefix: config.get("prefix").unwrap_or("").to_owned() })
    }

    /// `Ok(Outcome::Failed(..))` sets one record aside; `Err(Error::transient(..))` would
    /// have the whole batch retried later (a service that is down), so use it for
    /// nothing a record did.
    fn transform(&mut self, record: &Record<'_>, out: &mut Output) -> Result<Outcome, Error> {
        let Some(text) = record.text() else { return Ok(Outcome::Failed("not UTF-8 text".into())) };
        let text = text.trim();
        if text.is_empty() {
            return Ok(Outcome::Failed("empty record".into()));
        }
        let upper = format!("{}{}", self.prefix, text.to_uppercase());
        out.emit(record.key(), record.event_time_ms(), upper.as_bytes());
        Ok(Outcome::Ok)
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
        let out = h.transform_texts(&["  hello weir ", "  "]).expect("no batch error");
        let TestOutcome::Ok(records) = &out[0] else { panic!("{out:?}") };
        assert_eq!(records[0].payload, b"> HELLO WEIR");
        assert!(matches!(&out[1], TestOutcome::Failed(reason) if reason == "empty record"));
    }
}
"#;

const PYTHON_TRANSFORMER: &str = r#""""{name}: trims each record and upper-cases it; an empty record is set aside."""

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

const JS_TRANSFORMER: &str = r#"// {name}: trims each record and upper-cases it; an empty record is set aside.

import { log } from 'weir:plugin/log@0.2.0';
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

const C_TRANSFORMER: &str = r#"// {name}: trims each record and upper-cases it; an empty record is set aside.

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
                                             exports_weir_plugin_transform_error_t *err) {
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
        // Nothing a record did: the host retries the batch after a backoff.
        err->tag = WEIR_PLUGIN_TYPES_ERROR_TRANSIENT;
        transformer_string_dup(&err->val.transient, "out of memory");
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

const RUST_NOTIFIER: &str = r#"//! {name}: sends each non-empty record's text as a notification, once however
//! often its batch is redone.

use weir_sdk::host::{self, Notification};
use weir_sdk::{Config, Error, Notifier, Record};

pub struct Plugin {
    channel: String,
    recipient: String,
}

impl Notifier for Plugin {
    fn init(config: &Config) -> Result<Self, String> {
        weir_sdk::log::debug("starting");
        Ok(Plugin {
            channel: config.get("channel").unwrap_or("inbox").to_owned(),
            recipient: config.get("recipient").unwrap_or("operators").to_owned(),
        })
    }

    /// `Error::bad_record` sets this record aside (dead letters) and the others go on;
    /// an error from the host (the channel is down) is transient: the batch is retried.
    fn consume(&mut self, record: &Record<'_>) -> Result<(), Error> {
        let text = record.text().ok_or_else(|| Error::bad_record("not UTF-8 text"))?.trim();
        if text.is_empty() {
            return Ok(());
        }
        // The same event, the same key: the host sends a key once per channel.
        host::send(&Notification {
            channel: self.channel.clone(),
            recipient: self.recipient.clone(),
            subject: text.to_owned(),
            body: text.to_owned(),
            idempotency_key: text.to_owned(),
        })?;
        Ok(())
    }
}

weir_sdk::export_notifier!(Plugin);
"#;

const PYTHON_NOTIFIER: &str = r#""""{name}: sends each non-empty record's text as a notification, once however
often its batch is redone."""

import weir
from wit_world import exports
from wit_world.imports import log, notify


class Consume(exports.Consume):
    channel = "inbox"
    recipient = "operators"

    def init(self, config):
        config = weir.Config(config)
        Consume.channel = config.get("channel", "inbox")
        Consume.recipient = config.get("recipient", "operators")
        log.log(log.Level.DEBUG, "starting")

    def consume(self, input):
        for record in weir.records(input):
            text = record.payload.decode("utf-8", errors="replace").strip()
            if not text:
                continue
            # The same event, the same key: the host sends a key once per channel.
            notify.send(
                notify.Notification(
                    channel=Consume.channel,
                    recipient=Consume.recipient,
                    subject=text,
                    body=text,
                    idempotency_key=text,
                )
            )
"#;

const JS_NOTIFIER: &str = r#"// {name}: sends each non-empty record's text as a notification, once however
// often its batch is redone.

import { log } from 'weir:plugin/log@0.2.0';
import { send } from 'weir:plugin/notify@0.2.0';
import { Config, records, text } from './weir.js';

let channel = 'inbox';
let recipient = 'operators';

export const consume = {
  init(pairs) {
    const config = new Config(pairs);
    channel = config.get('channel', 'inbox');
    recipient = config.get('recipient', 'operators');
    log('debug', 'starting');
  },

  consume(input) {
    for (const record of records(input)) {
      const line = text(record.payload).trim();
      if (line === '') continue;
      // The same event, the same key: the host sends a key once per channel.
      send({ channel, recipient, subject: line, body: line, idempotencyKey: line });
    }
  },
};
"#;

const C_NOTIFIER: &str = r#"// {name}: sends each non-empty record's text as a notification, once however
// often its batch is redone.

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "notifier.h"

static notifier_string_t channel, recipient;

static void keep(notifier_string_t *into, const uint8_t *text, size_t len) {
    notifier_string_free(into);
    notifier_string_dup_n(into, (const char *)text, len);
}

bool exports_weir_plugin_consume_init(exports_weir_plugin_consume_config_t *config, notifier_string_t *err) {
    keep(&channel, (const uint8_t *)"inbox", 5);
    keep(&recipient, (const uint8_t *)"operators", 9);
    for (size_t i = 0; i < config->len; i++) {
        notifier_string_t *key = &config->ptr[i].f0, *value = &config->ptr[i].f1;
        if (key->len == 7 && memcmp(key->ptr, "channel", 7) == 0) keep(&channel, value->ptr, value->len);
        if (key->len == 9 && memcmp(key->ptr, "recipient", 9) == 0) keep(&recipient, value->ptr, value->len);
    }
    weir_plugin_types_config_free(config);
    notifier_string_t message;
    notifier_string_set(&message, "starting");
    weir_plugin_log_log(WEIR_PLUGIN_LOG_LEVEL_DEBUG, &message);
    return true;
}

bool exports_weir_plugin_consume_consume(exports_weir_plugin_consume_batch_t *input, exports_weir_plugin_consume_error_t *err) {
    bool ok = true;
    size_t start = 0;
    for (size_t i = 0; i < input->payload_ends.len && ok; i++) {
        const uint8_t *s = input->payloads.ptr + start, *e = input->payloads.ptr + input->payload_ends.ptr[i];
        start = input->payload_ends.ptr[i];
        while (s < e && isspace(*s)) s++;
        while (e > s && isspace(e[-1])) e--;
        if (s == e) continue;
        // The same event, the same key: the host sends a key once per channel.
        notifier_string_t text = {(uint8_t *)s, (size_t)(e - s)};
        weir_plugin_notify_notification_t n = {channel, recipient, text, text, text};
        bool fresh;
        ok = weir_plugin_notify_send(&n, &fresh, err);  // on failure `err` carries the host's error
    }
    weir_plugin_types_batch_free(input);
    return ok;
}
"#;

const RUST_AGGREGATOR: &str = r#"//! {name}: counts each key's records per window and emits {"count": N} when the
//! window closes.

use weir_sdk::{Aggregator, Config, Error, Output, Record, Window};

pub struct Plugin;

impl Aggregator for Plugin {
    /// The count so far; kept as decimal text.
    type State = u64;

    fn init(_config: &Config) -> Result<Self, String> {
        weir_sdk::log::debug("starting");
        Ok(Plugin)
    }

    fn fold(&mut self, state: &mut u64, _record: &Record<'_>) -> Result<(), Error> {
        *state += 1;
        Ok(())
    }

    fn emit(&mut self, window: Window, key: &str, state: &u64, out: &mut Output) -> Result<(), Error> {
        out.emit(key, window.end_ms - 1, format!("{{\"count\":{state}}}").as_bytes());
        Ok(())
    }

    fn decode(bytes: &[u8]) -> Result<u64, String> {
        std::str::from_utf8(bytes).ok().and_then(|s| s.parse().ok()).ok_or_else(|| "a state is not a count".into())
    }

    fn encode(state: &u64, out: &mut Vec<u8>) {
        out.extend_from_slice(state.to_string().as_bytes());
    }
}

weir_sdk::export_aggregator!(Plugin);
"#;

const PYTHON_AGGREGATOR: &str = r#""""{name}: counts each key's records per window and emits {"count": N} when the
window closes."""

import json

import weir
from wit_world import exports
from wit_world.imports import log


def count(state):
    """A state is the count so far as decimal text; empty before any record."""
    return int(state) if state else 0


class Aggregate(exports.Aggregate):
    def init(self, config):
        log.log(log.Level.DEBUG, "starting")

    def state_version(self):
        return 1

    def fold(self, input, groups, states):
        counts = [count(s) for s in weir.states(states)]
        for group in groups:
            counts[group] += 1
        return weir.pack_states([str(c).encode() for c in counts])

    def emit(self, window, keys, states):
        out = weir.BatchBuilder()
        for key, state in zip(keys, weir.states(states)):
            out.push(key, window.end - 1, json.dumps({"count": count(state)}, separators=(",", ":")).encode())
        return out.build()
"#;

const JS_AGGREGATOR: &str = r#"// {name}: counts each key's records per window and emits {"count": N} when the
// window closes.

import { log } from 'weir:plugin/log@0.2.0';
import { BatchBuilder, packStates, states, text } from './weir.js';

// A state is the count so far as decimal text; empty before any record.
const count = (state) => (state.length ? Number(text(state)) : 0);

export const aggregate = {
  init(pairs) {
    log('debug', 'starting');
  },

  stateVersion() {
    return 1;
  },

  fold(input, groups, folded) {
    const counts = states(folded).map(count);
    for (const group of groups) counts[group] += 1;
    return packStates(counts.map(String));
  },

  emit(window, keys, folded) {
    const out = new BatchBuilder();
    states(folded).forEach((state, i) => {
      out.push(keys[i], window.end - 1n, JSON.stringify({ count: count(state) }));
    });
    return out.build();
  },
};
"#;

const C_AGGREGATOR: &str = r#"// {name}: counts each key's records per window and emits {"count": N} when the
// window closes. A state is the count so far as decimal text; empty before any record.

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aggregator.h"

bool exports_weir_plugin_aggregate_init(exports_weir_plugin_aggregate_config_t *config, aggregator_string_t *err) {
    weir_plugin_types_config_free(config);
    aggregator_string_t message;
    aggregator_string_set(&message, "starting");
    weir_plugin_log_log(WEIR_PLUGIN_LOG_LEVEL_DEBUG, &message);
    return true;
}

uint32_t exports_weir_plugin_aggregate_state_version(void) {
    return 1;
}

// The count of each state.
static unsigned long long *counts_of(exports_weir_plugin_aggregate_states_t *states) {
    unsigned long long *counts = calloc(states->ends.len ? states->ends.len : 1, sizeof *counts);
    size_t start = 0;
    for (size_t i = 0; counts && i < states->ends.len; i++) {
        for (size_t b = start; b < states->ends.ptr[i]; b++) counts[i] = counts[i] * 10 + (states->bytes.ptr[b] - '0');
        start = states->ends.ptr[i];
    }
    return counts;
}

bool exports_weir_plugin_aggregate_fold(exports_weir_plugin_aggregate_batch_t *input, aggregator_list_u32_t *groups,
                                        exports_weir_plugin_aggregate_states_t *states,
                                        exports_weir_plugin_aggregate_states_t *ret, exports_weir_plugin_aggregate_error_t *err) {
    size_t n = states->ends.len;
    unsigned long long *counts = counts_of(states);
    uint8_t *bytes = malloc(n * 20 + 1);
    uint32_t *ends = malloc((n ? n : 1) * sizeof(uint32_t));
    bool ok = counts && bytes && ends;
    for (size_t i = 0; ok && i < groups->len; i++) {
        if (groups->ptr[i] < n) counts[groups->ptr[i]]++;
    }
    size_t at = 0;
    for (size_t i = 0; ok && i < n; i++) {
        at += (size_t)sprintf((char *)bytes + at, "%llu", counts[i]);
        ends[i] = (uint32_t)at;
    }
    free(counts);
    weir_plugin_types_batch_free(input);
    aggregator_list_u32_free(groups);
    exports_weir_plugin_aggregate_states_free(states);
    if (!ok) {
        free(bytes), free(ends);
        err->tag = WEIR_PLUGIN_TYPES_ERROR_TRANSIENT;  // nothing a record did: retried later
        aggregator_string_dup(&err->val.transient, "out of memory");
        return false;
    }
    ret->bytes = (aggregator_list_u8_t){bytes, at};
    ret->ends = (aggregator_list_u32_t){ends, n};
    return true;
}

bool exports_weir_plugin_aggregate_emit(exports_weir_plugin_aggregate_window_t *window, aggregator_list_string_t *keys,
                                        exports_weir_plugin_aggregate_states_t *states,
                                        exports_weir_plugin_aggregate_batch_t *ret, exports_weir_plugin_aggregate_error_t *err) {
    size_t n = keys->len, key_bytes = 0;
    for (size_t i = 0; i < n; i++) key_bytes += keys->ptr[i].len;
    unsigned long long *counts = counts_of(states);
    uint8_t *key_buf = malloc(key_bytes + 1), *payloads = malloc(n * 32 + 1);
    uint32_t *key_ends = malloc((n ? n : 1) * sizeof(uint32_t)), *payload_ends = malloc((n ? n : 1) * sizeof(uint32_t));
    int64_t *times = malloc((n ? n : 1) * sizeof(int64_t));
    bool ok = counts && key_buf && payloads && key_ends && payload_ends && times && states->ends.len == n;
    size_t key_at = 0, at = 0;
    for (size_t i = 0; ok && i < n; i++) {
        memcpy(key_buf + key_at, keys->ptr[i].ptr, keys->ptr[i].len);
        key_at += keys->ptr[i].len;
        key_ends[i] = (uint32_t)key_at;
        at += (size_t)sprintf((char *)payloads + at, "{\"count\":%llu}", counts[i]);
        payload_ends[i] = (uint32_t)at;
        times[i] = window->end - 1;
    }
    free(counts);
    aggregator_list_string_free(keys);
    exports_weir_plugin_aggregate_states_free(states);
    if (!ok) {
        free(key_buf), free(payloads), free(key_ends), free(payload_ends), free(times);
        err->tag = WEIR_PLUGIN_TYPES_ERROR_FAILED;
        aggregator_string_dup(&err->val.failed, "out of memory, or not one state per key");
        return false;
    }
    ret->keys = (aggregator_list_u8_t){key_buf, key_at};
    ret->key_ends = (aggregator_list_u32_t){key_ends, n};
    ret->event_times = (weir_plugin_types_list_timestamp_ms_t){times, n};
    ret->payloads = (aggregator_list_u8_t){payloads, at};
    ret->payload_ends = (aggregator_list_u32_t){payload_ends, n};
    ret->attributes = (weir_plugin_types_list_attribute_t){NULL, 0};
    return true;
}
"#;
