//! Checking a `[stages.<name>]` entry: its plugin, input and output, error
//! policy, batches, limits and grants, configuration and windows.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use crate::manifest::diagnostic::Diagnostics;
use crate::manifest::plugin::{PluginManifest, Resource, World};
use crate::manifest::units::Name;

use super::load::{Checker, one_of};
use super::raw::*;
use super::spec::*;

impl Checker<'_> {
    pub(super) fn stage(
        &self,
        stage: crate::manifest::toml_doc::Entry<RawStage>,
        base: &Path,
        data_dir: Option<&Path>,
        diags: &mut Diagnostics,
    ) -> Option<StageSpec> {
        let name = stage.name;
        let mut raw = stage.value;
        // Problems with a table the user did not write point at the stage's name.
        if raw.grants.span().is_empty() {
            raw.grants = Spanned::new(stage.name_span.clone(), raw.grants.into_inner());
        }
        if raw.config.span().is_empty() {
            raw.config = Spanned::new(stage.name_span.clone(), raw.config.into_inner());
        }
        let what = |verb: &str| format!("stage `{name}` {verb}");
        let input = self.stream(&raw.input, &what("reads"), diags);
        let owner = format!("stage `{name}`");
        let plugin = self.plugin(&owner, &raw.plugin, base, diags);
        let notifier = plugin.as_ref().is_some_and(|p| p.info.world == World::Notifier);
        let output = match Name::parse(raw.output.get_ref()) {
            _ if notifier && raw.output.get_ref().is_empty() => Some(Target::Effects),
            Err(_) if raw.output.get_ref().is_empty() => {
                diags.push(
                    self.at(stage.name_span.clone(), format!("stage `{name}` has no output"))
                        .help("add output = \"<stream or sink>\" (only notifier stages have none)"),
                );
                None
            }
            Ok(n) if notifier => {
                diags.push(
                    self.at(
                        raw.output.span(),
                        format!("stage `{name}` runs a notifier, which writes no records to `{n}`"),
                    )
                    .help("remove `output`: a notifier's output is its state writes and notifications"),
                );
                None
            }
            Ok(n) if self.streams.contains(&n) => Some(Target::Stream(n)),
            Ok(n) if self.sinks.contains(&n) => Some(Target::Sink(n)),
            _ => {
                diags.push(
                    self.at(
                        raw.output.span(),
                        format!(
                            "stage `{name}` writes to `{}`, which is neither a stream nor a sink",
                            raw.output.get_ref()
                        ),
                    )
                    .help(format!(
                        "streams: {}; sinks: {}",
                        one_of(self.streams),
                        one_of(self.sinks)
                    )),
                );
                None
            }
        };
        let dead_letter = match &raw.dead_letter {
            Some(target) => match Name::parse(target.get_ref()) {
                Ok(n) if self.streams.contains(&n) => Some(DeadLetter::Stream(n)),
                _ => self.sink(target, &what("sends dead letters to"), diags).map(DeadLetter::Sink),
            },
            None => data_dir.and_then(|d| {
                match crate::names::child_path(&d.join("dead-letter"), &format!("{name}.jsonl")) {
                    Ok(file) => Some(DeadLetter::File(file)),
                    Err(e) => {
                        diags.push(self.at(stage.name_span.clone(), format!("stage `{name}`: {e}")));
                        None
                    }
                }
            }),
        };
        let batch_size = *raw.batch_size.get_ref();
        if !(1..=10_000).contains(&batch_size) {
            diags.push(
                self.at(raw.batch_size.span(), format!("batch-size {batch_size} is out of range"))
                    .help("use 1 to 10000 records"),
            );
        }
        let on_error = match &raw.on_error {
            None => Some(ErrorPolicy::DeadLetter),
            Some(policy) => self.setting(policy, &format!("stage `{name}`: on-error"), diags),
        };
        let batch_wait = match &raw.batch_wait {
            None => Some(DEFAULT_BATCH_WAIT),
            Some(w) => self.duration(w, diags),
        };
        let limits = self.limits(&raw.limits, diags);
        let failed_batch = match &raw.failed_batch {
            None => Some(FailedBatch::Bisect),
            Some(how) => self.setting(how, &format!("stage `{name}`: failed-batch"), diags),
        };
        let output_limits = self.output_limits(&raw.limits, matches!(output, Some(Target::Stream(_))), diags);
        let mut grants = self.grants(&raw.grants, base, diags);
        let config = plugin.as_ref().and_then(|p| self.config(&owner, p, &raw.config, diags));
        if let Some(p) = &plugin {
            grants.uses = self.uses(&owner, p, &raw.config, diags);
        }
        let window = raw.window.as_ref().and_then(|w| self.window(&name, w, diags));
        if let Some(p) = &plugin {
            match (p.info.world, &raw.window) {
                (World::Transformer, None) | (World::Aggregator, Some(_)) => {}
                (World::Transformer, Some(w)) => diags.push(
                    self.at(
                        w.span(),
                        format!(
                            "stage `{name}`: plugin `{}` is a transformer; only aggregator stages have windows",
                            p.info.name
                        ),
                    )
                    .help("remove `window`, or use an aggregator plugin"),
                ),
                (World::Aggregator, None) => diags.push(
                    self.at(
                        raw.plugin.span(),
                        format!("stage `{name}`: plugin `{}` is an aggregator and needs a window", p.info.name),
                    )
                    .help("add e.g. window = { size = \"10m\" } (tumbling) or { size = \"30m\", slide = \"10m\" }"),
                ),
                (World::Notifier, None) => {}
                (World::Notifier, Some(w)) => diags.push(
                    self.at(
                        w.span(),
                        format!(
                            "stage `{name}`: plugin `{}` is a notifier; only aggregator stages have windows",
                            p.info.name
                        ),
                    )
                    .help("remove `window`"),
                ),
            }
            if raw.expected_keys.is_some() && p.info.world != World::Aggregator {
                diags.push(
                    self.at(raw.plugin.span(), format!("stage `{name}`: only aggregator stages have expected-keys")),
                );
            }
            if let Some(g) = raw.group_by.as_ref().filter(|_| p.info.world != World::Aggregator) {
                diags.push(self.at(g.span(), format!("stage `{name}`: only aggregator stages have group-by")));
            }
            if p.capabilities.clock && !grants.clock {
                diags.push(
                    self.at(
                        raw.grants.span(),
                        format!(
                            "stage `{name}`: plugin `{}` needs the clock, which the stage does not grant",
                            p.info.name
                        ),
                    )
                    .help("add `grants = { clock = true }` to the stage"),
                );
            }
            for dir in &p.capabilities.dirs {
                if !grants.dirs.iter().any(|g| &g.guest == dir) {
                    diags.push(
                        self.at(raw.grants.span(), format!("stage `{name}`: plugin `{}` needs directory `{dir}`, which the stage does not grant", p.info.name))
                            .help(format!("add `{{ host = \"...\", guest = \"{dir}\", access = \"read-only\" }}` to the stage's grants.dirs")),
                    );
                }
            }
        }
        let mut hot_swap = HotSwap::default();
        if let Some(raw) = &raw.hot_swap {
            let raw = raw.get_ref();
            hot_swap.watch = raw.watch;
            if let Some(p) = &raw.probation {
                hot_swap.probation = self.duration(p, diags).unwrap_or(hot_swap.probation);
            }
            if let Some(rate) = &raw.max_failure_rate {
                if !(0.0..=1.0).contains(rate.get_ref()) {
                    diags.push(self.at(rate.span(), "max-failure-rate must be between 0.0 and 1.0".to_owned()));
                }
                hot_swap.max_failure_rate = *rate.get_ref();
            }
        }
        if raw.window.is_some() && window.is_none() {
            return None;
        }
        let late = match &raw.late {
            None => None,
            Some(late) if raw.window.is_none() => {
                diags.push(self.at(late.span(), format!("stage `{name}`: only aggregator stages have late records")));
                None
            }
            Some(late) => Some(self.stream(late, &format!("stage `{name}` sends late records to"), diags)?),
        };
        let (expected_keys, expected_keys_from) = match &raw.expected_keys {
            None => (Vec::new(), None),
            Some(RawExpectedKeys::List(keys)) => (keys.clone(), None),
            Some(RawExpectedKeys::Reference { reference, column }) => {
                if !self.references.iter().any(|r| r.as_str() == reference) {
                    diags.push(
                        self.at(
                            raw.plugin.span(),
                            format!("stage `{name}`: expected-keys names reference table `{reference}`, which is not declared"),
                        )
                        .help(format!("declare [reference.{reference}]; {}", one_of(self.references))),
                    );
                }
                (Vec::new(), Some((reference.clone(), column.clone())))
            }
        };
        Some(StageSpec {
            window,
            expected_keys,
            expected_keys_from,
            group_by: raw.group_by.as_ref().map(|g| g.get_ref().clone()),
            late,
            hot_swap,
            name,
            plugin: plugin?,
            input: input?,
            output: output?,
            dead_letter: dead_letter?,
            on_error: on_error?,
            failed_batch: failed_batch?,
            batch_size: batch_size.clamp(1, 10_000) as usize,
            batch_wait: batch_wait?,
            limits,
            output_limits,
            grants,
            config: config?,
        })
    }

    /// `limits.timeout` and `limits.memory` of a plugin, each checked against its range.
    pub(super) fn limits(&self, raw: &RawLimits, diags: &mut Diagnostics) -> Limits {
        let mut limits = Limits::default();
        if let Some(t) = &raw.timeout
            && let Some(timeout) = self.duration(t, diags)
        {
            limits.timeout = timeout;
            if limits.timeout < Duration::from_millis(1) || limits.timeout > Duration::from_secs(600) {
                diags.push(self.at(t.span(), "limits.timeout must be between 1ms and 10m".to_owned()));
            }
        }
        if let Some(m) = &raw.memory {
            limits.memory_bytes = m.get_ref().0;
            if limits.memory_bytes < (1 << 20) || limits.memory_bytes > (4 << 30) {
                diags.push(self.at(m.span(), "limits.memory must be between 1MiB and 4GiB".to_owned()));
            }
        }
        limits
    }

    /// `limits.output-record-size`, `outputs-per-record` and `output-batch-size`, each
    /// checked against its range (an output record to a stream: at most 1 MiB, the
    /// limit of every put).
    pub(super) fn output_limits(&self, raw: &RawLimits, to_stream: bool, diags: &mut Diagnostics) -> OutputLimits {
        let mut limits = OutputLimits::default();
        let largest: u64 = if to_stream { crate::stream::MAX_RECORD_BYTES as u64 } else { 64 << 20 };
        if let Some(size) = &raw.output_record_size {
            limits.record_bytes = size.get_ref().0;
            if !(1..=largest).contains(&limits.record_bytes) {
                let most =
                    if to_stream { "1MiB: the output is a stream, whose records are at most 1MiB" } else { "64MiB" };
                diags.push(self.at(size.span(), format!("limits.output-record-size must be between 1B and {most}")));
            }
        }
        if let Some(n) = &raw.outputs_per_record {
            let count = *n.get_ref();
            if !(1..=1_000_000).contains(&count) {
                diags.push(self.at(n.span(), "limits.outputs-per-record must be between 1 and 1000000".to_owned()));
            }
            limits.per_record = count.clamp(1, 1_000_000) as usize;
        }
        if let Some(size) = &raw.output_batch_size {
            limits.batch_bytes = size.get_ref().0;
            if !((1 << 10)..=(1 << 30)).contains(&limits.batch_bytes) {
                diags.push(self.at(size.span(), "limits.output-batch-size must be between 1KiB and 1GiB".to_owned()));
            }
        }
        limits
    }

    /// `window = { size = "10m" }` (tumbling) or `{ size = "30m", slide = "10m" }` (sliding), with
    /// `time`, `out-of-orderness`, `allowed-lateness`, `idle-timeout` and `max-ahead`.
    pub(super) fn window(
        &self,
        stage: &Name,
        raw: &Spanned<RawWindow>,
        diags: &mut Diagnostics,
    ) -> Option<crate::window::WindowSpec> {
        use crate::window::{TimeSource, WindowKind, WindowSpec};
        let w = raw.get_ref();
        let size = self.duration(&w.size, diags)?;
        let kind = match &w.slide {
            None => WindowKind::tumbling(size),
            Some(slide) => WindowKind::sliding(size, self.duration(slide, diags)?),
        };
        let kind = kind.map_err(|e| diags.push(self.at(raw.span(), format!("stage `{stage}`: {e}")))).ok()?;
        let mut spec = WindowSpec::new(kind);
        spec.time = if w.time == RawTime::Arrival { TimeSource::ArrivalTime } else { TimeSource::EventTime };
        let optional =
            |d: &Option<Spanned<String>>, diags: &mut Diagnostics| d.as_ref().map(|d| self.duration(d, diags));
        if let Some(d) = optional(&w.out_of_orderness, diags) {
            spec.out_of_orderness = d?;
        }
        if let Some(d) = optional(&w.allowed_lateness, diags) {
            spec.allowed_lateness = d?;
        }
        spec.idle_timeout = Some(optional(&w.idle_timeout, diags).unwrap_or(Some(DEFAULT_IDLE_TIMEOUT))?);
        spec.max_ahead = Some(optional(&w.max_ahead, diags).unwrap_or(Some(DEFAULT_MAX_AHEAD))?);
        spec.validate().map_err(|e| diags.push(self.at(raw.span(), format!("stage `{stage}`: {e}")))).ok()?;
        Some(spec)
    }

    pub(super) fn grants(&self, raw: &Spanned<RawGrants>, base: &Path, diags: &mut Diagnostics) -> Grants {
        let mut grants = Grants { clock: raw.get_ref().clock, dirs: Vec::new(), uses: Uses::default() };
        for d in &raw.get_ref().dirs {
            let host = base.join(d.host.get_ref());
            if !host.is_dir() {
                diags.push(
                    self.at(d.host.span(), format!("granted directory `{}` does not exist", host.display()))
                        .help("create it, or fix the path (relative to the manifest's folder)"),
                );
            }
            if !d.guest.starts_with('/') {
                diags.push(self.at(raw.span(), format!("guest path `{}` must be absolute, such as \"/ref\"", d.guest)));
            }
            grants.dirs.push(DirGrant { host, guest: d.guest.clone(), writable: d.access == Access::ReadWrite });
        }
        grants
    }

    pub(super) fn plugin(
        &self,
        owner: &str,
        raw: &Spanned<String>,
        base: &Path,
        diags: &mut Diagnostics,
    ) -> Option<PluginManifest> {
        let file = PluginManifest::file_for(&base.join(raw.get_ref()));
        match PluginManifest::load(&file, diags) {
            Ok(p) => p,
            Err(e) => {
                diags.push(
                    self.at(
                        raw.span(),
                        format!("{owner}: cannot read plugin manifest `{}`: {e}", file.display()),
                    )
                    .help(
                        "point `plugin` at a plugin folder holding a plugin.toml (relative to the manifest's folder)",
                    ),
                );
                None
            }
        }
    }

    /// The pipeline resources a plugin uses, as its config names them; each
    /// one the pipeline does not declare is a problem, at the config key that
    /// names it (or the owner's config, for a default from plugin.toml).
    pub(super) fn uses(
        &self,
        owner: &str,
        plugin: &PluginManifest,
        raw: &Spanned<BTreeMap<Spanned<String>, toml::Value>>,
        diags: &mut Diagnostics,
    ) -> Uses {
        let set: Vec<(&str, &toml::Value)> = raw.get_ref().iter().map(|(k, v)| (k.get_ref().as_str(), v)).collect();
        let mut uses = Uses::default();
        for (key, kind, names) in plugin.uses(&set) {
            let declared = match kind {
                Resource::StateTable => self.tables,
                Resource::Channel => self.channels,
                Resource::Reference => self.references,
            };
            let at = raw.get_ref().keys().find(|k| *k.get_ref() == key);
            for name in names {
                if !declared.iter().any(|d| d.as_str() == name) {
                    let from = if at.is_some() { "" } else { ", its default in plugin.toml" };
                    diags.push(
                        self.at(
                            at.map_or_else(|| raw.span(), |k| k.span()),
                            format!(
                                "{owner}: plugin `{}` uses {kind} `{name}` (config `{key}`{from}), which the pipeline does not declare",
                                plugin.info.name
                            ),
                        )
                        .help(format!(
                            "declare [{}.{name}], or set `{key}` to one that is; {}",
                            kind.section(),
                            one_of(declared)
                        )),
                    );
                }
                uses.add(kind, name);
            }
        }
        uses
    }

    pub(super) fn config(
        &self,
        owner: &str,
        plugin: &PluginManifest,
        raw: &Spanned<BTreeMap<Spanned<String>, toml::Value>>,
        diags: &mut Diagnostics,
    ) -> Option<Vec<(String, String)>> {
        let set: Vec<(&str, &toml::Value)> = raw.get_ref().iter().map(|(k, v)| (k.get_ref().as_str(), v)).collect();
        let problems = match plugin.resolve_config(&set) {
            Ok(config) => return Some(config),
            Err(problems) => problems,
        };
        for problem in problems {
            // At the key at fault, or at the whole config for a missing one.
            let span = problem
                .key
                .and_then(|key| raw.get_ref().keys().find(|k| *k.get_ref() == key).map(|k| k.span()))
                .unwrap_or_else(|| raw.span());
            let diagnostic = self.at(span, format!("{owner}: {}", problem.message));
            diags.push(match problem.help {
                Some(help) => diagnostic.help(help),
                None => diagnostic,
            });
        }
        None
    }
}
