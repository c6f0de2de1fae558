//! The chat WebSocket's protocol on the default model (SmolLM2-135M, greedy): a 3-turn
//! conversation (streamed deltas = stored answers, history in the prompt, prefix-cache
//! hits), stop mid-stream (the engine back to idle, the partial answer kept as
//! incomplete), two generations on one socket, regenerate (the last turn replaced, the
//! old response kept), moderation (blocked input and output), bad messages, and ratings
//! over the socket and HTTP exported as fine-tuning lines. One ignored "test" is a
//! measurement: the time to the first token over the socket against SSE.

mod http_support;
mod ws_support;

use futures_util::SinkExt;
use http_support::{get, post, request, SseEvent, SseStream, FRANCE, MODEL};
use serde_json::{json, Value};
use tessera::dialog::feedback::export_feedback;
use tessera::server::ws::{close, WsLimits};
use ws_support::{
    block_on, chat, engine, eventually, greedy, joined, server, wait_idle, Client, Ended,
};

fn of_type<'a>(messages: &'a [Value], kind: &str) -> Vec<&'a Value> {
    messages.iter().filter(|m| m["type"] == kind).collect()
}

#[test]
fn a_three_turn_conversation_streams_and_is_stored() {
    let engine = engine();
    let srv = server(&engine, chat(greedy(24), WsLimits::default()), &[], None);
    block_on(async {
        let (mut c, ready) = Client::ready(srv.addr, None).await;
        assert_eq!(ready["model"], "smol");
        assert_eq!(ready["defaults"]["max_tokens"], 24);
        let conv = c.conversation().await;
        let questions = [
            "My name is Lin.",
            "What is my name?",
            "Say it again, please.",
        ];
        let mut answers = Vec::new();
        let mut usage = Vec::new();
        for q in questions {
            let (messages, text) = c.turn(&conv, q, json!({"request_id": q})).await;
            let started = of_type(&messages, "generation.started");
            assert_eq!(started.len(), 1, "{messages:?}");
            assert_eq!(
                started[0]["request_id"], q,
                "the started message answers the send"
            );
            assert_eq!(started[0]["input"]["text"], q);
            let done = messages.last().expect("done");
            assert!(
                ["stop", "length"].contains(&done["finish_reason"].as_str().unwrap_or("")),
                "{done}"
            );
            assert_eq!(done["response_id"], started[0]["response_id"]);
            assert!(done["ttft_ms"].as_f64().is_some_and(|t| t > 0.0), "{done}");
            assert!(!text.is_empty());
            usage.push(done["usage"].clone());
            answers.push(text);
        }
        // Each prompt holds the history: it grows, and the earlier turns are cache hits.
        let input = |i: usize| usage[i]["input_tokens"].as_u64().unwrap_or(0);
        assert!(input(0) < input(1) && input(1) < input(2), "{usage:?}");
        assert!(
            usage[2]["cached_tokens"].as_u64().unwrap_or(0) >= 16,
            "{usage:?}"
        );
        c.send(json!({"type": "conversation.open", "id": conv, "request_id": "h"}))
            .await;
        let history = c.until("conversation.history").await;
        assert_eq!(history["request_id"], "h");
        assert_eq!(history["conversation"]["id"], conv.as_str());
        let items = history["items"].as_array().expect("items");
        assert_eq!(items.len(), 6);
        for (i, q) in questions.iter().enumerate() {
            assert_eq!(items[2 * i]["role"], "user");
            assert_eq!(items[2 * i]["text"], *q);
            assert_eq!(items[2 * i + 1]["role"], "assistant");
            assert_eq!(
                items[2 * i + 1]["text"],
                answers[i].as_str(),
                "stored = streamed"
            );
            assert!(items[2 * i + 1]["response_id"].as_str().is_some());
        }
        // The same conversation over HTTP.
        let listed = get(
            srv.addr,
            &format!("/v1/conversations/{conv}/items?order=asc"),
        );
        assert_eq!(listed.status, 200, "{}", listed.text());
        assert_eq!(listed.json()["data"].as_array().map(Vec::len), Some(6));
        c.send(json!({"type": "conversation.list"})).await;
        let list = c.until("conversation.list").await;
        assert_eq!(list["conversations"][0]["id"], conv.as_str());
        assert_eq!(list["conversations"][0]["title"], "test");
    });
}

#[test]
fn stop_aborts_mid_stream_and_frees_the_kv_blocks() {
    let engine = engine();
    let srv = server(&engine, chat(greedy(1500), WsLimits::default()), &[], None);
    block_on(async {
        let (mut c, _) = Client::ready(srv.addr, None).await;
        let conv = c.conversation().await;
        let ask = "Count from 1 to 500, one number per line.";
        c.send(json!({"type": "message.send", "conversation_id": conv, "text": ask}))
            .await;
        let started = c.until("generation.started").await;
        let generation = started["generation_id"].clone();
        c.until("delta").await;
        // The gauges are published after the step that sent the delta.
        assert!(
            eventually(|| engine.gauges().snapshot().kv_blocks_used > 0).await,
            "the sequence holds blocks"
        );
        c.send(json!({"type": "generation.stop", "generation_id": generation}))
            .await;
        let done = c.until("generation.done").await;
        assert_eq!(done["finish_reason"], "cancelled");
        assert!(done["usage"]["output_tokens"].as_u64().unwrap_or(0) < 1500);
        assert!(wait_idle(&engine), "the stopped sequence left the engine");
        c.send(json!({"type": "conversation.open", "id": conv}))
            .await;
        let history = c.until("conversation.history").await;
        assert_eq!(history["items"][1]["complete"], false, "kept as incomplete");
        // Closing the socket aborts what it runs.
        c.send(json!({"type": "message.send", "conversation_id": conv, "text": ask}))
            .await;
        c.until("delta").await;
        drop(c);
        assert!(
            wait_idle(&engine),
            "the closed socket's sequence left the engine"
        );
    });
}

#[test]
fn two_generations_run_on_one_socket() {
    let engine = engine();
    let srv = server(&engine, chat(greedy(32), WsLimits::default()), &[], None);
    block_on(async {
        let (mut c, _) = Client::ready(srv.addr, None).await;
        let (a, b) = (c.conversation().await, c.conversation().await);
        for (conv, text) in [(&a, FRANCE), (&b, "Name three colours.")] {
            c.send(json!({"type": "message.send", "conversation_id": conv, "text": text}))
                .await;
        }
        let mut by_generation: std::collections::HashMap<String, Vec<Value>> = Default::default();
        let mut done = 0;
        while done < 2 {
            let m = c.next().await.expect("message");
            if let Some(g) = m["generation_id"].as_str() {
                by_generation
                    .entry(g.to_string())
                    .or_default()
                    .push(m.clone());
            }
            done += usize::from(m["type"] == "generation.done");
        }
        assert_eq!(by_generation.len(), 2);
        for messages in by_generation.values() {
            let conv = messages[0]["conversation_id"]
                .as_str()
                .expect("conversation");
            assert!(messages.iter().all(|m| m["conversation_id"] == conv));
            c.send(json!({"type": "conversation.open", "id": conv}))
                .await;
            let history = c.until("conversation.history").await;
            assert_eq!(history["items"][1]["text"], joined(messages).as_str());
        }
        // A second send into a conversation that is still generating is refused.
        let slow = json!({"type": "message.send", "conversation_id": a, "text": "Tell a long story.", "max_tokens": 200});
        c.send(slow.clone()).await;
        c.until("generation.started").await;
        c.send(json!({"type": "message.send", "conversation_id": a, "text": "hi", "request_id": "second"}))
            .await;
        let refused = c.until("error").await;
        assert_eq!(refused["request_id"], "second");
        assert_eq!(refused["error"]["param"], "conversation_id");
    });
}

#[test]
fn regenerate_replaces_the_last_answer() {
    let engine = engine();
    let srv = server(&engine, chat(greedy(16), WsLimits::default()), &[], None);
    block_on(async {
        let (mut c, _) = Client::ready(srv.addr, None).await;
        let conv = c.conversation().await;
        let (first, _) = c.turn(&conv, "Hello!", json!({})).await;
        let (second, _) = c.turn(&conv, FRANCE, json!({})).await;
        let old = second.last().expect("done").clone();
        c.send(json!({"type": "message.regenerate", "conversation_id": conv, "temperature": 1.0, "seed": 7}))
            .await;
        let again = c.collect_until("generation.done").await;
        let started = of_type(&again, "generation.started")[0];
        assert_eq!(started["regenerate"], true);
        assert_eq!(started["input"]["text"], FRANCE);
        let new = again.last().expect("done");
        assert_ne!(new["response_id"], old["response_id"]);
        // Same history before the question: the same prompt as the replaced turn.
        assert_eq!(new["usage"]["input_tokens"], old["usage"]["input_tokens"]);
        c.send(json!({"type": "conversation.open", "id": conv}))
            .await;
        let history = c.until("conversation.history").await;
        let items = history["items"].as_array().expect("items");
        assert_eq!(items.len(), 4, "{items:?}");
        assert_eq!(items[3]["text"], joined(&again).as_str());
        assert_eq!(items[3]["response_id"], new["response_id"]);
        assert_eq!(
            items[1]["response_id"],
            first.last().expect("done")["response_id"]
        );
        // The replaced answer stays readable through its response.
        let old_id = old["response_id"].as_str().expect("id");
        assert_eq!(
            get(srv.addr, &format!("/v1/responses/{old_id}")).status,
            200
        );
    });
}

#[test]
fn moderation_blocks_input_and_cuts_output() {
    let engine = engine();
    let policy =
        std::env::temp_dir().join(format!("tessera-ws-policy-{}.toml", std::process::id()));
    // The test policy, and an output rule on a word of the greedy answer to `GREETING`.
    let rules = concat!(
        include_str!("fixtures/moderation/policy.toml"),
        "\n[[rule]]\ncategory = \"style\"\naction = \"block\"\nstages = [\"output\"]\nterms = [\"creative\"]\n"
    );
    std::fs::write(&policy, rules).expect("policy");
    let srv = server(
        &engine,
        chat(greedy(16), WsLimits::default()),
        &["sk-ws"],
        Some(policy),
    );
    block_on(async {
        let mut c = Client::connect(srv.addr, &["tessera.chat.v1", "bearer.sk-ws"]).await;
        assert_eq!(c.protocol.as_deref(), Some("tessera.chat.v1"));
        let ready = c.until("ready").await;
        assert_eq!(ready["max_input_chars"], 512);
        let conv = c.conversation().await;
        c.send(json!({"type": "message.send", "conversation_id": conv, "text": "how do I make a bomb", "request_id": "m1"}))
            .await;
        let blocked = c.until("moderation.blocked").await;
        assert_eq!(
            (blocked["stage"].as_str(), blocked["request_id"].as_str()),
            (Some("input"), Some("m1"))
        );
        assert_eq!(blocked["message"], "输入包含敏感内容,请重新表述");
        let too_long = "字".repeat(513);
        c.send(json!({"type": "message.send", "conversation_id": conv, "text": too_long}))
            .await;
        let err = c.until("error").await;
        assert_eq!(err["error"]["param"], "text");
        // "Hello! I'm here to help with any kind of creative writing project." stops
        // before "creative" (an output rule).
        let (messages, text) = c.turn(&conv, "Say hello.", json!({})).await;
        assert!(
            text.starts_with("Hello") && !text.contains("creat"),
            "{text:?}"
        );
        let blocked = of_type(&messages, "moderation.blocked");
        assert_eq!(
            blocked.first().map(|m| m["stage"].clone()),
            Some(json!("output")),
            "{text:?}"
        );
        assert_eq!(
            messages.last().expect("done")["finish_reason"],
            "content_filter"
        );
        c.send(json!({"type": "conversation.open", "id": conv}))
            .await;
        let history = c.until("conversation.history").await;
        assert_eq!(
            history["items"].as_array().map(Vec::len),
            Some(2),
            "blocked inputs store nothing"
        );
    });
}

#[test]
fn bad_messages_get_errors_and_the_socket_goes_on() {
    let engine = engine();
    let srv = server(
        &engine,
        chat(greedy(4), WsLimits::default()),
        &["sk-ws"],
        None,
    );
    block_on(async {
        // Nothing but `auth` before authentication; a wrong key is refused.
        let mut c = Client::connect(srv.addr, &[]).await;
        c.send(json!({"type": "conversation.list"})).await;
        assert!(matches!(
            c.ended().await,
            Ended::Closed(close::UNAUTHORIZED, _)
        ));
        let mut c = Client::connect(srv.addr, &["tessera.chat.v1"]).await;
        c.send(json!({"type": "auth", "api_key": "sk-wrong"})).await;
        assert!(
            matches!(c.ended().await, Ended::Closed(close::UNAUTHORIZED, r) if r.contains("API key"))
        );
        let mut c = Client::connect(srv.addr, &["tessera.chat.v1", "bearer.sk-nope"]).await;
        assert!(matches!(
            c.ended().await,
            Ended::Closed(close::UNAUTHORIZED, _)
        ));
        // An unknown type before `auth`: its error (which lists every type) is the close
        // reason, cut to fit a close frame, so the client still reads the code.
        let mut c = Client::connect(srv.addr, &["tessera.chat.v1"]).await;
        c.send(json!({"type": "nope"})).await;
        match c.ended().await {
            Ended::Closed(close::UNAUTHORIZED, reason) => {
                assert!(
                    reason.len() <= 123 && reason.starts_with("unknown message type"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }

        let (mut c, _) = Client::ready(srv.addr, Some("sk-ws")).await;
        c.send(json!({"type": "nope", "request_id": "a"})).await;
        let err = c.until("error").await;
        assert_eq!(
            (err["request_id"].as_str(), err["error"]["param"].as_str()),
            (Some("a"), Some("type"))
        );
        assert!(err["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("message.send"));
        c.ws.send(tokio_tungstenite::tungstenite::Message::text("{not json"))
            .await
            .expect("send");
        assert_eq!(
            c.until("error").await["error"]["type"],
            "invalid_request_error"
        );
        c.send(json!({"type": "message.send", "conversation_id": "conv_missing", "text": "hi"}))
            .await;
        assert_eq!(c.until("error").await["error"]["code"], "not_found");
        c.send(json!({"type": "message.send", "conversation_id": "x", "text": "hi", "max_tokens": 100000}))
            .await;
        assert_eq!(c.until("error").await["error"]["param"], "max_tokens");
        c.send(json!({"type": "ping", "request_id": "p"})).await;
        assert_eq!(c.until("pong").await["request_id"], "p");
        c.send(json!({"type": "feedback", "response_id": "resp_nope", "rating": "up"}))
            .await;
        assert_eq!(c.until("error").await["error"]["code"], "not_found");
        c.send(json!({"type": "feedback", "response_id": "resp_nope", "rating": "meh"}))
            .await;
        assert_eq!(c.until("error").await["error"]["param"], "rating");
        // Binary frames are not part of the protocol: the socket is closed (1003).
        c.ws.send(tokio_tungstenite::tungstenite::Message::binary(vec![
            1u8, 2, 3,
        ]))
        .await
        .expect("send");
        assert!(matches!(
            c.ended().await,
            Ended::Closed(close::UNSUPPORTED_DATA, _)
        ));
    });
}

#[test]
fn ratings_are_stored_and_exported_as_fine_tuning_lines() {
    let engine = engine();
    let srv = server(
        &engine,
        chat(greedy(8), WsLimits::default()),
        &["sk-ws"],
        None,
    );
    let done_id = |t: &[Value]| {
        t.last().expect("done")["response_id"]
            .as_str()
            .expect("id")
            .to_string()
    };
    let (first_id, first_answer, second_id) = block_on(async {
        let (mut c, _) = Client::ready(srv.addr, Some("sk-ws")).await;
        let conv = c.conversation().await;
        let (t1, a1) = c.turn(&conv, "Hi there", json!({})).await;
        let (t2, _) = c.turn(&conv, FRANCE, json!({})).await;
        c.send(json!({"type": "feedback", "response_id": done_id(&t1), "rating": "up", "comment": "nice"}))
            .await;
        let recorded = c.until("feedback.recorded").await;
        assert_eq!(recorded["feedback"]["rating"], "up");
        assert_eq!(recorded["feedback"]["comment"], "nice");
        (done_id(&t1), a1, done_id(&t2))
    });
    // The second answer is rated bad over HTTP; another key cannot rate it.
    let path = format!("/v1/responses/{second_id}/feedback");
    let post = |key: &str, body: Value| {
        let auth = format!("Bearer {key}");
        request(
            srv.addr,
            "POST",
            &path,
            &[("Authorization", &auth)],
            Some(body.to_string().as_bytes()),
        )
    };
    assert_eq!(post("sk-other", json!({"rating": "down"})).status, 401);
    let res = post("sk-ws", json!({"rating": "down"}));
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["rating"], "down");
    assert_eq!(post("sk-ws", json!({"rating": "meh"})).status, 400);
    let pool = srv.state.dialog().expect("dialog").pool().clone();
    let export = export_feedback(&pool, 0, i64::MAX).expect("export");
    assert_eq!((export.good.len(), export.bad.len()), (1, 1));
    let good: Value = serde_json::from_str(&export.good[0]).expect("JSON line");
    assert_eq!(
        good,
        json!({"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": first_answer}]})
    );
    let bad: Value = serde_json::from_str(&export.bad[0]).expect("JSON line");
    assert_eq!(
        bad["messages"].as_array().map(Vec::len),
        Some(4),
        "the whole dialog"
    );
    assert_eq!(bad["messages"][2]["content"], FRANCE);
    assert!(!first_id.is_empty());
}

#[test]
fn the_page_is_served_with_its_policy_or_not_at_all() {
    let engine = engine();
    let srv = server(
        &engine,
        chat(greedy(4), WsLimits::default()),
        &["sk-ws"],
        None,
    );
    let page = get(srv.addr, "/");
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").expect("CSP");
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(page.text().contains("/web/app.js"));
    assert_eq!(get(srv.addr, "/web/app.js").status, 200);
    assert_eq!(get(srv.addr, "/web/../Cargo.toml").status, 404);
    let mut off = chat(greedy(4), WsLimits::default());
    off.web_ui = false;
    let srv = server(&engine, off, &[], None);
    assert_eq!(get(srv.addr, "/").status, 404);
    assert_eq!(get(srv.addr, "/web/app.js").status, 404);
}

fn median_and_p90(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9))
}

/// A measurement, not a test (`cargo test --release --test ws_chat -- --ignored
/// --nocapture`): the time to the first token a client sees for the same turn (a new
/// conversation, the same question, greedy) over an open socket (`message.send` to the
/// first `delta`) and over SSE (`POST /v1/responses` streamed, request to the first
/// `response.output_text.delta`), alternating; and the TTFT the socket reports in
/// `generation.done` (engine submit to first token, what the page shows).
#[test]
#[ignore = "a measurement; run it with --ignored --nocapture"]
fn measure_time_to_first_token_socket_against_sse() {
    const RUNS: usize = 40;
    let engine = engine();
    let srv = server(&engine, chat(greedy(4), WsLimits::default()), &[], None);
    let question = "Say hello.";
    block_on(async {
        let (mut c, _) = Client::ready(srv.addr, None).await;
        let (mut socket, mut reported, mut sse) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let conv = c.conversation().await;
            let sent = std::time::Instant::now();
            c.send(json!({"type": "message.send", "conversation_id": conv, "text": question}))
                .await;
            c.until("delta").await;
            socket.push(sent.elapsed().as_secs_f64() * 1e3);
            let done = c.until("generation.done").await;
            reported.push(done["ttft_ms"].as_f64().expect("ttft_ms"));

            let conv = post(srv.addr, "/v1/conversations", &json!({})).json()["id"].clone();
            let body = json!({"model": MODEL, "input": question, "conversation": conv,
                "stream": true, "temperature": 0, "max_output_tokens": 4});
            let sent = std::time::Instant::now();
            let mut stream = SseStream::open(srv.addr, "/v1/responses", &body);
            loop {
                match stream.next_event().expect("a delta before the end") {
                    SseEvent::Data(e) | SseEvent::Comment(e)
                        if e.contains("response.output_text.delta") =>
                    {
                        break
                    }
                    _ => {}
                }
            }
            sse.push(sent.elapsed().as_secs_f64() * 1e3);
            let last = std::iter::from_fn(|| stream.next_event()).last();
            let ended =
                |e: &str| e.contains("response.incomplete") || e.contains("response.completed");
            assert!(
                matches!(&last, Some(SseEvent::Data(e) | SseEvent::Comment(e)) if ended(e)),
                "{last:?}"
            );
        }
        // Per turn: what the client waited beyond the engine's TTFT (parsing, the store's
        // read of the conversation, the prompt, and the delta's way out).
        let outside: Vec<f64> = socket.iter().zip(&reported).map(|(c, s)| c - s).collect();
        let (socket, reported, sse, outside) = (
            median_and_p90(socket),
            median_and_p90(reported),
            median_and_p90(sse),
            median_and_p90(outside),
        );
        println!(
            "{RUNS} turns each, ms (median / p90): socket first delta {:.2} / {:.2}; \
             SSE first delta {:.2} / {:.2}; socket minus SSE {:+.2}; \
             generation.done ttft_ms {:.2} / {:.2}; socket beyond its ttft_ms {:.2} / {:.2}",
            socket.0,
            socket.1,
            sse.0,
            sse.1,
            socket.0 - sse.0,
            reported.0,
            reported.1,
            outside.0,
            outside.1
        );
    });
}
