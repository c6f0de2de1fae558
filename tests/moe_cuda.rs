//! The CUDA MoE routing kernels against their CPU twins in `tessera::ops::moe`
//! (feature `cuda`). Inputs are fresh random every run (the seed is printed, and
//! `TESSERA_MOE_SEED` replays one); cases cover ties, k = 1, 2, 8, an expert with no
//! tokens, every token on one expert, and 1 and 4,096 tokens.
//!
//! Without a GPU each test prints one `skipped: <reason>` line and passes; the kernels
//! are still compiled by NVRTC when libnvrtc is present (`kernels_compile`).
//! `scripts/gpu-check.sh` runs exactly these tests on a GPU machine, plus the timings
//! (`kernel_timings_vs_cpu`, ignored by default).
#![cfg(feature = "cuda")]

use std::sync::OnceLock;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::Rng;
use tessera::ops::cuda::moe::MoeKernels;
use tessera::ops::cuda::{compile_ptx, CudaDevice, CudaError};
use tessera::ops::moe::{permute, topk_softmax, unpermute_weighted, MoeAlign};

mod cuda_support;
use cuda_support::{load_or_skip, seeded_rng};

fn kernels() -> Option<&'static MoeKernels> {
    static K: OnceLock<Result<MoeKernels, String>> = OnceLock::new();
    load_or_skip(&K, MoeKernels::load)
}

fn rng(test: &str) -> StdRng {
    seeded_rng(test, "TESSERA_MOE_SEED")
}

/// Router logits `[t, e]`: random; `ties` quantizes them to a few values (many exact
/// ties); `hot` makes expert `hot` the top choice of every token; `cold` is never chosen.
fn logits(rng: &mut impl Rng, t: usize, e: usize, ties: bool, hot: Option<usize>) -> Vec<f32> {
    let cold = e - 1;
    (0..t * e)
        .map(|i| {
            let v: f32 = rng.random_range(-4.0..4.0);
            match (i % e, hot) {
                (x, Some(h)) if x == h => 10.0,
                (x, _) if x == cold && e > 8 => -30.0,
                _ if ties => (v * 2.0).round() / 2.0,
                _ => v,
            }
        })
        .collect()
}

const SHAPES: [(usize, usize, usize); 7] = [
    (1, 8, 2),
    (4096, 8, 2),
    (4096, 64, 8),
    (37, 16, 1),
    (4096, 256, 8),
    (1, 256, 16),
    (300, 60, 4),
];

#[test]
fn kernels_compile() {
    for (file, src) in MoeKernels::sources() {
        match compile_ptx(file, src, Some("compute_75")) {
            Ok(_) => println!("{file}: compiled by NVRTC"),
            Err(CudaError::NoNvrtc) => return println!("skipped: {}", CudaError::NoNvrtc),
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn no_gpu_is_one_clear_error_line() {
    match CudaDevice::open(0) {
        Ok(_) => println!("a CUDA device is present; nothing to check"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                !msg.contains('\n') && msg.starts_with("no CUDA device"),
                "{msg}"
            );
        }
    }
}

#[test]
fn topk_softmax_matches_cpu() {
    let Some(k) = kernels() else { return };
    let mut rng = rng("topk_softmax");
    for (t, e, top) in SHAPES {
        for (ties, hot) in [(false, None), (true, None), (false, Some(e / 2))] {
            for renorm in [false, true] {
                let x = logits(&mut rng, t, e, ties, hot);
                let (ids, w) = k.topk_softmax(&x, e, top, renorm).expect("launch");
                let (mut want_ids, mut want_w) = (vec![0; t * top], vec![0.0; t * top]);
                topk_softmax(&x, e, top, renorm, &mut want_ids, &mut want_w);
                let case = format!("t {t} e {e} k {top} ties {ties} hot {hot:?} renorm {renorm}");
                compare_routing(&x, e, top, (&ids, &w), (&want_ids, &want_w), &case);
            }
        }
    }
}

/// Ids must match exactly except where the CPU's probabilities of two swapped experts are
/// within one rounding of each other (the tail `exp` may round differently); weights
/// within 2 ulp-ish.
fn compare_routing(
    logits: &[f32],
    e: usize,
    k: usize,
    got: (&[u32], &[f32]),
    want: (&[u32], &[f32]),
    case: &str,
) {
    let mut probs = vec![0.0; e];
    for (tok, row) in logits.chunks_exact(e).enumerate() {
        let r = tok * k..(tok + 1) * k;
        if got.0[r.clone()] != want.0[r.clone()] {
            tessera::ops::moe::softmax(row, &mut probs);
            for (&g, &w) in got.0[r.clone()].iter().zip(&want.0[r.clone()]) {
                let (pg, pw) = (probs[g as usize], probs[w as usize]);
                assert!(
                    (pg - pw).abs() <= 2e-7 * pw.abs().max(1e-30),
                    "{case}: token {tok}"
                );
            }
        }
        for (a, b) in got.1[r.clone()].iter().zip(&want.1[r]) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1e-6),
                "{case}: token {tok}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn align_matches_cpu() {
    let Some(kern) = kernels() else { return };
    let mut rng = rng("align");
    for (t, e, k) in SHAPES {
        for hot in [None, Some(0)] {
            let x = logits(&mut rng, t, e, false, hot);
            let (mut ids, mut w) = (vec![0; t * k], vec![0.0; t * k]);
            topk_softmax(&x, e, k, true, &mut ids, &mut w);
            for block in [1, 16, 64] {
                let mut want = MoeAlign::default();
                want.compute(&ids, e, block);
                let got = kern.align(&ids, e, block).expect("launch");
                assert_eq!(got, want, "t {t} e {e} k {k} hot {hot:?} block {block}");
                if e > 8 {
                    assert_eq!(got.counts[e - 1], 0, "the cold expert gets no tokens");
                }
            }
        }
    }
}

#[test]
fn permute_and_unpermute_match_cpu() {
    let Some(kern) = kernels() else { return };
    let mut rng = rng("permute");
    for (t, e, k) in SHAPES {
        let h = [64, 100, 2048][rng.random_range(0..3)];
        let x: Vec<f32> = (0..t * h).map(|_| rng.random_range(-2.0..2.0)).collect();
        let lg = logits(&mut rng, t, e, false, None);
        let (mut ids, mut w) = (vec![0; t * k], vec![0.0; t * k]);
        topk_softmax(&lg, e, k, true, &mut ids, &mut w);
        let mut a = MoeAlign::default();
        a.compute(&ids, e, 16);
        let mut want = vec![0.0; a.sorted.len() * h];
        permute(&x, h, k, &a.sorted, &mut want);
        let got = kern.permute(&x, h, k, &a.sorted).expect("launch");
        assert_eq!(got, want, "permute t {t} h {h} k {k}");
        let ys: Vec<f32> = want.iter().map(|v| v * 1.5 - 0.25).collect();
        let mut want_out = vec![0.0; t * h];
        unpermute_weighted(&ys, &a.inv, &w, k, h, &mut want_out);
        let got_out = kern
            .unpermute_weighted(&ys, &a.inv, &w, k, h)
            .expect("launch");
        assert_eq!(
            got_out, want_out,
            "unpermute t {t} h {h} k {k}: rank order, no FMA"
        );
    }
}

#[test]
fn limits_are_errors_not_launches() {
    let Some(k) = kernels() else { return };
    let err = k.topk_softmax(&[0.0; 512], 512, 2, true).unwrap_err();
    assert!(matches!(err, CudaError::Limit(_)), "{err}");
    let err = k.topk_softmax(&[0.0; 8], 8, 9, true).unwrap_err();
    assert!(matches!(err, CudaError::Limit(_)), "{err}");
    let err = k.align(&[0, 8], 8, 1).unwrap_err();
    assert!(matches!(err, CudaError::Limit(_)), "{err}");
}

/// Prints each kernel's time against its CPU twin (T = 4096, E = 64, k = 8, H = 2048).
#[test]
#[ignore = "timing report; run by scripts/gpu-check.sh"]
fn kernel_timings_vs_cpu() {
    let Some(kern) = kernels() else { return };
    let (t, e, k, h) = (4096, 64, 8, 2048);
    let mut rng = rng("timings");
    let lg = logits(&mut rng, t, e, false, None);
    let x: Vec<f32> = (0..t * h).map(|_| rng.random_range(-1.0..1.0)).collect();
    let (mut ids, mut w) = (vec![0; t * k], vec![0.0; t * k]);
    let mut a = MoeAlign::default();
    let cpu = |f: &mut dyn FnMut()| time(20, f);
    let c_topk = cpu(&mut || topk_softmax(&lg, e, k, true, &mut ids, &mut w));
    let c_align = cpu(&mut || a.compute(&ids, e, 16));
    let mut rows = vec![0.0; a.sorted.len() * h];
    let c_perm = cpu(&mut || permute(&x, h, k, &a.sorted, &mut rows));
    let mut out = vec![0.0; t * h];
    let c_unperm = cpu(&mut || unpermute_weighted(&rows, &a.inv, &w, k, h, &mut out));

    let s = &kern.stream;
    let d_lg = s.clone_htod(&lg).unwrap();
    let (mut d_ids, mut d_w) = (s.alloc_zeros(t * k).unwrap(), s.alloc_zeros(t * k).unwrap());
    let d_x = s.clone_htod(&x).unwrap();
    let mut d_rows = s.alloc_zeros::<f32>(a.sorted.len() * h).unwrap();
    let mut d_out = s.alloc_zeros::<f32>(t * h).unwrap();
    let gpu = |f: &mut dyn FnMut()| {
        f();
        s.synchronize().unwrap();
        time(50, &mut || {
            f();
            s.synchronize().unwrap();
        })
    };
    let g_topk = gpu(&mut || {
        kern.launch_topk_softmax(&d_lg, (t, e, k), true, &mut d_ids, &mut d_w)
            .unwrap()
    });
    let g_align = gpu(&mut || drop(kern.launch_align(&d_ids, t * k, e, 16).unwrap()));
    let d = kern.launch_align(&d_ids, t * k, e, 16).unwrap();
    let p = a.sorted.len();
    let g_perm = gpu(&mut || {
        kern.launch_permute(&d_x, &d.sorted, p, (t, h, k), &mut d_rows)
            .unwrap()
    });
    let g_unperm = gpu(&mut || {
        kern.launch_unpermute(&d_rows, &d.inv, &d_w, (t, h, k), &mut d_out)
            .unwrap()
    });
    println!("MoE kernels, T={t} E={e} k={k} H={h} (ms per call, GPU incl. launch + sync):");
    for (name, c, g) in [
        ("topk_softmax", c_topk, g_topk),
        ("align (block 16)", c_align, g_align),
        ("permute", c_perm, g_perm),
        ("unpermute_weighted", c_unperm, g_unperm),
    ] {
        println!("  {name:<20} CPU {c:>9.3}  GPU {g:>8.3}  ({:.0}x)", c / g);
    }
}

/// Mean milliseconds per call over `n` calls.
fn time(n: usize, f: &mut dyn FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed().as_secs_f64() * 1e3 / n as f64
}
