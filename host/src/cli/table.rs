//! `weir table`: read and write items of a running pipeline's state tables.

use clap::Subcommand;

use crate::client::Client;

#[derive(Debug, Subcommand)]
pub(super) enum TableAction {
    /// Print an item's value.
    Get {
        /// The table.
        table: String,
        /// The item's key.
        key: String,
    },
    /// Set an item's value.
    Put {
        /// The table.
        table: String,
        /// The item's key.
        key: String,
        /// The new value.
        value: String,
    },
    /// Remove an item.
    Delete {
        /// The table.
        table: String,
        /// The item's key.
        key: String,
    },
}

pub(super) async fn table(client: Client, action: TableAction) -> anyhow::Result<()> {
    use axum::http::{HeaderMap, Method};
    let item = |table: &str, key: &str| format!("/v1/tables/{table}/items/{}", crate::sigv4::uri_encode(key, false));
    match action {
        TableAction::Get { table, key } => {
            let value =
                client.native_bytes(Method::GET, &item(&table, &key), HeaderMap::new(), Default::default()).await?;
            println!("{}", String::from_utf8_lossy(&value));
        }
        TableAction::Put { table, key, value } => {
            client.native_bytes(Method::PUT, &item(&table, &key), HeaderMap::new(), value.into()).await?;
        }
        TableAction::Delete { table, key } => {
            client.native_bytes(Method::DELETE, &item(&table, &key), HeaderMap::new(), Default::default()).await?;
        }
    }
    Ok(())
}
