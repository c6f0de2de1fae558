//! `sample_masked` under a structured-output mask: only allowed tokens come out, logprobs
//! are of the masked distribution, and `min_tokens` yields once the grammar allows only EOS.

use super::*;
use crate::structured::{GrammarCompiler, GrammarSpec, GuideState};

/// Single-byte tokens 0..=255, then EOS (special).
const EOS: TokenId = 256;

fn guide_state(regex: &str) -> GuideState {
    let mut words: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    words.push(b"\xFF<|end|>".to_vec());
    let compiler = GrammarCompiler::new(&words, &[EOS]).expect("compiler");
    let mut state = compiler
        .compile(&GrammarSpec::Regex(regex.into()))
        .expect("compiles")
        .start();
    state.compute_mask().expect("mask");
    state
}

fn logits(seed: u64) -> Vec<f32> {
    let mut rng = SeqRng::from_seed(seed);
    (0..=EOS)
        .map(|_| (rng.next_f64() * 10.0 - 5.0) as f32)
        .collect()
}

fn draw(
    state: &GuideState,
    params: &SamplingParams,
    output: &[TokenId],
    seed: u64,
) -> SampledToken {
    let history = History {
        prompt_ids: &[1, 2],
        output_ids: output,
        eos_ids: &[EOS],
    };
    let mut rng = SeqRng::from_seed(seed);
    let mut row = logits(seed);
    sample_masked(
        &mut row,
        params,
        &history,
        Some(state.mask()),
        &mut rng,
        &mut SamplerScratch::new(),
    )
}

#[test]
fn only_allowed_tokens_and_logprobs_of_the_masked_distribution() {
    let state = guide_state("[ab]c");
    let params = SamplingParams {
        temperature: 1.0,
        logprobs: Some(5),
        ..SamplingParams::default()
    };
    for seed in 0..50 {
        let token = draw(&state, &params, &[], seed);
        assert!(matches!(token.token_id, 97 | 98), "{}", token.token_id);
        let lp = token.logprobs.expect("logprobs");
        let finite: Vec<_> = lp.top.iter().filter(|(_, l)| l.is_finite()).collect();
        assert!(
            finite.iter().all(|(t, _)| matches!(t, 97 | 98)),
            "{:?}",
            lp.top
        );
        let mass: f32 = finite.iter().map(|(_, l)| l.exp()).sum();
        assert!((mass - 1.0).abs() < 1e-4, "masked mass {mass}");
    }
}

#[test]
fn min_tokens_yields_to_a_complete_grammar() {
    let mut state = guide_state("a");
    state.commit(b'a' as TokenId).expect("a");
    state.compute_mask().expect("mask");
    assert!(state.mask().only_eos());
    let params = SamplingParams {
        temperature: 0.0,
        min_tokens: 10,
        ..SamplingParams::default()
    };
    assert_eq!(draw(&state, &params, &[97], 1).token_id, EOS);
}
