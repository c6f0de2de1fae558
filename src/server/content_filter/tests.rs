use std::time::Duration;

use super::*;
use crate::engine::stream::{EventTiming, Usage};
use crate::safety::testing;

fn screen() -> Arc<Screen> {
    testing::screen().0
}

fn event(text: &str, ids: &[TokenId], finish: Option<FinishReason>) -> TokenEvent {
    TokenEvent {
        token_ids: ids.to_vec(),
        text: text.into(),
        logprobs: Some(
            ids.iter()
                .map(|&id| TokenLogprobs {
                    logprob: -(id as f32),
                    top: Vec::new(),
                })
                .collect(),
        ),
        finish_reason: finish,
        prompt_logprobs: None,
        usage: Usage::default(),
        timing: EventTiming::default(),
    }
}

fn no_cut() -> Option<RequestTimings> {
    panic!("not cut")
}

#[test]
fn tokens_travel_with_their_text_and_a_block_cuts_once() {
    let s = screen();
    let mut g = ChoiceGuard::new(&s, 0).expect("output rules");
    let first = g.apply(event("Hello there, ", &[1, 2, 3], None), no_cut);
    assert_eq!(
        (first.text.as_str(), first.token_ids.as_slice()),
        ("Hello there, ", &[1, 2, 3][..])
    );
    assert_eq!(first.logprobs.as_ref().map(Vec::len), Some(3));
    // "P" may begin "Paris": held, and the tokens of its event with it.
    let second = g.apply(event("friends in P", &[4, 5], None), no_cut);
    assert_eq!(second.text, "friends in ");
    assert!(second.token_ids.is_empty() && second.logprobs.is_none());
    let third = g.apply(event("ar", &[6], None), no_cut);
    assert!(third.text.is_empty() && third.finish_reason.is_none());
    let mut cuts = 0;
    let last = g.apply(event("is.", &[7], None), || {
        cuts += 1;
        None
    });
    assert_eq!(cuts, 1);
    assert_eq!(last.finish_reason, Some(FinishReason::ContentFilter));
    assert!(last.text.is_empty());
    // Tokens whose text reached into the blocked word are never released.
    assert!(last.token_ids.is_empty());
    let hits = s.hits(Stage::Output, Some(0));
    assert_eq!(hits.len(), 1);
    assert_eq!(
        content_filter_results(&s, 0),
        Some(json!({"geo": {"filtered": true, "detected": true}}))
    );
    assert_eq!(content_filter_results(&s, 1), None);
}

#[test]
fn a_cut_carries_the_request_timings_for_the_metrics() {
    let s = screen();
    let mut g = ChoiceGuard::new(&s, 0).expect("output rules");
    let timings = RequestTimings {
        queue: Duration::ZERO,
        prefill: Duration::ZERO,
        decode: Duration::from_millis(5),
        e2e: Duration::from_millis(9),
        time_to_first_token: None,
        time_per_output_token: None,
    };
    let ev = g.apply(event("Paris", &[1], Some(FinishReason::Stop)), || {
        Some(timings)
    });
    assert_eq!(ev.finish_reason, Some(FinishReason::ContentFilter));
    assert_eq!(ev.timing.request, Some(timings));
    assert!(ev.text.is_empty() && ev.token_ids.is_empty());
}

#[test]
fn masked_text_hides_its_tokens_and_the_end_releases_everything() {
    let s = screen();
    let mut g = ChoiceGuard::new(&s, 2).expect("output rules");
    let mut text = String::new();
    let mut ids = Vec::new();
    for (piece, tok) in [("ok ", 1), ("138", 2), ("12345678", 3), (" fine", 4)] {
        let ev = g.apply(event(piece, &[tok], None), no_cut);
        text.push_str(&ev.text);
        ids.extend(ev.token_ids);
    }
    let end = g.apply(event("", &[], Some(FinishReason::Length)), no_cut);
    assert_eq!(end.finish_reason, Some(FinishReason::Length));
    text.push_str(&end.text);
    ids.extend(end.token_ids);
    assert_eq!(text, "ok *********** fine");
    assert_eq!(ids, [1, 4]);
    assert_eq!(
        content_filter_results(&s, 2),
        Some(json!({"pii": {"filtered": true, "detected": true}}))
    );
}

#[test]
fn chat_fields_are_named_and_only_user_messages_are_length_limited() {
    let s = screen();
    let mut req: ChatCompletionRequest = serde_json::from_value(json!({
        "messages": [
            {"role": "system", "content": "s".repeat(600)},
            {"role": "user", "content": [{"type": "text", "text": "ok"}, {"type": "text", "text": "call 13812345678"}]},
        ]
    }))
    .expect("parses");
    screen_chat(&s, &mut req).expect("passes");
    let Some(MessageContent::Parts(parts)) = &req.messages.as_ref().expect("messages")[1].content
    else {
        panic!("parts")
    };
    assert_eq!(parts[1].text.as_deref(), Some("call ***********"));
    let hits = s.hits(Stage::Input, None);
    assert_eq!(
        hits[0].param.as_deref(),
        Some("messages[1].content[1].text")
    );
    let mut long: ChatCompletionRequest = serde_json::from_value(json!({
        "messages": [{"role": "user", "content": "x".repeat(513)}]
    }))
    .expect("parses");
    let err = screen_chat(&s, &mut long).expect_err("too long");
    assert_eq!(
        crate::error::http_error(&err).body["error"]["param"],
        "messages[0].content"
    );
    let mut blocked: ChatCompletionRequest = serde_json::from_value(json!({
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "b.o.m.b"}]
    }))
    .expect("parses");
    let err = crate::error::http_error(&screen_chat(&s, &mut blocked).expect_err("blocked"));
    assert_eq!(err.status, 400);
    assert_eq!(err.body["error"]["code"], "content_filter");
    assert_eq!(err.body["error"]["param"], "messages[1].content");
    assert_eq!(err.body["error"]["message"], "输入包含敏感内容,请重新表述");
}

#[test]
fn responses_are_annotated_only_where_rules_matched() {
    let s = screen();
    let mut texts = [
        "洗钱".to_string(),
        "fine".to_string(),
        "13812345678".to_string(),
    ];
    let mut fields: Vec<InputText> = texts
        .iter_mut()
        .enumerate()
        .map(|(i, text)| InputText {
            param: format!("prompt[{i}]"),
            prompt: i,
            limited: true,
            text,
        })
        .collect();
    s.check_input(&mut fields).expect("passes");
    let mut response = json!({"choices": [{"index": 0}, {"index": 1}]});
    annotate_response(&mut response, &s);
    assert_eq!(
        response["prompt_filter_results"],
        json!([
            {"prompt_index": 0, "content_filter_results": {"fraud": {"filtered": false, "detected": true}}},
            {"prompt_index": 2, "content_filter_results": {"pii": {"filtered": true, "detected": true}}},
        ])
    );
    assert!(response["choices"][0]
        .get("content_filter_results")
        .is_none());
    let clean = screen();
    let mut untouched = json!({"choices": [{"index": 0}]});
    annotate_response(&mut untouched, &clean);
    assert_eq!(untouched, json!({"choices": [{"index": 0}]}));
    assert!(finish_fields(Some(&clean), 0).is_empty() && finish_fields(None, 0).is_empty());
}
