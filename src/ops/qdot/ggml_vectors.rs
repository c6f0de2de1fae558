//! Replays dot products recorded from ggml itself (`testdata/ggml_vectors.json`, written by
//! `testdata/ggml_vectors.py` from llama-cpp-python's libggml-cpu built with -march=native
//! on an AVX-512 host): same seeded weights and activations, our activation quantizers and
//! kernels, results compared bit for bit (SIMD, portable, `dot4` and panel paths alike).

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8_0, GgmlType,
};
use half::f16;

use super::blocks;
use super::*;

/// splitmix64, as in the recording script.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
}

/// 8 weight rows of `n_blocks` blocks (as candle blocks) and one activation row.
fn inputs<C: GgmlType>(n_blocks: usize, seed: u64, f16_at: &[usize]) -> (Vec<Vec<C>>, Vec<f32>) {
    let size = std::mem::size_of::<C>();
    let mut r = SplitMix(seed);
    let rows = (0..8)
        .map(|_| {
            let mut bytes = Vec::with_capacity(n_blocks * size);
            for _ in 0..n_blocks {
                let mut b: Vec<u8> = (0..size).map(|_| (r.next() >> 56) as u8).collect();
                for &at in f16_at {
                    let v = ((r.next() >> 40) % 2001) as i64 - 1000;
                    let h = f16::from_f32(v as f32 * 5e-5f32);
                    b[at..at + 2].copy_from_slice(&h.to_le_bytes());
                }
                bytes.extend(b);
            }
            let mut blocks = vec![C::zeros(); n_blocks];
            // SAFETY: `blocks` is exactly `bytes.len()` bytes of plain-data ggml blocks.
            unsafe {
                let dst = blocks.as_mut_ptr() as *mut u8;
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len());
            }
            blocks
        })
        .collect();
    let x = (0..n_blocks * C::BLCK_SIZE)
        .map(|_| (((r.next() >> 40) % 60001) as i64 - 30000) as f32 * 1e-4f32)
        .collect();
    (rows, x)
}

#[derive(serde::Deserialize)]
struct Case {
    n_blocks: usize,
    seed: u64,
    bits: Vec<u32>,
}

fn replay<C: GgmlType, K: Kernel>(name: &str, view: fn(&[C]) -> &[K::Weight], f16_at: &[usize]) {
    let all: std::collections::HashMap<String, Vec<Case>> =
        serde_json::from_str(include_str!("testdata/ggml_vectors.json")).expect("valid JSON");
    let cases = all
        .get(name)
        .unwrap_or_else(|| panic!("no recorded cases for {name}"));
    assert!(!cases.is_empty());
    for case in cases {
        let (rows, x) = inputs::<C>(case.n_blocks, case.seed, f16_at);
        // SAFETY: activation blocks are plain data; all-zero is valid; fully overwritten.
        let mut xq: Vec<K::Act> = (0..x.len() / K::BLOCK)
            .map(|_| unsafe { std::mem::zeroed() })
            .collect();
        K::quantize(&x, &mut xq);
        for (i, row) in rows.iter().enumerate() {
            let want = case.bits[i];
            let what = format!("{name}, {} blocks, row {i}", case.n_blocks);
            let got = K::dot(view(row), &xq);
            assert_eq!(
                got.to_bits(),
                want,
                "{what}: {got} vs ggml {}",
                f32::from_bits(want)
            );
            assert_eq!(
                K::dot_portable(view(row), &xq).to_bits(),
                want,
                "{what} (portable)"
            );
            let four = K::dot4(view(row), [&xq[..], &xq[..], &xq[..], &xq[..]]);
            assert!(four.iter().all(|v| v.to_bits() == want), "{what} (dot4)");
            // Eight weight rows from this one on (cyclically): every lane of `dot_rows8`.
            let at = |k: usize| (i + k) % rows.len();
            let w8 = std::array::from_fn(|k| view(&rows[at(k)]));
            let eight = K::dot_rows8(w8, &xq, Ahead::new(w8[0], xq.len()));
            for (k, v) in eight.iter().enumerate() {
                assert_eq!(v.to_bits(), case.bits[at(k)], "{what} (dot_rows8 lane {k})");
            }
        }
    }
}

#[test]
fn legacy_types_match_ggml_bit_for_bit() {
    replay::<BlockQ4_0, Q4_0Dot>("q4_0 vec", blocks::view_q4_0, &[0]);
    replay::<BlockQ4_0, Q4_0Interleaved>("q4_0 gemv", blocks::view_q4_0, &[0]);
    replay::<BlockQ4_1, Q4_1Dot>("q4_1 vec", blocks::view_q4_1, &[0, 2]);
    replay::<BlockQ5_0, Q5_0Dot>("q5_0 vec", blocks::view_q5_0, &[0]);
    replay::<BlockQ5_1, Q5_1Dot>("q5_1 vec", blocks::view_q5_1, &[0, 2]);
    replay::<BlockQ8_0, Q8_0Dot>("q8_0 vec", blocks::view_q8_0, &[0]);
}

#[test]
fn k_quants_match_ggml_bit_for_bit() {
    replay::<BlockQ2K, Q2KDot>("q2_K vec", blocks::view_q2k, &[80, 82]);
    replay::<BlockQ2K, Q2KInterleaved>("q2_K gemv", blocks::view_q2k, &[80, 82]);
    replay::<BlockQ3K, Q3KDot>("q3_K vec", blocks::view_q3k, &[108]);
    replay::<BlockQ4K, Q4KDot>("q4_K vec", blocks::view_q4k, &[0, 2]);
    replay::<BlockQ4K, Q4KInterleaved>("q4_K gemv", blocks::view_q4k, &[0, 2]);
    replay::<BlockQ5K, Q5KDot>("q5_K vec", blocks::view_q5k, &[0, 2]);
    replay::<BlockQ6K, Q6KDot>("q6_K vec", blocks::view_q6k, &[208]);
}

/// The recorded cases through the multi-row panel kernels (every set the host runs,
/// AVX-512 VNNI and AVX2): the activation row in every lane of 1, 2 and 4 groups, so
/// `dot` must give ggml's bits in all 8, 16 and 32 lanes.
fn replay_panels<C: GgmlType, P: panel::RowPanel>(
    name: &str,
    view: fn(&[C]) -> &[P::Weight],
    f16_at: &[usize],
) {
    let isas = super::panel_tests::host_isas::<P>();
    let all: std::collections::HashMap<String, Vec<Case>> =
        serde_json::from_str(include_str!("testdata/ggml_vectors.json")).expect("valid JSON");
    let cases = all
        .get(name)
        .unwrap_or_else(|| panic!("no recorded cases for {name}"));
    for case in cases {
        let (rows, x) = inputs::<C>(case.n_blocks, case.seed, f16_at);
        let eight: Vec<f32> = (0..panel::GROUP).flat_map(|_| x.iter().copied()).collect();
        // One panel per kernel set (their layouts can differ), shared by every row.
        let panels: Vec<(panel::PanelIsa, Vec<P::Block>)> = isas
            .iter()
            .map(|&isa| {
                let mut group = vec![P::ZERO; case.n_blocks];
                P::quantize_group(&eight, x.len(), isa, &mut group);
                (isa, group)
            })
            .collect();
        for (i, row) in rows.iter().enumerate() {
            let want = case.bits[i];
            for (isa, group) in &panels {
                let (isa, group) = (*isa, group.as_slice());
                let what = format!("{name}, {} blocks, row {i}, {isa:?}", case.n_blocks);
                // SAFETY: `host_isas` gave only sets this CPU runs.
                let (r8, r16, r32) = unsafe {
                    (
                        P::dot::<1>(isa, view(row), [&group]),
                        P::dot::<2>(isa, view(row), [&group, &group]),
                        P::dot::<4>(isa, view(row), [&group, &group, &group, &group]),
                    )
                };
                let all = |r: &[[f32; panel::GROUP]]| {
                    r.as_flattened().iter().all(|v| v.to_bits() == want)
                };
                assert!(all(&r8), "{what} (1 group)");
                assert!(all(&r16), "{what} (2 groups)");
                assert!(all(&r32), "{what} (4 groups)");
            }
        }
    }
}

#[test]
fn panel_kernels_match_ggml_bit_for_bit() {
    use panel::{Q4KPanel, Q4_1Panel, Q5_0Panel, Q6KPanel, Q8_0Panel};
    replay_panels::<BlockQ4_1, Q4_1Panel>("q4_1 vec", blocks::view_q4_1, &[0, 2]);
    replay_panels::<BlockQ5_0, Q5_0Panel>("q5_0 vec", blocks::view_q5_0, &[0]);
    replay_panels::<BlockQ8_0, Q8_0Panel>("q8_0 vec", blocks::view_q8_0, &[0]);
    replay_panels::<BlockQ6K, Q6KPanel>("q6_K vec", blocks::view_q6k, &[208]);
    replay_panels::<BlockQ4K, Q4KPanel>("q4_K gemv", blocks::view_q4k, &[0, 2]);
}
