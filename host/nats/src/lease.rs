//! Leases: which host reads which shard of a stream for a consumer, when
//! several hosts share a cluster. The scheme is the Kinesis Client Library's:
//! a lease is the consumer's position value in the `<p>-positions` bucket,
//! `{position, owner, counter}`, and every change to it is a compare-and-set
//! on its revision.
//!
//! - **Renewing.** The holder adds one to the counter every quarter of the
//!   lease timeout (and with each checkpoint).
//! - **Expiry without clocks.** A host never compares its clock with another's:
//!   it notes, by its own clock, when it last saw a lease's counter move, and
//!   takes the lease once it has not moved for the lease timeout.
//! - **Balance.** The live hosts are the owners of leases that move, and this
//!   one. A host holding fewer than its share (the shards divided by the live
//!   hosts, rounded up) takes free and expired leases, then one lease per round
//!   from a host holding more than its share.
//! - **The fence.** A checkpoint is a compare-and-set on the revision the host
//!   last wrote. A host that lost its lease, taken while it was frozen, slow or
//!   cut off, finds the revision moved: its checkpoint is refused
//!   ([`weir_stream::StreamError::LeaseLost`]) and it stops reading the shard.
//!
//! A consumer read by one host at a time has one lease for the stream, under
//! `<s>.all.<consumer>`. With its state on its host's disk ([`Sharing::Whole`])
//! only its holder lets go of it. With its state kept here ([`Sharing::Single`])
//! it expires as a shard's does, and the state is saved in the same atomic
//! batch as a renewal of the lease, expecting the revision this host last
//! wrote of it: a host that lost the lease cannot save. The state is the value
//! of `<s>.state.<consumer>` (its size and how many parts) and its parts,
//! `<s>.state.<consumer>.<k>`, so that it may be larger than one message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::{kv, stream};
use bytes::Bytes;
use weir_stream::{Claim, Sharing};

use crate::shared::{self, BatchMessage, BatchTo, MAX_BATCH, NAMESPACE, Refused, SharedError, SharedWrite};
use crate::{locked, token};

/// A consumer's value in the positions bucket: where it stands, and which host
/// holds the lease on the shard. A value written before leases (a bare number)
/// is a position with no holder.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Lease {
    /// The next position to read; `None`: the shard's first record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// The host holding the lease; empty: free.
    #[serde(default)]
    pub owner: String,
    /// Moved by the holder to show it is alive.
    #[serde(default)]
    pub counter: u64,
}

impl Lease {
    pub(crate) fn parse(value: &[u8]) -> Option<Lease> {
        let text = std::str::from_utf8(value).ok()?;
        if let Ok(position) = text.trim().parse::<u64>() {
            return Some(Lease { position: Some(position), ..Lease::default() });
        }
        serde_json::from_str(text).ok()
    }

    fn bytes(&self) -> Result<Bytes, String> {
        serde_json::to_vec(self).map(Bytes::from).map_err(|e| format!("a lease cannot be written: {e}"))
    }
}

/// The key of a consumer's position (and lease) on one shard.
pub(crate) fn shard_key(stream: &str, shard: u32, consumer: &str) -> String {
    format!("{}.{shard}.{}", token(stream), token(consumer))
}

/// The key of a consumer's lease on a whole stream.
fn whole_key(stream: &str, consumer: &str) -> String {
    format!("{}.all.{}", token(stream), token(consumer))
}

/// The key of a consumer's saved state (its parts follow it, `.0`, `.1`, ...).
fn state_key(stream: &str, consumer: &str) -> String {
    format!("{}.state.{}", token(stream), token(consumer))
}

/// The most bytes of state in one message (a server takes 1 MiB by default).
const STATE_PART: usize = 256 * 1024;

/// What the value of a state key says of the parts after it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StateHeader {
    parts: usize,
    bytes: usize,
}

/// A lease this host holds: the revision and counter it last wrote, and when.
#[derive(Debug, Clone, Copy)]
struct Held {
    revision: u64,
    counter: u64,
    at: Instant,
}

/// What a host saw of another's lease, and when by its own clock.
#[derive(Debug, Clone)]
struct Seen {
    owner: String,
    counter: u64,
    moved: Instant,
}

/// The last round of one consumer of one stream.
struct Round {
    at: Instant,
    sharing: Sharing,
    claim: Claim,
}

/// How a checkpoint went through the fence.
pub(crate) enum Fenced {
    /// Written under the lease.
    Written,
    /// The lease was taken: nothing was written.
    Lost,
    /// The consumer does not share the shard: write it as it is.
    NotLeased,
}

/// The lock one consumer's lease reads and writes take turns at.
type Turns = Arc<tokio::sync::Mutex<()>>;

/// This host's leases, and what it saw of the others'.
pub(crate) struct Leases {
    host: String,
    timeout: Duration,
    held: Mutex<HashMap<String, Held>>,
    seen: Mutex<HashMap<String, Seen>>,
    rounds: Mutex<HashMap<(String, String), Round>>,
    /// The consumers claimed by shard or by one host with their state here
    /// ([`Sharing::Shards`], [`Sharing::Single`]): their checkpoints go through the fence only.
    leased: Mutex<HashMap<(String, String), Sharing>>,
    /// Per consumer, held while this host reads and writes its leases: a
    /// renewal and a fenced write from two threads (a delivery's reader and its
    /// loader) would each move the revision the other expects, and one would
    /// think the lease lost. Per consumer, so that one stage's long commit does
    /// not hold back another's renewal (which then expires under load).
    writing: Mutex<HashMap<(String, String), Turns>>,
}

/// How many lease timeouts after its stage's last claim round a lease is still
/// renewed for it: a batch may take that long (at the default 10 s, 40 s) on
/// a busy cluster; a stage stuck for longer loses its leases.
const BUSY_TIMEOUTS: u32 = 4;

/// Renews, four times per timeout, the leases of this host's stages that are
/// busy with a batch longer than that ([`Leases::renew_idle`]), so that a long
/// batch on a busy cluster (an aggregator closing many windows at once) does
/// not lose its lease, be redone by another host, and lose it there too. A
/// frozen or dead host renews nothing. Ends when the store is dropped.
pub(crate) async fn renew_in_background(leases: Weak<Leases>, bucket: kv::Store) {
    loop {
        let Some(every) = leases.upgrade().map(|l| l.renew_every()) else { return };
        tokio::time::sleep(every).await;
        let Some(leases) = leases.upgrade() else { return };
        leases.renew_idle(&bucket).await;
    }
}

impl Leases {
    pub(crate) fn new(host: String, timeout: Duration) -> Leases {
        Leases {
            host,
            timeout,
            held: Mutex::default(),
            seen: Mutex::default(),
            rounds: Mutex::default(),
            leased: Mutex::default(),
            writing: Mutex::default(),
        }
    }

    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// Waits for this host's turn to read and write `consumer`'s leases.
    async fn turn(&self, stream: &str, consumer: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = locked(&self.writing).entry((stream.to_owned(), consumer.to_owned())).or_default().clone();
        lock.lock_owned().await
    }

    /// How often a host asks the cluster: renewals come four times per timeout.
    fn renew_every(&self) -> Duration {
        self.timeout / 4
    }

    /// The last round's claim, while it is fresh.
    pub(crate) fn cached(&self, stream: &str, consumer: &str, shards: u32, sharing: Sharing) -> Option<Claim> {
        let rounds = locked(&self.rounds);
        let round = rounds.get(&(stream.to_owned(), consumer.to_owned()))?;
        (round.sharing == sharing
            && round.claim.held.len() == shards as usize
            && round.at.elapsed() < self.renew_every())
        .then(|| round.claim.clone())
    }

    /// One round: reads each lease, renews this host's, takes its share.
    pub(crate) async fn claim(
        &self,
        bucket: &kv::Store,
        stream: &str,
        consumer: &str,
        shards: u32,
        sharing: Sharing,
    ) -> Result<Claim, String> {
        let _turn = self.turn(stream, consumer).await;
        let claim = match sharing {
            Sharing::Shards => self.claim_shards(bucket, stream, consumer, shards).await?,
            Sharing::Whole | Sharing::Single => self.claim_whole(bucket, stream, consumer, shards, sharing).await?,
        };
        let round = Round { at: Instant::now(), sharing, claim: claim.clone() };
        locked(&self.rounds).insert((stream.to_owned(), consumer.to_owned()), round);
        Ok(claim)
    }

    /// A lease as the bucket's leader has it, with its revision: a server that is
    /// behind would answer with an older one (whose compare-and-set then fails, but
    /// whose position would send a reader back). A deleted key is a free lease at
    /// the revision of its marker.
    pub(crate) async fn read(bucket: &kv::Store, key: &str) -> Result<Option<(Lease, u64)>, String> {
        let subject = format!("{}{key}", bucket.prefix);
        let message = match bucket.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => message,
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let deleted = message.headers.get("KV-Operation").is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
        let lease = if deleted {
            Lease::default()
        } else {
            Lease::parse(&message.payload).ok_or_else(|| format!("the lease `{key}` is not readable"))?
        };
        Ok(Some((lease, message.sequence)))
    }

    /// Writes `lease` over `revision` (`None`: only if the key was never
    /// written); `None` if another host wrote first.
    async fn write(bucket: &kv::Store, key: &str, lease: &Lease, revision: Option<u64>) -> Result<Option<u64>, String> {
        // Revision 0: the key must never have been written.
        match bucket.update(key, lease.bytes()?, revision.unwrap_or(0)).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Takes or renews `key` from what was read of it; returns whether this host holds it.
    async fn hold(&self, bucket: &kv::Store, key: &str, read: Option<&(Lease, u64)>) -> bool {
        let (position, counter, revision) = match read {
            Some((lease, revision)) => (lease.position, lease.counter + 1, Some(*revision)),
            None => (None, 1, None),
        };
        let lease = Lease { position, owner: self.host.clone(), counter };
        match Self::write(bucket, key, &lease, revision).await {
            Ok(Some(revision)) => {
                locked(&self.held).insert(key.to_owned(), Held { revision, counter, at: Instant::now() });
                true
            }
            Ok(None) => {
                locked(&self.held).remove(key);
                false
            }
            // Not held, which is always safe: the next round tries again. (Two hosts
            // making one lease at once can see this rather than "exists already".)
            Err(e) => {
                tracing::debug!(key, error = %e, "a lease could not be written; it is not held this round");
                locked(&self.held).remove(key);
                false
            }
        }
    }

    /// Whether this host holds `key` as it last wrote it (`read` is what the
    /// cluster has): if not, a lease it holds after this round is taken anew.
    fn continues(&self, key: &str, read: Option<&(Lease, u64)>) -> bool {
        let held = locked(&self.held).get(key).copied();
        match (held, read) {
            (Some(held), Some((lease, revision))) => lease.owner == self.host && held.revision == *revision,
            _ => false,
        }
    }

    /// Notes what was read of another host's lease; returns whether it expired
    /// (its counter did not move for the timeout, by this host's clock).
    fn expired(&self, key: &str, lease: &Lease) -> bool {
        let mut seen = locked(&self.seen);
        let now = Instant::now();
        let moved = match seen.get(key) {
            Some(s) if s.owner == lease.owner && s.counter == lease.counter => s.moved,
            _ => now,
        };
        seen.insert(key.to_owned(), Seen { owner: lease.owner.clone(), counter: lease.counter, moved });
        now.duration_since(moved) >= self.timeout
    }

    async fn claim_shards(
        &self,
        bucket: &kv::Store,
        stream: &str,
        consumer: &str,
        shards: u32,
    ) -> Result<Claim, String> {
        locked(&self.leased).insert((stream.to_owned(), consumer.to_owned()), Sharing::Shards);
        let keys: Vec<String> = (0..shards).map(|s| shard_key(stream, s, consumer)).collect();
        let mut read = Vec::with_capacity(keys.len());
        for key in &keys {
            read.push(Self::read(bucket, key).await?);
        }
        let continued: Vec<bool> =
            keys.iter().zip(&read).map(|(key, read)| self.continues(key, read.as_ref())).collect();
        // Who is alive: the owners of leases that move, and this host.
        let mut live: HashMap<String, Vec<usize>> = HashMap::from([(self.host.clone(), Vec::new())]);
        let mut free = Vec::new();
        for (i, lease) in read.iter().enumerate() {
            match lease {
                Some((lease, _)) if lease.owner == self.host => live.entry(self.host.clone()).or_default().push(i),
                Some((lease, _)) if !lease.owner.is_empty() && !self.expired(&keys[i], lease) => {
                    live.entry(lease.owner.clone()).or_default().push(i)
                }
                _ => free.push(i),
            }
        }
        let share = (shards as usize).div_ceil(live.len());
        let mut held = vec![false; keys.len()];
        let mut count = 0;
        let mine = live.get(&self.host).cloned().unwrap_or_default();
        for i in mine {
            if self.hold(bucket, &keys[i], read[i].as_ref()).await {
                held[i] = true;
                count += 1;
            }
        }
        for i in free {
            if count >= share {
                break;
            }
            if self.hold(bucket, &keys[i], read[i].as_ref()).await {
                tracing::info!(stream, consumer, shard = i, "took the lease of a free or expired shard");
                held[i] = true;
                count += 1;
            }
        }
        if count < share {
            // One lease a round from the host with the most: if it has more than its
            // share, or its share while this one is two or more short (3 hosts, 4
            // shards: 2, 2, 0 becomes 2, 1, 1, and stays).
            let richest = live.iter().filter(|(owner, _)| **owner != self.host).max_by_key(|(_, shards)| shards.len());
            if let Some((owner, theirs)) = richest
                && (theirs.len() > share || (theirs.len() == share && count + 2 <= share))
                && let Some(&i) = theirs.last()
                && self.hold(bucket, &keys[i], read[i].as_ref()).await
            {
                tracing::info!(stream, consumer, shard = i, from = %owner, "took a lease to balance the hosts");
                held[i] = true;
            }
        }
        // What another host holds now is not this host's, whatever it last wrote.
        for (key, held) in keys.iter().zip(&held) {
            if !held {
                locked(&self.held).remove(key);
            }
        }
        let positions = read.iter().map(|lease| lease.as_ref().and_then(|(l, _)| l.position)).collect();
        let holders = read
            .iter()
            .zip(&held)
            .map(|(lease, held)| match (held, lease) {
                (true, _) => Some(self.host.clone()),
                (false, Some((l, _))) if !l.owner.is_empty() => Some(l.owner.clone()),
                _ => None,
            })
            .collect();
        let taken = held.iter().zip(&continued).map(|(held, continued)| *held && !continued).collect();
        Ok(Claim { held, positions, holders, taken })
    }

    async fn claim_whole(
        &self,
        bucket: &kv::Store,
        stream: &str,
        consumer: &str,
        shards: u32,
        sharing: Sharing,
    ) -> Result<Claim, String> {
        let key = whole_key(stream, consumer);
        if sharing == Sharing::Single {
            locked(&self.leased).insert((stream.to_owned(), consumer.to_owned()), Sharing::Single);
        }
        let read = Self::read(bucket, &key).await?;
        let owner = match &read {
            // Its state moves with it: it may be taken from a host that stopped renewing.
            Some((lease, _)) if sharing == Sharing::Single && !lease.owner.is_empty() && lease.owner != self.host => {
                let expired = self.expired(&key, lease);
                if expired {
                    tracing::info!(stream, consumer, from = %lease.owner, "taking over a consumer whose host stopped renewing it");
                }
                (!expired).then(|| lease.owner.clone())
            }
            Some((lease, _)) if !lease.owner.is_empty() && lease.owner != self.host => Some(lease.owner.clone()),
            _ => None,
        };
        let n = shards as usize;
        let continued = self.continues(&key, read.as_ref());
        let held = owner.is_none() && self.hold(bucket, &key, read.as_ref()).await;
        if !held {
            locked(&self.held).remove(&key);
        }
        let holder = if held { Some(self.host.clone()) } else { owner };
        Ok(Claim {
            held: vec![held; n],
            positions: vec![None; n],
            holders: vec![holder; n],
            taken: vec![held && !continued; n],
        })
    }

    /// Writes a checkpoint through the fence: a compare-and-set on the revision
    /// this host last wrote of the lease (of the shard's, or for a consumer
    /// read by one host with its state here, of the stream's).
    pub(crate) async fn checkpoint(
        &self,
        to: &BatchTo<'_>,
        stream: &str,
        shard: u32,
        consumer: &str,
        next: u64,
    ) -> Result<Fenced, String> {
        let _turn = self.turn(stream, consumer).await;
        let key = shard_key(stream, shard, consumer);
        let leased = locked(&self.leased).get(&(stream.to_owned(), consumer.to_owned())).copied();
        if leased == Some(Sharing::Single) {
            return self.checkpoint_single(to, stream, shard, consumer, next).await;
        }
        let held = locked(&self.held).get(&key).copied();
        let Some(held) = held else {
            return Ok(if leased.is_some() { Fenced::Lost } else { Fenced::NotLeased });
        };
        let lease = Lease { position: Some(next), owner: self.host.clone(), counter: held.counter + 1 };
        match Self::write(to.bucket, &key, &lease, Some(held.revision)).await {
            Ok(Some(revision)) => {
                locked(&self.held).insert(key, Held { revision, counter: lease.counter, at: Instant::now() });
                Ok(Fenced::Written)
            }
            Ok(None) => {
                locked(&self.held).remove(&key);
                // The next claim asks the cluster again rather than trusting the last round.
                locked(&self.rounds).remove(&(stream.to_owned(), consumer.to_owned()));
                tracing::warn!(
                    stream,
                    consumer,
                    shard,
                    "the lease was taken by another host; the checkpoint was refused"
                );
                Ok(Fenced::Lost)
            }
            Err(e) => {
                // Written or not, the revision is unknown now: the next round reads it again.
                locked(&self.held).remove(&key);
                locked(&self.rounds).remove(&(stream.to_owned(), consumer.to_owned()));
                Err(e)
            }
        }
    }

    /// A checkpoint of a consumer read by one host at a time: one atomic batch
    /// of the stream's lease renewed (expecting the revision this host last
    /// wrote) and the shard's position.
    async fn checkpoint_single(
        &self,
        to: &BatchTo<'_>,
        stream: &str,
        shard: u32,
        consumer: &str,
        next: u64,
    ) -> Result<Fenced, String> {
        let key = whole_key(stream, consumer);
        let held = locked(&self.held).get(&key).copied();
        let Some(held) = held else { return Ok(Fenced::Lost) };
        let lease = Lease { position: None, owner: self.host.clone(), counter: held.counter + 1 };
        let position = Lease { position: Some(next), ..Lease::default() };
        let messages = vec![
            BatchMessage { key: key.clone(), payload: Some(lease.bytes()?), expected: Some(held.revision) },
            BatchMessage { key: shard_key(stream, shard, consumer), payload: Some(position.bytes()?), expected: None },
        ];
        match shared::atomic(to, messages).await {
            Ok(first) => {
                locked(&self.held).insert(key, Held { revision: first, counter: lease.counter, at: Instant::now() });
                Ok(Fenced::Written)
            }
            Err(refused) => {
                self.forget(&key, stream, consumer);
                match refused {
                    Refused::WrongRevision => {
                        tracing::warn!(
                            stream,
                            consumer,
                            shard,
                            "another host took the consumer over; the checkpoint was refused"
                        );
                        Ok(Fenced::Lost)
                    }
                    Refused::Failed(e) => Err(e),
                }
            }
        }
    }

    /// Renews each lease this host holds that nothing renewed for a quarter
    /// of the timeout (no claim round, checkpoint, state save or commit): one
    /// whose stage is busy with a long batch, for at most [`BUSY_TIMEOUTS`]
    /// timeouts after its last claim round. One another host took is no
    /// longer held; its stage learns it at its next claim or write.
    async fn renew_idle(&self, bucket: &kv::Store) {
        let consumers: Vec<(String, String, Vec<String>)> = locked(&self.rounds)
            .iter()
            // A stage stuck for longer loses its leases, as a frozen host does.
            .filter(|(_, round)| round.at.elapsed() < self.timeout * BUSY_TIMEOUTS)
            .map(|((stream, consumer), round)| {
                let keys = match round.sharing {
                    Sharing::Shards => {
                        (0..round.claim.held.len() as u32).map(|s| shard_key(stream, s, consumer)).collect()
                    }
                    Sharing::Whole | Sharing::Single => vec![whole_key(stream, consumer)],
                };
                (stream.clone(), consumer.clone(), keys)
            })
            .collect();
        for (stream, consumer, keys) in consumers {
            let _turn = self.turn(&stream, &consumer).await;
            for key in keys {
                let held = locked(&self.held).get(&key).copied();
                let Some(held) = held.filter(|h| h.at.elapsed() >= self.renew_every()) else { continue };
                match Self::read(bucket, &key).await {
                    Ok(Some(read)) if read.1 == held.revision && read.0.owner == self.host => {
                        if !self.hold(bucket, &key, Some(&read)).await {
                            tracing::info!(stream, consumer, "another host took a lease while its stage was busy");
                        }
                    }
                    Ok(_) => {
                        locked(&self.held).remove(&key);
                        tracing::info!(stream, consumer, "another host took a lease while its stage was busy");
                    }
                    // Tried again in a quarter of the timeout.
                    Err(e) => tracing::debug!(key, error = %e, "a lease could not be renewed now"),
                }
            }
        }
    }

    /// Lets go of this host's leases for `consumer`, keeping their positions.
    pub(crate) async fn release(&self, bucket: &kv::Store, stream: &str, consumer: &str) -> Result<(), String> {
        let _turn = self.turn(stream, consumer).await;
        locked(&self.leased).remove(&(stream.to_owned(), consumer.to_owned()));
        let round = locked(&self.rounds).remove(&(stream.to_owned(), consumer.to_owned()));
        let Some(round) = round else { return Ok(()) };
        let keys: Vec<String> = match round.sharing {
            Sharing::Shards => (0..round.claim.held.len() as u32).map(|s| shard_key(stream, s, consumer)).collect(),
            Sharing::Whole | Sharing::Single => vec![whole_key(stream, consumer)],
        };
        for key in keys {
            let held = locked(&self.held).remove(&key);
            let Some(held) = held else { continue };
            let Some((lease, revision)) = Self::read(bucket, &key).await? else { continue };
            if revision != held.revision {
                continue;
            }
            let free = Lease { position: lease.position, owner: String::new(), counter: lease.counter + 1 };
            Self::write(bucket, &key, &free, Some(revision)).await?;
        }
        Ok(())
    }

    /// Saves a consumer's state under its lease: one atomic batch of the lease
    /// renewed (expecting the revision this host last wrote), the state's size
    /// and its parts. Returns `false` (nothing written) if the lease was lost.
    pub(crate) async fn save_state(
        &self,
        to: &BatchTo<'_>,
        stream: &str,
        consumer: &str,
        state: &[u8],
    ) -> Result<bool, String> {
        let _turn = self.turn(stream, consumer).await;
        let key = whole_key(stream, consumer);
        let held = locked(&self.held).get(&key).copied();
        let Some(held) = held else { return Ok(false) };
        let parts: Vec<&[u8]> = state.chunks(STATE_PART).collect();
        if parts.len() + 2 > MAX_BATCH {
            return Err(format!(
                "the state has {} bytes; at most {} can be saved at once",
                state.len(),
                (MAX_BATCH - 2) * STATE_PART
            ));
        }
        let lease = Lease { position: None, owner: self.host.clone(), counter: held.counter + 1 };
        let header =
            serde_json::to_vec(&StateHeader { parts: parts.len(), bytes: state.len() }).map_err(|e| e.to_string())?;
        let state_key = state_key(stream, consumer);
        let mut messages = vec![(key.clone(), lease.bytes()?), (state_key.clone(), Bytes::from(header))];
        messages.extend(
            parts.iter().enumerate().map(|(k, part)| (format!("{state_key}.{k}"), Bytes::copy_from_slice(part))),
        );
        let messages = messages
            .into_iter()
            .enumerate()
            .map(|(k, (key, payload))| BatchMessage {
                key,
                payload: Some(payload),
                expected: (k == 0).then_some(held.revision),
            })
            .collect();
        match shared::atomic(to, messages).await {
            Ok(first) => {
                locked(&self.held).insert(key, Held { revision: first, counter: lease.counter, at: Instant::now() });
                Ok(true)
            }
            Err(refused) => {
                self.forget(&key, stream, consumer);
                match refused {
                    Refused::WrongRevision => {
                        tracing::warn!(
                            stream,
                            consumer,
                            "another host took the consumer over; its state was not saved"
                        );
                        Ok(false)
                    }
                    Refused::Failed(e) => Err(format!("the state was not saved: {e}")),
                }
            }
        }
    }

    /// Forgets a lease's revision (it was lost, or is unknown after a failed
    /// write): the next claim asks the cluster again.
    fn forget(&self, key: &str, stream: &str, consumer: &str) {
        locked(&self.held).remove(key);
        locked(&self.rounds).remove(&(stream.to_owned(), consumer.to_owned()));
    }

    /// Commits shared values ([`crate::shared`]) in one atomic batch; with a
    /// `fence`, the lease of that consumer (read by one host at a time) is
    /// renewed in the same batch, expecting the revision this host last wrote.
    pub(crate) async fn commit(
        &self,
        to: &BatchTo<'_>,
        writes: Vec<SharedWrite>,
        fence: Option<(&str, &str)>,
    ) -> Result<(), SharedError> {
        // Only a commit under a lease touches one.
        let _turn = match fence {
            Some((stream, consumer)) => Some(self.turn(stream, consumer).await),
            None => None,
        };
        let lost = |(stream, consumer): (&str, &str)| SharedError::LeaseLost {
            stream: stream.to_owned(),
            consumer: consumer.to_owned(),
        };
        if writes.is_empty() {
            return Ok(());
        }
        let most = MAX_BATCH - usize::from(fence.is_some());
        if writes.len() > most {
            return Err(SharedError::TooLarge { writes: writes.len(), most });
        }
        let mut messages = Vec::with_capacity(writes.len() + 1);
        let mut renewed = None;
        if let Some((stream, consumer)) = fence {
            let key = whole_key(stream, consumer);
            let held = locked(&self.held).get(&key).copied();
            let Some(held) = held else { return Err(lost((stream, consumer))) };
            let lease = Lease { position: None, owner: self.host.clone(), counter: held.counter + 1 };
            let payload = lease.bytes().map_err(SharedError::Unavailable)?;
            messages.push(BatchMessage { key: key.clone(), payload: Some(payload), expected: Some(held.revision) });
            renewed = Some((key, held, lease.counter));
        }
        for write in writes {
            shared::check_key(&write.key)?;
            let key = format!("{NAMESPACE}{}", write.key);
            messages.push(BatchMessage { key, payload: write.value, expected: write.expected });
        }
        match shared::atomic(to, messages).await {
            Ok(first) => {
                if let Some((key, _, counter)) = renewed {
                    locked(&self.held).insert(key, Held { revision: first, counter, at: Instant::now() });
                }
                Ok(())
            }
            Err(Refused::WrongRevision) => {
                // The lease or a value moved: only the first stops this host's work.
                let (Some((stream, consumer)), Some((key, held, _))) = (fence, renewed) else {
                    return Err(SharedError::Conflict);
                };
                let now = Self::read(to.bucket, &key).await.map_err(SharedError::Unavailable)?;
                if now.is_some_and(|(_, revision)| revision == held.revision) {
                    return Err(SharedError::Conflict);
                }
                self.forget(&key, stream, consumer);
                tracing::warn!(stream, consumer, "another host took the consumer over; its changes were not made");
                Err(lost((stream, consumer)))
            }
            Err(Refused::Failed(e)) => {
                // Stored or not, the lease's revision is unknown now.
                if let (Some((stream, consumer)), Some((key, _, _))) = (fence, renewed) {
                    self.forget(&key, stream, consumer);
                }
                Err(SharedError::Unavailable(e))
            }
        }
    }

    /// The state a consumer saved last, read from the bucket's leader.
    pub(crate) async fn load_state(
        bucket: &kv::Store,
        stream: &str,
        consumer: &str,
    ) -> Result<Option<Vec<u8>>, String> {
        let key = state_key(stream, consumer);
        let subject = format!("{}{key}", bucket.prefix);
        let header = match bucket.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => message,
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        if header.headers.get("KV-Operation").is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE")) {
            return Ok(None);
        }
        let header: StateHeader = serde_json::from_slice(&header.payload)
            .map_err(|e| format!("the saved state of `{consumer}` is not readable: {e}"))?;
        let mut state = Vec::with_capacity(header.bytes);
        for k in 0..header.parts {
            let part = bucket
                .stream
                .get_last_raw_message_by_subject(&format!("{subject}.{k}"))
                .await
                .map_err(|e| format!("part {k} of the saved state of `{consumer}`: {e}"))?;
            state.extend_from_slice(&part.payload);
        }
        if state.len() != header.bytes {
            return Err(format!(
                "the saved state of `{consumer}` has {} bytes where its header says {}",
                state.len(),
                header.bytes
            ));
        }
        Ok(Some(state))
    }
}
