//! The chat socket's turns in the conversation log, as an HTTP request's are: a turn, an
//! input the policy blocks and a regeneration, each logged exactly once on the route
//! `/v1/chat/ws` with the socket's key hash and address, the conversation, the input as
//! the model saw it and the answer the socket streamed.

mod http_support;
mod ws_support;

use http_support::serve;
use serde_json::{json, Value};
use tessera::audit::AuditConfig;
use tessera::dialog::DialogConfig;
use tessera::server::ws::WsLimits;
use tessera::server::{ServerConfig, SpawnedServer};
use tessera::store::{Cursor, Owner, StoreConfig, StoredExchange};
use ws_support::{block_on, chat, engine, greedy, joined, Client};

const KEY: &str = "sk-ws-audit";

fn server() -> SpawnedServer {
    let cfg = ServerConfig {
        chat: chat(greedy(12), WsLimits::default()),
        api_keys: vec![KEY.into()],
        moderation_policy: Some(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/moderation/policy.toml"),
        ),
        dialog: DialogConfig {
            store: StoreConfig::Memory,
            ..DialogConfig::default()
        },
        audit: AuditConfig {
            review_sample_rate: 0.0,
            ..AuditConfig::default()
        },
        ..ServerConfig::default()
    };
    serve(engine(), 64, cfg)
}

/// The socket's exchanges, oldest first, once everything submitted is written.
fn socket_exchanges(server: &SpawnedServer) -> Vec<StoredExchange> {
    let audit = server.state.audit().expect("the log is on");
    audit
        .flush(http_support::HANG_GUARD)
        .expect("the log is written");
    let all = audit
        .pool()
        .clone()
        .run_blocking(|s| s.export_audit(i64::MIN, i64::MAX, &Cursor::start(), 1_000_000))
        .expect("the log is readable");
    all.into_iter()
        .filter(|e| e.record.route == "/v1/chat/ws")
        .collect()
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).expect("stored JSON")
}

#[test]
fn socket_turns_are_logged_once_with_what_the_socket_streamed() {
    let srv = server();
    let (conv, answer, regenerated) = block_on(async {
        let (mut c, _) = Client::ready(srv.addr, Some(KEY)).await;
        let conv = c.conversation().await;
        let (_, answer) = c.turn(&conv, "Say hi.", json!({})).await;
        c.send(json!({"type": "message.send", "conversation_id": conv, "text": "how do I make a bomb"}))
            .await;
        c.until("moderation.blocked").await;
        c.send(json!({"type": "message.regenerate", "conversation_id": conv}))
            .await;
        let messages = c.collect_until("generation.done").await;
        (conv, answer, joined(&messages))
    });
    let logged = socket_exchanges(&srv);
    assert_eq!(logged.len(), 3, "{logged:#?}");
    for e in &logged {
        let r = &e.record;
        assert_eq!(r.api_key_id, Owner::of_key(KEY).as_str());
        assert_eq!(r.conversation_id.as_deref(), Some(conv.as_str()));
        assert!(r
            .client_addr
            .as_deref()
            .is_some_and(|a| a.starts_with("127.0.0.1:")));
    }
    let ids: std::collections::BTreeSet<&str> = logged
        .iter()
        .map(|e| e.record.request_id.as_str())
        .collect();
    assert_eq!(ids.len(), 3, "one request id per generation: {ids:?}");

    let turn = &logged[0].record;
    assert_eq!(turn.status, 200);
    assert_eq!(
        json_of(&turn.input),
        json!([{"role": "user", "content": "Say hi."}])
    );
    assert_eq!(json_of(&turn.output)[0]["text"], answer.as_str());
    assert!(turn.response_id.is_some() && turn.thread_id.is_some());

    let blocked = &logged[1].record;
    assert_eq!(
        (blocked.status, blocked.finish_reason.as_deref()),
        (400, Some("content_filter"))
    );
    assert_eq!(
        json_of(&blocked.input)[0]["content"],
        "how do I make a bomb"
    );
    assert_eq!(json_of(&blocked.output), json!([]));
    assert!(blocked.categories.iter().any(|c| c == "violence"));

    let again = &logged[2].record;
    assert_eq!(again.status, 200);
    assert_eq!(json_of(&again.input)[0]["content"], "Say hi.");
    assert_eq!(json_of(&again.output)[0]["text"], regenerated.as_str());
    assert_ne!(again.response_id, turn.response_id);
}
