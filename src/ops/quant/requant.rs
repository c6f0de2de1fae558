//! Float weights (F32 / F16 / BF16) quantized at load (`--quantization q8_0|q4_0`), with
//! the bits llama-quantize writes for the same file (`--pure` for Q4_0): each row is
//! widened to f32 (exact for F16 and BF16, as llama-quantize's own widening is) and goes
//! through ggml's reference quantizer for model files, `quantize_row_q8_0_ref` or
//! `quantize_row_q4_0_ref`. Not the activation quantizer (`act_quant::quantize_q8_0`):
//! that one scales by `127/max` and rounds half to even; the reference scales by `1/d`
//! and rounds half away from zero (`roundf`). Rows are spread over the compute pool.

use candle_core::quantized::GgmlDType;
use half::f16;

use super::{as_bytes, QMatrix, QuantError};
use crate::ops::act_quant::Q8_0;
use crate::ops::pool::{self, SharedOut};
use crate::ops::qdot::blocks::Q4_0;

/// Elements per Q8_0 and per Q4_0 block (`QK8_0`, `QK4_0`).
const QK8_0: usize = 32;
const QK4_0: usize = 32;
/// Rows per pool task: enough work per task that spreading costs nothing.
const ROWS_PER_TASK: usize = 16;

/// ggml's `quantize_row_q8_0_ref`: per block of 32, `d = amax / 127` (stored as f16,
/// round to nearest even), `q = roundf(x * (1/d))` (half away from zero); `d = 0` gives
/// all-zero quants. `x: [32 * out.len()]`.
pub fn quantize_row_q8_0_ref(x: &[f32], out: &mut [Q8_0]) {
    assert_eq!(
        x.len(),
        out.len() * QK8_0,
        "quantize_row_q8_0_ref: x must be whole blocks"
    );
    for (xs, y) in x.chunks_exact(QK8_0).zip(out.iter_mut()) {
        // C's MAX(amax, fabsf(v)): a NaN never replaces the running max.
        let amax = xs
            .iter()
            .fold(0f32, |a, &v| if a > v.abs() { a } else { v.abs() });
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = f16::from_f32(d);
        for (q, &v) in y.qs.iter_mut().zip(xs) {
            *q = (v * id).round() as i8;
        }
    }
}

/// ggml's `quantize_row_q4_0_ref`: per block of 32, `max` = the first value of largest
/// magnitude (sign kept), `d = max / -8` (stored as f16, round to nearest even),
/// `q = min(15, trunc(x · (1/d) + 8.5))` (`d = 0`: all 8); element `j` in the low nibble
/// of byte `j`, element `j + 16` in its high nibble. `x: [32 * out.len()]`.
pub fn quantize_row_q4_0_ref(x: &[f32], out: &mut [Q4_0]) {
    assert_eq!(
        x.len(),
        out.len() * QK4_0,
        "quantize_row_q4_0_ref: x must be whole blocks"
    );
    for (xs, y) in x.chunks_exact(QK4_0).zip(out.iter_mut()) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xs {
            // C's `amax < fabsf(v)`: ties keep the first, a NaN never wins.
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = f16::from_f32(d);
        // C's `(int8_t)(x + 8.5f)` truncates toward zero; the sum lies in [0.5, 16.5].
        let nibble = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
        let (lo, hi) = xs.split_at(QK4_0 / 2);
        for ((q, &a), &b) in y.qs.iter_mut().zip(lo).zip(hi) {
            *q = nibble(a) | nibble(b) << 4;
        }
    }
}

impl QMatrix {
    /// This matrix as llama-quantize writes it for a Q8_0 model: Q8_0 blocks, or F16
    /// when rows are not whole blocks (its fallback for such shapes, `tensor_type_fallback`).
    /// Only float matrices (F32, F16, BF16) are converted: re-quantizing quantized weights
    /// would compound two roundings, which llama-quantize also refuses by default.
    pub fn to_q8_0(&self) -> Result<QMatrix, QuantError> {
        self.requantize(GgmlDType::Q8_0, zero_q8_0, quantize_row_q8_0_ref)
    }

    /// This matrix as `llama-quantize --pure` writes it for a Q4_0 model: Q4_0 blocks, or
    /// F16 for rows that are not whole blocks (as `to_q8_0`).
    pub fn to_q4_0(&self) -> Result<QMatrix, QuantError> {
        self.requantize(GgmlDType::Q4_0, zero_q4_0, quantize_row_q4_0_ref)
    }

    /// Every row widened to f32 and quantized by `quantize_row` into blocks `B` of ggml
    /// type `dtype` (32 values each), rows spread over the pool; F16 for ragged rows.
    fn requantize<B: Send>(
        &self,
        dtype: GgmlDType,
        zero: fn() -> B,
        quantize_row: fn(&[f32], &mut [B]),
    ) -> Result<QMatrix, QuantError> {
        let source = self.dtype();
        if !matches!(source, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
            return Err(QuantError::UnsupportedType(source));
        }
        let (rows, cols) = (self.rows, self.cols);
        let block = dtype.block_size();
        if !cols.is_multiple_of(block) {
            return self.to_f16();
        }
        let per_row = cols / block;
        let mut blocks: Vec<B> = (0..rows * per_row).map(|_| zero()).collect();
        let out = SharedOut::new(&mut blocks);
        pool::run(rows.div_ceil(ROWS_PER_TASK), |task| {
            let mut row_f32 = vec![0f32; cols];
            let first = task * ROWS_PER_TASK;
            for row in first..(first + ROWS_PER_TASK).min(rows) {
                self.dequantize_row(row, &mut row_f32);
                // SAFETY: row `row`'s blocks belong to this task alone.
                let part = unsafe { out.part(row * per_row, per_row) };
                quantize_row(&row_f32, part);
            }
        });
        QMatrix::from_ggml(dtype, rows, cols, as_bytes(&blocks))
    }
}

impl QMatrix {
    /// The matrix in F16 (round to nearest even, as ggml's `fp32_to_fp16_row`).
    fn to_f16(&self) -> Result<QMatrix, QuantError> {
        if self.dtype() == GgmlDType::F16 {
            return Ok(self.clone());
        }
        let mut values = vec![0f32; self.rows * self.cols];
        for (row, out) in values.chunks_exact_mut(self.cols).enumerate() {
            self.dequantize_row(row, out);
        }
        QMatrix::quantize(GgmlDType::F16, self.rows, self.cols, &values)
    }
}

fn zero_q8_0() -> Q8_0 {
    Q8_0 {
        d: f16::ZERO,
        qs: [0; QK8_0],
    }
}

fn zero_q4_0() -> Q4_0 {
    Q4_0 {
        d: f16::ZERO,
        qs: [0; QK4_0 / 2],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-computed blocks: the scale is amax/127 in f16, halves round away from zero.
    #[test]
    fn reference_rounding_is_ggmls() {
        let mut x = [0f32; 32];
        x[0] = 127.0; // d = 1, id = 1
        x[1] = 2.5; // roundf: 3 (half to even would give 2)
        x[2] = -2.5; // -3
        x[3] = 0.49;
        x[4] = -127.0;
        let mut out = [zero_q8_0()];
        quantize_row_q8_0_ref(&x, &mut out);
        assert_eq!(out[0].d, f16::ONE);
        assert_eq!(&out[0].qs[..5], &[127, 3, -3, 0, -127]);
        quantize_row_q8_0_ref(&[0.0; 32], &mut out);
        assert_eq!((out[0].d, out[0].qs), (f16::ZERO, [0; 32]));
    }

    /// Hand-computed Q4_0 block: `d = max / -8` keeps the sign of the first value of
    /// largest magnitude, quants truncate `x/d + 8.5` and clip at 15.
    #[test]
    fn q4_0_reference_rounding_is_ggmls() {
        let mut x = [0f32; 32];
        x[0] = 4.0;
        x[1] = -8.0; // max = -8 → d = 1, id = 1
        x[2] = 8.0; // same magnitude, later: max stays -8; 8 + 8.5 = 16.5 → 16 → clipped 15
        x[3] = 0.49; // 8.99 → 8
        x[4] = -0.5; // 8.0 → 8
        x[5] = -0.51; // 7.99 → 7
        x[16] = 2.5; // high nibble of byte 0: 11
        x[17] = -3.0; // high nibble of byte 1: 5
        let mut out = [zero_q4_0()];
        quantize_row_q4_0_ref(&x, &mut out);
        assert_eq!(out[0].d, f16::ONE);
        let q = |j: usize| (out[0].qs[j % 16] >> (4 * (j / 16))) & 15;
        let got: Vec<u8> = [0, 1, 2, 3, 4, 5, 6, 16, 17]
            .iter()
            .map(|&j| q(j))
            .collect();
        // x[0] = 4 → 4·1 + 8.5 = 12.5 → 12; x[1] = -8 → 0.5 → 0; x[6] = 0 → 8.
        assert_eq!(got, [12, 0, 15, 8, 8, 7, 8, 11, 5]);
        // A positive maximum gives a negative scale.
        let mut y = [0f32; 32];
        y[7] = 16.0;
        quantize_row_q4_0_ref(&y, &mut out);
        assert_eq!(out[0].d, f16::from_f32(-2.0));
        assert_eq!(out[0].qs[7] & 15, 0); // 16 · (-1/2) + 8.5 = 0.5 → 0
        quantize_row_q4_0_ref(&[0.0; 32], &mut out);
        assert_eq!((out[0].d, out[0].qs), (f16::ZERO, [0x88; 16]));
    }

    #[test]
    fn f16_matrices_become_the_same_blocks_as_their_f32_values() {
        let values: Vec<f32> = (0..5 * 64)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let f16m = QMatrix::quantize(GgmlDType::F16, 5, 64, &values).unwrap();
        let widened: Vec<f32> = values.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
        let mut want: Vec<Q8_0> = (0..10).map(|_| zero_q8_0()).collect();
        quantize_row_q8_0_ref(&widened, &mut want);
        let got = f16m.to_q8_0().unwrap();
        assert_eq!(got.dtype(), GgmlDType::Q8_0);
        let super::super::QData::Q8_0(blocks) = &got.data else {
            panic!("not Q8_0")
        };
        assert_eq!(as_bytes(blocks), as_bytes(&want));
        let mut want4: Vec<Q4_0> = (0..10).map(|_| zero_q4_0()).collect();
        quantize_row_q4_0_ref(&widened, &mut want4);
        let got4 = f16m.to_q4_0().unwrap();
        assert_eq!(got4.dtype(), GgmlDType::Q4_0);
        assert_eq!(got4.ggml_bytes(), as_bytes(&want4));
        // Rows of 48: llama-quantize's fallback, F16.
        let ragged = QMatrix::quantize(GgmlDType::F32, 5, 48, &values[..240]).unwrap();
        assert_eq!(ragged.to_q8_0().unwrap().dtype(), GgmlDType::F16);
        assert_eq!(ragged.to_q4_0().unwrap().dtype(), GgmlDType::F16);
        let q4 = QMatrix::quantize(GgmlDType::Q4_0, 5, 64, &values).unwrap();
        assert_eq!(
            q4.to_q8_0().unwrap_err(),
            QuantError::UnsupportedType(GgmlDType::Q4_0)
        );
    }
}
