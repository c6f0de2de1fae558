//! The real default model and the llama.cpp vocab files. They must be present (CI fetches
//! them): a missing file is a failure that says which script fetches it.

use std::path::PathBuf;
use std::time::Instant;

use tessera::model::gguf::{GgmlDType, GgufFile, GgufValue};

fn cache_dir() -> PathBuf {
    std::env::var_os("TESSERA_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache"))
}

#[test]
fn default_model_parses() {
    let path = cache_dir().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-model.sh (or set TESSERA_CACHE_DIR)",
        path.display()
    );
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(file.architecture().unwrap(), "llama");
    assert_eq!(file.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(file.get_u32("llama.embedding_length").unwrap(), 576);
    assert_eq!(file.get_f32("llama.rope.freq_base").unwrap(), 100_000.0);
    assert_eq!(file.metadata().len(), 33);
    assert_eq!(
        file.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        49_152
    );
    assert_eq!(
        file.get_str_array("tokenizer.ggml.merges").unwrap().len(),
        48_900
    );
    assert_eq!(
        file.get_i32_array("tokenizer.ggml.token_type")
            .unwrap()
            .len(),
        49_152
    );
    assert_eq!(file.tensors().len(), 272);
    let embd = file.tensor("token_embd.weight").unwrap();
    assert_eq!(
        (embd.dims.as_slice(), embd.dtype),
        (&[576, 49_152][..], GgmlDType::Q8_0)
    );
    assert_eq!(embd.size_bytes, 576 * 49_152 / 32 * 34);
    assert_eq!(file.data_start() + embd.offset, 1_785_664);
    let q = file.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(
        (q.dims.as_slice(), q.dtype),
        (&[576, 576][..], GgmlDType::Q4_1)
    );
    assert_eq!(file.tensor_data(q).len(), 576 * 576 / 32 * 20);
}

#[test]
fn every_llama_cpp_vocab_file_parses() {
    let dir = cache_dir().join("vocab");
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("{}: {err}; run scripts/fetch-test-data.sh", dir.display()));
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("ggml-vocab-") && name.ends_with(".gguf")
        })
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 10,
        "only {} ggml-vocab-*.gguf files in {}; run scripts/fetch-test-data.sh",
        paths.len(),
        dir.display()
    );
    for path in &paths {
        let file = GgufFile::open(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        assert!(file.architecture().is_ok(), "{}", path.display());
        let tokens = file.get_str_array("tokenizer.ggml.tokens").unwrap();
        assert!(!tokens.is_empty(), "{}", path.display());
        if let Some(types) = file.get("tokenizer.ggml.token_type") {
            assert!(matches!(types, GgufValue::Array(t) if t.len() == tokens.len()));
        }
    }
}

#[test]
fn qwen2_vocab_parses_quickly() {
    let path = cache_dir().join("vocab/ggml-vocab-qwen2.gguf");
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-test-data.sh",
        path.display()
    );
    let started = Instant::now();
    let file = GgufFile::open(&path).unwrap();
    let elapsed = started.elapsed();
    eprintln!("parsed {} in {elapsed:?}", path.display());
    assert_eq!(file.architecture().unwrap(), "qwen2");
    assert_eq!(
        file.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        151_936
    );
    assert_eq!(file.metadata().len(), 20);
    // Well under a second on one core; the bound is loose for shared CI machines.
    assert!(elapsed.as_secs_f64() < 2.0, "parsing took {elapsed:?}");
}

/// The default model with its header's `kv_count` zeroed: the error says the metadata is
/// missing from the count (it used to say "tensor `general.architecture` has 8
/// dimensions").
#[test]
fn default_model_with_zero_kv_count_names_the_missing_metadata() {
    let path = cache_dir().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: run scripts/fetch-model.sh (or set TESSERA_CACHE_DIR)",
            path.display()
        )
    });
    bytes[16..24].copy_from_slice(&0u64.to_le_bytes());
    let err = GgufFile::from_bytes(bytes).expect_err("kv_count 0 must be refused");
    let message = err.to_string();
    assert!(
        message.starts_with(
            "metadata is missing from the header's count: header field `kv_count` is 0, \
             but the file holds 33 metadata pairs"
        ),
        "{message}"
    );
}
