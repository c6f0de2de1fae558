//! Loading a model and starting an engine over it: the one path shared by `tessera serve`
//! and the CLI commands (`generate`, `chat`, `bench`). While the layers load, a progress
//! bar goes to stderr when stderr is a terminal; otherwise nothing, so logs stay clean,
//! except for a load that quantizes (`--quantization`, slower): a line per quarter.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

use super::handle::{self, EngineHandle};
use crate::config::EngineConfig;
use crate::error::ModelError;
use crate::model::lora::LoraError;
use crate::model::LoadOptions;

/// A started engine and how long its model took to load.
pub struct Launched {
    pub engine: EngineHandle,
    pub load_seconds: f64,
}

/// Why `launch` failed; each message names the model path.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(
        "model file `{0}` not found; fetch the default model with scripts/fetch-model.sh or \
         pass --model PATH"
    )]
    NotFound(String),
    #[error("loading {path}: {source}")]
    Load {
        path: String,
        source: Box<ModelError>,
    },
    #[error(transparent)]
    Lora(#[from] LoraError),
    #[error("starting the engine over {path}: {source}")]
    Start {
        path: String,
        source: Box<ModelError>,
    },
}

/// Loads the model at `path` (a GGUF file or a Hugging Face folder) and starts an engine.
pub fn launch(path: &Path, cfg: &EngineConfig) -> Result<Launched, LaunchError> {
    let shown = path.display().to_string();
    if !path.exists() {
        return Err(LaunchError::NotFound(shown));
    }
    let tty = std::io::stderr().is_terminal();
    let mut name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    if let Some(q) = cfg.quantization {
        name = format!("{name} as {q}");
        tracing::info!(quantization = %q, threads = crate::ops::pool::global().threads(),
            "quantizing the weights while they load");
    }
    let options = LoadOptions {
        max_model_len: cfg.max_model_len,
        quantization: cfg.quantization,
    };
    let started = Instant::now();
    let mut logged_quarter = 0;
    let mut loaded = crate::model::load_with(path, &options, |done, total| {
        if tty {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r{}", progress_line(&name, done, total));
            let _ = err.flush();
        } else if let Some(quarter) = cfg
            .quantization
            .and_then(|_| quarter_reached(done, total, &mut logged_quarter))
        {
            tracing::info!(
                layers = done,
                of = total,
                "loading {name}: {}%",
                quarter * 25
            );
        }
    })
    .map_err(|source| LaunchError::Load {
        path: shown.clone(),
        source: Box::new(source),
    })?;
    let base_name = [loaded.assets.name.clone()];
    loaded
        .serve_adapters(&cfg.lora, &base_name)
        .map_err(LaunchError::Lora)?;
    if tty {
        eprintln!();
    }
    let load_seconds = started.elapsed().as_secs_f64();
    tracing::info!(seconds = load_seconds, "model loaded");
    let engine = handle::start(loaded, cfg).map_err(|source| LaunchError::Start {
        path: shown,
        source: Box::new(source),
    })?;
    Ok(Launched {
        engine,
        load_seconds,
    })
}

/// The quarter (1..=4) of the layers just completed, once each, for the log lines a
/// load writes when stderr is not a terminal.
fn quarter_reached(done: usize, total: usize, logged: &mut usize) -> Option<usize> {
    let quarter = (done * 4).checked_div(total).unwrap_or(4).min(4);
    (quarter > *logged).then(|| {
        *logged = quarter;
        quarter
    })
}

/// `loading NAME [#######.......]  7/30 layers`.
pub fn progress_line(name: &str, done: usize, total: usize) -> String {
    const WIDTH: usize = 30;
    let filled = (done * WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH)
        .min(WIDTH);
    format!(
        "loading {name} [{}{}] {done:>3}/{total} layers",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_fills_with_layers() {
        assert!(progress_line("m", 0, 30).contains("[..............................]"));
        assert!(progress_line("m", 15, 30).contains(&format!(
            "[{}{}]",
            "#".repeat(15),
            ".".repeat(15)
        )));
        assert!(progress_line("m", 30, 30).ends_with(" 30/30 layers"));
        assert!(progress_line("m", 0, 0).contains(&"#".repeat(30)));
    }

    #[test]
    fn quarters_are_logged_once_each() {
        let mut logged = 0;
        let seen: Vec<usize> = (1..=10)
            .filter_map(|done| quarter_reached(done, 10, &mut logged))
            .collect();
        assert_eq!(seen, [1, 2, 3, 4]);
    }

    #[test]
    fn a_missing_model_is_named() {
        let err = launch(Path::new("/nonexistent/m.gguf"), &EngineConfig::default())
            .err()
            .expect("no such file");
        assert!(matches!(err, LaunchError::NotFound(_)));
        assert!(err.to_string().contains("`/nonexistent/m.gguf` not found"));
    }
}
