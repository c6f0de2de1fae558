//! ggml tensor types: type ids (`ggml_type` in ggml.h) to candle's `GgmlDType` for the
//! types tessera computes with, and the ggml names of types and ids for messages.
//!
//! Invariant: `dtype_from_ggml_id` maps an id only where candle's block size and bytes
//! per block equal ggml's (test below), so sizes computed from a `GgmlDType` are the
//! file's.

use candle_core::quantized::GgmlDType;

/// The candle dtype for a ggml type id, for the types tessera can compute with.
pub fn dtype_from_ggml_id(type_id: u32) -> Option<GgmlDType> {
    Some(match type_id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// The ggml name of a candle dtype ("Q4_K", "BF16", ...).
pub fn dtype_name(dtype: GgmlDType) -> &'static str {
    match dtype {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4_1 => "Q4_1",
        GgmlDType::Q5_0 => "Q5_0",
        GgmlDType::Q5_1 => "Q5_1",
        GgmlDType::Q8_0 => "Q8_0",
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q3K => "Q3_K",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8K => "Q8_K",
    }
}

/// The ggml name of any type id (`ggml_type` in ggml.h), for error messages.
pub fn ggml_type_name(type_id: u32) -> &'static str {
    const NAMES: [&str; 43] = [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_2 (removed)",
        "Q4_3 (removed)",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q8_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "Q8_K",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ2_S",
        "IQ4_XS",
        "I8",
        "I16",
        "I32",
        "I64",
        "F64",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4 (removed)",
        "Q4_0_4_8 (removed)",
        "Q4_0_8_8 (removed)",
        "TQ1_0",
        "TQ2_0",
        "IQ4_NL_4_4 (removed)",
        "IQ4_NL_4_8 (removed)",
        "IQ4_NL_8_8 (removed)",
        "MXFP4",
        "NVFP4",
        "Q1_0",
        "Q2_0",
    ];
    NAMES
        .get(type_id as usize)
        .copied()
        .unwrap_or("not a ggml type")
}

/// The ggml name of the type holding most elements among `tensors` (`(type,
/// elements)` pairs, e.g. a model's matrices), `None` for no tensors. Ties go to the
/// type seen last.
pub fn dominant_dtype(tensors: impl Iterator<Item = (GgmlDType, usize)>) -> Option<&'static str> {
    let mut by_type: Vec<(&'static str, usize)> = Vec::new();
    for (dtype, count) in tensors {
        let name = dtype_name(dtype);
        match by_type.iter_mut().find(|(n, _)| *n == name) {
            Some((_, total)) => *total += count,
            None => by_type.push((name, count)),
        }
    }
    by_type
        .into_iter()
        .max_by_key(|&(_, count)| count)
        .map(|(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Block sizes and bytes per block from ggml's `type_traits` table; candle must agree,
    /// or `size_bytes` (and so every bounds check) would be wrong.
    #[test]
    fn candle_sizes_match_ggml() {
        let ggml: [(u32, usize, usize); 13] = [
            (0, 1, 4),
            (1, 1, 2),
            (2, 32, 18),
            (3, 32, 20),
            (6, 32, 22),
            (7, 32, 24),
            (8, 32, 34),
            (10, 256, 84),
            (11, 256, 110),
            (12, 256, 144),
            (13, 256, 176),
            (14, 256, 210),
            (30, 1, 2),
        ];
        for (type_id, block_size, type_size) in ggml {
            let dtype = dtype_from_ggml_id(type_id).unwrap();
            assert_eq!(dtype.block_size(), block_size, "{}", dtype_name(dtype));
            assert_eq!(dtype.type_size(), type_size, "{}", dtype_name(dtype));
        }
    }

    #[test]
    fn the_dominant_type_holds_most_elements() {
        use GgmlDType::{F32, Q4K, Q6K};
        assert_eq!(dominant_dtype([].into_iter()), None);
        let mixed = [(Q4K, 100), (Q6K, 150), (F32, 10), (Q4K, 60)];
        assert_eq!(dominant_dtype(mixed.into_iter()), Some("Q4_K"));
        assert_eq!(
            dominant_dtype([(F32, 5), (Q6K, 5)].into_iter()),
            Some("Q6_K")
        );
    }

    #[test]
    fn unknown_ids_have_a_name_too() {
        assert_eq!(ggml_type_name(20), "IQ4_NL");
        assert_eq!(ggml_type_name(9999), "not a ggml type");
    }
}
