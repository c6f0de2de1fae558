//! Attention against a dense oracle, and the AVX-512 kernels against the scalar twin.

use super::*;
use crate::ops::ggml_math::dot_f16;
use rand::{Rng, SeedableRng};

/// Dense causal attention over one sequence's contiguous K/V: the oracle.
fn dense(q: &[f32], k: &[f32], v: &[f32], n_heads: usize, n_kv: usize, hd: usize) -> Vec<f32> {
    let n = q.len() / (n_heads * hd);
    let mut out = vec![0.0; q.len()];
    for t in 0..n {
        for h in 0..n_heads {
            let kvh = h / (n_heads / n_kv);
            let qh = rounded(&q[(t * n_heads + h) * hd..][..hd]);
            let mut s: Vec<f32> = (0..=t)
                .map(|p| dot_f16(&k[(p * n_kv + kvh) * hd..][..hd], &qh) / (hd as f32).sqrt())
                .collect();
            softmax_in_place(&mut s);
            let s = rounded(&s);
            for (p, w) in s.iter().enumerate() {
                for d in 0..hd {
                    out[(t * n_heads + h) * hd + d] += w * v[(p * n_kv + kvh) * hd + d];
                }
            }
        }
    }
    out
}

fn rounded(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&a| f16::from_f32(a).to_f32()).collect()
}

/// The tiled x86 kernels (AVX-512 and AVX2, each the host runs; head_dim 64, tiles of
/// query rows) against the scalar twin, row by row and bit for bit: two sequences in one
/// call, context lengths around the 8-position tiles and the 64 lanes, partial row tiles,
/// 1 to 7 heads per kv head.
#[cfg(target_arch = "x86_64")]
#[test]
fn tiled_kernels_are_bit_identical_to_the_scalar_twin() {
    let kernels = tiled_kernels();
    if kernels.is_empty() {
        eprintln!("skipped: neither AVX-512 nor AVX2");
        return;
    }
    // Query scales: ordinary scores, and scores ~20x larger so that softmax's
    // exponentials underflow (ggml's saturation branch).
    let cases: Vec<_> = [1usize, 3, 4, 7]
        .into_iter()
        .flat_map(|group| {
            [1usize, 7, 8, 9, 63, 64, 65, 130, 192, 193, 200].map(|n| (group, n, 3.0f32))
        })
        .chain([(3, 100, 60.0), (7, 40, 60.0)])
        .collect();
    // Every finite f16 (subnormals, ±0, up to 65504) as K, V and query: products from
    // 2^-48 to 2^32, which the score kernels fuse into sums (exact products).
    let full_range: Vec<_> = [(1usize, 70usize), (3, 130), (4, 9)]
        .map(|(group, n)| (group, n, 1.0f32))
        .into();
    for k in kernels {
        tiled_kernels_match_the_twin(k, uniform_f16, &cases);
        tiled_kernels_match_the_twin(k, any_finite_f16, &full_range);
    }
}

/// A value in -2..2, rounded to f16.
fn uniform_f16(rng: &mut rand::rngs::StdRng) -> f16 {
    f16::from_f32(rng.random_range(-2.0f32..2.0))
}

/// Any finite f16 with equal odds per bit pattern, and ±0 one time in 16.
fn any_finite_f16(rng: &mut rand::rngs::StdRng) -> f16 {
    let bits: u16 = rng.random();
    if bits % 16 == 0 {
        return f16::from_bits(bits & 0x8000);
    }
    let exponent_all_ones = 0x7C00;
    f16::from_bits(if bits & exponent_all_ones == exponent_all_ones {
        bits & !0x4000
    } else {
        bits
    })
}

/// The premise of the score kernels' fused fold (`attention`'s module header): an f16 ·
/// f16 product is exact in f32, so `fma(k2, q2, a0)` is `a0 + k2·q2` to the bit, with
/// `a0 = fma(k0, q0, +0)`, over every finite f16 including subnormals and ±0.
#[test]
fn products_fuse_exactly() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for _ in 0..1_000_000 {
        let [k0, q0, k2, q2] = [(); 4].map(|_| any_finite_f16(&mut rng).to_f32());
        assert_eq!((k2 * q2) as f64, k2 as f64 * q2 as f64, "{k2} · {q2}");
        let a0 = k0.mul_add(q0, 0.0);
        let a2 = k2.mul_add(q2, 0.0);
        let fused = k2.mul_add(q2, a0);
        assert_eq!(fused.to_bits(), (a0 + a2).to_bits(), "{k0} {q0} {k2} {q2}");
    }
}

/// The tiled kernel sets the host runs, widest first.
#[cfg(target_arch = "x86_64")]
fn tiled_kernels() -> Vec<Kernels> {
    use crate::ops::cpu_features::{host, Level};
    let level = host().level;
    let mut kernels = vec![];
    if level >= Level::Avx512 {
        kernels.push(Kernels::Avx512);
    }
    if level >= Level::Avx2 {
        kernels.push(Kernels::Avx2);
    }
    kernels
}

/// `kernels` against the scalar twin for each `(group, n_ctx, q_scale)` of `cases`, with
/// K, V and queries (times `q_scale`) drawn by `value`.
#[cfg(target_arch = "x86_64")]
fn tiled_kernels_match_the_twin(
    kernels: Kernels,
    value: fn(&mut rand::rngs::StdRng) -> f16,
    cases: &[(usize, usize, f32)],
) {
    let (hd, bs, n_kv) = (64, 16, 2);
    let geo = KvGeometry {
        block_size: bs,
        n_kv_heads: n_kv,
        head_dim: hd,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut rand_f16 = |len: usize| -> Vec<f16> { (0..len).map(|_| value(&mut rng)).collect() };
    let kc = rand_f16(64 * bs * n_kv * hd);
    let vc = rand_f16(64 * bs * n_kv * hd);
    for &(group, n_ctx, q_scale) in cases {
        let n_heads = group * n_kv;
        {
            // Sequence 0: up to 19 query rows ending at n_ctx; sequence 1: one row.
            let blocks = n_ctx.div_ceil(bs);
            let mut table: Vec<u32> = (0..blocks as u32).map(|b| (b * 7 + 3) % 32).collect();
            table.extend((0..blocks as u32).map(|b| 32 + (b * 5 + 1) % 32));
            let n_q = n_ctx.min(19);
            let seqs = [
                AttnSeq {
                    q_row: 0,
                    n_q,
                    ctx_len: n_ctx,
                    table_start: 0,
                    table_len: blocks,
                },
                AttnSeq {
                    q_row: n_q,
                    n_q: 1,
                    ctx_len: n_ctx,
                    table_start: blocks,
                    table_len: blocks,
                },
            ];
            let q: Vec<f32> = rand_f16((n_q + 1) * n_heads * hd)
                .iter()
                .map(|h| h.to_f32() * q_scale)
                .collect();
            let inp = AttnInputs {
                q: &q,
                n_heads,
                k_cache: &kc,
                v_cache: &vc,
                geo,
                seqs: &seqs,
                block_tables: &table,
            };
            let mut fast = vec![0f32; q.len()];
            paged_attention_with(kernels, inp, &mut fast);
            let mut twin = vec![0f32; q.len()];
            let mut scratch = Scratch::default();
            for seq in &seqs {
                for t in 0..seq.n_q {
                    for kvh in 0..n_kv {
                        let out = SharedOut::new(&mut twin);
                        attend::<false>(
                            Kernels::Generic,
                            &inp,
                            seq,
                            t..t + 1,
                            kvh,
                            out,
                            &mut scratch,
                        );
                    }
                }
            }
            let same = fast
                .iter()
                .zip(&twin)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{kernels:?}: group {group}, n_ctx {n_ctx}, q scale {q_scale}"
            );
        }
    }
}

#[test]
fn paged_equals_dense_with_scattered_blocks_and_chunks() {
    let (n_heads, n_kv, hd, bs) = (4, 2, 8, 4);
    let geo = KvGeometry {
        block_size: bs,
        n_kv_heads: n_kv,
        head_dim: hd,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let n = 11; // tokens in the sequence
    let mut rand_vec =
        |len: usize| -> Vec<f32> { (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect() };
    let (q, k, v) = (
        rand_vec(n * n_heads * hd),
        rand_vec(n * n_kv * hd),
        rand_vec(n * n_kv * hd),
    );
    let want = dense(&q, &rounded(&k), &rounded(&v), n_heads, n_kv, hd);
    let table = [5u32, 1, 7]; // scattered physical blocks
    let num_blocks = 8;
    let mut kc = vec![f16::ZERO; num_blocks * bs * n_kv * hd];
    let mut vc = kc.clone();
    // Two chunks: 7 tokens then 4 tokens (chunked prefill).
    let mut got = vec![0.0; q.len()];
    for (start, len) in [(0usize, 7usize), (7, 4)] {
        let slots: Vec<u32> = (start..start + len)
            .map(|p| table[p / bs] * bs as u32 + (p % bs) as u32)
            .collect();
        let kv = start * n_kv * hd..(start + len) * n_kv * hd;
        write_kv(&mut kc, &mut vc, &k[kv.clone()], &v[kv], &slots, geo);
        let seqs = [AttnSeq {
            q_row: 0,
            n_q: len,
            ctx_len: start + len,
            table_start: 0,
            table_len: 3,
        }];
        let qs = &q[start * n_heads * hd..(start + len) * n_heads * hd];
        let inp = AttnInputs {
            q: qs,
            n_heads,
            k_cache: &kc,
            v_cache: &vc,
            geo,
            seqs: &seqs,
            block_tables: &table,
        };
        paged_attention(
            inp,
            &mut got[start * n_heads * hd..(start + len) * n_heads * hd],
        );
    }
    let err = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(err < 1e-5, "max abs err {err}");
}

#[test]
fn row_meta_gives_each_row_its_causal_key_count_and_table() {
    // A decode row (ctx 40), then a chunked prefill of 3 rows over a cached prefix of 16.
    let seqs = [
        AttnSeq {
            q_row: 0,
            n_q: 1,
            ctx_len: 40,
            table_start: 0,
            table_len: 3,
        },
        AttnSeq {
            q_row: 1,
            n_q: 3,
            ctx_len: 19,
            table_start: 3,
            table_len: 2,
        },
    ];
    let (mut ctx, mut table) = (vec![7; 9], Vec::new());
    row_meta(&seqs, &mut ctx, &mut table);
    assert_eq!(ctx, [40, 17, 18, 19]);
    assert_eq!(table, [0, 3, 3, 3]);
    row_meta(&[], &mut ctx, &mut table);
    assert!(ctx.is_empty() && table.is_empty());
}

/// Timing only (`--ignored --nocapture`), SmolLM2's heads (9 query heads over 3 kv heads,
/// head_dim 64), with each kernel set the host runs: the last 1024-row chunk of a
/// 4096-token prompt, a decode step of 32 sequences at 1024 tokens each, and one at 192
/// tokens cycling through 30 layers' caches (141 MB: K/V come from memory, as in a
/// served decode step, not from the caches of the previous run).
#[cfg(target_arch = "x86_64")]
#[test]
#[ignore]
fn bench_attention_shapes() {
    let (smollm2, qwen) = ((3, 3), (2, 7));
    bench_shape("prefill chunk 3072..4096", smollm2, 1, 1024, 4096, 1);
    bench_shape("decode 32 x 1 row at 1024", smollm2, 32, 1, 1024, 1);
    bench_shape(
        "decode 32 x 1 row at 192, 30 layers",
        smollm2,
        32,
        1,
        192,
        30,
    );
    bench_shape("Qwen prefill 128 at 128, 24 layers", qwen, 1, 128, 128, 24);
    bench_shape(
        "Qwen decode 32 x 1 row at 160, 24 layers",
        qwen,
        32,
        1,
        160,
        24,
    );
}

/// Times `paged_attention_with` for `n_seqs` sequences of `n_q` query rows ending at `ctx`
/// tokens (each sequence its own blocks), per layer over `layers` layers' caches, with
/// `heads = (kv heads, query heads per kv head)`.
#[cfg(target_arch = "x86_64")]
fn bench_shape(
    name: &str,
    heads: (usize, usize),
    n_seqs: usize,
    n_q: usize,
    ctx: usize,
    layers: usize,
) {
    let (hd, bs, (n_kv, group)) = (64, 16, heads);
    let geo = KvGeometry {
        block_size: bs,
        n_kv_heads: n_kv,
        head_dim: hd,
    };
    let n_heads = group * n_kv;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut rand_f16 = |len: usize| -> Vec<f16> {
        (0..len)
            .map(|_| f16::from_f32(rng.random_range(-2.0f32..2.0)))
            .collect()
    };
    let kc = rand_f16(layers * n_seqs * ctx * n_kv * hd);
    let vc = rand_f16(layers * n_seqs * ctx * n_kv * hd);
    let q: Vec<f32> = rand_f16(n_seqs * n_q * n_heads * hd)
        .iter()
        .map(|h| h.to_f32())
        .collect();
    let blocks = ctx / bs;
    let tables: Vec<Vec<u32>> = (0..layers)
        .map(|l| {
            (0..(n_seqs * blocks) as u32)
                .map(|b| b + (l * n_seqs * blocks) as u32)
                .collect()
        })
        .collect();
    let seqs: Vec<AttnSeq> = (0..n_seqs)
        .map(|s| AttnSeq {
            q_row: s * n_q,
            n_q,
            ctx_len: ctx,
            table_start: s * blocks,
            table_len: blocks,
        })
        .collect();
    let inp = |l: usize| AttnInputs {
        q: &q,
        n_heads,
        k_cache: &kc,
        v_cache: &vc,
        geo,
        seqs: &seqs,
        block_tables: &tables[l],
    };
    let mut kernels = tiled_kernels();
    kernels.push(Kernels::Generic);
    let mut out = vec![0f32; q.len()];
    for k in kernels {
        let runs = if k == Kernels::Generic { 1 } else { 5 };
        let mut best = f64::INFINITY;
        for _ in 0..runs {
            let t = std::time::Instant::now();
            for l in 0..layers {
                paged_attention_with(k, inp(l), &mut out);
            }
            best = best.min(t.elapsed().as_secs_f64() / layers as f64);
        }
        println!("{name}: {k:?}: best of {runs} {:.2} ms", best * 1e3);
    }
}
