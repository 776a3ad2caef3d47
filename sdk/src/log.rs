//! Structured logging into the host's log, tagged with the plugin's name.
//! Natively (in tests) lines are captured by [`crate::testing`].

pub use crate::host::Level;

/// Write one line to the host's log.
pub fn log(level: Level, message: &str) {
    crate::host::log(level, message);
}

/// Log at `info`.
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Log at `warn`.
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Log at `error`.
pub fn error(message: &str) {
    log(Level::Error, message);
}

/// Log at `debug`.
pub fn debug(message: &str) {
    log(Level::Debug, message);
}
