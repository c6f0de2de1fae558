//! API keys against a real server started with a key (`k1`): every route of
//! `routes::ROUTES` outside `routes::OPEN_ROUTES` refuses a request without the key
//! however its path is spelled (percent-encoded, `%2F`, double slashes, dots, case,
//! trailing slash): each spelling is either refused (401), not routed at all (404) or
//! not a valid request (400), never served; the spellings that do reach a route prove it by serving with the key.
//! Driven from the route table, so a route added later is checked too. The `Bearer`
//! scheme is case-insensitive (RFC 7235).

mod http_support;

use std::sync::OnceLock;

use http_support::{chat, completion, error_of, request, serve, start_engine, Response, MODEL};
use serde_json::{json, Value};
use tessera::config::EngineConfig;
use tessera::server::routes::{OPEN_ROUTES, ROUTES};
use tessera::server::{ServerConfig, SpawnedServer};

const KEY: &str = "k1";

fn server() -> &'static SpawnedServer {
    static SERVER: OnceLock<SpawnedServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let cfg = EngineConfig {
            kv_cache_memory: 64 << 20,
            max_model_len: Some(1024),
            ..EngineConfig::default()
        };
        let engine = start_engine(&cfg);
        let server_cfg = ServerConfig {
            api_keys: vec![KEY.into()],
            ..ServerConfig::default()
        };
        serve(engine, cfg.max_num_seqs, server_cfg)
    })
}

/// A body the route would serve with 200 (none for GET routes).
fn body_for(path: &str) -> Option<Value> {
    match path {
        "/v1/chat/completions" => Some(chat(json!({"max_tokens": 1}))),
        "/v1/completions" => Some(completion(json!({"max_tokens": 1}))),
        "/tokenize" => Some(json!({"model": MODEL, "prompt": "hello"})),
        "/detokenize" => Some(json!({"model": MODEL, "tokens": [1, 2]})),
        _ => None,
    }
}

fn call(method: &str, path: &str, route: &str, auth: Option<&str>) -> Response {
    let body = body_for(route).map(|b| b.to_string());
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

/// The route the table declares for `path` with `{model}` filled in.
fn concrete(path: &str) -> String {
    path.replace("{model}", MODEL)
}

fn protected() -> impl Iterator<Item = (&'static str, &'static str)> {
    ROUTES
        .iter()
        .copied()
        .filter(|(_, path)| !OPEN_ROUTES.contains(path))
}

#[test]
fn no_spelling_of_a_protected_route_is_served_without_the_key() {
    let mut reached = 0;
    for (method, route) in protected() {
        for spelling in spellings(&concrete(route)) {
            let refused = call(method, &spelling, route, None);
            // 401: refused; 404: routed nowhere; 400: not even a valid request.
            let code = match refused.status {
                401 => "invalid_api_key",
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
            let keyed = call(method, &spelling, route, Some(&format!("Bearer {KEY}")));
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
        }
        let keyed = call(method, &path, route, Some(&format!("Bearer {KEY}")));
        assert_eq!(keyed.status, 200, "{method} {route}: {}", keyed.text());
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
