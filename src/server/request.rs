//! OpenAI (and vLLM) request bodies as they arrive on the wire, before validation.
//!
//! Every field is optional here so that `null` and absence mean the same thing and
//! validation (`validate.rs`) can say which field is missing or wrong. Unknown fields are
//! ignored (SDKs send extras); fields OpenAI defines that tessera does not implement are
//! captured as raw JSON so validation can refuse them by name. Integer fields accept
//! integer-valued floats (`33613.0`) as JSON Schema's `integer` (and OpenAI) do; a
//! fraction or a value out of the field's range is refused.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use int::Int;

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
    #[serde(default, deserialize_with = "int::opt")]
    pub n: Option<u64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub stop: Option<StopField>,
    #[serde(default, deserialize_with = "int::opt_vec")]
    pub stop_token_ids: Option<Vec<u32>>,
    #[serde(default, deserialize_with = "int::opt")]
    pub seed: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    pub user: Option<String>,
    #[serde(default, deserialize_with = "int::opt")]
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    #[serde(default, deserialize_with = "int::opt")]
    pub min_tokens: Option<u64>,
    pub ignore_eos: Option<bool>,
    /// vLLM: logprobs of the prompt tokens with the top `k` alternatives (0..=20).
    #[serde(default, deserialize_with = "int::opt")]
    pub prompt_logprobs: Option<i64>,
}

/// Fields tessera knows and refuses (a 400 that names them), never ignores; the
/// structured-output fields, which `guided` reads; and the tool fields, which
/// `tool_calls` reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UnsupportedFields {
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<Value>,
    pub functions: Option<Value>,
    pub function_call: Option<Value>,
    pub response_format: Option<Value>,
    pub audio: Option<Value>,
    pub modalities: Option<Value>,
    pub prediction: Option<Value>,
    pub web_search_options: Option<Value>,
    pub suffix: Option<Value>,
    pub best_of: Option<Value>,
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
    #[serde(default, deserialize_with = "int::opt")]
    pub max_tokens: Option<u64>,
    #[serde(default, deserialize_with = "int::opt")]
    pub max_completion_tokens: Option<u64>,
    pub logprobs: Option<bool>,
    #[serde(default, deserialize_with = "int::opt")]
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
    Ids(Vec<Int<u32>>),
    IdLists(Vec<Vec<Int<u32>>>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Option<PromptField>,
    #[serde(default, deserialize_with = "int::opt")]
    pub max_tokens: Option<u64>,
    pub echo: Option<bool>,
    /// Top alternatives per position (OpenAI: an integer, not a flag).
    #[serde(default, deserialize_with = "int::opt")]
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
    #[serde(default, deserialize_with = "int::opt_vec")]
    pub tokens: Option<Vec<u32>>,
}

/// Integer fields that also take integer-valued floats.
pub mod int {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::{self, Deserializer, Unexpected, Visitor};
    use serde::Deserialize;

    /// An integer of type `T` on the wire: `7`, or `7.0`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Int<T>(pub T);

    struct IntVisitor<T>(PhantomData<T>);

    impl<T: TryFrom<i64> + TryFrom<u64>> IntVisitor<T> {
        fn fit<E: de::Error, V: Copy>(&self, v: V, unexpected: Unexpected<'_>) -> Result<T, E>
        where
            T: TryFrom<V>,
        {
            T::try_from(v).map_err(|_| E::invalid_value(unexpected, self))
        }
    }

    impl<'de, T: TryFrom<i64> + TryFrom<u64>> Visitor<'de> for IntVisitor<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(
                f,
                "an integer in the range of {}",
                std::any::type_name::<T>()
            )
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
            self.fit(v, Unexpected::Unsigned(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
            self.fit(v, Unexpected::Signed(v))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
            let unexpected = Unexpected::Float(v);
            // Every integer-valued f64 in [-2^63, 2^64) converts exactly.
            const LOW: f64 = -((1u64 << 63) as f64);
            const HIGH: f64 = u64::MAX as f64; // rounds to 2^64, which stays excluded
            if v.fract() != 0.0 || !(LOW..HIGH).contains(&v) {
                return Err(E::invalid_value(unexpected, &self));
            }
            if v < 0.0 {
                self.fit(v as i64, unexpected)
            } else {
                self.fit(v as u64, unexpected)
            }
        }
    }

    impl<'de, T: TryFrom<i64> + TryFrom<u64>> Deserialize<'de> for Int<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(IntVisitor(PhantomData)).map(Int)
        }
    }

    /// `Option<T>` (null = absent) from an integer or an integer-valued float.
    pub fn opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<i64> + TryFrom<u64>,
    {
        Ok(Option::<Int<T>>::deserialize(d)?.map(|Int(v)| v))
    }

    /// `Option<Vec<T>>` of such integers.
    pub fn opt_vec<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<i64> + TryFrom<u64>,
    {
        let list = Option::<Vec<Int<T>>>::deserialize(d)?;
        Ok(list.map(|l| l.into_iter().map(|Int(v)| v).collect()))
    }

    /// Plain integers out of a list of `Int`s.
    pub fn plain<T>(list: Vec<Int<T>>) -> Vec<T> {
        list.into_iter().map(|Int(v)| v).collect()
    }
}
