//! Hashers for the tables whose keys a peer cannot choose.
//!
//! std's default, SipHash, is keyed so that a table cannot be flooded with
//! keys chosen to collide as they are inserted. These tables only ever hold
//! keys this side made: msgids it allocated, the reactor's tokens, the
//! method names the program registered. A peer can only make them look a
//! key up, which walks no longer a chain than this side's own keys make. So
//! one multiplication per word does, where SipHash cost a tenth of a
//! server's own work per request. std has no such hasher.

use std::hash::{BuildHasherDefault, Hasher};

/// Fibonacci hashing's multiplier: 2^64 divided by the golden ratio.
const K: u64 = 0x9E37_79B9_7F4A_7C15;

/// Integer keys (msgids, tokens, ids): one multiplication.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

/// A product's low bits depend only on its factors' low bits, and the table
/// picks buckets by the low bits: the well-mixed high bits are turned down.
fn spread(h: u64) -> u64 {
    h.rotate_left(26)
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        spread(self.0)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | b as u64).wrapping_mul(K);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.write_u64(id as u64);
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = (self.0 ^ id).wrapping_mul(K);
    }

    fn write_usize(&mut self, id: usize) {
        self.write_u64(id as u64);
    }
}

/// String keys (method names): a word at a time, one multiplication each.
#[derive(Default)]
pub(crate) struct NameHasher(u64);

impl Hasher for NameHasher {
    fn finish(&self) -> u64 {
        spread(self.0)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        let rest = words.remainder();
        let mut tail = [0u8; 8];
        tail[..rest.len()].copy_from_slice(rest);
        let tail = u64::from_le_bytes(tail) ^ (rest.len() as u64) << 59;
        self.0 = (self.0.rotate_left(5) ^ tail).wrapping_mul(K);
    }
}

pub(crate) type BuildIdHasher = BuildHasherDefault<IdHasher>;
pub(crate) type BuildNameHasher = BuildHasherDefault<NameHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};
    use std::hash::BuildHasher;

    #[test]
    fn names_that_differ_anywhere_hash_apart() {
        let names = [
            "",
            "a",
            "b",
            "ab",
            "ba",
            "add",
            "adc",
            "echo",
            "echo\0",
            "12345678",
            "123456789",
            "12345679",
            "a_rather_long_method_name",
            "a_rather_long_method_namf",
        ];
        let hashes: HashSet<u64> = names
            .iter()
            .map(|n| BuildNameHasher::default().hash_one(n))
            .collect();
        assert_eq!(hashes.len(), names.len());
    }

    #[test]
    fn tables_find_what_they_hold() {
        let mut by_name: HashMap<String, usize, BuildNameHasher> = HashMap::default();
        let mut by_id: HashMap<u64, usize, BuildIdHasher> = HashMap::default();
        for i in 0..2000 {
            by_name.insert(format!("method_{i}"), i);
            by_id.insert(i as u64 * 4096, i);
        }
        for i in 0..2000 {
            assert_eq!(by_name.get(&format!("method_{i}")), Some(&i));
            assert_eq!(by_id.get(&(i as u64 * 4096)), Some(&i));
        }
        assert_eq!(by_name.get("method_2000"), None);
        assert_eq!(by_id.get(&1), None);
    }
}
