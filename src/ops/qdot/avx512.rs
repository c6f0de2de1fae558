//! AVX-512 VNNI kernels over row panels (`panel`): one weight row against 8·G activation
//! rows, each row's float operations exactly those of its single-row kernel.
//!
//! Per weight block the weights are unpacked once into a 512-bit register holding the
//! block twice, `[w | w]`; each 512-bit activation load holds two rows, `[row 2p | row
//! 2p+1]`, so one `vpdpbusd` gives both rows' 8 i32 lanes (lane `l` = Σ of bytes
//! `4l..4l+4`, exactly ggml's `madd(maddubs(..))` lanes; exact, no saturation). Then per
//! row pair: `cvt` to f32, the two rows' `d_w · d_a` broadcast to their halves
//! (`vpermps` of the 8-row product vector), one FMA `acc = d · lanes + acc`, as ggml's
//! `_mm256_fmadd_ps(d, q, acc)` does per row. At the end `hsum_rows` folds each row's
//! 8 lanes in `hsum_float_8` order, 8 rows at once.
//!
//! Q4_1: unsigned nibbles × signed Q8_1 quants, `summs = fma(m_w, s_a, summs)` per row in
//! one 8-lane FMA, result `hsum + summs` (`ggml_vec_dot_q4_1_q8_1`).
//! Q8_0: signed weights × activations stored biased (+128, unsigned): `vpdpbusd` then
//! gives Σ (a + 128)·w, so each block's accumulator starts at −128·Σw (per lane, exact)
//! (`ggml_vec_dot_q8_0_q8_0`).

use std::arch::x86_64::*;

use super::panel::{PanelQ8_0, PanelQ8_1, GROUP};
use crate::ops::act_quant::Q8_0;
use crate::ops::q4_1::Q4_1;

/// `vpermps` indices putting row `2p`'s scale in lanes 0..8 and row `2p+1`'s in 8..16.
const PAIR_SCALE_INDEX: [[i32; 16]; 4] = {
    let mut idx = [[0i32; 16]; 4];
    let mut p = 0;
    while p < 4 {
        let mut l = 0;
        while l < 16 {
            idx[p][l] = (2 * p + l / 8) as i32;
            l += 1;
        }
        p += 1;
    }
    idx
};

/// Lanes of `hsum_rows`' last step holding rows 0..8.
const ROW_RESULT_INDEX: [i32; 16] = [0, 4, 8, 12, 2, 6, 10, 14, 0, 0, 0, 0, 0, 0, 0, 0];

#[inline(always)]
unsafe fn load_index(idx: &[i32; 16]) -> __m512i {
    _mm512_loadu_si512(idx.as_ptr() as *const _)
}

/// Two adjacent f16 → `[a, b, 0, 0]` (exact, `vcvtph2ps` as ggml).
#[inline(always)]
unsafe fn f16_pair(p: *const u8) -> __m128 {
    _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(p as *const i32)))
}

/// `acc += perm(d) · cvt(lanes)` for the 4 row pairs of one group.
#[inline(always)]
unsafe fn fma_pairs(
    acc: &mut [__m512; 4],
    d: __m256,
    lanes: [__m512i; 4],
    pair_idx: &[__m512i; 4],
) {
    let d = _mm512_castps256_ps512(d);
    for p in 0..4 {
        let dp = _mm512_permutexvar_ps(pair_idx[p], d);
        acc[p] = _mm512_fmadd_ps(dp, _mm512_cvtepi32_ps(lanes[p]), acc[p]);
    }
}

/// Each row's `hsum_float_8` of a group's 4 pair accumulators: `[f32; 8]` in row order.
/// ggml folds `r_j = x_j + x_{j+4}`, then `(r_0 + r_2) + (r_1 + r_3)`; every add here
/// is one of those (float addition is commutative bit for bit).
#[inline(always)]
unsafe fn hsum_rows(acc: &[__m512; 4], result_idx: __m512i) -> __m256 {
    // 128-bit chunks of acc[p]: [lo(2p), hi(2p), lo(2p+1), hi(2p+1)].
    let lo01 = _mm512_shuffle_f32x4::<0b10_00_10_00>(acc[0], acc[1]);
    let hi01 = _mm512_shuffle_f32x4::<0b11_01_11_01>(acc[0], acc[1]);
    let lo23 = _mm512_shuffle_f32x4::<0b10_00_10_00>(acc[2], acc[3]);
    let hi23 = _mm512_shuffle_f32x4::<0b11_01_11_01>(acc[2], acc[3]);
    // chunk c: row c's (resp. row 4+c's) [r0, r1, r2, r3].
    let r0123 = _mm512_add_ps(lo01, hi01);
    let r4567 = _mm512_add_ps(lo23, hi23);
    // chunk c: [r0, r1 of row c, r0, r1 of row 4+c] + [r2, r3, r2, r3].
    let t01 = _mm512_shuffle_ps::<0x44>(r0123, r4567);
    let t23 = _mm512_shuffle_ps::<0xEE>(r0123, r4567);
    let t = _mm512_add_ps(t01, t23);
    // lane 0 (row c) and lane 2 (row 4+c): t0 + t1.
    let sums = _mm512_add_ps(t, _mm512_shuffle_ps::<0xB1>(t, t));
    _mm512_castps512_ps256(_mm512_permutexvar_ps(result_idx, sums))
}

/// Q4_1 weight row `w: [kb]` · `8·G` Q8_1 rows (`x[g]: [kb]` panels): `out[g][r]`.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI, FMA and F16C must be available.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn q4_1_rows<const G: usize>(w: &[Q4_1], x: [&[PanelQ8_1]; G]) -> [[f32; GROUP]; G] {
    for panel in x {
        assert_eq!(panel.len(), w.len(), "q4_1_rows: block counts differ");
    }
    let pair_idx = [
        load_index(&PAIR_SCALE_INDEX[0]),
        load_index(&PAIR_SCALE_INDEX[1]),
        load_index(&PAIR_SCALE_INDEX[2]),
        load_index(&PAIR_SCALE_INDEX[3]),
    ];
    // Per 16-bit word: chunks 1 and 3 shift by 4 (high nibbles), 0 and 2 keep the low.
    let shift = _mm512_set_epi64(0, 0, 0, 0, 0, 0, 0, 0);
    let shift = _mm512_mask_mov_epi64(shift, 0b1100_1100, _mm512_set1_epi16(4));
    let low4 = _mm512_set1_epi8(0x0F);
    let mut acc = [[_mm512_setzero_ps(); 4]; G];
    let mut summs = [_mm256_setzero_ps(); G];
    for (b, wb) in w.iter().enumerate() {
        let dm = f16_pair(wb as *const Q4_1 as *const u8);
        let wd = _mm256_broadcastss_ps(dm);
        let wm = _mm256_broadcastss_ps(_mm_movehdup_ps(dm));
        let q = _mm512_broadcast_i32x4(_mm_loadu_si128(wb.qs.as_ptr() as *const __m128i));
        // [low nibbles | high nibbles] twice: elements 0..32 of the block per row.
        let qx = _mm512_and_si512(_mm512_srlv_epi16(q, shift), low4);
        for g in 0..G {
            let y = x[g].get_unchecked(b);
            summs[g] = _mm256_fmadd_ps(wm, _mm256_loadu_ps(y.s.as_ptr()), summs[g]);
            let d = _mm256_mul_ps(wd, _mm256_loadu_ps(y.d.as_ptr()));
            let mut lanes = [_mm512_setzero_si512(); 4];
            for (p, l) in lanes.iter_mut().enumerate() {
                let ys = _mm512_loadu_si512(y.qs[2 * p].as_ptr() as *const _);
                *l = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qx, ys);
            }
            fma_pairs(&mut acc[g], d, lanes, &pair_idx);
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

/// Q8_0 weight row `w: [kb]` · `8·G` Q8_0 rows (`x[g]: [kb]` biased panels): `out[g][r]`.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI, FMA and F16C must be available.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn q8_0_rows<const G: usize>(w: &[Q8_0], x: [&[PanelQ8_0]; G]) -> [[f32; GROUP]; G] {
    for panel in x {
        assert_eq!(panel.len(), w.len(), "q8_0_rows: block counts differ");
    }
    let pair_idx = [
        load_index(&PAIR_SCALE_INDEX[0]),
        load_index(&PAIR_SCALE_INDEX[1]),
        load_index(&PAIR_SCALE_INDEX[2]),
        load_index(&PAIR_SCALE_INDEX[3]),
    ];
    let bias = _mm512_set1_epi8(0x80u8 as i8);
    let mut acc = [[_mm512_setzero_ps(); 4]; G];
    for (b, wb) in w.iter().enumerate() {
        let wd = _mm256_broadcastss_ps(f16_pair(wb as *const Q8_0 as *const u8));
        let wq = _mm512_broadcast_i64x4(_mm256_loadu_si256(wb.qs.as_ptr() as *const __m256i));
        // −128 · Σ4 w per lane, so that Σ (a + 128)·w lands on Σ a·w.
        let start = _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, wq);
        let start = _mm512_sub_epi32(_mm512_setzero_si512(), start);
        for g in 0..G {
            let y = x[g].get_unchecked(b);
            let d = _mm256_mul_ps(wd, _mm256_loadu_ps(y.d.as_ptr()));
            let mut lanes = [start; 4];
            for (p, l) in lanes.iter_mut().enumerate() {
                let ys = _mm512_loadu_si512(y.qs[2 * p].as_ptr() as *const _);
                *l = _mm512_dpbusd_epi32(start, ys, wq);
            }
            fma_pairs(&mut acc[g], d, lanes, &pair_idx);
        }
    }
    let result_idx = load_index(&ROW_RESULT_INDEX);
    let mut out = [[0f32; GROUP]; G];
    for g in 0..G {
        _mm256_storeu_ps(out[g].as_mut_ptr(), hsum_rows(&acc[g], result_idx));
    }
    out
}
