//! The row-panel block layout: quantized activations 8 rows at a time, block-major, as
//! the packer (`panel`) writes them and the AVX-512 VNNI kernels (`avx512`) and the AVX2
//! kernels (`avx2_panel`, which take each pair's 64 bytes as two 256-bit halves) read them.
//!
//! A panel covers one group of 8 activation rows. For each 32-element block `b` it holds
//! the quants of row pairs `(2p, 2p+1)` interleaved by 4-byte groups (64 bytes per pair:
//! `[a0..4, b0..4, a4..8, b4..8, ..]`, one 512-bit register whose i32 lanes alternate
//! between the two rows), followed by the 8 rows' scales as `[f32; 8]` vectors, so a
//! kernel computes `d_w · d_a` (and Q8_1's `fma(m_w, s_a, summs)`) for 8 rows with one
//! instruction. Each lane of those vector operations is exactly the scalar operation the
//! single-row kernel (`Kernel::dot`) performs for that row, and the integer sums are
//! exact, so every row's result is bit-identical to `dot` (tests: `panel_tests`).
//!
//! Layout (`[groups][blocks]` of `Panel*`, 64-byte aligned):
//! - `PanelQ8_1 { qs: [[i8; 64]; 4], d: [f32; 8], s: [f32; 8] }` (for Q4_1 weights; 320 bytes).
//! - `PanelQ8_0 { qs: [[u8; 64]; 4], d: [f32; 8] }` (for Q8_0 and Q5_0 weights; 320 bytes):
//!   for the VNNI kernels quants stored biased by +128 (`q ^ 0x80`) so `vpdpbusd` can
//!   take them as its unsigned operand; for the AVX2 kernels as they are
//!   (`panel::q8_0_bias`: the quantizer is told which kernels will read the panel).
//! - `PanelQ8K { qs: [[[i8; 64]; 4]; 8], bsums: [[i16; 32]; 4], d: [f32; 8] }` (for Q6_K
//!   weights; one 256-element super-block, 2,368 bytes): the 8 chunks of 32 quants as
//!   above, and each pair's 16-element sums interleaved two by two (`[a₀ a₁ b₀ b₁ a₂ a₃ b₂
//!   b₃ ..]`, so one `vpmaddwd` against the scales gives both rows' lanes of ggml's
//!   `q8sclsub`).
//! - The same `PanelQ8K` in the rows-in-lanes order, for the VNNI Q4_K kernel (whose
//!   float steps take only each row's super-block integers, so the integers may be summed
//!   in any order): per chunk, step `s` (0..4) holds the 8 rows' quants `8s..8s+8`, row
//!   after row (`qs[c][s][8r + t]` = row `r`'s quant `32c + 8s + t`), one register whose
//!   i32 lane pairs are the rows; `bsums[s]` holds the 8 rows' 16-element sums `4s..4s+4`
//!   the same way (`bsums[s][4r + t]` = row `r`'s sum `4s + t`).
//!
//! Rows past the end of the last group are zero (scale 0, quants 0): their results are
//! finite and never written out.

/// Activation rows per panel group.
pub const GROUP: usize = 8;
/// Elements per block of the 32-element types (and per chunk of a super-block).
pub const QK: usize = 32;
/// Elements per K-quant super-block.
pub const QK_K: usize = 256;

/// Rows per pair (one 512-bit register of quants).
pub(super) const PAIRS: usize = GROUP / 2;

/// 8 rows of one Q8_1 block (for Q4_1 weights).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(64))]
pub struct PanelQ8_1 {
    /// Row pairs' quants, interleaved by 4-byte groups.
    pub qs: [[i8; 2 * QK]; PAIRS],
    pub d: [f32; GROUP],
    pub s: [f32; GROUP],
}

/// 8 rows of one Q8_0 block (for Q8_0 and Q5_0 weights), quants XOR-ed with the
/// kernels' bias (`panel::q8_0_bias`).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(64))]
pub struct PanelQ8_0 {
    /// Row pairs' quants (XOR the bias), interleaved by 4-byte groups.
    pub qs: [[u8; 2 * QK]; PAIRS],
    pub d: [f32; GROUP],
}

/// 8 rows of one Q8_K super-block (for Q6_K weights).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(64))]
pub struct PanelQ8K {
    /// Per 32-element chunk, the row pairs' quants interleaved by 4-byte groups.
    pub qs: [[[i8; 2 * QK]; PAIRS]; QK_K / QK],
    /// Per row pair, the 16 sums of 16 quants of both rows, interleaved two by two.
    pub bsums: [[i16; 2 * QK_K / 16]; PAIRS],
    pub d: [f32; GROUP],
}

/// A group's 8 products `d_w · d_a` on the stack, 32-byte aligned (one store, no line
/// split), for the kernels to broadcast back pair by pair from memory (a load port).
#[repr(C, align(32))]
pub(super) struct RowScales(pub(super) [f32; GROUP]);

/// Stores row `r`'s 16 sums in its pair's interleaved slots.
#[inline]
pub(super) fn put_bsums(bsums: &mut [[i16; 2 * QK_K / 16]; PAIRS], r: usize, row: &[i16; 16]) {
    let (pair, half) = (r / 2, r % 2);
    for (l, two) in row.chunks_exact(2).enumerate() {
        let at = 4 * l + 2 * half;
        bsums[pair][at..at + 2].copy_from_slice(two);
    }
}

/// A signed 32-element weight block (Q8_0, Q5_0) unpacked for the VNNI kernel's products
/// (`avx512::prepare_signed32`): the values with each 4-byte group doubled, each i32
/// lane's start, the scale and `−d · MAGIC`. 64-byte aligned: the two vectors are whole
/// cache lines.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct PreparedBlock {
    /// The 32 values (i8), each 4-byte group doubled: `[w0..4, w0..4, w4..8, w4..8, ..]`.
    pub values: [i8; 64],
    /// Each i32 lane's start: `−128 · Σ4 w` (so that `Σ (a + 128)·w` lands on `Σ a·w`),
    /// plus the bits of `MAGIC` for types whose values lie within ±16.
    pub start: [i32; 16],
    /// The block's scale, and `−d · MAGIC`.
    pub d: f32,
    pub d_magic: f32,
}

impl PreparedBlock {
    pub const ZERO: PreparedBlock = PreparedBlock {
        values: [0; 64],
        start: [0; 16],
        d: 0.0,
        d_magic: 0.0,
    };
}

const _: () = assert!(std::mem::size_of::<PreparedBlock>() == 192);
const _: () = assert!(std::mem::size_of::<PanelQ8K>() == 2368);
const _: () = assert!(std::mem::size_of::<PanelQ8_1>() == 320);
const _: () = assert!(std::mem::size_of::<PanelQ8_0>() == 320);

/// Checks that each of a kernel call's `G` groups has the weight row's `kb` blocks.
#[inline(always)]
pub(super) fn check_blocks<B, const G: usize>(kernel: &str, kb: usize, x: [&[B]; G]) {
    for panel in x {
        assert_eq!(panel.len(), kb, "{kernel}: block counts differ");
    }
}

/// Stores row `r`'s 32 quants of one chunk in the rows-in-lanes slots (`qs[s][8r..8r+8]`).
#[inline]
pub(super) fn put_row_in_lanes(qs: &mut [[i8; 2 * QK]; PAIRS], r: usize, row: [i8; QK]) {
    for (s, eight) in row.chunks_exact(8).enumerate() {
        qs[s][8 * r..8 * r + 8].copy_from_slice(eight);
    }
}

/// Stores row `r`'s 16 sums in the rows-in-lanes slots (`bsums[s][4r..4r+4]`).
#[inline]
pub(super) fn put_bsums_in_lanes(
    bsums: &mut [[i16; 2 * QK_K / 16]; PAIRS],
    r: usize,
    row: &[i16; 16],
) {
    for (s, four) in row.chunks_exact(4).enumerate() {
        bsums[s][4 * r..4 * r + 4].copy_from_slice(four);
    }
}

/// Stores row `r`'s 32 quants in its pair's interleaved slots.
#[inline]
pub(super) fn put_row<T: Copy>(qs: &mut [[T; 2 * QK]; PAIRS], r: usize, row: [T; QK]) {
    let (pair, half) = (r / 2, r % 2);
    for (j, group) in row.chunks_exact(4).enumerate() {
        let at = 8 * j + 4 * half;
        qs[pair][at..at + 4].copy_from_slice(group);
    }
}

/// Row `r`'s 32 quants out of its pair's interleaved slots (tests).
#[cfg(test)]
pub(crate) fn get_row<T: Copy + Default>(qs: &[[T; 2 * QK]; PAIRS], r: usize) -> [T; QK] {
    let (pair, half) = (r / 2, r % 2);
    std::array::from_fn(|i| qs[pair][8 * (i / 4) + 4 * half + i % 4])
}
