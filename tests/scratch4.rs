use tessera::config::EngineConfig;
use tessera::engine::request::SamplingParams;
#[test]
fn one() {
    let ids: Vec<u32> = serde_json::from_str(&std::env::var("IDS").unwrap()).unwrap();
    let mp = std::env::var("MODEL")
        .map(std::path::PathBuf::from)
        .unwrap_or(tessera::config::default_model_path());
    let loaded = tessera::model::load(&mp, Some(2048), |_, _| {}).unwrap();
    let bt: usize = std::env::var("BT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    let e = tessera::engine::handle::start(
        loaded,
        &EngineConfig {
            max_num_batched_tokens: bt,
            ..EngineConfig::default()
        },
    )
    .unwrap();
    let mut s = e
        .submit(
            ids,
            SamplingParams {
                ignore_eos: true,
                logprobs: Some(5),
                ..SamplingParams::greedy(1)
            },
        )
        .unwrap();
    let ev = s.blocking_next().unwrap().unwrap();
    let lp = &ev.logprobs.unwrap()[0];
    eprintln!(
        "ours: {:?}",
        lp.top
            .iter()
            .map(|t| (t.0, t.1 - lp.top[0].1))
            .collect::<Vec<_>>()
    );
}
