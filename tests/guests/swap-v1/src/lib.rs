//! Test guest for hot swaps, version 1: outputs `v1|<batch>|<payload>`.

const VERSION: &str = "v1";

include!("tagger.rs");
