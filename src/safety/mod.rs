//! Content safety: the moderation policy and its two automatic levels.
//!
//! - `policy`: the TOML policy (rules with a category, an action and stages; literal terms
//!   and patterns), validated and compiled; `normalize` + `matcher` find rule hits in text
//!   despite the common evasions.
//! - `input`: level 1, the check of user input before tokenization (block → 400, mask →
//!   `*`s, flag → recorded).
//! - `guard`: level 2, the output stream guard that holds back text which could still
//!   become a match, masks, and cuts the stream on a block hit.
//!
//! `Moderation` holds the current policy and swaps it atomically on reload; a request
//! takes one snapshot (`Moderation::screen`) and keeps it to its end, so a reload never
//! changes the rules under a running request. Without a policy `screen` returns `None`
//! and no moderation code runs on the request path at all.
//!
//! Every hit goes to a `HitSink` as it happens (the metrics today; the conversation log
//! and the review queue plug in here), and each request's hits are handed to it once
//! more when the request's `Screen` is dropped (`HitSink::finished`).

pub mod guard;
pub mod input;
pub mod matcher;
pub mod normalize;
pub mod policy;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

pub use guard::{OutputGuard, Released};
pub use input::InputText;
pub use policy::{Action, Policy, PolicyError, Stage};

/// One rule matched.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub stage: Stage,
    /// Index of the rule in `Policy::rules`.
    pub rule: usize,
    pub category: String,
    pub action: Action,
    /// Input: the prompt's index (0 for chat). Output: the choice's index.
    pub index: usize,
    /// Input: the field it was found in, e.g. `messages[2].content`.
    pub param: Option<String>,
    /// The matched text as sent by the client or written by the model.
    pub text: String,
}

/// Where hits go besides the response.
pub trait HitSink: Send + Sync {
    /// One hit, as it happens (input check, output stream).
    fn hit(&self, request_id: &str, hit: &Hit);
    /// A request is over; `hits` are all of its hits (possibly none).
    fn finished(&self, _request_id: &str, _hits: &[Hit]) {}
    /// A policy was loaded or reloaded.
    fn policy_loaded(&self, _policy: &Policy) {}
}

/// A sink that drops everything (tests, tools).
pub struct NoSink;

impl HitSink for NoSink {
    fn hit(&self, _request_id: &str, _hit: &Hit) {}
}

/// Why moderation refused a request or an operation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModerationError {
    /// A `block` rule matched the input; `message` is the policy's `blocked_message`.
    #[error("{message}")]
    Blocked { param: String, message: String },
    #[error(
        "`{param}` has {given} characters; the moderation policy's limit (max_input_chars) is {limit}"
    )]
    TooLong {
        param: String,
        limit: usize,
        given: usize,
    },
    #[error(
        "`{param}` contains the control character U+{code:04X} at character {at}; the moderation policy refuses control characters"
    )]
    ControlChar { param: String, code: u32, at: usize },
    #[error("this server has no moderation policy (start it with --moderation-policy PATH)")]
    NotConfigured,
    #[error("the moderation policy was not reloaded; the previous one stays in force: {0}")]
    Reload(PolicyError),
}

/// The current policy, swapped whole on reload.
pub struct Moderation {
    /// The policy file (`None`: moderation is off).
    path: Option<PathBuf>,
    current: RwLock<Option<Arc<Policy>>>,
    sink: Arc<dyn HitSink>,
}

impl Moderation {
    /// No policy: no moderation.
    pub fn off() -> Self {
        Self {
            path: None,
            current: RwLock::new(None),
            sink: Arc::new(NoSink),
        }
    }

    /// Loads the policy at `path` (`None`: moderation off); hits go to `sink`.
    pub fn new(path: Option<&Path>, sink: Arc<dyn HitSink>) -> Result<Self, PolicyError> {
        let policy = match path {
            Some(path) => {
                let policy = Policy::load(path)?;
                sink.policy_loaded(&policy);
                Some(Arc::new(policy))
            }
            None => None,
        };
        Ok(Self {
            path: path.map(Path::to_path_buf),
            current: RwLock::new(policy),
            sink,
        })
    }

    /// The policy file, when moderation is on.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The policy in force now.
    pub fn policy(&self) -> Option<Arc<Policy>> {
        self.path.as_ref()?;
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// One request's snapshot of the policy; `None` when moderation is off (then
    /// `request_id` is not even called).
    pub fn screen(&self, request_id: impl FnOnce() -> String) -> Option<Arc<Screen>> {
        let policy = self.policy()?;
        Some(Arc::new(Screen {
            policy,
            sink: self.sink.clone(),
            request_id: request_id(),
            hits: Mutex::new(Vec::new()),
        }))
    }

    /// Reads the policy file again and swaps it in; on any error the old policy stays.
    /// Blocks on file reading and compiling: call it off the async workers.
    pub fn reload(&self) -> Result<Arc<Policy>, ModerationError> {
        let path = self.path.as_ref().ok_or(ModerationError::NotConfigured)?;
        let policy = Arc::new(Policy::load(path).map_err(ModerationError::Reload)?);
        self.sink.policy_loaded(&policy);
        match self.current.write() {
            Ok(mut guard) => *guard = Some(policy.clone()),
            Err(poisoned) => *poisoned.into_inner() = Some(policy.clone()),
        }
        Ok(policy)
    }
}

/// One request's moderation: the policy it started with and the hits so far.
pub struct Screen {
    policy: Arc<Policy>,
    sink: Arc<dyn HitSink>,
    request_id: String,
    hits: Mutex<Vec<Hit>>,
}

impl Screen {
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// The hits so far, of `stage` (and of output `choice` when given).
    pub fn hits(&self, stage: Stage, choice: Option<usize>) -> Vec<Hit> {
        let hits = match self.hits.lock() {
            Ok(h) => h,
            Err(poisoned) => poisoned.into_inner(),
        };
        hits.iter()
            .filter(|h| h.stage == stage && choice.is_none_or(|c| h.index == c))
            .cloned()
            .collect()
    }

    /// Records `hit` and hands it to the sink.
    pub(crate) fn record(&self, hit: Hit) {
        self.sink.hit(&self.request_id, &hit);
        match self.hits.lock() {
            Ok(mut hits) => hits.push(hit),
            Err(poisoned) => poisoned.into_inner().push(hit),
        }
    }

    /// The stream guard of output `choice`; `None` when no rule applies to output.
    pub fn output_guard(self: &Arc<Self>, choice: usize) -> Option<OutputGuard> {
        self.policy.output.as_ref()?;
        Some(OutputGuard::new(self.clone(), choice))
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let hits = match self.hits.get_mut() {
            Ok(h) => std::mem::take(h),
            Err(poisoned) => std::mem::take(poisoned.into_inner()),
        };
        self.sink.finished(&self.request_id, &hits);
    }
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
