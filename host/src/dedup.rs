//! Records stored once by their identity. A stream may declare what identifies
//! its records (`deduplicate = { id-pattern = "^([^,;]+)[,;]" }`, a regex whose
//! first group is the id, or `{ id-field = "transaction_id" }`, a field of a JSON
//! payload) and a horizon. Within the horizon, a record whose id the stream
//! already holds is not stored again: its put is answered with the first one's
//! shard and sequence, as if it had just been stored, and counted as a
//! duplicate. That is what a producer retrying a put whose answer it lost, an
//! agent restarted between a put and its checkpoint, or a log shipped twice
//! needs: Kinesis itself stores every retry, and leaves its users to
//! deduplicate by hand.
//!
//! [`DedupStore`] wraps any [`StreamStore`], so every way into a stream (the
//! native API, Kinesis, the agent, a stage writing its output) goes through it.
//! The ids are those of the records the stream holds: on open they are read back
//! from the stream (so the horizon is at most its retention), and a put records
//! its ids once the store answered. A store shared by several hosts (NATS) keeps
//! the ids itself, for all of them ([`StreamStore::append_identified`]): this
//! one then only finds each record's id. Two puts of the same id at once: the second
//! is answered as throttled (retry), so that it is acknowledged only once the
//! first is stored.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::stream::{Appended, Clock, NewRecord, StoreLayer, StreamError, StreamStore};

/// What identifies a stream's records.
#[derive(Debug, Clone)]
pub enum Identity {
    /// The first capture group of this regex over the payload.
    Pattern(regex::bytes::Regex),
    /// This top-level field of a JSON object payload (a string, or a number's text).
    Field(String),
}

impl Identity {
    /// The ids of payloads, in order; `None` for one that has none (it is then
    /// stored as it is). One allocation per id; the regex's capture slots are
    /// reused from one payload to the next.
    fn of_each<'a>(&self, payloads: impl Iterator<Item = &'a [u8]>) -> Vec<Option<Arc<str>>> {
        match self {
            Identity::Pattern(re) => {
                let mut slots = re.capture_locations();
                payloads
                    .map(|payload| {
                        re.captures_read(&mut slots, payload)?;
                        let (start, end) = slots.get(1)?;
                        Some(Arc::from(String::from_utf8_lossy(&payload[start..end]).as_ref()))
                    })
                    .collect()
            }
            Identity::Field(field) => {
                payloads.map(|payload| json_field(payload, field).ok().map(|id| Arc::from(id.as_str()))).collect()
            }
        }
    }
}

/// A stream's `deduplicate` setting.
#[derive(Debug, Clone)]
pub struct DedupSpec {
    /// What identifies its records.
    pub identity: Identity,
    /// How long an id is remembered (at most the stream's retention).
    pub horizon: Duration,
}

/// A stream store whose streams with a [`DedupSpec`] store each id once; see the module doc.
pub struct DedupStore {
    inner: Arc<dyn StreamStore>,
    /// The inner store keeps the ids itself, for every host sharing it.
    inner_keeps_ids: bool,
    streams: HashMap<String, StreamIds>,
    clock: Clock,
    /// Numbers the puts, to tell a put's own records from another's.
    puts: AtomicU64,
}

/// One deduplicated stream's ids.
struct StreamIds {
    spec: DedupSpec,
    ids: Mutex<Ids>,
    duplicates: AtomicU64,
}

#[derive(Default)]
struct Ids {
    seen: HashMap<Arc<str>, Seen>,
    /// Ids by the time they were stored, oldest first: forgotten past the horizon.
    order: VecDeque<(i64, Arc<str>)>,
}

enum Seen {
    Stored(Appended),
    /// Put `put` is storing it, as the `index`th record it hands to the store.
    Storing {
        put: u64,
        index: usize,
    },
}

/// How one record of a put is answered.
enum Answer {
    /// Stored by this put: the `n`th record handed to the store.
    Stored(usize),
    /// The same id as the `n`th record handed to the store, earlier in this put.
    Repeat(usize),
    /// Already in the stream.
    Duplicate(Appended),
    /// Another put is storing the same id right now.
    Busy,
}

impl Ids {
    fn forget_before(&mut self, oldest_ms: i64) {
        while let Some((at, _)) = self.order.front() {
            if *at >= oldest_ms {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.seen.remove(&id);
            }
        }
    }
}

impl DedupStore {
    /// Wraps `inner`; the streams in `specs` get their ids back from the records
    /// they hold within their horizon.
    pub fn open(
        inner: Arc<dyn StreamStore>,
        specs: Vec<(String, DedupSpec)>,
        clock: Clock,
    ) -> Result<DedupStore, StreamError> {
        let now = clock();
        let inner_keeps_ids = inner.stores_once_by_id();
        let mut streams = HashMap::new();
        for (stream, spec) in specs {
            let oldest = now.saturating_sub(spec.horizon.as_millis() as i64);
            let mut ids = Ids::default();
            if inner_keeps_ids {
                // The store keeps the ids, for every host: no index here.
                streams.insert(stream, StreamIds { spec, ids: Mutex::new(ids), duplicates: AtomicU64::new(0) });
                continue;
            }
            for shard in 0..inner.lineage(&stream)?.len() as u32 {
                let mut from = 0;
                loop {
                    let records = match inner.read(&stream, shard, from, 10_000) {
                        Err(StreamError::Trimmed { oldest, .. }) => {
                            from = oldest;
                            continue;
                        }
                        other => other?,
                    };
                    let Some(last) = records.last() else { break };
                    from = last.sequence + 1;
                    let held: Vec<_> = records.iter().filter(|r| r.arrival_ms >= oldest).collect();
                    let held_ids = spec.identity.of_each(held.iter().map(|r| r.data.as_ref()));
                    for (r, id) in held.into_iter().zip(held_ids) {
                        if let Some(id) = id {
                            let stored = Appended { shard: r.shard, sequence: r.sequence };
                            ids.seen.insert(id.clone(), Seen::Stored(stored));
                            ids.order.push_back((r.arrival_ms, id));
                        }
                    }
                }
            }
            ids.order.make_contiguous().sort_by_key(|(at, _)| *at);
            if !ids.seen.is_empty() {
                tracing::info!(stream, ids = ids.seen.len(), "record ids read back for deduplication");
            }
            streams.insert(stream, StreamIds { spec, ids: Mutex::new(ids), duplicates: AtomicU64::new(0) });
        }
        Ok(DedupStore { inner, inner_keeps_ids, streams, clock, puts: AtomicU64::new(0) })
    }

    /// Records not stored again because the stream held their id, by stream.
    pub fn duplicates(&self) -> BTreeMap<String, u64> {
        self.streams.iter().map(|(name, s)| (name.clone(), s.duplicates.load(Ordering::Relaxed))).collect()
    }
}

impl StoreLayer for DedupStore {
    fn inner(&self) -> &dyn StreamStore {
        self.inner.as_ref()
    }
    fn append(&self, stream: &str, records: Vec<NewRecord>) -> Result<Vec<Result<Appended, StreamError>>, StreamError> {
        let Some(ids) = self.streams.get(stream) else { return self.inner.append(stream, records) };
        if self.inner_keeps_ids {
            let put_ids = ids.spec.identity.of_each(records.iter().map(|r| r.data.as_ref()));
            let stored = self.inner.append_identified(stream, records, put_ids, ids.spec.horizon)?;
            let duplicates = stored.iter().filter(|r| matches!(r, Ok((_, true)))).count();
            ids.duplicates.fetch_add(duplicates as u64, Ordering::Relaxed);
            return Ok(stored.into_iter().map(|r| r.map(|(appended, _)| appended)).collect());
        }
        let now = (self.clock)();
        let mut answers = Vec::with_capacity(records.len());
        let mut fresh = Vec::with_capacity(records.len());
        let mut fresh_ids: Vec<Option<Arc<str>>> = Vec::with_capacity(records.len());
        // Read before taking the lock: puts into the stream find their ids in parallel.
        let put_ids = ids.spec.identity.of_each(records.iter().map(|r| r.data.as_ref()));
        {
            let mut state = ids.ids.lock().unwrap_or_else(|p| p.into_inner());
            state.forget_before(now.saturating_sub(ids.spec.horizon.as_millis() as i64));
            let put = self.puts.fetch_add(1, Ordering::Relaxed);
            for (record, id) in records.into_iter().zip(put_ids) {
                let Some(id) = id else {
                    answers.push(Answer::Stored(fresh.len()));
                    fresh_ids.push(None);
                    fresh.push(record);
                    continue;
                };
                match state.seen.get(&id) {
                    Some(Seen::Stored(first)) => answers.push(Answer::Duplicate(first.clone())),
                    // The same id twice in one put: the second is the first's duplicate.
                    Some(&Seen::Storing { put: by, index }) if by == put => answers.push(Answer::Repeat(index)),
                    Some(Seen::Storing { .. }) => answers.push(Answer::Busy),
                    None => {
                        state.seen.insert(id.clone(), Seen::Storing { put, index: fresh.len() });
                        answers.push(Answer::Stored(fresh.len()));
                        fresh_ids.push(Some(id));
                        fresh.push(record);
                    }
                }
            }
        }
        let stored = if fresh.is_empty() { Ok(Vec::new()) } else { self.inner.append(stream, fresh) };
        {
            // Whatever the store answered, the ids being stored are settled: kept if
            // stored, forgotten if not (a retry stores them then).
            let mut state = ids.ids.lock().unwrap_or_else(|p| p.into_inner());
            for (n, id) in fresh_ids.iter().enumerate() {
                let Some(id) = id else { continue };
                match stored.as_ref().ok().and_then(|results| results.get(n)) {
                    Some(Ok(appended)) => {
                        if let Some(seen) = state.seen.get_mut(id) {
                            *seen = Seen::Stored(appended.clone());
                        }
                        state.order.push_back((now, id.clone()));
                    }
                    _ => {
                        state.seen.remove(id);
                    }
                }
            }
        }
        let stored = stored?;
        let mut duplicates = 0u64;
        let answer_of = |n: usize| {
            stored.get(n).cloned().unwrap_or_else(|| {
                Err(StreamError::Failed {
                    stream: stream.to_owned(),
                    reason: "the store answered for fewer records than it was given".into(),
                })
            })
        };
        let results = answers
            .into_iter()
            .map(|answer| match answer {
                Answer::Stored(n) => answer_of(n),
                Answer::Repeat(n) => {
                    duplicates += 1;
                    answer_of(n)
                }
                Answer::Duplicate(first) => {
                    duplicates += 1;
                    Ok(first)
                }
                Answer::Busy => Err(StreamError::Throttled {
                    stream: stream.to_owned(),
                    limit: "a record with the same id is being stored by another put".into(),
                }),
            })
            .collect();
        ids.duplicates.fetch_add(duplicates, Ordering::Relaxed);
        Ok(results)
    }
}

/// The value of `field` in a JSON object payload, as text: strings as they are,
/// numbers and booleans as their text. Reads past the other fields without
/// building them.
pub fn json_field(payload: &[u8], field: &str) -> Result<String, String> {
    use std::borrow::Cow;

    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Field<'f>(&'f str);
    impl<'de> Visitor<'de> for Field<'_> {
        type Value = Option<serde_json::Value>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                if key == self.0 && found.is_none() {
                    found = Some(map.next_value::<serde_json::Value>()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }
    impl<'de> DeserializeSeed<'de> for Field<'_> {
        type Value = Option<serde_json::Value>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(payload);
    let value =
        Field(field).deserialize(&mut de).map_err(|e| format!("`{field}`: the payload is not a JSON object: {e}"))?;
    match value {
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => Ok(v.to_string()),
        Some(_) => Err(format!("`{field}`: the field is not a string, number or boolean")),
        None => Err(format!("`{field}`: the payload has no such field")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicI64;

    use bytes::Bytes;

    use super::*;
    use crate::stream::{DiskStreamSpec, DiskStreams, FileSyncer, FsyncPolicy};

    fn record(line: &str) -> NewRecord {
        NewRecord {
            source: None,
            key: line.to_owned(),
            event_time_ms: None,
            data: Bytes::from(line.to_owned()),
            explicit_hash_key: None,
            attributes: Vec::new(),
        }
    }

    /// A two-shard stream `lines` deduplicated by a line's first CSV field, on `clock`.
    fn store(dir: &std::path::Path, clock: Clock) -> DedupStore {
        let disk = DiskStreams::open_with_clock(
            dir,
            &[DiskStreamSpec { shards: 2, ..DiskStreamSpec::new("lines", 1000, FsyncPolicy::Never) }],
            Arc::new(FileSyncer),
            clock.clone(),
        )
        .expect("open");
        let spec = DedupSpec {
            identity: Identity::Pattern(regex::bytes::Regex::new("^([^,]+),").expect("regex")),
            horizon: Duration::from_secs(3600),
        };
        DedupStore::open(Arc::new(disk), vec![("lines".into(), spec)], clock).expect("dedup")
    }

    fn held(store: &dyn StreamStore) -> usize {
        (0..2).map(|shard| store.read("lines", shard, 0, 100).expect("read").len()).sum()
    }

    #[test]
    fn a_record_whose_id_the_stream_holds_is_answered_as_stored_and_not_stored_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = Arc::new(AtomicI64::new(1_000_000));
        let at = now.clone();
        let clock: Clock = Arc::new(move || at.load(Ordering::SeqCst));
        let store = store(dir.path(), clock.clone());
        let first =
            StreamStore::append(&store, "lines", vec![record("T1,a"), record("T2,b"), record("no id")]).expect("put");
        // A retried put, a repeat within one put, and a record without an id.
        let again =
            StreamStore::append(&store, "lines", vec![record("T1,a"), record("T3,c"), record("T3,c"), record("no id")])
                .expect("put");
        assert_eq!(again[0], first[0], "the duplicate gets the first one's shard and sequence");
        assert_eq!(again[2], again[1], "a repeat within the put is the first's duplicate");
        assert_eq!(held(&store), 5, "T1, T2, T3 once each, and both records without an id");
        assert_eq!(store.duplicates()["lines"], 2);

        // Reopened on the same data, the stream still knows its ids.
        drop(store);
        let store = self::store(dir.path(), clock.clone());
        StreamStore::append(&store, "lines", vec![record("T2,b")]).expect("put");
        assert_eq!(held(&store), 5);
        // Past the horizon an id is forgotten: the record is stored again.
        now.fetch_add(3_600_001, Ordering::SeqCst);
        StreamStore::append(&store, "lines", vec![record("T2,b")]).expect("put");
        assert_eq!(held(&store), 6);
    }

    #[test]
    fn a_json_field_is_read_as_text() {
        let row = br#"{"transaction_id":"T1","station_id":17,"nested":{"a":1},"ok":true}"#;
        assert_eq!(json_field(row, "transaction_id").as_deref(), Ok("T1"));
        assert_eq!(json_field(row, "station_id").as_deref(), Ok("17"));
        assert_eq!(json_field(row, "ok").as_deref(), Ok("true"));
        assert!(json_field(row, "nested").is_err_and(|e| e.contains("not a string, number or boolean")));
        assert!(json_field(row, "customer_id").is_err_and(|e| e.contains("no such field")));
        assert!(json_field(b"17,3", "station_id").is_err_and(|e| e.contains("not a JSON object")));
        let ids = Identity::Field("transaction_id".into()).of_each([&row[..], b"{}"].into_iter());
        assert_eq!(ids, vec![Some(Arc::from("T1")), None]);
        let pattern = Identity::Pattern(regex::bytes::Regex::new("^([^,]+),").expect("regex"));
        assert_eq!(pattern.of_each([&b"T2,x"[..], b"no comma"].into_iter()), vec![Some(Arc::from("T2")), None]);
    }
}
