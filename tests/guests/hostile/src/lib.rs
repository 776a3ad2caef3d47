//! A transformer that misbehaves on purpose, for the sandbox tests. Its
//! `mode` config picks the misbehaviour; `upper` is the well-behaved baseline.

use weir_sdk::{Config, Outcome, Output, Record, Transformer, log};

/// The test guest.
pub struct Hostile {
    mode: String,
    path: String,
}

impl Transformer for Hostile {
    fn init(config: &Config) -> Result<Self, String> {
        let mode = config.get("mode").unwrap_or("upper").to_owned();
        if mode == "refuse-init" {
            return Err("refusing to start, as configured".to_owned());
        }
        Ok(Self { mode, path: config.get("path").unwrap_or("/etc/passwd").to_owned() })
    }

    fn transform(&mut self, record: &Record<'_>, out: &mut Output) -> Outcome {
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
