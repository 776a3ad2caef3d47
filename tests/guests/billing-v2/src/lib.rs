//! Test guest for aggregator hot swaps: `toll-billing-sum`'s folding and
//! results, with its states kept as text `<cents>/<transactions>` (state
//! version 2) instead of 12 little-endian bytes (version 1), and a migration
//! that reads version 1's states. Swapped in mid-window with state `migrate`,
//! it must give the results an unswapped run gives.

#[path = "../../../../plugins/toll-billing-sum/src/sum.rs"]
mod sum;

use sum::{TollBillingSum, Total};
use weir_sdk::{Aggregator, Config, Error, MigrateState, Output, Record, Window};

/// The plugin.
pub struct BillingV2(TollBillingSum);

impl Aggregator for BillingV2 {
    type State = Total;
    const STATE_VERSION: u32 = 2;

    fn init(config: &Config) -> Result<Self, String> {
        TollBillingSum::init(config).map(BillingV2)
    }

    fn fold(&mut self, state: &mut Total, record: &Record<'_>) -> Result<(), Error> {
        self.0.fold(state, record)
    }

    fn emit(&mut self, window: Window, key: &str, state: &Total, out: &mut Output) -> Result<(), Error> {
        self.0.emit(window, key, state, out)
    }

    fn decode(bytes: &[u8]) -> Result<Total, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("state is not text: {e}"))?;
        let (cents, transactions) = text.split_once('/').ok_or_else(|| format!("state `{text}` has no `/`"))?;
        Ok(Total {
            cents: cents.parse().map_err(|e| format!("state `{text}`: {e}"))?,
            transactions: transactions.parse().map_err(|e| format!("state `{text}`: {e}"))?,
        })
    }

    fn encode(state: &Total, out: &mut Vec<u8>) {
        out.extend_from_slice(format!("{}/{}", state.cents, state.transactions).as_bytes());
    }
}

impl MigrateState for BillingV2 {
    fn migrate(from_version: u32, bytes: &[u8]) -> Result<Total, String> {
        match from_version {
            1 => TollBillingSum::decode(bytes),
            other => Err(format!("cannot migrate states of version {other}, only of version 1")),
        }
    }
}

weir_sdk::export_aggregator!(BillingV2, migrate);
