//! One run's report: what was measured, against what, and the figures; as JSON (for
//! `compare`) and as markdown tables (for people).

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::BenchError;
use crate::prompts::PromptMode;
use crate::scenario::dialog::DialogResult;
use crate::scenario::prefill::PrefillResult;
use crate::scenario::rate::RateResult;
use crate::scenario::sweep::SweepResult;
use crate::stats::{Dist, Summary};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScenarioResult {
    Sweep(SweepResult),
    Rate(RateResult),
    Dialog(DialogResult),
    Prefill(PrefillResult),
}

impl ScenarioResult {
    pub fn kind(&self) -> &'static str {
        match self {
            ScenarioResult::Sweep(_) => "sweep",
            ScenarioResult::Rate(_) => "rate",
            ScenarioResult::Dialog(_) => "dialog",
            ScenarioResult::Prefill(_) => "prefill",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    /// `tessera-bench <version>`.
    pub tool: String,
    /// Who was measured, e.g. `tessera`, `llama-server`, `tessera-no-prefix-cache`.
    pub label: String,
    pub url: String,
    pub model: String,
    pub prompt_mode: PromptMode,
    pub started_unix_s: u64,
    pub wall_s: f64,
    /// CPU seconds the client itself used (user + system, all threads).
    pub client_cpu_s: f64,
    pub server_pid: Option<u32>,
    pub server_peak_rss_bytes: Option<u64>,
    pub scenario: ScenarioResult,
}

impl RunReport {
    pub fn write_json(&self, path: &Path) -> Result<(), BenchError> {
        let text = serde_json::to_string_pretty(self).map_err(BenchError::json("a run report"))?;
        std::fs::write(path, text + "\n")
            .map_err(BenchError::io(format!("writing {}", path.display())))
    }

    pub fn read_json(path: &Path) -> Result<RunReport, BenchError> {
        let text = std::fs::read_to_string(path)
            .map_err(BenchError::io(format!("reading {}", path.display())))?;
        serde_json::from_str(&text).map_err(BenchError::json(path.display().to_string()))
    }

    /// The run as markdown: a header line and the scenario's table.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "### {} — {} ({})\n\nmodel `{}`, prompts as {}, wall {:.1} s, client CPU {:.2} s ({:.1} % of one core), server peak RSS {}\n\n",
            self.scenario.kind(),
            self.label,
            self.url,
            self.model,
            match (&self.scenario, self.prompt_mode) {
                (ScenarioResult::Dialog(_), _) => "chat messages",
                (_, PromptMode::TokenIds) => "token ids",
                (_, PromptMode::Text) => "text",
            },
            self.wall_s,
            self.client_cpu_s,
            100.0 * self.client_cpu_s / self.wall_s.max(1e-9),
            self.server_peak_rss_bytes.map_or("n/a".to_string(), mib),
        );
        s.push_str(&scenario_table(&self.scenario));
        s
    }
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// `p50 / p90 / p99` of a distribution, or `–`.
pub fn triple(d: &Option<Dist>) -> String {
    d.map_or("–".to_string(), |d| {
        format!("{:.1} / {:.1} / {:.1}", d.p50, d.p90, d.p99)
    })
}

const SUMMARY_HEAD: &str = "| req/s | out tok/s | total tok/s | TTFT ms p50/p90/p99 | ITL ms p50/p90/p99 | TPOT ms p50/p90/p99 | e2e ms p50/p90/p99 | ok | out tok/req |";
const SUMMARY_RULE: &str = "|---:|---:|---:|---|---|---|---|---:|---:|";

/// The summary columns of one table row (after the row's own first columns).
pub fn summary_cells(s: &Summary) -> String {
    format!(
        " {:.2} | {:.1} | {:.1} | {} | {} | {} | {} | {}/{} | {:.1} |",
        s.req_per_s,
        s.output_tok_per_s,
        s.total_tok_per_s,
        triple(&s.ttft_ms),
        triple(&s.itl_ms),
        triple(&s.tpot_ms),
        triple(&s.e2e_ms),
        s.succeeded,
        s.requests,
        s.mean_output_tokens,
    )
}

/// A markdown table of the scenario's figures, one row per level / turn / length.
pub fn scenario_table(result: &ScenarioResult) -> String {
    let mut t = String::new();
    let rows: Vec<(String, &Summary)> = match result {
        ScenarioResult::Sweep(r) => r
            .levels
            .iter()
            .map(|l| (format!("c={}", l.concurrency), &l.summary))
            .collect(),
        ScenarioResult::Rate(r) => vec![(format!("{:.2} req/s", r.rate), &r.summary)],
        ScenarioResult::Dialog(r) => r
            .per_turn
            .iter()
            .map(|t| (format!("turn {}", t.turn), &t.summary))
            .chain(std::iter::once(("all".to_string(), &r.overall)))
            .collect(),
        ScenarioResult::Prefill(r) => r
            .points
            .iter()
            .map(|p| (format!("{} tok", p.prompt_len), &p.summary))
            .collect(),
    };
    let _ = writeln!(t, "| run {SUMMARY_HEAD}\n|---{SUMMARY_RULE}");
    for (name, summary) in &rows {
        let _ = writeln!(t, "| {name} |{}", summary_cells(summary));
    }
    let _ = writeln!(t);
    match result {
        ScenarioResult::Rate(r) => {
            let _ = writeln!(
                t,
                "{} arrivals in {:.0} s (seed {}), {} late, at most {} in flight.\n",
                r.arrivals, r.duration_s, r.seed, r.late_arrivals, r.max_in_flight_seen
            );
        }
        ScenarioResult::Dialog(r) => {
            let _ = writeln!(
                t,
                "| turn | mean prompt tokens | mean cached tokens |\n|---:|---:|---:|"
            );
            for turn in &r.per_turn {
                let f = |x: Option<f64>| x.map_or("–".to_string(), |v| format!("{v:.0}"));
                let _ = writeln!(
                    t,
                    "| {} | {} | {} |",
                    turn.turn,
                    f(turn.mean_prompt_tokens),
                    f(turn.mean_cached_tokens)
                );
            }
            let _ = writeln!(t);
        }
        _ => {}
    }
    for (name, summary) in &rows {
        if let Some(e) = &summary.first_error {
            let _ = writeln!(t, "- {name}: first error: {e}");
        }
    }
    t
}
