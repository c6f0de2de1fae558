//! `grafana/tessera.json` checked against a real Prometheus: `scripts/prometheus.sh`
//! installs Debian's `prometheus` package if missing (the test fails when it cannot) and
//! runs it on loopback, scraping the real `tessera` binary every second while a load
//! (completions, streams, refusals) runs. The load runs until every panel's PromQL, with
//! the dashboard variables filled in, returns data through Prometheus' `/api/v1/query`
//! (a guard deadline fails a hang and names the panels without data and the scrape
//! errors Prometheus saw); each may name only metrics tessera exports. The dashboard's
//! rows and variables are the ones documented, and its variable queries find the server.

mod common;
mod http_support;
mod metrics_support;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use http_support::{chat, completion, post, SseStream};
use metrics_support::{http_get, Tessera};
use serde_json::{json, Value};

/// Stands in for Grafana's `$__rate_interval`.
const RATE_INTERVAL: &str = "1m";
/// Guards against a hang: how long the load may run before every panel has data.
const PANELS_GUARD: Duration = Duration::from_secs(240);

/// A Prometheus child process (`scripts/prometheus.sh run`).
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Self {
        let dir = std::env::temp_dir().join(format!("tessera-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let addr = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/prometheus.sh");
        let child = Command::new("bash")
            .arg(script)
            .args(["run", &target.to_string(), &addr.to_string()])
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("bash runs scripts/prometheus.sh");
        let mut prom = Self { child, addr, dir };
        // Installing the package may take minutes on a fresh machine.
        let deadline = Instant::now() + Duration::from_secs(600);
        while http_get(addr, "/-/ready").map(|r| r.0) != Some(200) {
            if let Ok(Some(status)) = prom.child.try_wait() {
                panic!(
                    "Prometheus did not start ({status}); scripts/prometheus.sh said:\n{}",
                    prom.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus not ready:\n{}",
                prom.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
        prom
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<path>`: the parsed JSON body.
    fn api(&self, path: &str) -> Value {
        let (status, body) = http_get(self.addr, &format!("/api/v1/{path}"))
            .unwrap_or_else(|| panic!("GET /api/v1/{path} failed"));
        let json: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/api/v1/{path}: status {status}, not JSON ({e}): {body}"));
        assert_eq!(json["status"], "success", "/api/v1/{path}: {json}");
        json
    }

    /// An instant query's result vector.
    fn query(&self, expr: &str) -> Vec<Value> {
        let json = self.api(&format!("query?query={}", percent_encode(expr)));
        assert_eq!(json["data"]["resultType"], "vector", "{expr}: {json}");
        json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Whether an instant query returns at least one finite value.
    fn has_data(&self, expr: &str) -> bool {
        self.query(expr).iter().any(|s| {
            s["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(f64::is_finite)
        })
    }

    /// Waits until Prometheus has scraped the target successfully once (`up == 1`).
    fn wait_first_scrape(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.query("up == 1").iter().any(|s| s["value"][1] == "1") {
            assert!(
                Instant::now() < deadline,
                "no successful scrape: {}",
                self.scrape_health()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Each target's health and last scrape error, for failure messages.
    fn scrape_health(&self) -> String {
        let targets = self.api("targets");
        let active = targets["data"]["activeTargets"].as_array().cloned();
        active
            .unwrap_or_default()
            .iter()
            .map(|t| format!("{} {} {:?}", t["scrapeUrl"], t["health"], t["lastError"]))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("address")
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Metric names an expression uses: identifiers starting `tessera_` or `vllm:`, outside
/// quoted strings.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let (mut token, mut quoted) = (String::new(), false);
    for c in expr.chars().chain([' ']) {
        if c == '"' {
            quoted = !quoted;
        }
        if !quoted && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            token.push(c);
            continue;
        }
        if token.starts_with("tessera_") || token.starts_with("vllm:") {
            names.insert(std::mem::take(&mut token));
        }
        token.clear();
    }
    names
}

/// Names in `expr` that are not series of the `exported` families (a histogram's
/// `_bucket`, `_sum` and `_count` count as its own).
fn unknown_names(expr: &str, exported: &BTreeSet<String>) -> Vec<String> {
    metric_names(expr)
        .into_iter()
        .filter(|name| {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| exported.contains(*base));
            !exported.contains(name) && family.is_none()
        })
        .collect()
}

/// Every panel with targets, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        out.extend(panel["panels"].as_array().cloned().unwrap_or_default());
        if panel["type"] != "row" {
            out.push(panel.clone());
        }
    }
    out
}

fn load_dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/tessera.json");
    let text = std::fs::read_to_string(&path).expect("grafana/tessera.json");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every panel query as (panel title, PromQL with the dashboard variables filled in).
fn panel_queries(dashboard: &Value, instance: &str) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("?").to_string();
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let concrete = expr
                .replace("$__rate_interval", RATE_INTERVAL)
                .replace("$model_name", "smol")
                .replace("$instance", instance);
            queries.push((title.clone(), concrete));
        }
    }
    queries
}

/// Completions (a repeated prompt: prefix-cache hits), streams, refusals, and inputs the
/// example moderation policy blocks or masks, each on its own thread until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds: [fn(SocketAddr); 3] = [completion_round, stream_round, refusal_round];
        let workers = rounds
            .into_iter()
            .map(|round| {
                let stop = Arc::clone(&stop);
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        round(addr);
                    }
                })
            })
            .collect();
        Self { stop, workers }
    }

    /// Whether a worker has ended (only a failed assertion ends one before `stop`).
    fn worker_ended(&self) -> bool {
        self.workers.iter().any(JoinHandle::is_finished)
    }

    /// Stops the workers and re-raises any worker's failed assertion.
    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.join().expect("load worker");
        }
    }
}

fn completion_round(addr: SocketAddr) {
    let res = post(
        addr,
        "/v1/completions",
        &completion(json!({"max_tokens": 6})),
    );
    assert_eq!(res.status, 200, "{}", res.text());
}

fn stream_round(addr: SocketAddr) {
    let body = chat(json!({"max_tokens": 8, "stream": true}));
    let stream = SseStream::open(addr, "/v1/chat/completions", &body);
    assert_eq!(stream.status, 200);
    assert_eq!(stream.rest().last().map(String::as_str), Some("[DONE]"));
}

fn refusal_round(addr: SocketAddr) {
    let bad = post(addr, "/v1/completions", &completion(json!({"top_p": 7})));
    assert_eq!(bad.status, 400, "{}", bad.text());
    // Moderation hits: a blocked input and a masked one.
    let blocked = post(
        addr,
        "/v1/completions",
        &completion(json!({"prompt": "炸弹"})),
    );
    assert_eq!(blocked.status, 400, "{}", blocked.text());
    let masked = json!({"prompt": "call 13812345678", "max_tokens": 1});
    let masked = post(addr, "/v1/completions", &completion(masked));
    assert_eq!(masked.status, 200, "{}", masked.text());
    thread::sleep(Duration::from_millis(500));
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let dashboard = load_dashboard();
    check_layout(&dashboard);
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/moderation/example.toml");
    let policy = policy.to_string_lossy().into_owned();
    let tessera = Tessera::start(&[
        "--served-model-name",
        "smol",
        "--metrics-compat",
        "vllm",
        "--moderation-policy",
        &policy,
    ]);
    let prom = Prometheus::start(tessera.addr);
    prom.wait_first_scrape();
    let instance = tessera.addr.to_string();
    let queries = panel_queries(&dashboard, &instance);
    assert!(queries.len() >= 20, "{} queries", queries.len());

    // The load runs until every panel has data (rates need two scrapes that saw it).
    let load = Load::start(tessera.addr);
    let deadline = Instant::now() + PANELS_GUARD;
    loop {
        if load.worker_ended() {
            load.stop();
            panic!("a load worker ended without failing");
        }
        let empty: Vec<&(String, String)> = queries
            .iter()
            .filter(|(_, expr)| !prom.has_data(expr))
            .collect();
        if empty.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no data after {PANELS_GUARD:?} of load for {empty:?}; scrapes: {}",
            prom.scrape_health()
        );
        thread::sleep(Duration::from_millis(500));
    }
    load.stop();

    let text = tessera.metrics();
    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next().map(str::to_string))
        .collect();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or("?").to_string();
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let unknown = unknown_names(expr, &exported);
            assert!(unknown.is_empty(), "`{title}` uses unexported {unknown:?}");
            assert!(!metric_names(expr).is_empty(), "`{title}` names no metric");
        }
    }
    check_variables(&prom, &instance);
    // vLLM's names are scraped too.
    assert!(!prom.query("vllm:num_requests_waiting").is_empty());
    assert!(!prom
        .query("vllm:time_to_first_token_seconds_count")
        .is_empty());
}

/// Rows, variables and datasource of every panel are the documented ones.
fn check_layout(dashboard: &Value) {
    let rows: Vec<&str> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    assert_eq!(
        rows,
        [
            "Overview",
            "Latency",
            "Throughput",
            "KV cache",
            "HTTP",
            "Safety"
        ]
    );
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(variables, ["datasource", "model_name", "instance"]);
    for panel in panels(dashboard) {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        assert!(
            panel["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "{} has no query",
            panel["title"]
        );
    }
    let ids: BTreeSet<u64> = panels(dashboard)
        .iter()
        .filter_map(|p| p["id"].as_u64())
        .collect();
    assert_eq!(ids.len(), panels(dashboard).len(), "panel ids are unique");
}

/// `label_values(tessera_build_info, model_name)` and the instance variable's query
/// find this server.
fn check_variables(prom: &Prometheus, instance: &str) {
    let names = prom.api("label/model_name/values?match[]=tessera_build_info");
    assert!(
        names["data"]
            .as_array()
            .is_some_and(|v| v.contains(&json!("smol"))),
        "{names}"
    );
    let selector = percent_encode(r#"tessera_build_info{model_name=~"smol"}"#);
    let instances = prom.api(&format!("label/instance/values?match[]={selector}"));
    assert!(
        instances["data"]
            .as_array()
            .is_some_and(|v| v.contains(&json!(instance))),
        "{instances}"
    );
}

#[test]
fn queries_naming_unexported_metrics_are_caught() {
    let exported: BTreeSet<String> = ["tessera_iteration_tokens", "tessera_num_requests_running"]
        .map(String::from)
        .into();
    let expr = r#"sum(rate(tessera_iteration_tokens_bucket{model_name=~"tessera_x"}[1m])) + tessera_num_requests_running + tessera_bogus_total + vllm:nope"#;
    assert_eq!(
        unknown_names(expr, &exported),
        ["tessera_bogus_total", "vllm:nope"]
    );
    assert_eq!(percent_encode("a b{\"}"), "a%20b%7B%22%7D");
}
