//! Kafka's default partitioner, bit for bit: a keyed record goes to
//! `toPositive(murmur2(key)) % partitions` (so fjord and Java/librdkafka "murmur2_random"
//! producers put a key on the same partition); a keyless record goes to a "sticky" partition
//! that changes only when a batch for it is completed (KIP-480), picked at random among the
//! partitions that have a leader.

use std::collections::BTreeMap;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), returning the same
/// signed value as the Java client.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        if tail.len() >= 3 {
            h ^= u32::from(tail[2]) << 16;
        }
        if tail.len() >= 2 {
            h ^= u32::from(tail[1]) << 8;
        }
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Java's `Utils.toPositive`: clears the sign bit (not `abs`, which overflows on MIN).
pub fn to_positive(n: i32) -> i32 {
    n & 0x7fff_ffff
}

/// The partition of a keyed record among `partitions` (> 0) partitions.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    assert!(partitions > 0);
    to_positive(murmur2(key)) % partitions
}

/// Sticky partition choice for keyless records, per topic.
#[derive(Debug, Default)]
pub struct StickyPartitioner {
    current: BTreeMap<String, i32>,
}

impl StickyPartitioner {
    /// The partition for the next keyless record of `topic`. `available` are the partitions
    /// with a known leader (may be empty: then any of `0..partitions`).
    pub fn partition(
        &mut self,
        topic: &str,
        partitions: i32,
        available: &[i32],
        rng: &mut ChaCha8Rng,
    ) -> i32 {
        assert!(partitions > 0);
        if let Some(&p) = self.current.get(topic) {
            if p < partitions {
                return p;
            }
        }
        self.choose(topic, partitions, available, None, rng)
    }

    /// The sticky partition of `topic` if one is chosen and valid for `partitions` (what
    /// [`StickyPartitioner::partition`] answers without choosing).
    pub fn current(&self, topic: &str, partitions: i32) -> Option<i32> {
        self.current.get(topic).copied().filter(|p| *p < partitions)
    }

    /// A batch of `topic` on `completed` was closed: move keyless records elsewhere, as
    /// Kafka does, so that they spread over partitions batch by batch.
    pub fn batch_completed(
        &mut self,
        topic: &str,
        completed: i32,
        partitions: i32,
        available: &[i32],
        rng: &mut ChaCha8Rng,
    ) {
        if self.current.get(topic) == Some(&completed) {
            self.choose(topic, partitions, available, Some(completed), rng);
        }
    }

    fn choose(
        &mut self,
        topic: &str,
        partitions: i32,
        available: &[i32],
        avoid: Option<i32>,
        rng: &mut ChaCha8Rng,
    ) -> i32 {
        let candidates: Vec<i32> = if available.is_empty() {
            (0..partitions).collect()
        } else {
            available
                .iter()
                .copied()
                .filter(|p| *p < partitions)
                .collect()
        };
        let others: Vec<i32> = candidates
            .iter()
            .copied()
            .filter(|p| Some(*p) != avoid)
            .collect();
        let pool = if others.is_empty() {
            &candidates
        } else {
            &others
        };
        let p = if pool.is_empty() {
            rng.gen_range(0..partitions)
        } else {
            pool[rng.gen_range(0..pool.len())]
        };
        self.current.insert(topic.to_string(), p);
        p
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    /// Kafka's `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_matches_the_java_client() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key), expected, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn keyed_partition_is_to_positive_modulo() {
        // toPositive(-790332482) = 1357151166; 1357151166 % 50 = 16.
        assert_eq!(to_positive(-790_332_482), 1_357_151_166);
        assert_eq!(partition_for_key(b"foobar", 50), 16);
        assert_eq!(to_positive(i32::MIN), 0);
        for n in 1..20 {
            let p = partition_for_key(b"some key", n);
            assert!((0..n).contains(&p));
        }
    }

    #[test]
    fn sticky_partition_stays_until_its_batch_completes_then_moves() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut sticky = StickyPartitioner::default();
        let first = sticky.partition("t", 4, &[0, 1, 2, 3], &mut rng);
        for _ in 0..10 {
            assert_eq!(sticky.partition("t", 4, &[0, 1, 2, 3], &mut rng), first);
        }
        // Completing a batch of another partition changes nothing.
        sticky.batch_completed("t", (first + 1) % 4, 4, &[0, 1, 2, 3], &mut rng);
        assert_eq!(sticky.partition("t", 4, &[0, 1, 2, 3], &mut rng), first);
        sticky.batch_completed("t", first, 4, &[0, 1, 2, 3], &mut rng);
        let second = sticky.partition("t", 4, &[0, 1, 2, 3], &mut rng);
        assert_ne!(second, first);
        // Over many batches every available partition is used, unavailable ones never.
        let mut sticky = StickyPartitioner::default();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let p = sticky.partition("t", 4, &[1, 3], &mut rng);
            seen.insert(p);
            sticky.batch_completed("t", p, 4, &[1, 3], &mut rng);
        }
        assert!(seen.contains(&1) && seen.contains(&3), "{seen:?}");
        assert!(!seen.contains(&0) && !seen.contains(&2), "{seen:?}");
    }

    #[test]
    fn sticky_with_no_available_partition_still_picks_one() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut sticky = StickyPartitioner::default();
        let p = sticky.partition("t", 3, &[], &mut rng);
        assert!((0..3).contains(&p));
        // Fewer partitions than remembered: choose again.
        let mut sticky = StickyPartitioner::default();
        sticky.current.insert("t".into(), 7);
        assert!((0..2).contains(&sticky.partition("t", 2, &[], &mut rng)));
    }
}
