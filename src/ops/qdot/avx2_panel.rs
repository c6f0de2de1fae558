//! AVX2 kernels over row panels (`panel_layout`): one weight row against 8·G activation
//! rows, each row's float operations exactly those of its single-row kernel, with no
//! AVX-512 and no VNNI (AVX2 + FMA + F16C, as `legacy::avx2`).
//!
//! Lanes: ggml's single-row kernels keep 8 f32 lanes per row, lane `l` accumulating the
//! products of block bytes `4l..4l+4`. The panel stores a row pair's quants interleaved by
//! 4-byte groups, so each 256-bit half of a pair's 64 bytes holds elements 0..16 (then
//! 16..32) of both rows: `[a0..4, b0..4, a4..8, b4..8, ..]`. Against weights unpacked once
//! per block into `[w0..4, w0..4, w4..8, w4..8, ..]` (and the same for elements 16..32),
//! ggml's own `madd(maddubs(..), 1)` gives the pair's exact i32 lane sums interleaved,
//! `[a0, b0, a1, b1, a2, b2, a3, b3]` (lanes 0..4, then 4..8): the same integers as
//! `mul_sum_us8_pairs` / `mul_sum_i8_pairs` of each row, same sign trick, no saturation.
//! The products `d_w · d_a` ggml forms per row are one multiply per group of 8 rows,
//! stored, and broadcast back as each pair's `[d_a, d_b]·d_w` by a load port; then
//! `acc = d · cvt(lanes) + acc` is one FMA per half, exactly the single-row
//! `_mm256_fmadd_ps(d, q, acc)` per lane. At the end
//! `hsum_rows` folds each row's 8 lanes in `hsum_float_8` order, 8 rows at once.
//!
//! Sixteen 256-bit registers hold one group's 8 accumulators and the unpacked weights,
//! so a call with G groups runs the weight row once per group (the row is in L1).
//!
//! Q4_1: unsigned nibbles × signed Q8_1 quants, `summs = fma(m_w, s_a, summs)` per row in
//! one 8-lane FMA, result `hsum + summs` (`ggml_vec_dot_q4_1_q8_1`).
//! Q8_0 and Q5_0 (`Signed32`): signed weights × signed activations (this level's panels
//! store them unbiased, `panel::q8_0_bias`), ggml's `mul_sum_i8_pairs`: `|w|` (once per
//! block) times `sign(a, w)` (`ggml_vec_dot_q8_0_q8_0`, `ggml_vec_dot_q5_0_q8_0`). A Q5_0
//! row is first rewritten as Q8_0 blocks (`q5_0_rows`), so it is unpacked once per call.
//! Q6_K: per 256-element super-block one FMA per lane, as the others per 32-element
//! block; its integer lanes are ggml's (see `q6k_rows`).
//! Q4_K in the order of ggml's repacked gemv (`Q4KInterleaved`): per super-block and row
//! two exact integers and two FMAs, 8 rows per instruction (see `q4k_rows`).

use std::arch::x86_64::*;

use super::blocks::{Q4K, Q4_1, Q5_0, Q6K, Q8_0};
use super::kquants::avx2::{q4k_block_scales, q4k_vectors, q6k_vectors, Q4KRowSums};
use super::legacy::Signed32;
use super::panel_layout::{check_blocks, PanelQ8K, PanelQ8_0, PanelQ8_1, RowScales, GROUP, PAIRS};
use super::x86::f16_to_f32;

/// `vpermd` indices doubling the 4-byte groups of elements 0..16: `[g0, g0, .., g3, g3]`.
const DOUBLE_LOW: [i32; 8] = [0, 0, 1, 1, 2, 2, 3, 3];
/// The same for elements 16..32.
const DOUBLE_HIGH: [i32; 8] = [4, 4, 5, 5, 6, 6, 7, 7];

/// Weight blocks whose f32 scales `q4_1_rows` converts at a time (2 KiB on the stack).
const SCALE_CHUNK: usize = 256;

/// One group's accumulators: `acc[p][h]` holds rows `2p, 2p+1` lanes `4h..4h+4`,
/// interleaved `[a, b, a, b, ..]`.
type GroupAcc = [[__m256; 2]; PAIRS];

#[inline(always)]
unsafe fn load_index(idx: &[i32; 8]) -> __m256i {
    _mm256_loadu_si256(idx.as_ptr() as *const __m256i)
}

/// One 32-byte half (`h`) of row pair `p`'s 64 bytes: quants of elements `16h..16h+16`
/// (`T` a byte), or for `PanelQ8K::bsums` (`T = i16`, `N = 32`) sums `8h..8h+8`.
#[inline(always)]
unsafe fn pair_half<T, const N: usize>(v: &[[T; N]; PAIRS], p: usize, h: usize) -> __m256i {
    const { assert!(N * std::mem::size_of::<T>() == 64) };
    _mm256_loadu_si256((v[p].as_ptr() as *const u8).add(32 * h) as *const __m256i)
}

/// Unsigned bytes · signed bytes, summed in fours into 8 i32 lanes (`mul_sum_us8_pairs`).
#[inline(always)]
unsafe fn lane_sums(ones: __m256i, ax: __m256i, sy: __m256i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, _mm256_maddubs_epi16(ax, sy)))
}

/// The 8 bytes at `at` in every qword: `vbroadcastsd` from memory, which runs on a load
/// port (the compiler would forward a value it has just stored through shuffles).
#[inline]
#[target_feature(enable = "avx")]
unsafe fn broadcast_pair(at: *const f32) -> __m256 {
    let v: __m256;
    std::arch::asm!(
        "vbroadcastsd {v}, qword ptr [{at}]",
        v = out(ymm_reg) v,
        at = in(reg) at,
        options(nostack, preserves_flags, readonly),
    );
    v
}

/// The products `d_w · d_act` of the 8 rows' block scales (the product ggml forms per
/// row), as one `[d_2p, d_2p+1]` pattern per row pair: one multiply for the 8 rows,
/// stored, and each pair broadcast back by a load port, not a multiply per pair.
#[inline(always)]
unsafe fn pair_scales(wd: __m256, act_d: &[f32; GROUP]) -> [__m256; PAIRS] {
    // Uninitialized: the store writes it whole (no zeroing store before it).
    let mut scales = std::mem::MaybeUninit::<RowScales>::uninit();
    let at = scales.as_mut_ptr() as *mut f32;
    _mm256_store_ps(at, _mm256_mul_ps(wd, _mm256_loadu_ps(act_d.as_ptr())));
    // A loop, not `array::from_fn`: a closure would not inherit the caller's features.
    let mut d = [_mm256_setzero_ps(); PAIRS];
    for (p, dp) in d.iter_mut().enumerate() {
        *dp = broadcast_pair(at.add(2 * p));
    }
    d
}

/// `[x.lo + x.hi, y.lo + y.hi]` by 128-bit halves.
#[inline(always)]
unsafe fn add_halves(x: __m256, y: __m256) -> __m256 {
    let lo = _mm256_permute2f128_ps::<0x20>(x, y);
    let hi = _mm256_permute2f128_ps::<0x31>(x, y);
    _mm256_add_ps(lo, hi)
}

/// Each row's `hsum_float_8` of a group's accumulators: `[f32; 8]` in row order.
/// ggml folds `r_j = x_j + x_{j+4}`, then `t_0 = r_0 + r_2`, `t_1 = r_1 + r_3`, then
/// `t_0 + t_1`; every add here is one of those (float addition is commutative).
#[inline(always)]
unsafe fn hsum_rows(acc: &GroupAcc) -> __m256 {
    // r[p] = [ra0 rb0 ra1 rb1 | ra2 rb2 ra3 rb3] (rows a = 2p, b = 2p+1).
    let mut r = [_mm256_setzero_ps(); PAIRS];
    for (rp, ap) in r.iter_mut().zip(acc) {
        *rp = _mm256_add_ps(ap[0], ap[1]);
    }
    // t01 = [ta0 tb0 ta1 tb1 | tc0 td0 tc1 td1] (pair 1's rows c, d); t23 likewise.
    let (t01, t23) = (add_halves(r[0], r[1]), add_halves(r[2], r[3]));
    // [t·0 of a b e f | c d g h] + [t·1 of the same] = rows [0 1 4 5 | 2 3 6 7].
    let u = _mm256_shuffle_ps::<0b01_00_01_00>(t01, t23);
    let v = _mm256_shuffle_ps::<0b11_10_11_10>(t01, t23);
    let s = _mm256_castps_pd(_mm256_add_ps(u, v));
    _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(s))
}

/// Q4_1 weight row `w: [kb]` · `8·G` Q8_1 rows (`x[g]: [kb]` panels): `out[g][r]`.
///
/// # Safety
/// AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_1_rows<const G: usize>(w: &[Q4_1], x: [&[PanelQ8_1]; G]) -> [[f32; GROUP]; G] {
    check_blocks("q4_1_rows", w.len(), x);
    let mut out = [[0f32; GROUP]; G];
    if w.is_empty() {
        return out;
    }
    let double = load_index(&DOUBLE_LOW);
    let low4 = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    // Each group's accumulators between block chunks; a group starts from zeros in
    // registers, so no call zeroes this 1 KiB in memory (a `memset` per call).
    let mut acc = [std::mem::MaybeUninit::<(GroupAcc, __m256)>::uninit(); G];
    // The blocks' `[d, m]` as f32, converted once per call rather than once per group;
    // uninitialized, so that a call does not zero 2 KiB for the few entries it writes.
    let mut scales = [std::mem::MaybeUninit::<[f32; 2]>::uninit(); SCALE_CHUNK];
    for first in (0..w.len()).step_by(SCALE_CHUNK) {
        let blocks = &w[first..(first + SCALE_CHUNK).min(w.len())];
        for (dm, wb) in scales.iter_mut().zip(blocks) {
            dm.write([f16_to_f32(wb.d), f16_to_f32(wb.m)]);
        }
        // SAFETY: the loop above wrote the first `blocks.len()` entries.
        let scales = std::slice::from_raw_parts(scales.as_ptr() as *const [f32; 2], blocks.len());
        for (g, panels) in x.into_iter().enumerate() {
            let (mut group_acc, mut group_summs) = if first == 0 {
                ([[_mm256_setzero_ps(); 2]; PAIRS], _mm256_setzero_ps())
            } else {
                // SAFETY: the chunk before this one wrote every group's entry.
                acc[g].assume_init()
            };
            for ((wb, dm), y) in blocks.iter().zip(scales).zip(&panels[first..]) {
                let wd = _mm256_broadcast_ss(&dm[0]);
                let wm = _mm256_broadcast_ss(&dm[1]);
                let q = _mm256_castsi128_si256(_mm_loadu_si128(wb.qs.as_ptr() as *const __m128i));
                // The 16 bytes' low nibbles are elements 0..16, their high nibbles 16..32.
                let q = _mm256_permutevar8x32_epi32(q, double);
                let wq = [
                    _mm256_and_si256(q, low4),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(q), low4),
                ];
                group_summs = _mm256_fmadd_ps(wm, _mm256_loadu_ps(y.s.as_ptr()), group_summs);
                let d = pair_scales(wd, &y.d);
                for p in 0..PAIRS {
                    for h in 0..2 {
                        let lanes = lane_sums(ones, wq[h], pair_half(&y.qs, p, h));
                        group_acc[p][h] = _mm256_fmadd_ps(d[p], lanes, group_acc[p][h]);
                    }
                }
            }
            acc[g].write((group_acc, group_summs));
        }
    }
    for g in 0..G {
        // SAFETY: there is at least one block (above), so the first chunk wrote it.
        let (group_acc, group_summs) = acc[g].assume_init();
        _mm256_storeu_ps(
            out[g].as_mut_ptr(),
            _mm256_add_ps(hsum_rows(&group_acc), group_summs),
        );
    }
    out
}

/// Signed 32-element weight row `w: [kb]` (Q8_0, Q5_0) · `8·G` Q8_0 rows (`x[g]: [kb]`
/// unbiased panels): `out[g][r]`.
///
/// # Safety
/// AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn signed32_rows<B: Signed32, const G: usize>(
    w: &[B],
    x: [&[PanelQ8_0]; G],
) -> [[f32; GROUP]; G] {
    check_blocks("signed32_rows", w.len(), x);
    let (double_lo, double_hi) = (load_index(&DOUBLE_LOW), load_index(&DOUBLE_HIGH));
    let ones = _mm256_set1_epi16(1);
    let mut out = [[0f32; GROUP]; G];
    for (g, panels) in x.into_iter().enumerate() {
        let mut acc: GroupAcc = [[_mm256_setzero_ps(); 2]; PAIRS];
        for (wb, y) in w.iter().zip(panels) {
            let wd = _mm256_set1_ps(f16_to_f32(wb.d()));
            let v = wb.values_avx2();
            let wq = [
                _mm256_permutevar8x32_epi32(v, double_lo),
                _mm256_permutevar8x32_epi32(v, double_hi),
            ];
            let abs = [
                _mm256_sign_epi8(wq[0], wq[0]),
                _mm256_sign_epi8(wq[1], wq[1]),
            ];
            let d = pair_scales(wd, &y.d);
            for p in 0..PAIRS {
                for h in 0..2 {
                    let a = pair_half(&y.qs, p, h);
                    let lanes = lane_sums(ones, abs[h], _mm256_sign_epi8(a, wq[h]));
                    acc[p][h] = _mm256_fmadd_ps(d[p], lanes, acc[p][h]);
                }
            }
        }
        _mm256_storeu_ps(out[g].as_mut_ptr(), hsum_rows(&acc));
    }
    out
}

/// Most blocks `q5_0_rows` rewrites at a time (8.5 KiB on the stack); longer rows run
/// `signed32_rows` on the Q5_0 blocks themselves.
const Q5_0_REWRITE_BLOCKS: usize = 256;

/// Q5_0 weight row `w: [kb]` · `8·G` Q8_0 rows: the row's blocks rewritten as Q8_0 blocks
/// (the same `d`, the values ggml unpacks, −16..15), then `signed32_rows` over those.
/// ggml's Q5_0 and Q8_0 dot products take the same float steps over those values, so the
/// results are the same bits; `signed32_rows` on Q5_0 would unpack every block once per
/// group instead of once per call.
///
/// # Safety
/// AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q5_0_rows<const G: usize>(w: &[Q5_0], x: [&[PanelQ8_0]; G]) -> [[f32; GROUP]; G] {
    if w.len() > Q5_0_REWRITE_BLOCKS {
        return signed32_rows::<Q5_0, G>(w, x);
    }
    let mut rewritten = [std::mem::MaybeUninit::<Q8_0>::uninit(); Q5_0_REWRITE_BLOCKS];
    for (out, block) in rewritten.iter_mut().zip(w) {
        let q8 = out.as_mut_ptr();
        std::ptr::addr_of_mut!((*q8).d).write(block.d);
        let qs = std::ptr::addr_of_mut!((*q8).qs) as *mut __m256i;
        _mm256_storeu_si256(qs, block.values_avx2());
    }
    // SAFETY: the loop above wrote the first `w.len()` blocks whole.
    let rewritten = std::slice::from_raw_parts(rewritten.as_ptr() as *const Q8_0, w.len());
    signed32_rows::<Q8_0, G>(rewritten, x)
}

/// Q6_K weight row `w: [kb]` · `8·G` Q8_K rows (`x[g]: [kb]` super-block panels):
/// `out[g][r]`. Per super-block and row, ggml's 8 integer lanes (`Q6KAvx2`): each lane
/// starts at `−32 · (b₂ₗ·sc₂ₗ + b₂ₗ₊₁·sc₂ₗ₊₁)` (`q8sclsub`: one `madd` of the pair's
/// interleaved 16-element sums against the scales) and adds, per 32-element chunk,
/// `madd(maddubs(q, a), sc)` with that half chunk's 16-element scale (unsigned 6-bit
/// values, |pair sum| ≤ 2·63·127: no saturation). Then `acc = (d_a · d_w) · cvt(lanes) + acc`.
///
/// # Safety
/// AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q6k_rows<const G: usize>(w: &[Q6K], x: [&[PanelQ8K]; G]) -> [[f32; GROUP]; G] {
    check_blocks("q6k_rows", w.len(), x);
    let double = [load_index(&DOUBLE_LOW), load_index(&DOUBLE_HIGH)];
    let zero = _mm256_setzero_si256();
    let mut out = [[0f32; GROUP]; G];
    for (g, panels) in x.into_iter().enumerate() {
        let mut acc: GroupAcc = [[_mm256_setzero_ps(); 2]; PAIRS];
        for (wb, y) in w.iter().zip(panels) {
            let wd = _mm256_set1_ps(f16_to_f32(wb.d));
            let q = q6k_vectors(wb);
            let sc = &wb.scales;
            // i16 pattern [sc₀ sc₁ sc₀ sc₁ sc₂ sc₃ sc₂ sc₃ ..] against the interleaved sums.
            let mut pairs = [0i32; 8];
            for (l, two) in pairs.iter_mut().enumerate() {
                *two = (sc[2 * l] as i16 as u16 as i32) | ((sc[2 * l + 1] as i16 as i32) << 16);
            }
            let pairs = _mm256_loadu_si256(pairs.as_ptr() as *const __m256i);
            let mut sub_scales = [zero; 2];
            let mut wq = [[zero; 2]; 8];
            for h in 0..2 {
                sub_scales[h] = _mm256_permutevar8x32_epi32(pairs, double[h]);
                for c in 0..8 {
                    wq[c][h] = _mm256_permutevar8x32_epi32(q[c], double[h]);
                }
            }
            let d = pair_scales(wd, &y.d);
            for p in 0..PAIRS {
                for h in 0..2 {
                    let bs = pair_half(&y.bsums, p, h);
                    let sub = _mm256_slli_epi32::<5>(_mm256_madd_epi16(bs, sub_scales[h]));
                    let mut lanes = _mm256_sub_epi32(zero, sub);
                    for c in 0..8 {
                        let t = _mm256_maddubs_epi16(wq[c][h], pair_half(&y.qs[c], p, h));
                        let scale = _mm256_set1_epi16(sc[2 * c + h] as i16);
                        lanes = _mm256_add_epi32(lanes, _mm256_madd_epi16(t, scale));
                    }
                    acc[p][h] = _mm256_fmadd_ps(d[p], _mm256_cvtepi32_ps(lanes), acc[p][h]);
                }
            }
        }
        _mm256_storeu_ps(out[g].as_mut_ptr(), hsum_rows(&acc));
    }
    out
}

/// Each row's total of a group's 4 pair registers (`[a, b, a, b, ..]` i32 lanes, rows
/// `a = 2p`, `b = 2p+1`): `[i32; 8]` in row order (exact; any order of the adds).
#[inline(always)]
unsafe fn row_totals(pairs: &[__m256i; PAIRS]) -> __m256i {
    // Per 128-bit half: [a b c d] partials of pairs (0, 1), then of pairs (2, 3).
    let fold = |x: __m256i, y: __m256i| {
        _mm256_add_epi32(_mm256_unpacklo_epi64(x, y), _mm256_unpackhi_epi64(x, y))
    };
    let (abcd, efgh) = (fold(pairs[0], pairs[1]), fold(pairs[2], pairs[3]));
    let lo = _mm256_permute2x128_si256::<0x20>(abcd, efgh);
    let hi = _mm256_permute2x128_si256::<0x31>(abcd, efgh);
    _mm256_add_epi32(lo, hi)
}

/// Q4_K weight row `w: [kb]` · `8·G` Q8_K rows (`x[g]: [kb]` super-block panels):
/// `out[g][r]`, in the order of ggml's repacked gemv (`Q4KInterleaved::dot`, as
/// `avx512::q4k_rows`): per super-block and row the exact integers `isum = Σ scale·q·a`
/// (per 32-element chunk and row pair `maddubs` of the doubled nibbles and the quants,
/// |pair sum| ≤ 2·15·127, then `madd` by the chunk's scale) and `imin = Σ min·bsum` (one
/// `madd` of the interleaved 16-element sums against the mins per half), each row's lanes
/// summed, then `acc = fma(isum, d_w·d_a, acc)` and `acc_min = fma(imin, dmin_w·d_a,
/// acc_min)` for 8 rows at once; result `acc − acc_min`.
///
/// # Safety
/// AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4k_rows<const G: usize>(w: &[Q4K], x: [&[PanelQ8K]; G]) -> [[f32; GROUP]; G] {
    check_blocks("q4k_rows", w.len(), x);
    let double = [load_index(&DOUBLE_LOW), load_index(&DOUBLE_HIGH)];
    let zero = _mm256_setzero_si256();
    let mut sums = [Q4KRowSums::new(); G];
    for (b, wb) in w.iter().enumerate() {
        let q = q4k_vectors(wb);
        let block = q4k_block_scales(wb);
        // Each chunk's nibbles doubled for both halves (16 registers' worth: on the stack).
        let mut wq = [[zero; 2]; 8];
        for (wqc, qc) in wq.iter_mut().zip(q) {
            for (h, wqh) in wqc.iter_mut().enumerate() {
                *wqh = _mm256_permutevar8x32_epi32(qc, double[h]);
            }
        }
        // Lane l of a half: the i16 pair [min, min] of the chunk its two 16-element sums cover.
        let min_halves = [
            _mm256_permutevar8x32_epi32(block.min_pairs, double[0]),
            _mm256_permutevar8x32_epi32(block.min_pairs, double[1]),
        ];
        for (g, rows) in sums.iter_mut().enumerate() {
            let y = x[g].get_unchecked(b);
            let mut isum = [zero; PAIRS];
            let mut imin = [zero; PAIRS];
            for (p, l) in imin.iter_mut().enumerate() {
                for (h, min_h) in min_halves.iter().enumerate() {
                    let m = _mm256_madd_epi16(pair_half(&y.bsums, p, h), *min_h);
                    *l = _mm256_add_epi32(*l, m);
                }
            }
            for (c, wqc) in wq.iter().enumerate() {
                let scale = _mm256_set1_epi16(block.scales[c] as i16);
                for (h, wqh) in wqc.iter().enumerate() {
                    for (p, l) in isum.iter_mut().enumerate() {
                        let t = _mm256_maddubs_epi16(*wqh, pair_half(&y.qs[c], p, h));
                        *l = _mm256_add_epi32(*l, _mm256_madd_epi16(t, scale));
                    }
                }
            }
            rows.add([row_totals(&isum), row_totals(&imin)], block.d, &y.d);
        }
    }
    let mut out = [[0f32; GROUP]; G];
    for (o, rows) in out.iter_mut().zip(sums) {
        *o = rows.rows();
    }
    out
}
