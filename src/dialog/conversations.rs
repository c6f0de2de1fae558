//! Conversations: create, read, update metadata, delete, and their items (list, add,
//! read, remove). A conversation keeps every item ever added; the window only limits
//! what a prompt sees.
//!
//! Invariants: at most `MAX_ITEMS_PER_CALL` items are added by one call (OpenAI's
//! limit); metadata is at most 16 string pairs (keys ≤ 64 characters, values ≤ 512);
//! every write that changes a conversation's items drops its hot-cache entry.

use serde_json::{json, Map, Value};

use super::items::{new_id, Message};
use super::objects::{conversation_object, item_list};
use super::turn::list_of;
use super::{Dialog, DialogError, ListQuery};
use crate::store::{ConversationRecord, Owner};

/// Most items one create or add call may carry.
pub const MAX_ITEMS_PER_CALL: usize = 20;

const MAX_METADATA_PAIRS: usize = 16;
const MAX_METADATA_KEY: usize = 64;
const MAX_METADATA_VALUE: usize = 512;

/// Checks `metadata` (absent or null: `{}`) against OpenAI's limits.
pub fn metadata(value: Option<&Value>) -> Result<Value, DialogError> {
    let map = match value {
        None | Some(Value::Null) => return Ok(Value::Object(Map::new())),
        Some(Value::Object(map)) => map,
        Some(_) => {
            return Err(DialogError::invalid(
                "metadata",
                "`metadata` must be an object".into(),
            ))
        }
    };
    if map.len() > MAX_METADATA_PAIRS {
        return Err(DialogError::invalid(
            "metadata",
            format!(
                "`metadata` may hold at most {MAX_METADATA_PAIRS} pairs. Given: {}",
                map.len()
            ),
        ));
    }
    for (key, value) in map {
        if key.chars().count() > MAX_METADATA_KEY {
            return Err(DialogError::invalid(
                "metadata",
                format!(
                    "`metadata` keys must be at most {MAX_METADATA_KEY} characters. Given: {key:?}"
                ),
            ));
        }
        match value.as_str() {
            Some(s) if s.chars().count() <= MAX_METADATA_VALUE => {}
            _ => {
                return Err(DialogError::invalid(
                    &format!("metadata.{key}"),
                    format!(
                    "`metadata.{key}` must be a string of at most {MAX_METADATA_VALUE} characters"
                ),
                ))
            }
        }
    }
    Ok(Value::Object(map.clone()))
}

fn check_count(items: &[Message], param: &str) -> Result<(), DialogError> {
    if items.len() > MAX_ITEMS_PER_CALL {
        return Err(DialogError::invalid(
            param,
            format!(
                "`{param}` may add at most {MAX_ITEMS_PER_CALL} items at a time. Given: {}",
                items.len()
            ),
        ));
    }
    Ok(())
}

fn parse_metadata(record: &ConversationRecord) -> Result<Value, DialogError> {
    serde_json::from_str(&record.metadata).map_err(|e| {
        DialogError::Internal(format!(
            "stored conversation {} is malformed: {e}",
            record.id
        ))
    })
}

fn object_of(record: &ConversationRecord) -> Result<Value, DialogError> {
    Ok(conversation_object(
        &record.id,
        record.created_at,
        &parse_metadata(record)?,
    ))
}

impl Dialog {
    /// Creates a conversation with optional initial items; the conversation object.
    pub async fn create_conversation(
        &self,
        owner: &Owner,
        items: Vec<Message>,
        metadata: Value,
    ) -> Result<Value, DialogError> {
        check_count(&items, "items")?;
        let record = ConversationRecord {
            id: new_id("conv"),
            created_at: crate::store::unix_now(),
            metadata: metadata.to_string(),
            version: 1,
        };
        let object = conversation_object(&record.id, record.created_at, &metadata);
        let o = owner.clone();
        let records: Vec<_> = items.iter().map(Message::to_record).collect();
        self.pool
            .run(move |s| s.create_conversation(&o, &record, &records))
            .await?;
        Ok(object)
    }

    pub async fn conversation(&self, owner: &Owner, id: &str) -> Result<Value, DialogError> {
        let (o, k) = (owner.clone(), id.to_string());
        let record = self.pool.run(move |s| s.conversation(&o, &k)).await?;
        object_of(&record.ok_or_else(|| DialogError::not_found("conversation", id, None))?)
    }

    /// Replaces the metadata; the updated conversation object.
    pub async fn update_conversation(
        &self,
        owner: &Owner,
        id: &str,
        metadata: Value,
    ) -> Result<Value, DialogError> {
        let m = metadata.to_string();
        let record = self.run_on(owner, "conversation", id, move |s, o, k| {
            s.set_conversation_metadata(o, k, &m)
        });
        object_of(&record.await?)
    }

    /// Deletes a conversation; the deletion object.
    pub async fn delete_conversation(&self, owner: &Owner, id: &str) -> Result<Value, DialogError> {
        let (o, k) = (owner.clone(), id.to_string());
        let deleted = self
            .pool
            .run(move |s| s.delete_conversation(&o, &k))
            .await?;
        self.cache.remove(id);
        if !deleted {
            return Err(DialogError::not_found("conversation", id, None));
        }
        Ok(json!({"id": id, "object": "conversation.deleted", "deleted": true}))
    }

    /// A page of a conversation's items (a list object).
    pub async fn conversation_items(
        &self,
        owner: &Owner,
        id: &str,
        query: &ListQuery,
    ) -> Result<Value, DialogError> {
        let q = query.page();
        let page = self.run_on(owner, "conversation", id, move |s, o, k| {
            s.conversation_items(o, k, &q)
        });
        list_of(&page.await?)
    }

    /// Appends items; the list of the items added.
    pub async fn add_items(
        &self,
        owner: &Owner,
        id: &str,
        items: Vec<Message>,
    ) -> Result<Value, DialogError> {
        check_count(&items, "items")?;
        let json: Vec<Value> = items.iter().map(Message::to_json).collect();
        let records: Vec<_> = items.iter().map(Message::to_record).collect();
        let result = self
            .run_on(owner, "conversation", id, move |s, o, k| {
                s.append_items(o, k, &records)
            })
            .await;
        self.cache.remove(id);
        result?;
        Ok(item_list(&json, false))
    }

    pub async fn conversation_item(
        &self,
        owner: &Owner,
        id: &str,
        item_id: &str,
    ) -> Result<Value, DialogError> {
        self.conversation(owner, id).await?;
        let (o, k, i) = (owner.clone(), id.to_string(), item_id.to_string());
        let record = self
            .pool
            .run(move |s| s.conversation_item(&o, &k, &i))
            .await?;
        let record = record.ok_or_else(|| DialogError::not_found("item", item_id, None))?;
        serde_json::from_str(&record.body)
            .map_err(|e| DialogError::Internal(format!("stored item {item_id} is malformed: {e}")))
    }

    /// Removes an item from a conversation; the conversation object.
    pub async fn delete_item(
        &self,
        owner: &Owner,
        id: &str,
        item_id: &str,
    ) -> Result<Value, DialogError> {
        let (o, k, i) = (owner.clone(), id.to_string(), item_id.to_string());
        let result = self
            .pool
            .run(move |s| s.delete_conversation_item(&o, &k, &i))
            .await;
        self.cache.remove(id);
        result.map_err(|e| match e {
            crate::store::StoreError::NotFound("item") => {
                DialogError::not_found("item", item_id, None)
            }
            other => DialogError::from_store(other, "conversation", id),
        })?;
        self.conversation(owner, id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_limits_are_checked() {
        assert_eq!(metadata(None).expect("empty"), json!({}));
        assert!(metadata(Some(&json!({"a": "b"}))).is_ok());
        assert!(metadata(Some(&json!({"a": 1}))).is_err());
        assert!(metadata(Some(&json!({"k".repeat(65): "v"}))).is_err());
        assert!(metadata(Some(&json!({"k": "v".repeat(513)}))).is_err());
        let many: Map<String, Value> = (0..17).map(|i| (i.to_string(), json!("v"))).collect();
        assert!(metadata(Some(&Value::Object(many))).is_err());
        assert!(metadata(Some(&json!([]))).is_err());
    }
}
