//! `weir dlq`: a running pipeline's dead letters, per stage: how many are
//! pending, what they are, and feeding them through the stage again.

use axum::http::{HeaderMap, Method};
use clap::Subcommand;
use serde_json::Value;

use crate::client::Client;

#[derive(Debug, Subcommand)]
pub(super) enum DlqAction {
    /// How many dead letters each stage (or this one) holds, and of what kinds.
    List {
        /// Only this stage.
        stage: Option<String>,
    },
    /// A stage's pending dead letters, oldest first: time, plugin version, code, reason, record.
    Show {
        /// The stage.
        stage: String,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only those this plugin version (`name@version`) set aside.
        #[arg(long, value_name = "NAME@VERSION")]
        plugin: Option<String>,
    },
    /// Feed a stage's pending dead letters through its running plugin again (after a fix
    /// or a hot swap): those that succeed go on, those that fail stay with their new reason.
    Redrive {
        /// The stage.
        stage: String,
        /// Only those this plugin version (`name@version`) set aside.
        #[arg(long, value_name = "NAME@VERSION")]
        plugin: Option<String>,
    },
}

pub(super) async fn dlq(client: Client, action: DlqAction) -> anyhow::Result<()> {
    match action {
        DlqAction::List { stage } => {
            let stages = match stage {
                Some(stage) => vec![stage],
                None => {
                    let status =
                        client.native(Method::GET, "/v1/pipeline", HeaderMap::new(), Default::default()).await?;
                    let names = status["stages"].as_array().into_iter().flatten();
                    names.filter_map(|s| s["name"].as_str().map(str::to_owned)).collect()
                }
            };
            println!("{:<24} {:>8}  kinds", "stage", "pending");
            for stage in stages {
                let answer = letters(&client, &stage, 10_000, None).await?;
                let mut kinds = std::collections::BTreeMap::<String, u64>::new();
                for l in answer["letters"].as_array().into_iter().flatten() {
                    *kinds.entry(l["error_code"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
                }
                let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
                println!("{stage:<24} {:>8}  {}", answer["pending"].as_u64().unwrap_or(0), kinds.join(", "));
            }
        }
        DlqAction::Show { stage, limit, plugin } => {
            let answer = letters(&client, &stage, limit, plugin.as_deref()).await?;
            let shown = answer["letters"].as_array().map_or(0, Vec::len);
            println!("stage `{stage}`: {} pending, the oldest {shown}:", answer["pending"].as_u64().unwrap_or(0));
            for l in answer["letters"].as_array().into_iter().flatten() {
                let text = |k: &str| l[k].as_str().unwrap_or("-").to_owned();
                println!(
                    "{}  {}  {}  {}:{}  {}\n    record: {}",
                    text("failed_at"),
                    text("plugin"),
                    text("error_code"),
                    text("shard"),
                    text("sequence"),
                    text("reason"),
                    text("data")
                );
            }
        }
        DlqAction::Redrive { stage, plugin } => {
            let path = format!("/v1/stages/{stage}/dead-letters/redrive{}", query(None, plugin.as_deref()));
            let answer = client.native(Method::POST, &path, HeaderMap::new(), Default::default()).await?;
            let (redriven, failed) =
                (answer["redriven"].as_u64().unwrap_or(0), answer["failed_again"].as_u64().unwrap_or(0));
            println!(
                "redrove {redriven} dead letter(s) of stage `{stage}`: {} went through, {failed} failed again (pending, with their new reason)",
                redriven.saturating_sub(failed)
            );
        }
    }
    Ok(())
}

/// `GET /v1/stages/{stage}/dead-letters`.
async fn letters(client: &Client, stage: &str, limit: usize, plugin: Option<&str>) -> anyhow::Result<Value> {
    let path = format!("/v1/stages/{stage}/dead-letters{}", query(Some(limit), plugin));
    Ok(client.native(Method::GET, &path, HeaderMap::new(), Default::default()).await?)
}

/// `?limit=..&plugin=..`, the plugin percent-encoded.
fn query(limit: Option<usize>, plugin: Option<&str>) -> String {
    let mut parts = Vec::new();
    if let Some(limit) = limit {
        parts.push(format!("limit={limit}"));
    }
    if let Some(plugin) = plugin {
        parts.push(format!("plugin={}", crate::sigv4::uri_encode(plugin, false)));
    }
    if parts.is_empty() { String::new() } else { format!("?{}", parts.join("&")) }
}
