//! What LLM-aware routers ask of a worker, under their names, so SGLang's Model Gateway
//! (`sglang-router`) and `vllm-router` run unchanged in front of tessera replicas:
//!
//! - `GET /server_info` (and the older `/get_server_info`): the worker's model and limits;
//!   the gateway takes the model id from `served_model_name` (else `model_path`).
//! - `GET /model_info` (and `/get_model_info`): model path, type and architectures.
//! - `GET /get_load`: one object per data-parallel rank (tessera has one),
//!   `{dp_rank, num_reqs, num_waiting_reqs, num_tokens}`; the gateway's `power_of_two`
//!   policy sums `num_tokens` (here: the tokens held in the KV cache).
//!
//! Health is `/health`, the OpenAI routes are the usual ones and `/metrics` is already
//! Prometheus text. `/get_load` is open like `/metrics` (the same numbers); the info
//! routes name the model file, so they need an API key (the gateway sends its `--api-key`).
//! Each answers 503 until the model is loaded.

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

use super::state::AppState;
use crate::engine::handle::EngineHandle;
use crate::error::ApiError;
use crate::model::config::Arch;

type Data = web::Data<AppState>;
type Reply = Result<HttpResponse, ApiError>;

/// `GET /server_info`, `GET /get_server_info` (SGLang's shape, the fields routers read).
pub async fn server_info(state: Data) -> Reply {
    let engine = state.engine()?;
    let info = engine.info();
    let served = state.served_names();
    Ok(HttpResponse::Ok().json(json!({
        "model_path": engine.model().path.display().to_string(),
        "tokenizer_path": engine.model().path.display().to_string(),
        "served_model_name": served.first(),
        "served_model_names": served,
        "version": env!("CARGO_PKG_VERSION"),
        "tp_size": 1,
        "dp_size": 1,
        "max_running_requests": state.max_num_seqs(),
        "max_total_tokens": info.num_kv_blocks * info.block_size,
        "page_size": info.block_size,
        "context_length": info.max_model_len,
        "disaggregation_mode": "null",
        "replica_id": state.config.replica_id,
    })))
}

/// `GET /model_info`, `GET /get_model_info`.
pub async fn model_info(state: Data) -> Reply {
    let engine = state.engine()?;
    let model = engine.model();
    let (model_type, architecture) = hf_names(model.config.arch, model.config.moe.is_some());
    Ok(HttpResponse::Ok().json(json!({
        "model_path": model.path.display().to_string(),
        "tokenizer_path": model.path.display().to_string(),
        "is_generation": true,
        "model_type": model_type,
        "architectures": [architecture],
    })))
}

/// `GET /get_load`.
pub async fn get_load(state: Data) -> Reply {
    Ok(HttpResponse::Ok().json(load_of(state.engine()?)))
}

/// The load of `engine` in SGLang's `/get_load` shape: `[{dp_rank, num_reqs,
/// num_waiting_reqs, num_tokens}]`.
fn load_of(engine: &EngineHandle) -> Value {
    let stats = engine.gauges().snapshot();
    json!([{
        "dp_rank": 0,
        "num_reqs": stats.num_running + stats.num_waiting,
        "num_waiting_reqs": stats.num_waiting,
        "num_tokens": stats.kv_blocks_used * engine.info().block_size,
    }])
}

/// Hugging Face's `model_type` and architecture class for a model family.
fn hf_names(arch: Arch, moe: bool) -> (&'static str, &'static str) {
    match (arch, moe) {
        (Arch::Llama, false) => ("llama", "LlamaForCausalLM"),
        (Arch::Llama, true) => ("mixtral", "MixtralForCausalLM"),
        (Arch::Qwen2, _) => ("qwen2", "Qwen2ForCausalLM"),
        (Arch::Qwen2Moe, _) => ("qwen2_moe", "Qwen2MoeForCausalLM"),
        (Arch::InternLm2, _) => ("internlm2", "InternLM2ForCausalLM"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_map_to_hugging_face_names() {
        assert_eq!(hf_names(Arch::Llama, false).1, "LlamaForCausalLM");
        assert_eq!(hf_names(Arch::Llama, true).0, "mixtral");
        assert_eq!(hf_names(Arch::Qwen2Moe, true).1, "Qwen2MoeForCausalLM");
    }
}
