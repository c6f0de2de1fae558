//! Hugging Face folders (tests/fixtures/hf-*/, made by scripts/make_hf_fixture.py):
//! loaded directly they give llama.cpp's greedy tokens on the GGUF its converter made
//! from the same folder (tests/golden/hf-*.json), the same logits as our own load of that
//! GGUF, and the same tokenization; broken folders give clear errors. The InternLM2
//! folder is the converter's inverse of internlm2-tiny-f16.gguf, so its golden is that
//! GGUF's.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use tessera::config::EngineConfig;
use tessera::engine::handle::EngineHandle;
use tessera::error::ModelError;
use tessera::model::safetensors::SafetensorsFile;
use tessera::request::SamplingParams;

/// (folder, golden): the golden names the GGUF made from (or the source of) the folder.
const FIXTURES: [(&str, &str); 3] = [
    ("hf-llama-tiny-bf16", "hf-llama-tiny-bf16"),
    ("hf-qwen2-tiny-f32", "hf-qwen2-tiny-f32"),
    ("hf-internlm2-tiny-f16", "internlm2-tiny-f16"),
];
const N: usize = 32;

fn folder(stem: &str) -> PathBuf {
    repo_path(&format!("tests/fixtures/{stem}"))
}

fn engine(path: &Path) -> EngineHandle {
    let cfg = EngineConfig {
        max_num_batched_tokens: 128,
        kv_cache_memory: 64 << 20,
        ..EngineConfig::default()
    };
    start(path, cfg)
}

/// The first step's ten best (id, logprob) of a prompt.
fn first_top(engine: &EngineHandle, prompt: &[u32]) -> Vec<(u32, f32)> {
    let params = SamplingParams {
        logprobs: Some(10),
        ..greedy(1)
    };
    let mut stream = engine.submit(prompt.to_vec(), params).expect("submit");
    let event = stream.blocking_next().expect("event").expect("ok");
    event.logprobs.expect("logprobs")[0].top.clone()
}

/// Prompt ids, 32 greedy tokens and (short prompts) first-step logits equal llama.cpp's.
#[test]
fn hf_folders_match_llama_cpp_on_the_converted_gguf() {
    for (stem, golden_stem) in FIXTURES {
        let g = golden(golden_stem);
        let engine = engine(&folder(stem));
        let tok = &engine.model().tokenizer;
        for case in &g.cases {
            let ids = tok.encode(&case.prompt, true, true).expect("tokenizes");
            assert_eq!(ids, case.prompt_ids, "{stem}/{}: prompt ids", case.name);
            let got = run_ids(&engine, &case.prompt_ids, greedy(N));
            assert_eq!(got, case.output_ids, "{stem}/{}: greedy tokens", case.name);
            if case.prompt_ids.len() < 8 {
                let top = first_top(&engine, &case.prompt_ids);
                let (ours0, theirs0) = (top[0].1, case.first_top[0].1);
                for (&(id, logit), &(our_id, ours)) in case.first_top.iter().zip(&top) {
                    assert_eq!(our_id, id, "{stem}/{}: first-step top-10 order", case.name);
                    let diff = ((ours - ours0) - (logit - theirs0)).abs();
                    assert!(
                        diff < 2e-3,
                        "{stem}/{}: token {id} off by {diff}",
                        case.name
                    );
                }
            }
        }
        engine.shutdown();
    }
}

/// The folder and the GGUF converted from it are the same model to the last bit: the
/// loader permutes llama Q/K rows exactly as the converter does.
#[test]
fn hf_folder_and_its_gguf_give_identical_logits_and_tokens() {
    for (stem, golden_stem) in FIXTURES {
        let g = golden(golden_stem);
        let hf = engine(&folder(stem));
        let gguf = engine(&golden_model_path(&g));
        assert_eq!(
            hf.model().config,
            gguf.model().config,
            "{stem}: ModelConfig"
        );
        for case in &g.cases {
            let prompt = &case.prompt_ids;
            assert_eq!(
                first_top(&hf, prompt),
                first_top(&gguf, prompt),
                "{stem}/{}: first-step logprobs",
                case.name
            );
            let (a, b) = (
                run_ids(&hf, prompt, greedy(N)),
                run_ids(&gguf, prompt, greedy(N)),
            );
            assert_eq!(a, b, "{stem}/{}: greedy tokens", case.name);
        }
        hf.shutdown();
        gguf.shutdown();
    }
}

#[test]
fn tokenizer_json_tokenizes_like_the_gguf_vocab() {
    let texts = [
        (
            "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
            true,
        ),
        ("<|im_start|>user\nevil<|im_end|>", false),
        (
            "The quick brown fox jumps over the lazy dog. It's 3:45pm, isn't it?",
            false,
        ),
        (
            "长城 🚀 café\n\tfn main() { println!(\"{}\", 1 + 2); }\n",
            false,
        ),
        ("    many   spaces\n\n\nand\t\ttabs \r\n trailing   ", false),
        ("Привет, мир! こんにちは世界 1234567890", false),
    ];
    for (stem, golden_stem) in FIXTURES {
        let g = golden(golden_stem);
        let hf = tessera::model::load(&folder(stem), None, |_, _| {}).expect("hf loads");
        let gguf = tessera::model::load(&golden_model_path(&g), None, |_, _| {}).expect("gguf");
        let (a, b) = (&hf.assets.tokenizer, &gguf.assets.tokenizer);
        assert_eq!(a.vocab_size(), b.vocab_size(), "{stem}");
        assert_eq!(
            (a.bos_id(), a.add_bos()),
            (b.bos_id(), b.add_bos()),
            "{stem}"
        );
        assert_eq!(a.eos_ids(), b.eos_ids(), "{stem}");
        for (text, special) in texts {
            for add in [false, true] {
                let ids = a.encode(text, add, special).expect("hf encodes");
                assert_eq!(
                    ids,
                    b.encode(text, add, special).unwrap(),
                    "{stem}: {text:?}"
                );
                for skip in [false, true] {
                    assert_eq!(a.decode(&ids, skip).unwrap(), b.decode(&ids, skip).unwrap());
                }
            }
        }
        assert_eq!(
            hf.assets.chat_template.source(),
            gguf.assets.chat_template.source(),
            "{stem}: chat template"
        );
        assert_eq!(hf.assets.name, stem);
        // The folder's weight type, read at load (`hf-llama-tiny-bf16` holds BF16).
        let dtype = stem.rsplit('-').next().unwrap_or_default().to_uppercase();
        assert_eq!(hf.assets.dtype, dtype, "{stem}");
    }
}

// ------------------------------------------------------------------ broken folders

/// A scratch copy of a fixture folder (without its GGUF), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn copy_of(stem: &str, tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tessera-hf-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(folder(stem)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e != "gguf") {
                std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
            }
        }
        Scratch(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn edit_json(&self, name: &str, edit: impl FnOnce(&mut serde_json::Value)) {
        let text = std::fs::read_to_string(self.file(name)).unwrap();
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        edit(&mut json);
        std::fs::write(self.file(name), json.to_string()).unwrap();
    }

    fn load_err(&self) -> String {
        match tessera::model::load(&self.0, None, |_, _| {}) {
            Ok(_) => panic!("{} loaded", self.0.display()),
            Err(err) => err.to_string(),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Rewrites a safetensors file keeping the tensors `keep` accepts, with `shape_of`
/// overriding shapes (the data is cut or zero-padded to match).
fn rewrite_safetensors(
    path: &Path,
    keep: impl Fn(&str) -> bool,
    shape_of: impl Fn(&str, &[usize]) -> Vec<usize>,
) {
    let file = SafetensorsFile::open(path).unwrap();
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for t in file.tensors().iter().filter(|t| keep(&t.name)) {
        let shape = shape_of(&t.name, &t.shape);
        let len = shape.iter().product::<usize>() * t.dtype.size();
        let mut bytes = file.data(t).to_vec();
        bytes.resize(len, 0);
        let begin = data.len();
        data.extend_from_slice(&bytes);
        let entry = serde_json::json!({"dtype": t.dtype.name(), "shape": shape, "data_offsets": [begin, data.len()]});
        header.insert(t.name.clone(), entry);
    }
    let json = serde_json::Value::Object(header).to_string();
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(&data);
    drop(file);
    std::fs::write(path, out).unwrap();
}

/// The load error of `s` with `tensor` 32 rows short in its model.safetensors.
fn cut_32_rows(s: &Scratch, tensor: &str) -> String {
    let shape = |n: &str, s: &[usize]| {
        if n == tensor {
            vec![s[0] - 32, s[1]]
        } else {
            s.to_vec()
        }
    };
    rewrite_safetensors(&s.file("model.safetensors"), |_| true, shape);
    s.load_err()
}

#[test]
fn folder_without_config_or_tokenizer_or_weights_is_refused() {
    let s = Scratch::copy_of("hf-qwen2-tiny-f32", "noconfig");
    std::fs::remove_file(s.file("config.json")).unwrap();
    let err = s.load_err();
    assert!(err.contains("config.json"), "{err}");

    let s = Scratch::copy_of("hf-qwen2-tiny-f32", "notok");
    std::fs::remove_file(s.file("tokenizer.json")).unwrap();
    assert!(s.load_err().contains("tokenizer.json"));

    let s = Scratch::copy_of("hf-qwen2-tiny-f32", "noweights");
    std::fs::remove_file(s.file("model.safetensors")).unwrap();
    assert!(s.load_err().contains("no *.safetensors"));
}

#[test]
fn unknown_model_type_and_unsupported_config_are_named() {
    let s = Scratch::copy_of("hf-qwen2-tiny-f32", "modeltype");
    s.edit_json("config.json", |c| c["model_type"] = "gpt_neox".into());
    let err = s.load_err();
    assert!(err.contains("`gpt_neox`") && err.contains("qwen2"), "{err}");

    let s = Scratch::copy_of("hf-llama-tiny-bf16", "ropescaling");
    s.edit_json("config.json", |c| {
        c["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0})
    });
    assert!(s.load_err().contains("rope_scaling"));
}

#[test]
fn missing_tensor_and_wrong_shape_name_the_tensor() {
    let s = Scratch::copy_of("hf-qwen2-tiny-f32", "missing");
    let up = "model.layers.1.mlp.up_proj.weight";
    rewrite_safetensors(&s.file("model.safetensors"), |n| n != up, |_, s| s.to_vec());
    let err = s.load_err();
    assert!(
        err.contains(up) && err.contains("not in the checkpoint"),
        "{err}"
    );

    let s = Scratch::copy_of("hf-qwen2-tiny-f32", "shape");
    let gate = "model.layers.0.mlp.gate_proj.weight";
    let err = cut_32_rows(&s, gate);
    assert!(
        err.contains(gate) && err.contains("[96, 64]") && err.contains("[128, 64]"),
        "{err}"
    );

    // Untied without an lm_head: the error says how to tie.
    let s = Scratch::copy_of("hf-qwen2-tiny-f32", "untied");
    s.edit_json("config.json", |c| c["tie_word_embeddings"] = false.into());
    let err = s.load_err();
    assert!(
        err.contains("lm_head.weight") && err.contains("tie_word_embeddings"),
        "{err}"
    );
}

#[test]
fn shard_index_is_checked() {
    let s = Scratch::copy_of("hf-llama-tiny-bf16", "index");
    let index = "model.safetensors.index.json";
    s.edit_json(index, |i| {
        i["weight_map"]["model.norm.weight"] = "../model-00002-of-00002.safetensors".into()
    });
    let err = s.load_err();
    assert!(
        err.contains("must be a file name inside the folder"),
        "{err}"
    );

    let s = Scratch::copy_of("hf-llama-tiny-bf16", "index2");
    s.edit_json(index, |i| {
        i["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors".into()
    });
    let err = s.load_err();
    assert!(
        err.contains("model.norm.weight") && err.contains("does not hold it"),
        "{err}"
    );
}

#[test]
fn generation_config_eos_list_ends_generation_and_bad_dtype_is_refused() {
    let s = Scratch::copy_of("hf-qwen2-tiny-f32", "geneos");
    std::fs::write(
        s.file("generation_config.json"),
        r#"{"eos_token_id": [1002, 65]}"#,
    )
    .unwrap();
    let model = tessera::model::load(&s.0, None, |_, _| {}).expect("loads");
    assert!(model.assets.tokenizer.is_eos(65) && model.assets.tokenizer.is_eos(1002));
    assert!(!model.assets.tokenizer.is_eos(66));

    let s = Scratch::copy_of("hf-qwen2-tiny-f32", "dtype");
    let file = s.file("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..header_end]).unwrap();
    // Same byte length: F32 → I32 in the header only.
    let patched = header.replacen("\"F32\"", "\"I32\"", 1);
    std::fs::write(
        &file,
        [&bytes[..8], patched.as_bytes(), &bytes[header_end..]].concat(),
    )
    .unwrap();
    let err = s.load_err();
    assert!(err.contains("dtype I32"), "{err}");
    assert!(matches!(
        tessera::model::load(&s.0, None, |_, _| {}),
        Err(ModelError::Weights(_))
    ));
}

#[test]
fn internlm2_broken_tokenizer_model_wqkv_and_config_are_named() {
    const STEM: &str = "hf-internlm2-tiny-f16";
    let s = Scratch::copy_of(STEM, "spmcut");
    let model = std::fs::read(s.file("tokenizer.model")).unwrap();
    std::fs::write(s.file("tokenizer.model"), &model[..model.len() / 2]).unwrap();
    let err = s.load_err();
    assert!(
        err.contains("tokenizer.model") && err.contains("malformed protobuf"),
        "{err}"
    );

    let s = Scratch::copy_of(STEM, "spmnone");
    std::fs::remove_file(s.file("tokenizer.model")).unwrap();
    assert!(s.load_err().contains("no `tokenizer.model`"));

    let s = Scratch::copy_of(STEM, "wqkv");
    let wqkv = "model.layers.0.attention.wqkv.weight";
    let err = cut_32_rows(&s, wqkv);
    assert!(
        err.contains(wqkv) && err.contains("[256, 128]") && err.contains("[224, 128]"),
        "{err}"
    );

    let s = Scratch::copy_of(STEM, "dynrope");
    s.edit_json("config.json", |c| {
        c["rope_scaling"] = serde_json::json!({"type": "dynamic", "factor": 2.0})
    });
    let err = s.load_err();
    assert!(
        err.contains("rope_scaling") && err.contains("dynamic"),
        "{err}"
    );

    let s = Scratch::copy_of(STEM, "bias");
    s.edit_json("config.json", |c| c["bias"] = true.into());
    let err = s.load_err();
    assert!(err.contains("`bias`"), "{err}");

    let s = Scratch::copy_of(STEM, "decoder");
    s.edit_json("tokenizer_config.json", |c| {
        c["added_tokens_decoder"]["9999"] = serde_json::json!({"content": "<x>", "special": true})
    });
    let err = s.load_err();
    assert!(
        err.contains("added_tokens_decoder") && err.contains("9999"),
        "{err}"
    );
}
