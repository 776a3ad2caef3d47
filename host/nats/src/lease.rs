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
//! A consumer read by one host at a time ([`Sharing::Whole`]: its state is on
//! that host's disk) has one lease for the stream, under `<s>.all.<consumer>`,
//! which only its holder lets go of.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::{kv, stream};
use bytes::Bytes;
use weir_stream::{Claim, Sharing};

use crate::token;

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

    fn bytes(&self) -> Bytes {
        // A struct of a number, a string and a number always serializes.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
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

/// A lease this host holds: the revision and counter it last wrote.
#[derive(Debug, Clone, Copy)]
struct Held {
    revision: u64,
    counter: u64,
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

/// This host's leases, and what it saw of the others'.
pub(crate) struct Leases {
    host: String,
    timeout: Duration,
    held: Mutex<HashMap<String, Held>>,
    seen: Mutex<HashMap<String, Seen>>,
    rounds: Mutex<HashMap<(String, String), Round>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere does not make the map wrong: every change is one insert or remove.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Leases {
    pub(crate) fn new(host: String, timeout: Duration) -> Leases {
        Leases { host, timeout, held: Mutex::default(), seen: Mutex::default(), rounds: Mutex::default() }
    }

    pub(crate) fn host(&self) -> &str {
        &self.host
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
        let claim = match sharing {
            Sharing::Shards => self.claim_shards(bucket, stream, consumer, shards).await?,
            Sharing::Whole => self.claim_whole(bucket, stream, consumer, shards).await?,
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
        match bucket.update(key, lease.bytes(), revision.unwrap_or(0)).await {
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
                locked(&self.held).insert(key.to_owned(), Held { revision, counter });
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
        let keys: Vec<String> = (0..shards).map(|s| shard_key(stream, s, consumer)).collect();
        let mut read = Vec::with_capacity(keys.len());
        for key in &keys {
            read.push(Self::read(bucket, key).await?);
        }
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
        Ok(Claim { held, positions, holders })
    }

    async fn claim_whole(
        &self,
        bucket: &kv::Store,
        stream: &str,
        consumer: &str,
        shards: u32,
    ) -> Result<Claim, String> {
        let key = whole_key(stream, consumer);
        let read = Self::read(bucket, &key).await?;
        let owner = match &read {
            Some((lease, _)) if !lease.owner.is_empty() && lease.owner != self.host => Some(lease.owner.clone()),
            _ => None,
        };
        let n = shards as usize;
        let held = owner.is_none() && self.hold(bucket, &key, read.as_ref()).await;
        let holder = if held { Some(self.host.clone()) } else { owner };
        Ok(Claim { held: vec![held; n], positions: vec![None; n], holders: vec![holder; n] })
    }

    /// Writes a checkpoint through the fence: a compare-and-set on the revision
    /// this host last wrote of the lease.
    pub(crate) async fn checkpoint(
        &self,
        bucket: &kv::Store,
        stream: &str,
        shard: u32,
        consumer: &str,
        next: u64,
    ) -> Result<Fenced, String> {
        let key = shard_key(stream, shard, consumer);
        let held = locked(&self.held).get(&key).copied();
        let Some(held) = held else {
            let shared = locked(&self.rounds)
                .get(&(stream.to_owned(), consumer.to_owned()))
                .is_some_and(|r| r.sharing == Sharing::Shards);
            return Ok(if shared { Fenced::Lost } else { Fenced::NotLeased });
        };
        let lease = Lease { position: Some(next), owner: self.host.clone(), counter: held.counter + 1 };
        match Self::write(bucket, &key, &lease, Some(held.revision)).await {
            Ok(Some(revision)) => {
                locked(&self.held).insert(key, Held { revision, counter: lease.counter });
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

    /// Lets go of this host's leases for `consumer`, keeping their positions.
    pub(crate) async fn release(&self, bucket: &kv::Store, stream: &str, consumer: &str) -> Result<(), String> {
        let round = locked(&self.rounds).remove(&(stream.to_owned(), consumer.to_owned()));
        let Some(round) = round else { return Ok(()) };
        let keys: Vec<String> = match round.sharing {
            Sharing::Shards => (0..round.claim.held.len() as u32).map(|s| shard_key(stream, s, consumer)).collect(),
            Sharing::Whole => vec![whole_key(stream, consumer)],
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
}
