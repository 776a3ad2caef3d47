//! weir's streams on NATS JetStream: the [`StreamStore`] of the embedded disk
//! store, kept by a replicated NATS cluster instead of one machine's disk, so
//! that several weir hosts can share a pipeline's streams.
//!
//! What lives where (`<p>` is the configured prefix, `<s>` a name made a NATS
//! token by [`token`]):
//! - **A shard is one JetStream stream**, `<p>-<s>-<index>`, taking the subject
//!   `<p>.<s>.<index>` and replicated on `replicas` servers. Its stream sequence
//!   is the shard's sequence plus one, so positions are dense and ordered per
//!   shard by the cluster itself, as Kinesis shows them. (One JetStream stream
//!   for all shards with a subject each would number records across shards.)
//!   Records are kept by age (`max_age`, the stream's retention).
//! - **A stream's description** (retention, creation time, each shard's hash
//!   keys and lineage) is one value of the key-value bucket `<p>-streams`,
//!   created once and changed only by compare-and-set on its revision.
//! - **Consumer positions** are values of the bucket `<p>-positions`, under
//!   `<s>.<index>.<consumer>`; they are leases too (`lease.rs`).
//! - **What the hosts change together** (a pipeline's state tables and
//!   channels) are values of the same bucket under `_x.` (`shared.rs`), so that
//!   one atomic batch can change them with a stage's lease.
//!
//! A record is published with a message id of its own (`Nats-Msg-Id`); a
//! publish whose acknowledgement is lost (a leader change, a server killed) is
//! sent again with the same id, and JetStream stores it once within its
//! duplicate window. A record is acknowledged to the caller only once
//! JetStream acknowledged it, which a replicated stream does once a majority of
//! its servers stored it. A record retried that way may land after records of
//! the same put that did not need a retry; as in Kinesis's `PutRecords`, order
//! within one put is kept only when nothing fails.
//!
//! The record's key, event time, source and attributes travel in front of its
//! data ([`envelope`]); its arrival time is the time JetStream stored it.
//! JetStream republishes the headers of every stored record on
//! `<p>-stored.<s>.<index>`; that is what wakes readers waiting for records, on
//! every host.
//!
//! The calls are blocking, as the disk store's are: each runs on the tokio
//! runtime the store was given and waits for it (from a runtime's worker
//! thread through `block_in_place`, so that runtime must be multi-threaded).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures_util::StreamExt as _;
use weir_stream::names::{self, NameKind};
use weir_stream::reshard::{self, ShardRange};
use weir_stream::{
    Appended, Claim, Identified, Lineage, NewRecord, Reshard, ShardInfo, Sharing, StoredRecord, StreamError,
    StreamInfo, StreamSettings, StreamStore,
};

pub mod dev;
mod envelope;
mod lease;
mod shared;

pub use shared::{SharedError, SharedValue, SharedWrite};

/// How a store reaches its cluster.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// Server URLs (`nats://127.0.0.1:4222`); the client finds the rest of the cluster.
    pub servers: Vec<String>,
    /// On how many servers each shard and bucket is kept (3 for a cluster that
    /// survives losing one server; at most the cluster's size).
    pub replicas: usize,
    /// The first part of every name this store makes in the cluster, so that
    /// several deployments can share one.
    pub prefix: String,
    /// How long one call may wait for the cluster (a leader election takes a
    /// few seconds) before it fails as [`StreamError::Unavailable`].
    pub timeout: Duration,
    /// Who the store is to the servers.
    pub credentials: Credentials,
    /// Who this host is to the others sharing the cluster: the owner named in
    /// its leases. It must stay the same across restarts (a restarted host
    /// takes its own leases back at once) and differ between hosts.
    pub host: String,
    /// How long a lease whose holder stopped renewing it stays with that
    /// holder before another host takes it.
    pub lease_timeout: Duration,
}

/// How the store authenticates to the servers.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// As the servers let anyone in.
    #[default]
    None,
    /// A token.
    Token(String),
    /// A user and password.
    UserPassword {
        /// The user.
        user: String,
        /// Its password.
        password: String,
    },
}

impl std::fmt::Debug for Credentials {
    /// Never the secrets: settings end up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::Token(_) => f.write_str("Token(..)"),
            Credentials::UserPassword { user, .. } => write!(f, "UserPassword {{ user: {user:?}, .. }}"),
        }
    }
}

impl NatsSettings {
    /// The settings for `servers`, with three replicas and the prefix `weir`.
    pub fn new(servers: Vec<String>) -> NatsSettings {
        NatsSettings {
            servers,
            replicas: 3,
            prefix: "weir".to_owned(),
            timeout: Duration::from_secs(10),
            credentials: Credentials::None,
            host: "weir".to_owned(),
            lease_timeout: Duration::from_secs(10),
        }
    }
}

/// The cluster cannot be reached or set up.
#[derive(Debug, thiserror::Error)]
#[error("NATS at {servers}: {reason}")]
pub struct ConnectError {
    servers: String,
    reason: String,
}

/// Streams kept in a NATS JetStream cluster.
pub struct NatsStreams {
    runtime: tokio::runtime::Handle,
    client: async_nats::Client,
    js: jetstream::Context,
    descriptions: kv::Store,
    positions: kv::Store,
    settings: NatsSettings,
    /// Descriptions read before, by stream: routing uses them until a publish
    /// says they are out of date.
    described: Mutex<HashMap<String, Arc<Described>>>,
    /// Stored-record counters by stream, moved by JetStream's republished headers.
    changes: Mutex<HashMap<String, Arc<Changes>>>,
    /// Makes each record's message id unique: this store's own id, then a counter.
    store_id: String,
    published: AtomicU64,
    leases: Arc<lease::Leases>,
    /// Renews the leases of stages busy with a long batch.
    renewer: tokio::task::JoinHandle<()>,
    /// How long each shard stream remembers message ids, as this store made sure.
    windows: Mutex<HashMap<String, Duration>>,
}

/// A stream's description as the cluster keeps it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Description {
    retention_ms: u64,
    created_ms: i64,
    shards: Vec<ShardDescription>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct ShardDescription {
    /// First and last hash key owned, in decimal (JSON numbers stop at 2^53).
    hash_start: String,
    hash_end: String,
    parents: Vec<u32>,
    closed_at: Option<u64>,
    opened_ms: i64,
    closed_ms: Option<i64>,
}

/// A description and the revision it was read at.
struct Described {
    description: Description,
    /// Each shard's first and last hash key.
    ranges: Vec<(u128, u128)>,
    /// Hash key ranges of the open shards, for routing.
    open: Vec<(u128, u128, u32)>,
}

impl Described {
    /// The open shard owning `hash`.
    fn owner(&self, hash: u128) -> Option<u32> {
        self.open.iter().find(|(start, end, _)| (*start..=*end).contains(&hash)).map(|(_, _, shard)| *shard)
    }
}

/// A counter of stored records and the waiters for it to move.
#[derive(Default)]
struct Changes {
    count: Mutex<u64>,
    moved: Condvar,
    /// The task moving the counter, stopped with the store.
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Changes {
    fn bump(&self) {
        if let Ok(mut count) = self.count.lock() {
            *count += 1;
        }
        self.moved.notify_all();
    }
}

/// Any text as one NATS token and header value: `k`, then its bytes in hex.
pub fn hex_token(text: &str) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(1 + 2 * text.len());
    out.push('k');
    for b in text.bytes() {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// The message id of a record whose stream declares its id: the same on every
/// host and every retry.
fn declared_message_id(id: &str) -> String {
    format!("id-{}", hex_token(id))
}

/// A lock of this crate's maps of leases and windows, whole even after a panic
/// elsewhere: every change under them is one insert or remove.
pub(crate) fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Milliseconds since the epoch of an RFC 3339 time, as the servers stamp records.
fn parse_time_ms(text: &str) -> Option<i64> {
    let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Longest a waiter sleeps between two looks at a shard's end: a notice of
/// a stored record can come before the stored record is readable.
const WAIT_SLICE: Duration = Duration::from_millis(50);

/// Longest a store waits at its start for a cluster that has just started
/// (its servers coming online, its buckets electing their leaders).
const STARTING_CLUSTER: Duration = Duration::from_secs(60);

/// Most records of one atomic batch (the servers take up to 1000).
const ATOMIC_BATCH: usize = 500;

/// Within this long, a message id published again is stored once.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Whether `url` is a server address the client can connect to
/// (`nats://host:port` or `tls://host:port`).
pub fn is_server_address(url: &str) -> bool {
    let scheme = ["nats://", "tls://"].iter().any(|s| url.starts_with(s));
    scheme && url.parse::<async_nats::ServerAddr>().is_ok()
}

/// A name as one NATS token: `_` becomes `__` and `.` becomes `_d` (stream
/// and consumer names have only `a-z A-Z 0-9 _ . -`), so the mapping is
/// one to one and reversible.
pub fn token(name: &str) -> String {
    name.replace('_', "__").replace('.', "_d")
}

/// The name a [`token`] was made from.
fn untoken(token: &str) -> String {
    let mut out = String::with_capacity(token.len());
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        match (c, c == '_') {
            (_, true) => match chars.next() {
                Some('d') => out.push('.'),
                Some(other) => out.push(other),
                None => out.push('_'),
            },
            (c, false) => out.push(c),
        }
    }
    out
}

fn unavailable(stream: &str, e: impl std::fmt::Display) -> StreamError {
    StreamError::Unavailable { stream: stream.to_owned(), reason: e.to_string() }
}

/// Waits for `f` on `runtime`, from any thread: in async code (where tokio
/// refuses to block a thread) through `block_in_place` on a multi-threaded
/// runtime, else on a thread of its own.
fn block_on<T: Send>(runtime: &tokio::runtime::Handle, f: impl Future<Output = T> + Send) -> T {
    use tokio::runtime::RuntimeFlavor;
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Err(_) => runtime.block_on(f),
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(|| runtime.block_on(f)),
        Ok(_) => std::thread::scope(|scope| match scope.spawn(|| runtime.block_on(f)).join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
    }
}

/// A consumer's position as the positions bucket keeps it (decimal text).
/// A consumer's position as the cluster keeps it; `None`: the shard's first record.
fn read_position(stream: &str, consumer: &str, value: &[u8]) -> Result<Option<u64>, StreamError> {
    lease::Lease::parse(value).map(|l| l.position).ok_or_else(|| {
        unavailable(stream, format!("the position of consumer `{consumer}` in the cluster is not readable: {value:?}"))
    })
}

/// Asks `attempt` again every 200 ms while it fails, for as long as a cluster
/// takes to start ([`STARTING_CLUSTER`]); then fails with `what` and its last error.
async fn while_starting<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> Result<T, String> {
    let deadline = Instant::now() + STARTING_CLUSTER;
    loop {
        match attempt().await {
            Ok(done) => return Ok(done),
            Err(e) if Instant::now() >= deadline => return Err(format!("{what}: {e}")),
            Err(e) => {
                tracing::debug!(what, error = %e, "the cluster cannot do it yet; asked again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl NatsStreams {
    /// Connects to the cluster and makes its two buckets if they are not there.
    /// `runtime` runs the client; it must be multi-threaded.
    pub fn connect(settings: NatsSettings, runtime: tokio::runtime::Handle) -> Result<NatsStreams, ConnectError> {
        let failed = |reason: String| ConnectError { servers: settings.servers.join(","), reason };
        let options = match &settings.credentials {
            Credentials::None => async_nats::ConnectOptions::new(),
            Credentials::Token(token) => async_nats::ConnectOptions::with_token(token.clone()),
            Credentials::UserPassword { user, password } => {
                async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
        };
        let (client, js, descriptions, positions) = block_on(&runtime, async {
            let client = tokio::time::timeout(
                settings.timeout,
                options.name("weir").retry_on_initial_connect().connect(settings.servers.clone()),
            )
            .await
            .map_err(|_| failed(format!("no server answered within {:?}", settings.timeout)))?
            .map_err(|e| failed(format!("cannot connect: {e}")))?;
            let js = jetstream::new(client.clone());
            let bucket = |name: String| kv::Config {
                bucket: name,
                history: 1,
                num_replicas: settings.replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            };
            // A cluster that just started may not have all its servers online or its
            // leaders elected yet, and hosts starting together ask at once: each step
            // is asked again while it fails, for as long as a cluster takes to start.
            let mut buckets = Vec::new();
            for name in ["streams", "positions"] {
                let name = format!("{}-{name}", settings.prefix);
                let (js, config) = (&js, &bucket);
                let store = while_starting(&format!("cannot make the bucket `{name}`"), || async {
                    match js.get_key_value(&name).await {
                        Ok(store) => Ok(store),
                        Err(_) => js.create_key_value(config(name.clone())).await,
                    }
                })
                .await
                .map_err(failed)?;
                buckets.push(store);
            }
            let positions = buckets.pop().ok_or_else(|| failed("no positions bucket".to_owned()))?;
            let descriptions = buckets.pop().ok_or_else(|| failed("no streams bucket".to_owned()))?;
            // A consumer's state is saved in one atomic batch with its lease.
            let what = format!("cannot allow atomic batches in `{}`", positions.name);
            while_starting(&what, || async {
                let mut config = js.get_stream(&positions.stream_name).await?.info().await?.config.clone();
                if !config.allow_atomic_publish {
                    config.allow_atomic_publish = true;
                    js.update_stream(config).await?;
                }
                Ok::<_, async_nats::Error>(())
            })
            .await
            .map_err(failed)?;
            // A bucket just made answers once its servers have elected its leader.
            for bucket in [&descriptions, &positions] {
                while_starting("its buckets do not answer", || bucket.get("weir-ready")).await.map_err(failed)?;
            }
            Ok::<_, ConnectError>((client, js, descriptions, positions))
        })?;
        let store_id = format!("{:016x}{:08x}", now_ms() as u64, std::process::id());
        let leases = Arc::new(lease::Leases::new(settings.host.clone(), settings.lease_timeout));
        let renewer = runtime.spawn(lease::renew_in_background(Arc::downgrade(&leases), positions.clone()));
        Ok(NatsStreams {
            leases,
            renewer,
            runtime,
            client,
            js,
            descriptions,
            positions,
            settings,
            described: Mutex::new(HashMap::new()),
            changes: Mutex::new(HashMap::new()),
            store_id,
            published: AtomicU64::new(0),
            windows: Mutex::new(HashMap::new()),
        })
    }

    /// Creates each of `streams` the cluster does not hold yet (a manifest's
    /// streams, on every host that starts with it); one that exists is kept
    /// as it is, as on the disk store, where resharding through the API wins.
    pub fn ensure(&self, streams: &[StreamSettings]) -> Result<(), StreamError> {
        for stream in streams {
            // Hosts started together make the same streams at once, on a cluster that
            // may be starting too: a creation that timed out is tried again (it is
            // idempotent) for as long as a cluster takes to start.
            let deadline = Instant::now() + STARTING_CLUSTER;
            loop {
                match self.create(stream.clone()) {
                    Ok(()) | Err(StreamError::AlreadyExists(_)) => break,
                    Err(e @ StreamError::Unavailable { .. }) if Instant::now() < deadline => {
                        tracing::debug!(error = %e, "a stream could not be made yet; tried again");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Runs `f` on the store's runtime and waits for it, at most the timeout.
    fn wait<T: Send>(
        &self,
        stream: &str,
        f: impl Future<Output = Result<T, StreamError>> + Send,
    ) -> Result<T, StreamError> {
        let timeout = self.settings.timeout;
        let bounded = async move {
            match tokio::time::timeout(timeout, f).await {
                Ok(result) => result,
                Err(_) => Err(unavailable(stream, format!("the cluster did not answer within {timeout:?}"))),
            }
        };
        block_on(&self.runtime, bounded)
    }

    /// Publishes `records` ([`NatsStreams::publish`]) and wakes the readers.
    fn append_with(
        &self,
        stream: &str,
        records: &[NewRecord],
        declared: Option<&[Option<Arc<str>>]>,
    ) -> Result<Identified, StreamError> {
        self.wait(stream, self.publish(stream, records, declared)).inspect(|results| {
            if results.iter().any(|r| matches!(r, Ok((_, false))))
                && let Ok(changes) = self.changes_of(stream)
            {
                changes.bump();
            }
        })
    }

    /// Makes every shard of `stream` remember message ids for `window` at least
    /// (at most its retention), so that a record put again within it is stored once.
    async fn widen_duplicate_window(&self, stream: &str, window: Duration) -> Result<(), StreamError> {
        let described = self.described(stream).await?;
        for shard in 0..described.description.shards.len() as u32 {
            let name = self.shard_stream(stream, shard);
            let known = locked(&self.windows).get(&name).copied();
            if known.is_some_and(|known| known >= window) {
                continue;
            }
            let mut info = self.js.get_stream(&name).await.map_err(|e| unavailable(stream, e))?;
            let mut config = info.info().await.map_err(|e| unavailable(stream, e))?.config.clone();
            let wanted = window.min(config.max_age);
            if config.duplicate_window < wanted {
                config.duplicate_window = wanted;
                self.js.update_stream(config).await.map_err(|e| unavailable(stream, e))?;
                tracing::info!(stream, shard, window = ?wanted, "the shard remembers record ids this long");
            }
            locked(&self.windows).insert(name, wanted);
        }
        Ok(())
    }

    /// An id no other message or batch of any store has: this store's own id, then a counter.
    fn unique_id(&self) -> String {
        format!("{}-{}", self.store_id, self.published.fetch_add(1, Ordering::Relaxed))
    }

    /// Where an atomic batch `id` of the positions bucket goes.
    fn batch_to<'a>(&'a self, id: &'a str) -> shared::BatchTo<'a> {
        shared::BatchTo { client: &self.client, bucket: &self.positions, id }
    }

    /// Runs `f` on the store's runtime and waits for it, at most the timeout.
    fn wait_shared<T: Send>(&self, f: impl Future<Output = Result<T, SharedError>> + Send) -> Result<T, SharedError> {
        let timeout = self.settings.timeout;
        let bounded = async move {
            match tokio::time::timeout(timeout, f).await {
                Ok(result) => result,
                Err(_) => Err(SharedError::Unavailable(format!("the cluster did not answer within {timeout:?}"))),
            }
        };
        block_on(&self.runtime, bounded)
    }

    /// Reads a shared value ([`shared`]) as the cluster has it now.
    pub fn shared_read(&self, key: &str) -> Result<SharedValue, SharedError> {
        shared::check_key(key)?;
        let key = format!("{}{key}", shared::NAMESPACE);
        self.wait_shared(async { shared::read(&self.positions, &key).await.map_err(SharedError::Unavailable) })
    }

    /// Every shared value whose key starts with `prefix` (ending in `.`), with
    /// its key and revision, in the order
    /// they were last written.
    pub fn shared_scan(&self, prefix: &str) -> Result<Vec<(String, Bytes, u64)>, SharedError> {
        shared::check_key(prefix.trim_end_matches('.'))?;
        let full = format!("{}{prefix}", shared::NAMESPACE);
        let found = self.wait_shared(async {
            shared::scan(&self.client, &self.positions, &full).await.map_err(SharedError::Unavailable)
        })?;
        Ok(found
            .into_iter()
            .filter_map(|(key, value, revision)| {
                Some((key.strip_prefix(shared::NAMESPACE)?.to_owned(), value, revision))
            })
            .collect())
    }

    /// Commits `writes` all at once or not at all ([`shared`]). With `fence`
    /// (a stream and a consumer read by one host at a time), only while this
    /// host holds that consumer's lease.
    pub fn shared_commit(&self, writes: Vec<SharedWrite>, fence: Option<(&str, &str)>) -> Result<(), SharedError> {
        let batch = self.unique_id();
        let to = self.batch_to(&batch);
        self.wait_shared(async { self.leases.commit(&to, writes, fence).await })
    }

    fn shard_stream(&self, stream: &str, shard: u32) -> String {
        format!("{}-{}-{shard}", self.settings.prefix, token(stream))
    }

    fn shard_subject(&self, stream: &str, shard: u32) -> String {
        format!("{}.{}.{shard}", self.settings.prefix, token(stream))
    }

    /// Who this store is to the other hosts (the owner its leases name).
    pub fn host(&self) -> &str {
        self.leases.host()
    }

    /// Reads a stream's description from the cluster (and keeps it for routing).
    async fn describe(&self, stream: &str) -> Result<(Arc<Described>, u64), StreamError> {
        let key = token(stream);
        let entry = self.patiently(stream, || self.descriptions.entry(key.as_str())).await?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            self.forget(stream);
            return Err(StreamError::UnknownStream(stream.to_owned()));
        };
        let description: Description = serde_json::from_slice(&entry.value)
            .map_err(|e| unavailable(stream, format!("its description in the cluster cannot be read: {e}")))?;
        let (mut ranges, mut open) = (Vec::new(), Vec::new());
        for (index, shard) in description.shards.iter().enumerate() {
            let range = shard.hash_start.parse::<u128>().ok().zip(shard.hash_end.parse::<u128>().ok());
            let Some((start, end)) = range else {
                return Err(unavailable(stream, format!("shard {index} has unreadable hash keys in the cluster")));
            };
            ranges.push((start, end));
            if shard.closed_at.is_none() {
                open.push((start, end, index as u32));
            }
        }
        let described = Arc::new(Described { description, ranges, open });
        if let Ok(mut all) = self.described.lock() {
            all.insert(stream.to_owned(), described.clone());
        }
        Ok((described, entry.revision))
    }

    /// The description read before, or read now.
    async fn described(&self, stream: &str) -> Result<Arc<Described>, StreamError> {
        let known = self.described.lock().ok().and_then(|all| all.get(stream).cloned());
        match known {
            Some(d) => Ok(d),
            None => Ok(self.describe(stream).await?.0),
        }
    }

    fn forget(&self, stream: &str) {
        if let Ok(mut all) = self.described.lock() {
            all.remove(stream);
        }
    }

    async fn shard_state(&self, stream: &str, shard: u32) -> Result<stream::State, StreamError> {
        let described = self.described(stream).await?;
        if shard as usize >= described.description.shards.len() {
            return Err(StreamError::UnknownShard { stream: stream.to_owned(), shard: weir_stream::shard_id(shard) });
        }
        let name = self.shard_stream(stream, shard);
        let info = self.patiently(stream, || self.js.get_stream(name.as_str())).await?;
        Ok(info.cached_info().state.clone())
    }

    /// `read()`, asked again while it fails, for most of the timeout: a read
    /// fails while a stream's servers elect a leader (a server lost, a
    /// cluster just started), which takes a few seconds. Only for reads, which
    /// change nothing however often they are asked.
    async fn patiently<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
        &self,
        stream: &str,
        read: impl Fn() -> F,
    ) -> Result<T, StreamError> {
        let deadline = Instant::now() + self.settings.timeout * 3 / 4;
        loop {
            match read().await {
                Ok(value) => return Ok(value),
                Err(e) if Instant::now() >= deadline => return Err(unavailable(stream, e)),
                Err(e) => {
                    tracing::debug!(stream, error = %e, "a read of the cluster failed; it is asked again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// The counter of `stream`'s stored records, subscribed to on first use.
    fn changes_of(&self, stream: &str) -> Result<Arc<Changes>, StreamError> {
        let mut all = self.changes.lock().map_err(|_| unavailable(stream, "a waiter panicked"))?;
        if let Some(c) = all.get(stream) {
            return Ok(c.clone());
        }
        let changes = Arc::new(Changes::default());
        let subject = format!("{}-stored.{}.*", self.settings.prefix, token(stream));
        let client = self.client.clone();
        let subscription =
            self.wait(stream, async move { client.subscribe(subject).await.map_err(|e| unavailable(stream, e)) })?;
        let counter = Arc::downgrade(&changes);
        let task = self.runtime.spawn(async move {
            let mut subscription = subscription;
            while subscription.next().await.is_some() {
                match counter.upgrade() {
                    Some(c) => c.bump(),
                    None => break,
                }
            }
        });
        if let Ok(mut slot) = changes.task.lock() {
            *slot = Some(task.abort_handle());
        }
        all.insert(stream.to_owned(), changes.clone());
        Ok(changes)
    }

    /// Publishes `records`, each with its own message id, to the shard owning
    /// its hash key; again with the same ids while their acknowledgements fail,
    /// until most of the timeout has passed. After a failure the stream's
    /// description is read again: a shard closed by a resharding takes no
    /// records, and they go to its child.
    ///
    /// A record with a declared id (`declared`) has a message id made of it, the
    /// same on every host: JetStream stores it once per shard within the shard's
    /// duplicate window, and answers a repeat with the first one's position and
    /// `true` (a duplicate).
    async fn publish(
        &self,
        stream: &str,
        records: &[NewRecord],
        declared: Option<&[Option<Arc<str>>]>,
    ) -> Result<Identified, StreamError> {
        let ids: Vec<String> = (0..records.len())
            .map(|i| match declared.and_then(|d| d.get(i)).and_then(Option::as_ref) {
                Some(id) => declared_message_id(id),
                None => self.unique_id(),
            })
            .collect();
        let payloads: Vec<Bytes> = records.iter().map(envelope::encode).collect();
        let mut results: Vec<Option<Result<(Appended, bool), StreamError>>> =
            records.iter().map(|r| weir_stream::check_record(r).err().map(Err)).collect();
        let deadline = Instant::now() + self.settings.timeout * 3 / 4;
        let mut delay = Duration::from_millis(20);
        let mut described = self.described(stream).await?;
        // First each shard's records as atomic batches (one entry of the shard's log,
        // one sync per server); what a batch did not store goes one by one below.
        let mut by_shard: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, record) in records.iter().enumerate().filter(|(i, _)| results[*i].is_none()) {
            let hash = record.explicit_hash_key.unwrap_or_else(|| weir_stream::hash_key(&record.key));
            if let Some(shard) = described.owner(hash) {
                by_shard.entry(shard).or_default().push(i);
            }
        }
        for (shard, places) in by_shard {
            for chunk in places.chunks(ATOMIC_BATCH).filter(|c| c.len() > 1) {
                match self.publish_atomically(stream, shard, chunk, &ids, &payloads).await {
                    Ok(first) => {
                        for (k, &i) in chunk.iter().enumerate() {
                            results[i] = Some(Ok((Appended { shard, sequence: first + k as u64 }, false)));
                        }
                    }
                    Err(e) => {
                        tracing::debug!(stream, shard, error = %e, "an atomic batch was not stored; its records go one by one")
                    }
                }
            }
        }
        loop {
            let outstanding: Vec<usize> = (0..records.len()).filter(|&i| results[i].is_none()).collect();
            let mut acks = Vec::with_capacity(outstanding.len());
            let mut last_error = String::new();
            for &i in &outstanding {
                let hash = records[i].explicit_hash_key.unwrap_or_else(|| weir_stream::hash_key(&records[i].key));
                let Some(shard) = described.owner(hash) else {
                    last_error = format!("no open shard owns hash key {hash}");
                    continue;
                };
                let message = jetstream::message::PublishMessage::build()
                    .payload(payloads[i].clone())
                    .message_id(&ids[i])
                    .expected_stream(self.shard_stream(stream, shard));
                match self.js.send_publish(self.shard_subject(stream, shard), message).await {
                    Ok(ack) => acks.push((i, shard, ack)),
                    Err(e) => last_error = e.to_string(),
                }
            }
            let answered = futures_util::future::join_all(
                acks.into_iter().map(|(i, shard, ack)| async move { (i, shard, ack.await) }),
            )
            .await;
            for (i, shard, answer) in answered {
                match answer {
                    Ok(ack) => {
                        let appended = Appended { shard, sequence: ack.sequence.saturating_sub(1) };
                        results[i] = Some(Ok((appended, ack.duplicate)));
                    }
                    Err(e) => last_error = e.to_string(),
                }
            }
            if results.iter().all(Option::is_some) {
                break;
            }
            if Instant::now() + delay >= deadline {
                for r in results.iter_mut().filter(|r| r.is_none()) {
                    *r = Some(Err(unavailable(stream, format!("not stored: {last_error}"))));
                }
                break;
            }
            tracing::warn!(stream, error = %last_error, "a publish to NATS was not acknowledged; it is sent again");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
            if let Ok((now, _)) = self.describe(stream).await {
                described = now;
            }
        }
        Ok(results.into_iter().map(|r| r.unwrap_or_else(|| Err(unavailable(stream, "not stored")))).collect())
    }

    /// Publishes the records at `places` (of one shard) as one atomic batch:
    /// all stored, in order, or none. Returns the first one's position. Each
    /// keeps its message id, so a record sent again alone after a batch whose
    /// answer was lost is found stored, not stored twice.
    async fn publish_atomically(
        &self,
        stream: &str,
        shard: u32,
        places: &[usize],
        ids: &[String],
        payloads: &[Bytes],
    ) -> Result<u64, String> {
        let subject = self.shard_subject(stream, shard);
        let batch = self.unique_id();
        let mut commit = None;
        for (k, &i) in places.iter().enumerate() {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Batch-Id", batch.as_str());
            headers.insert("Nats-Batch-Sequence", (k + 1).to_string().as_str());
            headers.insert("Nats-Msg-Id", ids[i].as_str());
            headers.insert("Nats-Expected-Stream", self.shard_stream(stream, shard).as_str());
            if k + 1 == places.len() {
                headers.insert("Nats-Batch-Commit", "1");
                commit = Some(self.client.request_with_headers(subject.clone(), headers, payloads[i].clone()));
            } else {
                let sent = self.client.publish_with_headers(subject.clone(), headers, payloads[i].clone()).await;
                sent.map_err(|e| e.to_string())?;
            }
        }
        // Not the whole timeout: what the batch did not store is still sent one by one.
        let answered = tokio::time::timeout(self.settings.timeout / 4, commit.ok_or("an empty batch")?).await;
        let answer =
            answered.map_err(|_| "the batch was not answered in time".to_owned())?.map_err(|e| e.to_string())?;
        let ack: serde_json::Value = serde_json::from_slice(&answer.payload).map_err(|e| e.to_string())?;
        if let Some(error) = ack.get("error") {
            return Err(error.to_string());
        }
        let (last, count) = (ack["seq"].as_u64(), ack["count"].as_u64());
        match (last, count) {
            (Some(last), Some(count)) if count == places.len() as u64 && last >= count => Ok(last - count),
            _ => Err(format!("the batch's answer does not say where it went: {ack}")),
        }
    }

    /// The next `count` records of a shard from `from`: a batch direct get,
    /// which any server keeping the shard answers (no consumer, so no leader
    /// of the cluster needed), ended by the server's end-of-batch. A server
    /// that has not yet stored up to `end` (the shard's end as its leader
    /// said) answers 412 rather than fewer records, and is asked again.
    async fn read_from(
        &self,
        stream: &str,
        shard: u32,
        from: u64,
        count: usize,
        end: u64,
    ) -> Result<Vec<StoredRecord>, StreamError> {
        let subject = format!("$JS.API.DIRECT.GET.{}", self.shard_stream(stream, shard));
        let request = serde_json::json!({ "seq": from + 1, "batch": count, "min_last_seq": end }).to_string();
        loop {
            let inbox = self.client.new_inbox();
            let mut answers = self.client.subscribe(inbox.clone()).await.map_err(|e| unavailable(stream, e))?;
            self.client
                .publish_with_reply(subject.clone(), inbox, request.clone().into())
                .await
                .map_err(|e| unavailable(stream, e))?;
            let mut out = Vec::with_capacity(count);
            while let Some(answer) = answers.next().await {
                match answer.status.map(|s| s.as_u16()) {
                    // The end of the batch.
                    Some(204 | 404) => break,
                    // This server is behind the shard's leader: another answer is asked for.
                    Some(412) => {
                        out.clear();
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        break;
                    }
                    Some(status) => {
                        let why = answer.description.unwrap_or_default();
                        return Err(unavailable(stream, format!("a direct get answered {status} {why}")));
                    }
                    None => {}
                }
                out.push(self.direct_record(stream, shard, answer)?);
                if out.len() >= count {
                    break;
                }
            }
            if !out.is_empty() || from >= end {
                return Ok(out);
            }
        }
    }

    /// The record a direct get answered with.
    fn direct_record(
        &self,
        stream: &str,
        shard: u32,
        answer: async_nats::Message,
    ) -> Result<StoredRecord, StreamError> {
        let header = |name: &str| answer.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_owned());
        let sequence = header("Nats-Sequence").and_then(|s| s.parse::<u64>().ok());
        let stored = header("Nats-Time-Stamp").and_then(|t| parse_time_ms(&t));
        let (Some(sequence), Some(arrival_ms)) = (sequence, stored) else {
            return Err(unavailable(stream, "a direct get answered without its sequence or time"));
        };
        let position = sequence.saturating_sub(1);
        envelope::decode(answer.payload, shard, position, arrival_ms).map_err(|reason| StreamError::Corrupt {
            file: format!("NATS stream {}", self.shard_stream(stream, shard)),
            offset: position,
            reason,
        })
    }

    /// The arrival time of the record at `position`, ms.
    async fn arrival_at(&self, stream: &str, shard: u32, position: u64) -> Result<i64, StreamError> {
        let js_stream =
            self.js.get_stream_no_info(self.shard_stream(stream, shard)).await.map_err(|e| unavailable(stream, e))?;
        let message = js_stream.direct_get(position + 1).await.map_err(|e| unavailable(stream, e))?;
        Ok((message.time.unix_timestamp_nanos() / 1_000_000) as i64)
    }

    /// A shard's JetStream stream. An open shard takes its subject and
    /// republishes what it stores; a closed one's subject is moved aside, so
    /// that nothing is published to it any more.
    fn shard_config(&self, stream: &str, shard: u32, retention: Duration, open: bool) -> stream::Config {
        let (subject, republish) = match open {
            true => (
                self.shard_subject(stream, shard),
                Some(stream::Republish {
                    source: self.shard_subject(stream, shard),
                    destination: format!("{}-stored.{}.{shard}", self.settings.prefix, token(stream)),
                    headers_only: true,
                }),
            ),
            false => (format!("{}-closed.{}.{shard}", self.settings.prefix, token(stream)), None),
        };
        stream::Config {
            name: self.shard_stream(stream, shard),
            subjects: vec![subject],
            num_replicas: self.settings.replicas,
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_age: retention,
            duplicate_window: DUPLICATE_WINDOW.min(retention),
            allow_direct: true,
            allow_atomic_publish: true,
            republish,
            ..Default::default()
        }
    }
}

impl Drop for NatsStreams {
    /// Stops the store's waiters on its runtime: the client unsubscribes through it.
    fn drop(&mut self) {
        let _runtime = self.runtime.enter();
        self.renewer.abort();
        if let Ok(mut changes) = self.changes.lock() {
            for c in changes.drain().map(|(_, c)| c) {
                if let Some(task) = c.task.lock().ok().and_then(|mut t| t.take()) {
                    task.abort();
                }
            }
        }
    }
}

impl StreamStore for NatsStreams {
    fn append(&self, stream: &str, records: Vec<NewRecord>) -> Result<Vec<Result<Appended, StreamError>>, StreamError> {
        let results = self.append_with(stream, &records, None)?;
        Ok(results.into_iter().map(|r| r.map(|(appended, _)| appended)).collect())
    }

    fn stores_once_by_id(&self) -> bool {
        true
    }

    fn append_identified(
        &self,
        stream: &str,
        records: Vec<NewRecord>,
        ids: Vec<Option<Arc<str>>>,
        window: Duration,
    ) -> Result<Identified, StreamError> {
        self.wait(stream, self.widen_duplicate_window(stream, window))?;
        self.append_with(stream, &records, Some(&ids))
    }

    fn shard_count(&self, stream: &str) -> Result<u32, StreamError> {
        self.wait(stream, async { Ok(self.describe(stream).await?.0.description.shards.len() as u32) })
    }

    fn lineage(&self, stream: &str) -> Result<Vec<Lineage>, StreamError> {
        self.wait(stream, async {
            let (described, _) = self.describe(stream).await?;
            Ok(described
                .description
                .shards
                .iter()
                .map(|s| Lineage { parents: s.parents.clone(), closed_at: s.closed_at })
                .collect())
        })
    }

    /// Closing shards stop taking records (their subject is moved aside, so a
    /// publish to them has no taker and is routed again), their ends are
    /// recorded, the children are made, and the description changes by
    /// compare-and-set: a resharding another host did meanwhile is read and
    /// this one planned again.
    fn reshard(&self, stream: &str, change: Reshard) -> Result<(), StreamError> {
        self.wait(stream, async {
            loop {
                let (described, revision) = self.describe(stream).await?;
                let shards: Vec<ShardRange> = described
                    .ranges
                    .iter()
                    .zip(&described.description.shards)
                    .map(|(&(hash_start, hash_end), d)| ShardRange {
                        hash_start,
                        hash_end,
                        open: d.closed_at.is_none(),
                    })
                    .collect();
                let plan = reshard::plan(stream, &shards, change)?;
                let retention = Duration::from_millis(described.description.retention_ms);
                let mut description = described.description.clone();
                let now = now_ms();
                for &index in &plan.closing {
                    let config = self.shard_config(stream, index, retention, false);
                    let info = self.js.update_stream(config).await.map_err(|e| unavailable(stream, e))?;
                    let shard = &mut description.shards[index as usize];
                    shard.closed_at = Some(info.state.last_sequence);
                    shard.closed_ms = Some(now);
                }
                let first = description.shards.len() as u32;
                for (k, child) in plan.children.iter().enumerate() {
                    let config = self.shard_config(stream, first + k as u32, retention, true);
                    self.js.get_or_create_stream(config).await.map_err(|e| unavailable(stream, e))?;
                    description.shards.push(ShardDescription {
                        hash_start: child.hash_start.to_string(),
                        hash_end: child.hash_end.to_string(),
                        parents: child.parents.clone(),
                        closed_at: None,
                        opened_ms: now,
                        closed_ms: None,
                    });
                }
                let value = serde_json::to_vec(&description).map_err(|e| unavailable(stream, e))?;
                match self.descriptions.update(token(stream), value.into(), revision).await {
                    Ok(_) => {
                        self.describe(stream).await?;
                        tracing::info!(stream, ?change, open = plan.open_after, "resharded");
                        return Ok(());
                    }
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                    Err(e) => return Err(unavailable(stream, e)),
                }
            }
        })
    }

    fn read(&self, stream: &str, shard: u32, from: u64, max: usize) -> Result<Vec<StoredRecord>, StreamError> {
        self.wait(stream, async {
            let state = self.shard_state(stream, shard).await?;
            let oldest = state.first_sequence.saturating_sub(1);
            let end = state.last_sequence;
            if from < oldest {
                return Err(StreamError::Trimmed { stream: stream.to_owned(), sequence: from, oldest });
            }
            let count = usize::try_from(end.saturating_sub(from)).unwrap_or(usize::MAX).min(max);
            if count == 0 {
                return Ok(Vec::new());
            }
            self.read_from(stream, shard, from, count, end).await
        })
    }

    fn wait_for(
        &self,
        stream: &str,
        shard: u32,
        from: u64,
        min: usize,
        timeout: Duration,
    ) -> Result<usize, StreamError> {
        let deadline = Instant::now() + timeout;
        let changes = self.changes_of(stream)?;
        loop {
            let seen = changes.count.lock().map(|c| *c).map_err(|_| unavailable(stream, "a waiter panicked"))?;
            let ready = self.end(stream, shard)?.saturating_sub(from);
            let ready = usize::try_from(ready).unwrap_or(usize::MAX);
            let now = Instant::now();
            if ready >= min || now >= deadline {
                return Ok(ready);
            }
            let slice = (deadline - now).min(WAIT_SLICE);
            let count = changes.count.lock().map_err(|_| unavailable(stream, "a waiter panicked"))?;
            let _waited = changes
                .moved
                .wait_timeout_while(count, slice, |c| *c == seen)
                .map_err(|_| unavailable(stream, "a waiter panicked"))?;
        }
    }

    fn changes(&self, stream: &str) -> Result<u64, StreamError> {
        let changes = self.changes_of(stream)?;
        changes.count.lock().map(|c| *c).map_err(|_| unavailable(stream, "a waiter panicked"))
    }

    fn wait_change(&self, stream: &str, seen: u64, timeout: Duration) -> Result<u64, StreamError> {
        let changes = self.changes_of(stream)?;
        let count = changes.count.lock().map_err(|_| unavailable(stream, "a waiter panicked"))?;
        let (count, _) = changes
            .moved
            .wait_timeout_while(count, timeout, |c| *c <= seen)
            .map_err(|_| unavailable(stream, "a waiter panicked"))?;
        Ok(*count)
    }

    fn register_consumer(&self, stream: &str, shard: u32, consumer: &str) -> Result<u64, StreamError> {
        names::check(NameKind::Consumer, "consumer", consumer).map_err(|e| StreamError::InvalidName(e.to_string()))?;
        self.wait(stream, async {
            let state = self.shard_state(stream, shard).await?;
            let key = lease::shard_key(stream, shard, consumer);
            let first = state.first_sequence.saturating_sub(1);
            let read = lease::Leases::read(&self.positions, &key).await.map_err(|e| unavailable(stream, e))?;
            Ok(read.and_then(|(lease, _)| lease.position).unwrap_or(first))
        })
    }

    fn checkpoint(&self, stream: &str, shard: u32, consumer: &str, next: u64) -> Result<(), StreamError> {
        names::check(NameKind::Consumer, "consumer", consumer).map_err(|e| StreamError::InvalidName(e.to_string()))?;
        let failed = |reason: String| StreamError::CheckpointFailed {
            stream: stream.to_owned(),
            consumer: consumer.to_owned(),
            reason,
        };
        let batch = self.unique_id();
        self.wait(stream, async {
            self.shard_state(stream, shard).await?;
            let to = self.batch_to(&batch);
            match self.leases.checkpoint(&to, stream, shard, consumer, next).await.map_err(failed)? {
                lease::Fenced::Written => Ok(()),
                lease::Fenced::Lost => {
                    Err(StreamError::LeaseLost { stream: stream.to_owned(), shard, consumer: consumer.to_owned() })
                }
                lease::Fenced::NotLeased => {
                    let key = lease::shard_key(stream, shard, consumer);
                    self.positions.put(key, next.to_string().into()).await.map_err(|e| failed(e.to_string()))?;
                    Ok(())
                }
            }
        })
        .map_err(|e| match e {
            StreamError::Unavailable { reason, .. } => failed(reason),
            other => other,
        })
    }

    fn end(&self, stream: &str, shard: u32) -> Result<u64, StreamError> {
        self.wait(stream, async { Ok(self.shard_state(stream, shard).await?.last_sequence) })
    }

    fn position_at_time(&self, stream: &str, shard: u32, arrival_ms: i64) -> Result<u64, StreamError> {
        self.wait(stream, async {
            let state = self.shard_state(stream, shard).await?;
            // Arrival times grow with positions: the first at or after `arrival_ms`, by halves.
            let (mut low, mut high) = (state.first_sequence.saturating_sub(1), state.last_sequence);
            while low < high {
                let middle = low + (high - low) / 2;
                if self.arrival_at(stream, shard, middle).await? < arrival_ms {
                    low = middle + 1;
                } else {
                    high = middle;
                }
            }
            Ok(low)
        })
    }

    fn create(&self, spec: StreamSettings) -> Result<(), StreamError> {
        let stream = spec.name.as_str();
        names::check(NameKind::Stream, "StreamName", stream).map_err(|e| StreamError::InvalidName(e.to_string()))?;
        // As the disk store: a stream has at least one shard.
        let spec = StreamSettings { shards: spec.shards.max(1), ..spec };
        let stream = spec.name.as_str();
        self.wait(stream, async {
            let created_ms = now_ms();
            let description = Description {
                retention_ms: spec.retention.as_millis() as u64,
                created_ms,
                shards: (0..spec.shards)
                    .map(|i| ShardDescription {
                        hash_start: weir_stream::shard_start(i, spec.shards).to_string(),
                        hash_end: weir_stream::shard_end(i, spec.shards).to_string(),
                        parents: Vec::new(),
                        closed_at: None,
                        opened_ms: created_ms,
                        closed_ms: None,
                    })
                    .collect(),
            };
            // The shards first: a stream described is always writable.
            for shard in 0..spec.shards {
                let config = self.shard_config(stream, shard, spec.retention, true);
                self.js.get_or_create_stream(config).await.map_err(|e| unavailable(stream, e))?;
            }
            let value = serde_json::to_vec(&description).map_err(|e| unavailable(stream, e))?;
            match self.descriptions.create(token(stream), value.into()).await {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    Err(StreamError::AlreadyExists(stream.to_owned()))
                }
                Err(e) => Err(unavailable(stream, e)),
            }
        })
    }

    fn delete(&self, stream: &str) -> Result<(), StreamError> {
        self.wait(stream, async {
            let (described, _) = self.describe(stream).await?;
            // The description first: no host routes to the stream once it is gone.
            self.descriptions.purge(token(stream)).await.map_err(|e| unavailable(stream, e))?;
            self.forget(stream);
            for shard in 0..described.description.shards.len() as u32 {
                let name = self.shard_stream(stream, shard);
                if let Err(e) = self.js.delete_stream(&name).await {
                    tracing::warn!(stream, shard, error = %e, "a deleted stream's shard could not be removed from NATS");
                }
            }
            let prefix = format!("{}.", token(stream));
            let mut keys = self.positions.keys().await.map_err(|e| unavailable(stream, e))?;
            while let Some(key) = keys.next().await {
                let key = key.map_err(|e| unavailable(stream, e))?;
                if key.starts_with(&prefix) {
                    self.positions.purge(&key).await.map_err(|e| unavailable(stream, e))?;
                }
            }
            Ok(())
        })
    }

    fn list(&self) -> Vec<String> {
        let listed = self.wait("*", async {
            let mut keys = self.descriptions.keys().await.map_err(|e| unavailable("*", e))?;
            let mut names = Vec::new();
            while let Some(key) = keys.next().await {
                names.push(untoken(&key.map_err(|e| unavailable("*", e))?));
            }
            Ok(names)
        });
        let mut names = match listed {
            Ok(names) => names,
            Err(e) => {
                tracing::error!(error = %e, "the streams in NATS cannot be listed; the ones known here are shown");
                self.described.lock().map(|all| all.keys().cloned().collect()).unwrap_or_default()
            }
        };
        names.sort();
        names
    }

    fn info(&self, stream: &str) -> Result<StreamInfo, StreamError> {
        self.wait(stream, async {
            let (described, _) = self.describe(stream).await?;
            let description = &described.description;
            let mut consumers: Vec<BTreeMap<String, u64>> = vec![BTreeMap::new(); description.shards.len()];
            // Only this stream's keys: the bucket also holds every other stream's and the shared state.
            let prefix = format!("{}.", token(stream));
            let found =
                shared::scan(&self.client, &self.positions, &prefix).await.map_err(|e| unavailable(stream, e))?;
            for (key, position, _) in found {
                let Some((shard, consumer)) = key.strip_prefix(&prefix).and_then(|k| k.split_once('.')) else {
                    continue;
                };
                let Some(shard) = shard.parse::<usize>().ok().filter(|&s| s < consumers.len()) else { continue };
                let consumer = untoken(consumer);
                if let Some(position) = read_position(stream, &consumer, &position)? {
                    consumers[shard].insert(consumer, position);
                }
            }
            let mut shards = Vec::with_capacity(description.shards.len());
            let described_shards = description.shards.iter().zip(&described.ranges).zip(consumers);
            for (index, ((shard, &(hash_start, hash_end)), consumers)) in described_shards.enumerate() {
                let state = self.shard_state(stream, index as u32).await?;
                shards.push(ShardInfo {
                    index: index as u32,
                    hash_start,
                    hash_end,
                    oldest: state.first_sequence.saturating_sub(1),
                    end: state.last_sequence,
                    consumers,
                    parents: shard.parents.clone(),
                    closed_at: shard.closed_at,
                    opened_ms: shard.opened_ms,
                    closed_ms: shard.closed_ms,
                });
            }
            shards.sort_by_key(|s| s.hash_start);
            Ok(StreamInfo {
                name: stream.to_owned(),
                retention: Duration::from_millis(description.retention_ms),
                created_ms: description.created_ms,
                shards,
            })
        })
    }

    fn created_ms(&self, stream: &str) -> Result<i64, StreamError> {
        self.wait(stream, async { Ok(self.described(stream).await?.description.created_ms) })
    }

    fn set_retention(&self, stream: &str, retention: Duration) -> Result<(), StreamError> {
        self.wait(stream, async {
            loop {
                let (described, revision) = self.describe(stream).await?;
                let mut description = described.description.clone();
                description.retention_ms = retention.as_millis() as u64;
                for (index, shard) in description.shards.iter().enumerate() {
                    let config = self.shard_config(stream, index as u32, retention, shard.closed_at.is_none());
                    self.js.update_stream(config).await.map_err(|e| unavailable(stream, e))?;
                }
                let value = serde_json::to_vec(&description).map_err(|e| unavailable(stream, e))?;
                match self.descriptions.update(token(stream), value.into(), revision).await {
                    Ok(_) => return Ok(()),
                    // Changed by another host meanwhile: read it again and redo the change.
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                    Err(e) => return Err(unavailable(stream, e)),
                }
            }
        })
    }

    fn claim(&self, stream: &str, consumer: &str, shards: u32, sharing: Sharing) -> Result<Claim, StreamError> {
        if let Some(claim) = self.leases.cached(stream, consumer, shards, sharing) {
            return Ok(claim);
        }
        self.wait(stream, async {
            self.leases
                .claim(&self.positions, stream, consumer, shards, sharing)
                .await
                .map_err(|e| unavailable(stream, e))
        })
    }

    fn release(&self, stream: &str, consumer: &str) -> Result<(), StreamError> {
        self.wait(stream, async {
            self.leases.release(&self.positions, stream, consumer).await.map_err(|e| unavailable(stream, e))
        })
    }

    fn keeps_state(&self) -> bool {
        true
    }

    fn load_state(&self, stream: &str, consumer: &str) -> Result<Option<Vec<u8>>, StreamError> {
        self.wait(stream, async {
            lease::Leases::load_state(&self.positions, stream, consumer).await.map_err(|e| unavailable(stream, e))
        })
    }

    fn save_state(&self, stream: &str, consumer: &str, state: &[u8]) -> Result<(), StreamError> {
        let batch = self.unique_id();
        let saved = self.wait(stream, async {
            let to = self.batch_to(&batch);
            let saved = self.leases.save_state(&to, stream, consumer, state).await;
            saved.map_err(|e| unavailable(stream, e))
        });
        match saved {
            Ok(true) => Ok(()),
            Ok(false) => {
                Err(StreamError::LeaseLost { stream: stream.to_owned(), shard: 0, consumer: consumer.to_owned() })
            }
            Err(StreamError::Unavailable { reason, .. }) => {
                Err(StreamError::CheckpointFailed { stream: stream.to_owned(), consumer: consumer.to_owned(), reason })
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_no_dots_and_map_back_to_their_names() {
        for name in ["tolls", "tolls.in_1", "a_d", "_", "__.", "x-y.z_", "._d"] {
            let t = token(name);
            assert!(!t.contains('.'), "{name} -> {t}");
            assert_eq!(untoken(&t), name, "{name} -> {t}");
        }
        assert_ne!(token("a.b"), token("a_b"));
        assert_ne!(token("a_d"), token("a.d"));
    }
}
