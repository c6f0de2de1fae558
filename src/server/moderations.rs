//! The moderation routes and the policy's life in the server.
//!
//! - `POST /v1/moderations` (OpenAI's shape): checks a string or a list of strings (or
//!   text parts) against every rule of the policy, whatever its stages and action, and
//!   answers `results[]` with `flagged`, `categories` (every category of the policy) and
//!   `category_scores` (1.0 for a match, else 0.0; the policy has no probabilities).
//!   Without a policy it answers 400 `moderation_not_configured`: a server that checks
//!   nothing must not tell a client that text is clean. These checks are not counted as
//!   hits (they moderate no traffic).
//! - `POST /admin/v1/moderation/reload`: re-reads the policy file; guarded by
//!   `--admin-api-key` only (the ordinary API keys never open it; without an admin key
//!   the admin API answers 403). SIGHUP does the same (`reload_on_hangup`). A file that
//!   does not validate leaves the old policy in force and the answer (or log line) says
//!   why.
//! - `load_moderation`: the policy of `--moderation-policy`, counting hits in
//!   `tessera_moderation_hits_total`.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use prometheus::IntCounterVec;
use serde::Deserialize;
use serde_json::{json, Value};

use super::gate::{id_of, parse_json, read_body};
use super::request::JsonBody;
use super::state::{AppState, ServerConfig};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::safety::matcher::Context;
use crate::safety::normalize::Normalized;
use crate::safety::{Hit, HitSink, Moderation, ModerationError, Policy, Stage};

/// Most texts one `/v1/moderations` request may hold.
pub const MAX_MODERATION_INPUTS: usize = 2048;

/// Counts hits in `tessera_moderation_hits_total{stage, category, action}`.
struct MetricsSink(IntCounterVec);

impl HitSink for MetricsSink {
    fn hit(&self, _request_id: &str, hit: &Hit) {
        let labels = [hit.stage.as_str(), &hit.category, hit.action.as_str()];
        self.0.with_label_values(&labels).inc();
    }

    /// Exports every series the policy can produce, at zero, before its first hit.
    fn policy_loaded(&self, policy: &Policy) {
        for rule in &policy.rules {
            for stage in [Stage::Input, Stage::Output] {
                if rule.applies_to(stage) {
                    let labels = [stage.as_str(), &rule.category, rule.action.as_str()];
                    self.0.with_label_values(&labels);
                }
            }
        }
    }
}

/// The moderation of a server configured with `config` (off without a policy file).
pub fn load_moderation(config: &ServerConfig, metrics: &Metrics) -> Result<Moderation, String> {
    let sink = Arc::new(MetricsSink(metrics.moderation_hits()));
    let moderation = Moderation::new(config.moderation_policy.as_deref(), sink)
        .map_err(|e| format!("--moderation-policy: {e}"))?;
    if let Some(policy) = moderation.policy() {
        let (terms, patterns) = policy.counts();
        tracing::info!(
            path = %policy.path.display(),
            version = %policy.version,
            rules = policy.rules.len(),
            terms,
            patterns,
            "moderation policy loaded"
        );
    }
    Ok(moderation)
}

/// Reloads the policy on every SIGHUP until the server stops.
pub async fn reload_on_hangup(state: web::Data<AppState>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("SIGHUP cannot be handled, reload the policy over HTTP: {e}");
            return;
        }
    };
    while hangup.recv().await.is_some() {
        // The outcome is logged either way.
        let _ = reload_blocking(&state).await;
    }
}

/// Reloads off the async workers (reading and compiling may take a while) and logs the
/// outcome.
async fn reload_blocking(state: &web::Data<AppState>) -> Result<Arc<Policy>, ApiError> {
    let previous = state.moderation.policy().map(|p| p.version.clone());
    let for_reload = state.clone();
    let reloaded = actix_web::rt::task::spawn_blocking(move || for_reload.moderation.reload())
        .await
        .map_err(|e| ApiError::Internal(format!("policy reload task failed: {e}")))
        .and_then(|r| r.map_err(ApiError::from));
    match &reloaded {
        Ok(policy) => tracing::info!(
            version = %policy.version,
            previous = previous.as_deref().unwrap_or("none"),
            rules = policy.rules.len(),
            "moderation policy reloaded"
        ),
        Err(e) => tracing::warn!(error = %e, "moderation policy reload refused"),
    }
    reloaded
}

/// `POST /admin/v1/moderation/reload`.
pub async fn reload(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    // `routes::ADMIN_ROUTES` puts this route behind the admin key (see `access`).
    if state.moderation.path().is_none() {
        return Err(ModerationError::NotConfigured.into());
    }
    let previous = state.moderation.policy().map(|p| p.version.clone());
    let policy = reload_blocking(&state).await?;
    let (terms, patterns) = policy.counts();
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({
            "object": "moderation.policy",
            "path": policy.path.display().to_string(),
            "version": policy.version,
            "previous_version": previous,
            "rules": policy.rules.len(),
            "terms": terms,
            "patterns": patterns,
        })))
}

/// `POST /v1/moderations` body.
#[derive(Debug, Deserialize)]
pub struct ModerationRequest {
    pub input: Option<ModerationInput>,
    pub model: Option<String>,
}

impl JsonBody for ModerationRequest {}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ModerationInput {
    One(String),
    Many(Vec<ModerationItem>),
}

/// One entry of a list: a string or a content part (`{"type": "text", "text": …}`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ModerationItem {
    Text(String),
    Part {
        #[serde(rename = "type")]
        kind: String,
        text: Option<String>,
    },
}

fn invalid(param: String, message: String) -> ApiError {
    ApiError::InvalidRequest {
        message,
        param: Some(param),
    }
}

/// The texts of a request, in order.
fn texts(input: Option<ModerationInput>) -> Result<Vec<String>, ApiError> {
    let items = match input {
        None => return Err(invalid("input".into(), "`input` is required".into())),
        Some(ModerationInput::One(text)) => return Ok(vec![text]),
        Some(ModerationInput::Many(items)) => items,
    };
    if items.is_empty() || items.len() > MAX_MODERATION_INPUTS {
        return Err(invalid(
            "input".into(),
            format!(
                "`input` must hold 1 to {MAX_MODERATION_INPUTS} texts. Given: {}",
                items.len()
            ),
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            ModerationItem::Text(text) => Ok(text),
            ModerationItem::Part { kind, text } => match (kind.as_str(), text) {
                ("text", Some(text)) => Ok(text),
                ("text", None) => Err(invalid(
                    format!("input[{i}].text"),
                    format!("`input[{i}].text` is required for a text part"),
                )),
                (other, _) => Err(ApiError::Unsupported {
                    param: format!("input[{i}].type"),
                    detail: format!(" for `{other}` parts (only text is moderated)"),
                }),
            },
        })
        .collect()
}

/// One `results[]` entry: which rules of either stage match `text`.
fn moderate(policy: &Policy, text: &str) -> Value {
    let n = Normalized::new(text);
    let mut hit_rules = vec![false; policy.rules.len()];
    for stage in [Stage::Input, Stage::Output] {
        if let Some(matcher) = policy.matcher(stage) {
            for m in matcher.find(&n, &Context::WHOLE) {
                hit_rules[m.rule as usize] = true;
            }
        }
    }
    let mut categories: BTreeMap<&str, bool> = BTreeMap::new();
    for (rule, hit) in policy.rules.iter().zip(&hit_rules) {
        *categories.entry(&rule.category).or_default() |= hit;
    }
    let scores: BTreeMap<&str, f64> = categories
        .iter()
        .map(|(&c, &hit)| (c, if hit { 1.0 } else { 0.0 }))
        .collect();
    json!({
        "flagged": hit_rules.contains(&true),
        "categories": categories,
        "category_scores": scores,
    })
}

/// `POST /v1/moderations`.
pub async fn moderations(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, body, state.config.max_request_bytes).await?;
    let policy = state
        .moderation
        .policy()
        .ok_or(ModerationError::NotConfigured)?;
    let job_policy = policy.clone();
    // Normalizing and matching up to a whole body's text: on the CPU pool.
    let results: Vec<Value> = state
        .cpu
        .run(move || {
            let parsed: ModerationRequest = parse_json(&body)?;
            Ok(texts(parsed.input)?
                .iter()
                .map(|text| moderate(&job_policy, text))
                .collect())
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({
        "id": format!("modr-{}", id_of(&req)),
        "model": format!("tessera-policy-{}", policy.version),
        "results": results,
    })))
}

#[cfg(test)]
mod tests;
