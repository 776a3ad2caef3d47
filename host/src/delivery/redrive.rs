//! A delivery stream's error area fed through the delivery again, once what
//! failed is fixed (the transform, the warehouse table): records its transform
//! failed on or whose objects could not be written go through the transform
//! into the lake and the warehouse; rows the table refused are loaded again;
//! rows objects not loaded within the retry duration are loaded again under
//! their own keys; records whose raw backup failed are backed up again. What
//! fails again is written under the error prefix again, with its new reason.
//! Redriven objects are named `<delivery>-redrive-<ms>-...`.
//!
//! A redrive runs beside the delivery's worker, not in it: it touches neither
//! its buffers nor its source's checkpoints. The warehouse's `key` stores a row
//! loaded twice once (a redrive interrupted and run again).

use bytes::Bytes;

use super::lake::RowsWriter;
use super::loader::{Loader, Staged};
use super::{Delivery, Interrupted, worker};
use crate::lake::object_prefix;
use crate::stream::{StoredRecord, now_ms};
use crate::warehouse::ParsedRows;

/// What a redrive takes from the error area.
#[derive(Debug, Default)]
pub struct Again {
    /// Records not delivered (the transform failed on them, or their objects
    /// could not be written): through the transform again.
    pub records: Vec<StoredRecord>,
    /// Rows the warehouse table refused: loaded again.
    pub rows: Vec<Bytes>,
    /// Rows objects not loaded within the retry duration: loaded again.
    pub staged: Vec<String>,
    /// Records whose raw backup could not be written: backed up again (they
    /// were delivered, or are listed for that on their own); done with if the
    /// manifest no longer asks for a backup.
    pub backups: Vec<Bytes>,
}

/// Why a redrive stopped.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    /// The host is shutting down; what was not done stays pending.
    #[error("a shutdown interrupted the redrive; what it did not finish stays pending")]
    Interrupted,
    /// The lake could not be read or written.
    #[error("{0}")]
    Lake(String),
}

impl From<Interrupted> for RedriveError {
    fn from(_: Interrupted) -> Self {
        RedriveError::Interrupted
    }
}

impl Delivery {
    /// Delivers `again`; returns how many error entries that wrote (what failed
    /// again). Everything it did is durable when it returns.
    pub fn redrive(&self, again: Again) -> Result<u64, RedriveError> {
        let shared = self.shared.clone();
        let spec = &shared.spec;
        let mut loader = Loader::new(shared.clone(), None);
        let now = now_ms();
        let name = |what: &str| format!("{}-redrive-{now:013}-{what}", spec.name);
        let extension = if spec.gzip { ".gz" } else { "" };
        let mut failed = 0u64;
        if !again.records.is_empty() {
            let staged = worker::stage_again(
                shared.clone(),
                self.transform.clone(),
                self.driver.clone(),
                &again.records,
                name("records"),
            )?;
            failed += loader.finish(staged)? as u64;
        }
        if !again.rows.is_empty() {
            let body = lines(&again.rows);
            let key = format!("{}{}{extension}", object_prefix(&spec.prefix, now, None), name("rows"));
            if let Err(failure) = shared.put(&key, body.clone())? {
                return Err(RedriveError::Lake(format!(
                    "the rows could not be written to `{key}`: {}",
                    failure.message
                )));
            }
            let rows = again.rows.len() as u64;
            failed += loader.finish(self.staged(name("rows"), key, body, now, rows))? as u64;
        }
        if !again.backups.is_empty()
            && let Some(backup) = &spec.backup_prefix
        {
            let key = format!("{}{}{extension}", object_prefix(backup, now, None), name("backup"));
            if let Err(failure) = shared.put(&key, lines(&again.backups))? {
                return Err(RedriveError::Lake(format!(
                    "the backup could not be written to `{key}`: {}",
                    failure.message
                )));
            }
        }
        for key in again.staged {
            let body = crate::io::block_on(shared.lake.get(&key))
                .map_err(|e| RedriveError::Lake(e.to_string()))?
                .map_err(|e| RedriveError::Lake(format!("reading `{key}`: {e}")))?;
            let body = if key.ends_with(".gz") { gunzip(&body).map_err(RedriveError::Lake)? } else { body };
            // Its rows were counted as delivered when the object was written.
            let file = key.rsplit('/').next().unwrap_or(&key);
            let name = file.strip_suffix(".gz").unwrap_or(file).to_owned();
            failed += loader.finish(self.staged(name, key, body, now, 0))? as u64;
        }
        Ok(failed)
    }

    /// A rows object `key` (written) with `body`, ready to load.
    fn staged(&self, name: String, key: String, body: Bytes, at: i64, delivered: u64) -> Staged {
        let mut rows = RowsWriter::with_capacity(0, 0);
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            rows.push(line);
        }
        let rows = rows.finish();
        let parsed = match &self.spec.warehouse {
            Some(w) => ParsedRows::parse(&rows.lines(), &w.columns),
            None => ParsedRows::default(),
        };
        Staged {
            shard: 0,
            first: 0,
            last: 0,
            at,
            name,
            rows,
            parsed,
            staged_key: Some(key),
            delivered,
            errors: Vec::new(),
        }
    }
}

/// `items`, one per line.
fn lines(items: &[Bytes]) -> Bytes {
    let mut body = Vec::with_capacity(items.iter().map(|r| r.len() + 1).sum());
    for item in items {
        body.extend_from_slice(item);
        body.push(b'\n');
    }
    Bytes::from(body)
}

/// A gzip object's bytes.
pub(crate) fn gunzip(body: &[u8]) -> Result<Bytes, String> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(body), &mut out)
        .map_err(|e| format!("not valid gzip: {e}"))?;
    Ok(Bytes::from(out))
}
