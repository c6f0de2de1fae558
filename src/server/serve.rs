//! The server's life: bind, answer `/health` (and 503 elsewhere) while the model loads
//! on its own thread, become ready, and on SIGTERM/SIGINT drain — `/ready` and new
//! requests answer 503, in-flight requests finish (up to `--shutdown-timeout`, then they
//! are aborted with an error event), the server stays up refusing requests until its
//! connections have closed (`linger`), the engine stops, and the process exits 0. The
//! deadline is hard: whatever is still running a few seconds after the shutdown timeout,
//! the process exits (1) then (`arm_exit_deadline`); before it, the conversation log
//! writes what it still holds. SIGHUP reloads the moderation policy.

use std::error::Error;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use actix_http::{HttpService, KeepAlive};
use actix_service::{fn_service, map_config, IntoServiceFactory, ServiceFactoryExt};
use actix_web::dev::{AppConfig, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::rt::net::TcpStream;
use actix_web::{web, App};
use futures_util::future::ready;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

use super::conn_guard::GuardedStream;
use super::gate::gate;
use super::moderations::{load_moderation, reload_on_hangup};
use super::routes::{configure, not_found};
use super::state::{AppState, ServerConfig};
use crate::audit::{AuditLog, FAIL_FILE_ENV};
use crate::config::EngineConfig;
use crate::dialog::Dialog;
use crate::engine::handle::EngineHandle;
use crate::engine::launch::launch;
use crate::metrics::Metrics;

/// How long the server waits for aborted streams to send their last event.
const ABORT_GRACE: Duration = Duration::from_secs(2);
/// Time after the shutdown timeout and `ABORT_GRACE` for stopping the HTTP server and
/// the engine and flushing the conversation log before the process exits regardless.
const EXIT_GRACE: Duration = Duration::from_secs(3);
/// How long an idle keep-alive connection stays open (a proxy must close its pooled
/// connections sooner: deploy/nginx uses 4 s).
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// The longest a drained server waits for its connections to close (`linger`): by then
/// the keep-alive timer has closed every idle one.
const LINGER_LIMIT: Duration = Duration::from_secs(6);
/// Time before the hard exit at which the conversation log's flush gives up (to log
/// what it could not write).
const FLUSH_MARGIN: Duration = Duration::from_millis(300);

/// The HTTP server over `listener`: actix-http's HTTP/1 service behind the connection
/// guard (see `conn_guard`), set up as actix-web's `HttpServer` would be (keep-alive 5 s,
/// disconnect timeout 1 s, graceful stop, one app per worker) except that the guard, not
/// actix, times request heads, a client that closes its side is gone (its handler is
/// dropped, so its sequences abort), and each connection is counted in
/// `AppState::connections` while it is open (the drain's `linger` waits on it).
fn build_server(
    state: web::Data<AppState>,
    listener: TcpListener,
    workers: Option<usize>,
) -> std::io::Result<actix_web::dev::Server> {
    let addr = listener.local_addr()?;
    let head_timeout = state.config.request_head_timeout;
    let mut builder = actix_server::Server::build()
        .disable_signals()
        .shutdown_timeout(1);
    if let Some(n) = workers {
        builder = builder.workers(n);
    }
    let stopping = builder.graceful_shutdown_signal();
    let server = builder.listen("tessera-http", listener, move || {
        let app = App::new()
            .app_data(state.clone())
            .wrap(from_fn(gate))
            .configure(configure)
            .default_service(web::to(not_found))
            .into_factory()
            .map_err(|err| err.error_response());
        let stopping = stopping.clone();
        let connections = state.connections.clone();
        let http = HttpService::build()
            .graceful_shutdown_signal(move || {
                let stopping = stopping.clone();
                async move { stopping.notified().await }
            })
            .keep_alive(KeepAlive::Timeout(KEEP_ALIVE))
            .client_request_timeout(Duration::ZERO)
            .client_disconnect_timeout(Duration::from_secs(1))
            .h1_allow_half_closed(false)
            .local_addr(addr)
            .on_connect_ext(move |io: &GuardedStream, data| {
                data.insert(io.kill_switch());
                data.insert(connections.opened());
            })
            .h1(map_config(app, |_| AppConfig::default()));
        fn_service(move |io: TcpStream| {
            let peer = io.peer_addr().ok();
            ready(Ok((GuardedStream::new(io, head_timeout), peer)))
        })
        .and_then(http)
    })?;
    Ok(server.run())
}

/// `tessera serve`: serves `model` until SIGTERM/SIGINT.
pub fn serve(
    model: PathBuf,
    engine_cfg: EngineConfig,
    mut cfg: ServerConfig,
) -> Result<(), Box<dyn Error>> {
    if let Some((name, _)) = engine_cfg
        .lora
        .modules
        .iter()
        .find(|(name, _)| cfg.served_model_names.contains(name))
    {
        return Err(format!(
            "--lora-modules: the adapter name `{name}` is also a --served-model-name; \
             give the adapter another name"
        )
        .into());
    }
    let listener = TcpListener::bind((cfg.host.as_str(), cfg.port))
        .map_err(|e| format!("cannot listen on {}:{}: {e}", cfg.host, cfg.port))?;
    let addr = listener.local_addr()?;
    cfg.settle_replica_id(addr.port())?;
    let replica = cfg.replica_id.clone().unwrap_or_default();
    let stem = model
        .file_stem()
        .map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned());
    let metrics = AppState::metrics_for(&cfg, &stem)?;
    if let Some(file) = std::env::var_os(FAIL_FILE_ENV).filter(|_| cfg.audit.fail_file.is_none()) {
        tracing::warn!("{FAIL_FILE_ENV} is set: conversation log writes fail while it exists");
        cfg.audit.fail_file = Some(PathBuf::from(file));
    }
    let state = new_state(cfg, metrics)?;
    if let Err(e) = state.connections.watch(&listener) {
        tracing::warn!("cannot keep a handle on the listener for the drain: {e}");
    }
    actix_web::rt::System::new().block_on(async move {
        let server = build_server(state.clone(), listener, None)?;
        actix_web::rt::spawn(reload_on_hangup(state.clone()));
        tracing::info!(%replica, "listening on http://{addr} (loading {})", model.display());
        let (loaded_tx, loaded_rx) = oneshot::channel();
        let load_cfg = engine_cfg.clone();
        std::thread::Builder::new()
            .name("tessera-load".into())
            .spawn(move || {
                hold_loading_for_tests();
                let launched = launch(&model, &load_cfg)
                    .map(|l| (l.engine, l.load_seconds))
                    .map_err(|e| e.to_string());
                let _ = loaded_tx.send(launched);
            })?;
        let supervisor = actix_web::rt::spawn(supervise(
            state.clone(),
            server.handle(),
            loaded_rx,
            engine_cfg.max_num_seqs,
        ));
        server.await?;
        if let Some(engine) = state.loaded_engine().cloned() {
            let _ = actix_web::rt::task::spawn_blocking(move || engine.shutdown()).await;
        }
        let outcome = supervisor
            .await
            .map_err(|e| format!("supervisor task failed: {e}"))?;
        let deadline = state
            .exit_deadline()
            .unwrap_or_else(|| Instant::now() + EXIT_GRACE);
        let flushing = state.clone();
        let lost = actix_web::rt::task::spawn_blocking(move || close_audit(&flushing, deadline))
            .await
            .unwrap_or(0);
        outcome.map_err(Box::<dyn Error>::from)?;
        match lost {
            0 => Ok(()),
            n => Err(format!("{n} exchanges could not be written to the conversation log").into()),
        }
    })
}

/// The state of a server for `cfg`: its dialog store open, its conversation log
/// running, its moderation policy loaded (any failure stops the server before it listens).
fn new_state(cfg: ServerConfig, metrics: Metrics) -> Result<web::Data<AppState>, Box<dyn Error>> {
    let dialog = open_dialog(&cfg)?;
    let audit = match cfg.audit.enabled {
        true => Some(AuditLog::start(
            dialog.pool().clone(),
            cfg.audit.clone(),
            metrics.audit(),
        )?),
        false => None,
    };
    let mut app = AppState::new(cfg, metrics)?;
    app.moderation = load_moderation(&app.config, &app.metrics)?;
    let state = web::Data::new(app);
    state.set_dialog(dialog);
    if let Some(audit) = audit {
        state.set_audit(audit);
    }
    Ok(state)
}

/// Writes what the conversation log still holds before the process exits: waits for
/// the last requests to settle (their records to be queued), then flushes, retrying a
/// failing store until shortly before `deadline` (the hard exit). Blocking; returns how
/// many exchanges could not be written.
fn close_audit(state: &AppState, deadline: Instant) -> usize {
    let Some(audit) = state.audit() else {
        return 0;
    };
    let flush_by = deadline.checked_sub(FLUSH_MARGIN).unwrap_or(deadline);
    while state.in_flight() > 0 && Instant::now() < flush_by {
        std::thread::sleep(Duration::from_millis(10));
    }
    let lost = audit.close(flush_by);
    if lost > 0 {
        tracing::error!(
            lost,
            "exiting with exchanges the conversation log could not write"
        );
    }
    lost
}

/// Opens the dialog store (creating it, applying migrations): a store that cannot be
/// opened stops the server before it listens.
fn open_dialog(cfg: &ServerConfig) -> Result<Dialog, String> {
    Dialog::open(&cfg.dialog).map_err(|e| {
        format!(
            "opening the dialog store ({}): {e}",
            cfg.dialog.store.describe()
        )
    })
}

/// Installs the engine when loaded, then waits for a signal and drains.
async fn supervise(
    state: web::Data<AppState>,
    server: ServerHandle,
    loaded: oneshot::Receiver<Result<(EngineHandle, f64), String>>,
    max_num_seqs: usize,
) -> Result<(), String> {
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    tokio::select! {
        result = loaded => match result {
            Ok(Ok((engine, load_seconds))) => {
                state.set_ready(engine, max_num_seqs, Some(load_seconds));
                tracing::info!(models = ?state.served_names(), "ready");
            }
            // Stopping for good: the kept listener handle goes too (`refuse_new`).
            Ok(Err(e)) => {
                state.connections.refuse_new();
                server.stop(false).await;
                return Err(e);
            }
            Err(_) => {
                state.connections.refuse_new();
                server.stop(false).await;
                return Err("the model loader stopped without a result".into());
            }
        },
        _ = term.recv() => { stop_while_loading(&state, &server).await; return Ok(()); }
        _ = int.recv() => { stop_while_loading(&state, &server).await; return Ok(()); }
    }
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    state.set_exit_deadline(arm_exit_deadline(state.config.shutdown_timeout));
    drain(&state).await;
    server.stop(true).await;
    Ok(())
}

/// SIGTERM before the model loaded: nothing runs, but a proxy may hold pooled
/// connections and replay refusals, so the server refuses (`shutting_down`) and lingers
/// as after a drain before it stops.
async fn stop_while_loading(state: &AppState, server: &ServerHandle) {
    state.set_exit_deadline(arm_exit_deadline(state.config.shutdown_timeout));
    state.start_draining();
    tracing::info!("stopping before the model loaded");
    linger(state).await;
    server.stop(true).await;
}

/// Makes the shutdown deadline hard: once a signal asked the process to stop, it is gone
/// within `--shutdown-timeout` + `ABORT_GRACE` + `EXIT_GRACE` whatever still runs (a
/// request stuck in a template or tokenizer, a handler, the engine, the model loader).
/// A plain thread that nothing else can block calls `exit(1)` then: a clean stop has
/// exited with 0 long before. Returns when that is.
fn arm_exit_deadline(shutdown_timeout: Duration) -> Instant {
    let limit = shutdown_timeout + ABORT_GRACE + EXIT_GRACE;
    let deadline = Instant::now() + limit;
    let armed = std::thread::Builder::new()
        .name("tessera-exit-deadline".into())
        .spawn(move || {
            std::thread::sleep(limit);
            // The exit must not hang on the log: a panic there would end this thread only.
            let _ = std::panic::catch_unwind(|| {
                tracing::error!(
                    ?limit,
                    "the shutdown deadline passed with work still running; exiting"
                )
            });
            std::process::exit(1);
        });
    if let Err(e) = armed {
        tracing::error!("cannot arm the shutdown deadline: {e}");
    }
    deadline
}

/// Refuses new work and waits for in-flight sequences (up to the shutdown timeout);
/// what is still running then is aborted and ends with an error event.
pub async fn drain(state: &AppState) {
    state.start_draining();
    let timeout = state.config.shutdown_timeout;
    tracing::info!(in_flight = state.in_flight(), ?timeout, "draining");
    wait_idle(state, timeout).await;
    if state.in_flight() > 0 {
        tracing::warn!(
            in_flight = state.in_flight(),
            "shutdown timeout reached: aborting"
        );
        if let Some(engine) = state.loaded_engine().cloned() {
            let _ = actix_web::rt::task::spawn_blocking(move || engine.shutdown()).await;
        }
        wait_idle(state, ABORT_GRACE).await;
    }
    linger(state).await;
}

/// After the last sequence, keeps the server up (every request refused, nothing started,
/// `Connection: close`) for a moment (`connections::QUIET`) at least, and until no
/// connection has been open for that long, so that stopping it races no request a proxy
/// sent (see `connections::Connections::settled`); then filters the listener
/// (`Connections::refuse_new`) and waits so once more for what the kernel had queued.
/// Bounded by `LINGER_LIMIT` and by the time the exit deadline leaves for stopping.
async fn linger(state: &AppState) {
    let mut until = Instant::now() + LINGER_LIMIT;
    if let Some(exit) = state.exit_deadline() {
        until = until.min(exit.checked_sub(EXIT_GRACE).unwrap_or(exit));
    }
    let open = state.connections.open();
    tracing::info!(open, "waiting for the connections to close");
    let mut settled = settle(state, until).await;
    // Always called: it also closes the kept listener handle, which must not outlive this.
    if state.connections.refuse_new() && settled {
        settled = settle(state, until).await;
    }
    if !settled {
        tracing::warn!(
            open = state.connections.open(),
            "stopping with connections still open"
        );
    }
}

/// Waits until the connections are settled (counting from now), or `until`; whether
/// they are.
async fn settle(state: &AppState, until: Instant) -> bool {
    let began = Instant::now();
    wait_until(until, || state.connections.settled(began)).await
}

async fn wait_idle(state: &AppState, limit: Duration) {
    wait_until(Instant::now() + limit, || state.in_flight() == 0).await;
}

/// Polls `done` every 20 ms until it holds or `deadline` passes; whether it holds.
async fn wait_until(deadline: Instant, done: impl Fn() -> bool) -> bool {
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Test hook, not a feature: while the file named by this variable does not exist, the
/// model does not start loading, so tests see the loading phase (`/ready` 503,
/// `model_loading`) for as long as they need it, then create the file to let it load.
pub const HOLD_LOADING_ENV: &str = "TESSERA_TEST_HOLD_LOADING";

fn hold_loading_for_tests() {
    let Some(release) = std::env::var_os(HOLD_LOADING_ENV) else {
        return;
    };
    let release = PathBuf::from(release);
    tracing::warn!(
        "{HOLD_LOADING_ENV} is set: loading waits for {}",
        release.display()
    );
    while !release.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A server running on its own thread (tests, embedding).
pub struct SpawnedServer {
    pub addr: SocketAddr,
    pub state: web::Data<AppState>,
    handle: ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Serves an already started engine on `cfg.host:cfg.port` (port 0: any free port).
pub fn spawn(
    engine: EngineHandle,
    max_num_seqs: usize,
    mut cfg: ServerConfig,
) -> Result<SpawnedServer, Box<dyn Error>> {
    let listener = TcpListener::bind((cfg.host.as_str(), cfg.port))?;
    let addr = listener.local_addr()?;
    cfg.settle_replica_id(addr.port())?;
    let metrics = AppState::metrics_for(&cfg, &engine.model().name)?;
    let state = new_state(cfg, metrics)?;
    state.set_ready(engine, max_num_seqs, None);
    let (handle_tx, handle_rx) = std::sync::mpsc::channel();
    let server_state = state.clone();
    let thread = std::thread::Builder::new()
        .name("tessera-http".into())
        .spawn(move || {
            let result = actix_web::rt::System::new().block_on(async move {
                let server = build_server(server_state, listener, Some(2))?;
                let _ = handle_tx.send(server.handle());
                server.await
            });
            if let Err(e) = result {
                tracing::error!("server stopped: {e}");
            }
        })?;
    let handle = handle_rx
        .recv()
        .map_err(|_| "the server thread failed to start")?;
    Ok(SpawnedServer {
        addr,
        state,
        handle,
        thread: Some(thread),
    })
}

impl SpawnedServer {
    /// Drains (as on SIGTERM), stops the server and flushes its conversation log.
    pub fn shutdown(mut self) {
        let (state, handle) = (self.state.clone(), self.handle.clone());
        actix_web::rt::System::new().block_on(async move {
            drain(&state).await;
            handle.stop(true).await;
        });
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let deadline = Instant::now() + self.state.config.shutdown_timeout + EXIT_GRACE;
        // What could not be written is logged (this embedding has no exit status).
        let _lost = close_audit(&self.state, deadline);
    }
}
