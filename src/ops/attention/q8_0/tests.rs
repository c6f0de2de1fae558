//! Q8_0 attention against a dense f64 oracle (chunked prefill over scattered blocks), and
//! the AVX2 body against the portable twin, bit for bit.

use super::*;
use rand::{Rng, SeedableRng};

/// Dense causal attention over dequantized K/V and Q8_0-rounded queries, in f64 with an
/// exact softmax: what the kernel approximates to f32 rounding.
fn dense(q: &[f32], k: &[f32], v: &[f32], n_heads: usize, n_kv: usize, hd: usize) -> Vec<f32> {
    let n = q.len() / (n_heads * hd);
    let mut out = vec![0.0; q.len()];
    for t in 0..n {
        for h in 0..n_heads {
            let kvh = h / (n_heads / n_kv);
            let qh = q8_rounded(&q[(t * n_heads + h) * hd..][..hd]);
            let s: Vec<f64> = (0..=t)
                .map(|p| {
                    let kp = &k[(p * n_kv + kvh) * hd..][..hd];
                    let dot: f64 = kp.iter().zip(&qh).map(|(a, b)| *a as f64 * *b as f64).sum();
                    dot / (hd as f64).sqrt()
                })
                .collect();
            let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
            let total: f64 = e.iter().sum();
            for (p, w) in e.iter().enumerate() {
                for d in 0..hd {
                    out[(t * n_heads + h) * hd + d] +=
                        (w / total * v[(p * n_kv + kvh) * hd + d] as f64) as f32;
                }
            }
        }
    }
    out
}

/// `x` through Q8_0 and back.
fn q8_rounded(x: &[f32]) -> Vec<f32> {
    let mut blocks = vec![Q8_0::ZERO; x.len() / QK8_0];
    quantize_q8_0(x, &mut blocks);
    let mut out = vec![0.0; x.len()];
    dequantize(&blocks, &mut out);
    out
}

fn rand_vec(rng: &mut impl Rng, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-scale..scale)).collect()
}

#[test]
fn paged_q8_0_equals_dense_with_scattered_blocks_and_chunks() {
    let (n_heads, n_kv, hd, bs) = (6, 2, 64, 4);
    let geo = KvGeometry {
        block_size: bs,
        n_kv_heads: n_kv,
        head_dim: hd,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let n = 11;
    let q = rand_vec(&mut rng, n * n_heads * hd, 2.0);
    let k = rand_vec(&mut rng, n * n_kv * hd, 1.0);
    let v = rand_vec(&mut rng, n * n_kv * hd, 1.0);
    let want = dense(&q, &q8_rounded(&k), &q8_rounded(&v), n_heads, n_kv, hd);
    let table = [5u32, 1, 7];
    let blocks = 8 * bs * n_kv * hd / QK8_0;
    let (mut kc, mut vc) = (vec![Q8_0::ZERO; blocks], vec![Q8_0::ZERO; blocks]);
    let mut got = vec![0.0; q.len()];
    for (start, len) in [(0usize, 7usize), (7, 4)] {
        let slots: Vec<u32> = (start..start + len)
            .map(|p| table[p / bs] * bs as u32 + (p % bs) as u32)
            .collect();
        let kv = start * n_kv * hd..(start + len) * n_kv * hd;
        write_kv_q8_0(&mut kc, &mut vc, &k[kv.clone()], &v[kv], &slots, geo);
        let seqs = [AttnSeq {
            q_row: 0,
            n_q: len,
            ctx_len: start + len,
            table_start: 0,
            table_len: 3,
        }];
        let rows = start * n_heads * hd..(start + len) * n_heads * hd;
        let inp = AttnInputs {
            q: &q[rows.clone()],
            n_heads,
            k_cache: &kc,
            v_cache: &vc,
            geo,
            seqs: &seqs,
            block_tables: &table,
        };
        paged_attention_q8_0(inp, &mut got[rows]);
    }
    let err = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(err < 2e-6, "max abs err {err}");
}

/// The AVX2+FMA body against the portable one, unit by unit and bit for bit: two
/// sequences in one call, 1 to 5 heads per kv head, head_dim 32 to 128, contexts across
/// blocks, scores large enough that the running maximum moves and exponentials underflow.
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_body_is_bit_identical_to_the_portable_twin() {
    if !crate::ops::cpu_features::avx2() {
        eprintln!("skipped: no AVX2");
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    let (bs, n_kv, n_blocks) = (16, 2, 32);
    for (hd, group, n_ctx, q_scale) in [
        (64usize, 1usize, 1usize, 1.0f32),
        (64, 3, 40, 1.0),
        (32, 5, 130, 4.0),
        (128, 2, 70, 40.0),
        (64, 3, 200, 40.0),
    ] {
        let geo = KvGeometry {
            block_size: bs,
            n_kv_heads: n_kv,
            head_dim: hd,
        };
        let n_heads = group * n_kv;
        let cache_len = n_blocks * bs * n_kv * hd / QK8_0;
        let mut quantized = |len: usize| {
            let mut out = vec![Q8_0::ZERO; len];
            quantize_q8_0(&rand_vec(&mut rng, len * QK8_0, 2.0), &mut out);
            out
        };
        let (kc, vc) = (quantized(cache_len), quantized(cache_len));
        let per_seq = n_ctx.div_ceil(bs);
        let mut table: Vec<u32> = (0..per_seq as u32).map(|b| (b * 7 + 3) % 16).collect();
        table.extend((0..per_seq as u32).map(|b| 16 + (b * 5 + 1) % 16));
        let n_q = n_ctx.min(5);
        let seqs = [
            AttnSeq {
                q_row: 0,
                n_q,
                ctx_len: n_ctx,
                table_start: 0,
                table_len: per_seq,
            },
            AttnSeq {
                q_row: n_q,
                n_q: 1,
                ctx_len: n_ctx,
                table_start: per_seq,
                table_len: per_seq,
            },
        ];
        let q = rand_vec(&mut rng, (n_q + 1) * n_heads * hd, q_scale);
        let inp = AttnInputs {
            q: &q,
            n_heads,
            k_cache: &kc,
            v_cache: &vc,
            geo,
            seqs: &seqs,
            block_tables: &table,
        };
        let (mut fast, mut twin) = (vec![0f32; q.len()], vec![0f32; q.len()]);
        let mut scratch = Scratch::default();
        for seq in &seqs {
            for t in 0..seq.n_q {
                for kvh in 0..n_kv {
                    // SAFETY: AVX2, FMA and F16C checked above.
                    unsafe {
                        attend_fma(
                            &inp,
                            seq,
                            t..t + 1,
                            kvh,
                            SharedOut::new(&mut fast),
                            &mut scratch,
                        )
                    };
                    attend::<false>(
                        &inp,
                        seq,
                        t..t + 1,
                        kvh,
                        SharedOut::new(&mut twin),
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
            "hd {hd}, group {group}, n_ctx {n_ctx}, q scale {q_scale}"
        );
        assert!(fast.iter().all(|x| x.is_finite()));
    }
}
