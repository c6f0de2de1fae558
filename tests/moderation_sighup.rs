//! The moderation policy of the real binary is reloaded on SIGHUP: a valid file takes
//! effect, a broken one is refused with the reason in the log and the old policy stays;
//! a server without a policy survives SIGHUP.

mod common;
mod http_support;
mod metrics_support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use http_support::post;
use metrics_support::Tessera;
use serde_json::json;

const SMALL: [&str; 6] = [
    "--served-model-name",
    "smol",
    "--max-model-len",
    "512",
    "--kv-cache-memory",
    "64MiB",
];

fn policy_file(text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-sighup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("policy.toml");
    std::fs::write(&path, text).expect("policy written");
    path
}

fn hangup(server: &Tessera) {
    let status = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

fn flagged(server: &Tessera, text: &str) -> bool {
    let res = post(server.addr, "/v1/moderations", &json!({"input": text}));
    assert_eq!(res.status, 200, "{}", res.text());
    res.json()["results"][0]["flagged"] == true
}

fn rule(term: &str) -> String {
    format!("[[rule]]\ncategory = \"geo\"\naction = \"block\"\nterms = [\"{term}\"]\n")
}

#[test]
fn sighup_reloads_the_policy_and_a_broken_file_keeps_the_old_one() {
    let path = policy_file(&rule("bomb"));
    let path_arg = path.to_string_lossy().into_owned();
    let mut args = SMALL.to_vec();
    args.extend(["--moderation-policy", &path_arg]);
    let server = Tessera::start(&args);
    assert!(flagged(&server, "a bomb") && !flagged(&server, "Paris"));

    std::fs::write(&path, rule("paris")).expect("rewrite");
    hangup(&server);
    let line = server.wait_line(Duration::from_secs(30), |l| l.contains("moderation policy"));
    assert!(
        line.as_deref().is_some_and(|l| l.contains("reloaded")),
        "{line:?}"
    );
    assert!(flagged(&server, "Paris") && !flagged(&server, "a bomb"));

    std::fs::write(
        &path,
        "[[rule]]\ncategory = \"geo\"\naction = \"explode\"\n",
    )
    .expect("rewrite");
    hangup(&server);
    let line = server.wait_line(Duration::from_secs(30), |l| l.contains("moderation policy"));
    let line = line.unwrap_or_default();
    assert!(
        line.contains("refused") && line.contains("explode"),
        "{line}"
    );
    assert!(
        flagged(&server, "Paris"),
        "the previous policy stays in force"
    );
}

#[test]
fn a_server_without_a_policy_survives_sighup() {
    let server = Tessera::start(&SMALL);
    hangup(&server);
    let line = server.wait_line(Duration::from_secs(30), |l| l.contains("moderation policy"));
    assert!(
        line.as_deref()
            .is_some_and(|l| l.contains("no moderation policy")),
        "{line:?}"
    );
    let (status, _) = metrics_support::http_get(server.addr, "/health").expect("health");
    assert_eq!(status, 200);
}
