//! An aggregator for the world tests: sums decimal payloads per (window, key)
//! and emits `key=sum (n records)`. A payload that is no number is a bad record;
//! the payload `fail` fails the whole call (the plugin's fault, not the record's),
//! and the payload `boom` makes it trap (a poison record). The key `huge` gets a
//! 2 MiB result and the key `many` 2,000 results (over the default output limits).

use weir_sdk::{Aggregator, Config, Error, Output, Record, Window};

/// The test guest.
pub struct Sum;

/// Running sum and count.
#[derive(Default)]
pub struct State {
    sum: i64,
    count: u32,
}

impl Aggregator for Sum {
    type State = State;

    fn init(_config: &Config) -> Result<Self, String> {
        Ok(Sum)
    }

    fn fold(&mut self, state: &mut State, record: &Record<'_>) -> Result<(), Error> {
        let text = record.text().ok_or_else(|| Error::bad_record("payload is not text"))?;
        if text == "boom" {
            panic!("boom");
        }
        if text == "fail" {
            return Err(Error::failed("failing the call, as asked"));
        }
        state.sum += text.trim().parse::<i64>().map_err(|e| Error::bad_record(format!("`{text}`: {e}")))?;
        state.count += 1;
        Ok(())
    }

    fn emit(&mut self, window: Window, key: &str, state: &State, out: &mut Output) -> Result<(), Error> {
        if key == "huge" {
            out.emit(key, window.end_ms - 1, &vec![b'x'; 2 << 20]);
            return Ok(());
        }
        if key == "many" {
            for _ in 0..2000 {
                out.emit(key, window.end_ms - 1, b"M");
            }
            return Ok(());
        }
        let text = format!("{key}={} ({} records)", state.sum, state.count);
        out.emit(key, window.end_ms - 1, text.as_bytes());
        Ok(())
    }

    fn decode(bytes: &[u8]) -> Result<State, String> {
        let raw: [u8; 12] = bytes.try_into().map_err(|_| format!("state has {} bytes, expected 12", bytes.len()))?;
        let (sum, count) = raw.split_at(8);
        Ok(State {
            sum: i64::from_le_bytes(sum.try_into().map_err(|_| "sum")?),
            count: u32::from_le_bytes(count.try_into().map_err(|_| "count")?),
        })
    }

    fn encode(state: &State, out: &mut Vec<u8>) {
        out.extend_from_slice(&state.sum.to_le_bytes());
        out.extend_from_slice(&state.count.to_le_bytes());
    }
}

weir_sdk::export_aggregator!(Sum);
