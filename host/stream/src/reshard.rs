//! What a resharding changes, decided the same way by every store: which open
//! shards close, and the hash key ranges and parents of the children that
//! replace them (Kinesis's `UpdateShardCount`, `SplitShard` and `MergeShards`
//! rules). The stores only carry the plan out.

use crate::{MAX_SHARDS, Reshard, StreamError, shard_end, shard_id, shard_start};

/// A shard as a resharding sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardRange {
    /// First hash key it owns.
    pub hash_start: u128,
    /// Last hash key it owns.
    pub hash_end: u128,
    /// Whether it is still open (not closed by an earlier resharding).
    pub open: bool,
}

/// A shard a resharding opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    /// First hash key it owns.
    pub hash_start: u128,
    /// Last hash key it owns.
    pub hash_end: u128,
    /// The closing shards whose hash keys it takes, in the order asked (a
    /// merge's first parent, then its adjacent one).
    pub parents: Vec<u32>,
}

/// What a resharding does: the shards that close, and the children that open
/// after the existing shards, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReshardPlan {
    pub closing: Vec<u32>,
    pub children: Vec<Child>,
    /// Open shards once it is done.
    pub open_after: usize,
}

/// Plans `change` of `stream`, whose shards are `shards` (by index); an
/// [`StreamError::InvalidReshard`] or [`StreamError::ShardLimit`] says why it
/// cannot be done, and nothing changes.
pub fn plan(stream: &str, shards: &[ShardRange], change: Reshard) -> Result<ReshardPlan, StreamError> {
    let open: Vec<u32> = (0..shards.len() as u32).filter(|&i| shards[i as usize].open).collect();
    let invalid = |message: String| Err(StreamError::InvalidReshard(message));
    let is_open = |shard: u32| open.contains(&shard);
    let (closing, children): (Vec<u32>, Vec<(u128, u128)>) = match change {
        Reshard::Uniform(count) => {
            let count = count.max(1);
            (open.clone(), (0..count).map(|k| (shard_start(k, count), shard_end(k, count))).collect())
        }
        Reshard::Split { shard, at } => {
            if !is_open(shard) {
                return invalid(not_open(stream, shard));
            }
            let e = &shards[shard as usize];
            // As Kinesis: each child keeps at least two hash keys.
            if !(e.hash_start.saturating_add(1) < at && at < e.hash_end) {
                return invalid(format!(
                    "the new starting hash key {at} must be greater than {}'s starting hash key {} + 1 and less \
                     than its ending hash key {}",
                    shard_id(shard),
                    e.hash_start,
                    e.hash_end
                ));
            }
            (vec![shard], vec![(e.hash_start, at - 1), (at, e.hash_end)])
        }
        Reshard::Merge { shard, adjacent } => {
            for s in [shard, adjacent] {
                if !is_open(s) {
                    return invalid(not_open(stream, s));
                }
            }
            let (a, b) = (&shards[shard as usize], &shards[adjacent as usize]);
            let (low, high) = if a.hash_start < b.hash_start { (a, b) } else { (b, a) };
            if low.hash_end.checked_add(1) != Some(high.hash_start) {
                return invalid(format!(
                    "{} and {} are not adjacent: their hash key ranges do not meet",
                    shard_id(shard),
                    shard_id(adjacent)
                ));
            }
            (vec![shard, adjacent], vec![(low.hash_start, high.hash_end)])
        }
    };
    let open_after = open.len() - closing.len() + children.len();
    if open_after > MAX_SHARDS as usize {
        return Err(StreamError::ShardLimit(format!(
            "stream `{stream}` would have {open_after} open shards; at most {MAX_SHARDS}"
        )));
    }
    let children = children
        .into_iter()
        .map(|(start, end)| Child {
            hash_start: start,
            hash_end: end,
            parents: closing
                .iter()
                .copied()
                .filter(|&i| shards[i as usize].hash_start <= end && start <= shards[i as usize].hash_end)
                .collect(),
        })
        .collect();
    Ok(ReshardPlan { closing, children, open_after })
}

/// Why a closed shard cannot be split or merged, in Kinesis's words.
fn not_open(stream: &str, shard: u32) -> String {
    format!(
        "Shard {} in stream {stream} has already been merged or split, and thus is not eligible for merging or \
         splitting",
        shard_id(shard)
    )
}
