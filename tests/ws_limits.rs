//! What bounds a chat WebSocket: an oversized message (closed 1009), a client that
//! never reads (closed 4409, its connection dropped, server memory bounded by the send
//! buffer), messages above the rate (an error, then a close), sockets per key, the
//! heartbeat's idle limit, the auth deadline, and 100 sockets chatting at once.

mod http_support;
mod ws_support;

use std::time::Duration;

use futures_util::SinkExt;
use http_support::request;
use serde_json::{json, Value};
use tessera::server::ws::{close, WsLimits};
use tokio_tungstenite::tungstenite::Message;
use ws_support::{block_on, chat, engine, eventually, greedy, server, wait_idle, Client, Ended};

#[test]
fn an_oversized_message_closes_the_socket() {
    let engine = engine();
    let limits = WsLimits {
        max_message_bytes: 4096,
        ..WsLimits::default()
    };
    let srv = server(&engine, chat(greedy(4), limits), &[], None);
    block_on(async {
        let (mut c, _) = Client::ready(srv.addr, None).await;
        let text = "x".repeat(5000);
        c.send(json!({"type": "message.send", "conversation_id": "c", "text": text}))
            .await;
        match c.ended().await {
            Ended::Closed(code, reason) => {
                assert_eq!(code, close::MESSAGE_TOO_BIG);
                assert!(reason.contains("4096"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    });
}

/// A conversation of 20 items of 30 KB each (made over HTTP).
fn big_conversation(addr: std::net::SocketAddr) -> String {
    let items: Vec<Value> = (0..20)
        .map(|i| json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": "y".repeat(30_000)}))
        .collect();
    let body = json!({"items": items}).to_string();
    let res = request(
        addr,
        "POST",
        "/v1/conversations",
        &[],
        Some(body.as_bytes()),
    );
    assert_eq!(res.status, 200, "{}", res.text());
    res.json()["id"].as_str().expect("id").to_string()
}

#[test]
fn a_client_that_never_reads_is_closed_and_dropped() {
    let engine = engine();
    let limits = WsLimits {
        send_buffer: 64 << 10,
        ..WsLimits::default()
    };
    let srv = server(&engine, chat(greedy(4), limits), &[], None);
    let conv = big_conversation(srv.addr);
    block_on(async {
        let (mut c, _) = Client::ready(srv.addr, None).await;
        // Each open answers ~600 KB; the client asks 40 times and reads nothing.
        for _ in 0..40 {
            c.send(json!({"type": "conversation.open", "id": conv}))
                .await;
        }
        let hub = srv.state.ws.clone();
        assert!(
            eventually(|| hub.closed_with(close::SLOW_READER) == 1).await,
            "the server gave up on the slow reader"
        );
        // What the client finds when it reads at last: the queued answers, then the end
        // (the close frame, or a dropped connection once the grace ran out). Far less
        // than the 24 MB it asked for ever left the server.
        let mut received = 0usize;
        let end = loop {
            match tokio::time::timeout(http_support::HANG_GUARD, c.ws.next_frame()).await {
                Ok(Some(Ok(Message::Text(t)))) => received += t.len(),
                Ok(Some(Ok(Message::Close(f)))) => break f.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) => break None,
                Err(_) => panic!("the connection was never ended"),
            }
        };
        assert!(matches!(end, None | Some(close::SLOW_READER)), "{end:?}");
        assert!(received < 20 << 20, "{received} bytes");
        // The socket leaves the count when its task ends (the close answered or the
        // grace over).
        assert!(eventually(|| hub.open_sockets() == 0).await);
    });
}

trait NextFrame {
    async fn next_frame(
        &mut self,
    ) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>>;
}

impl NextFrame for ws_support::Stream {
    async fn next_frame(
        &mut self,
    ) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
        futures_util::StreamExt::next(self).await
    }
}

#[test]
fn rate_sockets_per_key_heartbeat_and_auth_are_limited() {
    let engine = engine();
    let limits = WsLimits {
        messages_per_second: 0.5,
        burst: 4,
        sockets_per_key: 2,
        auth: Duration::from_millis(500),
        ..WsLimits::default()
    };
    let srv = server(&engine, chat(greedy(4), limits), &["sk-a", "sk-b"], None);
    block_on(async {
        let (mut a, _) = Client::ready(srv.addr, Some("sk-a")).await;
        // Four messages of burst (`auth` counts), then the rate: the 4th ping is refused
        // with an error.
        for i in 0..4 {
            a.send(json!({"type": "ping", "request_id": i.to_string()}))
                .await;
        }
        let mut answers = Vec::new();
        for _ in 0..4 {
            answers.push(a.next().await.expect("answer"));
        }
        assert_eq!(answers.iter().filter(|m| m["type"] == "pong").count(), 3);
        let refused = answers
            .iter()
            .find(|m| m["type"] == "error")
            .expect("refused");
        assert_eq!(refused["error"]["code"], "rate_limit_exceeded");
        // Two sockets per key: a third one of sk-a is refused, sk-b still gets in.
        let (_a2, _) = Client::ready(srv.addr, Some("sk-a")).await;
        let mut a3 = Client::connect(srv.addr, &["tessera.chat.v1", "bearer.sk-a"]).await;
        assert!(matches!(
            a3.ended().await,
            Ended::Closed(close::TOO_MANY, _)
        ));
        let (_b, _) = Client::ready(srv.addr, Some("sk-b")).await;
        // No `auth` in time.
        let mut silent = Client::connect(srv.addr, &["tessera.chat.v1"]).await;
        assert!(
            matches!(silent.ended().await, Ended::Closed(close::UNAUTHORIZED, r) if r.contains("auth"))
        );
        drop(a);
    });
}

#[test]
fn a_silent_peer_is_closed_by_the_heartbeat() {
    let engine = engine();
    let limits = WsLimits {
        heartbeat: Duration::from_millis(200),
        idle: Duration::from_millis(800),
        ..WsLimits::default()
    };
    let srv = server(&engine, chat(greedy(4), limits), &[], None);
    block_on(async {
        let (mut quiet, _) = Client::ready(srv.addr, None).await;
        // It reads nothing, so it answers no ping: the server gives up on it.
        let hub = srv.state.ws.clone();
        assert!(eventually(|| hub.closed_with(close::TIMEOUT) == 1).await);
        assert!(matches!(
            quiet.ended().await,
            Ended::Closed(close::TIMEOUT, _)
        ));
        // A client that reads answers the pings and stays.
        let (mut alive, _) = Client::ready(srv.addr, None).await;
        for i in 0..3 {
            alive
                .send(json!({"type": "ping", "request_id": i.to_string()}))
                .await;
            alive.until("pong").await;
        }
        assert_eq!(hub.closed_with(close::TIMEOUT), 1);
    });
}

#[test]
fn a_flood_of_messages_closes_the_socket() {
    let engine = engine();
    let limits = WsLimits {
        messages_per_second: 1.0,
        burst: 1,
        ..WsLimits::default()
    };
    let srv = server(&engine, chat(greedy(4), limits), &[], None);
    block_on(async {
        let (mut c, _) = Client::ready(srv.addr, None).await;
        for _ in 0..300 {
            let ping = Message::text(json!({"type": "ping"}).to_string());
            if c.ws.feed(ping).await.is_err() {
                break;
            }
        }
        let _ = c.ws.flush().await;
        assert!(matches!(c.ended().await, Ended::Closed(close::TOO_MANY, _)));
    });
}

#[test]
fn a_hundred_sockets_chat_at_once() {
    let engine = engine();
    let srv = server(&engine, chat(greedy(4), WsLimits::default()), &[], None);
    let addr = srv.addr;
    let hub = srv.state.ws.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(101));
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    let (mut c, _) = Client::ready(addr, None).await;
                    barrier.wait().await;
                    let conv = c.conversation().await;
                    let (messages, _) = c
                        .turn(&conv, &format!("Say the number {i}."), json!({}))
                        .await;
                    let done = messages.last().cloned().expect("done");
                    barrier.wait().await;
                    done
                })
            })
            .collect();
        barrier.wait().await;
        assert_eq!(hub.open_sockets(), 100, "all 100 sockets are open at once");
        barrier.wait().await;
        for task in tasks {
            let done = task.await.expect("task");
            assert!(
                done["usage"]["output_tokens"].as_u64().unwrap_or(0) >= 1,
                "{done}"
            );
        }
        assert!(eventually(|| hub.open_sockets() == 0).await);
    });
    assert!(wait_idle(&engine));
}
