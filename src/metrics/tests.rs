use std::time::Duration;

use super::series::buckets_1_2_5;
use super::*;
use crate::engine::stream::{EventTiming, RequestTimings, Usage};

fn stats() -> EngineStats {
    EngineStats {
        num_running: 3,
        num_waiting: 2,
        kv_blocks_total: 100,
        kv_blocks_used: 40,
        num_preemptions: 5,
        prefix_cache_queries: 64,
        prefix_cache_hits: 32,
        spec_decode_num_drafts: 7,
        spec_decode_num_draft_tokens: 20,
        spec_decode_num_accepted_tokens: 11,
    }
}

/// One exposition sample: name, labels sorted by name, value.
type Sample = (String, Vec<(String, String)>, String);

/// `name{k="v",…} value` → its `Sample`; `None` for comments.
fn parse_sample(line: &str) -> Option<Sample> {
    if line.starts_with('#') || line.is_empty() {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let Some((name, rest)) = series.split_once('{') else {
        return Some((series.to_string(), Vec::new(), value.to_string()));
    };
    let mut labels = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if key.is_empty() || key == "}" {
            break;
        }
        chars.next(); // opening quote
        let mut val = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => val.extend(chars.next()),
                '"' => break,
                c => val.push(c),
            }
        }
        labels.push((key, val));
        if chars.next() != Some(',') {
            break;
        }
    }
    labels.sort();
    Some((name.to_string(), labels, value.to_string()))
}

/// Whether `text` has the sample written as `line` (label order does not matter).
fn has_line(text: &str, line: &str) -> bool {
    let wanted = parse_sample(line).expect("a sample line");
    text.lines().filter_map(parse_sample).any(|s| s == wanted)
}

fn model_info() -> ModelInfo {
    ModelInfo {
        model: "file".into(),
        dtype: "Q4_1".into(),
        backend: "cpu".into(),
        max_model_len: 100,
        load_seconds: Some(1.5),
    }
}

/// One token event: `tokens` new tokens, finishing with `finish` after `total` tokens.
fn event(tokens: usize, first: bool, finish: Option<FinishReason>, total: usize) -> TokenEvent {
    let ms = Duration::from_millis;
    TokenEvent {
        token_ids: vec![7; tokens],
        text: String::new(),
        logprobs: None,
        prompt_logprobs: None,
        finish_reason: finish,
        usage: Usage {
            prompt_tokens: 12,
            completion_tokens: total,
            cached_tokens: 0,
        },
        timing: EventTiming {
            time_to_first_token: first.then(|| ms(30)),
            inter_token_latency: (!first && tokens > 0).then(|| ms(20)),
            request: finish.map(|_| RequestTimings {
                queue: ms(5),
                prefill: ms(25),
                decode: ms(40),
                e2e: ms(71),
                time_to_first_token: Some(ms(30)),
                time_per_output_token: Some(ms(20)),
            }),
        },
    }
}

#[test]
fn render_shows_engine_gauges_and_totals_once() {
    let m = Metrics::new("smol", MetricsCompat::None).expect("registry");
    m.render(&stats(), None).expect("render");
    let text = m.render(&stats(), None).expect("render");
    for line in [
        "tessera_num_requests_running{model_name=\"smol\"} 3",
        "tessera_num_requests_waiting{model_name=\"smol\"} 2",
        "tessera_kv_cache_blocks_total{model_name=\"smol\"} 100",
        "tessera_kv_cache_blocks_used{model_name=\"smol\"} 40",
        "tessera_kv_cache_usage_perc{model_name=\"smol\"} 0.4",
        "tessera_num_preemptions_total{model_name=\"smol\"} 5",
        "tessera_prefix_cache_queries_total{model_name=\"smol\"} 64",
        "tessera_prefix_cache_hits_total{model_name=\"smol\"} 32",
        "tessera_spec_decode_num_drafts_total{model_name=\"smol\"} 7",
        "tessera_spec_decode_num_draft_tokens_total{model_name=\"smol\"} 20",
        "tessera_spec_decode_num_accepted_tokens_total{model_name=\"smol\"} 11",
        "tessera_request_success_total{finished_reason=\"stop\",model_name=\"smol\"} 0",
        "tessera_request_failure_total{model_name=\"smol\",reason=\"aborted_client\"} 0",
    ] {
        assert!(has_line(&text, line), "missing `{line}` in\n{text}");
    }
    assert!(!text.contains("vllm:"), "no vLLM names without compat");
    // Every sample carries the model_name label.
    for sample in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(sample.contains("model_name=\"smol\""), "{sample}");
    }
}

#[test]
fn events_fill_counters_and_histograms_once_per_finished_sequence() {
    let m = Metrics::new("smol", MetricsCompat::None).expect("registry");
    m.set_model(&model_info()).expect("model series");
    // Sequence 1: three tokens, finishes by length.
    m.observe_event(&event(1, true, None, 1));
    m.observe_event(&event(1, false, None, 2));
    m.observe_event(&event(1, false, Some(FinishReason::Length), 3));
    // Sequence 2: one token, then aborted (not a success, no request histograms).
    m.observe_event(&event(1, true, None, 1));
    m.observe_event(&event(0, false, Some(FinishReason::Abort), 1));
    m.record_failure(FailureReason::from_status(429));
    let text = m.render(&EngineStats::default(), None).expect("render");
    for line in [
        "tessera_generation_tokens_total{model_name=\"smol\"} 4",
        "tessera_prompt_tokens_total{model_name=\"smol\"} 24",
        "tessera_time_to_first_token_seconds_count{model_name=\"smol\"} 2",
        "tessera_inter_token_latency_seconds_count{model_name=\"smol\"} 2",
        "tessera_e2e_request_latency_seconds_count{model_name=\"smol\"} 1",
        "tessera_request_queue_time_seconds_count{model_name=\"smol\"} 1",
        "tessera_request_prefill_time_seconds_count{model_name=\"smol\"} 1",
        "tessera_request_decode_time_seconds_count{model_name=\"smol\"} 1",
        "tessera_request_time_per_output_token_seconds_count{model_name=\"smol\"} 1",
        "tessera_request_generation_tokens_sum{model_name=\"smol\"} 3",
        "tessera_request_prompt_tokens_count{model_name=\"smol\"} 1",
        "tessera_request_success_total{finished_reason=\"length\",model_name=\"smol\"} 1",
        "tessera_request_failure_total{model_name=\"smol\",reason=\"rejected_429\"} 1",
        // TTFT 30 ms falls in vLLM's 0.04 bucket, not in 0.02.
        "tessera_time_to_first_token_seconds_bucket{model_name=\"smol\",le=\"0.02\"} 0",
        "tessera_time_to_first_token_seconds_bucket{model_name=\"smol\",le=\"0.04\"} 2",
        "tessera_build_info{backend=\"cpu\",dtype=\"Q4_1\",model=\"file\",model_name=\"smol\",version=\"0.1.0-obs\"} 1"
            .replace("0.1.0-obs", env!("CARGO_PKG_VERSION"))
            .as_str(),
        "tessera_model_load_seconds{model_name=\"smol\"} 1.5",
    ] {
        assert!(has_line(&text, line), "missing `{line}` in\n{text}");
    }
}

#[test]
fn vllm_compat_copies_families_under_vllm_names() {
    let m = Metrics::new("smol", MetricsCompat::Vllm).expect("registry");
    m.set_model(&model_info()).expect("model series");
    m.observe_event(&event(1, true, Some(FinishReason::Stop), 1));
    let text = m.render(&stats(), None).expect("render");
    for line in [
        "vllm:num_requests_waiting{model_name=\"smol\"} 2",
        "vllm:num_requests_running{model_name=\"smol\"} 3",
        "vllm:kv_cache_usage_perc{model_name=\"smol\"} 0.4",
        "vllm:time_to_first_token_seconds_count{model_name=\"smol\"} 1",
        "vllm:e2e_request_latency_seconds_count{model_name=\"smol\"} 1",
        "vllm:request_success_total{finished_reason=\"stop\",model_name=\"smol\"} 1",
        "vllm:generation_tokens_total{model_name=\"smol\"} 1",
        "vllm:spec_decode_num_drafts_total{model_name=\"smol\"} 7",
        "vllm:spec_decode_num_draft_tokens_total{model_name=\"smol\"} 20",
        "vllm:spec_decode_num_accepted_tokens_total{model_name=\"smol\"} 11",
        "tessera_num_requests_waiting{model_name=\"smol\"} 2",
    ] {
        assert!(has_line(&text, line), "missing `{line}` in\n{text}");
    }
    for (_, name) in VLLM_NAMES {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
    }
}

#[test]
fn moe_expert_counters_follow_the_live_counts() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let counts: Arc<[AtomicU64]> = (0..2).map(|_| AtomicU64::new(0)).collect();
    let experts = ExpertTokenCounts::collect([(3, counts.clone())].into_iter()).expect("moe");
    let m = Metrics::new("moe", MetricsCompat::None).expect("registry");
    counts[1].store(7, Ordering::Relaxed);
    m.render(&EngineStats::default(), Some(&experts))
        .expect("render");
    counts[1].store(9, Ordering::Relaxed);
    let text = m
        .render(&EngineStats::default(), Some(&experts))
        .expect("render");
    let line = "tessera_moe_expert_tokens_total{expert=\"1\",layer=\"3\",model_name=\"moe\"} 9";
    assert!(has_line(&text, line), "missing `{line}` in\n{text}");
}

#[test]
fn http_series_are_labelled_by_route_and_status() {
    let m = Metrics::new("smol", MetricsCompat::None).expect("registry");
    m.record_http("/v1/models/{model}", 404, Duration::from_millis(3));
    m.record_http("/v1/models/{model}", 404, Duration::from_millis(3));
    let text = m.render(&EngineStats::default(), None).expect("render");
    let line = "tessera_http_requests_total{model_name=\"smol\",route=\"/v1/models/{model}\",status=\"404\"} 2";
    assert!(has_line(&text, line), "missing `{line}` in\n{text}");
    let bucket = "tessera_http_request_duration_seconds_bucket{model_name=\"smol\",route=\"/v1/models/{model}\",status=\"404\",le=\"0.005\"} 2";
    assert!(has_line(&text, bucket), "missing `{bucket}` in\n{text}");
}

#[test]
fn failure_reasons_follow_the_status() {
    assert_eq!(FailureReason::from_status(400), FailureReason::Validation);
    assert_eq!(FailureReason::from_status(401), FailureReason::Validation);
    assert_eq!(FailureReason::from_status(413), FailureReason::Validation);
    assert_eq!(FailureReason::from_status(429), FailureReason::Rejected429);
    assert_eq!(FailureReason::from_status(500), FailureReason::EngineError);
    assert_eq!(FailureReason::from_status(503), FailureReason::Unavailable);
    assert_eq!("vllm".parse::<MetricsCompat>(), Ok(MetricsCompat::Vllm));
    assert!("prom".parse::<MetricsCompat>().is_err());
}

#[test]
fn token_buckets_are_vllms_1_2_5_series() {
    assert_eq!(
        buckets_1_2_5(100),
        vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
    );
    assert_eq!(buckets_1_2_5(8192).last(), Some(&5000.0));
    assert_eq!(buckets_1_2_5(0), vec![1.0]);
}

#[test]
fn every_exported_family_is_a_named_constant() {
    let m = Metrics::new("smol", MetricsCompat::None).expect("registry");
    m.set_model(&model_info()).expect("model series");
    m.record_http("/health", 200, Duration::ZERO);
    m.moderation_hits()
        .with_label_values(&["input", "fraud", "flag"])
        .inc();
    let text = m.render(&EngineStats::default(), None).expect("render");
    let exported: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for name in &exported {
        assert!(ALL_NAMES.contains(name), "{name} is not in ALL_NAMES");
    }
    // Everything but the MoE counters (no MoE model here) is exported.
    assert_eq!(exported.len(), ALL_NAMES.len() - 1, "{exported:?}");
}
