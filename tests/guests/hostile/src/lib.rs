//! A transformer that misbehaves on purpose, for the sandbox tests. Its
//! `mode` config picks the misbehaviour; `upper` is the well-behaved baseline.

use weir_sdk::{Config, Error, Outcome, Output, Record, Transformer, log};

/// The test guest.
pub struct Hostile {
    mode: String,
    path: String,
    /// The reference table `lookup` reads.
    table: String,
    /// Calls this instance has failed with `transient-twice`.
    transient_failures: u32,
}

impl Transformer for Hostile {
    fn init(config: &Config) -> Result<Self, String> {
        let mode = config.get("mode").unwrap_or("upper").to_owned();
        if mode == "refuse-init" {
            return Err("refusing to start, as configured".to_owned());
        }
        Ok(Self {
            mode,
            path: config.get("path").unwrap_or("/etc/passwd").to_owned(),
            table: config.get("table").unwrap_or("").to_owned(),
            transient_failures: 0,
        })
    }

    fn transform(&mut self, record: &Record<'_>, out: &mut Output) -> Result<Outcome, Error> {
        match self.mode.as_str() {
            "bad-on-boom" if record.payload() == b"boom" => {
                return Err(Error::bad_record("`boom` is no record of mine"));
            }
            "transient-twice" if self.transient_failures < 2 => {
                self.transient_failures += 1;
                return Err(Error::transient(format!("a service is down ({} of 2)", self.transient_failures)));
            }
            "lookup" => {
                let row = weir_sdk::host::lookup(&self.table, record.text().unwrap_or(""))?;
                let row = row.ok_or_else(|| Error::bad_record("no such row"))?;
                out.emit(record.key(), record.event_time_ms(), row.as_bytes());
                return Ok(Outcome::Ok);
            }
            _ => {}
        }
        Ok(self.misbehave(record, out))
    }
}

impl Hostile {
    fn misbehave(&mut self, record: &Record<'_>, out: &mut Output) -> Outcome {
        match self.mode.as_str() {
            "trap" => panic!("hostile guest trapping on purpose"),
            "trap-on-boom" if record.payload() == b"boom" => panic!("boom"),
            "loop" => {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "open-file" => match std::fs::read(&self.path) {
                Ok(bytes) => {
                    out.emit(record.key(), record.event_time_ms(), &bytes);
                    Outcome::Ok
                }
                Err(e) => Outcome::Failed(format!("open {}: {e}", self.path)),
            },
            "clock" => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                out.emit(record.key(), record.event_time_ms(), now.as_millis().to_string().as_bytes());
                Outcome::Ok
            }
            "log" => {
                log::info(&format!("saw a record of {} bytes", record.payload().len()));
                out.emit(record.key(), record.event_time_ms(), record.payload());
                Outcome::Ok
            }
            _ => {
                if record.payload() == b"drop" {
                    return Outcome::Dropped;
                }
                if record.payload() == b"huge" {
                    out.emit(record.key(), record.event_time_ms(), &vec![b'x'; 2 << 20]);
                    return Outcome::Ok;
                }
                if record.payload() == b"many" {
                    for _ in 0..2000 {
                        out.emit(record.key(), record.event_time_ms(), b"M");
                    }
                    return Outcome::Ok;
                }
                if record.payload() == b"twice" {
                    out.emit(record.key(), record.event_time_ms(), b"TWICE-1");
                    out.emit(record.key(), record.event_time_ms(), b"TWICE-2");
                    return Outcome::Ok;
                }
                out.emit(record.key(), record.event_time_ms(), &record.payload().to_ascii_uppercase());
                Outcome::Ok
            }
        }
    }
}

weir_sdk::export_transformer!(Hostile);
