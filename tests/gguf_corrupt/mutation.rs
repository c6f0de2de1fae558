//! Seeded mutation loop: 20,000 corrupted copies of a valid file (bit flips, interesting
//! integers, splices, truncation, deletions) must each parse to `Ok` or `Err`, never panic.
//! A panic fails the test with the seed that reproduces it.

use std::panic::{catch_unwind, AssertUnwindSafe};

use tessera::model::gguf::GgufFile;

use crate::writer::sample_builder;

/// SplitMix64: tiny, seedable, stable across dependency upgrades.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING_U64: [u64; 8] = [0, 1, 5, 0xFF, 1 << 31, 1 << 32, u64::MAX / 2, u64::MAX];

fn mutate(bytes: &mut Vec<u8>, rng: &mut Rng) {
    for _ in 0..=rng.below(4) {
        let pos = rng.below(bytes.len());
        match rng.below(6) {
            0 => bytes[pos] ^= 1 << rng.below(8),
            1 => bytes[pos] = rng.next() as u8,
            2 => {
                let value = INTERESTING_U64[rng.below(INTERESTING_U64.len())].to_le_bytes();
                let width = [1, 2, 4, 8][rng.below(4)];
                let end = (pos + width).min(bytes.len());
                bytes[pos..end].copy_from_slice(&value[..end - pos]);
            }
            3 => {
                let from = rng.below(bytes.len());
                let len = rng.below(32).min(bytes.len() - from);
                let chunk = bytes[from..from + len].to_vec();
                bytes.splice(pos..pos, chunk);
            }
            4 => bytes.truncate(pos),
            _ => {
                let len = rng.below(16).min(bytes.len() - pos);
                bytes.drain(pos..pos + len);
            }
        }
        if bytes.is_empty() {
            return;
        }
    }
}

/// Parses and, if valid, reads every value and tensor through the public API.
fn exercise(bytes: Vec<u8>) {
    let Ok(file) = GgufFile::from_bytes(bytes) else {
        return;
    };
    for (key, _) in file.metadata() {
        let _ = (file.get_u32(key), file.get_u64(key), file.get_f32(key));
        let _ = (
            file.get_bool(key),
            file.get_str(key),
            file.get_str_array(key),
        );
        let _ = (file.get_i32_array(key), file.get_f32_array(key));
    }
    for info in file.tensors() {
        assert_eq!(file.tensor_data(info).len(), info.size_bytes);
    }
}

#[test]
fn random_mutations_never_panic() {
    let valid = sample_builder().build();
    let base_seed = 0x7E55_E4A0_u64;
    let mut rejected = 0;
    for iteration in 0..20_000u64 {
        let seed = base_seed + iteration;
        let mut rng = Rng(seed);
        let mut bytes = valid.clone();
        mutate(&mut bytes, &mut rng);
        if GgufFile::from_bytes(bytes.clone()).is_err() {
            rejected += 1;
        }
        if catch_unwind(AssertUnwindSafe(|| exercise(bytes))).is_err() {
            panic!("GGUF parser panicked on mutation seed {seed:#x}");
        }
    }
    // Sanity: the mutations must actually break most files.
    assert!(
        rejected > 10_000,
        "only {rejected} of 20000 mutated files were rejected"
    );
}
