//! Panel kernels against the single-row kernels, bit for bit: random weights (candle's
//! quantization and raw random bytes), several row widths and row counts (partial
//! groups, one group, group pairs), plus the panel quantizers against the row ones and
//! the dispatch (`chosen_isa`) against the process's level. Every kernel set the host
//! can run is checked (`PanelIsa` passed directly, whatever `TESSERA_CPU_FEATURES`
//! says): on an AVX-512 VNNI host both the VNNI and the AVX2 kernels; a set the CPU
//! lacks is skipped with a message.

use candle_core::quantized::k_quants::{
    BlockQ4K, BlockQ4_1, BlockQ5_0, BlockQ6K, BlockQ8_0, GgmlType,
};
use half::f16;
use rand::Rng;

use super::blocks::{self, Q4_1, Q5_0, Q8_0, Q8_1};
use super::panel::{
    chosen_isa, get_row, PanelIsa, PanelQ8_0, PanelQ8_1, PreparedBlock, Q4KPanel, Q4_1Panel,
    Q5_0Panel, Q6KPanel, Q8_0Panel, RowPanel, GROUP,
};
use super::tests::{rng, weights};
use super::{Kernel, Q4KInterleaved, Q4_1Dot, Q5_0Dot, Q6KDot, Q8_0Dot};
use crate::ops::cpu_features::{self, Level};

/// `m × k` activations with a few rows of very different magnitude and an all-zero row.
fn activations(m: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    let mut x: Vec<f32> = (0..m * k).map(|_| r.random_range(-3.0f32..3.0)).collect();
    for (i, row) in x.chunks_exact_mut(k).enumerate() {
        match i % 5 {
            1 => row.iter_mut().for_each(|v| *v *= 1e-3),
            3 => row.iter_mut().for_each(|v| *v *= 40.0),
            4 if i == 4 => row.fill(0.0),
            _ => {}
        }
    }
    x
}

/// Panels of all `m` rows for `isa`'s kernels: `[groups][kb]`.
fn panels<P: RowPanel>(isa: PanelIsa, x: &[f32], m: usize, k: usize) -> Vec<Vec<P::Block>> {
    (0..m.div_ceil(GROUP))
        .map(|g| {
            let mut out = vec![P::ZERO; k / P::ELEMS];
            let rows = g * GROUP..((g + 1) * GROUP).min(m);
            P::quantize_group(&x[rows.start * k..rows.end * k], k, isa, &mut out);
            out
        })
        .collect()
}

/// Every row of `isa`'s panel kernels (`dot` on 1, 2 and 4 groups from each group on,
/// up to `max_groups`) equals `K::dot` (and its scalar twin `K::dot_portable`) of the
/// row-quantized activations, bit for bit.
fn check_rows<P, K>(isa: PanelIsa, w: &[K::Weight], x: &[f32], m: usize, k: usize, what: &str)
where
    P: RowPanel<Weight = K::Weight>,
    K: Kernel,
{
    let groups = panels::<P>(isa, x, m, k);
    let kb = k / P::ELEMS;
    // SAFETY: activation blocks are plain data; all-zero is valid; fully overwritten.
    let mut row_q: Vec<K::Act> = (0..kb).map(|_| unsafe { std::mem::zeroed() }).collect();
    let mut want = vec![0f32; m];
    for (r, v) in want.iter_mut().enumerate() {
        K::quantize(&x[r * k..(r + 1) * k], &mut row_q);
        *v = K::dot(w, &row_q);
        let portable = K::dot_portable(w, &row_q);
        assert_eq!(
            v.to_bits(),
            portable.to_bits(),
            "{what}: row {r}: dot vs scalar twin"
        );
    }
    for g in 0..groups.len() {
        let at = format!("{isa:?} {what}: groups from {g}, {m} rows");
        check_call::<P, 1>(isa, w, &groups[g..], &want[g * GROUP..], &at);
        if P::max_groups(isa) >= 2 {
            check_call::<P, 2>(isa, w, &groups[g..], &want[g * GROUP..], &at);
        }
        if P::max_groups(isa) >= 4 {
            check_call::<P, 4>(isa, w, &groups[g..], &want[g * GROUP..], &at);
        }
    }
}

/// `P::dot::<G>` on the first `G` of `groups` (when there are that many), and
/// `dot_prepared` of the prepared row where `isa`'s kernels take one: each row's result
/// is `want`'s.
fn check_call<P: RowPanel, const G: usize>(
    isa: PanelIsa,
    w: &[P::Weight],
    groups: &[Vec<P::Block>],
    want: &[f32],
    at: &str,
) {
    if groups.len() < G {
        return;
    }
    let x = std::array::from_fn(|i| &groups[i][..]);
    // SAFETY: the caller checked that `isa` is one of `P::ISAS` the host runs.
    let mut calls = vec![("dot", unsafe { P::dot::<G>(isa, w, x) })];
    if P::prepares(isa) {
        let mut prepared = vec![PreparedBlock::ZERO; w.len()];
        // SAFETY: as above, and `prepares(isa)`.
        unsafe { P::prepare(isa, w, &mut prepared) };
        calls.push(("dot_prepared", unsafe {
            P::dot_prepared::<G>(isa, &prepared, x)
        }));
    }
    for (call, got) in calls {
        for (r, (&got, &want)) in got.as_flattened().iter().zip(want).enumerate() {
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "{call}::<{G}> {at}: row {r}: {got} vs {want}"
            );
        }
    }
}

/// Weight-row lengths in blocks every panel type is checked at.
const ROW_BLOCKS: [usize; 5] = [1, 2, 3, 18, 48];

fn check_type<C, P, K>(view: fn(&[C]) -> &[K::Weight], f16_at: &[usize], row_blocks: &[usize])
where
    C: GgmlType,
    P: RowPanel<Weight = K::Weight>,
    K: Kernel,
{
    for &isa in host_isas::<P>().iter() {
        for (case, &n_blocks) in row_blocks.iter().enumerate() {
            for random_bytes in [false, true] {
                let seed = case as u64 * 10 + random_bytes as u64;
                let w = weights::<C>(n_blocks, random_bytes, f16_at, seed);
                let k = n_blocks * P::ELEMS;
                for m in [1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 24, 33] {
                    let x = activations(m, k, seed * 31 + m as u64);
                    let what = format!("{n_blocks} blocks, random bytes {random_bytes}");
                    check_rows::<P, K>(isa, view(&w), &x, m, k, &what);
                }
            }
        }
    }
}

/// `P`'s kernel sets this CPU can run (each skipped one said on stderr).
pub(super) fn host_isas<P: RowPanel>() -> Vec<PanelIsa> {
    let (run, skip): (Vec<PanelIsa>, Vec<PanelIsa>) = P::ISAS.iter().partition(|isa| isa.on_host());
    for isa in skip {
        eprintln!("skipped: this CPU cannot run the {isa:?} panel kernels");
    }
    run
}

#[test]
fn q4_1_panels_equal_dot_bit_for_bit() {
    // 300 blocks: more than the AVX2 kernel converts scales for at a time (`SCALE_CHUNK`).
    let row_blocks = [ROW_BLOCKS.as_slice(), &[300]].concat();
    check_type::<BlockQ4_1, Q4_1Panel, Q4_1Dot>(blocks::view_q4_1, &[0, 2], &row_blocks);
}

#[test]
fn q8_0_panels_equal_dot_bit_for_bit() {
    // 300 blocks: more than the VNNI kernel prepares at a time (`PREPARED_BLOCKS`).
    let row_blocks = [ROW_BLOCKS.as_slice(), &[300]].concat();
    check_type::<BlockQ8_0, Q8_0Panel, Q8_0Dot>(blocks::view_q8_0, &[0], &row_blocks);
}

#[test]
fn q5_0_panels_equal_dot_bit_for_bit() {
    // 300 blocks: more than the AVX2 kernel rewrites as Q8_0 (`Q5_0_REWRITE_BLOCKS`) and
    // the VNNI one prepares (`PREPARED_BLOCKS`) at a time.
    let row_blocks = [ROW_BLOCKS.as_slice(), &[300]].concat();
    check_type::<BlockQ5_0, Q5_0Panel, Q5_0Dot>(blocks::view_q5_0, &[0], &row_blocks);
}

#[test]
fn q6k_panels_equal_dot_bit_for_bit() {
    check_type::<BlockQ6K, Q6KPanel, Q6KDot>(blocks::view_q6k, &[208], &ROW_BLOCKS);
}

#[test]
fn q4k_panels_equal_the_repacked_order_bit_for_bit() {
    check_type::<BlockQ4K, Q4KPanel, Q4KInterleaved>(blocks::view_q4k, &[0, 2], &ROW_BLOCKS);
}

/// The AVX-512 Q4_1 and Q5_0 kernels round `d_a · (d_w · Σ) + acc` where ggml rounds
/// `(d_w · d_a) · Σ + acc` (both products exact for values within ±16, `avx512` module
/// header). Bit for bit at the extremes too: the largest lane sums (every weight −16 or
/// 15, every activation quant ±127) against the largest, smallest normal, subnormal and
/// zero f16 scales of either sign.
#[test]
fn split_scale_products_match_at_the_extremes() {
    let scales = [
        65504.0f32,
        -65504.0,
        6.1035156e-5,
        -5.9604645e-8,
        0.0,
        0.0123,
    ];
    let k = 2 * scales.len() * 32;
    // Rows of ±3 quantize to ±127; the last rows mix signs and magnitudes.
    let m = 12;
    let x: Vec<f32> = (0..m * k)
        .map(|i| match (i / k) % 4 {
            0 => 3.0,
            1 => -3.0,
            2 => [3.0, -3.0][i % 2],
            _ => ((i * 7) % 13) as f32 - 6.0,
        })
        .collect();
    let d = |i: usize| f16::from_f32(scales[i / 2]);
    // Each scale twice: every value −16 (nibbles 0, no fifth bits), then every value 15.
    let q5: Vec<Q5_0> = (0..2 * scales.len())
        .map(|i| {
            let fill = [0x00, 0xFF][i % 2];
            Q5_0 {
                d: d(i),
                qh: [fill; 4],
                qs: [fill; 16],
            }
        })
        .collect();
    // Each scale twice: every nibble 0, then every nibble 15; the minimum 1.
    let q41: Vec<Q4_1> = (0..2 * scales.len())
        .map(|i| Q4_1 {
            d: d(i),
            m: f16::ONE,
            qs: [[0x00, 0xFF][i % 2]; 16],
        })
        .collect();
    for &isa in host_isas::<Q5_0Panel>().iter() {
        check_rows::<Q5_0Panel, Q5_0Dot>(isa, &q5, &x, m, k, "Q5_0 extremes");
    }
    for &isa in host_isas::<Q4_1Panel>().iter() {
        check_rows::<Q4_1Panel, Q4_1Dot>(isa, &q41, &x, m, k, "Q4_1 extremes");
    }
}

/// The panel matmul runs the VNNI kernels at level avx512 on a VNNI host, the AVX2 ones
/// below that down to avx2, none at scalar.
#[test]
fn dispatch_follows_the_process_level() {
    let chosen = cpu_features::chosen();
    let want = match (chosen.level, chosen.vnni) {
        (_, true) => Some(PanelIsa::Avx512Vnni),
        (Level::Scalar, _) => None,
        _ => Some(PanelIsa::Avx2),
    };
    assert_eq!(chosen_isa::<Q4_1Panel>(), want, "{chosen:?}");
    assert_eq!(chosen_isa::<Q8_0Panel>(), want, "{chosen:?}");
    assert_eq!(chosen_isa::<Q5_0Panel>(), want, "{chosen:?}");
    assert_eq!(chosen_isa::<Q6KPanel>(), want, "{chosen:?}");
    assert_eq!(chosen_isa::<Q4KPanel>(), want, "{chosen:?}");
}

#[test]
fn panel_quantizers_match_the_row_quantizers_and_zero_the_padding() {
    let (m, k) = (5, 96);
    let x = activations(m, k, 7);
    for isa in [PanelIsa::Avx512Vnni, PanelIsa::Avx2] {
        check_quantizers(&x, m, k, isa);
    }
}

/// `panel_quantizers_match_the_row_quantizers_and_zero_the_padding` for `isa`'s layout:
/// Q8_0 quants XOR-ed with its bias (+128 for VNNI, none for AVX2).
fn check_quantizers(x: &[f32], m: usize, k: usize, isa: PanelIsa) {
    let q81 = panels::<Q4_1Panel>(isa, x, m, k);
    let q80 = panels::<Q8_0Panel>(isa, x, m, k);
    let bias = match isa {
        PanelIsa::Avx512Vnni => 0x80,
        PanelIsa::Avx2 => 0,
    };
    for r in 0..GROUP {
        let mut row81 = [Q8_1::default(); 3];
        let mut row80: Vec<Q8_0> = (0..3)
            .map(|_| Q8_0 {
                d: f16::ZERO,
                qs: [0; 32],
            })
            .collect();
        if r < m {
            Q4_1Dot::quantize(&x[r * k..(r + 1) * k], &mut row81);
            Q8_0Dot::quantize(&x[r * k..(r + 1) * k], &mut row80);
        }
        for b in 0..3 {
            let p: &PanelQ8_1 = &q81[0][b];
            assert_eq!(
                (get_row(&p.qs, r), p.d[r], p.s[r]),
                (row81[b].qs, row81[b].d, row81[b].s)
            );
            let p: &PanelQ8_0 = &q80[0][b];
            assert_eq!(
                get_row(&p.qs, r),
                row80[b].qs.map(|q| q as u8 ^ bias),
                "{isa:?} row {r} block {b}"
            );
            assert_eq!(p.d[r], row80[b].d.to_f32());
        }
    }
}

#[test]
#[should_panic(expected = "rows > 8")]
fn a_group_holds_at_most_eight_rows() {
    let x = vec![0f32; 9 * 32];
    let mut out = vec![Q4_1Panel::ZERO; 1];
    Q4_1Panel::quantize_group(&x, 32, PanelIsa::Avx2, &mut out);
}

/// Kernel-only timing (weights and panels in L1): ns per weight block of one `dot::<4>`
/// call (32 activation rows) of every panel type, each kernel set the host runs, best of 7,
/// next to a dependent-add loop that measures the clock: the tool for A/B runs of a kernel
/// change. `cargo test --release --lib panel_tests::bench -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_kernel_in_l1() {
    use std::time::Instant;
    let t = Instant::now();
    // SAFETY: register-only arithmetic: 10^8 iterations of 4 dependent 64-bit multiplies,
    // 3 cycles each on Intel and AMD cores alike (dependent adds of an immediate are not a
    // clock: Golden Cove retires them faster than one per cycle).
    unsafe {
        std::arch::asm!(
            "2:", "imul {x}, {x}", "imul {x}, {x}", "imul {x}, {x}", "imul {x}, {x}",
            "dec {n}", "jnz 2b",
            x = inout(reg) 1u64 => _, n = inout(reg) 100_000_000u64 => _,
        );
    }
    let ghz = 12.0 * 1e8 / t.elapsed().as_secs_f64() / 1e9;
    println!("clock ~{ghz:.2} GHz");
    let run = |name: &str, ns_per_block: &dyn Fn(PanelIsa) -> f64, isas: Vec<PanelIsa>| {
        for isa in isas {
            let ns = ns_per_block(isa);
            println!(
                "{name} dot::<4> {isa:?}: {ns:.2} ns per block → {:.1} cycles",
                ns * ghz
            );
        }
    };
    let k = 896;
    let w = weights::<BlockQ4_1>(16 * k / 32, false, &[0, 2], 3);
    let f = |isa| ns_per_call_block::<Q4_1Panel>(isa, blocks::view_q4_1(&w), k);
    run("Q4_1 k=896", &f, host_isas::<Q4_1Panel>());
    let w = weights::<BlockQ5_0>(16 * k / 32, false, &[0], 3);
    let f = |isa| ns_per_call_block::<Q5_0Panel>(isa, blocks::view_q5_0(&w), k);
    run("Q5_0 k=896", &f, host_isas::<Q5_0Panel>());
    let w = weights::<BlockQ8_0>(16 * k / 32, false, &[0], 3);
    let f = |isa| ns_per_call_block::<Q8_0Panel>(isa, blocks::view_q8_0(&w), k);
    run("Q8_0 k=896", &f, host_isas::<Q8_0Panel>());
    let k = 4864;
    let w = weights::<BlockQ6K>(16 * k / 256, false, &[208], 3);
    let f = |isa| ns_per_call_block::<Q6KPanel>(isa, blocks::view_q6k(&w), k);
    run("Q6_K k=4864", &f, host_isas::<Q6KPanel>());
    let w = weights::<BlockQ4K>(16 * k / 256, false, &[0, 2], 3);
    let f = |isa| ns_per_call_block::<Q4KPanel>(isa, blocks::view_q4k(&w), k);
    run("Q4_K k=4864", &f, host_isas::<Q4KPanel>());
}

/// Best of 7 runs of 60,000 `dot::<4>` calls over 16 weight rows in turn (`w: [16, k]`):
/// ns per weight block of one call.
fn ns_per_call_block<P: RowPanel>(isa: PanelIsa, w: &[P::Weight], k: usize) -> f64 {
    let (kb, rows, calls) = (k / P::ELEMS, 16, 60_000);
    let x = activations(4 * GROUP, k, 5);
    let groups = panels::<P>(isa, &x, 4 * GROUP, k);
    let mut best = f64::MAX;
    for _ in 0..7 {
        let start = std::time::Instant::now();
        for i in 0..calls {
            let row = &w[(i % rows) * kb..(i % rows + 1) * kb];
            // SAFETY: `host_isas` gave only sets this CPU runs.
            let out = unsafe { P::dot::<4>(isa, row, std::array::from_fn(|g| &groups[g][..])) };
            std::hint::black_box(out);
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    best * 1e9 / (calls * kb) as f64
}
