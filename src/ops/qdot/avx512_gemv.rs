//! AVX-512 VNNI kernels for single-stream decode (`quant::gemv`): eight weight rows · one
//! activation row per call, each row's float operations exactly those of its single-row
//! kernel (`Kernel::dot`), so every result is `dot`'s bits.
//!
//! Lanes: as in the panel kernels (`avx512`), a 512-bit register holds the 8 ggml lanes of
//! a row pair interleaved, `[a0, b0, .., a3, b3 | a4, b4, .., a7, b7]`, but the pair is of
//! weight rows: one `vpermt2d` interleaves the two rows' quants by 4-byte groups as they
//! are loaded, and the activation block's groups are doubled once for all four pairs. One
//! `vpdpbusd` then gives both rows' exact i32 lane sums (the integers of ggml's
//! `madd(maddubs(..))`), and `avx512_lanes::hsum_rows` folds the 8 rows' lanes in
//! `hsum_float_8` order. Per row and block this is about a third of the AVX2 kernel's
//! vector operations, which leaves the memory pipeline more room (bench/NOTES.md §26).
//! Each block step also asks for its share of the caller's next rows (`Ahead`, §28).

use std::arch::x86_64::*;

use super::avx512_lanes::{
    hsum_rows, load_index, DOUBLE_DWORDS, Q5_0_QH_BIT, Q5_0_QH_BYTE, ROW_RESULT_INDEX,
};
use super::blocks::{Q4_1, Q5_0, Q8_0, Q8_1};
use super::x86::f16_to_f32;
use super::Ahead;

/// `vpermt2d` indices interleaving two rows' 16 packed quant bytes (dwords 0..4 of the
/// first row, 16..20 of the second) by dwords, twice: the low nibbles (elements 0..16)
/// fill the lower 256 bits, the high nibbles (16..32) the upper.
const PAIR_NIBBLE_DWORDS: [i32; 16] = [0, 16, 1, 17, 2, 18, 3, 19, 0, 16, 1, 17, 2, 18, 3, 19];
/// `vpermt2d` indices interleaving two rows' 32 value bytes (dwords 0..8 of the first
/// row, 16..24 of the second) by dwords.
const PAIR_DWORDS: [i32; 16] = [0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23];
/// `vpermps` indices spreading `[d_a, m_a, d_b, m_b]` to `[d_a, d_b]` in every lane pair.
const PAIR_SCALES: [i32; 16] = [0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2];
/// The same for `[d_a, d_b, ..]`.
const PAIR_SCALES_ADJACENT: [i32; 16] = [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1];

/// Checks that each of the 8 weight rows has the activation row's `kb` blocks.
#[inline(always)]
fn check_rows<T>(kernel: &str, w: [&[T]; 8], kb: usize) {
    for row in w {
        assert_eq!(
            row.len(),
            kb,
            "{kernel}: weight and activation block counts differ"
        );
    }
}

/// A Q4_1 block's `[d, m]` as the low dword of a register (f16 bits).
#[inline(always)]
unsafe fn dm_bits(b: &Q4_1) -> __m128i {
    _mm_cvtsi32_si128(std::ptr::read_unaligned(b as *const Q4_1 as *const i32))
}

/// The 16 packed quant bytes of a Q4_1 block, in the low 128 bits.
#[inline(always)]
unsafe fn packed_quants(b: &Q4_1) -> __m512i {
    _mm512_castsi128_si512(_mm_loadu_si128(b.qs.as_ptr() as *const __m128i))
}

/// Eight Q4_1 weight rows (`w[r]: [kb]`) · one Q8_1 row (`x: [kb]`): row `r`'s result is
/// `Q4_1Dot::dot(w[r], x)` bit for bit (`ggml_vec_dot_q4_1_q8_1`: per block
/// `acc = (d_w · d_a) · cvt(lanes) + acc` on 8 lanes and `summs = fma(m_w, s_a, summs)`,
/// then `hsum_float_8(acc) + summs`).
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI, FMA and F16C must be available.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn q4_1_rows8(w: [&[Q4_1]; 8], x: &[Q8_1], ahead: Ahead) -> [f32; 8] {
    check_rows("q4_1_rows8", w, x.len());
    let double = load_index(&DOUBLE_DWORDS);
    let pair_quants = load_index(&PAIR_NIBBLE_DWORDS);
    let pair_scales = load_index(&PAIR_SCALES);
    // Per 16-bit word: the upper 256 bits shift by 4 (high nibbles, elements 16..32).
    let shift = _mm512_maskz_mov_epi64(0b1111_0000, _mm512_set1_epi16(4));
    let low4 = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); 4];
    // Per pair `[_, summs_a, _, summs_b]` (lanes 0 and 2 are unused products).
    let mut summs = [_mm_setzero_ps(); 4];
    for (b, y) in x.iter().enumerate() {
        ahead.block(b);
        let ys = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
        let ys = _mm512_permutexvar_epi32(double, _mm512_castsi256_si512(ys));
        let act_d = _mm512_set1_ps(y.d);
        let act_s = _mm_set1_ps(y.s);
        for p in 0..4 {
            let (wa, wb) = (w[2 * p].get_unchecked(b), w[2 * p + 1].get_unchecked(b));
            let q = _mm512_permutex2var_epi32(packed_quants(wa), pair_quants, packed_quants(wb));
            let wq = _mm512_and_si512(_mm512_srlv_epi16(q, shift), low4);
            let lanes = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq, ys);
            // [d_a, m_a, d_b, m_b] of the pair's weight blocks.
            let dm = _mm_cvtph_ps(_mm_unpacklo_epi32(dm_bits(wa), dm_bits(wb)));
            summs[p] = _mm_fmadd_ps(dm, act_s, summs[p]);
            fma_pair(&mut acc[p], pair_scales, dm, act_d, lanes);
        }
    }
    // Lanes 1 and 3 of each pair's summs, in row order.
    let s03 = _mm_shuffle_ps::<0b11_01_11_01>(summs[0], summs[1]);
    let s47 = _mm_shuffle_ps::<0b11_01_11_01>(summs[2], summs[3]);
    let rows = _mm256_add_ps(
        hsum_rows(&acc, load_index(&ROW_RESULT_INDEX)),
        _mm256_set_m128(s47, s03),
    );
    let mut out = [0f32; 8];
    _mm256_storeu_ps(out.as_mut_ptr(), rows);
    out
}

/// Eight Q8_0 weight rows (`w[r]: [kb]`) · one Q8_0 row (`x: [kb]`): row `r`'s result is
/// `Q8_0Dot::dot(w[r], x)` bit for bit (`ggml_vec_dot_q8_0_q8_0`: per block
/// `acc = (d_w · d_a) · cvt(lanes) + acc`, then `hsum_float_8`). `vpdpbusd` takes unsigned
/// × signed bytes, so the weights are biased by +128 (`w ^ 0x80`) and each lane starts at
/// −128 · Σ4 a, once per block for all rows: Σ (w + 128)·a − 128·Σ a = Σ w·a, exactly.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI, FMA and F16C must be available.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn q8_0_rows8(w: [&[Q8_0]; 8], x: &[Q8_0], ahead: Ahead) -> [f32; 8] {
    check_rows("q8_0_rows8", w, x.len());
    let double = load_index(&DOUBLE_DWORDS);
    let pair_values = load_index(&PAIR_DWORDS);
    let pair_scales = load_index(&PAIR_SCALES_ADJACENT);
    let bias = _mm512_set1_epi8(0x80u8 as i8);
    let mut acc = [_mm512_setzero_ps(); 4];
    for (b, y) in x.iter().enumerate() {
        ahead.block(b);
        let (ys, act_d) = doubled_activation(double, y);
        let start = lanes_start(bias, ys);
        for p in 0..4 {
            let (wa, wb) = (w[2 * p].get_unchecked(b), w[2 * p + 1].get_unchecked(b));
            let qa = _mm256_loadu_si256(wa.qs.as_ptr() as *const __m256i);
            let qb = _mm256_loadu_si256(wb.qs.as_ptr() as *const __m256i);
            let q = _mm512_permutex2var_epi32(
                _mm512_castsi256_si512(qa),
                pair_values,
                _mm512_castsi256_si512(qb),
            );
            let lanes = _mm512_dpbusd_epi32(start, _mm512_xor_si512(q, bias), ys);
            fma_pair(&mut acc[p], pair_scales, pair_d(wa.d, wb.d), act_d, lanes);
        }
    }
    rows_out(&acc)
}

/// Eight Q5_0 weight rows (`w[r]: [kb]`) · one Q8_0 row (`x: [kb]`): row `r`'s result is
/// `Q5_0Dot::dot(w[r], x)` bit for bit (`ggml_vec_dot_q5_0_q8_0`: Q8_0's float steps over
/// the values `v − 16`, `v` = nibble | fifth bit · 16 in 0..32). The pair's nibbles are
/// interleaved as Q4_1's; the fifth bits become a byte mask in the same layout (one
/// `vpshufb` picks each byte's `qh` byte, one `vptestmb` its bit) that adds 16 where set.
/// `vpdpbusd` takes `v` unsigned, and each lane starts at −16 · Σ4 a (once per block):
/// Σ v·a − 16·Σ a = Σ (v − 16)·a, exactly.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI, FMA and F16C must be available.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn q5_0_rows8(w: [&[Q5_0]; 8], x: &[Q8_0], ahead: Ahead) -> [f32; 8] {
    check_rows("q5_0_rows8", w, x.len());
    let double = load_index(&DOUBLE_DWORDS);
    let pair_quants = load_index(&PAIR_NIBBLE_DWORDS);
    let pair_scales = load_index(&PAIR_SCALES_ADJACENT);
    let shift = _mm512_maskz_mov_epi64(0b1111_0000, _mm512_set1_epi16(4));
    let low4 = _mm512_set1_epi8(0x0F);
    let sixteen = _mm512_set1_epi8(16);
    let pick_qh = _mm512_loadu_si512(Q5_0_QH_BYTE.as_ptr() as *const _);
    let qh_bit = _mm512_loadu_si512(Q5_0_QH_BIT.as_ptr() as *const _);
    let mut acc = [_mm512_setzero_ps(); 4];
    for (b, y) in x.iter().enumerate() {
        ahead.block(b);
        let (ys, act_d) = doubled_activation(double, y);
        let start = lanes_start(sixteen, ys);
        for p in 0..4 {
            let (wa, wb) = (w[2 * p].get_unchecked(b), w[2 * p + 1].get_unchecked(b));
            let qa = _mm512_castsi128_si512(_mm_loadu_si128(wa.qs.as_ptr() as *const __m128i));
            let qb = _mm512_castsi128_si512(_mm_loadu_si128(wb.qs.as_ptr() as *const __m128i));
            let q = _mm512_permutex2var_epi32(qa, pair_quants, qb);
            let nibbles = _mm512_and_si512(_mm512_srlv_epi16(q, shift), low4);
            // Dwords [qh_a, qh_b] repeated; each byte's fifth bit, in the nibbles' layout.
            let qh = (u32::from_le_bytes(wb.qh) as u64) << 32 | u32::from_le_bytes(wa.qh) as u64;
            let qh = _mm512_shuffle_epi8(_mm512_set1_epi64(qh as i64), pick_qh);
            let fifth = _mm512_test_epi8_mask(qh, qh_bit);
            let v = _mm512_mask_add_epi8(nibbles, fifth, nibbles, sixteen);
            let lanes = _mm512_dpbusd_epi32(start, v, ys);
            fma_pair(&mut acc[p], pair_scales, pair_d(wa.d, wb.d), act_d, lanes);
        }
    }
    rows_out(&acc)
}

/// A Q8_0 activation block's quants with each 4-byte group doubled (by `double`, the
/// kernel's `DOUBLE_DWORDS` loaded once) (`[y0, y0, y1, y1, ..]`:
/// both rows of a pair see the same activation), and its scale in every lane.
#[inline(always)]
unsafe fn doubled_activation(double: __m512i, y: &Q8_0) -> (__m512i, __m512) {
    let ys = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
    let ys = _mm512_permutexvar_epi32(double, _mm512_castsi256_si512(ys));
    (ys, _mm512_set1_ps(f16_to_f32(y.d)))
}

/// `−Σ4 (offset · a)` per lane: where lanes start when the weights enter `vpdpbusd` as
/// unsigned `w + offset`.
#[inline(always)]
unsafe fn lanes_start(offset: __m512i, ys: __m512i) -> __m512i {
    let zero = _mm512_setzero_si512();
    _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, offset, ys))
}

/// A row pair's weight block scales as `[d_a, d_b, 0, 0]`.
#[inline(always)]
unsafe fn pair_d(a: half::f16, b: half::f16) -> __m128 {
    let bits = a.to_bits() as u32 | (b.to_bits() as u32) << 16;
    _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))
}

/// The 8 rows' results: each row's `hsum_float_8` of its lanes in `acc`.
#[inline(always)]
unsafe fn rows_out(acc: &[__m512; 4]) -> [f32; 8] {
    let mut out = [0f32; 8];
    _mm256_storeu_ps(
        out.as_mut_ptr(),
        hsum_rows(acc, load_index(&ROW_RESULT_INDEX)),
    );
    out
}

/// `acc = (d_w · d_a) · cvt(lanes) + acc` for a row pair: `w_scales` holds the two rows'
/// block scales at the lanes `pick` spreads to `[d_a, d_b]` pairs, `act_d` the activation
/// block's scale in every lane (the product ggml forms per row).
#[inline(always)]
unsafe fn fma_pair(
    acc: &mut __m512,
    pick: __m512i,
    w_scales: __m128,
    act_d: __m512,
    lanes: __m512i,
) {
    let wd = _mm512_permutexvar_ps(pick, _mm512_castps128_ps512(w_scales));
    *acc = _mm512_fmadd_ps(_mm512_mul_ps(wd, act_d), _mm512_cvtepi32_ps(lanes), *acc);
}
