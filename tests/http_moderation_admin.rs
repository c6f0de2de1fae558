//! Moderation over real HTTP, the operations side: `/v1/moderations`, the admin reload
//! (refusing ordinary keys), 10 reloads (good and broken files) under 32 streams, and
//! the hit counters.

mod http_support;
mod moderation_support;

use http_support::{chatml, error_of, ok, post, request, serve, SseStream, MODEL};
use moderation_support::{
    authed, conforms, fixture, greedy_chat, moderated_config, post_m, write_policy, ADMIN_KEY,
    POLICY, USER_KEY,
};
use serde_json::json;

#[test]
fn moderations_endpoint_answers_in_openai_shape() {
    let res = ok(post_m(
        "/v1/moderations",
        &json!({"input": ["炸 弹", "hello", "call 13812345678"]}),
    ));
    conforms("/v1/moderations", false, &res);
    assert!(res["id"].as_str().is_some_and(|id| id.starts_with("modr-")));
    assert!(res["model"]
        .as_str()
        .is_some_and(|m| m.starts_with("tessera-policy-")));
    let flagged: Vec<bool> = res["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["flagged"] == true)
        .collect();
    assert_eq!(flagged, [true, false, true]);
    assert_eq!(res["results"][0]["categories"]["violence"], true);
    assert_eq!(res["results"][0]["category_scores"]["violence"], 1.0);
    assert_eq!(
        res["results"][1]["categories"],
        json!({"fraud": false, "geo": false, "pii": false, "violence": false})
    );
    let err = error_of(
        &post(
            fixture().plain.addr,
            "/v1/moderations",
            &json!({"input": "x"}),
        ),
        400,
    );
    assert_eq!(err["code"], "moderation_not_configured");
    // The API key guards it like every /v1 route; the admin key is not an API key.
    error_of(
        &authed(
            fixture().moderated.addr,
            "/v1/moderations",
            ADMIN_KEY,
            &json!({"input": "x"}),
        ),
        401,
    );
}

#[test]
fn the_admin_reload_takes_only_admin_keys() {
    let addr = fixture().moderated.addr;
    let path = "/admin/v1/moderation/reload";
    let err = error_of(&authed(addr, path, USER_KEY, &json!({})), 401);
    assert_eq!(err["code"], "invalid_admin_key");
    error_of(&request(addr, "POST", path, &[], None), 401);
    let res = ok(authed(addr, path, ADMIN_KEY, &json!({})));
    conforms(path, false, &res);
    assert_eq!(res["rules"], 4);
    assert_eq!(
        res["version"], res["previous_version"],
        "the same file, the same version"
    );
    // Without --admin-api-key the admin API is closed.
    let err = error_of(&post(fixture().plain.addr, path, &json!({})), 403);
    assert_eq!(err["code"], "admin_api_disabled");
}

#[test]
fn reloads_under_32_streams_fail_no_request() {
    let policy = write_policy("reloaded.toml", POLICY);
    let server = serve(
        fixture().engine.clone(),
        40,
        moderated_config(policy.clone()),
    );
    let addr = server.addr;
    let auth = format!("Bearer {USER_KEY}");
    let streams: Vec<SseStream> = (0..32)
        .map(|i| {
            let body = json!({"model": MODEL, "prompt": chatml(&format!("Count to {i}.")), "max_tokens": 24, "stream": true, "temperature": 0});
            let s = SseStream::open_with(addr, "/v1/completions", &[("Authorization", &auth)], &body);
            assert_eq!(s.status, 200);
            s
        })
        .collect();
    let broken = "[[rule]]\ncategory = \"x\"\naction = \"explode\"\nterms = [\"a\"]";
    let alternate = POLICY.replace("\"money laundering\"", "\"laundering\"");
    let mut versions = Vec::new();
    for i in 0..10 {
        let text = match i % 3 {
            0 => alternate.as_str(),
            1 => broken,
            _ => POLICY,
        };
        std::fs::write(&policy, text).expect("write");
        let res = authed(addr, "/admin/v1/moderation/reload", ADMIN_KEY, &json!({}));
        if i % 3 == 1 {
            let err = error_of(&res, 400);
            assert_eq!(err["code"], "invalid_policy");
            assert!(
                err["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("explode")),
                "{err}"
            );
        } else {
            versions.push(ok(res)["version"].as_str().expect("version").to_string());
        }
    }
    assert!(
        versions.windows(2).all(|w| w[0] != w[1]),
        "each reload swapped: {versions:?}"
    );
    for stream in streams {
        let events = stream.rest();
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        assert!(
            !events.iter().any(|e| e.contains("\"error\"")),
            "{events:?}"
        );
        assert!(events.iter().any(
            |e| e.contains("finish_reason\":\"length") || e.contains("finish_reason\":\"stop")
        ));
    }
    server.shutdown();
}

#[test]
fn hits_are_counted_by_stage_category_and_action() {
    ok(post_m(
        "/v1/chat/completions",
        &greedy_chat("洗钱", json!({"max_tokens": 1})),
    ));
    let metrics = request(fixture().moderated.addr, "GET", "/metrics", &[], None).text();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("tessera_moderation_hits_total")
                && l.contains("category=\"fraud\"")
                && l.contains("stage=\"input\"")
        })
        .unwrap_or_else(|| panic!("no fraud hits:\n{metrics}"));
    assert!(line.contains("action=\"flag\""), "{line}");
    let count: f64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("value");
    assert!(count >= 1.0);
    // Every series of the policy is exported from the start.
    assert!(metrics.contains("stage=\"output\"") && metrics.contains("category=\"geo\""));
}
