//! AVX-512 VNNI kernels over row panels (`panel_layout`): one weight row against 8·G activation
//! rows, each row's float operations exactly those of its single-row kernel.
//!
//! Lanes: ggml's single-row kernels keep 8 f32 lanes per row, lane `l` accumulating the
//! products of block bytes `4l..4l+4`. Here a 512-bit register holds the lanes of a row
//! pair interleaved, `[a0, b0, a1, b1, .., a7, b7]` (rows `a = 2p`, `b = 2p+1`): the
//! panel stores the pair's quants interleaved by 4-byte groups and the weights are
//! unpacked once per block into `[w0..4, w0..4, w4..8, w4..8, ..]`, so one `vpdpbusd`
//! gives both rows' exact i32 lane sums (the same integers as `madd(maddubs(..))`). The
//! products `d_w · d_a` ggml forms per row are one 256-bit multiply per group of 8 rows,
//! stored and broadcast back as each pair's `[d_a·d_w, d_b·d_w]` by a load port (Q8_0;
//! Q6_K multiplies per pair, `pair_scales_in_registers`; Q4_1 and Q5_0 below). Then
//! `acc = d · cvt(lanes) + acc` is one FMA per pair, exactly ggml's per-row
//! `_mm256_fmadd_ps(d, q, acc)`. At the end `hsum_rows` folds each row's 8 lanes in
//! `hsum_float_8` order, 8 rows at once.
//!
//! Q4_1 and Q5_0 skip those products (`fma_pairs_split`, NOTES §37): their values lie
//! within ±16 and the activation quants within ±128, so a lane sum `Σ` (|Σ| ≤ 4·16·128 =
//! 2¹³) has at most 13 significant bits and `d_w · Σ` (f16 scales: 11 + 13 bits) is exact
//! in f32, as `d_w · d_a` (11 + 11) is. For finite scales `d_a · (d_w · Σ) + acc` then
//! rounds the same real number ggml's `(d_w · d_a) · Σ + acc` does, and its multipliers
//! are the block's `d_w` and the pair's `[d_a, d_b]` straight from the panel. `d_w · Σ` is
//! one FMA that also converts: the lanes start at the bits of `MAGIC`, so they end as the
//! float `MAGIC + Σ`, and `d_w · (MAGIC + Σ) − d_w · MAGIC` is exact.
//!
//! Q4_1: unsigned nibbles × signed Q8_1 quants, `summs = fma(m_w, s_a, summs)` per row in
//! one 8-lane FMA, result `hsum + summs` (`ggml_vec_dot_q4_1_q8_1`).
//! Q8_0 and Q5_0 (`Signed32`): signed weights (Q5_0's unpacked to −16..15 as ggml does)
//! × activations stored biased (+128, unsigned): `vpdpbusd` then gives Σ (a + 128)·w, so
//! each block's accumulator starts at −128·Σw (per lane, exact; plus the bits of `MAGIC`
//! for Q5_0)
//! (`ggml_vec_dot_q8_0_q8_0`, `ggml_vec_dot_q5_0_q8_0`: the same float steps).
//! Q6_K: per 256-element super-block one FMA per lane, as the others per 32-element
//! block; its integer lanes are ggml's (see `q6k_rows`).
//! Q4_K in the order of ggml's repacked gemv (`Q4KInterleaved`): per super-block and row
//! two exact integers and two FMAs, 8 rows per instruction, over panels in the
//! rows-in-lanes order rather than the pair layout (see `q4k_rows`).

use std::arch::x86_64::*;

use super::avx512_lanes::{
    hsum_rows, load_index, DOUBLE_DWORDS, Q5_0_QH_BIT, Q5_0_QH_BYTE, ROW_RESULT_INDEX,
};
use super::blocks::{Q4K, Q4_1, Q5_0, Q6K, Q8_0};
use super::kquants::avx2::{q4k_block_scales, q4k_vectors, q6k_vectors};
use super::legacy::Signed32;
use super::panel_layout::{
    check_blocks, PanelQ8K, PanelQ8_0, PanelQ8_1, PreparedBlock, RowScales, GROUP,
};
use super::x86::f16_to_f32;
use crate::ops::ggml_math::x86::regs;

/// The same over a 16-byte load: the low nibbles' groups, then again for the high ones.
const DOUBLE_NIBBLE_DWORDS: [i32; 16] = [0, 0, 1, 1, 2, 2, 3, 3, 0, 0, 1, 1, 2, 2, 3, 3];
/// Two adjacent f16 → `[a, b, 0, 0]` (exact, `vcvtph2ps` as ggml).
#[inline(always)]
unsafe fn f16_pair(p: *const u8) -> __m128 {
    _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(p as *const i32)))
}

/// The 8 bytes at `at` in every qword: `vbroadcastsd` from memory, which runs on a load
/// port (the compiler would forward a value it has just stored through shuffles).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn broadcast_pair(at: *const f32) -> __m512 {
    let v: __m512;
    std::arch::asm!(
        "vbroadcastsd {v}, qword ptr [{at}]",
        v = out(zmm_reg) v,
        at = in(reg) at,
        options(nostack, preserves_flags, readonly),
    );
    v
}

/// The 4 row pairs' scale patterns `d_w · [d_2p, d_2p+1]…` of a group: `wd` is the weight
/// block's scale in every lane, `act_d` the 8 rows' scales. The 8 products are one
/// 256-bit multiply (the product ggml forms per row), stored and broadcast back pair by
/// pair from memory: 1 vector-port operation for 4 pairs instead of 4 (kernels with few
/// operations per block; `pair_scales_in_registers` for the others).
#[inline(always)]
unsafe fn pair_scales(wd: __m512, act_d: &[f32; GROUP]) -> [__m512; 4] {
    // Uninitialized: the store writes it whole (no zeroing store before it).
    let mut scales = std::mem::MaybeUninit::<RowScales>::uninit();
    let at = scales.as_mut_ptr() as *mut f32;
    let prod = _mm256_mul_ps(_mm512_castps512_ps256(wd), _mm256_loadu_ps(act_d.as_ptr()));
    _mm256_store_ps(at, prod);
    let mut d = [_mm512_setzero_ps(); 4];
    for (p, dp) in d.iter_mut().enumerate() {
        *dp = broadcast_pair(at.add(2 * p));
    }
    d
}

/// `pair_scales` by one multiply per pair of the pair's scales (broadcast from the panel):
/// the same products, no store.
#[inline(always)]
unsafe fn pair_scales_in_registers(wd: __m512, act_d: &[f32; GROUP]) -> [__m512; 4] {
    let mut d = [_mm512_setzero_ps(); 4];
    for (p, dp) in d.iter_mut().enumerate() {
        // One 64-bit broadcast load straight from the panel: [d_2p, d_2p+1] in every qword.
        let pair = std::ptr::read_unaligned(act_d.as_ptr().add(2 * p) as *const f64);
        *dp = _mm512_mul_ps(wd, _mm512_castpd_ps(_mm512_set1_pd(pair)));
    }
    d
}

/// `acc + Σ` of each i32 lane's two i16 products `a · b` (`vpdpwssd`), as one instruction:
/// for `_mm512_dpwssd_epi32` LLVM emitted `vpmaddwd` + `vpaddd` in these kernels (this
/// crate builds for generic x86-64), a third more vector operations in the K-quant inner
/// loops (NOTES §32).
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn dpwssd(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
    let mut acc = acc;
    std::arch::asm!(
        "vpdpwssd {acc}, {a}, {b}",
        acc = inout(zmm_reg) acc,
        a = in(zmm_reg) a,
        b = in(zmm_reg) b,
        options(pure, nomem, nostack, preserves_flags),
    );
    acc
}

/// `acc[p] = d[p] · cvt(lanes[p]) + acc[p]` for the 4 row pairs of a group (`d` from
/// `pair_scales`): ggml's per-row `_mm256_fmadd_ps(d, q, acc)`.
#[inline(always)]
unsafe fn fma_pairs(acc: &mut [__m512; 4], d: [__m512; 4], lanes: [__m512i; 4]) {
    for p in 0..4 {
        acc[p] = _mm512_fmadd_ps(d[p], _mm512_cvtepi32_ps(lanes[p]), acc[p]);
    }
}

/// 1.5 · 2²³: for |n| < 2²², the bits of `MAGIC` plus `n` are the bits of the float
/// `MAGIC + n` (floats in [2²³, 2²⁴) step by 1).
const MAGIC: f32 = 12_582_912.0;

/// Lanes that start here end as the floats `MAGIC + Σ`.
#[inline(always)]
unsafe fn magic_start() -> __m512i {
    _mm512_castps_si512(_mm512_set1_ps(MAGIC))
}

/// `−d_w · MAGIC` in every lane (exact: 11 + 2 bits), for `fma_pairs_split`.
#[inline(always)]
unsafe fn wd_magic(wd: __m512) -> __m512 {
    _mm512_mul_ps(wd, _mm512_set1_ps(-MAGIC))
}

/// `acc[p] = [d_2p, d_2p+1] · (d_w · Σ) + acc[p]` for the 4 row pairs of a group, where
/// `lanes[p]` holds the bits of `MAGIC + Σ` (lanes started at `magic_start`) and
/// `wd_magic = −d_w · MAGIC`: both products exact for values within ±16 (module header),
/// so each FMA rounds what ggml's per-row `_mm256_fmadd_ps(d_w · d_a, Σ, acc)` rounds.
#[inline(always)]
unsafe fn fma_pairs_split(
    acc: &mut [__m512; 4],
    wd: __m512,
    wd_magic: __m512,
    act_d: &[f32; GROUP],
    lanes: [__m512i; 4],
) {
    for (p, (a, l)) in acc.iter_mut().zip(lanes).enumerate() {
        let wd_sum = _mm512_fmadd_ps(_mm512_castsi512_ps(l), wd, wd_magic);
        // [d_2p, d_2p+1] in every qword: one broadcast load from the panel.
        let pair = std::ptr::read_unaligned(act_d.as_ptr().add(2 * p) as *const f64);
        *a = _mm512_fmadd_ps(_mm512_castpd_ps(_mm512_set1_pd(pair)), wd_sum, *a);
    }
}

/// Q4_1 weight row `w: [kb]` · `8·G` Q8_1 rows (`x[g]: [kb]` panels): `out[g][r]`.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI, FMA and F16C must be available.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn q4_1_rows<const G: usize>(w: &[Q4_1], x: [&[PanelQ8_1]; G]) -> [[f32; GROUP]; G] {
    check_blocks("q4_1_rows", w.len(), x);
    let double = load_index(&DOUBLE_NIBBLE_DWORDS);
    // Per 16-bit word: the upper 256 bits shift by 4 (high nibbles, elements 16..32).
    let shift = _mm512_maskz_mov_epi64(0b1111_0000, _mm512_set1_epi16(4));
    let low4 = _mm512_set1_epi8(0x0F);
    let mut acc = [[_mm512_setzero_ps(); 4]; G];
    let mut summs = [_mm256_setzero_ps(); G];
    for (b, wb) in w.iter().enumerate() {
        let dm = f16_pair(wb as *const Q4_1 as *const u8);
        let wd = _mm512_broadcastss_ps(dm);
        let wd_magic = wd_magic(wd);
        let wm = _mm256_broadcastss_ps(_mm_movehdup_ps(dm));
        let q = _mm512_castsi128_si512(_mm_loadu_si128(wb.qs.as_ptr() as *const __m128i));
        let q = _mm512_permutexvar_epi32(double, q);
        let qx = _mm512_and_si512(_mm512_srlv_epi16(q, shift), low4);
        for g in 0..G {
            let y = x[g].get_unchecked(b);
            summs[g] = _mm256_fmadd_ps(wm, _mm256_loadu_ps(y.s.as_ptr()), summs[g]);
            let mut lanes = [_mm512_setzero_si512(); 4];
            for (p, l) in lanes.iter_mut().enumerate() {
                let ys = _mm512_loadu_si512(y.qs[p].as_ptr() as *const _);
                *l = _mm512_dpbusd_epi32(magic_start(), qx, ys);
            }
            fma_pairs_split(&mut acc[g], wd, wd_magic, &y.d, lanes);
        }
    }
    let result_idx = load_index(&ROW_RESULT_INDEX);
    let mut out = [[0f32; GROUP]; G];
    for g in 0..G {
        let rows = _mm256_add_ps(hsum_rows(&acc[g], result_idx), summs[g]);
        _mm256_storeu_ps(out[g].as_mut_ptr(), rows);
    }
    out
}

/// Signed 32-element weight row `w: [kb]` (Q8_0, Q5_0) · `8·G` Q8_0 rows (`x[g]: [kb]`
/// biased panels): `out[g][r]`.
///
/// The row is taken `PREPARED_BLOCKS` blocks at a time: first every block's doubled values,
/// lane starts and scales onto the stack (`prepare_block`, independent work the core
/// overlaps freely), then the blocks' products, whose only chain is each accumulator's.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI, FMA and F16C must be available.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn signed32_rows<B: DoubledValues, const G: usize>(
    w: &[B],
    x: [&[PanelQ8_0]; G],
) -> [[f32; GROUP]; G] {
    check_blocks("signed32_rows", w.len(), x);
    let mut acc = [[_mm512_setzero_ps(); 4]; G];
    let mut prepared =
        [const { std::mem::MaybeUninit::<PreparedBlock>::uninit() }; PREPARED_BLOCKS];
    for (c, chunk) in w.chunks(PREPARED_BLOCKS).enumerate() {
        for (wb, out) in chunk.iter().zip(&mut prepared) {
            out.write(prepare_block(wb));
        }
        // SAFETY: the loop wrote entries 0..chunk.len() (≤ PREPARED_BLOCKS, `chunks`' size).
        let blocks =
            std::slice::from_raw_parts(prepared.as_ptr() as *const PreparedBlock, chunk.len());
        block_products::<B, G>(blocks, c * PREPARED_BLOCKS, x, &mut acc);
    }
    row_results(&acc)
}

/// `signed32_rows` of a row `prepare_signed32` wrote (`w: [kb]`): for a row that several
/// calls (runs of groups) take, prepared once.
///
/// # Safety
/// As `signed32_rows`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn prepared_signed32_rows<B: DoubledValues, const G: usize>(
    w: &[PreparedBlock],
    x: [&[PanelQ8_0]; G],
) -> [[f32; GROUP]; G] {
    check_blocks("prepared_signed32_rows", w.len(), x);
    let mut acc = [[_mm512_setzero_ps(); 4]; G];
    block_products::<B, G>(w, 0, x, &mut acc);
    row_results(&acc)
}

/// Weight row `w` as `prepared_signed32_rows` reads it, into `out` (`w.len()` blocks).
///
/// # Safety
/// As `signed32_rows`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn prepare_signed32<B: DoubledValues>(w: &[B], out: &mut [PreparedBlock]) {
    assert_eq!(w.len(), out.len(), "prepare_signed32: block counts differ");
    for (wb, block) in w.iter().zip(out) {
        *block = prepare_block(wb);
    }
}

/// The products of `blocks` (the row's blocks `first..`) with every group, onto `acc`.
#[inline(always)]
unsafe fn block_products<B: DoubledValues, const G: usize>(
    blocks: &[PreparedBlock],
    first: usize,
    x: [&[PanelQ8_0]; G],
    acc: &mut [[__m512; 4]; G],
) {
    for (i, block) in blocks.iter().enumerate() {
        let b = first + i;
        let values = _mm512_load_si512(block.values.as_ptr() as *const _);
        let start = _mm512_load_si512(block.start.as_ptr() as *const _);
        let wd = _mm512_set1_ps(block.d);
        for g in 0..G {
            let y = x[g].get_unchecked(b);
            let mut lanes = [start; 4];
            for (p, l) in lanes.iter_mut().enumerate() {
                let ys = _mm512_loadu_si512(y.qs[p].as_ptr() as *const _);
                *l = _mm512_dpbusd_epi32(start, ys, values);
            }
            if B::SMALL_VALUES {
                let wd_magic = _mm512_set1_ps(block.d_magic);
                fma_pairs_split(&mut acc[g], wd, wd_magic, &y.d, lanes);
            } else {
                fma_pairs(&mut acc[g], pair_scales(wd, &y.d), lanes);
            }
        }
    }
}

/// Each group's 8 row results from its accumulators (`hsum_rows`).
#[inline(always)]
unsafe fn row_results<const G: usize>(acc: &[[__m512; 4]; G]) -> [[f32; GROUP]; G] {
    let result_idx = load_index(&ROW_RESULT_INDEX);
    let mut out = [[0f32; GROUP]; G];
    for g in 0..G {
        _mm256_storeu_ps(out[g].as_mut_ptr(), hsum_rows(&acc[g], result_idx));
    }
    out
}

/// Weight blocks `signed32_rows` prepares at a time: 64 · 192 bytes (`PreparedBlock`) =
/// 12 KiB of stack, of which a row uses its blocks'.
const PREPARED_BLOCKS: usize = 64;

/// Block `wb` as the products read it: its doubled values, each lane's start `−128 · Σ4 w`
/// (so that `Σ (a + 128)·w` lands on `Σ a·w`, plus the bits of `MAGIC` for `SMALL_VALUES`
/// types), its scale and `−d · MAGIC` (`wd_magic`).
#[inline(always)]
unsafe fn prepare_block<B: DoubledValues>(wb: &B) -> PreparedBlock {
    let bias = _mm512_set1_epi8(0x80u8 as i8);
    let zero_or_magic = if B::SMALL_VALUES {
        magic_start()
    } else {
        _mm512_setzero_si512()
    };
    let values = wb.doubled();
    let start = _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, values);
    let d = f16_to_f32(wb.d());
    PreparedBlock {
        values: std::mem::transmute::<__m512i, [i8; 64]>(values),
        start: std::mem::transmute::<__m512i, [i32; 16]>(_mm512_sub_epi32(zero_or_magic, start)),
        d,
        d_magic: d * -MAGIC,
    }
}

/// A signed 32-element block's values (`Signed32::values`) with each 4-byte group doubled,
/// `[w0..4, w0..4, w4..8, w4..8, ..]`: one `vpdpbusd` against a row pair's interleaved quants.
pub trait DoubledValues: Signed32 {
    /// Every value lies within ±16: `fma_pairs_split` is exact for the type.
    const SMALL_VALUES: bool;
    /// # Safety
    /// AVX-512 F/BW must be available (inlined into the kernels, which enable them).
    unsafe fn doubled(&self) -> __m512i;
}

impl DoubledValues for Q8_0 {
    const SMALL_VALUES: bool = false;
    #[inline(always)]
    unsafe fn doubled(&self) -> __m512i {
        let q = _mm256_loadu_si256(self.qs.as_ptr() as *const __m256i);
        _mm512_permutexvar_epi32(load_index(&DOUBLE_DWORDS), _mm512_castsi256_si512(q))
    }
}

impl DoubledValues for Q5_0 {
    const SMALL_VALUES: bool = true;
    /// The nibbles doubled as `q4_1_rows` doubles them; the fifth bits picked into the same
    /// layout (`vpshufb` of `qh` in every dword, `vptestnmb`); `nibble − 16` where the bit is
    /// clear: ggml's `(nibble | bit << 4) − 16`.
    #[inline(always)]
    unsafe fn doubled(&self) -> __m512i {
        let q = _mm512_castsi128_si512(_mm_loadu_si128(self.qs.as_ptr() as *const __m128i));
        let q = _mm512_permutexvar_epi32(load_index(&DOUBLE_NIBBLE_DWORDS), q);
        let shift = _mm512_maskz_mov_epi64(0b1111_0000, _mm512_set1_epi16(4));
        let nibbles = _mm512_and_si512(_mm512_srlv_epi16(q, shift), _mm512_set1_epi8(0x0F));
        let qh = _mm512_set1_epi32(i32::from_le_bytes(self.qh));
        let pick = _mm512_loadu_si512(Q5_0_QH_BYTE.as_ptr() as *const _);
        let bit = _mm512_loadu_si512(Q5_0_QH_BIT.as_ptr() as *const _);
        let clear = _mm512_testn_epi8_mask(_mm512_shuffle_epi8(qh, pick), bit);
        _mm512_mask_sub_epi8(nibbles, clear, nibbles, _mm512_set1_epi8(16))
    }
}

/// Q6_K weight row `w: [kb]` · `8·G` Q8_K rows (`x[g]: [kb]` super-block panels):
/// `out[g][r]`. Per super-block and row, ggml's 8 integer lanes: `vpdpbusd` of the
/// unsigned 6-bit values and the signed quants gives each lane's 4-product sum of one
/// 32-element chunk (|sum| ≤ 4·63·127, an i16), `vpdpwssd` multiplies it by its
/// 16-element scale into the lane (the scale in the low i16 of each i32, 0 above), and
/// each lane starts at `−32 · (b₂ₗ·sc₂ₗ + b₂ₗ₊₁·sc₂ₗ₊₁)` (`q8sclsub`, one `vpmaddwd` of
/// the interleaved sums against the scales times −32). Then
/// `acc = (d_a · d_w) · cvt(lanes) + acc`.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI, FMA and F16C must be available.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn q6k_rows<const G: usize>(w: &[Q6K], x: [&[PanelQ8K]; G]) -> [[f32; GROUP]; G] {
    check_blocks("q6k_rows", w.len(), x);
    let double = load_index(&DOUBLE_DWORDS);
    let zero = _mm512_setzero_si512();
    let mut acc = [[_mm512_setzero_ps(); 4]; G];
    for (b, wb) in w.iter().enumerate() {
        let wd = _mm512_set1_ps(f16_to_f32(wb.d));
        let q = q6k_vectors(wb);
        let sc = &wb.scales;
        // i16 pattern −32·[sc₀ sc₁ sc₀ sc₁ sc₂ sc₃ sc₂ sc₃ ..] against the interleaved sums
        // (|−32·sc| ≤ 4096: an i16; the lanes' starts exactly).
        let neg32 = |sc: i8| (-32 * sc as i16) as u16 as i32;
        let pairs: [i32; 8] =
            std::array::from_fn(|l| neg32(sc[2 * l]) | (neg32(sc[2 * l + 1]) << 16));
        let pairs = _mm256_loadu_si256(pairs.as_ptr() as *const __m256i);
        let neg_sub_scales = _mm512_permutexvar_epi32(double, _mm512_castsi256_si512(pairs));
        let mut wq = [zero; 8];
        let mut wsc = [zero; 8];
        for c in 0..8 {
            wq[c] = _mm512_permutexvar_epi32(double, _mm512_castsi256_si512(q[c]));
            let lo = _mm256_set1_epi32(sc[2 * c] as i16 as u16 as i32);
            let hi = _mm256_set1_epi32(sc[2 * c + 1] as i16 as u16 as i32);
            wsc[c] = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
        }
        for g in 0..G {
            let y = x[g].get_unchecked(b);
            let mut lanes = [zero; 4];
            for (p, l) in lanes.iter_mut().enumerate() {
                let bs = _mm512_loadu_si512(y.bsums[p].as_ptr() as *const _);
                *l = _mm512_madd_epi16(bs, neg_sub_scales);
            }
            for c in 0..8 {
                for (p, l) in lanes.iter_mut().enumerate() {
                    let ys = _mm512_loadu_si512(y.qs[c][p].as_ptr() as *const _);
                    let t = _mm512_dpbusd_epi32(zero, wq[c], ys);
                    *l = dpwssd(*l, t, wsc[c]);
                }
            }
            fma_pairs(&mut acc[g], pair_scales_in_registers(wd, &y.d), lanes);
        }
    }
    let result_idx = load_index(&ROW_RESULT_INDEX);
    let mut out = [[0f32; GROUP]; G];
    for g in 0..G {
        _mm256_storeu_ps(out[g].as_mut_ptr(), hsum_rows(&acc[g], result_idx));
    }
    out
}

/// Q4_K weight row `w: [kb]` · `8·G` Q8_K rows in the rows-in-lanes order (`x[g]: [kb]`,
/// `panel_layout`): `out[g][r]`, in the order of ggml's repacked gemv
/// (`Q4KInterleaved::dot`). Its float steps take only each row's super-block integers
/// `isum = Σ scale·q·a` and `imin = Σ min·bsum` (exact, so summed in any order), then
/// `acc = fma(isum, d_w·d_a, acc)` and `acc_min = fma(imin, dmin_w·d_a, acc_min)`; result
/// `acc − acc_min`. A register holds the 8 rows' two cells each (cell `p` of row `r`: the
/// 4-byte groups `2s + p` of every step `s`): per chunk, 4 `vpdpbusd` against the weights'
/// 8 bytes `8s..8s+8` broadcast to every row sum its 32 products per row (|cell| ≤
/// 16·15·128, an i16), one `vpdpwssd` by the chunk's scale adds them to `isum`; `imin` is
/// 4 `vpdpwssd` of the rows' 16-element sums against the mins. Per super-block each row's
/// two cells are added (`[isum | imin]` of the 8 rows in one register) and both FMAs are
/// one. About half the pair layout's vector operations (NOTES §39): no lanes to fold.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI, FMA and F16C must be available.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn q4k_rows<const G: usize>(w: &[Q4K], x: [&[PanelQ8K]; G]) -> [[f32; GROUP]; G] {
    check_blocks("q4k_rows", w.len(), x);
    let (even, odd) = (load_index(&EVEN_CELLS), load_index(&ODD_CELLS));
    let zero = _mm512_setzero_si512();
    // Per row group: [acc of rows 0..8 | acc_min of rows 0..8].
    let mut acc = [_mm512_setzero_ps(); G];
    for (b, wb) in w.iter().enumerate() {
        let block = q4k_block_scales(wb);
        let values = Q4KValues::new(wb);
        let mut isum = [zero; G];
        for c in 0..8 {
            let wq: [__m512i; 4] = regs(|s| values.broadcast(c, s));
            // The scale in the low i16 of each i32 (0 above): `vpdpwssd` is t · scale.
            let sc = _mm512_set1_epi32(block.scales[c] as i32);
            for (g, sum) in isum.iter_mut().enumerate() {
                let y = &x[g].get_unchecked(b).qs[c];
                let mut t = zero;
                for (s, wqs) in wq.iter().enumerate() {
                    let ys = _mm512_loadu_si512(y[s].as_ptr() as *const _);
                    t = _mm512_dpbusd_epi32(t, *wqs, ys);
                }
                *sum = dpwssd(*sum, t, sc);
            }
        }
        // Qword s of `min_pairs`: [min_2s, min_2s] and [min_2s+1, min_2s+1] as i16 pairs.
        let min_pairs = _mm512_castsi256_si512(block.min_pairs);
        let mins: [__m512i; 4] =
            regs(|s| _mm512_permutexvar_epi64(_mm512_set1_epi64(s as i64), min_pairs));
        let d = halves(block.d[0], block.d[1]);
        for (g, (a, sum)) in acc.iter_mut().zip(isum).enumerate() {
            let y = x[g].get_unchecked(b);
            let mut imin = zero;
            for (bs, m) in y.bsums.iter().zip(mins) {
                imin = dpwssd(imin, _mm512_loadu_si512(bs.as_ptr() as *const _), m);
            }
            let rows = _mm512_add_epi32(
                _mm512_permutex2var_epi32(sum, even, imin),
                _mm512_permutex2var_epi32(sum, odd, imin),
            );
            let act_d = _mm256_loadu_ps(y.d.as_ptr());
            let act_d = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(act_d)));
            *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(rows), _mm512_mul_ps(d, act_d), *a);
        }
    }
    let mut out = [[0f32; GROUP]; G];
    for (o, a) in out.iter_mut().zip(acc) {
        let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a)));
        let rows = _mm256_sub_ps(_mm512_castps512_ps256(a), high);
        _mm256_storeu_ps(o.as_mut_ptr(), rows);
    }
    out
}

/// `[lo | hi]` in one register (AVX-512 F only: the f32x8 forms need DQ).
#[inline(always)]
unsafe fn halves(lo: __m256, hi: __m256) -> __m512 {
    let lo = _mm512_castpd256_pd512(_mm256_castps_pd(lo));
    _mm512_castpd_ps(_mm512_insertf64x4::<1>(lo, _mm256_castps_pd(hi)))
}

/// `permutex2var` indices of cell 0 (`EVEN_CELLS`) and cell 1 (`ODD_CELLS`) of the 8 rows
/// in two rows-in-lanes registers: `[a_r0, .., a_r7, b_r0, .., b_r7]`.
const EVEN_CELLS: [i32; 16] = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30];
const ODD_CELLS: [i32; 16] = [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31];

/// A Q4_K super-block's 256 values (0..16) in element order on the stack, for 8-byte
/// broadcasts from memory (a load port, not a shuffle).
#[repr(C, align(32))]
struct Q4KValues([u8; 256]);

impl Q4KValues {
    #[inline(always)]
    unsafe fn new(w: &Q4K) -> Self {
        let mut values = std::mem::MaybeUninit::<Q4KValues>::uninit();
        let at = values.as_mut_ptr() as *mut __m256i;
        for (c, q) in q4k_vectors(w).into_iter().enumerate() {
            _mm256_store_si256(at.add(c), q);
        }
        values.assume_init()
    }

    /// Chunk `c`'s values `8s..8s+8` in every qword.
    #[inline(always)]
    unsafe fn broadcast(&self, c: usize, s: usize) -> __m512i {
        let eight = std::ptr::read_unaligned(self.0.as_ptr().add(32 * c + 8 * s) as *const i64);
        _mm512_set1_epi64(eight)
    }
}
