//! Bench (report only, no timing asserts): one MoE layer on the CPU against a dense
//! SwiGLU FFN with the same ACTIVE parameters (width `k × expert_ffn`), and the share of
//! the MoE layer's time spent routing (router matmul, top-k softmax, align, permute,
//! weighted unpermute — everything but the expert matmuls).
//!
//! `cargo test --release --test moe_bench -- --ignored --nocapture`

use std::time::Instant;

use candle_core::quantized::GgmlDType;
use rand::{Rng, SeedableRng};
use tessera::model::layers::{FusedLinear, Mlp};
use tessera::model::moe::MoeBlock;
use tessera::ops::moe::{permute, topk_softmax, unpermute_weighted, MoeAlign};
use tessera::ops::quant::QMatrix;

const H: usize = 512;
const E: usize = 8;
const K: usize = 2;
const EXPERT_FFN: usize = 1024;

fn matrix(rng: &mut rand::rngs::StdRng, rows: usize, cols: usize) -> QMatrix {
    let v: Vec<f32> = (0..rows * cols)
        .map(|_| rng.random_range(-0.05..0.05))
        .collect();
    QMatrix::quantize(GgmlDType::Q8_0, rows, cols, &v).expect("quantizes")
}

fn mlp(rng: &mut rand::rngs::StdRng, ffn: usize) -> Mlp {
    Mlp {
        gate_up: FusedLinear::new(vec![matrix(rng, ffn, H), matrix(rng, ffn, H)]),
        down: matrix(rng, H, ffn),
    }
}

/// Mean seconds per call, after one warm-up call.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let n = 10;
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed().as_secs_f64() / n as f64
}

#[test]
#[ignore = "bench report"]
fn moe_layer_vs_dense_ffn_of_equal_active_parameters() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let router: Vec<f32> = (0..E * H).map(|_| rng.random_range(-0.1..0.1)).collect();
    let router = QMatrix::quantize(GgmlDType::F32, E, H, &router).expect("router");
    let experts = (0..E).map(|_| mlp(&mut rng, EXPERT_FFN)).collect();
    let moe = MoeBlock::new(router.clone(), experts, None, K, true);
    let dense = mlp(&mut rng, K * EXPERT_FFN);
    println!(
        "hidden {H}, {E} experts x ffn {EXPERT_FFN} (Q8_0), top-{K}; dense ffn {} (Q8_0)",
        K * EXPERT_FFN
    );
    println!("tokens  MoE tok/s  dense tok/s  MoE time / dense time  routing share of MoE time");
    for t in [1, 16, 128, 512] {
        let x: Vec<f32> = (0..t * H).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut y = x.clone();
        let t_moe = time(|| {
            y.copy_from_slice(&x);
            moe.forward(&mut y, t);
        });
        let (mut g, mut u, mut fused) = (
            vec![0.0; t * K * EXPERT_FFN],
            vec![0.0; t * K * EXPERT_FFN],
            Vec::new(),
        );
        let t_dense = time(|| {
            y.copy_from_slice(&x);
            dense.forward(&mut y, t, &mut g, &mut u, &mut fused);
        });
        let t_route = time(|| routing_only(&router, &x, t));
        println!(
            "{t:>6}  {:>9.0}  {:>11.0}  {:>20.2}  {:>25.1}%",
            t as f64 / t_moe,
            t as f64 / t_dense,
            t_moe / t_dense,
            100.0 * t_route / t_moe
        );
    }
}

/// Everything the MoE layer does besides the expert matmuls.
fn routing_only(router: &QMatrix, x: &[f32], t: usize) {
    let mut logits = vec![0.0; t * E];
    router.matmul(x, t, &mut logits);
    let (mut ids, mut w) = (vec![0; t * K], vec![0.0; t * K]);
    topk_softmax(&logits, E, K, true, &mut ids, &mut w);
    let mut a = MoeAlign::default();
    a.compute(&ids, E, 1);
    let mut rows = vec![0.0; t * K * H];
    permute(x, H, K, &a.sorted, &mut rows);
    let mut out = vec![0.0; t * H];
    unpermute_weighted(&rows, &a.inv, &w, K, H, &mut out);
}
