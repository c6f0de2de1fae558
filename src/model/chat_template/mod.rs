//! Chat templates: a model's Jinja `tokenizer.chat_template`, rendered the way Hugging
//! Face transformers renders it (`apply_chat_template`).
//!
//! Owns the Jinja environment: `trim_blocks` + `lstrip_blocks` on, trailing newline of
//! the template dropped, loop controls (`break`/`continue`), Python string/dict/list
//! methods (`.strip()`, `.startswith()`, `.items()` … via minijinja-contrib pycompat),
//! transformers' `tojson`, `raise_exception` and `strftime_now`; and the context:
//! `messages` (list of `{role, content}`), `add_generation_prompt`, `bos_token`,
//! `eos_token`, `tools` (none unless the request has tools: `render_with_tools`) and
//! `documents` set to none as transformers does.
//!
//! Invariants: a `ChatTemplate` always holds a template that compiled and that rendered
//! small probe conversations within their budget; rendering never panics — a template's
//! `raise_exception(msg)` is [`TemplateError::Raised`] with `msg`; and rendering always
//! ends: each render gets a budget of template instructions (minijinja's fuel,
//! [`render_budget`]) that grows with the number of messages, and a template that runs
//! past it is [`TemplateError::OverBudget`]. The budget counts instructions, not their
//! cost: one filter over a long string is one instruction.
//! Tokenizing a rendered conversation so that message text cannot become control tokens
//! is `encode_chat` (encode.rs).

mod encode;
mod pyfuncs;

use minijinja::{context, Environment, Value};
use serde::Serialize;

pub use encode::{encode_chat, encode_chat_with_tools};

use crate::model::tokenizer::TokenizerError;

/// The name the template is registered under (appears in error locations).
const TEMPLATE_NAME: &str = "chat_template";

/// Template instructions any conversation may use, plus [`FUEL_PER_MESSAGE`] per message.
/// Real templates use far less: the fixture templates and SmolLM2's took under 300 plus
/// at most 65 per message (measured on a 2,001-message conversation; the test
/// `long_conversations_render_and_endless_templates_stop` renders it).
pub const FUEL_BASE: u64 = 1_000_000;
/// Template instructions allowed per message of the conversation.
pub const FUEL_PER_MESSAGE: u64 = 10_000;

/// The instruction budget of one render of `messages` messages.
pub fn render_budget(messages: usize) -> u64 {
    FUEL_BASE.saturating_add(FUEL_PER_MESSAGE.saturating_mul(messages as u64))
}

/// ChatML, what transformers falls back to for a model without a template.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// One chat message as the template sees it. An assistant message may carry
/// `tool_calls` (Hugging Face's form: `[{id, type, function: {name, arguments}}]` with
/// `arguments` an object), a `tool` message its `tool_call_id`; absent fields are not
/// defined for the template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            tool_calls: None,
            tool_call_id: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("chat template does not compile: {detail}")]
    Syntax { detail: String },
    #[error("chat template rejected the conversation: {message}")]
    Raised { message: String },
    #[error("rendering the chat template failed: {detail}")]
    Render { detail: String },
    #[error(
        "the chat template ran past its budget of {budget} instructions for a conversation of \
         {messages} message(s); the model's template loops without end or nearly so"
    )]
    OverBudget { budget: u64, messages: usize },
    #[error("message {index} holds all of tessera's private-use marker characters; cannot mark its text as literal")]
    NoFreeMarker { index: usize },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// A compiled chat template plus the BOS / EOS texts it may print.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compile `source` (a Jinja chat template).
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", pyfuncs::tojson);
        env.add_function("raise_exception", pyfuncs::raise_exception);
        env.add_function("strftime_now", pyfuncs::strftime_now);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|e| TemplateError::Syntax {
                detail: describe(&e),
            })?;
        let template = Self {
            env,
            source: source.to_owned(),
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        };
        template.probe()?;
        Ok(template)
    }

    /// Renders two small conversations so that a template that never ends fails at load,
    /// not on every request. Only running out of budget fails: a template may refuse a
    /// probe conversation (`raise_exception`, say for the system role) and still be fine.
    fn probe(&self) -> Result<(), TemplateError> {
        let user = ChatMessage::new("user", "Hello");
        let conversations = [
            vec![user.clone()],
            vec![
                ChatMessage::new("system", "You are helpful."),
                user.clone(),
                ChatMessage::new("assistant", "Hi! How can I help?"),
                user,
            ],
        ];
        for messages in &conversations {
            match self.render(messages, true) {
                Err(err @ TemplateError::OverBudget { .. }) => return Err(err),
                _ => continue,
            }
        }
        Ok(())
    }

    /// The model's template, or ChatML when the model has none.
    pub fn from_optional(
        source: Option<&str>,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<Self, TemplateError> {
        Self::new(source.unwrap_or(CHATML_TEMPLATE), bos_token, eos_token)
    }

    /// Make `strftime_now` report this UNIX time (UTC) instead of the clock, for
    /// reproducible prompts (tests, golden files).
    pub fn with_fixed_time(mut self, unix_seconds: i64) -> Self {
        self.env
            .add_function("strftime_now", move |format: String| {
                pyfuncs::strftime(&format, unix_seconds).map(Value::from)
            });
        self
    }

    /// The Jinja source this template was compiled from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Render a conversation; `add_generation_prompt` appends the assistant turn opener.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// `render` with the template's `tools` variable set (a list of tools in chat form).
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let budget = render_budget(messages.len());
        let mut env = self.env.clone();
        env.set_fuel(Some(budget));
        let template = env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TemplateError::Render {
                detail: describe(&e),
            })?;
        let ctx = context! {
            messages => Value::from_serialize(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            tools => tools.map_or(Value::from(()), Value::from_serialize),
            documents => Value::from(()),
        };
        template
            .render(ctx)
            .map_err(|err| render_error(err, budget, messages.len()))
    }
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

/// A minijinja error with its location and causes on one line.
fn describe(err: &minijinja::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// The error a failed render (of `messages` messages with `budget` fuel) stands for.
fn render_error(err: minijinja::Error, budget: u64, messages: usize) -> TemplateError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(cause) = source {
        if let Some(raised) = cause.downcast_ref::<pyfuncs::Raised>() {
            return TemplateError::Raised {
                message: raised.0.clone(),
            };
        }
        if cause
            .downcast_ref::<minijinja::Error>()
            .is_some_and(|e| e.kind() == minijinja::ErrorKind::OutOfFuel)
        {
            return TemplateError::OverBudget { budget, messages };
        }
        source = cause.source();
    }
    TemplateError::Render {
        detail: describe(&err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, messages: &[ChatMessage]) -> Result<String, TemplateError> {
        ChatTemplate::new(source, "<s>", "</s>")?.render(messages, true)
    }

    #[test]
    fn template_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ChatTemplate>();
    }

    #[test]
    fn chatml_default_and_generation_prompt() {
        let template = ChatTemplate::from_optional(None, "", "").expect("chatml");
        let msgs = [ChatMessage::new("user", "Hi")];
        assert_eq!(
            template.render(&msgs, true).expect("render"),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            template.render(&msgs, false).expect("render"),
            "<|im_start|>user\nHi<|im_end|>\n"
        );
    }

    #[test]
    fn trim_and_lstrip_blocks_python_methods_and_loop_controls() {
        let source = "{{ bos_token }}\n  {% for m in messages %}\n    {% if loop.index > 2 %}{% break %}{% endif %}\n[{{ m.role.upper() }}] {{ m['content'].strip() }}{% if m.content.startswith(' x') %}!{% endif %}\n  {% endfor %}\n";
        let msgs = [
            ChatMessage::new("system", " x y "),
            ChatMessage::new("user", "hello"),
            ChatMessage::new("user", "never shown"),
        ];
        assert_eq!(
            render(source, &msgs).expect("render"),
            "<s>\n[SYSTEM] x y![USER] hello"
        );
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let source = "{{ messages[0] | tojson }}|{{ messages | tojson(indent=2) }}|{{ {'b': [1, 2.5, none, true], 'a': 'é\"<'} | tojson(sort_keys=true) }}";
        let msgs = [ChatMessage::new("user", "Hi\n")];
        let out = render(source, &msgs).expect("render");
        let want = "{\"role\": \"user\", \"content\": \"Hi\\n\"}|[\n  {\n    \"role\": \"user\",\n    \"content\": \"Hi\\n\"\n  }\n]|{\"a\": \"é\\\"<\", \"b\": [1, 2.5, null, true]}";
        assert_eq!(out, want);
    }

    #[test]
    fn raise_exception_is_a_clear_error() {
        let source = "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}ok";
        let err = render(source, &[ChatMessage::new("system", "x")]).expect_err("must raise");
        assert!(
            matches!(&err, TemplateError::Raised { message } if message == "System role not supported"),
            "{err:?}"
        );
        assert_eq!(
            render(source, &[ChatMessage::new("user", "x")]).expect("render"),
            "ok"
        );
    }

    #[test]
    fn broken_templates_are_errors() {
        let err = ChatTemplate::new("{% for m in messages %}", "", "").expect_err("unclosed for");
        assert!(matches!(err, TemplateError::Syntax { .. }), "{err}");
        let err = render(
            "{{ messages[0].content.nosuchmethod() }}",
            &[ChatMessage::new("user", "x")],
        )
        .expect_err("unknown method");
        assert!(matches!(err, TemplateError::Render { .. }), "{err}");
        assert!(render("{{ strftime_now('%Y') }}", &[])
            .expect("render")
            .starts_with("20"));
    }
}
