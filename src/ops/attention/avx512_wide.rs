//! AVX-512 attention scores with positions in the vector lanes, for units with many query
//! heads (prefill tiles): bit-identical to `avx512::scores`, with fewer vector operations
//! per score.
//!
//! `avx512::scores` keeps a K row's 64 dimensions in the lanes; ggml's fold `(a0 + a2) +
//! (a1 + a3)` and `reduce16`'s halving steps then use half-empty registers and shuffles.
//! Here each 16-position tile of K is widened and transposed once (`kt[d]` = the 16
//! positions' element `d`), and every step of ggml's order becomes one full-width
//! operation over 16 positions: per query head and tile, 32 FMAs onto zero (the query
//! element broadcast), 32 FMAs that fuse the other products into `reduce64`'s first fold
//! step (exact products, see `attention`), its last step (16 adds), `reduce16`'s tree
//! (15 adds) and the scale. Each addition pairs the same two operands as ggml's (float
//! addition is commutative), so every score has the same bits. The transpose (4 × 64 shuffles per
//! tile) pays off when a tile serves many heads; `avx512::scores` is kept for decode.

use half::f16;
use std::arch::x86_64::*;

use super::avx512::HEAD_DIM;
use crate::ops::ggml_math::x86::regs;

/// Positions per tile: one register's lanes.
const POS_TILE: usize = 16;
/// Query heads whose products share each loaded `kt` register.
const HEADS_PER_PASS: usize = 4;
/// Heads per unit from which this kernel is used: a prefill tile has 8-16 rows' heads; a
/// decode unit (one row, SmolLM2's 3 heads) is faster with `avx512::scores`, 1.23 vs
/// 1.69 ms per step at c=32 (`bench_attention_shapes`, bench/NOTES.md §25).
pub const MIN_HEADS: usize = 8;

/// 16 positions' K, widened and transposed: `[d][position]`, one register per `d`.
#[repr(C, align(64))]
struct KTile([[f32; POS_TILE]; HEAD_DIM]);

/// `scores[h * stride + pos] = (q_h · k_pos) * scale` for every head `h` of the unit
/// (`q16: [heads, 64]`, head `h` of row `h / group`) and `pos < n_ctx[h / group]`, in
/// `ggml_vec_dot_f16`'s order (as `avx512::scores`).
///
/// # Safety
/// AVX-512F; `slot_of(pos) + 64 <= k_cache.len()` for `pos < max(n_ctx)`; `scores` holds
/// `heads * stride` values, `stride >= max(n_ctx)`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn scores(
    k_cache: &[f16],
    slot_of: &impl Fn(usize) -> usize,
    n_ctx: &[usize],
    q16: &[f32],
    scale: f32,
    scores: &mut [f32],
    stride: usize,
) {
    let heads = q16.len() / HEAD_DIM;
    let group = heads / n_ctx.len();
    let n_max = n_ctx.iter().copied().max().unwrap_or(0);
    assert!(scores.len() >= heads * stride && stride >= n_max);
    let mut kt = KTile([[0.0; POS_TILE]; HEAD_DIM]);
    for p0 in (0..n_max).step_by(POS_TILE) {
        transpose_tile(k_cache, slot_of, p0..(p0 + POS_TILE).min(n_max), &mut kt);
        let pass = Pass {
            kt: &kt,
            q16,
            n_ctx,
            group,
            scale,
            p0,
        };
        let mut h0 = 0;
        while h0 < heads {
            let take = HEADS_PER_PASS.min(heads - h0);
            let out = scores.as_mut_ptr().add(h0 * stride);
            match take {
                4 => pass.heads::<4>(h0, out, stride),
                3 => pass.heads::<3>(h0, out, stride),
                2 => pass.heads::<2>(h0, out, stride),
                _ => pass.heads::<1>(h0, out, stride),
            }
            h0 += take;
        }
    }
}

/// Widens the K rows of `positions` (at most 16) and transposes them into `kt`; lanes of
/// missing positions are zero.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn transpose_tile(
    k_cache: &[f16],
    slot_of: &impl Fn(usize) -> usize,
    positions: std::ops::Range<usize>,
    kt: &mut KTile,
) {
    let row_at: [Option<usize>; POS_TILE] = regs(|i| {
        let pos = positions.start + i;
        (pos < positions.end).then(|| slot_of(pos))
    });
    for block in 0..HEAD_DIM / POS_TILE {
        let rows: [__m512; POS_TILE] = regs(|i| {
            if let Some(row) = row_at[i] {
                let at = row + block * POS_TILE;
                let src = k_cache[at..at + POS_TILE].as_ptr() as *const __m256i;
                _mm512_cvtph_ps(_mm256_loadu_si256(src))
            } else {
                _mm512_setzero_ps()
            }
        });
        let cols = transpose16(rows);
        for (c, col) in cols.into_iter().enumerate() {
            _mm512_store_ps(kt.0[block * POS_TILE + c].as_mut_ptr(), col);
        }
    }
}

/// 16×16 transpose: `out[c][r] = rows[r][c]`.
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // Pairs of rows interleaved, then quads: t[4q + c] holds, in 128-bit lane L, rows
    // 4q..4q + 4 of column 4L + c.
    let s: [__m512; 16] = regs(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    let t: [__m512; 16] = regs(|i| {
        let (q, c) = (i / 4, i % 4);
        let (a, b) = (
            _mm512_castps_pd(s[4 * q + c / 2]),
            _mm512_castps_pd(s[4 * q + 2 + c / 2]),
        );
        _mm512_castpd_ps(if c % 2 == 0 {
            _mm512_unpacklo_pd(a, b)
        } else {
            _mm512_unpackhi_pd(a, b)
        })
    });
    // Gather each column's four 128-bit lanes: u[c][k] pairs quads (0, 1) and (2, 3).
    let u: [[__m512; 4]; 4] = regs(|c| {
        [
            _mm512_shuffle_f32x4::<0x88>(t[c], t[4 + c]),
            _mm512_shuffle_f32x4::<0xDD>(t[c], t[4 + c]),
            _mm512_shuffle_f32x4::<0x88>(t[8 + c], t[12 + c]),
            _mm512_shuffle_f32x4::<0xDD>(t[8 + c], t[12 + c]),
        ]
    });
    regs(|col| {
        let (lane, c) = (col / 4, col % 4);
        let (a, b) = (u[c][lane % 2], u[c][2 + lane % 2]);
        if lane < 2 {
            _mm512_shuffle_f32x4::<0x88>(a, b)
        } else {
            _mm512_shuffle_f32x4::<0xDD>(a, b)
        }
    })
}

/// One tile's inputs for a pass over a few heads.
struct Pass<'a> {
    kt: &'a KTile,
    q16: &'a [f32],
    n_ctx: &'a [usize],
    group: usize,
    scale: f32,
    p0: usize,
}

impl Pass<'_> {
    /// Scores of heads `h0..h0 + H` for the tile's 16 positions, stored (masked to each
    /// head's context) at `out + (h - h0) * stride + p0`.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn heads<const H: usize>(&self, h0: usize, out: *mut f32, stride: usize) {
        let q = self.q16.as_ptr().add(h0 * HEAD_DIM);
        let mut kt = self.kt.0.as_ptr() as *const f32;
        // Each `x` is finished before the next one's loads: an empty asm takes its
        // registers and hands back an offset (0) that the next loads add to `kt`. Left
        // free, the compiler computes all 64 products of every head first and spills them.
        let mut x = |l: usize| {
            let x = fold_x::<H>(kt, q, l);
            let mut offset = 0usize;
            for v in &x {
                std::arch::asm!("/* {0} {1} */", in(zmm_reg) *v, inout(reg) offset,
                    options(nomem, nostack, preserves_flags));
            }
            kt = kt.wrapping_add(offset);
            x
        };
        // reduce16: t3_i = x_{i+8} + x_i, t6_i = t3_{i+4} + t3_i, then
        // (t6_0 + t6_2) + (t6_1 + t6_3).
        let mut t6 = |i: usize| {
            let t3_i = add::<H>(x(i + 8), x(i));
            add::<H>(add::<H>(x(i + 12), x(i + 4)), t3_i)
        };
        let even = add::<H>(t6(0), t6(2));
        let odd = add::<H>(t6(1), t6(3));
        let sums = add::<H>(even, odd);
        let scale = _mm512_set1_ps(self.scale);
        for (h, &sum) in sums.iter().enumerate() {
            let n = self.n_ctx[(h0 + h) / self.group];
            if n <= self.p0 {
                continue;
            }
            let valid = (n - self.p0).min(POS_TILE);
            let mask: __mmask16 = if valid == POS_TILE {
                !0
            } else {
                (1 << valid) - 1
            };
            let dst = out.add(h * stride + self.p0);
            _mm512_mask_storeu_ps(dst, mask, _mm512_mul_ps(sum, scale));
        }
    }
}

/// `reduce64`'s lane fold `x_l = (a0_l + a2_l) + (a1_l + a3_l)` of `H` heads (`q: [H,
/// 64]`), where `a_j,l = k[16j + l] · q[16j + l]` (exact; `a0`, `a1` an FMA onto zero,
/// `a2`, `a3` fused into the sums), 16 positions per register (`kt`: the tile, `[64][16]`).
#[inline(always)]
unsafe fn fold_x<const H: usize>(kt: *const f32, q: *const f32, l: usize) -> [__m512; H] {
    let zero = _mm512_setzero_ps();
    let k = |j: usize| _mm512_load_ps(kt.add(POS_TILE * (16 * j + l)));
    let (k0, k1, k2, k3) = (k(0), k(1), k(2), k(3));
    let mut x = [zero; H];
    for (h, xh) in x.iter_mut().enumerate() {
        let qh = q.add(h * HEAD_DIM + l);
        let a0 = _mm512_fmadd_ps(k0, _mm512_set1_ps(*qh), zero);
        let a1 = _mm512_fmadd_ps(k1, _mm512_set1_ps(*qh.add(16)), zero);
        // `a0 + a2` with a2's (exact) product fused in: the same bits.
        let a02 = _mm512_fmadd_ps(k2, _mm512_set1_ps(*qh.add(32)), a0);
        let a13 = _mm512_fmadd_ps(k3, _mm512_set1_ps(*qh.add(48)), a1);
        *xh = _mm512_add_ps(a02, a13);
    }
    x
}

/// Lane-wise `a + b` of `H` registers.
#[inline(always)]
unsafe fn add<const H: usize>(a: [__m512; H], b: [__m512; H]) -> [__m512; H] {
    let mut out = a;
    for (o, &y) in out.iter_mut().zip(&b) {
        *o = _mm512_add_ps(*o, y);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose16_transposes() {
        if !crate::ops::cpu_features::avx512() {
            eprintln!("skipped: no AVX-512");
            return;
        }
        let m: Vec<f32> = (0..256).map(|i| i as f32).collect();
        // SAFETY: AVX-512 checked above.
        let out = unsafe {
            let rows = regs(|r| _mm512_loadu_ps(m[16 * r..].as_ptr()));
            transpose16(rows)
        };
        for (c, col) in out.iter().enumerate() {
            let mut v = [0f32; 16];
            // SAFETY: as above.
            unsafe { _mm512_storeu_ps(v.as_mut_ptr(), *col) };
            for (r, &x) in v.iter().enumerate() {
                assert_eq!(x, m[16 * r + c], "column {c}, row {r}");
            }
        }
    }
}
