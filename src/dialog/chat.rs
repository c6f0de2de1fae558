//! What the chat page needs of the dialog beyond a turn: the caller's conversation list
//! with titles, a conversation's transcript (its messages with the response each answer
//! came from, so answers can be rated and regenerated after a reload) and renaming.
//! (Regeneration itself is a turn: `Dialog::prepare_regeneration`.)
//!
//! Invariants: a title is conversation metadata (`title`, within the metadata limits).

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Map, Value};

use super::cache::{Context, Stamp};
use super::conversations::metadata;
use super::items::{Message, Role};
use super::turn::{Anchor, PreparedTurn, TurnBase, TurnRequest};
use super::{Dialog, DialogError, ResponseFields, WindowRule};
use crate::engine::handle::EngineHandle;
use crate::store::{ConversationRecord, Owner, Replaced};

/// Most conversations one list returns.
pub const MAX_LISTED_CONVERSATIONS: usize = 200;
/// Most messages of a conversation a transcript shows (the latest ones).
pub const MAX_TRANSCRIPT_ITEMS: usize = 400;
/// Longest title kept (characters; the metadata value limit is 512).
pub const MAX_TITLE_CHARS: usize = 200;

/// One message of a transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptMessage {
    pub message: Message,
    /// The response the message is input or output of (none: added as an item).
    pub response_id: Option<String>,
}

impl TranscriptMessage {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.message.id,
            "role": self.message.role.as_str(),
            "text": self.message.text(),
            "complete": self.message.complete,
            "response_id": self.response_id,
            "created_at": self.message.created_at,
        })
    }
}

/// A conversation as the chat page lists it.
pub fn summary(record: &ConversationRecord) -> Value {
    let metadata: Value = serde_json::from_str(&record.metadata).unwrap_or_else(|_| json!({}));
    json!({
        "id": record.id,
        "title": metadata.get("title").and_then(Value::as_str).unwrap_or(""),
        "created_at": record.created_at,
    })
}

/// `title` trimmed, control characters dropped, cut to `MAX_TITLE_CHARS`.
pub fn clean_title(title: &str) -> String {
    title
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .chars()
        .take(MAX_TITLE_CHARS)
        .collect()
}

impl Dialog {
    /// The caller's conversations, newest first (summaries).
    pub async fn list_conversations(&self, owner: &Owner) -> Result<Vec<Value>, DialogError> {
        let o = owner.clone();
        let records = self
            .pool
            .run(move |s| s.list_conversations(&o, MAX_LISTED_CONVERSATIONS))
            .await?;
        Ok(records.iter().map(summary).collect())
    }

    /// A new conversation titled `title` (may be empty); its summary.
    pub async fn create_titled(&self, owner: &Owner, title: &str) -> Result<Value, DialogError> {
        let mut meta = Map::new();
        let title = clean_title(title);
        if !title.is_empty() {
            meta.insert("title".into(), Value::String(title));
        }
        let object = self
            .create_conversation(owner, Vec::new(), Value::Object(meta))
            .await?;
        Ok(object_summary(&object))
    }

    /// Renames a conversation (keeping its other metadata); its summary.
    pub async fn rename(&self, owner: &Owner, id: &str, title: &str) -> Result<Value, DialogError> {
        let current = self.conversation(owner, id).await?;
        let mut meta = current["metadata"].as_object().cloned().unwrap_or_default();
        meta.insert("title".into(), Value::String(clean_title(title)));
        let meta = metadata(Some(&Value::Object(meta)))?;
        let object = self.update_conversation(owner, id, meta).await?;
        Ok(object_summary(&object))
    }

    /// The last `MAX_TRANSCRIPT_ITEMS` messages of a conversation and its summary.
    pub async fn transcript(
        &self,
        owner: &Owner,
        id: &str,
    ) -> Result<(Value, Vec<TranscriptMessage>), DialogError> {
        let object = self.conversation(owner, id).await?;
        let (o, k) = (owner.clone(), id.to_string());
        let items = self
            .pool
            .run(move |s| s.conversation_transcript(&o, &k, MAX_TRANSCRIPT_ITEMS))
            .await?
            .ok_or_else(|| DialogError::not_found("conversation", id, None))?;
        let messages = items
            .iter()
            .map(|t| {
                Ok(TranscriptMessage {
                    message: Message::from_record(&t.item)?,
                    response_id: t.response_id.clone(),
                })
            })
            .collect::<Result<_, DialogError>>()?;
        Ok((object_summary(&object), messages))
    }

    /// A new answer to the last user message of conversation `fields.conversation_id`:
    /// the prompt is built on the history before that message, and committing the turn
    /// replaces that message and everything after it (if the conversation did not change
    /// meanwhile; else the commit fails with a conflict and nothing changes).
    pub async fn prepare_regeneration(
        &self,
        owner: &Owner,
        fields: ResponseFields,
        engine: &EngineHandle,
        rule: WindowRule,
    ) -> Result<PreparedTurn, DialogError> {
        let started = Instant::now();
        let conversation = fields.conversation_id.clone().ok_or_else(|| {
            DialogError::invalid("conversation_id", "`conversation_id` is required".into())
        })?;
        let anchor = Anchor::Conversation(conversation.clone());
        let context = self.context(owner, &anchor).await?;
        let Stamp::Conversation { version } = context.stamp else {
            return Err(DialogError::Internal(
                "a conversation's history has no version".into(),
            ));
        };
        let messages = &context.messages;
        let start = messages
            .iter()
            .rposition(|m| m.role == Role::User)
            .ok_or_else(|| {
                DialogError::invalid(
                    "conversation_id",
                    format!("conversation `{conversation}` has no message to answer again"),
                )
            })?;
        let question = Message {
            parts: messages[start].parts.clone(),
            ..Message::new(Role::User, "", crate::store::unix_now())
        };
        let base = TurnBase {
            anchor,
            context: Arc::new(Context {
                owner: owner.clone(),
                stamp: context.stamp.clone(),
                messages: Arc::new(messages[..start].to_vec()),
            }),
            replaces: Some(Replaced {
                item_ids: messages[start..].iter().map(|m| m.id.clone()).collect(),
                version,
            }),
            started,
        };
        let request = TurnRequest {
            input: vec![question],
            fields,
        };
        self.build_turn(owner, request, engine, rule, base).await
    }
}

/// The summary of a conversation object (`metadata.title`).
fn object_summary(object: &Value) -> Value {
    json!({
        "id": object["id"],
        "title": object["metadata"]["title"].as_str().unwrap_or(""),
        "created_at": object["created_at"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_cleaned_and_cut() {
        assert_eq!(clean_title("  a\u{0007}b\n "), "ab");
        assert_eq!(
            clean_title(&"é".repeat(300)).chars().count(),
            MAX_TITLE_CHARS
        );
        assert_eq!(clean_title("<script>x</script>"), "<script>x</script>");
    }
}
