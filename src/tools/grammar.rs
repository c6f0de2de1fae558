//! The grammar of a forced answer (`tool_choice` `required` or a named function): one
//! Hermes call, or several separated by a newline when `parallel_tool_calls`, each
//! `<tool_call>\n{"name": "<f>", "arguments": <args>}\n</tool_call>` where `<args>`
//! validates against `<f>`'s parameters schema. A Lark grammar for llguidance with the
//! call object as one `%json` schema: an `anyOf` of one object schema per callable
//! function (`name` a `const`, `arguments` its parameters, nothing else).
//!
//! Invariant: every local `$ref` of a parameters schema still points at what it meant:
//! `#/$defs/X` and `#/definitions/X` are hoisted to the root as `#/$defs/f<i>_X`, any
//! other local pointer is rebased under its alternative.

use serde_json::{json, Map, Value};

use super::spec::{Function, ToolSet};

/// The Lark grammar of `set`'s forced answer.
pub fn forced_call_grammar(set: &ToolSet) -> String {
    let mut defs = Map::new();
    let alternatives: Vec<Value> = set
        .callable()
        .iter()
        .enumerate()
        .map(|(i, f)| alternative(i, f, &mut defs))
        .collect();
    let mut schema = json!({
        "anyOf": alternatives,
        "x-guidance": {
            "whitespace_flexible": false,
            "item_separator": ", ",
            "key_separator": ": ",
            "lenient": false,
        },
    });
    if !defs.is_empty() {
        schema["$defs"] = Value::Object(defs);
    }
    let start = if set.parallel {
        "call (\"\\n\" call)*"
    } else {
        "call"
    };
    format!(
        "start: {start}\ncall: \"<tool_call>\\n\" body \"\\n</tool_call>\"\nbody: %json {schema}\n"
    )
}

/// Function `i`'s call object schema; its definitions go into `defs`.
fn alternative(i: usize, f: &Function, defs: &mut Map<String, Value>) -> Value {
    let mut parameters = f.parameters.clone();
    if let Value::Object(map) = &mut parameters {
        for key in ["$defs", "definitions"] {
            if let Some(Value::Object(own)) = map.remove(key) {
                for (name, mut def) in own {
                    rebase_refs(&mut def, i);
                    defs.insert(format!("f{i}_{name}"), def);
                }
            }
        }
    }
    rebase_refs(&mut parameters, i);
    json!({
        "type": "object",
        "properties": {"name": {"const": f.name}, "arguments": parameters},
        "required": ["name", "arguments"],
        "additionalProperties": false,
    })
}

/// Rewrites the local `$ref`s of function `i`'s schema (see the module header).
fn rebase_refs(value: &mut Value, i: usize) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match (key.as_str(), v) {
                    ("$ref", Value::String(r)) => *r = rebased(r, i),
                    (_, v) => rebase_refs(v, i),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rebase_refs(v, i)),
        _ => {}
    }
}

fn rebased(reference: &str, i: usize) -> String {
    for prefix in ["#/$defs/", "#/definitions/"] {
        if let Some(name) = reference.strip_prefix(prefix) {
            return format!("#/$defs/f{i}_{name}");
        }
    }
    match reference.strip_prefix('#') {
        Some(pointer) => format!("#/anyOf/{i}/properties/arguments{pointer}"),
        None => reference.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::structured::{GrammarCompiler, GrammarSpec};
    use crate::tools::hermes::parse_all;
    use crate::tools::{parse_tools, WireForm};

    /// Single bytes, then EOS.
    fn compiler() -> (GrammarCompiler, u32) {
        let mut words: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        words.push(b"\xFF<|end|>".to_vec());
        let eos = words.len() as u32 - 1;
        (GrammarCompiler::new(&words, &[eos]).expect("compiler"), eos)
    }

    fn tools(choice: Value, parallel: bool) -> ToolSet {
        let list = json!([
            {"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object", "properties": {"city": {"type": "string", "maxLength": 8},
                "unit": {"enum": ["c", "f"]}}, "required": ["city", "unit"],
                "additionalProperties": false}}},
            {"type": "function", "function": {"name": "tree", "parameters": {
                "$defs": {"leaf": {"type": "integer", "minimum": 0, "maximum": 9}},
                "type": "object", "properties": {"n": {"$ref": "#/$defs/leaf"}},
                "required": ["n"], "additionalProperties": false}}},
        ]);
        parse_tools(
            Some(&list),
            Some(&choice),
            Some(&json!(parallel)),
            WireForm::Chat,
        )
        .expect("valid")
        .expect("tools")
    }

    /// Follows the mask, picking the `pick`-th allowed byte (rotating), to EOS.
    fn walk(set: &ToolSet, pick: usize) -> String {
        let (compiler, eos) = compiler();
        let guide = compiler
            .compile(&GrammarSpec::Lark(forced_call_grammar(set)))
            .expect("compiles");
        let mut state = guide.start();
        let mut out = Vec::new();
        for step in 0..600 {
            state.compute_mask().expect("mask");
            let allowed: Vec<u32> = (0..=eos).filter(|&t| state.mask().allows(t)).collect();
            assert!(
                !allowed.is_empty(),
                "dead end after {:?}",
                String::from_utf8_lossy(&out)
            );
            if allowed.contains(&eos) && (step > 40 || allowed.len() == 1) {
                assert!(state.is_accepting());
                return String::from_utf8(out).expect("utf-8");
            }
            let choices: Vec<u32> = allowed.into_iter().filter(|&t| t != eos).collect();
            // Prefer closing quotes and braces late in the walk, so it ends.
            let token = if step > 60 {
                *choices
                    .iter()
                    .find(|&&t| matches!(t as u8, b'"' | b'}' | b'<' | b'/'))
                    .unwrap_or(&choices[0])
            } else {
                choices[(pick * 31 + step * 7) % choices.len()]
            };
            state.commit(token).expect("commit");
            out.push(token as u8);
        }
        panic!("walk did not end: {:?}", String::from_utf8_lossy(&out));
    }

    #[test]
    fn forced_answers_are_valid_calls() {
        let set = tools(json!("required"), false);
        for pick in 0..6 {
            let text = walk(&set, pick);
            let (content, calls) = parse_all(&text);
            assert_eq!(content, "", "{text:?}");
            assert_eq!(calls.len(), 1, "{text:?}");
            let args: Value = serde_json::from_str(&calls[0].1).expect("arguments are JSON");
            match calls[0].0.as_str() {
                "get_weather" => {
                    assert!(
                        args["city"]
                            .as_str()
                            .is_some_and(|c| c.chars().count() <= 8),
                        "{args}"
                    );
                    assert!(args["unit"] == "c" || args["unit"] == "f", "{args}");
                }
                "tree" => assert!(
                    args["n"].as_i64().is_some_and(|n| (0..=9).contains(&n)),
                    "{args}"
                ),
                other => panic!("unknown function {other}"),
            }
        }
    }

    #[test]
    fn a_named_choice_calls_that_function_only() {
        let set = tools(
            json!({"type": "function", "function": {"name": "tree"}}),
            true,
        );
        for pick in 0..3 {
            let (_, calls) = parse_all(&walk(&set, pick));
            assert!(!calls.is_empty() && calls.iter().all(|(name, _)| name == "tree"));
        }
    }

    #[test]
    fn refs_are_rebased() {
        assert_eq!(rebased("#/$defs/leaf", 1), "#/$defs/f1_leaf");
        assert_eq!(rebased("#/definitions/x", 0), "#/$defs/f0_x");
        assert_eq!(rebased("#", 2), "#/anyOf/2/properties/arguments");
        assert_eq!(
            rebased("#/properties/a", 0),
            "#/anyOf/0/properties/arguments/properties/a"
        );
        assert_eq!(rebased("https://x/y", 0), "https://x/y");
    }
}
