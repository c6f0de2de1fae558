//! The Hermes parser: content and calls, and the same result however the text is split.

use super::*;

type Parsed = (String, Vec<(String, String)>);

fn call(name: &str, args: &str) -> (String, String) {
    (name.to_string(), args.to_string())
}

/// Feeds `pieces` one by one, then finishes; checks no markup leaks into content.
fn feed(pieces: &[&str]) -> Parsed {
    let mut parser = HermesParser::new();
    let mut events = Vec::new();
    for piece in pieces {
        events.extend(parser.push(piece));
    }
    events.extend(parser.finish());
    collect(events)
}

const CASES: &[&str] = &[
    "Hello, world.",
    "a < b and <tool but not a call",
    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"c\"}}\n</tool_call>",
    "Let me check.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"s\": \"}{\\\"<tool_call>\", \"n\": [1, {\"x\": null}]}}\n</tool_call>\n<tool_call>\n{\"name\": \"g\", \"arguments\": {}}\n</tool_call>\n",
    "<tool_call>{\"arguments\": {\"q\": \"é\"}, \"name\": \"search\"}</tool_call>",
    "<tool_call>\n{\"name\": \"broken\", \"argum",
    "<tool_call>not json</tool_call> tail",
    "x <tool_call>\n{\"name\": \"cut\", \"arguments\": {\"a\": \"unfinished",
    "ünïcødé 🙂 <tool_cal",
    "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>\n<tool_",
];

#[test]
fn content_passes_through() {
    assert_eq!(feed(&["Hello, world."]), ("Hello, world.".into(), vec![]));
    assert_eq!(
        feed(&[CASES[1]]),
        (CASES[1].to_string(), vec![]),
        "a `<` that does not open a call is content"
    );
    assert_eq!(feed(&["Hi\n\n"]), ("Hi\n\n".into(), vec![]));
    assert_eq!(feed(&[CASES[8]]), (CASES[8].to_string(), vec![]));
}

#[test]
fn calls_are_parsed_with_their_argument_text() {
    let (content, calls) = feed(&[CASES[2]]);
    assert_eq!(content, "");
    assert_eq!(
        calls,
        [call("get_weather", r#"{"city": "Paris", "unit": "c"}"#)]
    );
    let (content, calls) = feed(&[CASES[3]]);
    assert_eq!(content, "Let me check.");
    assert_eq!(
        calls,
        [
            call("f", r#"{"s": "}{\"<tool_call>", "n": [1, {"x": null}]}"#),
            call("g", "{}"),
        ]
    );
    for (_, args) in &calls {
        serde_json::from_str::<Value>(args).expect("arguments are JSON");
    }
}

#[test]
fn calls_not_in_header_first_form_are_parsed_whole() {
    let (content, calls) = feed(&[CASES[4]]);
    assert_eq!(content, "");
    assert_eq!(calls, [call("search", r#"{"q":"é"}"#)]);
    let (content, calls) = feed(&[CASES[6]]);
    assert_eq!(content, "<tool_call>not json</tool_call> tail");
    assert!(calls.is_empty());
}

#[test]
fn cut_text_ends_what_it_can() {
    let (content, calls) = feed(&[CASES[5]]);
    assert_eq!(content, "", "a cut call leaves no markup");
    assert!(calls.is_empty());
    let unclosed = "<tool_call>{\"arguments\": {}, \"name\": \"g\"}";
    assert_eq!(feed(&[unclosed]), (String::new(), vec![call("g", "{}")]));
    let (content, calls) = feed(&[CASES[7]]);
    assert_eq!(content, "x");
    assert_eq!(calls, [call("cut", r#"{"a": "unfinished"#)]);
    let (content, calls) = feed(&[CASES[9]]);
    assert_eq!(content, "", "a cut second call leaves no markup");
    assert_eq!(calls, [call("f", "{}")]);
}

#[test]
fn any_split_gives_the_same_result_and_never_leaks_markup() {
    for text in CASES {
        let whole = feed(&[text]);
        let bounds: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        for &i in &bounds {
            assert_eq!(
                feed(&[&text[..i], &text[i..]]),
                whole,
                "split at {i} of {text:?}"
            );
            for &j in bounds.iter().filter(|&&j| j >= i) {
                let three = feed(&[&text[..i], &text[i..j], &text[j..]]);
                assert_eq!(three, whole, "split at {i}, {j} of {text:?}");
            }
        }
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(feed(&pieces), whole, "char by char: {text:?}");
    }
}

#[test]
fn streamed_content_events_hold_no_markup() {
    for text in &CASES[2..5] {
        let mut parser = HermesParser::new();
        let mut events = Vec::new();
        for c in text.chars() {
            events.extend(parser.push(&c.to_string()));
        }
        events.extend(parser.finish());
        for event in &events {
            if let ToolEvent::Content(piece) = event {
                assert!(
                    !piece.contains('<') && !piece.contains('{'),
                    "markup in content {piece:?} of {text:?}"
                );
            }
        }
        let pieces = events
            .iter()
            .filter(|e| matches!(e, ToolEvent::Arguments { .. }))
            .count();
        assert!(
            text == &CASES[4] || pieces > 1,
            "arguments come in pieces: {text:?}"
        );
    }
}

#[test]
fn call_indices_count_up() {
    let mut parser = HermesParser::new();
    let mut events = parser.push(CASES[3]);
    events.extend(parser.finish());
    let starts: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            ToolEvent::CallStart { index, .. } => Some(*index),
            _ => None,
        })
        .collect();
    assert_eq!(starts, [0, 1]);
    assert_eq!(parser.calls(), 2);
}
