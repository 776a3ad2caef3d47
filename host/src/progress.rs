//! A progress bar on the terminal, and log lines that never land inside it:
//! the log's writer clears the bar's line, writes the log line, and draws
//! the bar again below it. On anything but a terminal there is no bar.

use std::io::{IsTerminal as _, Write as _};
use std::sync::Mutex;

/// The bar as last drawn, if one is showing.
static BAR: Mutex<Option<String>> = Mutex::new(None);

/// Draws the bar at `done` (0 to 1); at 1 it is finished and leaves its line.
pub fn show(done: f64) {
    if !std::io::stderr().is_terminal() {
        return;
    }
    let filled = (done.clamp(0.0, 1.0) * 30.0) as usize;
    let bar = format!("[{}{}] {:>3.0}%", "#".repeat(filled), ".".repeat(30 - filled), done.clamp(0.0, 1.0) * 100.0);
    let mut shown = BAR.lock().unwrap_or_else(|p| p.into_inner());
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r{bar}");
    if done >= 1.0 {
        let _ = writeln!(err);
        *shown = None;
    } else {
        *shown = Some(bar);
    }
}

/// The log's writer: see the module doc.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine(Vec::new())
    }
}

/// One log line, written when dropped.
#[derive(Debug)]
pub struct LogLine(Vec<u8>);

impl std::io::Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let shown = BAR.lock().unwrap_or_else(|p| p.into_inner());
        let mut err = std::io::stderr().lock();
        // A log line nobody can write has nowhere else to go: stderr is the log.
        let _ = match shown.as_deref() {
            Some(bar) => {
                write!(err, "\r\x1b[2K").and_then(|()| err.write_all(&self.0)).and_then(|()| write!(err, "{bar}"))
            }
            None => err.write_all(&self.0),
        };
    }
}
