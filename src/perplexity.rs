//! `tessera perplexity`: llama.cpp's `llama-perplexity` number for a text. The text is
//! tokenized once (BOS added as the vocabulary says, special tokens not parsed), cut into
//! `tokens / n_ctx` chunks of `n_ctx` tokens (the rest is dropped); each chunk starts
//! with BOS in place of its first token (when the vocabulary adds one) and runs as one
//! prompt; only the second half is scored: the log-probabilities of tokens
//! `n_ctx/2 + 1 .. n_ctx` of the chunk given everything before them. PPL =
//! exp(mean NLL) over all scored tokens, printed per chunk as the running estimate
//! (`[1]12.3456,[2]…`) and at the end with llama-perplexity's error estimate.
//!
//! Log-probabilities come from the engine's prompt logprobs (`prompt_logprobs`), so the
//! chunks are ordinary requests: no separate forward path.

use crate::engine::handle::EngineHandle;
use crate::request::SamplingParams;

/// The result of a run: llama-perplexity's `Final estimate: PPL = ppl +/- error`.
#[derive(Debug, Clone, PartialEq)]
pub struct Perplexity {
    pub ppl: f64,
    pub error: f64,
    pub chunks: usize,
    /// Tokens scored (`chunks * (n_ctx - 1 - n_ctx/2)`).
    pub scored: usize,
}

/// Runs `text` through `engine` in chunks of `n_ctx` tokens; `on_chunk(i, running_ppl)`
/// after each chunk (i from 1).
pub fn perplexity(
    engine: &EngineHandle,
    text: &str,
    n_ctx: usize,
    mut on_chunk: impl FnMut(usize, f64),
) -> Result<Perplexity, Box<dyn std::error::Error>> {
    let tokenizer = &engine.model().tokenizer;
    let tokens = tokenizer.encode(text, true, false)?;
    if n_ctx < 4 || tokens.len() < 2 * n_ctx {
        return Err(format!(
            "--ctx {n_ctx} needs a text of at least {} tokens (and --ctx >= 4); this one has {}",
            2 * n_ctx,
            tokens.len()
        )
        .into());
    }
    let bos = tokenizer.bos_id().filter(|_| tokenizer.add_bos());
    let first = n_ctx / 2;
    let (mut nll, mut nll2, mut scored) = (0f64, 0f64, 0usize);
    let chunks = tokens.len() / n_ctx;
    for (i, chunk) in tokens.chunks_exact(n_ctx).enumerate() {
        let mut prompt = chunk.to_vec();
        if let Some(bos) = bos {
            prompt[0] = bos;
        }
        // Entry e of the prompt logprobs is token e + 1's; score tokens first+1..n_ctx-1.
        for logprob in chunk_logprobs(engine, prompt)?[first..n_ctx - 1].iter() {
            let v = -f64::from(*logprob);
            nll += v;
            nll2 += v * v;
        }
        scored += n_ctx - 1 - first;
        on_chunk(i + 1, (nll / scored as f64).exp());
    }
    let mean = nll / scored as f64;
    let ppl = mean.exp();
    let var = nll2 / scored as f64 - mean * mean;
    let error = if var > 0.0 {
        (var / (scored - 1) as f64).sqrt() * ppl
    } else {
        0.0
    };
    Ok(Perplexity {
        ppl,
        error,
        chunks,
        scored,
    })
}

/// The prompt log-probability of every token of `prompt` after the first.
fn chunk_logprobs(
    engine: &EngineHandle,
    prompt: Vec<u32>,
) -> Result<Vec<f32>, Box<dyn std::error::Error>> {
    let params = SamplingParams {
        prompt_logprobs: Some(0),
        ignore_eos: true,
        ..SamplingParams::greedy(1)
    };
    let n = prompt.len();
    let mut stream = engine.submit(prompt, params)?;
    let event = stream
        .blocking_next()
        .ok_or("the engine ended the chunk early")??;
    let entries = event
        .prompt_logprobs
        .ok_or("the engine sent no prompt logprobs")?;
    if entries.len() != n - 1 {
        return Err(format!("{} prompt logprobs for {n} tokens", entries.len()).into());
    }
    Ok(entries.iter().map(|e| e.logprob).collect())
}
