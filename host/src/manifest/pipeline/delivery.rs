//! Checking a `[delivery.<name>]` entry: buffering, its lake (local or S3),
//! prefixes, transform and warehouse.

use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use crate::lake::LakeSpec;
use crate::manifest::diagnostic::Diagnostics;
use crate::manifest::plugin::World;
use crate::manifest::units::Name;
use crate::warehouse::{ColumnMap, Database, WarehouseSpec};

use super::load::{Checker, value_or_env};
use super::raw::*;
use super::spec::*;

impl Checker<'_> {
    pub(super) fn delivery(
        &self,
        entry: crate::manifest::toml_doc::Entry<RawDelivery>,
        base: &Path,
        data_dir: Option<&Path>,
        diags: &mut Diagnostics,
    ) -> Option<DeliverySpec> {
        let (name, mut raw) = (entry.name, entry.value);
        if raw.config.span().is_empty() {
            raw.config = Spanned::new(entry.name_span.clone(), raw.config.into_inner());
        }
        let before = diags.len();
        let source_stream = match &raw.stream {
            None => None,
            Some(stream) => Some(self.stream(stream, &format!("delivery `{name}` reads"), diags)?),
        };
        let transform = match &raw.transform {
            None => {
                if !raw.config.get_ref().is_empty() {
                    diags.push(self.at(raw.config.span(), format!("delivery `{name}` has config but no transform")));
                }
                None
            }
            Some(path) => {
                let owner = format!("delivery `{name}`");
                let plugin = self.plugin(&owner, path, base, diags)?;
                if plugin.info.world != World::Transformer {
                    diags.push(self.at(
                        path.span(),
                        format!(
                            "delivery `{name}`: plugin `{}` is a {}, not a transformer",
                            plugin.info.name, plugin.info.world
                        ),
                    ));
                }
                let config = self.config(&owner, &plugin, &raw.config, diags).unwrap_or_default();
                let uses = self.uses(&owner, &plugin, &raw.config, diags);
                let limits = self.limits(&raw.limits, diags);
                // Its outputs go to the lake, not to a stream.
                let output_limits = self.output_limits(&raw.limits, false, diags);
                let failed_batch = match &raw.failed_batch {
                    None => FailedBatch::Bisect,
                    Some(how) => self.setting(how, &format!("delivery `{name}`: failed-batch"), diags)?,
                };
                Some(Transform { plugin, config, limits, output_limits, failed_batch, uses })
            }
        };
        for prefix in [Some(&raw.prefix), Some(&raw.error_prefix), raw.backup_prefix.as_ref()].into_iter().flatten() {
            if let Err(e) = crate::lake::check_prefix(prefix) {
                diags.push(self.at(entry.name_span.clone(), format!("delivery `{name}`: {e}")));
            }
        }
        let buffer_bytes = match &raw.buffer_size {
            None => DEFAULT_BUFFER_BYTES,
            Some(size) => {
                let bytes = size.get_ref().0;
                if !((1 << 10)..=(128 << 20)).contains(&bytes) {
                    diags.push(self.at(size.span(), "buffer-size must be between 1KiB and 128MiB".to_owned()));
                }
                bytes
            }
        };
        let buffer_interval = match &raw.buffer_interval {
            None => DEFAULT_BUFFER_INTERVAL,
            Some(i) => {
                let d = self.duration(i, diags)?;
                if d > Duration::from_secs(900) {
                    diags.push(self.at(i.span(), "buffer-interval must be between 0s and 15m".to_owned()));
                }
                d
            }
        };
        let lake = self.lake(&format!("delivery `{name}`"), &raw.lake, raw.s3.as_ref(), base, diags);
        let retry_duration = match &raw.retry_duration {
            None => DEFAULT_LAKE_RETRY,
            Some(d) => self.duration(d, diags).unwrap_or(DEFAULT_LAKE_RETRY),
        };
        let warehouse = match &raw.warehouse {
            None => None,
            Some(w) => Some(self.warehouse(&name, w, base, data_dir, diags)?),
        };
        let deduplicate = match (&raw.deduplicate, &raw.stream) {
            (None, _) => None,
            (Some(d), Some(stream)) => {
                diags.push(
                    self.at(
                        d.span(),
                        format!(
                            "delivery `{name}` reads stream `{}`: it takes no puts to deduplicate",
                            stream.get_ref()
                        ),
                    )
                    .help("declare `deduplicate` on the stream it reads instead"),
                );
                None
            }
            (Some(d), None) => Some(self.deduplicate(d, crate::stream::DEFAULT_RETENTION, diags)?),
        };
        let lake = lake?;
        (diags.len() == before).then(|| DeliverySpec {
            name,
            transform,
            buffer_bytes,
            buffer_interval,
            lake,
            prefix: raw.prefix.clone(),
            error_prefix: raw.error_prefix.clone(),
            backup_prefix: raw.backup_prefix.clone(),
            source_stream,
            gzip: raw.compression == Compression::Gzip,
            retry_duration,
            warehouse,
            deduplicate,
        })
    }

    /// `lake = "dir"` or `lake = "s3://bucket/prefix"` with `s3 = { ... }`.
    pub(super) fn lake(
        &self,
        owner: &str,
        lake: &Spanned<String>,
        s3: Option<&Spanned<RawS3>>,
        base: &Path,
        diags: &mut Diagnostics,
    ) -> Option<LakeSpec> {
        let span = lake.span();
        let mut lake = match LakeSpec::parse(lake.get_ref(), base) {
            Ok(lake) => lake,
            Err(e) => {
                diags.push(self.at(span, format!("{owner}: {e}")));
                return None;
            }
        };
        let Some(s3) = s3 else { return Some(lake) };
        let LakeSpec::S3(spec) = &mut lake else {
            diags.push(
                self.at(s3.span(), format!("{owner} has `s3` settings but its lake is a directory"))
                    .help("write the lake as lake = \"s3://bucket/prefix\", or remove `s3`"),
            );
            return None;
        };
        let settings = s3.get_ref();
        if let Some(endpoint) = &settings.endpoint {
            if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
                diags.push(self.at(s3.span(), format!("{owner}: s3 endpoint `{endpoint}` is not an http(s):// URL")));
            }
            spec.endpoint = Some(endpoint.clone());
        }
        if let Some(region) = &settings.region {
            spec.region = region.clone();
        }
        spec.access_key_id = settings.access_key_id.clone();
        let inline = settings.secret_access_key.as_deref().map(|v| (v, s3.span()));
        let env = settings.secret_access_key_env.as_ref().map(|v| (v.get_ref().as_str(), v.span()));
        let what = "the lake's secret access key";
        spec.secret_access_key =
            value_or_env(self.source, owner, "secret-access-key", inline, env, what, diags).ok().flatten();
        Some(lake)
    }

    pub(super) fn warehouse(
        &self,
        delivery: &Name,
        raw: &Spanned<RawWarehouse>,
        base: &Path,
        data_dir: Option<&Path>,
        diags: &mut Diagnostics,
    ) -> Option<WarehouseSpec> {
        let before = diags.len();
        let w = raw.get_ref();
        let owner = format!("delivery `{delivery}` warehouse");
        let inline = w.database.as_ref().map(|v| (v.get_ref().as_str(), v.span()));
        let env = w.database_env.as_ref().map(|v| (v.get_ref().as_str(), v.span()));
        let what = "the database's connection string";
        let database = match value_or_env(self.source, &owner, "database", inline, env, what, diags) {
            Ok(Some(database)) => Some(database),
            Err(()) => None,
            Ok(None) if w.kind == WarehouseKind::Sqlite => {
                Some(data_dir.unwrap_or(base).join("warehouse.db").display().to_string())
            }
            Ok(None) => {
                diags.push(
                    self.at(raw.span(), format!("{owner}: a postgres warehouse needs `database` or `database-env`"))
                        .help("e.g. database = \"host=127.0.0.1 user=weir dbname=tolls\""),
                );
                None
            }
        };
        if let Err(e) = crate::warehouse::check_identifier(w.table.get_ref()) {
            diags.push(self.at(w.table.span(), format!("{owner}: table {e}")));
        }
        let columns = self.columns(&owner, &w.columns, diags);
        let key = match w.key.as_ref() {
            None => Vec::new(),
            Some(raw) => {
                let key = match raw.get_ref() {
                    RawKey::One(column) => vec![column.clone()],
                    RawKey::Many(columns) => columns.clone(),
                };
                let unmapped: Vec<&String> = key.iter().filter(|k| !columns.iter().any(|c| &c.column == *k)).collect();
                if key.is_empty() {
                    diags.push(self.at(raw.span(), format!("{owner}: `key` names no column")));
                } else if !unmapped.is_empty() {
                    let names = unmapped.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
                    diags.push(
                        self.at(raw.span(), format!("{owner}: key column {names} is not one of `columns`"))
                            .help("the key is made of loaded columns: list them in `columns` too"),
                    );
                }
                key
            }
        };
        let retry_duration = match &w.retry_duration {
            None => DEFAULT_WAREHOUSE_RETRY,
            Some(d) => self.duration(d, diags).unwrap_or(DEFAULT_WAREHOUSE_RETRY),
        };
        let database = match w.kind {
            WarehouseKind::Sqlite => Database::Sqlite(base.join(database?)),
            WarehouseKind::Postgres => Database::Postgres(database?),
        };
        (diags.len() == before).then(|| WarehouseSpec {
            database,
            table: w.table.get_ref().clone(),
            columns,
            key,
            retry_duration,
        })
    }

    /// `columns = ["a", "b"]` (column = field) or `columns = { column = "field" }`.
    pub(super) fn columns(&self, owner: &str, raw: &Spanned<toml::Value>, diags: &mut Diagnostics) -> Vec<ColumnMap> {
        let pairs: Vec<(String, Option<String>)> = match raw.get_ref() {
            toml::Value::Array(items) => {
                items.iter().map(|v| (v.as_str().unwrap_or("").to_owned(), v.as_str().map(str::to_owned))).collect()
            }
            toml::Value::Table(map) => {
                map.iter().map(|(column, field)| (column.clone(), field.as_str().map(str::to_owned))).collect()
            }
            _ => Vec::new(),
        };
        let before = diags.len();
        let mut columns = Vec::new();
        for (column, field) in pairs {
            match (crate::warehouse::check_identifier(&column), field) {
                (Ok(()), Some(field)) if !column.contains('.') => columns.push(ColumnMap { column, field }),
                (Err(e), _) => diags.push(self.at(raw.span(), format!("{owner}: column {e}"))),
                _ => diags.push(self.at(raw.span(), format!("{owner}: column `{column}` needs a field name string"))),
            }
        }
        if columns.is_empty() && diags.len() == before {
            diags.push(self.at(raw.span(), format!("{owner}: `columns` maps no column")).help(
                "list the columns named like the rows' JSON fields, [\"a\", \"b\"], or map them: { column = \"field\" }",
            ));
        }
        columns
    }
}
