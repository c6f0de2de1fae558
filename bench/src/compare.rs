//! Side-by-side report of runs against two servers: the targets, the sweep,
//! prefill, dialog and rate figures with ratios candidate / baseline, the roofline, and
//! every run's own table. Inputs are the JSON files a directory of runs holds
//! (`machine.json` for the limits, every other `*.json` a `RunReport`).

use std::fmt::Write as _;
use std::path::Path;

use crate::error::BenchError;
use crate::machine::MachineReport;
use crate::report::{mib, RunReport, ScenarioResult};
use crate::scenario::dialog::DialogResult;
use crate::scenario::prefill::PrefillResult;
use crate::scenario::sweep::SweepResult;

/// Every run of a results directory, plus the machine reports when present.
pub struct Runs {
    pub runs: Vec<RunReport>,
    /// `machine.json`: the limits measured before the first run.
    pub machine: Option<MachineReport>,
    /// `machine-end.json`: the same, measured after the last run.
    pub machine_end: Option<MachineReport>,
}

/// Reads a machine report.
fn read_machine(path: &Path) -> Result<MachineReport, BenchError> {
    let text = std::fs::read_to_string(path)
        .map_err(BenchError::io(format!("reading {}", path.display())))?;
    serde_json::from_str(&text).map_err(BenchError::json(path.display().to_string()))
}

impl Runs {
    pub fn load_dir(dir: &Path) -> Result<Runs, BenchError> {
        let (mut runs, mut machine, mut machine_end) = (Vec::new(), None, None);
        let entries =
            std::fs::read_dir(dir).map_err(BenchError::io(format!("listing {}", dir.display())))?;
        let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
        {
            match path.file_name().and_then(|n| n.to_str()) {
                Some("machine.json") => machine = Some(read_machine(&path)?),
                Some("machine-end.json") => machine_end = Some(read_machine(&path)?),
                _ => runs.push(RunReport::read_json(&path)?),
            }
        }
        // Scenario order of the issue, then label.
        let rank = |r: &RunReport| {
            ["sweep", "rate", "dialog", "prefill"]
                .iter()
                .position(|k| *k == r.scenario.kind())
        };
        runs.sort_by(|a, b| (rank(a), &a.label).cmp(&(rank(b), &b.label)));
        Ok(Runs {
            runs,
            machine,
            machine_end,
        })
    }

    fn find<'a, T>(
        &'a self,
        label: &str,
        pick: impl Fn(&'a ScenarioResult) -> Option<&'a T>,
    ) -> Option<&'a T> {
        self.runs
            .iter()
            .filter(|r| r.label == label)
            .find_map(|r| pick(&r.scenario))
    }
    pub fn sweep(&self, label: &str) -> Option<&SweepResult> {
        self.find(label, |s| {
            if let ScenarioResult::Sweep(x) = s {
                Some(x)
            } else {
                None
            }
        })
    }
    pub fn prefill(&self, label: &str) -> Option<&PrefillResult> {
        self.find(label, |s| {
            if let ScenarioResult::Prefill(x) = s {
                Some(x)
            } else {
                None
            }
        })
    }
    pub fn dialog(&self, label: &str) -> Option<&DialogResult> {
        self.find(label, |s| {
            if let ScenarioResult::Dialog(x) = s {
                Some(x)
            } else {
                None
            }
        })
    }
    /// Labels in first-seen order.
    pub fn labels(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in &self.runs {
            if !out.contains(&r.label) {
                out.push(r.label.clone());
            }
        }
        out
    }
    /// Highest server peak RSS over a label's runs.
    fn peak_rss(&self, label: &str) -> Option<u64> {
        self.runs
            .iter()
            .filter(|r| r.label == label)
            .filter_map(|r| r.server_peak_rss_bytes)
            .max()
    }
}

/// Which labels to compare: candidate / baseline.
pub struct Pair<'a> {
    pub candidate: &'a str,
    pub baseline: &'a str,
}

impl Pair<'_> {
    /// The label of the candidate's run with prefix caching off.
    pub fn no_prefix_label(&self) -> String {
        format!("{}-no-prefix-cache", self.candidate)
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn num(x: Option<f64>, digits: usize) -> String {
    x.map_or("–".to_string(), |v| format!("{v:.digits$}"))
}

/// A sweep level's figure at concurrency `c`.
fn at_c(
    s: Option<&SweepResult>,
    c: usize,
    f: impl Fn(&crate::scenario::sweep::SweepLevel) -> Option<f64>,
) -> Option<f64> {
    s?.levels.iter().find(|l| l.concurrency == c).and_then(f)
}

/// The last turn's p50 e2e and TTFT (ms) of a dialog run.
fn last_turn(d: Option<&DialogResult>) -> (Option<f64>, Option<f64>) {
    let t = d.and_then(|d| d.per_turn.last());
    (
        t.and_then(|t| t.summary.e2e_ms.map(|x| x.p50)),
        t.and_then(|t| t.summary.ttft_ms.map(|x| x.p50)),
    )
}

/// The targets, each with both figures, the ratio, and whether it is met.
fn targets(runs: &Runs, p: &Pair) -> String {
    let (cs, bs) = (runs.sweep(p.candidate), runs.sweep(p.baseline));
    let mut t = String::from(
        "| target | candidate | baseline | ratio | goal | met |\n|---|---:|---:|---:|---|---|\n",
    );
    let mut row = |name: &str, a: Option<f64>, b: Option<f64>, goal: &str, ok: fn(f64) -> bool| {
        let r = ratio(a, b);
        let met = r.map_or("n/a", |r| if ok(r) { "yes" } else { "no" });
        let _ = writeln!(
            t,
            "| {name} | {} | {} | {} | {goal} | {met} |",
            num(a, 1),
            num(b, 1),
            num(r, 2)
        );
    };
    let out32 = |s| at_c(s, 32, |l| Some(l.summary.output_tok_per_s));
    row(
        "output tok/s at c=32",
        out32(cs),
        out32(bs),
        "≥ 2.0",
        |r| r >= 2.0,
    );
    let dec1 = |s| at_c(s, 1, |l| l.decode_tok_per_s());
    row(
        "single-stream decode tok/s (c=1)",
        dec1(cs),
        dec1(bs),
        "≥ 0.9",
        |r| r >= 0.9,
    );
    let ttft1 = |s| at_c(s, 1, |l| l.summary.ttft_ms.map(|d| d.p50));
    row("TTFT p50 ms at c=1", ttft1(cs), ttft1(bs), "≤ 1.0", |r| {
        r <= 1.0
    });
    let on = last_turn(runs.dialog(p.candidate));
    let off = last_turn(runs.dialog(&p.no_prefix_label()));
    let mut t2 = String::new();
    let _ = writeln!(
        t2,
        "| last dialog turn e2e p50 ms, prefix cache on / off ({}) | {} | {} | {} | ≤ 0.5 | {} |",
        p.candidate,
        num(on.0, 1),
        num(off.0, 1),
        num(ratio(on.0, off.0), 2),
        ratio(on.0, off.0).map_or("n/a", |r| if r <= 0.5 { "yes" } else { "no" })
    );
    let _ = writeln!(
        t2,
        "| last dialog turn TTFT p50 ms, prefix cache on / off ({}) | {} | {} | {} | (info) | |",
        p.candidate,
        num(on.1, 1),
        num(off.1, 1),
        num(ratio(on.1, off.1), 2)
    );
    t.push_str(&t2);
    let model = runs
        .machine
        .as_ref()
        .and_then(|m| m.model.as_ref())
        .map(|m| m.file_bytes);
    let rss = |l: &str| runs.peak_rss(l);
    let _ = writeln!(
        t,
        "| server peak RSS (max over runs) | {} | {} | {} | ≤ model file{} + KV cache + 200 MB | see RSS − model file: {} |",
        rss(p.candidate).map_or("–".into(), mib),
        rss(p.baseline).map_or("–".into(), mib),
        num(ratio(rss(p.candidate).map(|x| x as f64), rss(p.baseline).map(|x| x as f64)), 2),
        model.map_or(String::new(), |m| format!(" ({})", mib(m))),
        match (rss(p.candidate), model) {
            (Some(r), Some(m)) => mib(r.saturating_sub(m)),
            _ => "–".into(),
        }
    );
    t
}

/// Sweep side by side, one row per concurrency level of the candidate.
fn sweep_table(runs: &Runs, p: &Pair) -> String {
    let (Some(cs), bs) = (runs.sweep(p.candidate), runs.sweep(p.baseline)) else {
        return "no sweep run for the candidate\n".into();
    };
    let mut t = String::from(
        "| c | out tok/s cand | base | ratio | TTFT p50 ms cand | base | ratio | TTFT p99 ms cand | base | ratio | TPOT p50 ms cand | base | ratio |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for l in &cs.levels {
        let c = l.concurrency;
        let cells = [
            |l: &crate::scenario::sweep::SweepLevel| Some(l.summary.output_tok_per_s),
            |l: &crate::scenario::sweep::SweepLevel| l.summary.ttft_ms.map(|d| d.p50),
            |l: &crate::scenario::sweep::SweepLevel| l.summary.ttft_ms.map(|d| d.p99),
            |l: &crate::scenario::sweep::SweepLevel| l.summary.tpot_ms.map(|d| d.p50),
        ]
        .iter()
        .map(|f| {
            let (a, b) = (f(l), at_c(bs, c, f));
            format!(" {} | {} | {} |", num(a, 1), num(b, 1), num(ratio(a, b), 2))
        })
        .collect::<String>();
        let _ = writeln!(t, "| {c} |{cells}");
    }
    t
}

/// Prefill TTFT side by side, one row per prompt length of the candidate.
fn prefill_table(runs: &Runs, p: &Pair) -> String {
    let Some(cp) = runs.prefill(p.candidate) else {
        return "no prefill run for the candidate\n".into();
    };
    let bp = runs.prefill(p.baseline);
    let mut t = String::from(
        "| prompt tokens | TTFT p50 ms cand | base | ratio | prefill tok/s cand | base |\n|---:|---:|---:|---:|---:|---:|\n",
    );
    for point in &cp.points {
        let other = bp.and_then(|b| b.points.iter().find(|q| q.prompt_len == point.prompt_len));
        let a = point.summary.ttft_ms.map(|d| d.p50);
        let b = other.and_then(|o| o.summary.ttft_ms.map(|d| d.p50));
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} |",
            point.prompt_len,
            num(a, 1),
            num(b, 1),
            num(ratio(a, b), 2),
            num(point.prefill_tok_per_s, 0),
            num(other.and_then(|o| o.prefill_tok_per_s), 0)
        );
    }
    t
}

/// Dialog per turn: TTFT and e2e p50 of every label that ran it.
fn dialog_table(runs: &Runs) -> String {
    let dialogs: Vec<(String, &DialogResult)> = runs
        .labels()
        .into_iter()
        .filter_map(|l| runs.dialog(&l).map(|d| (l, d)))
        .collect();
    if dialogs.is_empty() {
        return "no dialog run\n".into();
    }
    let mut t = String::from("| turn |");
    for (l, _) in &dialogs {
        let _ = write!(t, " {l} TTFT p50 ms | {l} e2e p50 ms |");
    }
    let _ = writeln!(t, "\n|---:|{}", "---:|---:|".repeat(dialogs.len()));
    let turns = dialogs
        .iter()
        .map(|(_, d)| d.per_turn.len())
        .max()
        .unwrap_or(0);
    for i in 0..turns {
        let _ = write!(t, "| {} |", i + 1);
        for (_, d) in &dialogs {
            let s = d.per_turn.get(i).map(|x| &x.summary);
            let _ = write!(
                t,
                " {} | {} |",
                num(s.and_then(|s| s.ttft_ms.map(|x| x.p50)), 1),
                num(s.and_then(|s| s.e2e_ms.map(|x| x.p50)), 1)
            );
        }
        let _ = writeln!(t);
    }
    t
}

/// Measured decode and batch throughput against the machine's bounds, per label.
fn roofline(runs: &Runs) -> String {
    let Some(m) = &runs.machine else {
        return "no machine.json: run `tessera-bench machine --model M --out DIR/machine.json`\n"
            .into();
    };
    let mut t = format!("CPU {}; {}.\n", m.cpu, m.limits);
    if let Some(end) = &runs.machine_end {
        let _ = writeln!(t, "After the last run: {}.", end.limits);
    }
    t.push('\n');
    let Some(b) = &m.bounds else {
        return t + "no model size given: no bounds.\n";
    };
    let _ = writeln!(
        t,
        "Model: {} bytes of weights read per token, {} matmul parameters → decode bound {:.0} tok/s (bandwidth / bytes), FLOP bound {:.0} tok/s (fp32 FMA peak / 2·params; total tokens, prompt included, count against it; int8 dot-product kernels such as AVX-512 VNNI can pass it).\n",
        b.weight_bytes_per_token, b.matmul_params, b.decode_tok_per_s_bound, b.flop_tok_per_s_bound
    );
    t.push_str("| server | decode tok/s c=1 | of bandwidth bound | best total tok/s (c) | of FLOP bound |\n|---|---:|---:|---:|---:|\n");
    for label in runs.labels() {
        let Some(s) = runs.sweep(&label) else {
            continue;
        };
        let dec = at_c(Some(s), 1, |l| l.decode_tok_per_s());
        let best = s.levels.iter().max_by(|x, y| {
            x.summary
                .total_tok_per_s
                .total_cmp(&y.summary.total_tok_per_s)
        });
        let _ = writeln!(
            t,
            "| {label} | {} | {} | {} ({}) | {} |",
            num(dec, 1),
            num(dec.map(|d| 100.0 * d / b.decode_tok_per_s_bound), 1) + " %",
            num(best.map(|l| l.summary.total_tok_per_s), 1),
            best.map_or(0, |l| l.concurrency),
            num(
                best.map(|l| 100.0 * l.summary.total_tok_per_s / b.flop_tok_per_s_bound),
                1
            ) + " %"
        );
    }
    t
}

/// The whole comparison as markdown. `plots` are image file names to link.
pub fn markdown(runs: &Runs, p: &Pair, title: &str, plots: &[String]) -> String {
    let mut s = format!(
        "# {title}\n\nCandidate `{}` vs baseline `{}`: ratios are candidate / baseline. Same client (tessera-bench), same model file, loopback.\n\n",
        p.candidate, p.baseline
    );
    let sections = [
        ("Targets (issue 5)", targets(runs, p)),
        ("Sweep (closed loop)", sweep_table(runs, p)),
        (
            "Prefill (TTFT vs prompt length, c=1)",
            prefill_table(runs, p),
        ),
        ("Dialog (per turn)", dialog_table(runs)),
        ("Machine limits and roofline", roofline(runs)),
    ];
    for (head, body) in sections {
        let _ = write!(s, "## {head}\n\n{body}\n");
    }
    if !plots.is_empty() {
        s.push_str("## Plots\n\n");
        for p in plots {
            let _ = writeln!(s, "![{p}]({p})\n");
        }
    }
    s.push_str("## Every run\n\n");
    for r in &runs.runs {
        s.push_str(&r.markdown());
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::MachineLimits;

    fn machine(gflops: f64, one_thread: f64) -> MachineReport {
        MachineReport {
            cpu: "test cpu".into(),
            limits: MachineLimits {
                threads: 2,
                triad_bytes_per_array: 8,
                bandwidth_gb_s: 20.0,
                fma_isa: "avx512f".into(),
                fma_gflops: gflops,
                fma_gflops_one_thread: one_thread,
            },
            model: None,
            bounds: None,
        }
    }

    #[test]
    fn the_roofline_gives_the_limits_before_and_after_the_runs() {
        let dir = std::env::temp_dir().join(format!("tessera-compare-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, m: &MachineReport| {
            std::fs::write(dir.join(name), serde_json::to_string(m).unwrap()).unwrap()
        };
        write("machine.json", &machine(340.0, 170.0));
        write("machine-end.json", &machine(180.0, 175.0));
        let runs = Runs::load_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(runs.runs.is_empty());
        let text = roofline(&runs);
        assert!(text.contains("FMA peak 340.0 GFLOP/s (avx512f); one thread 170.0 GFLOP/s, so 2 threads ran 2.00× one"), "{text}");
        assert!(text.contains("After the last run: 2 threads; triad bandwidth 20.0 GB/s; fp32 FMA peak 180.0 GFLOP/s (avx512f); one thread 175.0 GFLOP/s, so 2 threads ran 1.03× one"), "{text}");
        // A report written before the one-thread figure existed gives no scaling.
        let old = machine(340.0, 0.0).limits.to_string();
        assert!(old.ends_with("(avx512f)"), "{old}");
    }
}
