//! `weir stream`: create, list, describe, delete and reshard the streams of
//! a running weir, through its Kinesis API.

use clap::Subcommand;
use serde_json::json;

use crate::client::Client;

#[derive(Debug, Subcommand)]
pub(super) enum StreamAction {
    /// Create a stream.
    Create {
        /// Stream name.
        name: String,
    },
    /// List streams.
    List,
    /// Describe a stream (JSON).
    Describe {
        /// Stream name.
        name: String,
    },
    /// Delete a stream and its records.
    Delete {
        /// Stream name.
        name: String,
    },
    /// Change the number of shards (uniform scaling): the open shards close and
    /// this many children split the hash key space; consumers finish parents first.
    Reshard {
        /// Stream name.
        name: String,
        /// The new number of open shards.
        shards: u32,
    },
}

pub(super) async fn stream(client: Client, action: StreamAction) -> anyhow::Result<()> {
    match action {
        StreamAction::Create { name } => {
            client.call("CreateStream", &json!({"StreamName": name, "ShardCount": 1})).await?;
            println!("created stream `{name}`");
        }
        StreamAction::List => {
            let answer = client.call("ListStreams", &json!({})).await?;
            for name in answer["StreamNames"].as_array().into_iter().flatten() {
                println!("{}", name.as_str().unwrap_or(""));
            }
        }
        StreamAction::Describe { name } => {
            let answer = client.call("DescribeStreamSummary", &json!({"StreamName": name})).await?;
            println!("{}", serde_json::to_string_pretty(&answer["StreamDescriptionSummary"])?);
        }
        StreamAction::Delete { name } => {
            client.call("DeleteStream", &json!({"StreamName": name})).await?;
            println!("deleted stream `{name}`");
        }
        StreamAction::Reshard { name, shards } => {
            let request = json!({"StreamName": name, "TargetShardCount": shards, "ScalingType": "UNIFORM_SCALING"});
            let answer = client.call("UpdateShardCount", &request).await?;
            println!("stream `{name}`: {} -> {shards} shards", answer["CurrentShardCount"]);
        }
    }
    Ok(())
}
