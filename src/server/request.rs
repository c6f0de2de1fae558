//! OpenAI (and vLLM) request bodies as they arrive on the wire, before validation.
//!
//! Every field is optional here so that `null` and absence mean the same thing and
//! validation (`validate.rs`) can say which field is missing or wrong. Unknown fields are
//! ignored (SDKs send extras); fields OpenAI defines that tessera does not implement are
//! captured as raw JSON so validation can refuse them by name.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// `stop`: one string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// Sampling fields shared by chat and completions (OpenAI's plus vLLM's extras).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SamplingFields {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub n: Option<u64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub stop: Option<StopField>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    pub user: Option<String>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub min_tokens: Option<u64>,
    pub ignore_eos: Option<bool>,
}

/// Fields tessera knows and refuses (a 400 that names them), never ignores.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UnsupportedFields {
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub functions: Option<Value>,
    pub function_call: Option<Value>,
    pub response_format: Option<Value>,
    pub audio: Option<Value>,
    pub modalities: Option<Value>,
    pub prediction: Option<Value>,
    pub web_search_options: Option<Value>,
    pub suffix: Option<Value>,
    pub best_of: Option<Value>,
    pub prompt_logprobs: Option<Value>,
    pub guided_json: Option<Value>,
    pub guided_regex: Option<Value>,
    pub guided_choice: Option<Value>,
    pub guided_grammar: Option<Value>,
    pub structured_outputs: Option<Value>,
}

/// `messages[].content`: a string or an array of content parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessageIn {
    pub role: Option<String>,
    pub content: Option<MessageContent>,
    pub name: Option<String>,
    pub tool_calls: Option<Value>,
    pub tool_call_id: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: Option<String>,
    pub messages: Option<Vec<ChatMessageIn>>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u64>,
    /// Filled by [`JsonBody::complete`] from the same body.
    #[serde(skip)]
    pub sampling: SamplingFields,
    #[serde(skip)]
    pub unsupported: UnsupportedFields,
}

/// A JSON body error with the path of the field it is about.
pub type PathError = serde_path_to_error::Error<serde_json::Error>;

/// A request body type. Field groups shared between bodies are parsed from the same JSON
/// by `complete` (not `#[serde(flatten)]`, which would lose the field paths in errors).
pub trait JsonBody: DeserializeOwned {
    fn complete(&mut self, _body: &Value) -> Result<(), PathError> {
        Ok(())
    }
}

fn shared_groups(body: &Value) -> Result<(SamplingFields, UnsupportedFields), PathError> {
    Ok((
        serde_path_to_error::deserialize(body)?,
        serde_path_to_error::deserialize(body)?,
    ))
}

impl JsonBody for ChatCompletionRequest {
    fn complete(&mut self, body: &Value) -> Result<(), PathError> {
        (self.sampling, self.unsupported) = shared_groups(body)?;
        Ok(())
    }
}

impl JsonBody for CompletionRequest {
    fn complete(&mut self, body: &Value) -> Result<(), PathError> {
        (self.sampling, self.unsupported) = shared_groups(body)?;
        Ok(())
    }
}

impl JsonBody for TokenizeRequest {}
impl JsonBody for DetokenizeRequest {}

/// `prompt` of a completion: text, texts, token ids or lists of token ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Option<PromptField>,
    pub max_tokens: Option<u64>,
    pub echo: Option<bool>,
    /// Top alternatives per position (OpenAI: an integer, not a flag).
    pub logprobs: Option<u64>,
    /// Filled by [`JsonBody::complete`] from the same body.
    #[serde(skip)]
    pub sampling: SamplingFields,
    #[serde(skip)]
    pub unsupported: UnsupportedFields,
}

/// `POST /tokenize` (vLLM): a prompt, or messages through the chat template.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<ChatMessageIn>>,
    pub add_special_tokens: Option<bool>,
    pub add_generation_prompt: Option<bool>,
    pub return_token_strs: Option<bool>,
}

/// `POST /detokenize` (vLLM).
#[derive(Debug, Clone, Deserialize)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Option<Vec<u32>>,
}
