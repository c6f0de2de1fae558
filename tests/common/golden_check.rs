//! The golden check: our greedy outputs against llama.cpp's (tests/golden/*.json, made
//! by scripts/make_golden.py and scripts/make_lora_fixtures.py on the same files).

use tessera::engine::handle::EngineHandle;
use tessera::request::{LoraRef, SamplingParams};

use super::{greedy, run_batch, run_ids, GoldenCase, GoldenFile};

/// Tokens generated per case (the goldens' `n_predict`).
pub const N: usize = 32;

/// Our tokenizer reproduces llama.cpp's prompt ids, and greedy decoding (with adapter
/// `lora`, if any) its output ids: free-running up to the first near-tie, and
/// teacher-forced at every decisive step; short prompts' first logits to 2e-3.
pub fn check_engine_against(
    name: &str,
    g: &GoldenFile,
    engine: EngineHandle,
    margin: f32,
    lora: Option<LoraRef>,
) {
    let greedy = |n: usize| SamplingParams {
        lora: lora.clone(),
        ..greedy(n)
    };
    let tok = &engine.model().tokenizer;
    let mut checked = 0;
    for case in &g.cases {
        let ours = tok.encode(&case.prompt, true, true).expect("tokenizes");
        assert_eq!(
            ours, case.prompt_ids,
            "{name}/{}: prompt tokenization",
            case.name
        );
        let got = run_ids(&engine, &case.prompt_ids, greedy(N));
        let decisive = case
            .step_margins
            .iter()
            .take_while(|&&m| m >= margin)
            .count();
        assert_eq!(
            got[..decisive],
            case.output_ids[..decisive],
            "{name}/{}: free-running greedy tokens differ from llama.cpp before step {decisive}",
            case.name
        );
        checked += decisive + teacher_forced(&engine, name, case, margin, greedy(1));
        if margin == 0.0 && case.prompt_ids.len() < SHORT {
            first_step_logits_match(&engine, name, case, greedy(1));
        }
    }
    assert!(
        checked >= g.cases.len() * N / 3,
        "{name}: only {checked} decisive steps"
    );
    engine.shutdown();
}

/// Prompts shorter than this are where our arithmetic and llama.cpp's single-token path
/// agree to the last digits, so logits are compared, not just argmaxes.
const SHORT: usize = 8;

/// The first step's top-10 logits, relative to the top one, equal llama.cpp's to 2e-3.
fn first_step_logits_match(
    engine: &EngineHandle,
    name: &str,
    case: &GoldenCase,
    one: SamplingParams,
) {
    let params = SamplingParams {
        logprobs: Some(10),
        ..one
    };
    let mut stream = engine.submit(case.prompt_ids.clone(), params).unwrap();
    let event = stream.blocking_next().unwrap().unwrap();
    let top = &event.logprobs.unwrap()[0].top;
    let (ours0, theirs0) = (top[0].1, case.first_top[0].1);
    for (&(id, logit), (our_id, our_logprob)) in case.first_top.iter().zip(top) {
        assert_eq!(*our_id, id, "{name}/{}: first-step top-10 order", case.name);
        let diff = ((our_logprob - ours0) - (logit - theirs0)).abs();
        assert!(
            diff < 2e-3,
            "{name}/{}: token {id} relative logit off by {diff}",
            case.name
        );
    }
}

/// Feeds the prompt plus llama.cpp's first `k` tokens and checks our next token at every
/// step where llama.cpp's choice is decisive. Returns the number of steps checked.
fn teacher_forced(
    engine: &EngineHandle,
    name: &str,
    case: &GoldenCase,
    margin: f32,
    one: SamplingParams,
) -> usize {
    let steps: Vec<usize> = (0..N).filter(|&k| case.step_margins[k] >= margin).collect();
    let prompts: Vec<Vec<u32>> = steps
        .iter()
        .map(|&k| [&case.prompt_ids[..], &case.output_ids[..k]].concat())
        .collect();
    // The first one alone fills the prefix cache; the rest reuse its blocks.
    let mut outs = run_batch(engine, &prompts[..1.min(prompts.len())], one.clone());
    outs.extend(run_batch(engine, prompts.get(1..).unwrap_or(&[]), one));
    for (&k, out) in steps.iter().zip(&outs) {
        assert_eq!(
            out[0], case.output_ids[k],
            "{name}/{}: teacher-forced step {k} (llama.cpp margin {})",
            case.name, case.step_margins[k]
        );
    }
    steps.len()
}
