//! The safetensors reader against valid, broken and hostile files: each test breaks one
//! rule and checks for the specific `SafetensorsError` (never a panic); a seeded
//! mutation run throws 20,000 corrupted copies at the parser; the fixture shards parse.

use std::panic::catch_unwind;

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tessera::model::safetensors::{Checkpoint, Dtype, SafetensorsError, SafetensorsFile};

/// A file from a header JSON and a data section.
fn file(header: &Value, data: &[u8]) -> Vec<u8> {
    raw(header.to_string().as_bytes(), data)
}

fn raw(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

fn parse(bytes: Vec<u8>) -> Result<SafetensorsFile, SafetensorsError> {
    SafetensorsFile::from_bytes("test.safetensors", bytes)
}

fn err(bytes: Vec<u8>) -> SafetensorsError {
    parse(bytes).expect_err("must be rejected")
}

/// Two tensors: `a` F32 [2, 3] at 0..24 and `b` BF16 [4] at 24..32, plus metadata.
fn sample_header() -> Value {
    json!({
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "b": {"dtype": "BF16", "shape": [4], "data_offsets": [24, 32]}
    })
}

fn sample_data() -> Vec<u8> {
    (0..32u8).collect()
}

#[test]
fn valid_file_round_trips() {
    let f = parse(file(&sample_header(), &sample_data())).expect("valid");
    assert_eq!(f.metadata(), [("format".to_string(), "pt".to_string())]);
    let a = f.tensor("a").expect("a");
    assert_eq!(
        (a.dtype, a.shape.as_slice(), a.range.clone()),
        (Dtype::F32, &[2, 3][..], 0..24)
    );
    assert_eq!(f.data(a), &sample_data()[..24]);
    let b = f.tensor("b").expect("b");
    assert_eq!(f.data(b), &sample_data()[24..]);
    assert!(f.tensor("c").is_none());
    // Zero-sized tensors and an empty header are fine; trailing header spaces too.
    let empty = json!({"z": {"dtype": "F16", "shape": [0, 5], "data_offsets": [0, 0]}});
    assert!(parse(file(&empty, &[])).is_ok());
    assert!(parse(raw(b"{}   ", &[]))
        .expect("empty")
        .tensors()
        .is_empty());
}

#[test]
fn short_file_and_header_length_are_checked() {
    assert!(matches!(
        err(vec![1, 2, 3]),
        SafetensorsError::TooShort { len: 3, .. }
    ));
    let mut bytes = file(&sample_header(), &sample_data());
    let too_long = bytes.len() as u64;
    bytes[..8].copy_from_slice(&too_long.to_le_bytes());
    let e = err(bytes);
    assert!(
        matches!(e, SafetensorsError::HeaderBeyondFile { .. }),
        "{e}"
    );
    let mut bytes = file(&sample_header(), &sample_data());
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = err(bytes);
    assert!(matches!(e, SafetensorsError::HeaderTooLarge { .. }), "{e}");
    assert!(e.to_string().contains("18446744073709551615"), "{e}");
}

#[test]
fn header_must_be_a_json_object() {
    for header in [&b"not json"[..], b"[1, 2]", b"{\"a\": ", b"\xff\xfe{}"] {
        let e = err(raw(header, &[]));
        assert!(matches!(e, SafetensorsError::HeaderJson { .. }), "{e}");
    }
}

#[test]
fn duplicate_names_are_refused() {
    let header = br#"{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                      "a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}"#;
    let e = err(raw(header, &[0, 0]));
    assert!(
        matches!(&e, SafetensorsError::DuplicateTensor { name, .. } if name == "a"),
        "{e}"
    );
}

/// One entry of `sample_header` replaced by `entry`; the error must mention `needle`.
fn broken_entry(key: &str, entry: Value, needle: &str) {
    let mut header = sample_header();
    header[key] = entry;
    let e = err(file(&header, &sample_data()));
    assert!(e.to_string().contains(needle), "{key}: {e}");
}

#[test]
fn malformed_entries_name_the_tensor_and_the_problem() {
    let f32_a = |shape: Value, offsets: Value| json!({"dtype": "F32", "shape": shape, "data_offsets": offsets});
    broken_entry(
        "a",
        json!({"dtype": "F33", "shape": [2, 3], "data_offsets": [0, 24]}),
        "unknown dtype `F33`",
    );
    broken_entry(
        "a",
        json!({"shape": [2, 3], "data_offsets": [0, 24]}),
        "missing field `dtype`",
    );
    broken_entry("a", f32_a(json!([2, -3]), json!([0, 24])), "`a`");
    broken_entry(
        "a",
        f32_a(json!([2, 3]), json!([24, 0])),
        "end before they begin",
    );
    broken_entry("a", f32_a(json!([2, 4]), json!([0, 24])), "needs 32 bytes");
    let huge = json!([u64::MAX, u64::MAX, 2]);
    broken_entry("a", f32_a(huge, json!([0, 24])), "overflows");
    broken_entry("a", json!("F32"), "`a`");
    broken_entry("__metadata__", json!({"format": 1}), "must be a string");
    broken_entry("__metadata__", json!([1]), "object of strings");
}

#[test]
fn ranges_must_tile_the_data_section() {
    let u8_at = |begin: u64, end: u64| json!({"dtype": "U8", "shape": [end - begin], "data_offsets": [begin, end]});
    // Past the end.
    let e = err(file(&json!({"a": u8_at(0, 40)}), &[0; 32]));
    assert!(
        matches!(
            e,
            SafetensorsError::OutOfBounds {
                end: 40,
                data_len: 32,
                ..
            }
        ),
        "{e}"
    );
    // Overlap.
    let e = err(file(
        &json!({"a": u8_at(0, 20), "b": u8_at(16, 32)}),
        &[0; 32],
    ));
    assert!(matches!(e, SafetensorsError::Overlap { at: 16, .. }), "{e}");
    assert!(
        e.to_string().contains("`a`") && e.to_string().contains("`b`"),
        "{e}"
    );
    // Hole between tensors, and bytes after the last one.
    let e = err(file(
        &json!({"a": u8_at(0, 8), "b": u8_at(16, 32)}),
        &[0; 32],
    ));
    assert!(
        matches!(
            e,
            SafetensorsError::Gap {
                start: 8,
                end: 16,
                ..
            }
        ),
        "{e}"
    );
    let e = err(file(&json!({"a": u8_at(0, 8)}), &[0; 32]));
    assert!(
        matches!(
            e,
            SafetensorsError::Gap {
                start: 8,
                end: 32,
                ..
            }
        ),
        "{e}"
    );
    // A zero-sized tensor inside another one overlaps it.
    let inner = json!({"dtype": "U8", "shape": [0], "data_offsets": [4, 4]});
    let e = err(file(&json!({"a": u8_at(0, 8), "z": inner}), &[0; 8]));
    assert!(matches!(e, SafetensorsError::Overlap { .. }), "{e}");
}

/// Byte flips, truncations and header-length changes of a valid file: every result is
/// `Ok` or a `SafetensorsError`, never a panic, and `data` stays inside the file.
#[test]
fn seeded_mutations_never_panic() {
    let valid = file(&sample_header(), &sample_data());
    let mut rng = rand::rngs::StdRng::seed_from_u64(20240611);
    let mut rejected = 0;
    for _ in 0..20_000 {
        let mut bytes = valid.clone();
        match rng.random_range(0..4) {
            0 => {
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..bytes.len());
                    bytes[i] = rng.random();
                }
            }
            1 => bytes.truncate(rng.random_range(0..bytes.len())),
            2 => {
                let len = rng.random_range(0..bytes.len() as u64 + 16);
                bytes[..8].copy_from_slice(&len.to_le_bytes());
            }
            _ => {
                let i = rng.random_range(8..bytes.len());
                bytes[i] = *b"0123456789[]{},\":-".get(rng.random_range(0..18)).unwrap();
            }
        }
        let len = bytes.len();
        let result = catch_unwind(|| {
            parse(bytes).map(|f| f.tensors().iter().map(|t| f.data(t).len()).sum::<usize>())
        });
        match result.expect("the parser panicked") {
            Ok(total) => assert!(total <= len),
            Err(_) => rejected += 1,
        }
    }
    assert!(rejected > 10_000, "only {rejected} mutations were rejected");
}

#[test]
fn fixture_shards_parse_and_tile() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf-llama-tiny-bf16");
    let checkpoint = Checkpoint::open_dir(&dir).expect("fixture checkpoint");
    assert_eq!(checkpoint.shards().len(), 2);
    assert_eq!(checkpoint.names().count(), 21);
    let (info, bytes) = checkpoint
        .tensor("model.embed_tokens.weight")
        .expect("embedding");
    assert_eq!(
        (info.dtype, info.shape.as_slice()),
        (Dtype::BF16, &[1003, 64][..])
    );
    assert_eq!(bytes.len(), 1003 * 64 * 2);
    let e = checkpoint.tensor("nope").expect_err("missing");
    assert!(matches!(e, SafetensorsError::MissingTensor { .. }));
    // A tensor in two shards is refused.
    let shard = |name: &str| {
        SafetensorsFile::from_bytes(name, file(&sample_header(), &sample_data())).unwrap()
    };
    let e = Checkpoint::from_shards(vec![shard("x"), shard("y")]).expect_err("duplicate");
    assert!(
        matches!(e, SafetensorsError::DuplicateAcrossShards { .. }),
        "{e}"
    );
}
