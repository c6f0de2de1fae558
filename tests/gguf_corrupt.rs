//! GGUF parser against valid, broken and hostile files.
//!
//! A test-only writer (`gguf_corrupt/writer.rs`) builds small valid GGUF files; each test
//! here breaks one field and checks the parser returns the specific `GgufError` (never a
//! panic). `mutation.rs` throws 20,000 seeded corrupted copies at the parser;
//! `real_files.rs` parses the default model and the llama.cpp vocab files.

#[path = "gguf_corrupt/mutation.rs"]
mod mutation;
#[path = "gguf_corrupt/real_files.rs"]
mod real_files;
#[path = "gguf_corrupt/writer.rs"]
mod writer;

use std::panic::catch_unwind;
use std::path::PathBuf;

use tessera::model::gguf::{GgmlDType, GgufError, GgufFile, GgufValue};
use writer::{expect_err, parse, sample_builder, sample_values, tensor_fill, Builder};

// ---------------------------------------------------------------- valid files

#[test]
fn round_trip_every_value_type_and_tensor() {
    let builder = sample_builder();
    let file = parse(builder.build()).expect("valid sample");
    assert_eq!(file.version(), 3);
    let expected: Vec<(String, GgufValue)> = sample_values()
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect();
    assert_eq!(file.metadata(), expected.as_slice());
    for (key, value) in &expected {
        assert_eq!(file.get(key), Some(value), "{key}");
    }
    assert_eq!(file.architecture().unwrap(), "llama");

    let names: Vec<&str> = file.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "token_embd.weight",
            "blk.0.attn_norm.weight",
            "blk.0.attn_q.weight"
        ]
    );
    let embd = file.tensor("token_embd.weight").unwrap();
    assert_eq!(embd.dims, [64, 3]);
    assert_eq!(embd.dtype, GgmlDType::Q8_0);
    assert_eq!((embd.offset, embd.size_bytes), (0, 2 * 3 * 34));
    let norm = file.tensor("blk.0.attn_norm.weight").unwrap();
    assert_eq!(
        (norm.dtype, norm.offset, norm.size_bytes),
        (GgmlDType::F32, 224, 20)
    );
    let q = file.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(
        (q.dtype, q.offset, q.size_bytes),
        (GgmlDType::Q4_1, 256, 40)
    );
    for (index, info) in file.tensors().iter().enumerate() {
        assert_eq!(file.tensor_data(info), tensor_fill(index, info.size_bytes));
        assert_eq!(file.data_start() % 32, 0);
    }
    let err = file.tensor("output.weight").unwrap_err();
    assert!(matches!(err, GgufError::MissingTensor { .. }));
    assert!(err.to_string().contains("`output.weight`"), "{err}");
}

#[test]
fn typed_getters_convert_only_what_fits() {
    let file = parse(sample_builder().build()).unwrap();
    assert_eq!(file.get_u32("t.u8").unwrap(), 200);
    assert_eq!(file.get_u32("t.u32").unwrap(), 4_000_000_000);
    assert_eq!(file.get_u64("t.u64").unwrap(), u64::MAX);
    assert!(matches!(
        file.get_u32("t.i8"),
        Err(GgufError::ValueOutOfRange { .. })
    ));
    let err = file.get_u32("t.u64").unwrap_err();
    assert!(
        err.to_string().contains("t.u64") && err.to_string().contains("18446744073709551615"),
        "{err}"
    );
    assert!(matches!(
        file.get_u32("t.string"),
        Err(GgufError::WrongType { .. })
    ));
    assert!(matches!(
        file.get_u32("nope"),
        Err(GgufError::MissingKey { .. })
    ));

    assert_eq!(file.get_f32("t.f32").unwrap(), 1.5e-5);
    assert_eq!(file.get_f32("t.f64").unwrap(), -2.25);
    assert!(matches!(
        file.get_f32("t.u32"),
        Err(GgufError::WrongType { .. })
    ));
    assert!(file.get_bool("t.bool").unwrap());
    assert_eq!(file.get_str("t.string").unwrap(), "héllo ✓");
    assert_eq!(file.get_str_array("t.tokens").unwrap(), ["<s>", "Ġa"]);
    assert_eq!(file.get_i32_array("t.token_type").unwrap(), [1, -3, 6]);
    assert_eq!(file.get_i32_array("t.bytes").unwrap(), [0, 255]);
    assert_eq!(file.get_f32_array("t.scores").unwrap(), [0.5, -1.0]);
    assert!(file.get_str_array("t.empty_array").unwrap().is_empty());
    let err = file.get_str_array("t.scores").unwrap_err();
    assert!(err.to_string().contains("t.scores[0]"), "{err}");
    assert!(matches!(
        file.get_i32_array("t.string"),
        Err(GgufError::WrongType { .. })
    ));

    assert_eq!(file.opt_u32("missing").unwrap(), None);
    assert_eq!(file.opt_u64("t.u64").unwrap(), Some(u64::MAX));
    assert_eq!(file.opt_f32("missing").unwrap(), None);
    assert_eq!(file.opt_bool("t.bool").unwrap(), Some(true));
    assert_eq!(file.opt_str("t.string").unwrap(), Some("héllo ✓"));
    assert!(file.opt_str("t.u8").is_err());
    assert!(file.opt_bool("t.u8").is_err());
}

#[test]
fn version_2_and_custom_alignment_parse() {
    let mut builder = sample_builder().kv("general.alignment", GgufValue::U32(64));
    builder.version = 2;
    builder.alignment = 64;
    let file = parse(builder.build()).unwrap();
    assert_eq!((file.version(), file.alignment()), (2, 64));
    assert_eq!(file.data_start() % 64, 0);
    assert!(file.tensors().iter().all(|t| t.offset % 64 == 0));
}

#[test]
fn file_without_tensors_needs_no_data_padding() {
    let mut bytes = Builder::new()
        .kv("general.architecture", GgufValue::String("x".into()))
        .build();
    // Drop the padding the writer added after the header.
    let header_len = 24 + 8 + 20 + 4 + 8 + 1;
    bytes.truncate(header_len);
    let file = parse(bytes).unwrap();
    assert!(file.tensors().is_empty());
}

// ---------------------------------------------------------------- header

#[test]
fn bad_magic_is_named() {
    let mut bytes = sample_builder().build();
    bytes[..4].copy_from_slice(b"GGML");
    let err = expect_err(bytes);
    assert!(matches!(err, GgufError::BadMagic { found } if &found == b"GGML"));
    assert!(err.to_string().contains("GGML"), "{err}");
}

#[test]
fn versions_other_than_2_and_3_are_rejected_by_number() {
    for version in [0u32, 1, 4, 99, 0x0300_0000] {
        let mut builder = sample_builder();
        builder.version = version;
        let err = expect_err(builder.build());
        assert!(
            matches!(err, GgufError::UnsupportedVersion { version: v } if v == version),
            "{err}"
        );
        assert!(err.to_string().contains(&version.to_string()), "{err}");
    }
    let mut builder = sample_builder();
    builder.version = 0x0300_0000;
    assert!(expect_err(builder.build())
        .to_string()
        .contains("big-endian"));
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample_builder().build();
    for len in 0..bytes.len() {
        let prefix = bytes[..len].to_vec();
        let outcome = catch_unwind(|| GgufFile::from_bytes(prefix).map(|_| ()));
        match outcome {
            Ok(Err(_)) => {}
            Ok(Ok(())) => panic!("prefix of {len} / {} bytes parsed as valid", bytes.len()),
            Err(_) => panic!("prefix of {len} bytes panicked"),
        }
    }
    assert!(parse(bytes).is_ok());
}

#[test]
fn huge_counts_are_bounded_by_file_size() {
    let mut bytes = sample_builder().build();
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    let err = expect_err(bytes);
    assert!(
        matches!(
            err,
            GgufError::CountTooLarge {
                field: "tensor_count",
                ..
            }
        ),
        "{err}"
    );

    let mut bytes = sample_builder().build();
    bytes[16..24].copy_from_slice(&(u64::MAX / 3).to_le_bytes());
    let err = expect_err(bytes);
    assert!(
        matches!(
            err,
            GgufError::CountTooLarge {
                field: "kv_count",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("kv_count"), "{err}");
}

/// A header whose `kv_count` is 0 (or otherwise wrong) while a different number of
/// metadata pairs precede the tensor table: the error says the metadata count is wrong,
/// not that the first uncounted key is a tensor with 8 dimensions (its value type read
/// as `n_dims`) or that a tensor name is a huge metadata key.
#[test]
fn miscounted_metadata_is_named() {
    let pairs = sample_values().len() as u64;
    for kv_count in [0u64, 1, 5, pairs - 1, pairs + 1, pairs + 2, pairs + 3] {
        let mut bytes = sample_builder().build();
        bytes[16..24].copy_from_slice(&kv_count.to_le_bytes());
        let err = expect_err(bytes);
        assert!(
            matches!(&err, GgufError::MetadataCountMismatch { kv_count: k, found, .. } if *k == kv_count && *found == pairs),
            "kv_count {kv_count}: {err}"
        );
        let message = err.to_string();
        assert!(message.starts_with("metadata is missing"), "{message}");
        assert!(
            message.contains(&format!(
                "`kv_count` is {kv_count}, but the file holds {pairs} metadata pairs"
            )),
            "{message}"
        );
        assert!(!message.contains("dimensions"), "{message}");
    }
    // No tensors and no metadata is a well-formed (empty) file: the loader then names the
    // missing key.
    let empty = parse(Builder::new().build()).expect("empty file parses");
    let err = empty.architecture().unwrap_err();
    assert_eq!(
        err.to_string(),
        "metadata key `general.architecture` is missing"
    );
}

#[test]
fn huge_string_lengths_are_rejected_before_allocating() {
    let mut payload = u64::MAX.to_le_bytes().to_vec();
    payload.extend_from_slice(b"abc");
    let err = expect_err(Builder::new().raw_kv("k.str", 8, payload).build());
    assert!(
        matches!(
            err,
            GgufError::Truncated {
                needed: u64::MAX,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("k.str"), "{err}");

    // The first key's own length field.
    let mut bytes = sample_builder().build();
    bytes[24..32].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let err = expect_err(bytes);
    assert!(err.to_string().contains("key of metadata pair #0"), "{err}");
}

#[test]
fn huge_array_lengths_are_rejected_before_allocating() {
    for (elem_type, len) in [(4u32, u64::MAX), (8, 1 << 40), (9, 1 << 33), (0, 1 << 20)] {
        let mut payload = elem_type.to_le_bytes().to_vec();
        payload.extend_from_slice(&len.to_le_bytes());
        payload.extend_from_slice(&[0; 64]);
        let err = expect_err(Builder::new().raw_kv("k.arr", 9, payload).build());
        assert!(
            matches!(err, GgufError::ArrayTooLong { len: l, .. } if l == len),
            "{err}"
        );
    }
}

#[test]
fn unknown_value_types_and_bad_bools_are_rejected() {
    let err = expect_err(Builder::new().raw_kv("k", 13, vec![0; 16]).build());
    assert!(
        matches!(err, GgufError::UnknownValueType { type_id: 13, .. }),
        "{err}"
    );
    let mut payload = 77u32.to_le_bytes().to_vec();
    payload.extend_from_slice(&1u64.to_le_bytes());
    payload.extend_from_slice(&[0; 16]);
    let err = expect_err(Builder::new().raw_kv("k", 9, payload).build());
    assert!(
        matches!(err, GgufError::UnknownValueType { type_id: 77, .. }),
        "{err}"
    );
    let err = expect_err(Builder::new().raw_kv("flag", 7, vec![2]).build());
    assert!(
        matches!(err, GgufError::InvalidBool { byte: 2, .. }),
        "{err}"
    );
}

#[test]
fn duplicate_and_empty_keys_are_rejected() {
    let bytes = sample_builder().kv("t.u8", GgufValue::U8(1)).build();
    let err = expect_err(bytes);
    assert!(
        matches!(&err, GgufError::DuplicateKey { key } if key == "t.u8"),
        "{err}"
    );
    let err = expect_err(Builder::new().kv("", GgufValue::U8(1)).build());
    assert!(matches!(err, GgufError::EmptyKey { index: 0 }), "{err}");
}

#[test]
fn alignment_must_be_a_u32_power_of_two() {
    for value in [0u32, 3, 48] {
        let bytes = sample_builder()
            .kv("general.alignment", GgufValue::U32(value))
            .build();
        let err = expect_err(bytes);
        assert!(
            matches!(err, GgufError::InvalidAlignment { value: v } if v == value),
            "{err}"
        );
    }
    let bytes = sample_builder()
        .kv("general.alignment", GgufValue::U64(32))
        .build();
    let err = expect_err(bytes);
    assert!(
        matches!(err, GgufError::AlignmentType { found: "u64" }),
        "{err}"
    );
}

// ---------------------------------------------------------------- tensor table

fn one_tensor(dims: &[u64], type_id: u32) -> GgufError {
    expect_err(Builder::new().tensor("w", dims, type_id).build())
}

#[test]
fn dimension_counts_outside_1_to_4_are_rejected() {
    for dims in [vec![], vec![1; 5]] {
        let err = one_tensor(&dims, 0);
        assert!(
            matches!(err, GgufError::InvalidDimCount { n_dims, .. } if n_dims as usize == dims.len()),
            "{err}"
        );
    }
    assert!(parse(Builder::new().tensor("w", &[2, 1, 1, 3], 0).build()).is_ok());
}

#[test]
fn zero_and_overflowing_dims_are_rejected() {
    let err = one_tensor(&[4, 0], 0);
    assert!(
        matches!(
            err,
            GgufError::InvalidDim {
                index: 1,
                value: 0,
                ..
            }
        ),
        "{err}"
    );
    let err = expect_err(
        Builder::new()
            .tensor_at("w", &[1 << 32, 1 << 32, 1 << 32], 0, 0)
            .build(),
    );
    assert!(matches!(err, GgufError::ShapeOverflow { .. }), "{err}");
    let err = expect_err(Builder::new().tensor_at("w", &[1 << 62], 0, 0).build());
    assert!(
        matches!(
            err,
            GgufError::ShapeOverflow {
                what: "size in bytes",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn rows_must_be_whole_blocks() {
    let err = one_tensor(&[48, 2], 3);
    assert!(
        matches!(
            err,
            GgufError::RowNotBlockMultiple {
                row_len: 48,
                block_size: 32,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn unsupported_tensor_types_are_named() {
    let err = one_tensor(&[32], 20);
    assert_eq!(
        err.to_string(),
        "tensor `w` has ggml type 20 (IQ4_NL), which tessera does not support"
    );
    for type_id in [4, 9, 15, 16, 39, 43, u32::MAX] {
        let err = one_tensor(&[256], type_id);
        assert!(
            matches!(err, GgufError::UnsupportedTensorType { type_id: t, .. } if t == type_id),
            "{err}"
        );
    }
}

#[test]
fn offsets_must_be_aligned_and_inside_the_file() {
    let err = expect_err(Builder::new().tensor_at("w", &[8], 0, 8).build());
    assert!(
        matches!(
            err,
            GgufError::MisalignedTensor {
                offset: 8,
                alignment: 32,
                ..
            }
        ),
        "{err}"
    );

    let err = expect_err(Builder::new().tensor_at("w", &[8], 0, 1 << 20).build());
    assert!(matches!(err, GgufError::TensorOutOfBounds { .. }), "{err}");
    assert!(err.to_string().contains("`w`"), "{err}");

    let far = u64::MAX / 32 * 32;
    let err = expect_err(Builder::new().tensor_at("w", &[8], 0, far).build());
    assert!(matches!(err, GgufError::TensorOutOfBounds { .. }), "{err}");

    // In the file except for its last byte.
    let mut builder = Builder::new().tensor("w", &[8], 0);
    builder.data_len = Some(31);
    let err = expect_err(builder.build());
    assert!(
        matches!(err, GgufError::TensorOutOfBounds { size_bytes: 32, .. }),
        "{err}"
    );
}

#[test]
fn overlapping_tensors_are_rejected() {
    let mut builder = Builder::new()
        .tensor_at("b", &[16], 0, 32)
        .tensor_at("a", &[16], 0, 0);
    builder.data_len = Some(128);
    let err = expect_err(builder.build());
    assert!(
        matches!(&err, GgufError::OverlappingTensors { first, second, first_end: 64, second_start: 32 }
            if first == "a" && second == "b"),
        "{err}"
    );
    // Adjacent (touching) tensors are fine.
    let mut builder = Builder::new()
        .tensor_at("b", &[16], 0, 64)
        .tensor_at("a", &[16], 0, 0);
    builder.data_len = Some(128);
    assert!(parse(builder.build()).is_ok());
}

#[test]
fn duplicate_tensor_names_are_rejected() {
    let bytes = Builder::new()
        .tensor("w", &[8], 0)
        .tensor("w", &[8], 0)
        .build();
    let err = expect_err(bytes);
    assert!(
        matches!(&err, GgufError::DuplicateTensor { name } if name == "w"),
        "{err}"
    );
}

#[test]
fn open_reports_the_path_of_missing_or_empty_files() {
    let missing = PathBuf::from("/nonexistent/tessera/model.gguf");
    let err = GgufFile::open(&missing).unwrap_err();
    assert!(matches!(err, GgufError::Io { .. }), "{err}");
    assert!(
        err.to_string().contains("/nonexistent/tessera/model.gguf"),
        "{err}"
    );

    let dir = std::env::temp_dir().join(format!("tessera-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert!(GgufFile::open(&empty).is_err());
    let valid = dir.join("valid.gguf");
    std::fs::write(&valid, sample_builder().build()).unwrap();
    let file = GgufFile::open(&valid).unwrap();
    assert_eq!(file.tensors().len(), 3);
    std::fs::remove_dir_all(&dir).unwrap();
}
