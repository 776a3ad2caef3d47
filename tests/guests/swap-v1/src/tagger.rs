// Shared by the swap-v1 and swap-v2 test guests, which differ only in `VERSION`.

use weir_sdk::{Config, Error, Outcome, Output, Record, Transformer};

/// Tags each record with the version that processed it and the batch it came in.
pub struct Tagger {
    /// The first payload of the batch being processed: names the batch.
    batch: String,
}

impl Transformer for Tagger {
    fn init(_config: &Config) -> Result<Self, String> {
        Ok(Self { batch: String::new() })
    }

    fn transform(&mut self, record: &Record<'_>, out: &mut Output) -> Result<Outcome, Error> {
        let payload = String::from_utf8_lossy(record.payload());
        if record.index() == 0 {
            self.batch = payload.to_string();
        }
        let tagged = format!("{VERSION}|{}|{payload}", self.batch);
        out.emit(record.key(), record.event_time_ms(), tagged.as_bytes());
        Ok(Outcome::Ok)
    }
}

weir_sdk::export_transformer!(Tagger);
