//! Row panels: packing quantized activations 8 rows at a time for the multi-row kernels
//! (`avx512`: AVX-512 VNNI; `avx2_panel`: AVX2 + FMA + F16C), the `RowPanel` trait the
//! panel matmul drives, and `PanelIsa`, which kernel set runs. The block layout itself is
//! `panel_layout`'s; both kernel sets read the same panels.
//!
//! Dispatch: `chosen_isa::<P>()` is the best of `P::ISAS` the process's level
//! (`cpu_features`) allows: the VNNI kernels at level avx512 on a VNNI host, the AVX2 ones
//! at level avx2 (or avx512 without VNNI), none at scalar. Every type here has both sets;
//! `ISAS` lets a new panel type start with one. Tests run every set the host has by
//! passing it to `dot` directly.
//!
//! Each lane of the kernels' vector operations is exactly the scalar operation the
//! single-row kernel (`Kernel::dot`) performs for that row, and the integer sums are
//! exact, so every row's result is bit-identical to `dot` (tests: `panel_tests`).

use super::blocks::{Q4K, Q4_1, Q5_0, Q6K, Q8_1};
use crate::ops::act_quant::{self, Q8K, Q8_0};
use crate::ops::cpu_features;
use half::f16;

#[cfg(test)]
pub(crate) use super::panel_layout::get_row;
use super::panel_layout::{put_bsums, put_bsums_in_lanes, put_row, put_row_in_lanes, PAIRS};
pub use super::panel_layout::{PanelQ8K, PanelQ8_0, PanelQ8_1, PreparedBlock, GROUP, QK, QK_K};

/// A weight type with a multi-row panel kernel.
pub trait RowPanel {
    /// One weight block (ggml's layout).
    type Weight: Sync;
    /// One activation block of a whole group.
    type Block: Copy + Send + Sync + 'static;
    /// The all-zero block (padding rows).
    const ZERO: Self::Block;
    /// Elements per block (32, or 256 for K-quant super-blocks).
    const ELEMS: usize;

    /// Quantizes `rows.len() / k` (≤ 8) activation rows `rows: [r, k]` into one group's
    /// panel `out: [k / ELEMS]` for `isa`'s kernels (whose layouts can differ: `PanelQ8_0`);
    /// lanes past `r` become zero.
    fn quantize_group(rows: &[f32], k: usize, isa: PanelIsa, out: &mut [Self::Block]);

    /// The kernel sets this type has, best first.
    const ISAS: &'static [PanelIsa];

    /// Most groups one `dot` call of `isa`'s kernels takes: its accumulators must fit the
    /// registers.
    fn max_groups(isa: PanelIsa) -> usize;

    /// One weight row (`w: [kb]`) · the 8 rows of each of `G` groups (`groups[g]: [kb]`),
    /// with `isa`'s kernels: `out[g][r]`.
    ///
    /// # Safety
    /// `isa` must be in `ISAS` and `isa.on_host()` true.
    unsafe fn dot<const G: usize>(
        isa: PanelIsa,
        w: &[Self::Weight],
        groups: [&[Self::Block]; G],
    ) -> [[f32; GROUP]; G];

    /// Whether `isa`'s kernels can take a weight row unpacked once (`prepare`) for every
    /// run of groups over it (`dot_prepared`), where `dot` unpacks each block in every
    /// call: the VNNI Q8_0 / Q5_0 kernel (its blocks' unpacking is a fifth of its work).
    fn prepares(_isa: PanelIsa) -> bool {
        false
    }

    /// Weight row `w: [kb]` unpacked into `out: [kb]` for `dot_prepared`.
    ///
    /// # Safety
    /// `prepares(isa)`, and as `dot`.
    unsafe fn prepare(_isa: PanelIsa, _w: &[Self::Weight], _out: &mut [PreparedBlock]) {
        unreachable!("prepare: these kernels take no prepared rows")
    }

    /// `dot` of a row `prepare` wrote: the same bits.
    ///
    /// # Safety
    /// `prepares(isa)`, and as `dot`.
    unsafe fn dot_prepared<const G: usize>(
        _isa: PanelIsa,
        _w: &[PreparedBlock],
        _groups: [&[Self::Block]; G],
    ) -> [[f32; GROUP]; G] {
        unreachable!("dot_prepared: these kernels take no prepared rows")
    }
}

/// A set of multi-row kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PanelIsa {
    /// AVX-512 F/BW/VL + VNNI (`avx512`).
    Avx512Vnni,
    /// AVX2 + FMA + F16C (`avx2_panel`).
    Avx2,
}

impl PanelIsa {
    /// Whether the process's level (`TESSERA_CPU_FEATURES` and the CPU) allows these kernels.
    pub fn enabled(self) -> bool {
        match self {
            PanelIsa::Avx512Vnni => cpu_features::avx512_vnni(),
            PanelIsa::Avx2 => cpu_features::avx2(),
        }
    }

    /// Whether this CPU can run these kernels, whatever the process's level (tests).
    pub fn on_host(self) -> bool {
        let host = cpu_features::host();
        match self {
            PanelIsa::Avx512Vnni => host.vnni,
            PanelIsa::Avx2 => host.level >= cpu_features::Level::Avx2,
        }
    }
}

/// The kernels `P`'s panel matmul runs in this process, or `None` (no panels).
pub fn chosen_isa<P: RowPanel>() -> Option<PanelIsa> {
    P::ISAS.iter().copied().find(|isa| isa.enabled())
}

/// The VNNI and AVX2 sets (every panel type has both).
const BOTH: &[PanelIsa] = &[PanelIsa::Avx512Vnni, PanelIsa::Avx2];

/// `RowPanel`'s prepared-row methods for a signed 32-element weight type (Q8_0, Q5_0):
/// the VNNI kernel takes rows `avx512::prepare_signed32` unpacked, the AVX2 one none.
macro_rules! vnni_prepared_rows {
    ($weight:ty) => {
        fn prepares(isa: PanelIsa) -> bool {
            isa == PanelIsa::Avx512Vnni
        }

        unsafe fn prepare(isa: PanelIsa, w: &[$weight], out: &mut [PreparedBlock]) {
            assert_eq!(isa, PanelIsa::Avx512Vnni, "prepare: only the VNNI kernel");
            avx512::prepare_signed32(w, out)
        }

        unsafe fn dot_prepared<const G: usize>(
            isa: PanelIsa,
            w: &[PreparedBlock],
            groups: [&[PanelQ8_0]; G],
        ) -> [[f32; GROUP]; G] {
            assert_eq!(
                isa,
                PanelIsa::Avx512Vnni,
                "dot_prepared: only the VNNI kernel"
            );
            avx512::prepared_signed32_rows::<$weight, G>(w, groups)
        }
    };
}

/// Q4_1 weights · Q8_1 activation panels (`ggml_vec_dot_q4_1_q8_1` order per row).
pub struct Q4_1Panel;

/// Q8_0 weights · Q8_0 activation panels (`ggml_vec_dot_q8_0_q8_0` order per row).
pub struct Q8_0Panel;

/// Q5_0 weights · Q8_0 activation panels (`ggml_vec_dot_q5_0_q8_0` order per row: the
/// same float steps as Q8_0's, over weights unpacked to −16..15).
pub struct Q5_0Panel;

/// Q6_K weights · Q8_K activation panels (`ggml_vec_dot_q6_K_q8_K` order per row).
pub struct Q6KPanel;

/// Q4_K weights · Q8_K activation panels, in the order of ggml's repacked gemv
/// (`ggml_gemv_q4_K_8x8_q8_K`, `Q4KInterleaved`): only for matrices llama.cpp repacks.
pub struct Q4KPanel;

/// What `PanelQ8_0` quants are stored XOR-ed with for `isa`'s kernels: the VNNI ones take
/// them as `vpdpbusd`'s unsigned operand (+128, `0x80`); the AVX2 ones as they are.
pub fn q8_0_bias(isa: PanelIsa) -> u8 {
    match isa {
        PanelIsa::Avx512Vnni => 0x80,
        PanelIsa::Avx2 => 0,
    }
}

/// Checks the group's shape (`blocks` blocks of `elems` per row) and returns its row count.
fn group_rows(rows: &[f32], k: usize, blocks: usize, elems: usize) -> usize {
    assert!(
        k > 0 && k == blocks * elems,
        "quantize_group: k = {k}, blocks = {blocks}"
    );
    assert!(rows.len().is_multiple_of(k), "quantize_group: ragged rows");
    let n = rows.len() / k;
    assert!(n <= GROUP, "quantize_group: {n} rows > {GROUP}");
    n
}

/// Quantizes a group's rows (`group_rows`) into Q8_K super-block panels `out: [k / 256]`,
/// each chunk's quants and the 16-element sums stored by `put_qs` and `put_sums` (the
/// layout the reading kernel wants).
fn quantize_q8k_group(
    rows: &[f32],
    k: usize,
    out: &mut [PanelQ8K],
    put_qs: fn(&mut [[i8; 2 * QK]; PAIRS], usize, [i8; QK]),
    put_sums: fn(&mut [[i16; 2 * QK_K / 16]; PAIRS], usize, &[i16; 16]),
) {
    let n = group_rows(rows, k, out.len(), QK_K);
    let mut tmp = [Q8K {
        d: 0.0,
        qs: [0; QK_K],
        bsums: [0; QK_K / 16],
    }];
    for (b, panel) in out.iter_mut().enumerate() {
        *panel = Q6KPanel::ZERO;
        for r in 0..n {
            act_quant::quantize_q8k(&rows[r * k + b * QK_K..r * k + (b + 1) * QK_K], &mut tmp);
            for (c, chunk) in tmp[0].qs32().iter().enumerate() {
                put_qs(&mut panel.qs[c], r, *chunk);
            }
            put_sums(&mut panel.bsums, r, &tmp[0].bsums);
            panel.d[r] = tmp[0].d;
        }
    }
}

impl RowPanel for Q4_1Panel {
    type Weight = Q4_1;
    type Block = PanelQ8_1;
    const ZERO: PanelQ8_1 = PanelQ8_1 {
        qs: [[0; 2 * QK]; PAIRS],
        d: [0.0; GROUP],
        s: [0.0; GROUP],
    };
    const ELEMS: usize = QK;

    fn quantize_group(rows: &[f32], k: usize, _: PanelIsa, out: &mut [PanelQ8_1]) {
        let n = group_rows(rows, k, out.len(), QK);
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

    const ISAS: &'static [PanelIsa] = BOTH;

    fn max_groups(_: PanelIsa) -> usize {
        4
    }

    unsafe fn dot<const G: usize>(
        isa: PanelIsa,
        w: &[Q4_1],
        groups: [&[PanelQ8_1]; G],
    ) -> [[f32; GROUP]; G] {
        match isa {
            PanelIsa::Avx512Vnni => avx512::q4_1_rows::<G>(w, groups),
            PanelIsa::Avx2 => avx2_panel::q4_1_rows::<G>(w, groups),
        }
    }
}

impl RowPanel for Q8_0Panel {
    type Weight = Q8_0;
    type Block = PanelQ8_0;
    /// The VNNI layout's zero (`quantize_group` writes each level's own).
    const ZERO: PanelQ8_0 = PanelQ8_0 {
        qs: [[0x80; 2 * QK]; PAIRS],
        d: [0.0; GROUP],
    };
    const ELEMS: usize = QK;

    fn quantize_group(rows: &[f32], k: usize, isa: PanelIsa, out: &mut [PanelQ8_0]) {
        let n = group_rows(rows, k, out.len(), QK);
        let bias = q8_0_bias(isa);
        let mut tmp = [Q8_0 {
            d: f16::ZERO,
            qs: [0; QK],
        }];
        for (b, panel) in out.iter_mut().enumerate() {
            *panel = PanelQ8_0 {
                qs: [[bias; 2 * QK]; PAIRS],
                d: [0.0; GROUP],
            };
            for r in 0..n {
                act_quant::quantize_q8_0(&rows[r * k + b * QK..r * k + (b + 1) * QK], &mut tmp);
                put_row(&mut panel.qs, r, tmp[0].qs.map(|q| q as u8 ^ bias));
                panel.d[r] = tmp[0].d.to_f32();
            }
        }
    }

    const ISAS: &'static [PanelIsa] = BOTH;

    fn max_groups(_: PanelIsa) -> usize {
        4
    }

    unsafe fn dot<const G: usize>(
        isa: PanelIsa,
        w: &[Q8_0],
        groups: [&[PanelQ8_0]; G],
    ) -> [[f32; GROUP]; G] {
        match isa {
            PanelIsa::Avx512Vnni => avx512::signed32_rows::<Q8_0, G>(w, groups),
            PanelIsa::Avx2 => avx2_panel::signed32_rows::<Q8_0, G>(w, groups),
        }
    }

    vnni_prepared_rows!(Q8_0);
}

impl RowPanel for Q5_0Panel {
    type Weight = Q5_0;
    type Block = PanelQ8_0;
    const ZERO: PanelQ8_0 = Q8_0Panel::ZERO;
    const ELEMS: usize = QK;

    fn quantize_group(rows: &[f32], k: usize, isa: PanelIsa, out: &mut [PanelQ8_0]) {
        Q8_0Panel::quantize_group(rows, k, isa, out)
    }

    const ISAS: &'static [PanelIsa] = BOTH;

    fn max_groups(_: PanelIsa) -> usize {
        4
    }

    unsafe fn dot<const G: usize>(
        isa: PanelIsa,
        w: &[Q5_0],
        groups: [&[PanelQ8_0]; G],
    ) -> [[f32; GROUP]; G] {
        match isa {
            PanelIsa::Avx512Vnni => avx512::signed32_rows::<Q5_0, G>(w, groups),
            PanelIsa::Avx2 => avx2_panel::q5_0_rows::<G>(w, groups),
        }
    }

    vnni_prepared_rows!(Q5_0);
}

impl RowPanel for Q6KPanel {
    type Weight = Q6K;
    type Block = PanelQ8K;
    const ZERO: PanelQ8K = PanelQ8K {
        qs: [[[0; 2 * QK]; PAIRS]; QK_K / QK],
        bsums: [[0; 2 * QK_K / 16]; PAIRS],
        d: [0.0; GROUP],
    };
    const ELEMS: usize = QK_K;

    fn quantize_group(rows: &[f32], k: usize, _: PanelIsa, out: &mut [PanelQ8K]) {
        quantize_q8k_group(rows, k, out, put_row, put_bsums)
    }

    const ISAS: &'static [PanelIsa] = BOTH;

    fn max_groups(_: PanelIsa) -> usize {
        2
    }

    unsafe fn dot<const G: usize>(
        isa: PanelIsa,
        w: &[Q6K],
        groups: [&[PanelQ8K]; G],
    ) -> [[f32; GROUP]; G] {
        match isa {
            PanelIsa::Avx512Vnni => avx512::q6k_rows::<G>(w, groups),
            PanelIsa::Avx2 => avx2_panel::q6k_rows::<G>(w, groups),
        }
    }
}

impl RowPanel for Q4KPanel {
    type Weight = Q4K;
    type Block = PanelQ8K;
    const ZERO: PanelQ8K = Q6KPanel::ZERO;
    const ELEMS: usize = QK_K;

    /// The VNNI kernel reads the rows-in-lanes order (`panel_layout`), the AVX2 one Q6_K's.
    fn quantize_group(rows: &[f32], k: usize, isa: PanelIsa, out: &mut [PanelQ8K]) {
        match isa {
            PanelIsa::Avx512Vnni => {
                quantize_q8k_group(rows, k, out, put_row_in_lanes, put_bsums_in_lanes)
            }
            PanelIsa::Avx2 => quantize_q8k_group(rows, k, out, put_row, put_bsums),
        }
    }

    const ISAS: &'static [PanelIsa] = BOTH;

    /// The VNNI kernel's accumulators are a register per group (`avx512::q4k_rows`).
    fn max_groups(isa: PanelIsa) -> usize {
        match isa {
            PanelIsa::Avx512Vnni => 4,
            PanelIsa::Avx2 => 2,
        }
    }

    unsafe fn dot<const G: usize>(
        isa: PanelIsa,
        w: &[Q4K],
        groups: [&[PanelQ8K]; G],
    ) -> [[f32; GROUP]; G] {
        match isa {
            PanelIsa::Avx512Vnni => avx512::q4k_rows::<G>(w, groups),
            PanelIsa::Avx2 => avx2_panel::q4k_rows::<G>(w, groups),
        }
    }
}

#[cfg(target_arch = "x86_64")]
use super::{avx2_panel, avx512};

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    //! No AVX-512 on this architecture: `enabled()` is false, so these never run.
    use super::{PanelQ8K, PanelQ8_0, PanelQ8_1, PreparedBlock, Q4K, Q4_1, Q6K};
    pub unsafe fn q4_1_rows<const G: usize>(_: &[Q4_1], _: [&[PanelQ8_1]; G]) -> [[f32; 8]; G] {
        unreachable!("AVX-512 kernels called without AVX-512")
    }
    pub unsafe fn q4k_rows<const G: usize>(_: &[Q4K], _: [&[PanelQ8K]; G]) -> [[f32; 8]; G] {
        unreachable!("AVX-512 kernels called without AVX-512")
    }
    pub unsafe fn signed32_rows<B, const G: usize>(_: &[B], _: [&[PanelQ8_0]; G]) -> [[f32; 8]; G] {
        unreachable!("AVX-512 kernels called without AVX-512")
    }
    pub unsafe fn prepare_signed32<B>(_: &[B], _: &mut [PreparedBlock]) {
        unreachable!("AVX-512 kernels called without AVX-512")
    }
    pub unsafe fn prepared_signed32_rows<B, const G: usize>(
        _: &[PreparedBlock],
        _: [&[PanelQ8_0]; G],
    ) -> [[f32; 8]; G] {
        unreachable!("AVX-512 kernels called without AVX-512")
    }
    pub unsafe fn q6k_rows<const G: usize>(_: &[Q6K], _: [&[PanelQ8K]; G]) -> [[f32; 8]; G] {
        unreachable!("AVX-512 kernels called without AVX-512")
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx2_panel {
    //! No AVX2 on this architecture: `enabled()` is false, so these never run.
    use super::{PanelQ8K, PanelQ8_0, PanelQ8_1, Q4K, Q4_1, Q5_0, Q6K};
    pub unsafe fn q4k_rows<const G: usize>(_: &[Q4K], _: [&[PanelQ8K]; G]) -> [[f32; 8]; G] {
        unreachable!("AVX2 kernels called without AVX2")
    }
    pub unsafe fn q4_1_rows<const G: usize>(_: &[Q4_1], _: [&[PanelQ8_1]; G]) -> [[f32; 8]; G] {
        unreachable!("AVX2 kernels called without AVX2")
    }
    pub unsafe fn signed32_rows<B, const G: usize>(_: &[B], _: [&[PanelQ8_0]; G]) -> [[f32; 8]; G] {
        unreachable!("AVX2 kernels called without AVX2")
    }
    pub unsafe fn q5_0_rows<const G: usize>(_: &[Q5_0], _: [&[PanelQ8_0]; G]) -> [[f32; 8]; G] {
        unreachable!("AVX2 kernels called without AVX2")
    }
    pub unsafe fn q6k_rows<const G: usize>(_: &[Q6K], _: [&[PanelQ8K]; G]) -> [[f32; 8]; G] {
        unreachable!("AVX2 kernels called without AVX2")
    }
}
