//! Key names of the Redis layout (DESIGN §6), one function per key kind.
//!
//! Every key carries a hash tag (`{...}`) so that each transaction or Lua
//! script touches a single slot and the same names work on Redis Cluster:
//! `{pNN-k}` for a partition (history, fence, counters, live channel),
//! `{sid}` for a durable subscription, `{cfg}` and `{nodes}` for
//! cluster-wide config and membership.
//!
//! Partition tags are precomputed so that their CRC16 slots spread evenly
//! over the 16384 cluster slots: naive `{0}..{15}` lands unevenly on three
//! masters (REDIS.md §3.3). Every replica computes the same tags from the
//! partition count alone.

/// Number of Redis Cluster hash slots.
const SLOTS: u16 = 16384;

/// Priority bands of a durable subscription (priority 1..=10).
pub(super) const BANDS: usize = 10;

/// Name of the consumer group on every priority band.
pub(super) const BAND_GROUP: &str = "g";

/// Pseudo-consumer holding deliveries released by departed consumers;
/// fetches take them first, so they keep their place at the band's front.
pub(super) const RETURNED: &str = "~returned";

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: String,
    tags: Vec<String>,
}

impl Keys {
    /// Names for `partitions` ingest partitions under `prefix`.
    pub(super) fn new(prefix: &str, partitions: u32) -> Keys {
        Keys {
            prefix: prefix.to_string(),
            tags: (0..partitions)
                .map(|p| partition_tag(p, partitions))
                .collect(),
        }
    }

    /// Number of partitions.
    pub(super) fn partitions(&self) -> u32 {
        self.tags.len() as u32
    }

    fn tag(&self, partition: u32) -> &str {
        &self.tags[partition as usize]
    }

    /// `er:h:{p}`: history stream of a partition (every event published
    /// into it, trimmed by length and age; no consumer group).
    pub(super) fn history(&self, partition: u32) -> String {
        format!("{}:h:{{{}}}", self.prefix, self.tag(partition))
    }

    /// `er:in:{p}`: the ingest stream of the first Redis layout; only
    /// looked for, to refuse a Redis that holds that layout.
    pub(super) fn v1_ingest(&self, partition: u32) -> String {
        format!("{}:in:{{{}}}", self.prefix, self.tag(partition))
    }

    /// `er:meta:{p}`: `seq`, events published into a partition.
    pub(super) fn meta(&self, partition: u32) -> String {
        format!("{}:meta:{{{}}}", self.prefix, self.tag(partition))
    }

    /// `er:fence:{p}`: the partition's copy of the routing config
    /// generation. Every subscription change bumps every partition's
    /// fence before it returns; every publish transaction reads the fence
    /// of its partition atomically with its writes.
    pub(super) fn fence(&self, partition: u32) -> String {
        format!("{}:fence:{{{}}}", self.prefix, self.tag(partition))
    }

    /// `er:dd:{p}:<eid>`: stream id of a recently published event id
    /// (producer dedup window).
    pub(super) fn dedup(&self, partition: u32, event_id: &str) -> String {
        format!("{}:dd:{{{}}}:{event_id}", self.prefix, self.tag(partition))
    }

    /// `er:live:{p}`: shard channel of a partition's live fan-out.
    pub(super) fn live(&self, partition: u32) -> String {
        format!("{}:live:{{{}}}", self.prefix, self.tag(partition))
    }

    /// `er:{cfg}:subs`: name → subscription record (JSON).
    pub(super) fn cfg_subs(&self) -> String {
        format!("{}:{{cfg}}:subs", self.prefix)
    }

    /// `er:{cfg}:ver`: routing config version, bumped on every change.
    pub(super) fn cfg_version(&self) -> String {
        format!("{}:{{cfg}}:ver", self.prefix)
    }

    /// `er:{cfg}:layout`: which key layout the data under this prefix uses.
    pub(super) fn layout(&self) -> String {
        format!("{}:{{cfg}}:layout", self.prefix)
    }

    /// `er:{nodes}`: replica id → heartbeat (ms).
    pub(super) fn nodes(&self) -> String {
        format!("{}:{{nodes}}", self.prefix)
    }

    /// `er:es:{<name>}`: an event stream (entry ids `<version>-1`).
    pub(super) fn event_stream(&self, name: &str) -> String {
        format!("{}:es:{{{name}}}", self.prefix)
    }

    /// Keys of one durable subscription, by its id.
    pub(super) fn sub(&self, sid: &str) -> SubKeys {
        SubKeys {
            base: format!("{}:s:{{{}}}", self.prefix, sid),
        }
    }
}

/// Key names of one durable subscription (all in slot `{sid}`).
#[derive(Debug, Clone)]
pub(super) struct SubKeys {
    base: String,
}

impl SubKeys {
    /// `:info`: name and counters; its absence means the subscription was deleted.
    pub(super) fn info(&self) -> String {
        format!("{}:info", self.base)
    }

    /// `:wake`: shard channel that publishers notify when they add
    /// entries, so that consumers on other replicas fetch at once.
    pub(super) fn wake(&self) -> String {
        format!("{}:wake", self.base)
    }

    /// `:q1`..`:q10`: priority band streams.
    pub(super) fn band(&self, band: usize) -> String {
        format!("{}:q{band}", self.base)
    }

    /// All ten bands, priority 1 first.
    pub(super) fn bands(&self) -> Vec<String> {
        (1..=BANDS).map(|b| self.band(b)).collect()
    }

    /// `:retry`: due ms → envelope.
    pub(super) fn retry(&self) -> String {
        format!("{}:retry", self.base)
    }

    /// `:dlq`: dead letters.
    pub(super) fn dlq(&self) -> String {
        format!("{}:dlq", self.base)
    }

    /// `:consumers`: consumer name → heartbeat ms.
    pub(super) fn consumers(&self) -> String {
        format!("{}:consumers", self.base)
    }

    /// Every key of the subscription, for deletion.
    pub(super) fn all(&self) -> Vec<String> {
        let mut keys = vec![self.info(), self.retry(), self.dlq(), self.consumers()];
        keys.extend(self.bands());
        keys
    }
}

/// A hash tag for `partition` whose slot falls in the partition's share of
/// the slot space.
fn partition_tag(partition: u32, partitions: u32) -> String {
    let width = u32::from(SLOTS) / partitions.max(1);
    let lo = partition * width;
    let hi = lo + width.max(1);
    // With ≥ 1 slot per partition a matching suffix is found quickly (about
    // `partitions` tries on average); the bound only guards against a
    // partition count above the slot count, where any tag will do.
    for k in 0..1_000_000u32 {
        let tag = format!("p{partition:02}-{k}");
        let slot = u32::from(slot(tag.as_bytes()));
        if (lo..hi).contains(&slot) {
            return tag;
        }
    }
    format!("p{partition:02}")
}

/// Redis Cluster slot of a hash tag: CRC16 (XMODEM) mod 16384.
pub(super) fn slot(tag: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in tag {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % SLOTS
}

/// Partition of an event: jump consistent hash of its key (or topic).
pub(super) fn partition_of(routing_key: &str, partitions: u32) -> u32 {
    let mut key = fnv1a(routing_key.as_bytes());
    let (mut b, mut j) = (-1i64, 0i64);
    let buckets = i64::from(partitions.max(1));
    while j < buckets {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

/// FNV-1a 64: a stable hash (std's hasher may change between releases, and
/// replicas built by different compilers must agree).
pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_matches_redis_cluster_examples() {
        // Values from the Redis Cluster specification's CRC16 test vector
        // and `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"123456789"), 0x31C3 % SLOTS);
        assert_eq!(slot(b"foo"), 12182);
    }

    #[test]
    fn partition_tags_spread_over_slot_ranges() {
        let keys = Keys::new("er", 16);
        for p in 0..16 {
            let tag = keys.tag(p);
            let s = u32::from(slot(tag.as_bytes()));
            assert_eq!(s / 1024, p, "tag {tag} slot {s}");
        }
        assert_eq!(keys.history(3), format!("er:h:{{{}}}", keys.tag(3)));
    }

    #[test]
    fn partition_of_is_stable_and_in_range() {
        let a = partition_of("order-42", 16);
        assert_eq!(a, partition_of("order-42", 16));
        assert!(a < 16);
        let mut seen = [0u32; 16];
        for i in 0..1600 {
            seen[partition_of(&format!("k{i}"), 16) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        assert_eq!(partition_of("x", 1), 0);
    }
}
