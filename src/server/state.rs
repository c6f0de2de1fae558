//! Server-wide state shared by every handler: configuration, the engine (once loaded),
//! the lifecycle phase, admission control, the CPU pool for request work, the prompt
//! byte limit of the loaded model, metrics, and the conversation log.
//!
//! Invariants: the phase only moves forward (`Loading → Ready → Draining`); the engine is
//! set exactly once, before the phase becomes `Ready`; `in_flight` equals the number of
//! sequences held by live `Permit`s, so it never exceeds `capacity` (admission is a
//! compare-and-swap, never a check followed by an add); once the drain has seen
//! `in_flight` at 0, no sequence is admitted any more (`admit`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix_web::http::header::HeaderValue;

use super::connections::Connections;
use super::cpu::{CpuPool, PromptLimit};
use crate::audit::AuditLog;
use crate::engine::handle::EngineHandle;
use crate::error::ApiError;
use crate::metrics::{Metrics, MetricsCompat, ModelInfo};
use crate::safety::Moderation;

/// How the HTTP server is set up (flags of `tessera serve`).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Names the model is served under (empty: the model file's name).
    pub served_model_names: Vec<String>,
    /// Accepted bearer tokens (empty: no authentication).
    pub api_keys: Vec<String>,
    /// Sequences that may wait beyond `--max-num-seqs` before requests get 429.
    pub max_queued_requests: usize,
    /// How long in-flight requests may run after SIGTERM.
    pub shutdown_timeout: Duration,
    /// How long a client may take to send a whole request head (else 408).
    pub request_head_timeout: Duration,
    /// Threads that parse, render and tokenize request prompts (see `cpu`).
    pub cpu_threads: usize,
    /// Requests that may wait for those threads before more get 429.
    pub cpu_queue: usize,
    /// Largest accepted request body.
    pub max_request_bytes: usize,
    /// Interval of SSE keep-alive comments while a stream has nothing to send.
    pub sse_keepalive: Duration,
    /// Put prompt and output text in the per-request log line.
    pub log_requests: bool,
    /// Extra metric names to export (`--metrics-compat vllm`).
    pub metrics_compat: MetricsCompat,
    /// Conversations and responses: store, history window, hot cache.
    pub dialog: crate::dialog::DialogConfig,
    /// The moderation policy file (`--moderation-policy`; none: no moderation).
    pub moderation_policy: Option<PathBuf>,
    /// Keys of the admin API under `/admin/` (none: the admin API is closed).
    pub admin_api_keys: Vec<String>,
    /// The chat page and its WebSocket: product defaults, limits, page on/off.
    pub chat: super::ws::config::ChatConfig,
    /// This replica's name in the `X-Tessera-Replica` response header and `/server_info`
    /// (`--replica-id`; `None`: `hostname:port`, filled in once the port is bound).
    pub replica_id: Option<String>,
    /// The conversation log: lag limit, retention, review sampling.
    pub audit: crate::audit::AuditConfig,
    /// How tool calls are read out of the model's text (`--tool-call-parser`).
    pub tool_call_parser: crate::tools::ToolParser,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8000,
            served_model_names: Vec::new(),
            api_keys: Vec::new(),
            max_queued_requests: 256,
            shutdown_timeout: Duration::from_secs(30),
            request_head_timeout: Duration::from_secs(5),
            cpu_threads: 2,
            cpu_queue: 128,
            max_request_bytes: 10 << 20,
            sse_keepalive: Duration::from_secs(10),
            log_requests: false,
            metrics_compat: MetricsCompat::None,
            dialog: crate::dialog::DialogConfig::default(),
            moderation_policy: None,
            admin_api_keys: Vec::new(),
            chat: super::ws::config::ChatConfig::default(),
            replica_id: None,
            audit: crate::audit::AuditConfig::default(),
            tool_call_parser: crate::tools::ToolParser::default(),
        }
    }
}

/// Longest `--replica-id`.
const MAX_REPLICA_ID_LEN: usize = 128;

impl ServerConfig {
    /// Fills in the default replica id (`hostname:port` of the bound `port`) and checks
    /// a given one: 1..=128 visible ASCII characters, so it fits a header.
    pub fn settle_replica_id(&mut self, port: u16) -> Result<(), String> {
        let id = self
            .replica_id
            .get_or_insert_with(|| format!("{}:{port}", hostname()));
        let fits = !id.is_empty()
            && id.len() <= MAX_REPLICA_ID_LEN
            && id.bytes().all(|b| b.is_ascii_graphic());
        if fits {
            Ok(())
        } else {
            Err(format!(
                "--replica-id must be 1 to {MAX_REPLICA_ID_LEN} visible ASCII characters \
                 (no spaces). Given: {id:?}"
            ))
        }
    }
}

/// This host's name (the pod's name in Kubernetes), else `localhost`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "localhost".into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Loading = 0,
    Ready = 1,
    Draining = 2,
}

pub struct AppState {
    pub config: ServerConfig,
    engine: OnceLock<EngineHandle>,
    base_names: OnceLock<Vec<String>>,
    phase: AtomicU8,
    admission: Arc<Admission>,
    /// Where request CPU work runs (parsing, templates, tokenizing).
    pub cpu: CpuPool,
    /// The longest prompt text the loaded model can take (when its tokenizer bounds it).
    prompt_limit: OnceLock<Option<PromptLimit>>,
    pub metrics: Metrics,
    /// The moderation policy in force (off until `serve`/`spawn` load one).
    pub moderation: Moderation,
    /// Unix time the server started (the `created` of `/v1/models`).
    pub started_at: u64,
    /// Conversations and responses (set once, before the server listens).
    dialog: OnceLock<crate::dialog::Dialog>,
    /// The chat sockets open per key.
    pub ws: Arc<super::ws::hub::WsHub>,
    /// `X-Tessera-Replica`'s value (`None` until the replica id is settled).
    replica_header: Option<HeaderValue>,
    /// The engine's `--max-num-seqs` (0 until it is loaded).
    max_num_seqs: AtomicUsize,
    /// The conversation log (set once, before the server listens; never with
    /// `--disable-audit-log`).
    audit: OnceLock<Arc<AuditLog>>,
    /// When the process exits whatever still runs (set on SIGTERM/SIGINT).
    exit_deadline: OnceLock<Instant>,
    /// Open HTTP connections and when the last one closed (the drain's linger).
    pub connections: Connections,
}

impl AppState {
    /// A server state still loading its model (starts the CPU pool's threads).
    pub fn new(config: ServerConfig, metrics: Metrics) -> std::io::Result<Self> {
        Ok(Self {
            cpu: CpuPool::new(config.cpu_threads, config.cpu_queue)?,
            engine: OnceLock::new(),
            base_names: OnceLock::new(),
            phase: AtomicU8::new(Phase::Loading as u8),
            admission: Arc::new(Admission::default()),
            prompt_limit: OnceLock::new(),
            metrics,
            moderation: Moderation::off(),
            started_at: unix_now(),
            dialog: OnceLock::new(),
            ws: Arc::default(),
            max_num_seqs: AtomicUsize::new(0),
            replica_header: config
                .replica_id
                .as_deref()
                .and_then(|id| HeaderValue::from_str(id).ok()),
            config,
            audit: OnceLock::new(),
            exit_deadline: OnceLock::new(),
            connections: Connections::default(),
        })
    }

    /// Installs the conversation log (its threads are running).
    pub fn set_audit(&self, audit: Arc<AuditLog>) {
        let _ = self.audit.set(audit);
    }

    /// The conversation log (`None` with `--disable-audit-log`).
    pub fn audit(&self) -> Option<&Arc<AuditLog>> {
        self.audit.get()
    }

    /// Refuses new text-route requests (503 `audit_unavailable`) while the conversation
    /// log cannot keep up: nothing is served that cannot be logged.
    pub fn audit_ready(&self) -> Result<(), ApiError> {
        match self.audit() {
            Some(audit) => Ok(audit.check()?),
            None => Ok(()),
        }
    }

    /// Records when the process will exit whatever still runs.
    pub fn set_exit_deadline(&self, deadline: Instant) {
        let _ = self.exit_deadline.set(deadline);
    }

    pub fn exit_deadline(&self) -> Option<Instant> {
        self.exit_deadline.get().copied()
    }

    /// Installs the dialog service (its store is open).
    pub fn set_dialog(&self, dialog: crate::dialog::Dialog) {
        let _ = self.dialog.set(dialog);
    }

    pub fn dialog(&self) -> Option<&crate::dialog::Dialog> {
        self.dialog.get()
    }

    /// Sequences the engine runs per step (`--max-num-seqs`; 0 while loading).
    pub fn max_num_seqs(&self) -> usize {
        self.max_num_seqs.load(Ordering::SeqCst)
    }

    /// The value of the `X-Tessera-Replica` header.
    pub fn replica_header(&self) -> Option<HeaderValue> {
        self.replica_header.clone()
    }

    /// The metrics of a server for `cfg`: labelled with the first served name, else
    /// `default_name` (the model file's stem).
    pub fn metrics_for(cfg: &ServerConfig, default_name: &str) -> Result<Metrics, String> {
        let name = cfg
            .served_model_names
            .first()
            .map_or(default_name, String::as_str);
        Metrics::new(name, cfg.metrics_compat).map_err(|e| format!("metrics registry: {e}"))
    }

    /// Installs the loaded engine (running up to `max_num_seqs` sequences per step; its
    /// model took `load_seconds` to load, when known), starts its step metrics and opens
    /// for requests.
    pub fn set_ready(&self, engine: EngineHandle, max_num_seqs: usize, load_seconds: Option<f64>) {
        engine.set_step_observer(Arc::new(self.metrics.step_series()));
        let info = ModelInfo {
            model: engine.model().name.clone(),
            dtype: engine.model().dtype.clone(),
            backend: "cpu".into(),
            max_model_len: engine.info().max_model_len,
            load_seconds,
        };
        if let Err(e) = self.metrics.set_model(&info) {
            tracing::warn!("model metrics not registered: {e}");
        }
        self.max_num_seqs.store(max_num_seqs, Ordering::SeqCst);
        let capacity = max_num_seqs + self.config.max_queued_requests;
        self.admission.capacity.store(capacity, Ordering::SeqCst);
        let names = if self.config.served_model_names.is_empty() {
            vec![engine.model().name.clone()]
        } else {
            self.config.served_model_names.clone()
        };
        // No adapter loaded at run time may take a name the base model is served as.
        engine.model().adapters.set_base_names(&names);
        let _ = self.base_names.set(names);
        let limit = engine
            .model()
            .tokenizer
            .max_bytes_per_token()
            .map(|max_bytes_per_token| PromptLimit {
                max_model_len: engine.info().max_model_len,
                max_bytes_per_token,
            });
        let _ = self.prompt_limit.set(limit);
        let _ = self.engine.set(engine);
        let _ = self.phase.compare_exchange(
            Phase::Loading as u8,
            Phase::Ready as u8,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// Stops taking new requests (SIGTERM).
    pub fn start_draining(&self) {
        self.phase.store(Phase::Draining as u8, Ordering::SeqCst);
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            0 => Phase::Loading,
            1 => Phase::Ready,
            _ => Phase::Draining,
        }
    }

    /// The engine, when it may take new work.
    pub fn engine(&self) -> Result<&EngineHandle, ApiError> {
        match (self.phase(), self.engine.get()) {
            (Phase::Ready, Some(engine)) if !engine.is_running() => Err(ApiError::Internal(
                "the engine stopped after a failure (see the server log); restart the server"
                    .into(),
            )),
            (Phase::Ready, Some(engine)) => Ok(engine),
            (Phase::Draining, _) => Err(ApiError::Draining),
            _ => Err(ApiError::Loading),
        }
    }

    /// Whether the engine thread stopped while the server was not draining.
    pub fn engine_failed(&self) -> bool {
        self.phase() == Phase::Ready && self.engine.get().is_some_and(|e| !e.is_running())
    }

    /// The engine whatever the phase (metrics, shutdown).
    pub fn loaded_engine(&self) -> Option<&EngineHandle> {
        self.engine.get()
    }

    /// The longest prompt text that can fit, once loaded (`None`: the tokenizer gives no
    /// bound; prompts are then only refused after tokenizing).
    pub fn prompt_limit(&self) -> Option<PromptLimit> {
        self.prompt_limit.get().copied().flatten()
    }

    pub fn served_names(&self) -> Vec<String> {
        let mut names = self.base_names().to_vec();
        // LoRA adapters are served models too (`model: "<adapter>"`), after the base
        // names, in load order; the set changes at run time (`/v1/load_lora_adapter`).
        if let Some(engine) = self.engine.get() {
            names.extend(engine.model().adapters.names());
        }
        names
    }

    /// The names the base model is served as (`--served-model-name`, else its file name).
    pub fn base_names(&self) -> &[String] {
        self.base_names.get().map_or(&[], Vec::as_slice)
    }

    /// Reserves `sequences` slots, or refuses: 429 at capacity, 503 once draining. The
    /// slots are taken before the phase is read, and the drain sets the phase before it
    /// reads `in_flight` (all SeqCst): a request either is counted by the drain or sees
    /// it, so none starts after the drain found the server idle (a handler that checked
    /// the phase, then spent a while on its prompt, is refused here, nothing started).
    pub fn admit(&self, sequences: usize) -> Result<Permit, ApiError> {
        let permit = self.admission.try_acquire(sequences)?;
        if self.phase() == Phase::Draining {
            return Err(ApiError::Draining); // dropping the permit frees its slots
        }
        Ok(permit)
    }

    /// Sequences admitted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.admission.in_flight.load(Ordering::SeqCst)
    }
}

/// Counts sequences between admission and the end of their response.
#[derive(Debug, Default)]
pub struct Admission {
    in_flight: AtomicUsize,
    capacity: AtomicUsize,
}

impl Admission {
    fn try_acquire(self: &Arc<Self>, sequences: usize) -> Result<Permit, ApiError> {
        let capacity = self.capacity.load(Ordering::SeqCst);
        let mut current = self.in_flight.load(Ordering::SeqCst);
        loop {
            if current + sequences > capacity {
                return Err(ApiError::QueueFull {
                    in_flight: current,
                    needed: sequences,
                    capacity,
                });
            }
            match self.in_flight.compare_exchange(
                current,
                current + sequences,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    return Ok(Permit {
                        admission: self.clone(),
                        sequences,
                    })
                }
                Err(actual) => current = actual,
            }
        }
    }
}

/// Held for as long as a request's sequences may occupy the engine; frees them on drop.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    sequences: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission
            .in_flight
            .fetch_sub(self.sequences, Ordering::SeqCst);
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_gate_the_engine() {
        let metrics = Metrics::new("m", MetricsCompat::None).expect("metrics");
        let state = AppState::new(ServerConfig::default(), metrics).expect("state");
        assert_eq!(state.phase(), Phase::Loading);
        assert!(matches!(state.engine(), Err(ApiError::Loading)));
        assert!(state.served_names().is_empty());
        state.start_draining();
        assert_eq!(state.phase(), Phase::Draining);
        assert!(matches!(state.engine(), Err(ApiError::Draining)));
    }

    #[test]
    fn replica_id_defaults_to_host_and_port_and_must_fit_a_header() {
        let mut cfg = ServerConfig::default();
        cfg.settle_replica_id(8123).expect("default id");
        let id = cfg.replica_id.clone().expect("settled");
        assert!(id.ends_with(":8123") && id.len() > ":8123".len(), "{id}");
        for bad in ["", "a b", "é", &"x".repeat(129)] {
            let mut cfg = ServerConfig {
                replica_id: Some(bad.to_string()),
                ..ServerConfig::default()
            };
            let err = cfg.settle_replica_id(1).expect_err(bad);
            assert!(err.contains("--replica-id"), "{err}");
        }
        let mut named = ServerConfig {
            replica_id: Some("gpu-0".into()),
            ..ServerConfig::default()
        };
        named.settle_replica_id(1).expect("given id");
        assert_eq!(named.replica_id.as_deref(), Some("gpu-0"));
    }

    #[test]
    fn nothing_is_admitted_once_draining() {
        let metrics = Metrics::new("m", MetricsCompat::None).expect("metrics");
        let state = AppState::new(ServerConfig::default(), metrics).expect("state");
        state.admission.capacity.store(4, Ordering::SeqCst);
        let running = state.admit(1).expect("admitted before the drain");
        state.start_draining();
        assert!(matches!(state.admit(1), Err(ApiError::Draining)));
        assert_eq!(state.in_flight(), 1, "a refused request holds no slot");
        drop(running);
        assert_eq!(state.in_flight(), 0);
    }

    #[test]
    fn admission_is_bounded_and_released_on_drop() {
        let a = Arc::new(Admission::default());
        a.capacity.store(3, Ordering::SeqCst);
        let p1 = a.try_acquire(2).expect("fits");
        assert!(matches!(
            a.try_acquire(2),
            Err(ApiError::QueueFull {
                in_flight: 2,
                needed: 2,
                capacity: 3
            })
        ));
        let p2 = a.try_acquire(1).expect("fits");
        drop(p1);
        assert_eq!(a.in_flight.load(Ordering::SeqCst), 1);
        drop(p2);
        assert_eq!(a.in_flight.load(Ordering::SeqCst), 0);
    }
}
