//! API keys against a real server started with a key (`k1`), an admin key (`a1`) and a
//! moderation policy: every route of `routes::ROUTES` outside `routes::OPEN_ROUTES`
//! refuses a request without its key however its path is spelled (percent-encoded,
//! `%2F`, double slashes, dots, case, trailing slash): each spelling is either refused
//! (401), not routed at all (404) or not a valid request (400), never served; the
//! spellings that do reach a route prove it by serving with the key. Admin routes
//! (`routes::ADMIN_ROUTES`) take only the admin key, the others only an API key. Routes
//! with ids (`{id}`, `{item_id}`) are called on a response or conversation made for the
//! call, so that each keyed call can succeed. Driven from the route table, so a route
//! added later is checked too. The `Bearer` scheme is case-insensitive (RFC 7235).

mod http_support;

use std::sync::OnceLock;

use http_support::{chat, completion, error_of, request, serve, start_engine, Response, MODEL};
use serde_json::{json, Value};
use tessera::config::EngineConfig;
use tessera::server::routes::{
    ADMIN_ROUTES, ADMIN_WHEN_SET_ROUTES, OPEN_ROUTES, ROUTES, SOCKET_ROUTES,
};
use tessera::server::{ServerConfig, SpawnedServer};

const KEY: &str = "k1";
const ADMIN_KEY: &str = "a1";

fn server() -> &'static SpawnedServer {
    static SERVER: OnceLock<SpawnedServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let cfg = EngineConfig {
            kv_cache_memory: 64 << 20,
            max_model_len: Some(1024),
            ..EngineConfig::default()
        };
        let engine = start_engine(&cfg);
        let policy = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/moderation/policy.toml");
        let server_cfg = ServerConfig {
            api_keys: vec![KEY.into()],
            admin_api_keys: vec![ADMIN_KEY.into()],
            moderation_policy: Some(policy),
            ..ServerConfig::default()
        };
        serve(engine, cfg.max_num_seqs, server_cfg)
    })
}

/// A body `method route` would serve with 200 (none for GET and DELETE).
fn body_for(method: &str, route: &str) -> Option<Value> {
    if method != "POST" {
        return None;
    }
    match route {
        "/v1/chat/completions" => Some(chat(json!({"max_tokens": 1}))),
        "/v1/completions" => Some(completion(json!({"max_tokens": 1}))),
        "/tokenize" => Some(json!({"model": MODEL, "prompt": "hello"})),
        "/detokenize" => Some(json!({"model": MODEL, "tokens": [1, 2]})),
        "/v1/responses" => {
            Some(json!({"model": MODEL, "input": "hi", "temperature": 0, "max_output_tokens": 1}))
        }
        "/v1/conversations" => Some(json!({"items": [{"role": "user", "content": "hi"}]})),
        "/v1/conversations/{id}" => Some(json!({"metadata": {"topic": "auth"}})),
        "/v1/conversations/{id}/items" => {
            Some(json!({"items": [{"role": "user", "content": "more"}]}))
        }
        "/v1/moderations" => Some(json!({"input": "hello"})),
        "/admin/v1/exchanges/{id}/review" => Some(json!({"verdict": "ok", "reviewer": "auth"})),
        "/v1/responses/{id}/feedback" => Some(json!({"rating": "up"})),
        // No such adapter: the handler answers 404 (`keyed_status`).
        "/v1/load_lora_adapter" => {
            Some(json!({"lora_name": "auth", "lora_path": "/nonexistent/auth.gguf"}))
        }
        "/v1/unload_lora_adapter" => Some(json!({"lora_name": "auth"})),
        _ => Some(json!({})),
    }
}

/// Whether `route` takes the admin key on this server (which has one configured).
fn is_admin(route: &str) -> bool {
    ADMIN_ROUTES.contains(&route) || ADMIN_WHEN_SET_ROUTES.contains(&route)
}

/// The status `body_for`'s request gets with the right key: 200, but 404 from the LoRA
/// routes (the adapter named does not exist, which only their handler can say).
fn keyed_status(route: &str) -> u16 {
    if ADMIN_WHEN_SET_ROUTES.contains(&route) {
        404
    } else {
        200
    }
}

/// `Bearer <key>` with the key `route` takes: the admin key for admin routes.
fn auth_for(route: &str) -> String {
    let key = if is_admin(route) { ADMIN_KEY } else { KEY };
    format!("Bearer {key}")
}

/// The code of the 401 a request to `route` without its key gets.
fn refusal_code(route: &str) -> &'static str {
    if is_admin(route) {
        "invalid_admin_key"
    } else {
        "invalid_api_key"
    }
}

fn call(method: &str, path: &str, route: &str, auth: Option<&str>) -> Response {
    let body = body_for(method, route).map(|b| b.to_string());
    let header = auth.map(|a| ("Authorization", a));
    request(
        server().addr,
        method,
        path,
        header.as_slice(),
        body.as_deref().map(str::as_bytes),
    )
}

/// Spellings of `path` that a router or a proxy might treat as the same route.
fn spellings(path: &str) -> Vec<String> {
    let encode_all: String = path
        .chars()
        .map(|c| match c {
            '/' => "/".to_string(),
            c => format!("%{:02X}", c as u32),
        })
        .collect();
    let encode_first: String = path
        .split('/')
        .map(|segment| match segment.chars().next() {
            Some(c) => format!("%{:02x}{}", c as u32, &segment[c.len_utf8()..]),
            None => String::new(),
        })
        .collect::<Vec<_>>()
        .join("/");
    let mut encode_last = path.to_string();
    if let Some(c) = encode_last.pop() {
        encode_last.push_str(&format!("%{:02x}", c as u32));
    }
    vec![
        path.to_string(),
        encode_all,
        encode_first,
        encode_last,
        path.replacen("/v1/", "/%761/", 1),
        path.replacen("/v1/", "/%76%31/", 1),
        path.replace('/', "%2F"),
        path.replacen('/', "/%2F", 1),
        path.replace('/', "//"),
        format!("/{path}"),
        format!("{path}/"),
        format!("{path}."),
        format!("{path}/."),
        path.replacen("/v1/", "/v1/./", 1),
        path.replacen("/v1/", "/v2/../v1/", 1),
        path.to_uppercase(),
        format!("{path}?x=1"),
        format!("{path}%00"),
        format!("{path};a=b"),
    ]
}

/// The value of `field` in the 200 answer to `method path` (called with the key).
fn made(method: &str, path: &str, route: &str, pointer: &str) -> String {
    let res = call(method, path, route, Some(&auth_for(route)));
    assert_eq!(res.status, 200, "{method} {path}: {}", res.text());
    let value = res.json();
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{method} {path}: no {pointer} in {value}"))
        .to_string()
}

/// The route the table declares for `path` with its parameters filled in: the served
/// model, and a response or conversation (with one item), or a logged exchange (its id
/// or its thread's), made for this call.
fn concrete(path: &str) -> String {
    let mut path = path.replace("{model}", MODEL).replace("{file}", "app.js");
    if path.starts_with("/admin/v1/exchanges/{id}") || path.starts_with("/admin/v1/threads/{id}") {
        let auth = auth_for("/v1/responses");
        let (exchange, thread) = http_support::logged_exchange(server(), &auth);
        let id = if path.starts_with("/admin/v1/threads/") {
            thread
        } else {
            exchange
        };
        path = path.replace("{id}", &id);
    }
    if path.starts_with("/v1/responses/{id}") {
        let id = made("POST", "/v1/responses", "/v1/responses", "/id");
        path = path.replace("{id}", &id);
    }
    if path.starts_with("/v1/conversations/{id}") {
        let id = made("POST", "/v1/conversations", "/v1/conversations", "/id");
        path = path.replace("{id}", &id);
        if path.contains("{item_id}") {
            let items = format!("/v1/conversations/{id}/items");
            let item = made("GET", &items, "/v1/conversations/{id}/items", "/data/0/id");
            path = path.replace("{item_id}", &item);
        }
    }
    assert!(!path.contains('{'), "{path}: a parameter is not filled in");
    path
}

fn protected() -> impl Iterator<Item = (&'static str, &'static str)> {
    ROUTES
        .iter()
        .copied()
        .filter(|(_, path)| !OPEN_ROUTES.contains(path) && !SOCKET_ROUTES.contains(path))
}

#[test]
fn no_spelling_of_a_protected_route_is_served_without_the_key() {
    let mut reached = 0;
    for (method, route) in protected() {
        let count = spellings(route).len();
        for i in 0..count {
            // A fresh response or conversation for each spelling, so that the keyed call
            // of a spelling that reaches the route can serve even after a DELETE.
            let spelling = spellings(&concrete(route)).swap_remove(i);
            let refused = call(method, &spelling, route, None);
            // 401: refused; 404: routed nowhere; 400: not even a valid request.
            let code = match refused.status {
                401 => refusal_code(route),
                404 => "unknown_route",
                400 => "invalid_request",
                other => panic!(
                    "{method} {spelling} without a key: {other} {}",
                    refused.text()
                ),
            };
            assert_eq!(
                error_of(&refused, refused.status)["code"],
                code,
                "{spelling}"
            );
            let keyed = call(method, &spelling, route, Some(&auth_for(route)));
            if refused.status == 401 && keyed.status == 200 {
                reached += 1;
            }
        }
    }
    // The plain spellings and the encoded ones (`/%76%31/…`, `/%761/…`,
    // `/tokeniz%65`) reach their routes; they are the ones that used to bypass the key.
    assert!(reached >= 4 * 6, "only {reached} spellings reached a route");
    for (method, path) in [
        ("POST", "/%76%31/chat/completions"),
        ("GET", "/%761/models"),
        ("POST", "/%76%31/completions"),
        ("POST", "/tokeniz%65"),
        ("POST", "/detokeniz%65"),
    ] {
        let route = path
            .replace("%76%31", "v1")
            .replace("%761", "v1")
            .replace("%65", "e");
        assert_eq!(call(method, path, &route, None).status, 401, "{path}");
        let keyed = call(method, path, &route, Some(&format!("Bearer {KEY}")));
        assert_eq!(keyed.status, 200, "{path} with the key: {}", keyed.text());
    }
}

#[test]
fn every_route_is_either_protected_or_listed_as_open() {
    for open in OPEN_ROUTES {
        assert!(
            ROUTES.iter().any(|(_, path)| path == open),
            "{open} is open but not a route"
        );
    }
    for &(method, route) in ROUTES {
        let path = concrete(route);
        let anonymous = call(method, &path, route, None);
        if SOCKET_ROUTES.contains(&route) {
            // The socket authenticates its own messages (tests/ws_chat.rs); over plain
            // HTTP, with a key or not, it only says that it wants an upgrade.
            assert_eq!(
                anonymous.status,
                400,
                "{method} {route}: {}",
                anonymous.text()
            );
            let keyed = call(method, &path, route, Some(&auth_for(route)));
            assert_eq!(keyed.status, 400, "{method} {route}: {}", keyed.text());
            continue;
        }
        if OPEN_ROUTES.contains(&route) {
            assert_ne!(anonymous.status, 401, "{method} {route} is listed as open");
        } else {
            assert_eq!(
                anonymous.status,
                401,
                "{method} {route} is neither protected nor listed as open: {}",
                anonymous.text()
            );
            // Another method on a protected path is refused before it learns anything.
            let other = if method == "GET" { "DELETE" } else { "GET" };
            assert_eq!(
                call(other, &path, route, None).status,
                401,
                "{other} {route}"
            );
            assert_eq!(error_of(&anonymous, 401)["code"], refusal_code(route));
            // An API key never opens an admin route, nor an admin key any other route.
            let wrong = if is_admin(route) { KEY } else { ADMIN_KEY };
            let refused = call(method, &path, route, Some(&format!("Bearer {wrong}")));
            assert_eq!(
                error_of(&refused, 401)["code"],
                refusal_code(route),
                "{method} {route} with the key `{wrong}`"
            );
        }
        let keyed = call(method, &path, route, Some(&auth_for(route)));
        let want = keyed_status(route);
        assert_eq!(keyed.status, want, "{method} {route}: {}", keyed.text());
    }
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    for auth in ["bearer k1", "BEARER k1", "Bearer   k1"] {
        let res = call("GET", "/v1/models", "/v1/models", Some(auth));
        assert_eq!(res.status, 200, "{auth}: {}", res.text());
    }
    for auth in ["Basic k1", "Bearer k2", "k1", "bearer"] {
        let res = call("GET", "/v1/models", "/v1/models", Some(auth));
        assert_eq!(error_of(&res, 401)["code"], "invalid_api_key", "{auth}");
    }
}
