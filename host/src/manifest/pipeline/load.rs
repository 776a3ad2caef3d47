//! Reading a pipeline manifest and its fragments, and checking it whole:
//! every problem is reported at once, each with its file, line and column.
//! Each component checks its own entry ([`super::stage`], [`super::delivery`],
//! [`super::resources`]); [`super::graph`] checks the edges between them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::access::{self, Grant, Policy};
use crate::manifest::diagnostic::{Diagnostic, Diagnostics, SourceFile};
use crate::manifest::toml_doc::Document;
use crate::manifest::units::{Name, parse_duration};
use crate::sigv4::AccessKey;
use crate::stream::MAX_SHARDS;
use crate::stream::{
    DEFAULT_FSYNC_INTERVAL, DEFAULT_RETENTION, DEFAULT_SEGMENT_BYTES, DiskStreamSpec, FsyncPolicy, WriteLimit,
};

use super::graph::check_cycles;
use super::raw::*;
use super::spec::*;

/// Reads and checks a pipeline manifest and the plugin manifests it names,
/// reporting every problem found.
pub fn load(path: &Path) -> Result<Pipeline, Diagnostics> {
    let mut diags = Diagnostics::default();
    let Some(text) = read_manifest(path, None, &mut diags) else { return Err(diags) };
    let source = SourceFile::new(path, &text);
    let base = path.parent().unwrap_or(Path::new(".")).to_owned();
    let doc = Document::parse(source.clone(), &text, &mut diags);
    doc.check_top_level(
        &[
            "pipeline",
            "api",
            "storage",
            "sources",
            "streams",
            "stages",
            "sinks",
            "delivery",
            "reference",
            "tables",
            "channels",
        ],
        &mut diags,
    );
    let pipeline = match doc.get("pipeline") {
        Some(_) => doc.single::<Option<RawPipeline>>("pipeline", &mut diags).flatten(),
        None => {
            diags.push(
                Diagnostic::new(&source, 0..0, "missing [pipeline] section").help("add [pipeline] with name = \"...\""),
            );
            None
        }
    };

    // Fragments named by `include` add entries; their paths are relative to their own folder.
    let mut texts = Vec::new();
    for include in pipeline.iter().flat_map(|p| &p.include) {
        let fragment = base.join(include.get_ref());
        if let Some(text) = read_manifest(&fragment, Some((&source, include.span())), &mut diags) {
            texts.push((fragment, text));
        }
    }
    let mut parts = vec![Part { doc, base: base.clone() }];
    for (fragment, text) in &texts {
        let doc = Document::parse(SourceFile::new(fragment, text), text, &mut diags);
        doc.check_top_level(
            &["sources", "streams", "stages", "sinks", "delivery", "reference", "tables", "channels"],
            &mut diags,
        );
        parts.push(Part { doc, base: fragment.parent().unwrap_or(Path::new(".")).to_owned() });
    }
    let api = parts[0].doc.single::<RawApi>("api", &mut diags);
    let api = api.and_then(|api| match api.listen.get_ref().parse::<SocketAddr>() {
        Ok(listen) => {
            let tls = api.tls.as_ref().map(|tls| {
                let files = crate::api::tls::TlsFiles {
                    cert: base.join(&tls.get_ref().cert),
                    key: base.join(&tls.get_ref().key),
                };
                for path in [&files.cert, &files.key] {
                    if !path.is_file() {
                        diags.push(
                            Diagnostic::new(
                                &source,
                                tls.span(),
                                format!("[api] tls: {} is not a file", path.display()),
                            )
                            .help("give the PEM certificate chain and private key, relative to the manifest"),
                        );
                    }
                }
                files
            });
            let mut limits = crate::api::server::Limits::default();
            if let Some(max) = &api.max_connections {
                if *max.get_ref() == 0 {
                    diags.push(Diagnostic::new(&source, max.span(), "[api] max-connections must be at least 1"));
                }
                limits.max_connections = *max.get_ref();
            }
            if let Some(timeout) = &api.header_read_timeout {
                match parse_duration(timeout.get_ref()) {
                    Ok(d) if !d.is_zero() => limits.header_read_timeout = d,
                    Ok(_) => diags.push(Diagnostic::new(
                        &source,
                        timeout.span(),
                        "[api] header-read-timeout must be above 0",
                    )),
                    Err(e) => {
                        diags.push(Diagnostic::new(&source, timeout.span(), format!("[api] header-read-timeout: {e}")))
                    }
                }
            }
            let rates = api
                .access_keys
                .iter()
                .filter_map(|k| {
                    k.get_ref().requests_per_second.as_ref().map(|r| (k.get_ref().id.clone(), *r.get_ref()))
                })
                .collect::<BTreeMap<_, _>>();
            for key in &api.access_keys {
                if let Some(rate) = key.get_ref().requests_per_second.as_ref().filter(|r| *r.get_ref() == 0) {
                    diags.push(Diagnostic::new(&source, rate.span(), "requests-per-second must be at least 1"));
                }
            }
            let Keys { keys: access_keys, policies, unset: mut unset_secrets } =
                access_keys(&source, &api.access_keys, &mut diags)?;
            let metrics_token = match &api.metrics_token_env {
                Some(var) => match std::env::var(var.get_ref()) {
                    Ok(token) if !token.trim().is_empty() => Some(token.trim().to_owned()),
                    _ => {
                        unset_secrets.push(("[api] metrics-token-env".to_owned(), var.get_ref().clone()));
                        None
                    }
                },
                None => None,
            };
            Some(Api {
                listen,
                max_body_bytes: api.max_body.0,
                access_keys,
                policies,
                unset_secrets,
                tls,
                limits,
                rates,
                metrics_token,
            })
        }
        Err(_) => {
            diags.push(
                Diagnostic::new(
                    &source,
                    api.listen.span(),
                    format!("`{}` is not a socket address", api.listen.get_ref()),
                )
                .help("write an IP address and a port, such as \"127.0.0.1:7070\""),
            );
            None
        }
    });
    let raw_storage = parts[0].doc.single::<super::storage::RawStorage>("storage", &mut diags);
    let storage = raw_storage.as_ref().and_then(|raw| super::storage::storage(&source, raw, &mut diags));
    let backend = raw_storage.as_ref().and_then(|r| r.backend.as_ref()).map_or(Default::default(), |b| *b.get_ref());
    let data_dir = pipeline.as_ref().map(|p| match &p.data_dir {
        Some(dir) => base.join(dir),
        None => base.join(".weir").join(p.name.as_str()),
    });

    // Names are global across the manifest and its fragments.
    let mut all_streams = Vec::new();
    let mut all_sinks = Vec::new();
    let mut all_references = Vec::new();
    let mut all_tables = Vec::new();
    let mut all_channels = Vec::new();
    for part in &parts {
        all_streams.extend(part.doc.entry_names("streams"));
        all_sinks.extend(part.doc.entry_names("sinks"));
        all_references.extend(part.doc.entry_names("reference"));
        all_tables.extend(part.doc.entry_names("tables"));
        all_channels.extend(part.doc.entry_names("channels"));
    }
    let stream_names: BTreeSet<&Name> = all_streams.iter().collect();
    let sink_names: BTreeSet<&Name> = all_sinks.iter().collect();
    let reference_names: BTreeSet<&Name> = all_references.iter().collect();
    let table_names: BTreeSet<&Name> = all_tables.iter().collect();
    let channel_names: BTreeSet<&Name> = all_channels.iter().collect();
    let mut declared: BTreeMap<(&str, Name), &Path> = BTreeMap::new();

    let mut sources = Vec::new();
    let mut streams = Vec::new();
    let mut stage_specs = Vec::new();
    let mut output_spans = Vec::new();
    let mut sinks = Vec::new();
    let mut deliveries = Vec::new();
    let mut references = Vec::new();
    let mut tables = Vec::new();
    let mut channels = Vec::new();
    for part in &parts {
        let (source, base) = (&part.doc.source, part.base.as_path());
        for section in ["sources", "streams", "stages", "sinks", "delivery", "reference", "tables", "channels"] {
            for (name, span) in part.doc.entry_spans(section) {
                if let Some(first) = declared.insert((section, name.clone()), &source.path) {
                    diags.push(
                        Diagnostic::new(source, span, format!("[{section}.{name}] is declared twice"))
                            .help(format!("it is also declared in {}; keep one", first.display())),
                    );
                }
            }
        }
        let check = Checker {
            source,
            streams: &stream_names,
            sinks: &sink_names,
            references: &reference_names,
            tables: &table_names,
            channels: &channel_names,
            backend,
        };
        for sink in part.doc.entries::<RawSink>("sinks", &mut diags) {
            if stream_names.contains(&sink.name) {
                diags.push(
                    Diagnostic::new(
                        source,
                        sink.name_span.clone(),
                        format!("`{}` is both a stream and a sink", sink.name),
                    )
                    .help("give the sink another name, so stage outputs are unambiguous"),
                );
            }
            sinks.push(SinkSpec { path: base.join(&sink.value.path), name: sink.name, format: sink.value.format });
        }
        for s in part.doc.entries::<RawSource>("sources", &mut diags) {
            if let Some(stream) = check.stream(&s.value.stream, &format!("source `{}` feeds", s.name), &mut diags) {
                sources.push(Source { name: s.name, stream });
            }
        }
        for stage in part.doc.entries::<RawStage>("stages", &mut diags) {
            let output_span = stage.value.output.span();
            if let Some(spec) = check.stage(stage, base, data_dir.as_deref(), &mut diags) {
                stage_specs.push(spec);
                output_spans.push((source, output_span));
            }
        }
        for s in part.doc.entries::<RawStream>("streams", &mut diags) {
            streams.extend(check.stream_spec(s.name, &s.value, &mut diags));
        }
        for d in part.doc.entries::<RawDelivery>("delivery", &mut diags) {
            deliveries.extend(check.delivery(d, base, data_dir.as_deref(), &mut diags));
        }
        for r in part.doc.entries::<RawReference>("reference", &mut diags) {
            references.extend(check.reference(r.name, &r.value, base, &mut diags));
        }
        for t in part.doc.entries::<RawTable>("tables", &mut diags) {
            tables.push(t.name.to_string());
        }
        for c in part.doc.entries::<RawChannel>("channels", &mut diags) {
            channels.extend(check.channel(c.name, &c.value, &mut diags));
        }
    }
    check_cycles(&stage_specs, &output_spans, &mut diags);

    match (pipeline, api, data_dir, storage) {
        (Some(p), Some(api), Some(data_dir), Some(storage)) if diags.is_empty() => Ok(Pipeline {
            name: p.name,
            description: p.description,
            path: path.to_owned(),
            data_dir,
            api,
            storage,
            sources,
            streams,
            stages: stage_specs,
            sinks,
            deliveries,
            references,
            tables,
            channels,
        }),
        _ => Err(diags),
    }
}

/// The manifest or one of its fragments, with the folder its paths are relative to.
struct Part<'t> {
    doc: Document<'t>,
    base: PathBuf,
}

/// Reads a manifest file; `include` is where a fragment is named, for the error.
fn read_manifest(path: &Path, include: Option<(&SourceFile, Range<usize>)>, diags: &mut Diagnostics) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Some(t),
        Err(e) => {
            let message = format!("cannot read the manifest `{}`: {e}", path.display());
            diags.push(match include {
                Some((source, span)) => Diagnostic::new(source, span, message)
                    .help("the path is relative to the including manifest's folder"),
                None => Diagnostic::new(&SourceFile::new(path, ""), 0..0, message),
            });
            None
        }
    }
}

/// A value the manifest gives as `<key> = "..."` or, for a secret that does not
/// belong in a file, `<key>-env = "VARIABLE"`: the value, `None` when neither
/// is there, or `Err` (with the problem in `diags`) when both are, or the
/// variable is not set. `what` says what the variable must hold.
pub(super) fn value_or_env(
    source: &SourceFile,
    owner: &str,
    key: &str,
    inline: Option<(&str, Range<usize>)>,
    env: Option<(&str, Range<usize>)>,
    what: &str,
    diags: &mut Diagnostics,
) -> Result<Option<String>, ()> {
    match (inline, env) {
        (Some(_), Some((_, span))) => {
            diags.push(Diagnostic::new(source, span, format!("{owner}: set `{key}` or `{key}-env`, not both")));
            Err(())
        }
        (Some((value, _)), None) => Ok(Some(value.to_owned())),
        (None, Some((var, span))) => match std::env::var(var) {
            Ok(value) if !value.is_empty() => Ok(Some(value)),
            _ => {
                diags.push(
                    Diagnostic::new(source, span, format!("{owner}: environment variable `{var}` is not set"))
                        .help(format!("export {var}=<{what}> before starting weir")),
                );
                Err(())
            }
        },
        (None, None) => Ok(None),
    }
}

/// `[api]`'s access keys as [`access_keys`] reads them.
struct Keys {
    /// With their secrets (inline or from the environment).
    keys: Vec<AccessKey>,
    /// What each may do, by id (keys with `allow`).
    policies: BTreeMap<String, Policy>,
    /// `(key id, variable)` of the keys whose secret variable is not set.
    unset: Vec<(String, String)>,
}

/// Access keys with their secrets (inline or from the environment), their
/// policies, and the keys whose secret variable is not set.
fn access_keys(source: &SourceFile, raw: &[Spanned<RawAccessKey>], diags: &mut Diagnostics) -> Option<Keys> {
    let before = diags.len();
    let mut keys = Vec::new();
    let mut policies = BTreeMap::new();
    let mut unset = Vec::new();
    let mut seen = BTreeSet::new();
    for key in raw {
        let span = key.span();
        let k = key.get_ref();
        let owner = format!("access key `{}`", k.id);
        if !seen.insert(k.id.as_str()) {
            // Which of the two would sign, and with which policy, would be a guess.
            diags.push(Diagnostic::new(source, span.clone(), format!("{owner} is declared twice")));
        }
        if let Some(allow) = &k.allow {
            policies.insert(k.id.clone(), policy(source, &owner, allow, diags));
        }
        if let (None, Some(var)) = (&k.secret, &k.secret_env)
            && std::env::var(var).map_or(true, |v| v.is_empty())
        {
            unset.push((k.id.clone(), var.clone()));
            continue;
        }
        let inline = k.secret.as_deref().map(|v| (v, span.clone()));
        let env = k.secret_env.as_deref().map(|v| (v, span.clone()));
        let secret = match value_or_env(source, &owner, "secret", inline, env, "secret access key", diags) {
            Ok(Some(secret)) => Some(secret),
            Ok(None) => {
                diags.push(
                    Diagnostic::new(source, span, format!("{owner} needs exactly one of `secret` or `secret-env`"))
                        .help("prefer `secret-env = \"WEIR_SECRET_ACCESS_KEY\"`: secrets do not belong in files"),
                );
                None
            }
            Err(()) => None,
        };
        if let Some(secret) = secret {
            keys.push(AccessKey { id: k.id.clone(), secret });
        }
    }
    (diags.len() == before).then_some(Keys { keys, policies, unset })
}

/// A key's `allow`, each action and resource checked against what weir knows.
fn policy(source: &SourceFile, owner: &str, allow: &[Spanned<RawGrant>], diags: &mut Diagnostics) -> Policy {
    let mut grants = Vec::new();
    for grant in allow {
        let g = grant.get_ref();
        let problems = g
            .actions
            .iter()
            .map(|a| access::check_action(a))
            .chain(g.resources.iter().map(|r| access::check_resource(r)));
        for problem in problems.filter_map(Result::err) {
            diags.push(
                Diagnostic::new(source, grant.span(), format!("{owner}: {problem}"))
                    .help("for example `{ actions = [\"kinesis:PutRecord*\"], resources = [\"stream/toll-lines\"] }`"),
            );
        }
        if g.actions.is_empty() || g.resources.is_empty() {
            diags.push(Diagnostic::new(
                source,
                grant.span(),
                format!("{owner}: a grant names at least one action and one resource"),
            ));
        }
        grants.push(Grant { actions: g.actions.clone(), resources: g.resources.clone() });
    }
    Policy::Grants(grants)
}

pub(super) struct Checker<'a> {
    pub(super) source: &'a SourceFile,
    pub(super) streams: &'a BTreeSet<&'a Name>,
    pub(super) sinks: &'a BTreeSet<&'a Name>,
    pub(super) references: &'a BTreeSet<&'a Name>,
    pub(super) tables: &'a BTreeSet<&'a Name>,
    pub(super) channels: &'a BTreeSet<&'a Name>,
    /// Where streams are kept: the disk's settings mean nothing elsewhere.
    pub(super) backend: super::Backend,
}

pub(super) fn one_of(names: &BTreeSet<&Name>) -> String {
    if names.is_empty() {
        "none is declared yet".to_owned()
    } else {
        let list: Vec<_> = names.iter().map(|n| format!("`{n}`")).collect();
        format!("declared: {}", list.join(", "))
    }
}

impl Checker<'_> {
    pub(super) fn at(&self, span: Range<usize>, message: String) -> Diagnostic {
        Diagnostic::new(self.source, span, message)
    }

    /// A setting written as text (`on-error = "stop"`), read by serde into its
    /// enum; a problem is reported at its place, beside the others.
    pub(super) fn setting<T: serde::de::DeserializeOwned>(
        &self,
        raw: &Spanned<String>,
        what: &str,
        diags: &mut Diagnostics,
    ) -> Option<T> {
        use serde::de::IntoDeserializer as _;
        let text: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
            raw.get_ref().as_str().into_deserializer();
        match T::deserialize(text) {
            Ok(value) => Some(value),
            Err(e) => {
                diags.push(self.at(raw.span(), format!("{what}: {e}")));
                None
            }
        }
    }

    pub(super) fn stream(&self, name: &Spanned<String>, what: &str, diags: &mut Diagnostics) -> Option<Name> {
        match Name::parse(name.get_ref()) {
            Ok(n) if self.streams.contains(&n) => Some(n),
            _ => {
                diags.push(self.at(name.span(), format!("{what} unknown stream `{}`", name.get_ref())).help(format!(
                    "declare [streams.{}] or use a declared stream ({})",
                    name.get_ref(),
                    one_of(self.streams)
                )));
                None
            }
        }
    }

    pub(super) fn sink(&self, name: &Spanned<String>, what: &str, diags: &mut Diagnostics) -> Option<Name> {
        match Name::parse(name.get_ref()) {
            Ok(n) if self.sinks.contains(&n) => Some(n),
            _ => {
                diags.push(self.at(name.span(), format!("{what} unknown sink `{}`", name.get_ref())).help(format!(
                    "declare [sinks.{}] or use a declared sink ({})",
                    name.get_ref(),
                    one_of(self.sinks)
                )));
                None
            }
        }
    }

    pub(super) fn duration(&self, raw: &Spanned<String>, diags: &mut Diagnostics) -> Option<Duration> {
        parse_duration(raw.get_ref()).map_err(|e| diags.push(self.at(raw.span(), e))).ok()
    }

    pub(super) fn stream_spec(&self, name: Name, raw: &RawStream, diags: &mut Diagnostics) -> Option<StreamSpec> {
        if self.backend == super::Backend::Nats {
            let syncing = "remove it: with [storage] backend = \"nats\", the NATS servers sync (their sync_interval)";
            let disk_only = [
                raw.fsync.as_ref().map(|f| ("fsync", f.span(), syncing)),
                raw.fsync_interval.as_ref().map(|f| ("fsync-interval", f.span(), syncing)),
                raw.segment_size.as_ref().map(|s| ("segment-size", s.span(), "remove it: NATS keeps its own files")),
            ];
            for (key, span, help) in disk_only.into_iter().flatten() {
                diags.push(
                    self.at(span, format!("[streams.{name}] {key} is a setting of the local disk store")).help(help),
                );
            }
            if raw.write_limit.is_some() || raw.max_size.is_some() {
                diags.push(
                    self.at(
                        raw.shards.span(),
                        format!("[streams.{name}] write-limit and max-size are not kept on the NATS backend yet"),
                    )
                    .help("remove them, or keep this pipeline's streams on the local disk"),
                );
            }
        }
        let fsync = self.fsync(raw, diags);
        let retention = match &raw.retention {
            None => Some(DEFAULT_RETENTION),
            Some(r) => self.duration(r, diags).filter(|d| {
                let ok = (Duration::from_secs(1)..=Duration::from_secs(365 * 24 * 3600)).contains(d);
                if !ok {
                    diags.push(self.at(r.span(), "retention must be between 1s and 365 days".to_owned()));
                }
                ok
            }),
        };
        let segment_bytes = match &raw.segment_size {
            None => Some(DEFAULT_SEGMENT_BYTES),
            Some(size) if (4096..=(1 << 30)).contains(&size.get_ref().0) => Some(size.get_ref().0),
            Some(size) => {
                diags.push(self.at(size.span(), "segment-size must be between 4KiB and 1GiB".to_owned()));
                None
            }
        };
        let shards = *raw.shards.get_ref();
        if !(1..=MAX_SHARDS).contains(&shards) {
            diags.push(
                self.at(raw.shards.span(), format!("shards = {shards} is out of range"))
                    .help(format!("use 1 to {MAX_SHARDS}")),
            );
        }
        let storage = DiskStreamSpec {
            shards: shards.clamp(1, MAX_SHARDS),
            name: name.to_string(),
            capacity: raw.capacity,
            fsync: fsync?,
            retention: retention?,
            max_bytes: raw.max_size.map(|s| s.0),
            segment_bytes: segment_bytes?,
            write_limit: raw.write_limit.as_ref().map(|w| WriteLimit {
                bytes_per_second: w.bytes_per_second.0,
                records_per_second: w.records_per_second,
            }),
        };
        let deduplicate = match &raw.deduplicate {
            None => Some(None),
            Some(d) => self.deduplicate(d, storage.retention, diags).map(Some),
        };
        Some(StreamSpec { name, storage, deduplicate: deduplicate? })
    }

    /// A stream's `deduplicate`: one identity (`id-pattern`, a regex whose first group
    /// is the id, or `id-field`, a JSON field), and a horizon within the retention.
    pub(super) fn deduplicate(
        &self,
        raw: &Spanned<RawDeduplicate>,
        retention: Duration,
        diags: &mut Diagnostics,
    ) -> Option<crate::dedup::DedupSpec> {
        use crate::dedup::{DedupSpec, Identity};
        let d = raw.get_ref();
        let identity = match (&d.id_pattern, &d.id_field) {
            (Some(pattern), None) => match regex::bytes::Regex::new(pattern.get_ref()) {
                Ok(re) if re.captures_len() >= 2 => Some(Identity::Pattern(re)),
                Ok(_) => {
                    diags.push(
                        self.at(pattern.span(), "deduplicate.id-pattern has no capture group".to_owned())
                            .help("put the record's id in a group, e.g. \"^([^,]+),\" for a CSV line's first field"),
                    );
                    None
                }
                Err(e) => {
                    diags.push(self.at(pattern.span(), format!("deduplicate.id-pattern is not a valid regex: {e}")));
                    None
                }
            },
            (None, Some(field)) if !field.is_empty() => Some(Identity::Field(field.clone())),
            _ => {
                diags.push(
                    self.at(raw.span(), "deduplicate needs one of id-pattern or id-field".to_owned())
                        .help("e.g. deduplicate = { id-field = \"transaction_id\", horizon = \"24h\" }"),
                );
                None
            }
        };
        let horizon = match &d.horizon {
            None => Some(retention),
            Some(h) => self.duration(h, diags).filter(|horizon| {
                let ok = *horizon >= Duration::from_secs(1) && *horizon <= retention;
                if !ok {
                    diags.push(self.at(h.span(), "deduplicate.horizon must be between 1s and the stream's retention".to_owned())
                        .help("the ids are those of the records the stream still holds: raise `retention` for a longer horizon"));
                }
                ok
            }),
        };
        Some(DedupSpec { identity: identity?, horizon: horizon? })
    }

    pub(super) fn fsync(&self, raw: &RawStream, diags: &mut Diagnostics) -> Option<FsyncPolicy> {
        let interval = match &raw.fsync_interval {
            Some(i) => self.duration(i, diags)?,
            None => DEFAULT_FSYNC_INTERVAL,
        };
        match raw.fsync.as_ref().map(|f| (f.get_ref().as_str(), f.span())) {
            None | Some(("group", _)) => Some(FsyncPolicy::Group(interval)),
            Some(("always", _)) => Some(FsyncPolicy::Always),
            Some(("never", _)) => Some(FsyncPolicy::Never),
            Some((other, span)) => {
                diags.push(
                    self.at(span, format!("`{other}` is not an fsync policy"))
                        .help("use \"always\", \"group\" (the default) or \"never\""),
                );
                None
            }
        }
    }
}
