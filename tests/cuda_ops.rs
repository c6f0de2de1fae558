//! The CUDA dense-layer kernels and paged attention (`tessera::ops::cuda::dense`) against
//! their CPU twins (feature `cuda`). Inputs are fresh random every run (the seed is
//! printed; `TESSERA_CUDA_OPS_SEED` replays one).
//!
//! Tolerances: `embed`, `add_bias`, `add_assign`, `cast_f16`, `rope` and `write_kv` do
//! the CPU's f32 operations one for one (--fmad=false, explicit fmaf) and must be bit
//! identical. `rms_norm` and `silu_mul` may differ by 1 f16 ulp: the f64 sum of squares
//! is reduced in another order (can move the mean by an f32 ulp) and the tail's libm
//! expf is exp rounded from f64 on the GPU; either can move an f32 result across an f16
//! rounding boundary. Attention is within `1e-3 + 2^-10 * |cpu|` (`cuda_support::attention`):
//! the CPU rounds each probability to f16 (relative error <= 2^-11, so the weighted V sum
//! moves by at most 2^-11 * max|v| = 4.9e-4 with |v| <= 1) and the GPU rounds its output
//! to f16 (relative 2^-11); the rest (f32 exp and summation order) is ~1e-6.
//!
//! Without a GPU each test prints one `skipped: <reason>` line and passes; the kernel
//! files are still compiled by NVRTC when libnvrtc is present (`kernels_compile`).
#![cfg(feature = "cuda")]

use std::sync::OnceLock;

use half::f16;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use tessera::ops::attention::{write_kv, KvGeometry};
use tessera::ops::cuda::dense::{attention_scratch_len, attention_splits, DenseKernels};
use tessera::ops::cuda::{compile_ptx, CudaError};
use tessera::ops::norm::rms_norm;
use tessera::ops::rope::{RopeStyle, RopeTable};
use tessera::ops::{add_assign, add_bias, silu_mul};

fn kernels() -> Option<&'static DenseKernels> {
    static K: OnceLock<Result<DenseKernels, String>> = OnceLock::new();
    load_or_skip(&K, DenseKernels::load)
}

fn rng(test: &str) -> StdRng {
    seeded_rng(test, "TESSERA_CUDA_OPS_SEED")
}

#[test]
fn kernels_compile() {
    for (file, src) in DenseKernels::sources() {
        for arch in ["compute_80", "compute_90"] {
            match compile_ptx(file, src, Some(arch)) {
                Ok(_) => println!("{file}: compiled by NVRTC for {arch}"),
                Err(CudaError::NoNvrtc) => return println!("skipped: {}", CudaError::NoNvrtc),
                Err(e) => panic!("{e}"),
            }
        }
    }
}

#[test]
fn embed_gathers_rows_exactly() {
    let Some(k) = kernels() else { return };
    let mut rng = rng("embed");
    let (vocab, hidden) = (1000, 576);
    let table: Vec<f16> = uniform(&mut rng, vocab * hidden, 2.0)
        .into_iter()
        .map(f16::from_f32)
        .collect();
    let mut ids: Vec<u32> = (0..37).map(|_| rng.random_range(0..vocab as u32)).collect();
    ids.push(vocab as u32); // out of range: a NaN row
    let mut out = zeros::<f32>(k, ids.len() * hidden);
    let (d_table, d_ids) = (up(k, &table), up(k, &ids));
    k.embed(
        &d_table.as_view(),
        &d_ids.as_view(),
        hidden,
        &mut out.as_view_mut(),
    )
    .expect("embed");
    let got = down(k, &out, ids.len() * hidden);
    for (row, &id) in got.chunks_exact(hidden).zip(&ids) {
        match table.get(id as usize * hidden..(id as usize + 1) * hidden) {
            Some(want) => {
                let want: Vec<f32> = want.iter().map(|h| h.to_f32()).collect();
                assert_bits_eq(row, &want, &format!("id {id}"));
            }
            None => assert!(row.iter().all(|v| v.is_nan()), "id {id} out of range"),
        }
    }
}

#[test]
fn rms_norm_matches_cpu_within_one_f16_ulp() {
    let Some(k) = kernels() else { return };
    let mut rng = rng("rms_norm");
    for (rows, width) in [(1, 576), (37, 576), (5, 896), (3, 4096), (9, 7)] {
        let x = uniform(&mut rng, rows * width, 3.0);
        let w = uniform(&mut rng, width, 1.5);
        let eps = 1e-5;
        let mut want = vec![0.0; x.len()];
        rms_norm(&x, &w, eps, &mut want);
        let (d_x, d_w) = (up(k, &x), up(k, &w));
        let mut out = zeros::<f16>(k, x.len());
        k.rms_norm(&d_x.as_view(), &d_w.as_view(), eps, &mut out.as_view_mut())
            .expect("rms_norm");
        let case = format!("rms_norm rows {rows} width {width}");
        let exact = assert_f16_close(&down(k, &out, x.len()), &want, 1, &case);
        println!("{case}: {exact}/{} bit-exact", x.len());

        // The gathered variant: some rows, one twice, in another order.
        let pick: Vec<u32> = (0..4).map(|_| rng.random_range(0..rows as u32)).collect();
        let d_pick = up(k, &pick);
        let mut out = zeros::<f16>(k, pick.len() * width);
        k.rms_norm_rows(
            &d_x.as_view(),
            &d_pick.as_view(),
            &d_w.as_view(),
            eps,
            &mut out.as_view_mut(),
        )
        .expect("rms_norm_rows");
        let want: Vec<f32> = pick
            .iter()
            .flat_map(|&r| want[r as usize * width..(r as usize + 1) * width].to_vec())
            .collect();
        let got = down(k, &out, want.len());
        assert_f16_close(
            &got,
            &want,
            1,
            &format!("rms_norm_rows {pick:?} width {width}"),
        );
    }
}

#[test]
fn bias_residual_add_and_cast_are_exact() {
    let Some(k) = kernels() else { return };
    let mut rng = rng("elementwise");
    for (rows, width) in [(1, 64), (33, 896), (300, 1000)] {
        let x = uniform(&mut rng, rows * width, 10.0);
        let y = uniform(&mut rng, rows * width, 10.0);
        let bias = uniform(&mut rng, width, 1.0);
        let (mut d_x, d_y, d_bias) = (up(k, &x), up(k, &y), up(k, &bias));
        k.add_bias(&mut d_x.as_view_mut(), &d_bias.as_view())
            .expect("add_bias");
        let mut want = x.clone();
        add_bias(&mut want, &bias);
        assert_bits_eq(&down(k, &d_x, x.len()), &want, "add_bias");
        k.add_assign(&mut d_x.as_view_mut(), &d_y.as_view())
            .expect("add_assign");
        add_assign(&mut want, &y);
        assert_bits_eq(&down(k, &d_x, x.len()), &want, "add_assign");
    }
    // f32 -> f16 rounding, with the edges: ties, overflow, subnormals, inf, NaN.
    let mut x = uniform(&mut rng, 4000, 70000.0);
    x.extend(uniform(&mut rng, 1000, 1e-4));
    x.extend([
        65504.0,
        65519.0,
        65520.0,
        1e-8,
        -0.0,
        f32::INFINITY,
        f32::NAN,
    ]);
    x.extend([1.0 + 1.0 / 2048.0, 1.0 + 3.0 / 2048.0, 6e-8, 2.98e-8]);
    let d_x = up(k, &x);
    let mut out = zeros::<f16>(k, x.len());
    k.cast_f16(&d_x.as_view(), &mut out.as_view_mut())
        .expect("cast_f16");
    let exact = assert_f16_close(&down(k, &out, x.len()), &x, 0, "cast_f16");
    assert_eq!(exact, x.len());
}

#[test]
fn silu_mul_matches_cpu_within_one_f16_ulp() {
    let Some(k) = kernels() else { return };
    let mut rng = rng("silu_mul");
    for (rows, width) in [(1, 1536), (17, 1000), (4, 20), (2, 7)] {
        let gate = uniform(&mut rng, rows * width, 12.0);
        let upv = uniform(&mut rng, rows * width, 3.0);
        let mut want = gate.clone();
        silu_mul(&mut want, &upv, width);
        let (d_gate, d_up) = (up(k, &gate), up(k, &upv));
        let mut out = zeros::<f16>(k, gate.len());
        k.silu_mul(
            &d_gate.as_view(),
            &d_up.as_view(),
            width,
            &mut out.as_view_mut(),
        )
        .expect("silu_mul");
        let case = format!("silu_mul rows {rows} width {width}");
        let exact = assert_f16_close(&down(k, &out, gate.len()), &want, 1, &case);
        println!("{case}: {exact}/{} bit-exact", gate.len());
    }
}

#[test]
fn rope_is_bit_identical_in_both_layouts_and_partial_rotary() {
    let Some(k) = kernels() else { return };
    let mut rng = rng("rope");
    // (rows, heads, head_dim, rot_dims): SmolLM2, Qwen2.5 (kv heads), partial rotary.
    for (t, heads, hd, rot) in [
        (1, 9, 64, 64),
        (29, 2, 64, 64),
        (7, 8, 128, 128),
        (5, 4, 64, 32),
    ] {
        for style in [RopeStyle::Interleaved, RopeStyle::Neox] {
            let table = RopeTable::new(10000.0, rot, 4096, style);
            let x = uniform(&mut rng, t * heads * hd, 4.0);
            let mut pos: Vec<u32> = (0..t).map(|_| rng.random_range(0..4096)).collect();
            pos[0] = 0;
            let mut want = x.clone();
            table.apply(&mut want, hd, &pos);
            let (cos, sin) = table.cos_sin();
            let (d_cos, d_sin) = (up(k, cos), up(k, sin));
            let neox = style == RopeStyle::Neox;
            let rotate = |pos: &[u32]| {
                let (mut d_x, d_pos) = (up(k, &x), up(k, pos));
                let (cos, sin) = (d_cos.as_view(), d_sin.as_view());
                k.rope(
                    &mut d_x.as_view_mut(),
                    heads,
                    hd,
                    rot,
                    neox,
                    &d_pos.as_view(),
                    &cos,
                    &sin,
                )
                .expect("rope");
                down(k, &d_x, x.len())
            };
            let case = format!("rope {style:?} t {t} heads {heads} hd {hd} rot {rot}");
            assert_bits_eq(&rotate(&pos), &want, &case);

            // A position past the table: NaN in the rotated dims, the rest untouched.
            for (i, v) in rotate(&vec![4096; t]).iter().enumerate() {
                let in_rot = i % hd < rot;
                assert!(
                    in_rot == v.is_nan(),
                    "{case}: position past the table, dim {i}"
                );
            }
        }
    }
}

#[test]
fn write_kv_matches_cpu_and_skips_bad_slots() {
    let Some(k) = kernels() else { return };
    let mut rng = rng("write_kv");
    let geo = KvGeometry {
        block_size: 16,
        n_kv_heads: 3,
        head_dim: 64,
    };
    let (stride, n_slots, t) = (geo.token_stride(), 20 * 16, 45);
    let mut slots: Vec<u32> = (0..n_slots as u32).collect();
    slots.shuffle(&mut rng);
    slots.truncate(t);
    let (kr, vr) = (
        uniform(&mut rng, t * stride, 3.0),
        uniform(&mut rng, t * stride, 3.0),
    );
    let mut want_k = vec![f16::ZERO; n_slots * stride];
    let mut want_v = want_k.clone();
    write_kv(&mut want_k, &mut want_v, &kr, &vr, &slots, geo);
    slots.push(n_slots as u32); // past the cache: skipped
    let mut kr_bad = kr.clone();
    kr_bad.extend(vec![1.0; stride]);
    let mut vr_bad = vr.clone();
    vr_bad.extend(vec![1.0; stride]);
    let (d_k, d_v, d_slots) = (up(k, &kr_bad), up(k, &vr_bad), up(k, &slots));
    let mut kc = zeros::<f16>(k, n_slots * stride);
    let mut vc = zeros::<f16>(k, n_slots * stride);
    k.write_kv(
        &d_k.as_view(),
        &d_v.as_view(),
        &d_slots.as_view(),
        stride,
        &mut kc,
        &mut vc,
    )
    .expect("write_kv");
    let bits = |v: Vec<f16>| v.into_iter().map(f16::to_bits).collect::<Vec<_>>();
    assert_eq!(
        bits(down(k, &kc, n_slots * stride)),
        bits(want_k),
        "k cache"
    );
    assert_eq!(
        bits(down(k, &vc, n_slots * stride)),
        bits(want_v),
        "v cache"
    );
}

#[test]
fn wrong_shapes_are_clear_errors() {
    let Some(k) = kernels() else { return };
    let x = zeros::<f32>(k, 64);
    let w = zeros::<f32>(k, 64);
    let mut out = zeros::<f16>(k, 32);
    let err = k
        .rms_norm(&x.as_view(), &w.as_view(), 1e-5, &mut out.as_view_mut())
        .unwrap_err();
    assert!(matches!(err, CudaError::Limit(_)), "{err}");
    assert!(
        err.to_string().starts_with("rms_norm: wrong shapes"),
        "{err}"
    );
    let case = AttnCase {
        head_dim: 512,
        n_heads: 1,
        n_kv: 1,
        block_size: 16,
        seqs: &[(1, 1)],
    };
    let err = run_attention(k, &mut rng("shapes"), &case).unwrap_err();
    assert!(err.to_string().contains("head_dim 1..=256"), "{err}");
}

#[test]
fn paged_attention_matches_cpu_decode_prefill_gqa_and_splits() {
    let Some(k) = kernels() else { return };
    let mut rng = rng("paged_attention");
    // seqs: (query rows this step, context after it); a row count below the context is a
    // chunk over a cached prefix, 1 a decode step.
    let cases = [
        // SmolLM2-135M: 9 heads over 3 kv heads, head_dim 64; first token, decodes, a
        // chunk over a cached prefix, a fresh prefill.
        AttnCase {
            head_dim: 64,
            n_heads: 9,
            n_kv: 3,
            block_size: 16,
            seqs: &[(1, 1), (1, 37), (20, 50), (12, 12)],
        },
        // One long decode (several splits), no GQA.
        AttnCase {
            head_dim: 128,
            n_heads: 8,
            n_kv: 8,
            block_size: 16,
            seqs: &[(1, 3000)],
        },
        // A decode batch over long contexts, 8 query heads per kv head.
        AttnCase {
            head_dim: 128,
            n_heads: 16,
            n_kv: 2,
            block_size: 16,
            seqs: &[(1, 700), (1, 2100), (1, 1333), (1, 64)],
        },
        // head_dim 256, one kv head, a prefill chunk over a prefix, odd block size.
        AttnCase {
            head_dim: 256,
            n_heads: 4,
            n_kv: 1,
            block_size: 7,
            seqs: &[(64, 300), (1, 513)],
        },
        // head_dim not a multiple of 32; a long chunked prefill next to a fresh one.
        AttnCase {
            head_dim: 80,
            n_heads: 4,
            n_kv: 2,
            block_size: 32,
            seqs: &[(200, 1000), (3, 3)],
        },
    ];
    let mut split_cases = 0;
    for case in &cases {
        let splits = run_attention(k, &mut rng, case).expect("paged_attention");
        split_cases += (splits > 1) as usize;
    }
    assert!(
        split_cases >= 2,
        "the cases must exercise split-K: {split_cases}"
    );
}

/// The split plan runs on the host: no GPU needed.
#[test]
fn attention_splits_only_when_the_grid_is_small() {
    // Prefill-sized batches and short contexts run unsplit, with no scratch.
    assert_eq!(attention_splits(512, 32, 4096), 1);
    assert_eq!(attention_splits(1, 32, 200), 1);
    assert_eq!(attention_scratch_len(512, 32, 128, 4096), 0);
    // One decode row (or a few) over a long context splits, at most 64 ways.
    for (t, heads, ctx) in [(1, 9, 2000), (1, 32, 32768), (4, 14, 5000), (1, 1, 1 << 20)] {
        let splits = attention_splits(t, heads, ctx);
        assert!((2..=64).contains(&splits), "{t} {heads} {ctx}: {splits}");
        let per_split = attention_scratch_len(t, heads, 64, ctx) / (t * heads * splits);
        assert_eq!(per_split, 64 + 2, "{t} {heads} {ctx}");
    }
    // The test cases below that must split do.
    assert!(attention_splits(1, 8, 3000) > 1 && attention_splits(4, 16, 2100) > 1);
}

mod cuda_support;
use cuda_support::attention::{run_attention, AttnCase};
use cuda_support::{
    assert_bits_eq, assert_f16_close, down, load_or_skip, seeded_rng, uniform, up, zeros,
};
