//! Test guest for hot swaps, version 2: outputs `v2|<batch>|<payload>`.

const VERSION: &str = "v2";

include!("../../swap-v1/src/tagger.rs");
