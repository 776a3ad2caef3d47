//! A batch whose plugin calls some of its records bad: those records are set
//! aside one by one and the plugin is called again with the others, so a bad
//! record costs only itself. Every world and `weir plugin test` go through
//! this one bookkeeping; each keeps its own loop because what a call means
//! (a transaction to undo, states to restore) differs.
//!
//! ```ignore
//! let mut bad = BadRecords::new(batch.len());
//! let done = loop {
//!     match call(bad.kept()) {
//!         Ok(done) => break done,
//!         Err(e) => bad.refuse(e)?, // a bad record: call again without it
//!     }
//! };
//! for (index, reason) in bad.refused() { /* dead-letter input record `index` */ }
//! ```

use crate::error::PluginError;

/// The records of one batch still in it, and those the plugin refused.
#[derive(Debug)]
pub struct BadRecords {
    /// Indices into the input, in input order.
    kept: Vec<usize>,
    /// (index into the input, the plugin's reason), in input order.
    refused: Vec<(usize, String)>,
}

impl BadRecords {
    /// A batch of `records` records, none refused yet.
    pub fn new(records: usize) -> Self {
        BadRecords { kept: (0..records).collect(), refused: Vec::new() }
    }

    /// The records to call the plugin with next, as indices into the input.
    pub fn kept(&self) -> &[usize] {
        &self.kept
    }

    /// Whether no record was refused yet (the next call takes the whole input).
    pub fn is_whole(&self) -> bool {
        self.refused.is_empty()
    }

    /// After a call with [`BadRecords::kept`] failed with `e`: when the plugin
    /// called one of those records bad, sets it aside and returns `Ok` (call
    /// again); any other error is returned as it is. A bad record's index
    /// outside the batch it was given breaks the contract.
    pub fn refuse(&mut self, e: PluginError) -> Result<(), PluginError> {
        let PluginError::BadRecord { index, reason } = e else { return Err(e) };
        if index as usize >= self.kept.len() {
            return Err(PluginError::Contract(format!("record {index} refused in a batch of {}", self.kept.len())));
        }
        let at = self.kept.remove(index as usize);
        let slot = self.refused.partition_point(|(i, _)| *i < at);
        self.refused.insert(slot, (at, reason));
        Ok(())
    }

    /// The refused records: (index into the input, reason), in input order.
    pub fn refused(&self) -> &[(usize, String)] {
        &self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(index: u32) -> PluginError {
        PluginError::BadRecord { index, reason: format!("bad {index}") }
    }

    #[test]
    fn refused_records_leave_the_batch_and_are_listed_in_input_order() {
        let mut records = BadRecords::new(5);
        assert!(records.is_whole());
        // Record 3 of 0..5, then record 0 of what is left (input record 0).
        records.refuse(bad(3)).expect("a bad record");
        records.refuse(bad(0)).expect("a bad record");
        assert_eq!(records.kept(), &[1, 2, 4]);
        assert_eq!(records.refused(), &[(0, "bad 0".to_owned()), (3, "bad 3".to_owned())]);
        assert!(!records.is_whole());
    }

    #[test]
    fn other_errors_and_indices_outside_the_batch_are_returned() {
        let mut records = BadRecords::new(2);
        assert!(matches!(records.refuse(PluginError::Transient("later".into())), Err(PluginError::Transient(_))));
        assert!(matches!(records.refuse(bad(2)), Err(PluginError::Contract(_))));
        assert_eq!(records.kept(), &[0, 1]);
    }
}
