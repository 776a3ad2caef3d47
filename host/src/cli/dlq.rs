//! `weir dlq`: a running pipeline's dead letters, per stage, and its delivery
//! streams' error records: how many are pending, what they are, and feeding
//! them through the stage or delivery stream again.

use axum::http::{HeaderMap, Method};
use clap::Subcommand;
use serde_json::Value;

use crate::client::Client;

#[derive(Debug, Subcommand)]
pub(super) enum DlqAction {
    /// How many dead letters each stage and delivery stream (or this one) holds, and of what kinds.
    List {
        /// Only this stage or delivery stream.
        name: Option<String>,
    },
    /// A stage's pending dead letters, or a delivery stream's error records, oldest first:
    /// time, plugin version, code, reason, record.
    Show {
        /// The stage or delivery stream.
        name: String,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only those this plugin version (`name@version`) set aside.
        #[arg(long, value_name = "NAME@VERSION")]
        plugin: Option<String>,
    },
    /// Feed a stage's pending dead letters through its running plugin again (after a fix
    /// or a hot swap), or a delivery stream's error records through it again (after its
    /// transform or warehouse table is fixed): those that succeed go on, those that fail
    /// stay with their new reason.
    Redrive {
        /// The stage or delivery stream.
        name: String,
        /// Only those this plugin version (`name@version`) set aside.
        #[arg(long, value_name = "NAME@VERSION")]
        plugin: Option<String>,
    },
}

/// A stage or a delivery stream, and where the API keeps its dead letters.
struct Owner {
    what: &'static str,
    name: String,
    path: String,
}

/// Every stage and delivery stream of the pipeline, stages first.
async fn owners(client: &Client) -> anyhow::Result<Vec<Owner>> {
    let status = client.native(Method::GET, "/v1/pipeline", HeaderMap::new(), Default::default()).await?;
    let names = |key: &str| -> Vec<String> {
        status[key].as_array().into_iter().flatten().filter_map(|s| s["name"].as_str().map(str::to_owned)).collect()
    };
    let stages = names("stages").into_iter().map(|name| Owner {
        what: "stage",
        path: format!("/v1/stages/{}/dead-letters", crate::sigv4::uri_encode(&name, false)),
        name,
    });
    let deliveries = names("deliveries").into_iter().map(|name| Owner {
        what: "delivery stream",
        path: format!("/v1/delivery/{}/dead-letters", crate::sigv4::uri_encode(&name, false)),
        name,
    });
    Ok(stages.chain(deliveries).collect())
}

/// The stage, or else the delivery stream, called `name`.
async fn owner(client: &Client, name: &str) -> anyhow::Result<Owner> {
    let all = owners(client).await?;
    let known: Vec<&str> = all.iter().map(|o| o.name.as_str()).collect();
    let message = format!("the pipeline has no stage or delivery stream `{name}` (it has: {})", known.join(", "));
    all.into_iter().find(|o| o.name == name).ok_or_else(|| anyhow::anyhow!(message))
}

pub(super) async fn dlq(client: Client, action: DlqAction) -> anyhow::Result<()> {
    match action {
        DlqAction::List { name } => {
            let owners = match name {
                Some(name) => vec![owner(&client, &name).await?],
                None => owners(&client).await?,
            };
            println!("{:<32} {:>8}  kinds", "stage or delivery stream", "pending");
            for owner in owners {
                let answer = letters(&client, &owner, 10_000, None).await?;
                let mut kinds = std::collections::BTreeMap::<String, u64>::new();
                for l in answer["letters"].as_array().into_iter().flatten() {
                    *kinds.entry(l["error_code"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
                }
                let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
                let label = format!("{} ({})", owner.name, owner.what);
                println!("{label:<32} {:>8}  {}", answer["pending"].as_u64().unwrap_or(0), kinds.join(", "));
            }
        }
        DlqAction::Show { name, limit, plugin } => {
            let owner = owner(&client, &name).await?;
            let answer = letters(&client, &owner, limit, plugin.as_deref()).await?;
            let shown = answer["letters"].as_array().map_or(0, Vec::len);
            let pending = answer["pending"].as_u64().unwrap_or(0);
            println!("{} `{name}`: {pending} pending, the oldest {shown}:", owner.what);
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
        DlqAction::Redrive { name, plugin } => {
            let owner = owner(&client, &name).await?;
            let path = format!("{}/redrive{}", owner.path, query(None, plugin.as_deref()));
            let answer = client.native(Method::POST, &path, HeaderMap::new(), Default::default()).await?;
            let (redriven, failed) =
                (answer["redriven"].as_u64().unwrap_or(0), answer["failed_again"].as_u64().unwrap_or(0));
            println!(
                "redrove {redriven} dead letter(s) of {} `{name}`: {} went through, {failed} failed again (pending, with their new reason)",
                owner.what,
                redriven.saturating_sub(failed)
            );
        }
    }
    Ok(())
}

/// The owner's dead letters (`GET .../dead-letters`).
async fn letters(client: &Client, owner: &Owner, limit: usize, plugin: Option<&str>) -> anyhow::Result<Value> {
    let path = format!("{}{}", owner.path, query(Some(limit), plugin));
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
