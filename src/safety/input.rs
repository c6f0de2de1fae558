//! Level 1: the check of user input, before it is tokenized.
//!
//! Each text field of a request (a message's content, a content part, a prompt) is
//! checked on its own: first the `[input]` rules (`max_input_chars` in characters for the
//! fields the client writes as the user, control characters for every field), then the
//! input-stage terms and patterns. One `block` hit anywhere refuses the whole request
//! (the error names the first field with one); otherwise every `mask` hit is replaced in
//! place by as many `*` as it has characters, and `flag` hits change nothing. All hits
//! are recorded, those of a refused request too.
//!
//! Invariant: a masked field has the same number of characters as before, and only the
//! characters of matches changed.

use std::ops::Range;

use super::matcher::Context;
use super::normalize::Normalized;
use super::{Action, Hit, ModerationError, Screen, Stage};

/// One text field of a request.
#[derive(Debug)]
pub struct InputText<'a> {
    /// The field's name in the request, e.g. `messages[2].content`.
    pub param: String,
    /// The prompt it belongs to (0 for a chat).
    pub prompt: usize,
    /// Subject to `max_input_chars` (user messages and prompts; not system or assistant
    /// messages, which carry instructions and history).
    pub limited: bool,
    pub text: &'a mut String,
}

/// Where one hit is in which field.
struct Found {
    field: usize,
    rule: usize,
    span: Range<usize>,
}

impl Screen {
    /// Checks (and masks) `fields` against the policy's input rules.
    pub fn check_input(&self, fields: &mut [InputText<'_>]) -> Result<(), ModerationError> {
        let rules = &self.policy.input_rules;
        for field in fields.iter() {
            check_characters(field, rules.max_input_chars, rules.reject_control_chars)?;
        }
        let Some(matcher) = self.policy.input.as_ref() else {
            return Ok(());
        };
        let mut found = Vec::new();
        for (i, field) in fields.iter().enumerate() {
            let n = Normalized::new(field.text);
            for m in matcher.find(&n, &Context::WHOLE) {
                found.push(Found {
                    field: i,
                    rule: m.rule as usize,
                    span: n.orig_range(m.folded),
                });
            }
        }
        let action = |f: &Found| self.policy.rules[f.rule].action;
        let blocked = found.iter().find(|f| action(f) == Action::Block);
        let refusal = blocked.map(|f| ModerationError::Blocked {
            param: fields[f.field].param.clone(),
            message: rules.blocked_message.clone(),
        });
        for f in &found {
            let rule = &self.policy.rules[f.rule];
            let field = &fields[f.field];
            self.record(Hit {
                stage: Stage::Input,
                rule: f.rule,
                category: rule.category.clone(),
                action: rule.action,
                index: field.prompt,
                param: Some(field.param.clone()),
                text: field.text[f.span.clone()].to_string(),
            });
        }
        if let Some(err) = refusal {
            return Err(err);
        }
        for (i, field) in fields.iter_mut().enumerate() {
            let spans: Vec<Range<usize>> = found
                .iter()
                .filter(|f| f.field == i && action(f) == Action::Mask)
                .map(|f| f.span.clone())
                .collect();
            if !spans.is_empty() {
                *field.text = masked(field.text, &spans);
            }
        }
        Ok(())
    }
}

fn check_characters(
    field: &InputText<'_>,
    max_chars: Option<usize>,
    reject_control: bool,
) -> Result<(), ModerationError> {
    if let Some(limit) = max_chars.filter(|_| field.limited) {
        // Count only as far as needed to know the limit is passed.
        let given = field.text.chars().take(limit + 1).count();
        if given > limit {
            return Err(ModerationError::TooLong {
                param: field.param.clone(),
                limit,
                given: field.text.chars().count(),
            });
        }
    }
    if reject_control {
        let bad = field
            .text
            .chars()
            .enumerate()
            .find(|&(_, c)| c.is_control() && !matches!(c, '\t' | '\n' | '\r'));
        if let Some((at, c)) = bad {
            return Err(ModerationError::ControlChar {
                param: field.param.clone(),
                code: c as u32,
                at,
            });
        }
    }
    Ok(())
}

/// `text` with every character inside `spans` (byte ranges on char boundaries, in any
/// order, possibly overlapping) replaced by `*`.
pub fn masked(text: &str, spans: &[Range<usize>]) -> String {
    let mut spans = spans.to_vec();
    spans.sort_by_key(|s| s.start);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for span in spans {
        let start = span.start.max(at);
        let end = span.end.min(text.len());
        if start >= end {
            continue;
        }
        out.push_str(&text[at..start]);
        out.extend(std::iter::repeat_n('*', text[start..end].chars().count()));
        at = end;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_the_character_count() {
        let phone = 5..16;
        assert_eq!(
            masked("call 13812345678 now", &[phone]),
            "call *********** now"
        );
        let bomb = 0..6;
        assert_eq!(masked("炸弹 bomb", &[bomb]), "** bomb");
        // Overlapping and unordered spans mask their union.
        assert_eq!(masked("abcdefgh", &[4..7, 1..3, 2..5]), "a******h");
        assert_eq!(masked("abc", &[]), "abc");
    }
}
