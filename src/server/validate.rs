//! Request validation: wire requests (`request.rs`) become `ValidRequest`s, parsed once.
//!
//! After validation every prompt is tokenized, non-empty, made of ids inside the
//! vocabulary and fits the context with its `max_tokens`, every sampling value is in
//! range and no unsupported feature was asked for. Messages name the field, the limit
//! and the value given (TGI's style). This is the only place requests are checked: the
//! engine trusts what it is given (`validate_sequence` serves front ends other than the
//! HTTP routes, e.g. the CLI).

use super::request::{
    int, ChatCompletionRequest, CompletionRequest, PromptField, SamplingFields, StopField,
    UnsupportedFields,
};
use super::tool_calls::{check_tools, encode_messages, ToolFields};
use crate::engine::error::EngineError;
use crate::engine::handle::{EngineHandle, EngineInfo};
use crate::error::ApiError;
use crate::request::{LoraRef, SamplingParams, TokenId, MAX_TOP_LOGPROBS};
use crate::tools::{ToolParser, WireForm};

/// Most choices one request may ask for (`n` × number of prompts).
pub const MAX_SEQUENCES_PER_REQUEST: usize = 128;

/// One prompt, tokenized, with its resolved output budget.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidPrompt {
    pub token_ids: Vec<TokenId>,
    pub max_tokens: usize,
    /// Text to put before the completion (`echo`).
    pub echo: Option<String>,
}

/// A generation request ready to submit: `prompts.len() * n` sequences.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRequest {
    /// The model name to put in responses (as the client sent it).
    pub model: String,
    pub prompts: Vec<ValidPrompt>,
    pub n: usize,
    /// Shared by every sequence; `max_tokens` and `seed` are set per sequence.
    pub sampling: SamplingParams,
    pub stream: bool,
    pub include_usage: bool,
    /// Return log-probabilities (with `sampling.logprobs` alternatives).
    pub logprobs: bool,
    /// vLLM `prompt_logprobs`: the prompt's logprobs with this many alternatives.
    pub prompt_logprobs: Option<usize>,
    /// Completions `echo` with `logprobs`: the echoed prompt's tokens lead the logprobs.
    pub echo_logprobs: bool,
    /// Chat with active tools: each choice's text is parsed for Hermes tool calls.
    pub tool_calls: bool,
}

impl ValidRequest {
    /// Sampling of choice `choice` of prompt `prompt`: its budget, and `seed + choice` so
    /// that choices differ but a seeded request is reproducible.
    pub fn sampling_for(&self, prompt: usize, choice: usize) -> SamplingParams {
        let mut params = self.sampling.clone();
        params.max_tokens = self.prompts[prompt].max_tokens;
        params.seed = params.seed.map(|s| s.wrapping_add(choice as u64));
        params
    }
}

pub(crate) fn invalid(param: &str, message: String) -> ApiError {
    ApiError::InvalidRequest {
        message,
        param: Some(param.to_string()),
    }
}

pub(crate) fn unsupported(param: &str, detail: &str) -> ApiError {
    ApiError::Unsupported {
        param: param.to_string(),
        detail: detail.to_string(),
    }
}

/// The request's `model` if this server serves it.
pub fn check_model(model: Option<&str>, served: &[String]) -> Result<String, ApiError> {
    let given = model.ok_or_else(|| invalid("model", "`model` is required".into()))?;
    if served.iter().any(|s| s == given) {
        Ok(given.to_string())
    } else {
        Err(model_not_found(given, served))
    }
}

fn model_not_found(given: &str, served: &[String]) -> ApiError {
    ApiError::ModelNotFound {
        given: given.to_string(),
        served: served
            .iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// The LoRA adapter `model` names (`None`: the base model) and a hold on its weights;
/// an adapter unloaded since `check_model` saw it is not found.
pub fn select_adapter(engine: &EngineHandle, model: &str) -> Result<Option<LoraRef>, ApiError> {
    let adapters = &engine.model().adapters;
    adapters.select(model).map_err(|_| {
        let mut served = engine.model().adapters.base_names();
        served.extend(adapters.names());
        model_not_found(model, &served)
    })
}

/// `POST /v1/chat/completions` → `ValidRequest`.
pub fn validate_chat(
    req: ChatCompletionRequest,
    engine: &EngineHandle,
    served: &[String],
    parser: ToolParser,
) -> Result<ValidRequest, ApiError> {
    let model = check_model(req.model.as_deref(), served)?;
    refuse_unsupported(&req.unsupported, req.sampling.n)?;
    let top = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (false, Some(k)) if k > 0 => {
            return Err(invalid(
                "top_logprobs",
                format!("`top_logprobs` needs `logprobs: true`. Given: {k}"),
            ))
        }
        (false, _) => None,
        (true, k) => Some(k.unwrap_or(0)),
    };
    let u = &req.unsupported;
    let fields = ToolFields {
        tools: u.tools.as_ref(),
        choice: u.tool_choice.as_ref(),
        parallel: u.parallel_tool_calls.as_ref(),
        form: WireForm::Chat,
    };
    let tools = check_tools(fields, parser, engine)?;
    let messages = chat_messages(req.messages.unwrap_or_default())?;
    let ids = encode_messages(engine, messages, tools.as_ref().map(|t| &t.set))?;
    check_prompt(&ids, engine.info().vocab)?;
    let requested = match (req.max_completion_tokens, req.max_tokens) {
        (Some(n), _) => Some(("max_completion_tokens", n)),
        (None, Some(n)) => Some(("max_tokens", n)),
        (None, None) => None,
    };
    let prompt = resolve_budget(ids, requested, None, engine.info().max_model_len)?;
    let guide = super::guided::guide(&req.unsupported, engine)?;
    let forced = tools.as_ref().and_then(|t| t.guide.clone());
    if forced.is_some() && guide.is_some() {
        return Err(invalid(
            "tool_choice",
            "a structured-output constraint (`response_format`, `guided_*`) cannot be combined \
             with `tool_choice` `required` or a named function: both constrain the answer"
                .into(),
        ));
    }
    let mut valid = build(model, vec![prompt], &req.sampling, (top, false), engine)?;
    valid.tool_calls = tools.is_some();
    with_guide(valid, guide.or(forced))
}

/// `POST /v1/completions` → `ValidRequest`.
pub fn validate_completion(
    req: CompletionRequest,
    engine: &EngineHandle,
    served: &[String],
) -> Result<ValidRequest, ApiError> {
    let model = check_model(req.model.as_deref(), served)?;
    refuse_unsupported(&req.unsupported, req.sampling.n)?;
    let u = &req.unsupported;
    let tools = u.tools.as_ref().filter(|t| !t.is_null());
    let choice = u.tool_choice.as_ref().filter(|c| !c.is_null());
    let off = |v: &serde_json::Value| matches!(v.as_str(), Some("none" | "auto"));
    for (name, asked) in [
        (
            "tools",
            tools.is_some_and(|t| t.as_array().is_none_or(|a| !a.is_empty())),
        ),
        ("tool_choice", choice.is_some_and(|c| !off(c))),
    ] {
        if asked {
            return Err(unsupported(
                name,
                " on /v1/completions (tools are a chat feature)",
            ));
        }
    }
    let echo = req.echo.unwrap_or(false);
    let tokenizer = &engine.model().tokenizer;
    // An empty text prompt starts a new document (OpenAI): BOS, else the end-of-text
    // token that separates documents (`<|endoftext|>`).
    let document_start = tokenizer
        .bos_id()
        .or_else(|| engine.info().eos_token_ids.first().copied());
    let encode = |text: &str| match tokenizer.encode(text, true, true) {
        Ok(ids) if ids.is_empty() => Ok(document_start.into_iter().collect()),
        other => other,
    };
    let prompts: Vec<Vec<TokenId>> = match req.prompt {
        None => return Err(invalid("prompt", "`prompt` is required".into())),
        Some(PromptField::Text(text)) => vec![encode(&text)?],
        Some(PromptField::Texts(texts)) => {
            texts.iter().map(|t| encode(t)).collect::<Result<_, _>>()?
        }
        Some(PromptField::Ids(ids)) => vec![int::plain(ids)],
        Some(PromptField::IdLists(lists)) => lists.into_iter().map(int::plain).collect(),
    };
    if prompts.is_empty() {
        return Err(invalid(
            "prompt",
            "`prompt` must not be an empty list".into(),
        ));
    }
    let max_len = engine.info().max_model_len;
    let requested = Some(("max_tokens", req.max_tokens.unwrap_or(16)));
    let mut valid = Vec::with_capacity(prompts.len());
    for ids in prompts {
        check_prompt(&ids, engine.info().vocab)?;
        let echo_text = if echo {
            Some(tokenizer.decode(&ids, false)?)
        } else {
            None
        };
        valid.push(resolve_budget(ids, requested, echo_text, max_len)?);
    }
    let echo_logprobs = echo && req.logprobs.is_some();
    let guide = super::guided::guide(&req.unsupported, engine)?;
    let valid = build(
        model,
        valid,
        &req.sampling,
        (req.logprobs, echo_logprobs),
        engine,
    )?;
    with_guide(valid, guide)
}

/// Constrains every sequence of `valid` to `guide` (each starts its own matcher).
fn with_guide(
    mut valid: ValidRequest,
    guide: Option<crate::structured::Guide>,
) -> Result<ValidRequest, ApiError> {
    valid.sampling.guide = guide;
    if valid.sampling.guide.is_some() {
        valid.sampling_for(0, 0).validate()?;
    }
    Ok(valid)
}

/// One sequence built outside an HTTP request (the CLI): the checks the routes apply,
/// so that `EngineHandle::submit` may trust it.
pub fn validate_sequence(
    prompt: Vec<TokenId>,
    sampling: SamplingParams,
    info: &EngineInfo,
) -> Result<(Vec<TokenId>, SamplingParams), ApiError> {
    check_prompt(&prompt, info.vocab)?;
    let requested = Some(("max_tokens", sampling.max_tokens as u64));
    let valid = resolve_budget(prompt, requested, None, info.max_model_len)?;
    sampling.validate()?;
    Ok((valid.token_ids, sampling))
}

/// A prompt the model can read: at least one token, every id below `vocab`.
fn check_prompt(ids: &[TokenId], vocab: usize) -> Result<(), ApiError> {
    if ids.is_empty() {
        return Err(ApiError::Engine(EngineError::EmptyPrompt));
    }
    match ids.iter().position(|&t| t as usize >= vocab) {
        Some(position) => Err(ApiError::Engine(EngineError::InvalidToken {
            token_id: ids[position],
            position,
            vocab,
        })),
        None => Ok(()),
    }
}

/// The output budget: as requested (must fit), or whatever the context leaves.
fn resolve_budget(
    token_ids: Vec<TokenId>,
    requested: Option<(&str, u64)>,
    echo: Option<String>,
    max_model_len: usize,
) -> Result<ValidPrompt, ApiError> {
    let prompt_tokens = token_ids.len();
    let room = max_model_len.saturating_sub(prompt_tokens);
    let max_tokens = match requested {
        Some((field, 0)) => {
            return Err(invalid(field, format!("`{field}` must be >= 1. Given: 0")))
        }
        Some((_, n)) => usize::try_from(n).unwrap_or(usize::MAX),
        None => room.max(1),
    };
    let total = prompt_tokens.saturating_add(max_tokens);
    if total > max_model_len {
        return Err(ApiError::Engine(EngineError::ContextLength {
            max_model_len,
            prompt_tokens,
            max_tokens,
            total,
        }));
    }
    Ok(ValidPrompt {
        token_ids,
        max_tokens,
        echo,
    })
}

/// Shared tail of both validators: sampling, `n`, streaming options, logprobs
/// (`(top_logprobs, echo_logprobs)`: the sampled tokens' alternatives, and whether the
/// echoed prompt's logprobs lead them).
fn build(
    model: String,
    prompts: Vec<ValidPrompt>,
    f: &SamplingFields,
    (top_logprobs, echo_logprobs): (Option<u64>, bool),
    engine: &EngineHandle,
) -> Result<ValidRequest, ApiError> {
    let n = f.n.unwrap_or(1);
    let sequences = (n as usize).saturating_mul(prompts.len());
    if n == 0 || sequences > MAX_SEQUENCES_PER_REQUEST {
        return Err(invalid(
            "n",
            format!(
                "`n` must be >= 1 and `n` × prompts must be <= {MAX_SEQUENCES_PER_REQUEST}. \
                 Given: n = {n} with {} prompt(s)",
                prompts.len()
            ),
        ));
    }
    let stream = f.stream.unwrap_or(false);
    if f.stream_options.is_some() && !stream {
        return Err(invalid(
            "stream_options",
            "`stream_options` is only allowed when `stream` is true".into(),
        ));
    }
    let logprobs = top_logprobs.is_some();
    let mut sampling = sampling_params(f, top_logprobs, engine.info().vocab)?;
    let prompt_logprobs = prompt_logprobs(f.prompt_logprobs, stream)?;
    let echo_k = echo_logprobs.then(|| sampling.logprobs.unwrap_or(0));
    sampling.prompt_logprobs = prompt_logprobs.max(echo_k);
    sampling.lora = select_adapter(engine, &model)?;
    let valid = ValidRequest {
        model,
        prompts,
        n: n as usize,
        sampling,
        stream,
        include_usage: f
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        logprobs,
        prompt_logprobs,
        echo_logprobs,
        tool_calls: false,
    };
    // Checked per prompt: `min_tokens` against that prompt's own resolved `max_tokens`.
    for prompt in 0..valid.prompts.len() {
        valid.sampling_for(prompt, 0).validate()?;
    }
    Ok(valid)
}

/// vLLM's `prompt_logprobs`: 0..=20 alternatives, not with streaming (as vLLM).
fn prompt_logprobs(given: Option<i64>, stream: bool) -> Result<Option<usize>, ApiError> {
    let Some(k) = given else {
        return Ok(None);
    };
    if !(0..=MAX_TOP_LOGPROBS as i64).contains(&k) {
        return Err(invalid(
            "prompt_logprobs",
            format!("`prompt_logprobs` must be in [0, {MAX_TOP_LOGPROBS}]. Given: {k}"),
        ));
    }
    if stream {
        return Err(invalid(
            "prompt_logprobs",
            "`prompt_logprobs` is not available with `stream: true`".into(),
        ));
    }
    Ok(Some(k as usize))
}

/// Highest `temperature` OpenAI accepts. The engine samples at any temperature >= 0; the
/// API refuses what OpenAI refuses (the other ranges are the engine's own, which match).
const MAX_TEMPERATURE: f32 = 2.0;

/// OpenAI's range of `temperature`, for every route that takes one.
pub(crate) fn check_temperature(temperature: Option<f32>) -> Result<(), ApiError> {
    match temperature.filter(|t| !(0.0..=MAX_TEMPERATURE).contains(t)) {
        Some(t) => Err(invalid(
            "temperature",
            format!("`temperature` must be in [0, {MAX_TEMPERATURE}]. Given: {t}"),
        )),
        None => Ok(()),
    }
}

fn sampling_params(
    f: &SamplingFields,
    top_logprobs: Option<u64>,
    vocab: usize,
) -> Result<SamplingParams, ApiError> {
    check_temperature(f.temperature)?;
    let top_k = match f.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => {
            return Err(invalid(
                "top_k",
                format!("`top_k` must be -1 (off) or >= 1. Given: {k}"),
            ))
        }
    };
    if let Some(k) = top_logprobs.filter(|&k| k > MAX_TOP_LOGPROBS as u64) {
        return Err(invalid(
            "top_logprobs",
            format!("`top_logprobs` must be <= {MAX_TOP_LOGPROBS}. Given: {k}"),
        ));
    }
    if let Some(bad) = f
        .stop_token_ids
        .iter()
        .flatten()
        .find(|&&t| t as usize >= vocab)
    {
        return Err(invalid(
            "stop_token_ids",
            format!("`stop_token_ids` must be < {vocab} (the vocabulary size). Given: {bad}"),
        ));
    }
    Ok(SamplingParams {
        temperature: f.temperature.unwrap_or(1.0),
        top_k,
        top_p: f.top_p.unwrap_or(1.0),
        min_p: f.min_p.unwrap_or(0.0),
        repetition_penalty: f.repetition_penalty.unwrap_or(1.0),
        presence_penalty: f.presence_penalty.unwrap_or(0.0),
        frequency_penalty: f.frequency_penalty.unwrap_or(0.0),
        logit_bias: logit_bias(f.logit_bias.as_ref(), vocab)?,
        seed: f.seed.map(|s| s as u64),
        stop_token_ids: f.stop_token_ids.clone().unwrap_or_default(),
        stop: match &f.stop {
            None => Vec::new(),
            Some(StopField::One(s)) => vec![s.clone()],
            Some(StopField::Many(v)) => v.clone(),
        },
        max_tokens: 1, // set per sequence by `ValidRequest::sampling_for`
        min_tokens: f.min_tokens.unwrap_or(0) as usize,
        ignore_eos: f.ignore_eos.unwrap_or(false),
        logprobs: top_logprobs.map(|k| k as usize),
        prompt_logprobs: None, // set by `build`
        guide: None,           // set by `with_guide`
        lora: None,            // set by `build`
    })
}

/// `logit_bias`: token id (as a string key) → bias in [-100, 100].
fn logit_bias(
    map: Option<&serde_json::Map<String, serde_json::Value>>,
    vocab: usize,
) -> Result<Vec<(TokenId, f32)>, ApiError> {
    let Some(map) = map else {
        return Ok(Vec::new());
    };
    map.iter()
        .map(|(key, value)| {
            let id = key
                .parse::<TokenId>()
                .ok()
                .filter(|&id| (id as usize) < vocab);
            let bias = value.as_f64().filter(|b| (-100.0..=100.0).contains(b));
            match (id, bias) {
                (Some(id), Some(bias)) => Ok((id, bias as f32)),
                (None, _) => Err(invalid(
                    "logit_bias",
                    format!("`logit_bias` keys must be token ids < {vocab}. Given: {key:?}"),
                )),
                (_, None) => Err(invalid(
                    "logit_bias",
                    format!("`logit_bias` values must be numbers in [-100, 100]. Given: {value}"),
                )),
            }
        })
        .collect()
}

/// Refuses, by name, every known OpenAI/vLLM field tessera does not implement
/// (structured-output fields are read by `guided`).
fn refuse_unsupported(u: &UnsupportedFields, n: Option<u64>) -> Result<(), ApiError> {
    use serde_json::Value;
    let given = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null());
    let is_str = |v: &Option<Value>, ok: &[&str]| {
        v.as_ref()
            .and_then(Value::as_str)
            .is_some_and(|s| ok.contains(&s))
    };
    if u.functions.as_ref().is_some_and(|f| !f.is_null()) {
        return Err(unsupported(
            "functions",
            " (the legacy form of `tools`: use `tools`)",
        ));
    }
    if given(&u.function_call) && !is_str(&u.function_call, &["none", "auto"]) {
        return Err(unsupported(
            "function_call",
            " (the legacy form of `tool_choice`: use `tool_choice`)",
        ));
    }
    if let Some(m) = u.modalities.as_ref().filter(|v| !v.is_null()) {
        if m.as_array()
            .is_none_or(|a| a.iter().any(|x| x.as_str() != Some("text")))
        {
            return Err(unsupported("modalities", ": only [\"text\"] is served"));
        }
    }
    if let Some(best_of) = u.best_of.as_ref().filter(|v| !v.is_null()) {
        if best_of.as_u64() != Some(n.unwrap_or(1)) {
            return Err(unsupported(
                "best_of",
                &format!(" unless it equals `n`. Given: {best_of}"),
            ));
        }
    }
    if u.suffix
        .as_ref()
        .is_some_and(|s| !s.is_null() && s.as_str() != Some(""))
    {
        return Err(unsupported("suffix", " (insertion is not implemented)"));
    }
    for (name, value) in [
        ("audio", &u.audio),
        ("prediction", &u.prediction),
        ("web_search_options", &u.web_search_options),
    ] {
        if given(value) {
            return Err(unsupported(name, ""));
        }
    }
    Ok(())
}

mod messages;

pub(crate) use messages::chat_messages;

#[cfg(test)]
mod tests;
