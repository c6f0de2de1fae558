//! `tessera perplexity`'s output, in llama-perplexity's words: the running estimate per
//! chunk and the final PPL; with `--kl-divergence`, a table row per chunk and the
//! statistics after it.

use super::args::PerplexityArgs;
use crate::engine::handle::EngineHandle;
use crate::perplexity::{kl_divergence, perplexity, PerplexityRun};

type BoxError = Box<dyn std::error::Error>;

/// Runs what `args` ask on `engine` and prints it.
pub fn run(engine: &EngineHandle, args: &PerplexityArgs) -> Result<(), BoxError> {
    let Some(base) = args
        .kl_divergence_base
        .as_deref()
        .filter(|_| args.kl_divergence)
    else {
        return plain(engine, args);
    };
    println!(
        "chunk      PPL               ln(PPL(Q)/PPL(base))     KL Divergence          Same top p"
    );
    let r = kl_divergence(engine, base, |i, k| {
        println!(
            "{i:4}  {:9.4} ± {:9.4}  {:10.5} ± {:10.5}  {:10.5} ± {:10.5}  {:6.3} ± {:6.3} %",
            k.ppl.0,
            k.ppl.1,
            k.log_ppl_ratio.0,
            k.log_ppl_ratio.1,
            k.kld.0,
            k.kld.1,
            100.0 * k.same_top.0,
            100.0 * k.same_top.1
        );
    })?;
    println!();
    print!("{}", r.report());
    Ok(())
}

fn plain(engine: &EngineHandle, args: &PerplexityArgs) -> Result<(), BoxError> {
    let file = args.file.as_deref().ok_or("--file is required")?;
    let text = std::fs::read_to_string(file)
        .map_err(|err| format!("reading {}: {err}", file.display()))?;
    let save = args.kl_divergence_base.as_deref();
    let run = PerplexityRun {
        n_ctx: args.ctx,
        max_chunks: args.chunks,
        save_base: save,
    };
    let r = perplexity(engine, &text, run, |i, ppl| {
        print!("[{i}]{ppl:.4},");
        let _ = std::io::Write::flush(&mut std::io::stdout());
    })?;
    println!();
    println!(
        "Final estimate: PPL = {:.4} +/- {:.5} ({} chunks of {} tokens, {} scored)",
        r.ppl, r.error, r.chunks, args.ctx, r.scored
    );
    if let Some(path) = save {
        eprintln!("saved the scored rows to {}", path.display());
    }
    Ok(())
}
