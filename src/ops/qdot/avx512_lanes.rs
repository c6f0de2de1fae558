//! The pair-lane layout the AVX-512 VNNI kernels share (`avx512`'s panels, `avx512_gemv`'s
//! eight weight rows): a 512-bit register holds the 8 ggml lanes of two rows interleaved,
//! `[a0, b0, .., a3, b3 | a4, b4, .., a7, b7]`, and four registers hold a group of 8 rows.
//! Here: the index vectors that build that layout and the folds that take 8 rows' results
//! out of it.

use std::arch::x86_64::*;

/// `vpermd` indices doubling each 4-byte group: `[g0, g0, g1, g1, .., g7, g7]`.
pub(super) const DOUBLE_DWORDS: [i32; 16] = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7];
/// Lanes of `hsum_rows`' last step holding rows 0..8.
pub(super) const ROW_RESULT_INDEX: [i32; 16] = [0, 1, 4, 5, 8, 9, 12, 13, 0, 0, 0, 0, 0, 0, 0, 0];

/// For each byte of a pair register in the interleaved nibble layout (`q4_1_rows8`'s), the
/// index (within its 128-bit lane of `[qh_a, qh_b, qh_a, qh_b]`) of the `qh` byte holding its
/// element's fifth bit, and that bit's mask. The element of byte `j` is `4·(j/8) + j%4`
/// whichever row the byte belongs to, so with one row's `qh` in every dword the same tables
/// unpack that row doubled (`avx512`'s panels, `[w0..4, w0..4, w4..8, w4..8, ..]`).
pub(super) const Q5_0_QH_BYTE: [u8; 64] = qh_tables().0;
pub(super) const Q5_0_QH_BIT: [u8; 64] = qh_tables().1;

const fn qh_tables() -> ([u8; 64], [u8; 64]) {
    let (mut byte, mut bit) = ([0u8; 64], [0u8; 64]);
    let mut j = 0;
    while j < 64 {
        // Byte j: 4-byte group (j % 32) / 4 alternates rows a, b; the upper 256 bits hold
        // elements 16..32.
        let group = (j % 32) / 4;
        let row = group % 2;
        let element = 16 * (j / 32) + 4 * (group / 2) + j % 4;
        byte[j] = (4 * row + element / 8) as u8;
        bit[j] = 1 << (element % 8);
        j += 1;
    }
    (byte, bit)
}

/// One of the index vectors above, in a register.
#[inline(always)]
pub(super) unsafe fn load_index(idx: &[i32; 16]) -> __m512i {
    _mm512_loadu_si512(idx.as_ptr() as *const _)
}

/// Each row's `hsum_float_8` of a group's 4 pair accumulators: `[f32; 8]` in row order.
/// ggml folds `r_j = x_j + x_{j+4}`, then `t_0 = r_0 + r_2`, `t_1 = r_1 + r_3`, then
/// `t_0 + t_1`; every add here is one of those (float addition is commutative).
#[inline(always)]
pub(super) unsafe fn hsum_rows(acc: &[__m512; 4], result_idx: __m512i) -> __m256 {
    // acc[p] 256-bit halves: [a0 b0 a1 b1 a2 b2 a3 b3 | a4 b4 .. a7 b7].
    let lo01 = _mm512_shuffle_f32x4::<0b01_00_01_00>(acc[0], acc[1]);
    let hi01 = _mm512_shuffle_f32x4::<0b11_10_11_10>(acc[0], acc[1]);
    let lo23 = _mm512_shuffle_f32x4::<0b01_00_01_00>(acc[2], acc[3]);
    let hi23 = _mm512_shuffle_f32x4::<0b11_10_11_10>(acc[2], acc[3]);
    // 256-bit half h of r01 (pair h), of r23 (pair 2+h): [ra0 rb0 ra1 rb1 | ra2 rb2 ra3 rb3].
    let r01 = _mm512_add_ps(lo01, hi01);
    let r23 = _mm512_add_ps(lo23, hi23);
    // chunk p: [ta0 tb0 ta1 tb1] of pair p.
    let r02 = _mm512_shuffle_f32x4::<0b10_00_10_00>(r01, r23);
    let r13 = _mm512_shuffle_f32x4::<0b11_01_11_01>(r01, r23);
    let t = _mm512_add_ps(r02, r13);
    // lanes 0, 1 of chunk p: rows 2p, 2p+1.
    let sums = _mm512_add_ps(t, _mm512_shuffle_ps::<0b01_00_11_10>(t, t));
    _mm512_castps512_ps256(_mm512_permutexvar_ps(result_idx, sums))
}
