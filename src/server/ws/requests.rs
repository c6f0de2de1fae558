//! The chat messages answered at once (no generation): conversations (create, list,
//! open, rename, delete) and ratings, each through the dialog layer with the socket's
//! owner — the same operations, limits and errors as the HTTP routes.

use serde_json::{json, Value};

use super::protocol::{message, ClientMessage};
use crate::dialog::chat::TranscriptMessage;
use crate::dialog::feedback::Rating;
use crate::error::ApiError;
use crate::server::dialog_http::dialog;
use crate::server::state::AppState;
use crate::store::Owner;

/// The answer to `msg` (the `id` it carried echoed).
pub async fn answer(
    state: &AppState,
    owner: &Owner,
    id: Option<&str>,
    msg: ClientMessage,
) -> Result<Value, ApiError> {
    let dialog = dialog(state)?;
    Ok(match msg {
        ClientMessage::Create(create) => {
            let title = create.title.unwrap_or_default();
            let conversation = dialog.create_titled(owner, &title).await?;
            message(
                "conversation.created",
                id,
                json!({ "conversation": conversation }),
            )
        }
        ClientMessage::List => {
            let conversations = dialog.list_conversations(owner).await?;
            message(
                "conversation.list",
                id,
                json!({ "conversations": conversations }),
            )
        }
        ClientMessage::Open(target) => {
            let (conversation, items) = dialog.transcript(owner, &target.id).await?;
            let items: Vec<Value> = items.iter().map(TranscriptMessage::to_json).collect();
            message(
                "conversation.history",
                id,
                json!({"conversation": conversation, "items": items}),
            )
        }
        ClientMessage::Rename(rename) => {
            let conversation = dialog.rename(owner, &rename.id, &rename.title).await?;
            message(
                "conversation.renamed",
                id,
                json!({ "conversation": conversation }),
            )
        }
        ClientMessage::Delete(target) => {
            dialog.delete_conversation(owner, &target.id).await?;
            message(
                "conversation.deleted",
                id,
                json!({ "conversation_id": target.id }),
            )
        }
        ClientMessage::Feedback(f) => {
            let rating = Rating::parse(&f.rating)?;
            let feedback = dialog
                .rate(owner, &f.response_id, rating, f.comment)
                .await?;
            message("feedback.recorded", id, json!({ "feedback": feedback }))
        }
        other => {
            return Err(ApiError::Internal(format!(
                "the socket does not answer {other:?} here"
            )))
        }
    })
}
