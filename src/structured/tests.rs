//! The guide on a small byte vocabulary: masks follow the grammar, EOS comes only where
//! the grammar accepts, bad specs are refused with their reason, the cache is bounded.

use super::*;
use serde_json::json;

/// Ids 0..=255 are the single bytes, then a few multi-byte tokens, then EOS (special).
fn vocab() -> (Vec<Vec<u8>>, u32) {
    let mut words: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    for w in ["{\"", "\": ", "true", "false", "null", "ab", "abc"] {
        words.push(w.as_bytes().to_vec());
    }
    words.push(b"\xFF<|end|>".to_vec());
    let eos = words.len() as u32 - 1;
    (words, eos)
}

fn compiler() -> (GrammarCompiler, Vec<Vec<u8>>, u32) {
    let (words, eos) = vocab();
    (
        GrammarCompiler::new(&words, &[eos]).expect("compiler"),
        words,
        eos,
    )
}

/// Follows the mask: at each step the first allowed token after `pick` rotations, so
/// different `pick` give different valid walks. Returns the text up to EOS.
fn walk(guide: &Guide, words: &[Vec<u8>], eos: u32, pick: usize) -> String {
    let mut state = guide.start();
    let mut out = Vec::new();
    for step in 0..400 {
        state.compute_mask().expect("mask");
        let allowed: Vec<u32> = (0..words.len() as u32 + 3)
            .filter(|&t| state.mask().allows(t))
            .collect();
        assert!(
            !allowed.is_empty(),
            "no token allowed after {:?}",
            String::from_utf8_lossy(&out)
        );
        assert!(
            allowed.iter().all(|&t| (t as usize) < words.len()),
            "padded ids allowed"
        );
        // Prefer ending once allowed after a few steps, so walks terminate.
        let token = if allowed.contains(&eos) && step > 3 {
            eos
        } else {
            let choices: Vec<u32> = allowed.iter().copied().filter(|&t| t != eos).collect();
            if choices.is_empty() {
                eos
            } else {
                choices[(pick + step * 7) % choices.len()]
            }
        };
        if token == eos {
            assert!(
                state.is_accepting(),
                "EOS allowed where the grammar does not accept"
            );
            return String::from_utf8(out).expect("utf-8");
        }
        out.extend_from_slice(&words[token as usize]);
        state.commit(token).expect("commit an allowed token");
    }
    panic!("walk did not end: {}", String::from_utf8_lossy(&out));
}

#[test]
fn json_schema_walks_give_valid_documents() {
    let (c, words, eos) = compiler();
    let schema = json!({
        "type": "object",
        "properties": {
            "kind": {"enum": ["cat", "dog"]},
            "n": {"type": "integer", "minimum": 0, "maximum": 9},
            "tags": {"type": "array", "items": {"enum": ["x", "y"]}, "minItems": 1, "maxItems": 2}
        },
        "required": ["kind", "n", "tags"],
        "additionalProperties": false
    });
    let guide = c
        .compile(&GrammarSpec::JsonSchema(schema))
        .expect("compiles");
    for pick in 0..12 {
        let text = walk(&guide, &words, eos, pick);
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert!(matches!(v["kind"].as_str(), Some("cat" | "dog")), "{text}");
        assert!(
            v["n"].as_i64().is_some_and(|n| (0..=9).contains(&n)),
            "{text}"
        );
        let tags = v["tags"].as_array().expect("tags");
        assert!((1..=2).contains(&tags.len()), "{text}");
    }
}

#[test]
fn eos_only_where_the_regex_accepts_and_then_only_eos() {
    let (c, words, eos) = compiler();
    let guide = c
        .compile(&GrammarSpec::Regex("ab(c)?".into()))
        .expect("compiles");
    let mut state = guide.start();
    state.compute_mask().expect("mask");
    assert!(!state.mask().allows(eos), "EOS before anything matched");
    assert!(state.mask().allows(b'a' as u32) && !state.mask().allows(b'b' as u32));
    state.commit(b'a' as u32).expect("a");
    state.compute_mask().expect("mask");
    assert!(!state.mask().allows(eos));
    state.commit(b'b' as u32).expect("b");
    state.compute_mask().expect("mask");
    assert!(state.mask().allows(eos) && state.mask().allows(b'c' as u32));
    assert!(!state.mask().only_eos());
    state.commit(b'c' as u32).expect("c");
    state.compute_mask().expect("mask");
    assert!(state.mask().only_eos(), "a complete match allows only EOS");
    let _ = words;
}

#[test]
fn choice_walks_give_one_of_the_choices() {
    let (c, words, eos) = compiler();
    let choices = vec!["yes".to_string(), "no".into(), "a|b".into()];
    let guide = c
        .compile(&GrammarSpec::Choice(choices.clone()))
        .expect("compiles");
    for pick in 0..6 {
        let text = walk(&guide, &words, eos, pick);
        assert!(choices.contains(&text), "{text:?}");
    }
}

#[test]
fn mask_sets_disallowed_and_padded_logits_to_minus_infinity() {
    let (c, words, _) = compiler();
    let guide = c
        .compile(&GrammarSpec::Regex("a".into()))
        .expect("compiles");
    let mut state = guide.start();
    state.compute_mask().expect("mask");
    let mut logits = vec![1.0f32; words.len() + 5];
    state.mask().apply(&mut logits);
    let finite: Vec<usize> = (0..logits.len())
        .filter(|&i| logits[i].is_finite())
        .collect();
    assert_eq!(finite, vec![b'a' as usize]);
}

#[test]
fn bad_specs_are_refused_with_their_reason() {
    let (c, _, _) = compiler();
    let err = c
        .compile(&GrammarSpec::Regex("a(b".into()))
        .expect_err("invalid regex");
    assert!(err.to_string().contains("invalid regex"), "{err}");
    let remote = json!({"$ref": "https://example.invalid/schema.json"});
    assert!(
        c.compile(&GrammarSpec::JsonSchema(remote)).is_err(),
        "remote $ref"
    );
    let err = c
        .compile(&GrammarSpec::JsonSchema(json!("string")))
        .expect_err("not an object");
    assert!(err.to_string().contains("must be an object"), "{err}");
    let props: serde_json::Map<String, serde_json::Value> = (0..10_000)
        .map(|i| (format!("p{i}"), json!({"type": "string"})))
        .collect();
    let huge = json!({"type": "object", "properties": props});
    assert!(matches!(
        c.compile(&GrammarSpec::JsonSchema(huge)),
        Err(StructuredError::TooLarge { .. })
    ));
    assert!(c.compile(&GrammarSpec::Choice(Vec::new())).is_err());
    assert!(c
        .compile(&GrammarSpec::Lark("start: undefined_rule".into()))
        .is_err());
}

#[test]
fn ref_cycles_are_refused_or_bounded_never_hang() {
    let (c, words, eos) = compiler();
    // A cycle that never produces anything: no finite document matches it.
    let empty_cycle = json!({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"});
    assert!(c.compile(&GrammarSpec::JsonSchema(empty_cycle)).is_err());
    // A recursive type (a tree) is a fine grammar: its walks are valid documents.
    let tree = json!({
        "$defs": {"node": {"type": "object", "properties": {
            "v": {"type": "integer", "minimum": 0, "maximum": 3},
            "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 1}
        }, "required": ["v"], "additionalProperties": false}},
        "$ref": "#/$defs/node"
    });
    let guide = c
        .compile(&GrammarSpec::JsonSchema(tree))
        .expect("recursive schema");
    for pick in 0..4 {
        let text = walk(&guide, &words, eos, pick);
        serde_json::from_str::<serde_json::Value>(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
    }
}

#[test]
fn the_cache_returns_the_same_guide_and_stays_bounded() {
    let (c, _, _) = compiler();
    let a = c
        .compile(&GrammarSpec::Regex("x+".into()))
        .expect("compiles");
    let b = c
        .compile(&GrammarSpec::Regex("x+".into()))
        .expect("compiles");
    assert_eq!(a, b, "same spec, same compiled guide");
    for i in 0..CACHE_ENTRIES + 10 {
        c.compile(&GrammarSpec::Regex(format!("y{{{i}}}")))
            .expect("compiles");
    }
    assert_eq!(c.cached(), CACHE_ENTRIES);
    let again = c
        .compile(&GrammarSpec::Regex("x+".into()))
        .expect("compiles");
    assert_ne!(a, again, "the oldest entry was evicted");
}
