//! Every instruction-set level the CPU has (`TESSERA_CPU_FEATURES` = `native`, `avx512`,
//! `avx2`, `scalar`, as far as the host allows) gives the same bits, not just the same
//! greedy tokens: for each golden model (the default SmolLM2 and every fixture, dense,
//! MoE, F32/F16/BF16, Q4_1, Q4_K_M, Q8_0 mixes), all golden prompts go in as one batch
//! with prompt logprobs (every prefill position's logits) and 8 greedy steps with
//! logprobs; the ids and the bits of every logprob must be equal on every level.
//!
//! Prompts are cut to `MAX_PROMPT` tokens so the scalar child stays short (the scalar
//! twins are ~10× slower); the golden tests cover long prompts on every level
//! (`scripts/test.sh` reruns them at `avx2` and, the fast ones, at `scalar`).
//!
//! The level is chosen once per process, so each level runs in a child process: this
//! test binary again, with the variable set, running only the ignored `fingerprint` test,
//! which prints its fingerprint between markers.

mod common;

use std::fmt::Write;
use std::process::Command;

use common::*;
use tessera::config::EngineConfig;
use tessera::ops::cpu_features::{self, Level};
use tessera::request::SamplingParams;

const BEGIN: &str = "==fingerprint-begin==";
const END: &str = "==fingerprint-end==";
/// Longest prompt prefix used (16 prompts of up to 48 tokens: several prefill steps, the
/// batched matmul's panel path, attention over a few KV blocks).
const MAX_PROMPT: usize = 48;

/// Golden files of greedy outputs (each names its model).
fn golden_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo_path("tests/golden"))
        .expect("tests/golden")
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".json")?.to_string();
            let text = std::fs::read_to_string(repo_path(&format!("tests/golden/{name}"))).ok()?;
            text.contains("\"output_ids\"").then_some(stem)
        })
        .collect();
    names.sort();
    names
}

/// One model's batch: ids and the bits of every logprob, one line per request.
fn fingerprint_of(name: &str) -> String {
    let g = golden(name);
    let cfg = EngineConfig {
        max_num_batched_tokens: 256,
        kv_cache_memory: 256 << 20,
        ..EngineConfig::default()
    };
    let engine = start(&golden_model_path(&g), cfg);
    let params = SamplingParams {
        logprobs: Some(5),
        prompt_logprobs: Some(5),
        ..greedy(8)
    };
    let streams: Vec<_> = g
        .cases
        .iter()
        .map(|c| {
            engine
                .submit(
                    c.prompt_ids[..c.prompt_ids.len().min(MAX_PROMPT)].to_vec(),
                    params.clone(),
                )
                .expect("submit")
        })
        .collect();
    let mut out = String::new();
    for (case, mut stream) in g.cases.iter().zip(streams) {
        let _ = write!(out, "{name}/{}:", case.name);
        while let Some(event) = stream.blocking_next() {
            let event = event.expect("no engine error");
            for p in event.prompt_logprobs.iter().flatten() {
                let _ = write!(out, " p{}:{:08x}", p.rank, p.logprob.to_bits());
                for (id, lp) in p.top.iter() {
                    let _ = write!(out, " {id}:{:08x}", lp.to_bits());
                }
            }
            for (id, lps) in event.token_ids.iter().zip(event.logprobs.iter().flatten()) {
                let _ = write!(out, " t{id}:{:08x}", lps.logprob.to_bits());
                for (id, lp) in lps.top.iter() {
                    let _ = write!(out, " {id}:{:08x}", lp.to_bits());
                }
            }
        }
        out.push('\n');
    }
    engine.shutdown();
    out
}

/// Run by the parent in a child process with `TESSERA_CPU_FEATURES` set.
#[test]
#[ignore = "run by every_level_gives_the_same_bits in a child process"]
fn fingerprint() {
    let wanted = std::env::var(cpu_features::ENV_VAR).unwrap_or_default();
    let chosen = cpu_features::init().expect("a valid level");
    if wanted != "native" {
        assert_eq!(
            chosen.level.name(),
            wanted,
            "the child runs the level asked"
        );
    }
    let mut all = String::new();
    for name in golden_names() {
        all.push_str(&fingerprint_of(&name));
    }
    println!("{BEGIN}\n{all}{END}");
}

/// The child's fingerprint at `level`.
fn fingerprint_at(level: &str) -> String {
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "fingerprint", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(cpu_features::ENV_VAR, level)
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child at {level} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = stdout.find(BEGIN).expect("begin marker") + BEGIN.len();
    let end = stdout.find(END).expect("end marker");
    stdout[start..end].trim().to_string()
}

#[test]
fn every_level_gives_the_same_bits() {
    let native = fingerprint_at("native");
    assert!(
        native.lines().count() >= 16 && native.contains(" p1:") && native.contains(" t"),
        "fingerprint too small:\n{native}"
    );
    let host = cpu_features::host().level;
    let lower = [Level::Avx512, Level::Avx2, Level::Scalar];
    // The host's own level is what `native` ran.
    for level in lower.into_iter().filter(|&l| l < host) {
        let got = fingerprint_at(level.name());
        for (ours, theirs) in got.lines().zip(native.lines()) {
            let case = theirs.split(':').next().unwrap_or_default();
            assert!(
                ours == theirs,
                "{case}: level {level} differs from native ({host})"
            );
        }
        assert_eq!(got.lines().count(), native.lines().count(), "{level}");
    }
}
