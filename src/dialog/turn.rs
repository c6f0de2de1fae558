//! One turn of a dialog: `prepare_turn` (history → window → prompt) and `commit_turn`
//! (the finished answer → one store transaction → the final response object), plus the
//! stored responses' reads and deletes.
//!
//! The history of a turn is its anchor's: nothing (a fresh dialog), a previous response
//! (OpenAI's `previous_response_id`: that response's own history, input and output,
//! recursively — its `instructions` are not carried over), or a conversation (all its
//! items). The hot cache holds the history each committed turn leaves behind, stamped so
//! a turn can check it against the database with one key lookup instead of loading it.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use super::cache::{Context, Stamp};
use super::items::{new_id, Message, Role};
use super::objects::{item_list, response_object, ResponseFields, Status, TurnUsage};
pub use super::prompt::WindowInfo;
use super::prompt::{BuiltPrompt, PromptSpec};
use super::{Dialog, DialogError, ListQuery, WindowRule};
use crate::engine::handle::EngineHandle;
use crate::store::{Owner, Replaced, ResponseRecord, StoreError, TurnRecord};

/// What a turn continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anchor {
    None,
    Previous(String),
    Conversation(String),
}

/// Hex digits at the start of a response or conversation id that name its dialog.
pub const AFFINITY_HEX: usize = 16;

impl Anchor {
    /// The id of this turn's response: `resp_`, the dialog's affinity key, 16 random hex
    /// digits. The key is the first `AFFINITY_HEX` hex digits of the conversation's id or
    /// of the previous response's (so of the chain's first response); a new dialog gets
    /// a random one. Every response of a dialog so shares it, and a load balancer that
    /// hashes it (deploy/nginx/tessera.conf) keeps the dialog on the replica that holds
    /// its KV cache.
    fn response_id(&self) -> String {
        let key = match self {
            Anchor::Previous(id) | Anchor::Conversation(id) => affinity_key(id),
            Anchor::None => None,
        };
        let key = key.map_or_else(|| format!("{:016x}", rand::random::<u64>()), str::to_string);
        format!("resp_{key}{:016x}", rand::random::<u64>())
    }
}

/// The affinity key of a `resp_…` or `conv_…` id: its first `AFFINITY_HEX` hex digits.
pub fn affinity_key(id: &str) -> Option<&str> {
    let (_, hex) = id.split_once('_')?;
    let key = hex.get(..AFFINITY_HEX)?;
    key.bytes().all(|b| b.is_ascii_hexdigit()).then_some(key)
}

/// A new turn as the caller parsed it.
#[derive(Debug, Clone)]
pub struct TurnRequest {
    /// The new input messages (already checked by moderation, when there is one).
    pub input: Vec<Message>,
    /// Echoed in the response; names the anchor (`previous_response_id` or
    /// `conversation_id`, not both).
    pub fields: ResponseFields,
}

/// A turn ready to run: its prompt and what committing it needs.
#[derive(Debug, Clone)]
pub struct PreparedTurn {
    pub response_id: String,
    /// Id of the answer message (streamed events name it before it is stored).
    pub output_id: String,
    pub created_at: i64,
    pub owner: Owner,
    pub fields: ResponseFields,
    pub input: Vec<Message>,
    pub prompt: BuiltPrompt,
    /// The history the prompt was built from.
    context: Arc<Context>,
    /// The conversation items this turn replaces when committed (a regeneration).
    replaces: Option<Replaced>,
}

/// What a turn is built on: its history, what it replaces, when preparing began.
pub(super) struct TurnBase {
    /// What the turn continues (its response id carries the dialog's affinity key).
    pub anchor: Anchor,
    pub context: Arc<Context>,
    pub replaces: Option<Replaced>,
    pub started: Instant,
}

impl PreparedTurn {
    pub fn window(&self) -> WindowInfo {
        self.prompt.window
    }

    /// The dialog this turn belongs to (the conversation log's `thread_id`): its
    /// conversation, else the first stored response of its `previous_response_id`
    /// chain, else this response.
    pub fn thread_id(&self) -> String {
        if let Some(conversation) = &self.fields.conversation_id {
            return conversation.clone();
        }
        match &self.context.stamp {
            Stamp::Chain { response_ids } => response_ids.first().cloned(),
            Stamp::Conversation { .. } => None,
        }
        .unwrap_or_else(|| self.response_id.clone())
    }

    /// The response object without output, in `status` (`in_progress` while the turn
    /// runs, `failed` when it could not finish).
    pub fn snapshot(&self, status: &Status) -> Value {
        response_object(
            &self.response_id,
            self.created_at,
            &self.fields,
            status,
            &[],
            None,
        )
    }
}

/// How a turn ended.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnOutcome {
    /// The answer's content (without its tool calls).
    pub text: String,
    /// The tool calls the answer made (`function_call` output items after the message).
    pub calls: Vec<crate::tools::ToolCall>,
    /// `Completed` or `Incomplete(reason)`.
    pub status: Status,
    pub usage: TurnUsage,
}

/// Milliseconds since `t`, for the debug log.
fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn anchor(fields: &ResponseFields) -> Result<Anchor, DialogError> {
    match (&fields.previous_response_id, &fields.conversation_id) {
        (Some(_), Some(_)) => Err(DialogError::Invalid {
            message: "`previous_response_id` cannot be used together with `conversation`".into(),
            param: Some("previous_response_id".into()),
        }),
        (Some(prev), None) => Ok(Anchor::Previous(prev.clone())),
        (None, Some(conv)) => Ok(Anchor::Conversation(conv.clone())),
        (None, None) => Ok(Anchor::None),
    }
}

fn messages(items: &[crate::store::ItemRecord]) -> Result<Arc<Vec<Message>>, DialogError> {
    items
        .iter()
        .map(Message::from_record)
        .collect::<Result<Vec<_>, _>>()
        .map(Arc::new)
}

impl Dialog {
    /// Loads the history, windows it and builds the prompt for `engine`'s model.
    pub async fn prepare_turn(
        &self,
        owner: &Owner,
        request: TurnRequest,
        engine: &EngineHandle,
    ) -> Result<PreparedTurn, DialogError> {
        self.prepare_turn_with(owner, request, engine, self.window)
            .await
    }

    /// `prepare_turn` with another history window than the server's (the chat page's
    /// product defaults).
    pub async fn prepare_turn_with(
        &self,
        owner: &Owner,
        request: TurnRequest,
        engine: &EngineHandle,
        rule: WindowRule,
    ) -> Result<PreparedTurn, DialogError> {
        let started = Instant::now();
        let anchor = anchor(&request.fields)?;
        let context = self.context(owner, &anchor).await?;
        let base = TurnBase {
            anchor,
            context,
            replaces: None,
            started,
        };
        self.build_turn(owner, request, engine, rule, base).await
    }

    /// Windows `base.context` and builds the prompt of `request` on it.
    pub(super) async fn build_turn(
        &self,
        owner: &Owner,
        request: TurnRequest,
        engine: &EngineHandle,
        rule: WindowRule,
        base: TurnBase,
    ) -> Result<PreparedTurn, DialogError> {
        let TurnBase {
            anchor,
            context,
            replaces,
            started,
        } = base;
        let history_ms = ms(started);
        let engine = engine.clone();
        let (ctx, req) = (context.clone(), request.clone());
        let prompt = tokio::task::spawn_blocking(move || {
            PromptSpec {
                instructions: req.fields.instructions.as_deref(),
                history: &ctx.messages,
                input: &req.input,
                rule,
                truncation: req.fields.truncation,
                max_output_tokens: req.fields.max_output_tokens,
                max_model_len: engine.info().max_model_len,
                tools: req
                    .fields
                    .tools
                    .as_ref()
                    .filter(|t| t.active())
                    .map(|t| &t.template_tools),
            }
            .build(engine.model())
        })
        .await
        .map_err(|e| DialogError::Internal(format!("building the prompt failed: {e}")))??;
        tracing::debug!(
            history_ms,
            prompt_ms = ms(started) - history_ms,
            messages = context.messages.len(),
            kept_turns = prompt.window.kept_turns(),
            "turn prepared"
        );
        Ok(PreparedTurn {
            response_id: anchor.response_id(),
            output_id: new_id("msg"),
            created_at: crate::store::unix_now(),
            owner: owner.clone(),
            fields: request.fields,
            input: request.input,
            prompt,
            context,
            replaces,
        })
    }

    /// The history of `anchor`: from the hot cache when its stamp is current, else from
    /// the store (and then cached).
    pub(super) async fn context(
        &self,
        owner: &Owner,
        anchor: &Anchor,
    ) -> Result<Arc<Context>, DialogError> {
        let (key, param) = match anchor {
            Anchor::None => {
                return Ok(Arc::new(Context {
                    owner: owner.clone(),
                    stamp: Stamp::Chain {
                        response_ids: Arc::new(Vec::new()),
                    },
                    messages: Arc::new(Vec::new()),
                }))
            }
            Anchor::Previous(id) => (id.clone(), "previous_response_id"),
            Anchor::Conversation(id) => (id.clone(), "conversation"),
        };
        let what = if param == "conversation" {
            "conversation"
        } else {
            "response"
        };
        let missing = || DialogError::not_found(what, &key, Some(param));
        if let Some(hot) = self.cache.get(&key, owner) {
            let (o, k) = (owner.clone(), key.clone());
            let current = match anchor {
                Anchor::Conversation(_) => self
                    .pool
                    .run(move |s| s.conversation_version(&o, &k))
                    .await?
                    .map(|version| Stamp::Conversation { version }),
                _ => self
                    .pool
                    .run(move |s| s.response_chain(&o, &k))
                    .await?
                    .map(|ids| Stamp::Chain {
                        response_ids: Arc::new(ids),
                    }),
            };
            match current {
                None => return Err(missing()),
                Some(stamp) if stamp == hot.stamp => return Ok(hot),
                Some(_) => {}
            }
        }
        let (o, k) = (owner.clone(), key.clone());
        let loaded = match anchor {
            Anchor::Conversation(_) => self
                .pool
                .run(move |s| s.conversation_history(&o, &k))
                .await?
                .map(|h| {
                    Ok::<_, DialogError>((
                        Stamp::Conversation { version: h.version },
                        messages(&h.items)?,
                    ))
                }),
            _ => self
                .pool
                .run(move |s| s.response_history(&o, &k))
                .await?
                .map(|c| {
                    let stamp = Stamp::Chain {
                        response_ids: Arc::new(c.response_ids),
                    };
                    Ok((stamp, messages(&c.items)?))
                }),
        };
        let (stamp, messages) = loaded.ok_or_else(missing)??;
        let context = Arc::new(Context {
            owner: owner.clone(),
            stamp,
            messages,
        });
        self.cache.put(&key, context.clone());
        Ok(context)
    }

    /// Commits a finished turn (one transaction: the response when `store`, its input and
    /// output items, appended to its conversation if it has one) and returns the final
    /// response object. Nothing is written for a `store: false` turn without a
    /// conversation.
    pub async fn commit_turn(
        &self,
        turn: PreparedTurn,
        outcome: TurnOutcome,
    ) -> Result<Value, DialogError> {
        let now = crate::store::unix_now();
        let mut answer = Message::new(Role::Assistant, outcome.text, now);
        answer.id = turn.output_id.clone();
        answer.complete = outcome.status == Status::Completed;
        let mut output = Vec::with_capacity(1 + outcome.calls.len());
        if outcome.calls.is_empty() || !answer.text().is_empty() {
            output.push(answer);
        }
        for call in &outcome.calls {
            output.push(Message::function_call(
                &call.id,
                &call.name,
                &call.arguments,
                now,
            ));
        }
        // An answer cut short may have cut its last call.
        if let Some(last) = output.last_mut().filter(|_| !outcome.calls.is_empty()) {
            last.complete = outcome.status == Status::Completed;
        }
        let f = &turn.fields;
        let body = response_object(
            &turn.response_id,
            turn.created_at,
            f,
            &outcome.status,
            &output,
            Some(outcome.usage),
        );
        let record = TurnRecord {
            response: f.store.then(|| ResponseRecord {
                id: turn.response_id.clone(),
                created_at: turn.created_at,
                previous_response_id: f.previous_response_id.clone(),
                conversation_id: f.conversation_id.clone(),
                status: outcome.status.as_str().to_string(),
                body: body.to_string(),
            }),
            conversation_id: f.conversation_id.clone(),
            input: turn.input.iter().map(Message::to_record).collect(),
            output: output.iter().map(Message::to_record).collect(),
            replaces: turn.replaces.clone(),
        };
        let mut version = None;
        let started = Instant::now();
        if record.response.is_some() || record.conversation_id.is_some() {
            let owner = turn.owner.clone();
            version = self
                .pool
                .run(move |s| s.commit_turn(&owner, &record))
                .await
                .map_err(|e| match (e, &turn.fields.conversation_id) {
                    (StoreError::NotFound(what), Some(id)) => {
                        DialogError::not_found(what, id, Some("conversation"))
                    }
                    (e, _) => DialogError::Store(e),
                })?;
        }
        tracing::debug!(commit_ms = ms(started), id = %turn.response_id, "turn committed");
        self.remember(&turn, &output, version);
        Ok(body)
    }

    /// Updates the hot cache after a commit: the history the next turn will continue.
    fn remember(&self, turn: &PreparedTurn, output: &[Message], version: Option<i64>) {
        let mut messages = Vec::clone(&turn.context.messages);
        messages.extend(turn.input.iter().cloned());
        messages.extend(output.iter().cloned());
        let messages = Arc::new(messages);
        let owner = turn.owner.clone();
        match (&turn.fields.conversation_id, &turn.context.stamp, version) {
            (Some(conv), Stamp::Conversation { version: seen }, Some(now)) if now == seen + 1 => {
                let stamp = Stamp::Conversation { version: now };
                self.cache.put(
                    conv,
                    Arc::new(Context {
                        owner,
                        stamp,
                        messages,
                    }),
                );
            }
            // Another writer came between our read and our commit: reload next time.
            (Some(conv), _, _) => self.cache.remove(conv),
            (None, Stamp::Chain { response_ids }, _) if turn.fields.store => {
                let mut ids = Vec::clone(response_ids);
                ids.push(turn.response_id.clone());
                let stamp = Stamp::Chain {
                    response_ids: Arc::new(ids),
                };
                let context = Arc::new(Context {
                    owner,
                    stamp,
                    messages,
                });
                self.cache.put(&turn.response_id, context);
            }
            (None, _, _) => {}
        }
    }

    /// A stored response object.
    pub async fn response(&self, owner: &Owner, id: &str) -> Result<Value, DialogError> {
        let (o, k) = (owner.clone(), id.to_string());
        let record = self.pool.run(move |s| s.response(&o, &k)).await?;
        let record = record.ok_or_else(|| DialogError::not_found("response", id, None))?;
        serde_json::from_str(&record.body)
            .map_err(|e| DialogError::Internal(format!("stored response {id} is malformed: {e}")))
    }

    /// Deletes a stored response; false when there was none.
    pub async fn delete_response(&self, owner: &Owner, id: &str) -> Result<bool, DialogError> {
        let (o, k) = (owner.clone(), id.to_string());
        let deleted = self.pool.run(move |s| s.delete_response(&o, &k)).await?;
        self.cache.remove(id);
        Ok(deleted)
    }

    /// A page of a stored response's input items (a list object).
    pub async fn input_items(
        &self,
        owner: &Owner,
        id: &str,
        query: &ListQuery,
    ) -> Result<Value, DialogError> {
        let q = query.page();
        let page = self.run_on(owner, "response", id, move |s, o, k| {
            s.response_input_items(o, k, &q)
        });
        list_of(&page.await?)
    }

    /// Runs `op(store, owner, id)` on the store; its errors as errors about `what` `id`.
    pub(super) async fn run_on<T: Send + 'static>(
        &self,
        owner: &Owner,
        what: &'static str,
        id: &str,
        op: impl FnOnce(&mut dyn crate::store::Store, &Owner, &str) -> Result<T, StoreError>
            + Send
            + 'static,
    ) -> Result<T, DialogError> {
        let (o, k) = (owner.clone(), id.to_string());
        self.pool
            .run(move |s| op(s, &o, &k))
            .await
            .map_err(|e| DialogError::from_store(e, what, id))
    }
}

/// A store page as a list object of item JSON.
pub(super) fn list_of(page: &crate::store::Page) -> Result<Value, DialogError> {
    let items = page
        .items
        .iter()
        .map(|r| {
            serde_json::from_str(&r.body).map_err(|e| {
                DialogError::Internal(format!("stored item {} is malformed: {e}", r.id))
            })
        })
        .collect::<Result<Vec<Value>, _>>()?;
    Ok(item_list(&items, page.has_more))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_of_one_dialog_share_its_affinity_key() {
        let conv = new_id("conv");
        let key = affinity_key(&conv).expect("a conversation id has a key");
        let first = Anchor::Conversation(conv.clone()).response_id();
        assert_eq!(affinity_key(&first), Some(key));
        let second = Anchor::Previous(first.clone()).response_id();
        assert_eq!(affinity_key(&second), Some(key));
        assert_ne!(first, second);
        assert_eq!(first.len(), "resp_".len() + 2 * AFFINITY_HEX);
        let fresh = Anchor::None.response_id();
        assert_ne!(affinity_key(&fresh), Some(key));
        // Foreign or short ids carry no key: the chain then starts a new one.
        assert_eq!(affinity_key("resp_xyz"), None);
        assert_eq!(affinity_key("nounderscore"), None);
        let unkeyed = Anchor::Previous("resp_short".into()).response_id();
        assert!(affinity_key(&unkeyed).is_some());
    }
}
