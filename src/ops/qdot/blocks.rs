//! ggml's block layouts (`ggml-common.h`), mirrored with public fields, and views of
//! candle's opaque block types as these mirrors (candle's are the same `repr(C)` layouts,
//! checked here at compile time). Also the scale decoders shared by the K-quant kernels.

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8_0, QK_K,
};
use half::f16;

pub use crate::ops::act_quant::{Q8K, Q8_0, Q8_1};

/// `block_q4_0`: value = d · (q − 8); low nibbles are elements 0..16, high 16..32.
#[repr(C)]
pub struct Q4_0 {
    pub d: f16,
    pub qs: [u8; 16],
}

/// `block_q4_1`: value = d · q + m, q in 0..16; low nibbles are elements 0..16, high 16..32.
#[repr(C)]
pub struct Q4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; 16],
}

/// `block_q5_0`: value = d · ((nibble | bit << 4) − 16); bit `i` of `qh` is element `i`'s.
#[repr(C)]
pub struct Q5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// `block_q5_1`: value = d · (nibble | bit << 4) + m.
#[repr(C)]
pub struct Q5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// `block_q2_K`: 16 sub-blocks of 16; `scales[k]` = scale (low nibble) | min (high nibble).
#[repr(C)]
pub struct Q2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: f16,
    pub dmin: f16,
}

/// `block_q3_K`: 2 low bits in `qs`, the high bit in `hmask`, 16 6-bit scales (− 32).
#[repr(C)]
pub struct Q3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: f16,
}

/// `block_q4_K`: 8 sub-blocks of 32 with 6-bit scales and mins packed in 12 bytes.
#[repr(C)]
pub struct Q4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}

/// `block_q5_K`: Q4_K plus one high bit per element in `qh`.
#[repr(C)]
pub struct Q5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

/// `block_q6_K`: 4 low bits in `ql`, 2 high bits in `qh`, value = d · sc · (q − 32).
#[repr(C)]
pub struct Q6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}

/// Declares that candle's `$candle` has the layout of our `$ours` and how to view it.
macro_rules! mirror {
    ($fn_name:ident, $candle:ty => $ours:ty) => {
        const _: () = assert!(std::mem::size_of::<$candle>() == std::mem::size_of::<$ours>());
        const _: () = assert!(std::mem::align_of::<$candle>() >= std::mem::align_of::<$ours>());

        /// Views candle's blocks with ggml's field names.
        pub fn $fn_name(blocks: &[$candle]) -> &[$ours] {
            // SAFETY: both are repr(C) ggml blocks of the same size and field layout (see
            // ggml-common.h); alignment checked above; plain data, any bit pattern valid.
            unsafe { std::slice::from_raw_parts(blocks.as_ptr() as *const $ours, blocks.len()) }
        }
    };
}

mirror!(view_q4_0, BlockQ4_0 => Q4_0);
mirror!(view_q4_1, BlockQ4_1 => Q4_1);
mirror!(view_q5_0, BlockQ5_0 => Q5_0);
mirror!(view_q5_1, BlockQ5_1 => Q5_1);
mirror!(view_q8_0, BlockQ8_0 => Q8_0);
mirror!(view_q2k, BlockQ2K => Q2K);
mirror!(view_q3k, BlockQ3K => Q3K);
mirror!(view_q4k, BlockQ4K => Q4K);
mirror!(view_q5k, BlockQ5K => Q5K);
mirror!(view_q6k, BlockQ6K => Q6K);

const KMASK1: u32 = 0x3f3f3f3f;
const KMASK2: u32 = 0x0f0f0f0f;
const KMASK3: u32 = 0x03030303;

/// Q4_K / Q5_K packed scales → ggml's `utmp`: 8 scale bytes then 8 min bytes.
#[inline(always)]
pub fn k4_utmp(packed: &[u8; 12]) -> [u32; 4] {
    let word = |i: usize| {
        u32::from_le_bytes([
            packed[4 * i],
            packed[4 * i + 1],
            packed[4 * i + 2],
            packed[4 * i + 3],
        ])
    };
    let mut utmp = [word(0), word(1), word(2), 0];
    utmp[3] = ((utmp[2] >> 4) & KMASK2) | (((utmp[1] >> 6) & KMASK3) << 4);
    let uaux = utmp[1] & KMASK1;
    utmp[1] = (utmp[2] & KMASK2) | (((utmp[0] >> 6) & KMASK3) << 4);
    utmp[2] = uaux;
    utmp[0] &= KMASK1;
    utmp
}

/// Q4_K / Q5_K packed scales → (8 scales, 8 mins).
#[inline(always)]
pub fn k4_scales_mins(packed: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let utmp = k4_utmp(packed);
    let mut scales = [0u8; 8];
    let mut mins = [0u8; 8];
    scales[..4].copy_from_slice(&utmp[0].to_le_bytes());
    scales[4..].copy_from_slice(&utmp[1].to_le_bytes());
    mins[..4].copy_from_slice(&utmp[2].to_le_bytes());
    mins[4..].copy_from_slice(&utmp[3].to_le_bytes());
    (scales, mins)
}

/// Q3_K packed scales → 16 signed scales (6-bit value − 32).
#[inline(always)]
pub fn q3k_scales(packed: &[u8; 12]) -> [i8; 16] {
    const M1: u32 = 0x03030303;
    const M2: u32 = 0x0f0f0f0f;
    let word = |i: usize| {
        u32::from_le_bytes([
            packed[4 * i],
            packed[4 * i + 1],
            packed[4 * i + 2],
            packed[4 * i + 3],
        ])
    };
    let aux = [word(0), word(1), word(2)];
    let words = [
        (aux[0] & M2) | ((aux[2] & M1) << 4),
        (aux[1] & M2) | (((aux[2] >> 2) & M1) << 4),
        ((aux[0] >> 4) & M2) | (((aux[2] >> 4) & M1) << 4),
        ((aux[1] >> 4) & M2) | (((aux[2] >> 6) & M1) << 4),
    ];
    let mut out = [0i8; 16];
    for (chunk, w) in out.chunks_exact_mut(4).zip(words) {
        for (o, b) in chunk.iter_mut().zip(w.to_le_bytes()) {
            *o = (b as i8).wrapping_sub(32);
        }
    }
    out
}

/// The 8 sums of 32 activations (pairs of Q8_K's 16-element `bsums`).
#[inline(always)]
pub fn bsums32(y: &Q8K) -> [i32; 8] {
    std::array::from_fn(|k| y.bsums[2 * k] as i32 + y.bsums[2 * k + 1] as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ggml's reference decoder (`get_scale_min_k4`).
    fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
        if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            (
                (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
                (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
            )
        }
    }

    #[test]
    fn k4_scale_shuffle_matches_the_reference_decoder() {
        for seed in 0..50u32 {
            let packed: [u8; 12] =
                std::array::from_fn(|i| (seed * 97 + i as u32 * 31) as u8 ^ 0xA5);
            let (sc, mn) = k4_scales_mins(&packed);
            for j in 0..8 {
                assert_eq!(
                    (sc[j], mn[j]),
                    scale_min_k4(j, &packed),
                    "seed {seed} j {j}"
                );
            }
        }
    }

    #[test]
    fn q3k_scales_decode_six_bits_minus_32() {
        // All low nibbles 0xF and all high bits set: every scale is 63 − 32.
        assert_eq!(q3k_scales(&[0xFF; 12]), [31; 16]);
        assert_eq!(q3k_scales(&[0; 12]), [-32; 16]);
        // Scale 0 takes its low nibble from byte 0 and its high bits from byte 8.
        let mut packed = [0u8; 12];
        packed[0] = 0x05;
        packed[8] = 0x02;
        assert_eq!(q3k_scales(&packed)[0], 0x25 - 32);
    }
}
