//! One seed, many independent random streams.
//!
//! Under `--cfg madsim`, getrandom and `rand`'s thread RNG are not deterministic, so every
//! random choice the simulator (or a workload) makes comes from a ChaCha stream keyed by the
//! world's seed and salted by the concern it serves. Salting keeps the concerns independent:
//! adding one draw to the network's stream does not shift what the fault scheduler picks.

use fjord_replication::NodeId;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The concern a random stream serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Salt {
    /// Swarm choices: cluster size, enabled fault classes and their rates.
    Swarm,
    /// Latency, loss, duplication, reordering.
    Network,
    /// Disk latency, sync failures, crash outcomes and bit flips.
    Disk,
    /// When and where the fault scheduler strikes.
    Faults,
    /// Clock offsets and drift.
    Clock,
    /// The workload's own choices (values, which partition, when).
    Workload,
    /// One incarnation of one node (server or client): its per-incarnation seed.
    Node { node: NodeId, incarnation: u32 },
    /// A workload-defined stream.
    Custom(u32),
}

impl Salt {
    fn stream_id(self) -> u64 {
        match self {
            Salt::Swarm => 1,
            Salt::Network => 2,
            Salt::Disk => 3,
            Salt::Faults => 4,
            Salt::Clock => 5,
            Salt::Workload => 6,
            Salt::Custom(c) => (1 << 62) | u64::from(c),
            Salt::Node { node, incarnation } => {
                (1 << 63) | (u64::from(node.0) << 32) | u64::from(incarnation)
            }
        }
    }
}

/// The random stream for `salt` in the world of `seed`.
pub fn stream(seed: u64, salt: Salt) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(salt.stream_id());
    rng
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngCore;

    #[test]
    fn streams_are_reproducible_and_independent() {
        let draw = |seed, salt| stream(seed, salt).next_u64();
        assert_eq!(draw(7, Salt::Network), draw(7, Salt::Network));
        assert_ne!(draw(7, Salt::Network), draw(7, Salt::Disk));
        assert_ne!(draw(7, Salt::Network), draw(8, Salt::Network));
        let node = |n, incarnation| Salt::Node {
            node: NodeId(n),
            incarnation,
        };
        assert_ne!(draw(7, node(1, 0)), draw(7, node(1, 1)));
        assert_ne!(draw(7, node(1, 0)), draw(7, node(2, 0)));
        assert_ne!(draw(7, Salt::Custom(1)), draw(7, Salt::Custom(2)));
    }
}
