//! `tessera perplexity`: llama.cpp's `llama-perplexity` numbers for a text. The text is
//! tokenized once (BOS added as the vocabulary says, special tokens not parsed), cut into
//! `tokens / n_ctx` chunks of `n_ctx` tokens (the rest is dropped); each chunk starts
//! with BOS in place of its first token (when the vocabulary adds one) and runs as one
//! prompt; only the second half is scored: the log-probabilities of tokens
//! `n_ctx/2 + 1 .. n_ctx` of the chunk given everything before them. PPL =
//! exp(mean NLL) over all scored tokens, printed per chunk as the running estimate
//! (`[1]12.3456,[2]…`) and at the end with llama-perplexity's error estimate.
//!
//! With a base file (`--kl-divergence-base`) the scored rows are also saved whole, in
//! llama-perplexity's format (`logits_file`); `--kl-divergence` then runs the tokens of
//! such a file (ours or llama-perplexity's) and compares every scored row with the saved
//! one (`kld`): how far a quantized model is from its base.
//!
//! Log-probabilities come from the engine's prompt logprobs (`prompt_logprobs`, the full
//! row where rows are saved or compared), so the chunks are ordinary requests: no
//! separate forward path.

pub mod kld;
pub mod logits_file;

use std::path::Path;

use crate::engine::handle::EngineHandle;
use crate::request::{PromptLogprob, SamplingParams, TokenId, PROMPT_LOGPROBS_FULL_ROW};
use kld::{KlDivergence, KlSums};
use logits_file::{Header, LogitsReader, LogitsWriter, Record};

type BoxError = Box<dyn std::error::Error>;

/// The result of a run: llama-perplexity's `Final estimate: PPL = ppl +/- error`.
#[derive(Debug, Clone, PartialEq)]
pub struct Perplexity {
    pub ppl: f64,
    pub error: f64,
    pub chunks: usize,
    /// Tokens scored (`chunks * (n_ctx - 1 - n_ctx/2)`).
    pub scored: usize,
}

/// How `perplexity` cuts and what it keeps.
#[derive(Debug, Clone, Copy)]
pub struct PerplexityRun<'a> {
    /// Tokens per chunk (llama-perplexity's `-c`).
    pub n_ctx: usize,
    /// At most this many chunks (llama-perplexity's `--chunks`); `None`: all.
    pub max_chunks: Option<usize>,
    /// Where to save every scored row (llama-perplexity's `--kl-divergence-base`).
    pub save_base: Option<&'a Path>,
}

impl PerplexityRun<'_> {
    /// All chunks of `n_ctx` tokens, nothing saved.
    pub fn chunks_of(n_ctx: usize) -> Self {
        Self {
            n_ctx,
            max_chunks: None,
            save_base: None,
        }
    }
}

/// Runs `text` through `engine` in chunks as `run` says; `on_chunk(i, running_ppl)`
/// after each chunk (i from 1).
pub fn perplexity(
    engine: &EngineHandle,
    text: &str,
    run: PerplexityRun<'_>,
    mut on_chunk: impl FnMut(usize, f64),
) -> Result<Perplexity, BoxError> {
    let (n_ctx, save_base) = (run.n_ctx, run.save_base);
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
    let chunks = (tokens.len() / n_ctx).min(run.max_chunks.unwrap_or(usize::MAX));
    // Created at the first chunk: the header holds the width of the model's rows.
    let mut saved: Option<LogitsWriter<_>> = None;
    let (mut nll, mut nll2, mut scored) = (0f64, 0f64, 0usize);
    for (i, chunk) in tokens.chunks_exact(n_ctx).take(chunks).enumerate() {
        let rows = scored_rows(engine, chunk, save_base.is_some())?;
        if let (Some(path), None) = (save_base, saved.as_ref()) {
            let header = Header {
                n_ctx,
                n_vocab: rows.first().map_or(0, |r| r.top.len()),
                n_chunk: chunks,
                tokens: tokens[..chunks * n_ctx].to_vec(),
            };
            saved = Some(create_base(path, &header)?);
        }
        for entry in &rows {
            let v = -f64::from(entry.logprob);
            nll += v;
            nll2 += v * v;
            if let Some(out) = saved.as_mut() {
                out.write(&Record::quantize(&row_of(entry)))?;
            }
        }
        scored += rows.len();
        on_chunk(i + 1, (nll / scored as f64).exp());
    }
    if let Some(out) = saved {
        out.finish()?;
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

/// Runs the tokens saved in `base` (a file of `perplexity`'s `save_base` or of
/// llama-perplexity's `--kl-divergence-base`) and compares every scored row with the
/// saved one; `on_chunk(i, figures so far)` after each chunk (i from 1).
pub fn kl_divergence(
    engine: &EngineHandle,
    base: &Path,
    mut on_chunk: impl FnMut(usize, &KlDivergence),
) -> Result<KlDivergence, BoxError> {
    let file = std::fs::File::open(base).map_err(|e| format!("opening {}: {e}", base.display()))?;
    let mut reader = LogitsReader::open(std::io::BufReader::new(file))
        .map_err(|e| format!("{}: {e}", base.display()))?;
    let header = reader.header.clone();
    let first = header.n_ctx / 2;
    let mut sums = KlSums::default();
    for (i, chunk) in header.tokens.chunks_exact(header.n_ctx).enumerate() {
        let rows = scored_rows(engine, chunk, true)?;
        if let Some(width) = rows.first().map(|r| r.top.len()) {
            if width != header.n_vocab {
                return Err(format!(
                    "{} was saved for a vocabulary of {} tokens; this model has {width}",
                    base.display(),
                    header.n_vocab
                )
                .into());
            }
        }
        for (at, entry) in rows.iter().enumerate() {
            let saved = reader
                .read()
                .map_err(|e| format!("{}: {e}", base.display()))?;
            let token = chunk[first + 1 + at] as usize;
            sums.add(&row_of(entry), &saved, token);
        }
        on_chunk(i + 1, &sums.summary());
    }
    Ok(sums.summary())
}

/// The prompt logprobs of `chunk`'s scored positions (`n_ctx - 1 - n_ctx/2`, each
/// scoring the token after it); whole rows when `full`. BOS replaces the first token
/// when the vocabulary adds one.
fn scored_rows(
    engine: &EngineHandle,
    chunk: &[TokenId],
    full: bool,
) -> Result<Vec<PromptLogprob>, BoxError> {
    let tokenizer = &engine.model().tokenizer;
    let mut prompt = chunk.to_vec();
    if let Some(bos) = tokenizer.bos_id().filter(|_| tokenizer.add_bos()) {
        prompt[0] = bos;
    }
    let n = prompt.len();
    let params = SamplingParams {
        prompt_logprobs: Some(if full { PROMPT_LOGPROBS_FULL_ROW } else { 0 }),
        ignore_eos: true,
        ..SamplingParams::greedy(1)
    };
    let mut stream = engine.submit(prompt, params)?;
    let event = stream
        .blocking_next()
        .ok_or("the engine ended the chunk early")??;
    let mut entries = event
        .prompt_logprobs
        .ok_or("the engine sent no prompt logprobs")?;
    if entries.len() != n - 1 {
        return Err(format!("{} prompt logprobs for {n} tokens", entries.len()).into());
    }
    // Entry e scores token e + 1: keep tokens n/2 + 1 ..= n - 1.
    Ok(entries.split_off(n / 2))
}

fn create_base(
    path: &Path,
    header: &Header,
) -> Result<LogitsWriter<std::io::BufWriter<std::fs::File>>, BoxError> {
    let file =
        std::fs::File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    Ok(LogitsWriter::create(std::io::BufWriter::new(file), header)?)
}

/// `[n_vocab]`: a full-row entry's log-probabilities in token order.
fn row_of(entry: &PromptLogprob) -> Vec<f32> {
    entry.top.iter().map(|&(_, logprob)| logprob).collect()
}
