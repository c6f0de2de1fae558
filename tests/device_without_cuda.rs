//! `--device cuda` in a build without the `cuda` feature is an error at start that says
//! how to get one, not a silent fall back to the CPU.
#![cfg(not(feature = "cuda"))]

mod common;

use common::{golden, golden_model_path};
use tessera::backend::Device;
use tessera::config::EngineConfig;
use tessera::engine::handle;

#[test]
fn cuda_without_the_feature_is_refused_with_the_build_flag() {
    let g = golden("internlm2-tiny-f32");
    let loaded = tessera::model::load_with(
        &golden_model_path(&g),
        &tessera::model::LoadOptions::default(),
        |_, _| {},
    )
    .expect("loads");
    let cfg = EngineConfig {
        device: Device::Cuda(0),
        ..EngineConfig::default()
    };
    let err = match handle::start(loaded, &cfg) {
        Ok(engine) => {
            engine.shutdown();
            panic!("started on cuda without the feature")
        }
        Err(e) => e.to_string(),
    };
    assert!(err.contains("this build has no CUDA support"), "{err}");
    assert!(err.contains("--features cuda"), "{err}");
}
