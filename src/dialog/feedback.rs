//! Feedback on answers: a thumbs up or down (and an optional comment) on a response,
//! from the chat page (WebSocket `feedback`) or the API (`POST
//! /v1/responses/{id}/feedback`), and its export as fine-tuning data
//! (`tessera feedback export`: `{"messages": [...]}` per line, good and bad apart).
//!
//! A rating keeps the dialog it rated as it stood then: the response's `instructions`
//! (as the system message), its history (the conversation up to and including the
//! answer, or its `previous_response_id` chain) and the answer. So the export is what
//! the user saw, even after a later regeneration took the answer out of the
//! conversation. Deleting the conversation or the response deletes its ratings.
//!
//! Invariants: one rating per response (rating again replaces it); only a stored
//! response of the caller can be rated (else 404); comments are at most
//! `MAX_COMMENT_CHARS` characters.

use serde_json::{json, Value};

use super::items::Message;
use super::{Dialog, DialogError};
use crate::store::{FeedbackRecord, Owner, StorePool};

/// Longest comment kept with a rating (characters).
pub const MAX_COMMENT_CHARS: usize = 2000;

/// Thumbs up or down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rating {
    Good,
    Bad,
}

impl Rating {
    /// `"up"` / `"down"` (also `"good"` / `"bad"`).
    pub fn parse(value: &str) -> Result<Self, DialogError> {
        match value {
            "up" | "good" => Ok(Rating::Good),
            "down" | "bad" => Ok(Rating::Bad),
            other => Err(DialogError::invalid(
                "rating",
                format!("`rating` must be `up` or `down`. Given: {other:?}"),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Rating::Good => "up",
            Rating::Bad => "down",
        }
    }

    fn score(self) -> i64 {
        match self {
            Rating::Good => 1,
            Rating::Bad => -1,
        }
    }
}

/// Checks a comment's length; empty is none.
pub fn check_comment(comment: Option<String>) -> Result<Option<String>, DialogError> {
    match comment {
        Some(c) if c.chars().count() > MAX_COMMENT_CHARS => Err(DialogError::invalid(
            "comment",
            format!(
                "`comment` must be at most {MAX_COMMENT_CHARS} characters. Given: {}",
                c.chars().count()
            ),
        )),
        Some(c) if c.trim().is_empty() => Ok(None),
        other => Ok(other),
    }
}

/// `{"role", "content"}` of a message, with the roles fine-tuning formats know.
fn chat_message(m: &Message) -> Value {
    json!({"role": m.role.template_role(), "content": m.text()})
}

impl Dialog {
    /// Records `rating` of stored response `response_id`; the feedback object.
    pub async fn rate(
        &self,
        owner: &Owner,
        response_id: &str,
        rating: Rating,
        comment: Option<String>,
    ) -> Result<Value, DialogError> {
        let comment = check_comment(comment)?;
        let response = self.response(owner, response_id).await?;
        let conversation_id = response["conversation"]["id"].as_str().map(str::to_string);
        let mut messages: Vec<Value> = response["instructions"]
            .as_str()
            .map(|text| json!({"role": "system", "content": text}))
            .into_iter()
            .collect();
        let dialog = self
            .rated_dialog(owner, response_id, conversation_id.as_deref(), &response)
            .await?;
        messages.extend(dialog.iter().map(chat_message));
        let record = FeedbackRecord {
            response_id: response_id.to_string(),
            conversation_id,
            rating: rating.score(),
            comment: comment.clone(),
            messages: Value::Array(messages).to_string(),
            created_at: crate::store::unix_now(),
        };
        let created_at = record.created_at;
        let o = owner.clone();
        self.pool
            .run(move |s| s.put_feedback(&o, &record))
            .await
            .map_err(|e| DialogError::from_store(e, "response", response_id))?;
        Ok(json!({
            "object": "response.feedback",
            "response_id": response_id,
            "rating": rating.as_str(),
            "comment": comment,
            "created_at": created_at,
        }))
    }

    /// The dialog a response answered, ending with its answer: the conversation up to
    /// the answer while the answer is still in it, else the response's own chain.
    async fn rated_dialog(
        &self,
        owner: &Owner,
        response_id: &str,
        conversation_id: Option<&str>,
        response: &Value,
    ) -> Result<Vec<Message>, DialogError> {
        let answer_id = response["output"][0]["id"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if let Some(conv) = conversation_id {
            let (o, k) = (owner.clone(), conv.to_string());
            let history = self
                .pool
                .run(move |s| s.conversation_history(&o, &k))
                .await?;
            if let Some(history) = history {
                if let Some(end) = history.items.iter().position(|i| i.id == answer_id) {
                    return history.items[..=end]
                        .iter()
                        .map(Message::from_record)
                        .collect();
                }
            }
        }
        let (o, k) = (owner.clone(), response_id.to_string());
        let chain = self
            .pool
            .run(move |s| s.response_history(&o, &k))
            .await?
            .ok_or_else(|| DialogError::not_found("response", response_id, None))?;
        chain.items.iter().map(Message::from_record).collect()
    }
}

/// Fine-tuning lines of the ratings made in a period, good and bad apart.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FeedbackExport {
    /// `{"messages": [...]}` per rated-up answer.
    pub good: Vec<String>,
    pub bad: Vec<String>,
}

/// Reads every owner's ratings made in `[since, until)` (seconds) from `pool`, blocking
/// (the `tessera feedback export` command, not an async worker).
pub fn export_feedback(
    pool: &StorePool,
    since: i64,
    until: i64,
) -> Result<FeedbackExport, DialogError> {
    let records = pool.run_blocking(move |s| s.feedback_between(since, until))?;
    let mut out = FeedbackExport::default();
    for r in records {
        let messages: Value = serde_json::from_str(&r.messages).map_err(|e| {
            DialogError::Internal(format!(
                "stored feedback of {} is malformed: {e}",
                r.response_id
            ))
        })?;
        let line = json!({ "messages": messages }).to_string();
        if r.rating > 0 {
            out.good.push(line);
        } else {
            out.bad.push(line);
        }
    }
    Ok(out)
}

/// Seconds since the epoch of a UTC date `YYYY-MM-DD` (its midnight) or date-time
/// `YYYY-MM-DDTHH:MM:SS[Z]`.
pub fn parse_date(text: &str) -> Result<i64, String> {
    let bad = || format!("expected a date YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ. Given: {text:?}");
    let (date, time) = match text.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t.trim_end_matches('Z'))),
        None => (text, None),
    };
    let num = |s: &str| s.parse::<i64>().map_err(|_| bad());
    let ymd: Vec<&str> = date.split('-').collect();
    let [y, m, d] = ymd[..] else {
        return Err(bad());
    };
    let (y, m, d) = (num(y)?, num(m)?, num(d)?);
    if !(1..=12).contains(&m) || !(1..=days_in_month(y, m)).contains(&d) || y < 1970 {
        return Err(bad());
    }
    let seconds = match time {
        None => 0,
        Some(t) => {
            let hms: Vec<&str> = t.split(':').collect();
            let [h, mi, s] = hms[..] else {
                return Err(bad());
            };
            let (h, mi, s) = (num(h)?, num(mi)?, num(s)?);
            if h > 23 || mi > 59 || s > 59 || h < 0 || mi < 0 || s < 0 {
                return Err(bad());
            }
            h * 3600 + mi * 60 + s
        }
    };
    Ok(days_from_civil(y, m, d) * 86_400 + seconds)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to `y-m-d` (proleptic Gregorian; Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_to_utc_seconds() {
        assert_eq!(parse_date("1970-01-01"), Ok(0));
        assert_eq!(parse_date("2000-03-01"), Ok(951_868_800));
        assert_eq!(parse_date("2024-02-29T12:30:05Z"), Ok(1_709_209_805));
        for bad in [
            "2023-02-29",
            "2024-13-01",
            "yesterday",
            "2024-01-01T25:00:00",
            "",
        ] {
            assert!(parse_date(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ratings_and_comments_are_checked() {
        assert_eq!(Rating::parse("up").ok().map(Rating::as_str), Some("up"));
        assert_eq!(Rating::parse("bad").ok().map(Rating::as_str), Some("down"));
        assert!(Rating::parse("meh").is_err());
        assert_eq!(check_comment(Some("  ".into())).ok(), Some(None));
        assert!(check_comment(Some("x".repeat(MAX_COMMENT_CHARS + 1))).is_err());
    }
}
