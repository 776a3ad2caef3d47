//! Paths of the components built from `plugins/` and `tests/guests/` by this
//! crate's build script, for the tests.

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
