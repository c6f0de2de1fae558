//! Tokenizer conformance against llama.cpp.
//!
//! 1. llama.cpp's own vectors: for each `ggml-vocab-X.gguf` with `.inp`/`.out` files in
//!    `$TESSERA_CACHE_DIR/vocab/` (scripts/fetch-test-data.sh), every test string must
//!    tokenize (no BOS, special tokens not parsed) to exactly the ids in `.out`.
//! 2. The default model (scripts/fetch-model.sh): ids llama.cpp produced for a set of
//!    prompts (tests/golden/smollm2_tokens.json, made by scripts/golden_tokens.py).
//! 3. Properties: decode inverts encode, and typed control-token text stays text.

use std::path::PathBuf;

use tessera::model::tokenizer::{GgufVocab, Tokenizer};

const SEPARATOR: &str = "\n__ggml_vocab_test__\n";

fn cache_dir() -> PathBuf {
    std::env::var_os("TESSERA_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache"))
}

fn read(path: &PathBuf, fetch_script: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; run {fetch_script} first",
            path.display()
        )
    })
}

fn load_vocab(path: &PathBuf, fetch_script: &str) -> GgufVocab {
    dev_json::load(path, fetch_script)
}

fn vocab_file(name: &str) -> PathBuf {
    cache_dir()
        .join("vocab")
        .join(format!("ggml-vocab-{name}.gguf"))
}

fn smollm2_file() -> PathBuf {
    cache_dir()
        .join("models")
        .join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The (text, expected ids) pairs of one llama.cpp vector file.
fn read_cases(name: &str) -> Vec<(String, Vec<u32>)> {
    let base = vocab_file(name);
    let inp = read(
        &base.with_extension("gguf.inp"),
        "scripts/fetch-test-data.sh",
    );
    let out = read(
        &base.with_extension("gguf.out"),
        "scripts/fetch-test-data.sh",
    );
    let mut texts: Vec<&str> = inp.split(SEPARATOR).collect();
    if texts.last() == Some(&"") {
        texts.pop();
    }
    let expected: Vec<Vec<u32>> = out
        .lines()
        .map(|line| {
            line.split_whitespace()
                .map(|id| id.parse().expect("ids in .out are integers"))
                .collect()
        })
        .collect();
    assert_eq!(
        texts.len(),
        expected.len(),
        "{name}: .inp and .out disagree on the number of tests"
    );
    texts.into_iter().map(str::to_owned).zip(expected).collect()
}

/// Every llama.cpp vector of vocab `name` must match; reports all mismatches at once.
fn check_vocab(name: &str) {
    let vocab = load_vocab(&vocab_file(name), "scripts/fetch-test-data.sh");
    let tokenizer = Tokenizer::from_vocab(&vocab).unwrap_or_else(|e| panic!("{name}: {e}"));
    let cases = read_cases(name);
    let mut failures = Vec::new();
    for (text, expected) in &cases {
        let ids = tokenizer.encode(text, false, false).expect("encode");
        if &ids != expected {
            failures.push(format!(
                "  {text:?}\n    want {expected:?}\n    got  {ids:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} vectors differ from llama.cpp:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

macro_rules! vocab_tests {
    ($($test:ident => $name:literal),* $(,)?) => {
        $(#[test] fn $test() { check_vocab($name); })*
    };
}

vocab_tests! {
    vocab_gpt_2 => "gpt-2",
    vocab_llama_bpe => "llama-bpe",
    vocab_qwen2 => "qwen2",
    vocab_qwen35 => "qwen35",
    vocab_llama_spm => "llama-spm",
    vocab_phi_3 => "phi-3",
    vocab_deepseek_llm => "deepseek-llm",
    vocab_deepseek_coder => "deepseek-coder",
    vocab_falcon => "falcon",
    vocab_mpt => "mpt",
    vocab_starcoder => "starcoder",
    vocab_refact => "refact",
    vocab_command_r => "command-r",
}

/// Development-time loader: JSON dumps of the GGUF metadata (replaced by the GGUF parser).
mod dev_json {
    use super::*;
    use serde_json::Value;

    pub fn load(path: &PathBuf, fetch_script: &str) -> GgufVocab {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let json = read(
            &PathBuf::from(format!("/tmp/vocabjson/{name}.json")),
            fetch_script,
        );
        let v: Value = serde_json::from_str(&json).unwrap();
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let u = |k: &str| v.get(k).and_then(Value::as_u64).map(|x| x as u32);
        let b = |k: &str| v.get(k).and_then(Value::as_bool);
        let strs = |k: &str| -> Vec<String> {
            v.get(k)
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|x| x.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default()
        };
        GgufVocab {
            model: s("tokenizer.ggml.model").unwrap(),
            pre: s("tokenizer.ggml.pre"),
            tokens: strs("tokenizer.ggml.tokens"),
            token_types: v
                .get("tokenizer.ggml.token_type")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|x| x.as_i64().unwrap() as i32).collect())
                .unwrap_or_default(),
            scores: v
                .get("tokenizer.ggml.scores")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|x| x.as_f64().unwrap() as f32).collect())
                .unwrap_or_default(),
            merges: strs("tokenizer.ggml.merges"),
            bos_id: u("tokenizer.ggml.bos_token_id"),
            eos_id: u("tokenizer.ggml.eos_token_id"),
            eot_id: u("tokenizer.ggml.eot_token_id"),
            eom_id: u("tokenizer.ggml.eom_token_id"),
            unk_id: u("tokenizer.ggml.unknown_token_id"),
            pad_id: u("tokenizer.ggml.padding_token_id"),
            add_bos: b("tokenizer.ggml.add_bos_token"),
            add_eos: b("tokenizer.ggml.add_eos_token"),
            add_space_prefix: b("tokenizer.ggml.add_space_prefix"),
            chat_template: s("tokenizer.chat_template"),
            model_name: s("general.name"),
        }
    }
}
