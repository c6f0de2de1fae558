//! Structured output: JSON schemas, regexes, choices and Lark grammars compiled once per
//! request into a `Guide`, and per sequence a `GuideState` that gives the allowed-token
//! mask of its next token and advances with each sampled token. The grammar engine is
//! `llguidance` (the library behind llama.cpp's, vLLM's and mistral.rs's guidance).
//!
//! Who uses what: `server::validate` compiles (on the CPU pool, never on an HTTP worker or
//! the engine thread) through the engine's `GrammarCompiler`; the `Guide` rides in
//! `SamplingParams::guide`; the engine keeps one `GuideState` per sequence, computes the
//! masks of a step's constrained rows (on a helper thread during the forward pass when a
//! core is spare, else just before it), and
//! commits every emitted token.
//!
//! Invariants:
//! - a `Guide` is immutable; every sequence starts its own `GuideState` from it, so `n`
//!   choices never share parser state;
//! - a mask allows a model EOS id only where the grammar accepts (ends) here, and only
//!   EOS once the grammar is complete; ids the grammar's vocabulary lacks (a model vocab
//!   padded past the tokenizer's) are never allowed;
//! - the mask depends only on the tokens this sequence committed, so a constrained
//!   sequence samples the same tokens alone or in any batch;
//! - compiling is bounded: the spec's size (`MAX_SPEC_BYTES`), llguidance's own fuel
//!   limits, and the compile cache's entry count (`CACHE_ENTRIES`, least recently used
//!   out first).
//!
//! This module imports nothing else of the crate (it sits beside `request.rs`).

mod cache;
mod spec;
pub(crate) use spec::kind_of;

pub use spec::GrammarSpec;

use std::sync::{Arc, Mutex};

use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};

use cache::CompileCache;

/// Largest grammar spec (a schema's JSON text, a regex, a grammar) accepted, in bytes.
pub const MAX_SPEC_BYTES: usize = 64 * 1024;
/// Compiled grammars kept for reuse.
pub const CACHE_ENTRIES: usize = 64;

/// Why a grammar cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StructuredError {
    /// The spec is malformed or unsupported; the message names the problem.
    #[error("{0}")]
    Invalid(String),
    /// The spec is larger than `MAX_SPEC_BYTES`.
    #[error("the grammar is {given} bytes; at most {MAX_SPEC_BYTES} are accepted")]
    TooLarge { given: usize },
    /// The matcher failed while decoding (a bug or an exhausted limit).
    #[error("structured decoding failed: {0}")]
    Matcher(String),
}

/// Compiles grammar specs against one model's vocabulary, with a bounded cache.
pub struct GrammarCompiler {
    factory: ParserFactory,
    cache: Mutex<CompileCache>,
    eos_ids: Arc<[u32]>,
}

impl GrammarCompiler {
    /// `token_bytes`: each token's bytes by id (`Tokenizer::token_bytes`); `eos_ids`: the
    /// model's end-of-generation ids (non-empty, each below `token_bytes.len()`).
    pub fn new(token_bytes: &[Vec<u8>], eos_ids: &[u32]) -> Result<Self, StructuredError> {
        let vocab = token_bytes.len() as u32;
        let Some(&first_eos) = eos_ids.iter().find(|&&id| id < vocab) else {
            return Err(StructuredError::Invalid(
                "the model has no end-of-generation token inside its vocabulary".into(),
            ));
        };
        let eos: Vec<u32> = eos_ids.iter().copied().filter(|&id| id < vocab).collect();
        let trie =
            TokTrie::from(&TokRxInfo::new(vocab, first_eos), token_bytes).with_eos_tokens(&eos);
        let env: llguidance::toktrie::TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| StructuredError::Invalid(format!("tokenizer: {e}")))?;
        factory.quiet();
        Ok(Self {
            factory,
            cache: Mutex::new(CompileCache::new(CACHE_ENTRIES)),
            eos_ids: eos.into(),
        })
    }

    /// The guide of `spec`, from the cache or compiled now (CPU-heavy: call it off the
    /// async workers and the engine thread).
    pub fn compile(&self, spec: &GrammarSpec) -> Result<Guide, StructuredError> {
        let key = spec.cache_key()?;
        if let Some(hit) = self.cache.lock().ok().and_then(|mut c| c.get(&key)) {
            return Ok(hit);
        }
        let grammar = spec.to_grammar()?;
        let parser = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.factory.create_parser(grammar)
        }))
        .map_err(|_| StructuredError::Invalid("the grammar could not be compiled".into()))?
        .map_err(|e| StructuredError::Invalid(first_line(&e.to_string())))?;
        let template = Matcher::new(Ok(parser));
        check_first_mask(&template)?;
        let guide = Guide(Arc::new(CompiledGrammar {
            description: spec.describe(),
            template: Mutex::new(template),
            eos_ids: Arc::clone(&self.eos_ids),
        }));
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(key, guide.clone());
        }
        Ok(guide)
    }

    /// Compiled grammars in the cache now.
    pub fn cached(&self) -> usize {
        self.cache.lock().map_or(0, |c| c.len())
    }
}

/// Refuses a grammar that fails or allows nothing at its start (an empty language, such
/// as a schema that is only a `$ref` cycle), so such a request is a 400, not a failure
/// mid-generation. Also warms the lexer cache the sequences share.
fn check_first_mask(template: &Matcher) -> Result<(), StructuredError> {
    if let Some(err) = template.get_error() {
        return Err(StructuredError::Invalid(first_line(&err)));
    }
    let mut probe = template.clone();
    let mask = probe
        .compute_mask()
        .map_err(|e| StructuredError::Invalid(first_line(&e.to_string())))?;
    if mask.is_zero() {
        return Err(StructuredError::Invalid(
            "the grammar matches no output at all (a `$ref` cycle that produces nothing?)".into(),
        ));
    }
    Ok(())
}

/// llguidance's messages carry the grammar after the first line; the first says what.
fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or(message).trim().to_string()
}

struct CompiledGrammar {
    description: String,
    /// A fresh matcher; sequences clone it (clones share its lexer cache, not its state).
    template: Mutex<Matcher>,
    eos_ids: Arc<[u32]>,
}

/// A compiled grammar, shared by every sequence of a request. Equal only to itself.
#[derive(Clone)]
pub struct Guide(Arc<CompiledGrammar>);

impl Guide {
    /// A new sequence's matcher, at the start of the grammar.
    pub fn start(&self) -> GuideState {
        let matcher = match self.0.template.lock() {
            Ok(template) => template.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        GuideState {
            matcher,
            eos_ids: Arc::clone(&self.0.eos_ids),
            mask: TokenMask::default(),
        }
    }

    /// What the guide constrains to (for logs).
    pub fn describe(&self) -> &str {
        &self.0.description
    }
}

impl PartialEq for Guide {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for Guide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Guide({})", self.0.description)
    }
}

/// One sequence's place in its grammar and the mask of its next token.
pub struct GuideState {
    matcher: Matcher,
    eos_ids: Arc<[u32]>,
    mask: TokenMask,
}

impl GuideState {
    /// Computes the mask of the next token (read it with `mask`).
    pub fn compute_mask(&mut self) -> Result<(), StructuredError> {
        let allowed = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| StructuredError::Matcher(first_line(&e.to_string())))?;
        let eos_allowed = self.eos_ids.iter().any(|&id| allowed.is_allowed(id));
        let mut allowed = allowed;
        if eos_allowed {
            for &id in self.eos_ids.iter() {
                allowed.allow_token(id);
            }
        }
        let only_eos = eos_allowed && allowed.num_set() == self.eos_ids.len();
        self.mask = TokenMask {
            allowed: Some(allowed),
            only_eos,
        };
        Ok(())
    }

    /// The mask computed last (allows everything before the first `compute_mask`).
    pub fn mask(&self) -> &TokenMask {
        &self.mask
    }

    /// Advances past a sampled token. An EOS id ends the sequence and is not committed.
    pub fn commit(&mut self, token: u32) -> Result<(), StructuredError> {
        if self.eos_ids.contains(&token) {
            return Ok(());
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| StructuredError::Matcher(first_line(&e.to_string())))
    }

    /// Whether the text so far is a complete match.
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }
}

/// The tokens one sampling step may choose.
#[derive(Debug, Default)]
pub struct TokenMask {
    /// `None`: no mask computed yet (everything allowed).
    allowed: Option<SimpleVob>,
    /// Only end-of-generation ids are allowed (the grammar is complete).
    only_eos: bool,
}

impl TokenMask {
    /// Sets every disallowed entry of `logits: [vocab]` to `-inf`.
    pub fn apply(&self, logits: &mut [f32]) {
        let Some(allowed) = &self.allowed else {
            return;
        };
        // 32 ids per word of the bit set; a full word leaves its 32 logits as they are.
        for (word, chunk) in allowed.as_slice().iter().zip(logits.chunks_mut(32)) {
            if *word == u32::MAX {
                continue;
            }
            for (bit, logit) in chunk.iter_mut().enumerate() {
                if word & (1 << bit) == 0 {
                    *logit = f32::NEG_INFINITY;
                }
            }
        }
        let known = (allowed.as_slice().len() * 32).min(logits.len());
        for logit in &mut logits[known..] {
            *logit = f32::NEG_INFINITY;
        }
    }

    /// Whether `token` may be sampled.
    pub fn allows(&self, token: u32) -> bool {
        self.allowed
            .as_ref()
            .is_none_or(|a| (token as usize) < a.len() && a.is_allowed(token))
    }

    /// Whether the grammar is complete, so only EOS may come.
    pub fn only_eos(&self) -> bool {
        self.only_eos
    }
}

#[cfg(test)]
mod tests;
