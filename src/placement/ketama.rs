//! twemproxy's ketama continuum, reproduced exactly, so keys live where nutcracker 0.5 put them
//! and a twemproxy user can switch to keygate without moving data.
//!
//! Why not the `hashring` crate: placement must match twemproxy's bit for bit: its server names
//! (`host:port`, or the configured name), 160 points per server scaled by weight with its float
//! rounding, four points per MD5 digest, and its key hashes (FNV-1a truncated to 32 bits, over
//! *signed* chars). A general-purpose ring places virtual nodes its own way.

use md5::{Digest, Md5};

/// Key hash functions, as twemproxy names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hash {
    Fnv1a64,
    Fnv164,
    Fnv1a32,
    Fnv132,
    Md5,
}

impl Hash {
    pub fn from_name(name: &str) -> Option<Hash> {
        Some(match name {
            "fnv1a_64" => Hash::Fnv1a64,
            "fnv1_64" => Hash::Fnv164,
            "fnv1a_32" => Hash::Fnv1a32,
            "fnv1_32" => Hash::Fnv132,
            "md5" => Hash::Md5,
            _ => return None,
        })
    }

    pub fn hash(self, key: &[u8]) -> u32 {
        // twemproxy reads keys as C `char`, signed on x86: bytes >= 0x80 sign-extend.
        let signed = |b: u8| b as i8 as i32 as u32;
        match self {
            Hash::Fnv1a64 => key.iter().fold(0x8422_2325u32, |h, &b| {
                (h ^ signed(b)).wrapping_mul(0x0000_01b3)
            }),
            Hash::Fnv164 => {
                let h = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                    h.wrapping_mul(0x0100_0000_01b3) ^ (b as i8 as i64 as u64)
                });
                h as u32
            }
            Hash::Fnv1a32 => key.iter().fold(2_166_136_261u32, |h, &b| {
                (h ^ signed(b)).wrapping_mul(16_777_619)
            }),
            Hash::Fnv132 => key.iter().fold(2_166_136_261u32, |h, &b| {
                h.wrapping_mul(16_777_619) ^ signed(b)
            }),
            Hash::Md5 => md5_point(key, 0),
        }
    }
}

/// The `alignment`-th little-endian u32 of the MD5 digest of `data`.
fn md5_point(data: &[u8], alignment: usize) -> u32 {
    let digest = Md5::digest(data);
    let at = alignment * 4;
    u32::from_le_bytes([digest[at], digest[at + 1], digest[at + 2], digest[at + 3]])
}

/// A server on the ring: the name its points are derived from, and its weight.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub weight: u32,
}

/// The continuum: sorted points, each naming a server by index.
#[derive(Debug)]
pub struct Ring {
    points: Vec<(u32, u32)>,
    hash: Hash,
    hash_tag: Option<[u8; 2]>,
}

const POINTS_PER_SERVER: f32 = 160.0;

impl Ring {
    pub fn new(nodes: &[Node], hash: Hash, hash_tag: Option<[u8; 2]>) -> Ring {
        Ring::without(nodes, &[], hash, hash_tag)
    }

    /// The ring of the servers not in `ejected` (indexes into `nodes`), as twemproxy rebuilds it
    /// with `auto_eject_hosts`: weights and point counts over the live servers only, each point
    /// still naming its server's index in `nodes`.
    pub fn without(
        nodes: &[Node],
        ejected: &[usize],
        hash: Hash,
        hash_tag: Option<[u8; 2]>,
    ) -> Ring {
        let live_nodes = || {
            nodes
                .iter()
                .enumerate()
                .filter(|(index, _)| !ejected.contains(index))
        };
        let total: u32 = live_nodes().map(|(_, n)| n.weight).sum();
        let live = live_nodes().count() as f32;
        let mut points = Vec::new();
        for (index, node) in live_nodes() {
            // twemproxy's arithmetic exactly: float, then a double nudge, then floorf.
            let pct = node.weight as f32 / total as f32;
            let scaled = ((pct * POINTS_PER_SERVER / 4.0 * live) as f64 + 0.0000000001) as f32;
            let per_server = scaled.floor() as u32 * 4;
            for i in 0..per_server / 4 {
                let host = format!("{}-{}", node.name, i);
                for alignment in 0..4 {
                    points.push((md5_point(host.as_bytes(), alignment), index as u32));
                }
            }
        }
        // Stable, like glibc's qsort for this input size (a merge sort): equal points keep the
        // order of the server list.
        points.sort_by_key(|&(value, _)| value);
        Ring {
            points,
            hash,
            hash_tag,
        }
    }

    /// The part of a key that is hashed: the text between the hash tag's two characters, when
    /// both are present and enclose at least one byte; else the whole key.
    pub fn hashed_part<'a>(&self, key: &'a [u8]) -> &'a [u8] {
        let Some([open, close]) = self.hash_tag else {
            return key;
        };
        if let Some(start) = key.iter().position(|&b| b == open) {
            if let Some(len) = key[start + 1..].iter().position(|&b| b == close) {
                if len > 0 {
                    return &key[start + 1..start + 1 + len];
                }
            }
        }
        key
    }

    /// The index of the server a key lives on.
    pub fn server_of(&self, key: &[u8]) -> usize {
        let hash = self.hash.hash(self.hashed_part(key));
        let at = self.points.partition_point(|&(value, _)| value < hash);
        let (_, server) = self.points.get(at).unwrap_or(&self.points[0]);
        *server as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_64_matches_twemproxys_truncated_variant() {
        // Reference values computed by hand from twemproxy's definition.
        assert_eq!(Hash::Fnv1a64.hash(b""), 0x8422_2325);
        let mut h = 0x8422_2325u32;
        for &b in b"foo" {
            h = (h ^ b as u32).wrapping_mul(0x1b3);
        }
        assert_eq!(Hash::Fnv1a64.hash(b"foo"), h);
        // A byte >= 0x80 is sign-extended before the xor.
        let high = (0x8422_2325u32 ^ 0xffff_ff80).wrapping_mul(0x1b3);
        assert_eq!(Hash::Fnv1a64.hash(&[0x80]), high);
    }

    #[test]
    fn points_follow_weights() {
        let nodes = [
            Node {
                name: "a:1".into(),
                weight: 1,
            },
            Node {
                name: "b:1".into(),
                weight: 2,
            },
            Node {
                name: "c:1".into(),
                weight: 1,
            },
        ];
        let ring = Ring::new(&nodes, Hash::Fnv1a64, None);
        let count = |i| ring.points.iter().filter(|p| p.1 == i).count();
        assert_eq!((count(0), count(1), count(2)), (120, 240, 120));
        assert!(ring.points.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn an_ejected_server_leaves_the_ring_and_only_its_keys_move() {
        let nodes: Vec<Node> = (0..3)
            .map(|i| Node {
                name: format!("10.0.0.{i}:6379"),
                weight: 1,
            })
            .collect();
        let whole = Ring::new(&nodes, Hash::Fnv1a64, None);
        let ejected = Ring::without(&nodes, &[1], Hash::Fnv1a64, None);
        let mut moved = 0;
        for i in 0..3000 {
            let key = format!("key:{i}");
            let (before, after) = (
                whole.server_of(key.as_bytes()),
                ejected.server_of(key.as_bytes()),
            );
            assert_ne!(after, 1);
            if before == 1 {
                moved += 1;
            } else {
                assert_eq!(before, after, "{key} moved though its server stayed");
            }
        }
        assert!(moved > 500, "{moved}");
    }

    #[test]
    fn hash_tags_pick_the_enclosed_part() {
        let ring = Ring::new(
            &[Node {
                name: "a:1".into(),
                weight: 1,
            }],
            Hash::Fnv1a64,
            Some(*b"{}"),
        );
        assert_eq!(ring.hashed_part(b"user:{42}:name"), b"42");
        assert_eq!(ring.hashed_part(b"user:{}:name"), b"user:{}:name");
        assert_eq!(ring.hashed_part(b"user:{42"), b"user:{42");
        assert_eq!(ring.hashed_part(b"plain"), b"plain");
    }
}
