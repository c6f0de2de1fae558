//! `--quantization` (vLLM's flag name): a model whose matrices arrive as F32, F16 or BF16
//! (GGUF or a Hugging Face folder) is served quantized, converted once at load. `q8_0`
//! writes the blocks llama-quantize writes for the same file (`QMatrix::to_q8_0`, ggml's
//! `quantize_row_q8_0_ref`), `q4_0` those of `llama-quantize --pure` Q4_0
//! (`QMatrix::to_q4_0`, `quantize_row_q4_0_ref`: every matrix in Q4_0, none of the
//! non-pure mix's Q6_K output), and both convert what llama-quantize converts: every matrix
//! (embedding, LM head, projections, stacked experts) except a MoE router, which both
//! keep as stored; 1-D tensors (norms, biases, the shared-expert gate) stay f32.
//!
//! Invariant: a model is never quantized twice. `check_source` refuses, before any
//! weight is read, a model that holds an already-quantized matrix.

use std::fmt;
use std::str::FromStr;

use candle_core::quantized::GgmlDType;

/// A weight type to quantize to at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// ggml's Q8_0: blocks of 32 int8 with one f16 scale (8.5 bits per weight).
    Q8_0,
    /// ggml's Q4_0: blocks of 32 4-bit values with one f16 scale (4.5 bits per weight).
    Q4_0,
}

/// The values `--quantization` takes.
pub const CHOICES: &str = "q8_0, q4_0";

impl FromStr for Quantization {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "q8_0" => Ok(Quantization::Q8_0),
            "q4_0" => Ok(Quantization::Q4_0),
            other => Err(format!(
                "--quantization must be one of: {CHOICES}. Given: `{other}`"
            )),
        }
    }
}

impl fmt::Display for Quantization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Quantization::Q8_0 => "q8_0",
            Quantization::Q4_0 => "q4_0",
        })
    }
}

impl Quantization {
    /// The ggml type the weights become.
    pub fn dtype(self) -> GgmlDType {
        match self {
            Quantization::Q8_0 => GgmlDType::Q8_0,
            Quantization::Q4_0 => GgmlDType::Q4_0,
        }
    }
}

/// The types `--quantization` converts from.
pub fn is_float(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// Refuses a model with a matrix (`dims >= 2`) that is not F32/F16/BF16: `matrices`
/// yields `(name, dtype)`, `None` for a type with no ggml equivalent.
pub fn check_source<'a>(
    quantization: Quantization,
    matrices: impl IntoIterator<Item = (&'a str, Option<GgmlDType>)>,
) -> Result<(), String> {
    for (name, dtype) in matrices {
        if dtype.is_some_and(is_float) {
            continue;
        }
        let held = dtype.map_or_else(
            || "a type without a ggml equivalent".to_string(),
            |d| format!("{d:?}"),
        );
        return Err(format!(
            "--quantization {quantization} converts F32/F16/BF16 weights, but this model is \
             already quantized (tensor `{name}` is {held}); serve it without --quantization"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_values_parse() {
        assert_eq!("q8_0".parse::<Quantization>(), Ok(Quantization::Q8_0));
        assert_eq!("q4_0".parse::<Quantization>(), Ok(Quantization::Q4_0));
        assert_eq!(Quantization::Q4_0.to_string(), "q4_0");
        let err = "int8".parse::<Quantization>().unwrap_err();
        assert!(
            err.contains("q8_0, q4_0") && err.contains("`int8`"),
            "{err}"
        );
        assert_eq!(Quantization::Q8_0.to_string(), "q8_0");
    }

    #[test]
    fn quantized_sources_are_refused_by_name() {
        let floats = [("a", Some(GgmlDType::F16)), ("b", Some(GgmlDType::BF16))];
        assert!(check_source(Quantization::Q8_0, floats).is_ok());
        let mixed = [
            ("a", Some(GgmlDType::F16)),
            ("blk.0.attn_q.weight", Some(GgmlDType::Q4_1)),
        ];
        let err = check_source(Quantization::Q8_0, mixed).unwrap_err();
        assert!(err.contains("`blk.0.attn_q.weight` is Q4_1"), "{err}");
        assert!(err.contains("already quantized"), "{err}");
    }
}
