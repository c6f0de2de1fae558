//! The Responses and Conversations routes over HTTP on the default model (SmolLM2-135M,
//! greedy): the history window turn by turn (every prompt's tokens checked against the
//! rule with the tokenizer, the stored conversation complete, prefix-cache hits on the
//! turns the rule keeps stable), `previous_response_id` chains, typed streaming events,
//! API-key scoping, bad input that stores nothing, truncation, and 32 conversations × 5
//! turns at once.

mod http_support;

use std::net::SocketAddr;

use http_support::{
    error_of, get, ok, post, request, serve, start_engine, typed_events, SseStream, MODEL,
};
use serde_json::{json, Value};
use tessera::config::EngineConfig;
use tessera::dialog::window::{split_turns, WindowRule};
use tessera::dialog::{DialogConfig, Message, Role};
use tessera::engine::handle::EngineHandle;
use tessera::model::chat_template::{encode_chat, ChatMessage};
use tessera::server::{ServerConfig, SpawnedServer};

const BLOCK: usize = 16;

fn engine(max_model_len: usize) -> EngineHandle {
    start_engine(&EngineConfig {
        kv_cache_memory: 128 << 20,
        max_model_len: Some(max_model_len),
        ..EngineConfig::default()
    })
}

fn server(engine: EngineHandle, window: WindowRule, api_keys: &[&str]) -> SpawnedServer {
    let cfg = ServerConfig {
        api_keys: api_keys.iter().map(|k| k.to_string()).collect(),
        dialog: DialogConfig {
            window,
            ..DialogConfig::default()
        },
        ..ServerConfig::default()
    };
    serve(engine, 64, cfg)
}

fn respond(addr: SocketAddr, extra: Value) -> Value {
    let mut body = json!({"model": MODEL, "temperature": 0, "max_output_tokens": 12});
    http_support::merge(&mut body, extra);
    ok(post(addr, "/v1/responses", &body))
}

/// Every item of a conversation, oldest first.
fn conversation_items(addr: SocketAddr, id: &str) -> Vec<Value> {
    let list = ok(get(
        addr,
        &format!("/v1/conversations/{id}/items?order=asc&limit=100"),
    ));
    assert_eq!(list["has_more"], false);
    list["data"].as_array().cloned().unwrap_or_default()
}

fn message_of(item: &Value) -> Message {
    let role = match item["role"].as_str() {
        Some("assistant") => Role::Assistant,
        Some("user") => Role::User,
        Some("developer") => Role::Developer,
        _ => Role::System,
    };
    let text: Vec<&str> = item["content"]
        .as_array()
        .map(|c| c.iter().filter_map(|p| p["text"].as_str()).collect())
        .unwrap_or_default();
    Message::new(role, text.join("\n"), 0)
}

/// Prompt tokens of `history` windowed from turn `first` on, then `input`.
fn prompt_tokens(engine: &EngineHandle, history: &[Message], first: usize, input: &str) -> usize {
    let turns = split_turns(history);
    let from = turns.turns.get(first).map_or(history.len(), |t| t.start);
    let mut msgs: Vec<ChatMessage> = history[..turns.preamble]
        .iter()
        .chain(&history[from..])
        .map(|m| ChatMessage::new(m.role.template_role(), m.text()))
        .collect();
    msgs.push(ChatMessage::new("user", input));
    let assets = engine.model();
    encode_chat(&assets.tokenizer, &assets.chat_template, &msgs, true)
        .expect("encodes")
        .len()
}

/// Runs `turns` turns on a new conversation and checks each prompt against `rule`;
/// returns (input, cached) tokens per turn.
fn check_window(
    engine: &EngineHandle,
    addr: SocketAddr,
    rule: WindowRule,
    turns: usize,
) -> Vec<(u64, u64)> {
    let conv = ok(post(
        addr,
        "/v1/conversations",
        &json!({"metadata": {"test": "window"}}),
    ));
    let id = conv["id"].as_str().expect("conversation id").to_string();
    let mut usage = Vec::new();
    for k in 0..turns {
        let history: Vec<Message> = conversation_items(addr, &id)
            .iter()
            .map(message_of)
            .collect();
        assert_eq!(
            split_turns(&history).turns.len(),
            k,
            "the conversation keeps every turn"
        );
        let input = format!(
            "Question {k}: name one animal that starts with the letter {}.",
            (b'A' + k as u8) as char
        );
        let res = respond(addr, json!({"input": input, "conversation": id}));
        let first = rule.first_kept(k);
        let want = prompt_tokens(engine, &history, first, &input);
        let got = &res["usage"];
        assert_eq!(
            got["input_tokens"], want,
            "turn {k}: the prompt holds turns {first}..{k} and the input"
        );
        usage.push((
            got["input_tokens"].as_u64().expect("input"),
            got["input_tokens_details"]["cached_tokens"]
                .as_u64()
                .expect("cached"),
        ));
        if k > 0 && rule.first_kept(k) == rule.first_kept(k - 1) {
            let previous_prompt = usage[k - 1].0 as usize;
            assert!(
                usage[k].1 as usize >= previous_prompt / BLOCK * BLOCK,
                "turn {k}: the window did not move, so the whole previous prompt is cached: {usage:?}"
            );
        }
    }
    assert_eq!(
        conversation_items(addr, &id).len(),
        2 * turns,
        "every input and answer is stored"
    );
    usage
}

#[test]
fn the_window_keeps_the_rule_and_the_prefix_cache() {
    let engine = engine(2048);
    let srv = server(
        engine.clone(),
        WindowRule {
            min_turns: 3,
            step: 2,
        },
        &[],
    );
    check_window(
        &engine,
        srv.addr,
        WindowRule {
            min_turns: 3,
            step: 2,
        },
        8,
    );
    srv.shutdown();
    // The default rule (--history-turns 3): six turns, the sixth prompt checked like all.
    let engine = self::engine(2048);
    let rule = WindowRule::default();
    let srv = server(engine.clone(), rule, &[]);
    let usage = check_window(&engine, srv.addr, rule, 6);
    eprintln!("default window, (input, cached) per turn: {usage:?}");
    srv.shutdown();
}

#[test]
fn chains_stream_and_refuse_what_they_cannot_do() {
    let engine = engine(2048);
    let srv = server(engine.clone(), WindowRule::default(), &[]);
    let addr = srv.addr;
    let first = respond(
        addr,
        json!({"input": "My name is Lin.", "instructions": "You are a helpful assistant.", "max_output_tokens": 64}),
    );
    assert_eq!(first["status"], "completed", "{first}");
    assert!(first["id"].as_str().expect("id").starts_with("resp_"));
    let second = respond(
        addr,
        json!({"input": "I live in Paris.", "previous_response_id": first["id"], "max_output_tokens": 64}),
    );
    let third = respond(
        addr,
        json!({"input": "What is my name?", "previous_response_id": second["id"], "max_output_tokens": 64}),
    );
    eprintln!(
        "greedy answers: {:?} / {:?} / {:?}",
        first["output_text"], second["output_text"], third["output_text"]
    );
    // The third prompt holds both earlier exchanges (and no instructions: not carried over).
    let history: Vec<Message> = [
        ("user", "My name is Lin."),
        ("assistant", first["output_text"].as_str().expect("text")),
        ("user", "I live in Paris."),
        ("assistant", second["output_text"].as_str().expect("text")),
    ]
    .iter()
    .map(|(r, t)| message_of(&json!({"role": r, "content": [{"text": t}]})))
    .collect();
    assert_eq!(
        third["usage"]["input_tokens"],
        prompt_tokens(&engine, &history, 0, "What is my name?")
    );
    assert_eq!(third["previous_response_id"], second["id"]);
    let got = ok(get(
        addr,
        &format!("/v1/responses/{}", third["id"].as_str().expect("id")),
    ));
    assert_eq!(got, third, "the stored response is the one returned");
    let inputs = ok(get(
        addr,
        &format!(
            "/v1/responses/{}/input_items",
            third["id"].as_str().expect("id")
        ),
    ));
    assert_eq!(inputs["data"][0]["content"][0]["text"], "What is my name?");
    // Streaming: typed events in order, sequence numbers 0, 1, 2 …, stored before `completed`.
    let body = json!({"model": MODEL, "input": "Say hi.", "previous_response_id": third["id"], "stream": true, "temperature": 0, "max_output_tokens": 8});
    let events = typed_events(SseStream::open(addr, "/v1/responses", &body));
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or(""))
        .collect();
    let last = events.last().expect("events");
    assert_eq!(
        &kinds[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    let tail = [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ];
    assert_eq!(&kinds[kinds.len() - 4..kinds.len() - 1], tail);
    assert!(matches!(
        kinds[kinds.len() - 1],
        "response.completed" | "response.incomplete"
    ));
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sequence_number"], i, "{kinds:?}");
    }
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .filter_map(|e| e["delta"].as_str())
        .collect();
    assert_eq!(last["response"]["output_text"], deltas);
    let id = last["response"]["id"].as_str().expect("id");
    assert_eq!(
        ok(get(addr, &format!("/v1/responses/{id}"))),
        last["response"]
    );
    // store: false cannot be chained; both anchors at once, unknown ids, bad fields: 4xx.
    let unstored = respond(addr, json!({"input": "x", "store": false}));
    let err = error_of(
        &post(
            addr,
            "/v1/responses",
            &json!({"model": MODEL, "input": "y", "previous_response_id": unstored["id"]}),
        ),
        404,
    );
    assert_eq!(err["param"], "previous_response_id");
    let conv = ok(post(addr, "/v1/conversations", &json!({})));
    let both = json!({"model": MODEL, "input": "y", "previous_response_id": first["id"], "conversation": conv["id"]});
    assert_eq!(
        error_of(&post(addr, "/v1/responses", &both), 400)["param"],
        "previous_response_id"
    );
    error_of(&get(addr, "/v1/responses/resp_nope"), 404);
    error_of(&get(addr, "/v1/conversations/conv_nope/items"), 404);
    error_of(
        &request(
            addr,
            "DELETE",
            "/v1/conversations/conv_nope/items/msg_x",
            &[],
            None,
        ),
        404,
    );
    // Function tools are served; other tool types are refused by name.
    let tools = json!({"model": MODEL, "input": "y", "tools": [{"type": "web_search"}]});
    assert_eq!(
        error_of(&post(addr, "/v1/responses", &tools), 400)["param"],
        "tools[0].type"
    );
    let choice = json!({"model": MODEL, "input": "y", "tools": [{"type": "function", "name": "f"}],
        "tool_choice": {"type": "function", "name": "g"}});
    assert_eq!(
        error_of(&post(addr, "/v1/responses", &choice), 400)["param"],
        "tool_choice"
    );
    let bad_item = json!({"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}], "conversation": conv["id"]});
    assert_eq!(
        error_of(&post(addr, "/v1/responses", &bad_item), 400)["param"],
        "input[0].content[0].type"
    );
    let many: Vec<Value> = (0..10_000)
        .map(|i| json!({"role": "user", "content": format!("m{i}")}))
        .collect();
    let flood = json!({"model": MODEL, "input": many, "conversation": conv["id"]});
    assert_eq!(
        error_of(&post(addr, "/v1/responses", &flood), 400)["param"],
        "input"
    );
    let add = json!({"items": (0..21).map(|_| json!({"role": "user", "content": "x"})).collect::<Vec<_>>()});
    error_of(
        &post(
            addr,
            &format!(
                "/v1/conversations/{}/items",
                conv["id"].as_str().expect("id")
            ),
            &add,
        ),
        400,
    );
    assert!(
        conversation_items(addr, conv["id"].as_str().expect("id")).is_empty(),
        "nothing was stored"
    );
    // DELETE a response: gone, and a chain from it is refused.
    let del = request(
        addr,
        "DELETE",
        &format!("/v1/responses/{}", first["id"].as_str().expect("id")),
        &[],
        None,
    );
    assert_eq!(ok(del)["deleted"], true);
    error_of(
        &get(
            addr,
            &format!("/v1/responses/{}", first["id"].as_str().expect("id")),
        ),
        404,
    );
    srv.shutdown();
}

#[test]
fn api_keys_scope_every_id() {
    let engine = engine(2048);
    let srv = server(engine, WindowRule::default(), &["sk-one", "sk-two"]);
    let addr = srv.addr;
    let as_key = |key: &str, method: &str, path: &str, body: Option<&Value>| {
        let auth = format!("Bearer {key}");
        let bytes = body.map(|b| b.to_string());
        request(
            addr,
            method,
            path,
            &[("Authorization", &auth)],
            bytes.as_deref().map(str::as_bytes),
        )
    };
    let conv = ok(as_key(
        "sk-one",
        "POST",
        "/v1/conversations",
        Some(&json!({"items": [{"role": "user", "content": "secret"}]})),
    ));
    let cid = conv["id"].as_str().expect("id");
    let resp = ok(as_key(
        "sk-one",
        "POST",
        "/v1/responses",
        Some(&json!({"model": MODEL, "input": "hi", "temperature": 0, "max_output_tokens": 4})),
    ));
    let rid = resp["id"].as_str().expect("id");
    for (method, path) in [
        ("GET", format!("/v1/conversations/{cid}")),
        ("GET", format!("/v1/conversations/{cid}/items")),
        ("DELETE", format!("/v1/conversations/{cid}")),
        ("GET", format!("/v1/responses/{rid}")),
        ("GET", format!("/v1/responses/{rid}/input_items")),
        ("DELETE", format!("/v1/responses/{rid}")),
    ] {
        error_of(&as_key("sk-two", method, &path, None), 404);
    }
    let chained = json!({"model": MODEL, "input": "x", "previous_response_id": rid});
    error_of(
        &as_key("sk-two", "POST", "/v1/responses", Some(&chained)),
        404,
    );
    let into = json!({"model": MODEL, "input": "x", "conversation": cid});
    error_of(&as_key("sk-two", "POST", "/v1/responses", Some(&into)), 404);
    error_of(
        &as_key(
            "sk-two",
            "POST",
            &format!("/v1/conversations/{cid}/items"),
            Some(&json!({"items": [{"role": "user", "content": "x"}]})),
        ),
        404,
    );
    // The owner still sees it all, unchanged.
    let items = ok(as_key(
        "sk-one",
        "GET",
        &format!("/v1/conversations/{cid}/items"),
        None,
    ));
    assert_eq!(items["data"].as_array().map(Vec::len), Some(1));
    ok(as_key(
        "sk-one",
        "GET",
        &format!("/v1/responses/{rid}"),
        None,
    ));
    error_of(
        &request(addr, "GET", &format!("/v1/responses/{rid}"), &[], None),
        401,
    );
    srv.shutdown();
}

#[test]
fn truncation_auto_drops_old_turns_and_disabled_refuses() {
    let engine = engine(256);
    let srv = server(
        engine,
        WindowRule {
            min_turns: 0,
            step: 1,
        },
        &[],
    );
    let addr = srv.addr;
    let conv = ok(post(addr, "/v1/conversations", &json!({})));
    let id = conv["id"].as_str().expect("id");
    let long = "Please remember this sentence about rivers and mountains and the sea. ".repeat(3);
    let mut last = 0;
    for k in 0..5 {
        let res = respond(
            addr,
            json!({"input": format!("{k}: {long}"), "conversation": id, "truncation": "auto", "max_output_tokens": 16}),
        );
        let input = res["usage"]["input_tokens"].as_u64().expect("tokens");
        assert!(
            input as usize + 16 <= 256,
            "turn {k}: {input} prompt tokens do not leave room for the output"
        );
        last = input;
    }
    assert!(last > 0);
    assert_eq!(
        conversation_items(addr, id).len(),
        10,
        "the store keeps every turn"
    );
    let refused = json!({"model": MODEL, "input": long, "conversation": id, "truncation": "disabled", "max_output_tokens": 16});
    let err = error_of(&post(addr, "/v1/responses", &refused), 400);
    assert_eq!(err["code"], "context_length_exceeded");
    assert_eq!(
        conversation_items(addr, id).len(),
        10,
        "a refused turn stores nothing"
    );
    srv.shutdown();
}

#[test]
fn thirty_two_conversations_of_five_turns_at_once() {
    let engine = engine(2048);
    let srv = server(engine, WindowRule::default(), &[]);
    let addr = srv.addr;
    let users: Vec<_> = (0..32)
        .map(|u| {
            std::thread::spawn(move || {
                let conv = ok(post(addr, "/v1/conversations", &json!({})));
                let id = conv["id"].as_str().expect("id").to_string();
                let mut answers = Vec::new();
                for t in 0..5 {
                    let res = respond(addr, json!({"input": format!("user {u} turn {t}"), "conversation": id, "max_output_tokens": 4}));
                    answers.push(res["output"][0]["id"].as_str().expect("item id").to_string());
                }
                (u, id, answers)
            })
        })
        .collect();
    for user in users {
        let (u, id, answers) = user.join().expect("user thread");
        let items = conversation_items(addr, &id);
        assert_eq!(items.len(), 10, "user {u}: no item lost");
        for (t, pair) in items.chunks(2).enumerate() {
            assert_eq!(
                pair[0]["content"][0]["text"],
                format!("user {u} turn {t}"),
                "user {u}: in order"
            );
            assert_eq!(
                pair[1]["id"], answers[t],
                "user {u}: answer {t} follows its question"
            );
        }
    }
    srv.shutdown();
}
