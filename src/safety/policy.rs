//! The moderation policy: its TOML file (format in `deploy/moderation/example.toml`),
//! validation with errors that name the rule and the field, and the compiled form.
//!
//! ```toml
//! [input]
//! max_input_chars = 512          # per user message / prompt, in characters
//! reject_control_chars = true    # default true
//! blocked_message = "输入包含敏感内容,请重新表述"
//!
//! [[rule]]
//! category = "violence"
//! action = "block"               # block | mask | flag
//! stages = ["input", "output"]   # default: both
//! terms = ["炸弹", "make a bomb"]
//! terms_file = "violence.txt"    # one term per line, relative to this file; # comments
//! patterns = ['1[3-9]\d{9}']     # regular expressions, case-insensitive
//! ```
//!
//! Invariants of a `Policy`: every rule has at least one term or pattern; every term has
//! 1..=`MAX_TERM_CHARS` letters or digits after normalization; every pattern compiles and
//! cannot match the empty text; an output-stage pattern matches at most
//! `MAX_PATTERN_CHARS` characters (the stream guard must know how much to hold back).
//! A policy never changes once built: reloading builds a new one.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::matcher::{Matcher, Pattern, Term, MAX_PATTERN_CHARS, MAX_TERM_CHARS};
use super::normalize::Normalized;

/// Largest policy file or terms file read.
pub const MAX_FILE_BYTES: u64 = 32 << 20;
/// Longest category name (it is a metric label value).
const MAX_CATEGORY_CHARS: usize = 64;
/// The message of a blocked input when the policy gives none.
pub const DEFAULT_BLOCKED_MESSAGE: &str =
    "the input was blocked by the content policy; please rephrase it";

/// What a rule does to the text it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Let it through and record the hit.
    Flag,
    /// Replace each matched character with `*`.
    Mask,
    /// Refuse the input (400) or cut the output (`finish_reason: content_filter`).
    Block,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Block => "block",
            Action::Mask => "mask",
            Action::Flag => "flag",
        }
    }
}

/// Where a rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Input,
    Output,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Input => "input",
            Stage::Output => "output",
        }
    }
}

/// A policy file could not be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read `{path}`: {message}")]
    Read { path: String, message: String },
    #[error("`{path}` is not a valid policy file: {message}")]
    Parse { path: String, message: String },
    #[error("`{path}`: [input] `{field}` {message}")]
    Input {
        path: String,
        field: &'static str,
        message: String,
    },
    #[error("`{path}`: rule {rule} (category {category:?}): `{field}` {message}")]
    Rule {
        path: String,
        /// 1-based position of the `[[rule]]`.
        rule: usize,
        category: String,
        field: &'static str,
        message: String,
    },
}

/// `[input]`: rules for user input besides the terms and patterns.
#[derive(Debug, Clone, PartialEq)]
pub struct InputRules {
    /// Most characters in one user message or prompt.
    pub max_input_chars: Option<usize>,
    /// Refuse C0/C1 control characters other than tab, line feed and carriage return.
    pub reject_control_chars: bool,
    /// The message of a 400 for blocked input.
    pub blocked_message: String,
}

/// One `[[rule]]`, as far as matching results need it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub category: String,
    pub action: Action,
    pub input: bool,
    pub output: bool,
    pub num_terms: usize,
    pub num_patterns: usize,
}

impl Rule {
    pub fn applies_to(&self, stage: Stage) -> bool {
        match stage {
            Stage::Input => self.input,
            Stage::Output => self.output,
        }
    }
}

/// A loaded, validated policy.
pub struct Policy {
    /// The file it was read from.
    pub path: PathBuf,
    /// Hash of the policy file and its terms files (FNV-1a, 16 hex digits).
    pub version: String,
    pub input_rules: InputRules,
    pub rules: Vec<Rule>,
    /// Matchers of the rules of each stage; `None` when no rule applies there.
    pub input: Option<Matcher>,
    pub output: Option<Matcher>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("rules", &self.rules.len())
            .finish()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputSection {
    max_input_chars: Option<i64>,
    reject_control_chars: Option<bool>,
    blocked_message: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSection {
    category: Option<String>,
    action: Option<String>,
    stages: Option<Vec<String>>,
    #[serde(default)]
    terms: Vec<String>,
    terms_file: Option<String>,
    #[serde(default)]
    patterns: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    input: InputSection,
    #[serde(default)]
    rule: Vec<RuleSection>,
}

fn read_limited(path: &Path) -> Result<Vec<u8>, PolicyError> {
    let err = |message: String| PolicyError::Read {
        path: path.display().to_string(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(err(format!(
            "it has {} bytes; the limit is {MAX_FILE_BYTES}",
            meta.len()
        )));
    }
    std::fs::read(path).map_err(|e| err(e.to_string()))
}

/// FNV-1a over the bytes of every file the policy was built from.
struct Fingerprint(u64);

impl Fingerprint {
    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Everything one stage's matcher is built from.
#[derive(Default)]
struct StageParts {
    terms: Vec<Term>,
    patterns: Vec<Pattern>,
}

impl Policy {
    /// Reads, validates and compiles the policy at `path`.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        Self::from_bytes(path, &read_limited(path)?)
    }

    /// Validates and compiles the policy file `bytes` read from `path` (its `terms_file`s
    /// are relative to `path`'s folder).
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Policy, PolicyError> {
        let shown = path.display().to_string();
        let mut fingerprint = Fingerprint(0xcbf2_9ce4_8422_2325);
        fingerprint.add(bytes);
        let text = std::str::from_utf8(bytes).map_err(|e| PolicyError::Parse {
            path: shown.clone(),
            message: format!("not UTF-8: {e}"),
        })?;
        let file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError::Parse {
            path: shown.clone(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let input_rules = input_rules(&shown, file.input)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let (mut input, mut output) = (StageParts::default(), StageParts::default());
        let mut rules = Vec::with_capacity(file.rule.len());
        for (i, section) in file.rule.into_iter().enumerate() {
            let at = RuleAt {
                path: &shown,
                rule: i + 1,
                category: section.category.clone().unwrap_or_default(),
            };
            let rule = at.build(section, base, &mut fingerprint, i as u32)?;
            let (meta, terms, patterns) = rule;
            if meta.input {
                input.terms.extend(terms.iter().cloned());
                input.patterns.extend(patterns.iter().cloned());
            }
            if meta.output {
                output.terms.extend(terms);
                output.patterns.extend(patterns);
            }
            rules.push(meta);
        }
        let compile = |parts: StageParts| -> Result<Option<Matcher>, PolicyError> {
            if parts.terms.is_empty() && parts.patterns.is_empty() {
                return Ok(None);
            }
            Matcher::new(&parts.terms, parts.patterns)
                .map(Some)
                .map_err(|message| PolicyError::Parse {
                    path: shown.clone(),
                    message,
                })
        };
        Ok(Policy {
            path: path.to_path_buf(),
            version: format!("{:016x}", fingerprint.0),
            input_rules,
            input: compile(input)?,
            output: compile(output)?,
            rules,
        })
    }

    /// The matcher of `stage`.
    pub fn matcher(&self, stage: Stage) -> Option<&Matcher> {
        match stage {
            Stage::Input => self.input.as_ref(),
            Stage::Output => self.output.as_ref(),
        }
    }

    /// Terms and patterns over all rules.
    pub fn counts(&self) -> (usize, usize) {
        self.rules
            .iter()
            .fold((0, 0), |(t, p), r| (t + r.num_terms, p + r.num_patterns))
    }
}

fn input_rules(path: &str, s: InputSection) -> Result<InputRules, PolicyError> {
    let err = |field, message: String| PolicyError::Input {
        path: path.to_string(),
        field,
        message,
    };
    let max_input_chars = match s.max_input_chars {
        None => None,
        Some(n) if n >= 1 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        Some(n) => return Err(err("max_input_chars", format!("must be >= 1. Given: {n}"))),
    };
    let blocked_message = s
        .blocked_message
        .unwrap_or_else(|| DEFAULT_BLOCKED_MESSAGE.to_string());
    if blocked_message.trim().is_empty() {
        return Err(err("blocked_message", "must not be empty".into()));
    }
    Ok(InputRules {
        max_input_chars,
        reject_control_chars: s.reject_control_chars.unwrap_or(true),
        blocked_message,
    })
}

/// Names a rule in its errors.
struct RuleAt<'a> {
    path: &'a str,
    rule: usize,
    category: String,
}

type BuiltRule = (Rule, Vec<Term>, Vec<Pattern>);

impl RuleAt<'_> {
    fn err(&self, field: &'static str, message: String) -> PolicyError {
        PolicyError::Rule {
            path: self.path.to_string(),
            rule: self.rule,
            category: self.category.clone(),
            field,
            message,
        }
    }

    fn build(
        &self,
        s: RuleSection,
        base: &Path,
        fingerprint: &mut Fingerprint,
        index: u32,
    ) -> Result<BuiltRule, PolicyError> {
        let category = match s.category.as_deref().map(str::trim) {
            None => return Err(self.err("category", "is required".into())),
            Some("") => return Err(self.err("category", "must not be empty".into())),
            Some(c) if c.chars().count() > MAX_CATEGORY_CHARS || c.chars().any(char::is_control) => {
                return Err(self.err(
                    "category",
                    format!("must be at most {MAX_CATEGORY_CHARS} characters without control characters. Given: {c:?}"),
                ))
            }
            Some(c) => c.to_string(),
        };
        let action = match s.action.as_deref() {
            Some("block") => Action::Block,
            Some("mask") => Action::Mask,
            Some("flag") => Action::Flag,
            Some(other) => {
                return Err(self.err(
                    "action",
                    format!("must be one of block, mask, flag. Given: {other:?}"),
                ))
            }
            None => return Err(self.err("action", "is required (block, mask or flag)".into())),
        };
        let (input, output) = self.stages(s.stages)?;
        let mut terms = Vec::new();
        for (i, text) in s.terms.iter().enumerate() {
            terms.push(self.term(index, text, || format!("terms[{i}]"))?);
        }
        if let Some(file) = &s.terms_file {
            self.terms_file(index, &base.join(file), fingerprint, &mut terms)?;
        }
        let mut patterns = Vec::with_capacity(s.patterns.len());
        for (i, source) in s.patterns.iter().enumerate() {
            let pattern = Pattern::compile(index, source)
                .map_err(|e| self.err("patterns", format!("[{i}] {source:?}: {e}")))?;
            match pattern.max_chars {
                Some(n) if n <= MAX_PATTERN_CHARS => {}
                _ if !output => {}
                other => {
                    return Err(self.err(
                        "patterns",
                        format!(
                            "[{i}] {source:?} can match {} characters; an output-stage pattern \
                             must match at most {MAX_PATTERN_CHARS} (use bounded repetition such as \\d{{1,20}})",
                            other.map_or("unboundedly many".to_string(), |n| n.to_string())
                        ),
                    ))
                }
            }
            patterns.push(pattern);
        }
        if terms.is_empty() && patterns.is_empty() {
            return Err(self.err(
                "terms",
                "a rule needs at least one of `terms`, `terms_file` or `patterns`".into(),
            ));
        }
        let rule = Rule {
            category,
            action,
            input,
            output,
            num_terms: terms.len(),
            num_patterns: patterns.len(),
        };
        Ok((rule, terms, patterns))
    }

    fn stages(&self, stages: Option<Vec<String>>) -> Result<(bool, bool), PolicyError> {
        let Some(stages) = stages else {
            return Ok((true, true));
        };
        let (mut input, mut output) = (false, false);
        for stage in &stages {
            match stage.as_str() {
                "input" => input = true,
                "output" => output = true,
                other => {
                    return Err(self.err(
                        "stages",
                        format!("may hold only \"input\" and \"output\". Given: {other:?}"),
                    ))
                }
            }
        }
        if !(input || output) {
            return Err(self.err("stages", "must name at least one stage".into()));
        }
        Ok((input, output))
    }

    fn term(&self, rule: u32, text: &str, place: impl Fn() -> String) -> Result<Term, PolicyError> {
        let norm = Normalized::new(text);
        let len = norm.skel.len();
        if len == 0 || len > MAX_TERM_CHARS {
            return Err(self.err(
                "terms",
                format!(
                    "{}: {text:?} has {len} letters or digits after normalization; a term needs 1 to {MAX_TERM_CHARS}",
                    place()
                ),
            ));
        }
        Ok(Term { rule, norm })
    }

    fn terms_file(
        &self,
        rule: u32,
        path: &Path,
        fingerprint: &mut Fingerprint,
        terms: &mut Vec<Term>,
    ) -> Result<(), PolicyError> {
        let bytes = read_limited(path).map_err(|e| self.err("terms_file", e.to_string()))?;
        fingerprint.add(&bytes);
        let text = String::from_utf8(bytes).map_err(|e| {
            self.err(
                "terms_file",
                format!("`{}` is not UTF-8: {e}", path.display()),
            )
        })?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            terms.push(self.term(rule, line, || {
                format!("`{}` line {}", path.display(), i + 1)
            })?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
