//! One generation of a chat socket: `message.send` (a new user message) or
//! `message.regenerate` (a new answer to the last one), from moderation of the input
//! through the dialog's turn, the engine, the streamed `delta`s and the commit to
//! `generation.done`.
//!
//! Messages it sends: `moderation.blocked` (stage `input`: nothing ran, nothing is
//! stored), `generation.started`, `delta`…, then `generation.done` after the turn is
//! committed (so a `done` answer can be rated and continued at once); a blocked output
//! also sends `moderation.blocked` (stage `output`) before its `done`; a failure sends
//! one `error` naming the generation.
//!
//! Invariants: a stop drops the engine stream at once (the sequence is aborted at the
//! engine's next step and its KV blocks freed), and the partial answer is committed as
//! `incomplete` (`cancelled`); a socket that goes away drops the task, which aborts the
//! sequence and commits nothing (as an HTTP client that disconnects).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::outbound::Outbox;
use super::protocol::{self, message, Overrides};
use crate::audit::{Exchange, InputMessage};
use crate::dialog::{Dialog, PreparedTurn};
use crate::dialog::{
    Message, ResponseFields, Role, Status, Truncation, TurnOutcome, TurnRequest, TurnUsage,
};
use crate::error::ApiError;
use crate::request::{FinishReason, SamplingParams};
use crate::safety::{InputText, ModerationError, Screen, Stage};
use crate::server::dialog_http::dialog;
use crate::server::exchange::{begin_for, with_turn, Peer};
use crate::server::generate::{check_finish, submit_turn, Generation, Oversight};
use crate::server::state::AppState;
use crate::store::Owner;
use std::sync::Arc;

/// What a generation answers.
#[derive(Debug, Clone)]
pub enum TurnKind {
    Send { text: String },
    Regenerate,
}

/// One generation to run.
pub struct Job {
    pub state: Arc<AppState>,
    pub owner: Owner,
    pub outbox: Outbox,
    /// The `id` of the client message that asked for it.
    pub reply_to: Option<String>,
    pub generation_id: String,
    pub conversation_id: String,
    pub kind: TurnKind,
    pub overrides: Overrides,
    pub request_id: String,
    /// Where the socket came from (for the conversation log).
    pub peer: Peer,
}

impl Job {
    fn send(&self, kind: &str, fields: Value) {
        let mut fields = fields;
        fields["generation_id"] = json!(self.generation_id);
        fields["conversation_id"] = json!(self.conversation_id);
        self.outbox
            .send(&message(kind, self.reply_to.as_deref(), fields));
    }
}

/// Runs `job`; its failure becomes an `error` naming the generation.
pub async fn run(job: Job, stopped: oneshot::Receiver<()>) {
    if let Err(e) = turn(&job, stopped).await {
        tracing::debug!(request_id = %job.request_id, error = %e, "chat generation failed");
        let ids =
            json!({"generation_id": job.generation_id, "conversation_id": job.conversation_id});
        job.outbox
            .send(&protocol::error(job.reply_to.as_deref(), &e, ids));
    }
}

/// The sampling of a chat turn: the product defaults, overridden within the limits.
fn sampling(state: &AppState, o: &Overrides) -> Result<SamplingParams, ApiError> {
    let (defaults, limits) = (state.config.chat.defaults, state.config.chat.limits);
    let max_tokens = o.max_tokens.map_or(defaults.max_tokens, |n| {
        usize::try_from(n).unwrap_or(usize::MAX)
    });
    if max_tokens == 0 || max_tokens > limits.max_tokens {
        return Err(ApiError::InvalidRequest {
            message: format!(
                "`max_tokens` must be in 1..={} on this server. Given: {max_tokens}",
                limits.max_tokens
            ),
            param: Some("max_tokens".into()),
        });
    }
    let params = SamplingParams {
        temperature: o.temperature.unwrap_or(defaults.temperature),
        top_p: o.top_p.unwrap_or(defaults.top_p),
        repetition_penalty: o.repetition_penalty.unwrap_or(defaults.repetition_penalty),
        seed: o.seed,
        max_tokens,
        ..SamplingParams::default()
    };
    params.validate()?;
    Ok(params)
}

/// Level 1 moderation of the user's text (on the CPU pool); `Ok(None)`: blocked (the
/// client was told).
async fn screen_input(
    job: &Job,
    screen: &Option<Arc<Screen>>,
    exchange: &mut Option<Exchange>,
    text: String,
) -> Result<Option<String>, ApiError> {
    let Some(screen) = screen.clone() else {
        return Ok(Some(text));
    };
    let checked_text = text.clone();
    let checker = screen.clone();
    let checked = job
        .state
        .cpu
        .run(move || {
            let mut text = text;
            let mut fields = [InputText {
                param: "text".into(),
                prompt: 0,
                limited: true,
                text: &mut text,
            }];
            Ok(checker.check_input(&mut fields).map(|()| text))
        })
        .await?;
    match checked {
        Ok(text) => Ok(Some(text)),
        Err(ModerationError::Blocked { message, .. }) => {
            if let Some(mut refused) = exchange.take() {
                refused.meta.input = vec![InputMessage::new("user", checked_text)];
                refused.refused(&screen.hits(Stage::Input, None));
            }
            job.send(
                "moderation.blocked",
                json!({"stage": "input", "message": message}),
            );
            Ok(None)
        }
        Err(other) => Err(other.into()),
    }
}

/// The turn's exchange in the conversation log, as an HTTP request's is (`None`: the
/// log is off).
fn socket_exchange(job: &Job, model: &str) -> Option<Exchange> {
    let mut exchange = begin_for(
        &job.state,
        job.request_id.clone(),
        "/v1/chat/ws",
        &job.owner,
        &job.peer,
    )?;
    exchange.meta.model = model.to_string();
    exchange.meta.conversation_id = Some(job.conversation_id.clone());
    Some(exchange)
}

/// Prepares, moderates, submits and streams the turn.
async fn turn(job: &Job, stopped: oneshot::Receiver<()>) -> Result<(), ApiError> {
    let state = &job.state;
    state.audit_ready()?;
    let engine = state.engine()?.clone();
    let dialog = dialog(state)?.clone();
    let params = sampling(state, &job.overrides)?;
    let screen = state.moderation.screen(|| job.request_id.clone());
    let fields = ResponseFields {
        model: state.base_names().first().cloned().unwrap_or_default(),
        instructions: None,
        temperature: params.temperature,
        top_p: params.top_p,
        max_output_tokens: Some(params.max_tokens),
        truncation: Truncation::Auto,
        metadata: json!({}),
        user: None,
        store: true,
        previous_response_id: None,
        conversation_id: Some(job.conversation_id.clone()),
        tools: None,
        text_format: json!({"type": "text"}),
    };
    let rule = state.config.chat.defaults.window(dialog.window());
    let mut exchange = socket_exchange(job, &fields.model);
    let turn = match &job.kind {
        TurnKind::Send { text } => {
            let Some(text) = screen_input(job, &screen, &mut exchange, text.clone()).await? else {
                return Ok(());
            };
            let input = vec![Message::new(Role::User, text, crate::store::unix_now())];
            let request = TurnRequest { input, fields };
            dialog
                .prepare_turn_with(&job.owner, request, &engine, rule)
                .await?
        }
        TurnKind::Regenerate => {
            let turn = dialog
                .prepare_regeneration(&job.owner, fields, &engine, rule)
                .await?;
            let question = turn.input.first().map(Message::text).unwrap_or_default();
            if screen_input(job, &screen, &mut exchange, question)
                .await?
                .is_none()
            {
                return Ok(());
            }
            turn
        }
    };
    if let Some(e) = exchange.as_mut() {
        e.meta.input = turn
            .input
            .iter()
            .map(|m| InputMessage::new("user", m.text()))
            .collect();
    }
    let permit = state.admit(1)?;
    let submitted = Instant::now();
    let gen = submit_turn(
        &engine,
        state.clone(),
        &turn,
        params,
        permit,
        Oversight {
            request_id: job.request_id.clone(),
            screen,
            exchange: with_turn(exchange, &turn),
        },
    )?;
    job.send(
        "generation.started",
        json!({
            "response_id": turn.response_id,
            "message_id": turn.output_id,
            "input": turn.input.first().map(|m| json!({"id": m.id, "text": m.text()})),
            "regenerate": matches!(job.kind, TurnKind::Regenerate),
        }),
    );
    let streamed = stream(job, gen, stopped, submitted).await?;
    let Some(streamed) = streamed else {
        return Ok(()); // the socket is gone: nothing is committed
    };
    finish(job, &dialog, turn, streamed).await
}

/// An answer as it was streamed.
struct Streamed {
    text: String,
    /// `None`: stopped by the client.
    finish: Option<FinishReason>,
    input_tokens: usize,
    cached_tokens: usize,
    output_tokens: usize,
    submitted: Instant,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
}

/// Streams the answer as `delta`s until it finishes or is stopped; `None` when the
/// socket went away. The generation is dropped (aborting its sequence) on return.
async fn stream(
    job: &Job,
    mut gen: Generation,
    mut stopped: oneshot::Receiver<()>,
    submitted: Instant,
) -> Result<Option<Streamed>, ApiError> {
    let mut out = Streamed {
        text: String::new(),
        finish: None,
        input_tokens: 0,
        cached_tokens: 0,
        output_tokens: 0,
        submitted,
        first_token: None,
        last_token: None,
    };
    let Some(choice) = gen.choices.first_mut() else {
        return Err(ApiError::Internal("a chat turn has no choice".into()));
    };
    loop {
        tokio::select! {
            event = choice.next() => match event {
                None => break,
                Some(Err(e)) => return Err(e),
                Some(Ok(ev)) => {
                    let now = Instant::now();
                    if !ev.token_ids.is_empty() || !ev.text.is_empty() {
                        out.first_token.get_or_insert(now);
                        out.last_token = Some(now);
                    }
                    (out.input_tokens, out.cached_tokens) = (ev.usage.prompt_tokens, ev.usage.cached_tokens);
                    out.output_tokens = ev.usage.completion_tokens;
                    out.finish = out.finish.or(ev.finish_reason);
                    if !ev.text.is_empty() {
                        out.text.push_str(&ev.text);
                        job.send("delta", json!({"text": ev.text, "tokens": out.output_tokens}));
                    }
                }
            },
            stop = &mut stopped => match stop {
                Ok(()) => break,
                Err(_) => return Ok(None),
            },
        }
    }
    drop(gen);
    Ok(Some(out))
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Commits the answer and reports it done.
async fn finish(
    job: &Job,
    dialog: &Dialog,
    turn: PreparedTurn,
    s: Streamed,
) -> Result<(), ApiError> {
    let (status, reason) = match s.finish {
        None => (Status::Incomplete("cancelled"), "cancelled"),
        Some(reason) => match check_finish(reason)? {
            FinishReason::Length => (Status::Incomplete("max_output_tokens"), "length"),
            FinishReason::ContentFilter => (Status::Incomplete("content_filter"), "content_filter"),
            _ => (Status::Completed, "stop"),
        },
    };
    if reason == "content_filter" {
        let message = job
            .state
            .moderation
            .policy()
            .map(|p| p.input_rules.blocked_message.clone())
            .unwrap_or_default();
        job.send(
            "moderation.blocked",
            json!({"stage": "output", "message": message}),
        );
    }
    let usage = TurnUsage {
        input_tokens: s.input_tokens,
        cached_tokens: s.cached_tokens,
        output_tokens: s.output_tokens,
    };
    let (response_id, message_id) = (turn.response_id.clone(), turn.output_id.clone());
    let outcome = TurnOutcome {
        text: s.text,
        calls: Vec::new(),
        status,
        usage,
    };
    dialog.commit_turn(turn, outcome).await?;
    let ttft = s.first_token.map(|t| ms(t - s.submitted));
    let decode = match (s.first_token, s.last_token) {
        (Some(first), Some(last)) if s.output_tokens > 1 && last > first => {
            Some((s.output_tokens - 1) as f64 / (last - first).as_secs_f64())
        }
        _ => None,
    };
    job.send(
        "generation.done",
        json!({
            "response_id": response_id,
            "message_id": message_id,
            "finish_reason": reason,
            "usage": {
                "input_tokens": usage.input_tokens,
                "cached_tokens": usage.cached_tokens,
                "output_tokens": usage.output_tokens,
            },
            "ttft_ms": ttft,
            "tokens_per_second": decode.map(|r| (r * 10.0).round() / 10.0),
            "duration_ms": ms(s.submitted.elapsed()),
        }),
    );
    Ok(())
}
