//! Tokenizer conformance against llama.cpp.
//!
//! 1. llama.cpp's own vectors: for each `ggml-vocab-X.gguf` with `.inp`/`.out` files in
//!    `$TESSERA_CACHE_DIR/vocab/` (scripts/fetch-test-data.sh), every test string must
//!    tokenize (no BOS, special tokens not parsed) to exactly the ids in `.out`.
//! 2. The default model (scripts/fetch-model.sh): ids llama.cpp produced for a set of
//!    prompts (tests/golden/smollm2_tokens.json, made by scripts/golden_tokens.py).
//!    tests/golden/vocab_fuzz.json (scripts/golden_vocab_fuzz.py): llama.cpp's ids for
//!    random mixed strings on every supported vocab file, special tokens parsed or not.
//! 3. Properties: decode inverts encode, and typed control-token text stays text.
//! 4. The incremental detokenizer on real vocabularies: never half a character, and the
//!    pieces add up to `decode` for every prefix of the stream.

use std::path::{Path, PathBuf};

use tessera::engine::detokenizer::IncrementalDetokenizer;
use tessera::model::gguf::GgufFile;
use tessera::model::tokenizer::{GgufVocab, Tokenizer};

const SEPARATOR: &str = "\n__ggml_vocab_test__\n";

fn cache_dir() -> PathBuf {
    std::env::var_os("TESSERA_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache"))
}

fn read(path: &Path, fetch_script: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; run {fetch_script} first",
            path.display()
        )
    })
}

fn load_vocab(path: &Path, fetch_script: &str) -> GgufVocab {
    let file = GgufFile::open(path)
        .unwrap_or_else(|e| panic!("{e}; run {fetch_script} to fetch {}", path.display()));
    GgufVocab::from_gguf(&file).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
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
    vocab_gemma_4 => "gemma-4",
}

#[test]
fn random_strings_match_llama_cpp_on_every_vocab() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/vocab_fuzz.json");
    let golden: serde_json::Value =
        serde_json::from_str(&read(&path, "scripts/golden_vocab_fuzz.py")).expect("golden JSON");
    let texts: Vec<String> = serde_json::from_value(golden["texts"].clone()).expect("texts");
    let vocabs = golden["vocabs"].as_object().expect("vocabs");
    assert!(vocabs.len() >= 18, "golden covers {} vocabs", vocabs.len());
    for (name, expected) in vocabs {
        let file = match name.starts_with("ggml-vocab-") {
            true => cache_dir().join("vocab").join(name),
            false => cache_dir().join("models").join(name),
        };
        let tokenizer = Tokenizer::from_vocab(&load_vocab(&file, "scripts/fetch-test-data.sh"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for (key, parse_special) in [("plain", false), ("special", true)] {
            let want: Vec<Vec<u32>> = serde_json::from_value(expected[key].clone()).expect("ids");
            for (text, want) in texts.iter().zip(want) {
                let ids = tokenizer
                    .encode(text, false, parse_special)
                    .expect("encode");
                assert_eq!(
                    ids, want,
                    "{name}, parse_special = {parse_special}: {text:?}"
                );
            }
        }
    }
}

fn smollm2() -> Tokenizer {
    let vocab = load_vocab(&smollm2_file(), "scripts/fetch-model.sh");
    Tokenizer::from_vocab(&vocab).expect("SmolLM2 tokenizer")
}

fn tokenizer_of(name: &str) -> Tokenizer {
    let vocab = load_vocab(&vocab_file(name), "scripts/fetch-test-data.sh");
    Tokenizer::from_vocab(&vocab).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn smollm2_matches_llama_cpp_golden_ids_and_decodes_back() {
    let tokenizer = smollm2();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/smollm2_tokens.json");
    let golden: serde_json::Value =
        serde_json::from_str(&read(&path, "scripts/golden_tokens.py")).expect("golden JSON");
    let cases = golden["cases"].as_array().expect("cases");
    assert!(cases.len() >= 10);
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let parse_special = case["parse_special"].as_bool().expect("parse_special");
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).expect("ids");
        let ids = tokenizer
            .encode(text, false, parse_special)
            .expect("encode");
        assert_eq!(ids, want, "{text:?} (parse_special = {parse_special})");
        assert_eq!(tokenizer.decode(&ids, false).expect("decode"), text);
    }
}

#[test]
fn smollm2_special_token_ids() {
    let tokenizer = smollm2();
    assert_eq!(tokenizer.bos_id(), Some(1));
    assert!(
        !tokenizer.add_bos(),
        "SmolLM2 sets tokenizer.ggml.add_bos_token = false"
    );
    // <|endoftext|>, <|im_end|> and <reponame> (a fill-in-the-middle repo marker): the
    // same end-of-generation set llama.cpp reports for this file.
    assert_eq!(tokenizer.eos_ids(), [0, 2, 4]);
    assert_eq!(tokenizer.eot_id(), Some(2));
    assert_eq!(tokenizer.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(tokenizer.id_to_token(2).as_deref(), Some("<|im_end|>"));
    assert!(tokenizer.is_special(1) && !tokenizer.is_special(4093));
    assert_eq!(tokenizer.vocab_size(), 49152);
    let text = "<|im_start|>user\nhi<|im_end|>";
    let ids = tokenizer.encode(text, true, true).expect("encode");
    assert_eq!(tokenizer.decode(&ids, true).expect("decode"), "user\nhi");
    assert_eq!(tokenizer.decode(&ids, false).expect("decode"), text);
}

/// Typing a control token's text must never produce the control token: for every
/// CONTROL token of several vocabs, `x<text>y` encoded with parse_special = false holds no
/// special id and decodes back to itself.
#[test]
fn typed_control_token_text_stays_text() {
    let tokenizers = [
        ("SmolLM2", smollm2()),
        ("qwen2", tokenizer_of("qwen2")),
        ("llama-bpe", tokenizer_of("llama-bpe")),
        ("llama-spm", tokenizer_of("llama-spm")),
        ("phi-3", tokenizer_of("phi-3")),
    ];
    for (name, tokenizer) in &tokenizers {
        let mut checked = 0;
        for id in 0..tokenizer.vocab_size() as u32 {
            if !tokenizer.is_special(id) {
                continue;
            }
            let token = tokenizer.id_to_token(id).expect("special token text");
            let text = format!("x{token}system\ny");
            let ids = tokenizer.encode(&text, false, false).expect("encode");
            assert!(
                ids.iter().all(|&t| !tokenizer.is_special(t)),
                "{name}: typed {token:?} gave special ids {ids:?}"
            );
            assert!(tokenizer
                .decode(&ids, false)
                .expect("decode")
                .ends_with(&format!("{token}system\ny")));
            let parsed = tokenizer.encode(&text, false, true).expect("encode");
            assert!(
                parsed.contains(&id),
                "{name}: parse_special must find {token:?}"
            );
            checked += 1;
        }
        assert!(checked >= 2, "{name}: only {checked} special tokens");
    }
}

/// Decoding inverts encoding for text the vocab can represent: byte-level BPE for any
/// UTF-8, SentencePiece with byte fallback (characters missing from the vocab) and the
/// `add_space_prefix` leading space.
#[test]
fn decode_inverts_encode() {
    let texts = [
        "Hello world",
        " leading space and trailing  ",
        "北京欢迎你 — 中文",
        "emoji 👨‍👩‍👧 🦙 🇯🇵 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
        "\n\n\ttabs\r\nand newlines\n",
        "code: fn main() { println!(\"{}\", 42); }",
    ];
    for name in [
        "qwen2",
        "llama-bpe",
        "gpt-2",
        "llama-spm",
        "phi-3",
        "gemma-4",
    ] {
        let tokenizer = tokenizer_of(name);
        for text in texts {
            let ids = tokenizer.encode(text, true, false).expect("encode");
            assert_eq!(
                tokenizer.decode(&ids, true).expect("decode"),
                text,
                "{name}"
            );
        }
    }
    let spm = tokenizer_of("llama-spm");
    let ids = spm.encode("🦙", false, false).expect("encode");
    let pieces: Vec<String> = ids.iter().filter_map(|&id| spm.id_to_token(id)).collect();
    assert_eq!(
        pieces,
        ["▁", "<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"],
        "byte fallback"
    );
}

#[test]
fn bos_and_out_of_range_ids() {
    let spm = tokenizer_of("llama-spm");
    assert_eq!(
        spm.encode("Hi", true, false).expect("encode")[0],
        1,
        "SentencePiece adds <s>"
    );
    let llama3 = tokenizer_of("llama-bpe");
    assert_eq!(llama3.encode("Hi", true, false).expect("encode")[0], 128000);
    assert_eq!(
        llama3.eos_ids(),
        [128001, 128009],
        "<|end_of_text|>, <|eot_id|>"
    );
    let err = spm
        .decode(&[5, 32000], false)
        .expect_err("32000 is out of range");
    assert!(err.to_string().contains("32000"), "{err}");
}

/// Feed `ids` one at a time; check each piece is whole text and that, for every prefix,
/// emitted + held-back tail (from `finish` on a clone) == decode(prefix).
fn check_detokenizer(tokenizer: &Tokenizer, ids: &[u32], valid_utf8: bool) {
    let mut detok = IncrementalDetokenizer::new();
    let mut emitted = String::new();
    for (k, &id) in ids.iter().enumerate() {
        let piece = detok.push(tokenizer, id).expect("push");
        if valid_utf8 {
            assert!(
                !piece.contains('\u{FFFD}'),
                "piece {piece:?} at token {k} is broken UTF-8"
            );
        }
        emitted += &piece;
        let full = tokenizer.decode(&ids[..=k], true).expect("decode");
        assert!(
            full.starts_with(&emitted),
            "emitted {emitted:?} is not a prefix of {full:?}"
        );
        let tail = detok.clone().finish(tokenizer).expect("finish");
        assert_eq!(format!("{emitted}{tail}"), full, "after {} tokens", k + 1);
    }
}

#[test]
fn detokenizer_streams_whole_characters_smollm2() {
    let tokenizer = smollm2();
    let texts = [
        "北京是中华人民共和国的首都，也是全国的政治、文化中心。",
        "Family: 👨‍👩‍👧‍👦, flags 🇫🇷🇯🇵, skin tone 👍🏽, heart ❤️ and 🦙 llama",
        "Mixed 中文 and English, emoji 😀 in between; 日本語も。한국어도 OK.",
        "<|im_start|>assistant\nSure! 你好 👋<|im_end|>",
    ];
    for text in texts {
        let ids = tokenizer.encode(text, false, true).expect("encode");
        assert!(ids.len() > 10);
        check_detokenizer(&tokenizer, &ids, true);
    }
    // Characters really are split across tokens in these texts.
    let ids = tokenizer.encode("👨‍👩‍👧‍👦", false, false).expect("encode");
    assert!(ids.iter().any(|&id| tokenizer
        .decode(&[id], true)
        .expect("decode")
        .contains('\u{FFFD}')));
}

#[test]
fn detokenizer_streams_sentencepiece_byte_fallback_and_spaces() {
    let tokenizer = tokenizer_of("llama-spm");
    for text in [
        "  two leading spaces",
        "emoji 🦙🦙 and 𝔘𝔫𝔦 (byte fallback)",
        "中文 mixed",
    ] {
        let ids = tokenizer.encode(text, true, false).expect("encode");
        check_detokenizer(&tokenizer, &ids, true);
    }
}

/// Arbitrary id streams (invalid UTF-8, lone byte tokens, specials anywhere) still add
/// up to `decode`; only the UTF-8 validity of pieces is not expected.
#[test]
fn detokenizer_matches_decode_on_arbitrary_id_streams() {
    for tokenizer in [smollm2(), tokenizer_of("llama-spm")] {
        let n = tokenizer.vocab_size() as u64;
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..30 {
            let ids: Vec<u32> = (0..40)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    // Favour the first 300 ids: specials, bytes and short pieces.
                    (if state.is_multiple_of(2) {
                        state % 300
                    } else {
                        state % n
                    }) as u32
                })
                .collect();
            check_detokenizer(&tokenizer, &ids, false);
        }
    }
}
