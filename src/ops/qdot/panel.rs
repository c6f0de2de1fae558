//! Row panels: packing quantized activations 8 rows at a time for the AVX-512 VNNI
//! multi-row kernels (`avx512`), and the `RowPanel` trait the panel matmul drives. The
//! block layout itself is `panel_layout`'s.
//!
//! Each lane of the kernels' vector operations is exactly the scalar operation the
//! single-row kernel (`Kernel::dot`) performs for that row, and the integer sums are
//! exact, so every row's result is bit-identical to `dot` (tests: `panel_tests`).

use super::blocks::{Q4_1, Q8_1};
use crate::ops::act_quant::{self, Q8_0};
use half::f16;

#[cfg(test)]
pub(crate) use super::panel_layout::get_row;
use super::panel_layout::{put_row, PAIRS};
pub use super::panel_layout::{PanelQ8_0, PanelQ8_1, GROUP, QK};

/// A weight type with a multi-row panel kernel.
pub trait RowPanel {
    /// One weight block (ggml's layout).
    type Weight: Sync;
    /// One activation block of a whole group.
    type Block: Copy + Send + Sync + 'static;
    /// The all-zero block (padding rows).
    const ZERO: Self::Block;

    /// Quantizes `rows.len() / k` (≤ 8) activation rows `rows: [r, k]` into one group's
    /// panel `out: [k / 32]`; lanes past `r` become zero.
    fn quantize_group(rows: &[f32], k: usize, out: &mut [Self::Block]);

    /// Whether the multi-row kernels can run on this CPU.
    fn available() -> bool;

    /// One weight row (`w: [kb]`) · the 16 rows of two groups (`a, b: [kb]` each).
    ///
    /// # Safety
    /// `available()` must be true.
    unsafe fn dot16(w: &[Self::Weight], a: &[Self::Block], b: &[Self::Block]) -> [f32; 16];

    /// One weight row · the 8 rows of one group.
    ///
    /// # Safety
    /// `available()` must be true.
    unsafe fn dot8(w: &[Self::Weight], a: &[Self::Block]) -> [f32; 8];
}

/// Q4_1 weights · Q8_1 activation panels (`ggml_vec_dot_q4_1_q8_1` order per row).
pub struct Q4_1Panel;

/// Q8_0 weights · Q8_0 activation panels (`ggml_vec_dot_q8_0_q8_0` order per row).
pub struct Q8_0Panel;

/// Checks the group's shape and returns its row count.
fn group_rows(rows: &[f32], k: usize, blocks: usize) -> usize {
    assert!(
        k > 0 && k == blocks * QK,
        "quantize_group: k = {k}, blocks = {blocks}"
    );
    assert!(rows.len().is_multiple_of(k), "quantize_group: ragged rows");
    let n = rows.len() / k;
    assert!(n <= GROUP, "quantize_group: {n} rows > {GROUP}");
    n
}

impl RowPanel for Q4_1Panel {
    type Weight = Q4_1;
    type Block = PanelQ8_1;
    const ZERO: PanelQ8_1 = PanelQ8_1 {
        qs: [[0; 2 * QK]; PAIRS],
        d: [0.0; GROUP],
        s: [0.0; GROUP],
    };

    fn quantize_group(rows: &[f32], k: usize, out: &mut [PanelQ8_1]) {
        let n = group_rows(rows, k, out.len());
        let mut tmp = [Q8_1::default()];
        for (b, panel) in out.iter_mut().enumerate() {
            *panel = Self::ZERO;
            for r in 0..n {
                act_quant::quantize_q8_1(&rows[r * k + b * QK..r * k + (b + 1) * QK], &mut tmp);
                put_row(&mut panel.qs, r, tmp[0].qs);
                panel.d[r] = tmp[0].d;
                panel.s[r] = tmp[0].s;
            }
        }
    }

    fn available() -> bool {
        has_avx512_vnni()
    }

    unsafe fn dot16(w: &[Q4_1], a: &[PanelQ8_1], b: &[PanelQ8_1]) -> [f32; 16] {
        let [lo, hi] = avx512::q4_1_rows::<2>(w, [a, b]);
        concat(lo, hi)
    }

    unsafe fn dot8(w: &[Q4_1], a: &[PanelQ8_1]) -> [f32; 8] {
        avx512::q4_1_rows::<1>(w, [a])[0]
    }
}

impl RowPanel for Q8_0Panel {
    type Weight = Q8_0;
    type Block = PanelQ8_0;
    const ZERO: PanelQ8_0 = PanelQ8_0 {
        qs: [[0x80; 2 * QK]; PAIRS],
        d: [0.0; GROUP],
    };

    fn quantize_group(rows: &[f32], k: usize, out: &mut [PanelQ8_0]) {
        let n = group_rows(rows, k, out.len());
        let mut tmp = [Q8_0 {
            d: f16::ZERO,
            qs: [0; QK],
        }];
        for (b, panel) in out.iter_mut().enumerate() {
            *panel = Self::ZERO;
            for r in 0..n {
                act_quant::quantize_q8_0(&rows[r * k + b * QK..r * k + (b + 1) * QK], &mut tmp);
                put_row(&mut panel.qs, r, tmp[0].qs.map(|q| q as u8 ^ 0x80));
                panel.d[r] = tmp[0].d.to_f32();
            }
        }
    }

    fn available() -> bool {
        has_avx512_vnni()
    }

    unsafe fn dot16(w: &[Q8_0], a: &[PanelQ8_0], b: &[PanelQ8_0]) -> [f32; 16] {
        let [lo, hi] = avx512::q8_0_rows::<2>(w, [a, b]);
        concat(lo, hi)
    }

    unsafe fn dot8(w: &[Q8_0], a: &[PanelQ8_0]) -> [f32; 8] {
        avx512::q8_0_rows::<1>(w, [a])[0]
    }
}

#[inline(always)]
fn concat(lo: [f32; 8], hi: [f32; 8]) -> [f32; 16] {
    let mut out = [0f32; 16];
    out[..8].copy_from_slice(&lo);
    out[8..].copy_from_slice(&hi);
    out
}

/// Whether the panel kernels may run: AVX-512 F/BW/VL + VNNI (and the AVX2/FMA/F16C the
/// scalar parts use), as chosen once by `cpu_features`.
pub fn has_avx512_vnni() -> bool {
    crate::ops::cpu_features::avx512_vnni()
}

#[cfg(target_arch = "x86_64")]
use super::avx512;

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    //! No AVX-512 on this architecture: `available()` is false, so these never run.
    use super::{PanelQ8_0, PanelQ8_1, Q4_1, Q8_0};
    pub unsafe fn q4_1_rows<const G: usize>(_: &[Q4_1], _: [&[PanelQ8_1]; G]) -> [[f32; 8]; G] {
        unreachable!("AVX-512 kernels called without AVX-512")
    }
    pub unsafe fn q8_0_rows<const G: usize>(_: &[Q8_0], _: [&[PanelQ8_0]; G]) -> [[f32; 8]; G] {
        unreachable!("AVX-512 kernels called without AVX-512")
    }
}
