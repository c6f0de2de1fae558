//! Kernel tests: every kernel against an f64 dequantize-and-dot reference (candle's own
//! dequantizers for the weights), the SIMD path against the portable one bit for bit, and
//! `dot4` against `dot` bit for bit; plus an ignored micro-benchmark against candle.

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8_0, GgmlType,
};
use candle_core::quantized::GgmlDType;
use half::f16;
use rand::{Rng, SeedableRng};

use super::blocks::{self, Q8K, Q8_0, Q8_1};
use super::*;

/// A vector of `n` all-zero plain-data blocks.
fn zeroed<T>(n: usize) -> Vec<T> {
    // SAFETY: only used for ggml block types: repr(C) integers, floats and byte arrays,
    // for which all-zero bytes are a valid value.
    (0..n).map(|_| unsafe { std::mem::zeroed() }).collect()
}

pub(super) fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Activations dequantized to f64.
trait Dequant: Sized {
    fn dequant(blocks: &[Self]) -> Vec<f64>;
    /// How far the block's stored sum (Q8_1's f16 `s`, which the kernels use for the
    /// weights' offset `m`) is from the sum of its values.
    fn sum_error(_block: &Self) -> f64 {
        0.0
    }
}

impl Dequant for Q8_0 {
    fn dequant(blocks: &[Self]) -> Vec<f64> {
        let v = |b: &Q8_0| b.qs.map(|q| b.d.to_f64() * q as f64);
        blocks.iter().flat_map(v).collect()
    }
}

impl Dequant for Q8K {
    fn dequant(blocks: &[Self]) -> Vec<f64> {
        let v = |b: &Q8K| b.qs.map(|q| b.d as f64 * q as f64);
        blocks.iter().flat_map(v).collect()
    }
}

impl Dequant for Q8_1 {
    fn dequant(blocks: &[Self]) -> Vec<f64> {
        let v = |b: &Q8_1| b.qs.map(|q| b.d as f64 * q as f64);
        blocks.iter().flat_map(v).collect()
    }
    fn sum_error(b: &Self) -> f64 {
        let sum: f64 = b.qs.iter().map(|&q| b.d as f64 * q as f64).sum();
        (b.s as f64 - sum).abs()
    }
}

/// Weight blocks of candle type `C`: either candle's quantization of smooth random values
/// or random bytes (every bit pattern of the quants and scales; the f16 fields at
/// `f16_at` byte offsets replaced by finite random scales).
pub(super) fn weights<C: GgmlType>(
    n_blocks: usize,
    random_bytes: bool,
    f16_at: &[usize],
    seed: u64,
) -> Vec<C> {
    let mut r = rng(seed);
    let mut w = vec![C::zeros(); n_blocks];
    if !random_bytes {
        let vals: Vec<f32> = (0..n_blocks * C::BLCK_SIZE)
            .map(|_| r.random_range(-1.0f32..1.0) * r.random_range(0.1f32..2.0))
            .collect();
        C::from_float(&vals, &mut w);
        return w;
    }
    let size = std::mem::size_of::<C>();
    // SAFETY: ggml blocks are plain data; every byte pattern is a valid value.
    let bytes =
        unsafe { std::slice::from_raw_parts_mut(w.as_mut_ptr() as *mut u8, n_blocks * size) };
    r.fill(bytes);
    for block in bytes.chunks_exact_mut(size) {
        for &at in f16_at {
            let d = f16::from_f32(r.random_range(-0.05f32..0.05)).to_le_bytes();
            block[at..at + 2].copy_from_slice(&d);
        }
    }
    w
}

fn activations(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    (0..n).map(|_| r.random_range(-3.0f32..3.0)).collect()
}

/// Checks kernel `K` on candle blocks `C` (viewed through `view`) for several lengths.
fn check<C: GgmlType, K: Kernel>(view: fn(&[C]) -> &[K::Weight], f16_at: &[usize])
where
    K::Act: Dequant,
{
    check_with::<C, K>(view, f16_at, None)
}

/// `K`'s own eight-row kernel for `check_with`, called directly (whatever the process's level).
type Rows8<K> = fn([&[<K as Kernel>::Weight]; 8], &[<K as Kernel>::Act]) -> [f32; 8];

/// `check`, plus `vnni_rows8` (when given) against `dot` on every case.
fn check_with<C: GgmlType, K: Kernel>(
    view: fn(&[C]) -> &[K::Weight],
    f16_at: &[usize],
    vnni_rows8: Option<Rows8<K>>,
) where
    K::Act: Dequant,
{
    for (case, &n_blocks) in [1usize, 2, 3, 8].iter().enumerate() {
        for random_bytes in [false, true] {
            let seed = case as u64 * 10 + random_bytes as u64;
            let w = weights::<C>(n_blocks, random_bytes, f16_at, seed);
            let k = n_blocks * C::BLCK_SIZE;
            let mut wf = vec![0f32; k];
            C::to_float(&w, &mut wf);
            let xs: Vec<Vec<K::Act>> = (0..4)
                .map(|r| {
                    let mut q = zeroed(k / K::BLOCK);
                    K::quantize(&activations(k, seed * 7 + r), &mut q);
                    q
                })
                .collect();
            let rows = [&xs[0][..], &xs[1][..], &xs[2][..], &xs[3][..]];
            let four = K::dot4(view(&w), rows);
            // Eight weight rows (this one and seven others) against each activation row.
            let others: Vec<Vec<C>> = (1..8)
                .map(|o| weights::<C>(n_blocks, random_bytes, f16_at, seed + 100 * o))
                .collect();
            let w8: [&[K::Weight]; 8] = std::array::from_fn(|i| {
                if i == 0 {
                    view(&w)
                } else {
                    view(&others[i - 1])
                }
            });
            for x in &xs {
                let want = w8.map(|wr| K::dot(wr, x).to_bits());
                // A real region to prefetch: results never depend on it.
                let ahead = Ahead::new(w8[7], x.len());
                let by_four = K::dot_rows4([w8[0], w8[1], w8[2], w8[3]], x, ahead);
                assert_eq!(
                    by_four.map(f32::to_bits),
                    want[..4],
                    "dot_rows4 != dot: {n_blocks} blocks"
                );
                let by_eight = K::dot_rows8(w8, x, ahead);
                assert_eq!(
                    by_eight.map(f32::to_bits),
                    want,
                    "dot_rows8 != dot: {n_blocks} blocks"
                );
                if let Some(rows8) = vnni_rows8 {
                    assert_eq!(
                        rows8(w8, x).map(f32::to_bits),
                        want,
                        "VNNI rows8 != dot: {n_blocks} blocks"
                    );
                }
            }
            for (r, x) in xs.iter().enumerate() {
                let got = K::dot(view(&w), x);
                let what = format!("{} blocks, random bytes {random_bytes}, row {r}", n_blocks);
                assert_eq!(got.to_bits(), four[r].to_bits(), "dot4 != dot: {what}");
                let portable = K::dot_portable(view(&w), x);
                assert_eq!(
                    got.to_bits(),
                    portable.to_bits(),
                    "simd != portable: {what}"
                );
                let xf = K::Act::dequant(x);
                let want: f64 = wf.iter().zip(&xf).map(|(&a, &b)| a as f64 * b).sum();
                let scale: f64 = wf
                    .iter()
                    .zip(&xf)
                    .map(|(&a, &b)| (a as f64 * b).abs())
                    .sum();
                // Q8_1's rounded sums move the offset term by up to max|w| · error per block.
                let offset_slack: f64 = x
                    .iter()
                    .zip(wf.chunks(K::BLOCK))
                    .map(|(b, ws)| {
                        K::Act::sum_error(b) * ws.iter().fold(0f64, |m, &v| m.max(v.abs() as f64))
                    })
                    .sum();
                let err = (got as f64 - want).abs();
                let tol = 1e-5 * scale + 1e-6 + offset_slack;
                assert!(
                    err <= tol,
                    "{what}: got {got}, want {want} (|terms| {scale})"
                );
            }
        }
    }
}

#[test]
fn q4_0_both_orders() {
    check::<BlockQ4_0, Q4_0Dot>(blocks::view_q4_0, &[0]);
    check::<BlockQ4_0, Q4_0Interleaved>(blocks::view_q4_0, &[0]);
}

#[test]
fn q4_1() {
    #[cfg(target_arch = "x86_64")]
    if crate::ops::cpu_features::host().vnni {
        // SAFETY: the host has AVX-512 VNNI (with F/BW/VL, FMA and F16C).
        let vnni: Rows8<Q4_1Dot> =
            |w, x| unsafe { super::avx512_gemv::q4_1_rows8(w, x, Ahead::new(w[7], x.len())) };
        return check_with::<BlockQ4_1, Q4_1Dot>(blocks::view_q4_1, &[0, 2], Some(vnni));
    }
    check::<BlockQ4_1, Q4_1Dot>(blocks::view_q4_1, &[0, 2]);
}

#[test]
fn q5_0_q5_1_q8_0() {
    check::<BlockQ5_1, Q5_1Dot>(blocks::view_q5_1, &[0, 2]);
    #[cfg(target_arch = "x86_64")]
    if crate::ops::cpu_features::host().vnni {
        use super::avx512_gemv::{q5_0_rows8, q8_0_rows8};
        // SAFETY: the host has AVX-512 VNNI (with F/BW/VL, FMA and F16C).
        let q5_0: Rows8<Q5_0Dot> = |w, x| unsafe { q5_0_rows8(w, x, Ahead::new(w[7], x.len())) };
        check_with::<BlockQ5_0, Q5_0Dot>(blocks::view_q5_0, &[0], Some(q5_0));
        // SAFETY: as above.
        let q8_0: Rows8<Q8_0Dot> = |w, x| unsafe { q8_0_rows8(w, x, Ahead::new(w[7], x.len())) };
        return check_with::<BlockQ8_0, Q8_0Dot>(blocks::view_q8_0, &[0], Some(q8_0));
    }
    check::<BlockQ5_0, Q5_0Dot>(blocks::view_q5_0, &[0]);
    check::<BlockQ8_0, Q8_0Dot>(blocks::view_q8_0, &[0]);
}

#[test]
fn q2_k_both_orders_and_q3_k() {
    check::<BlockQ2K, Q2KDot>(blocks::view_q2k, &[80, 82]);
    check::<BlockQ2K, Q2KInterleaved>(blocks::view_q2k, &[80, 82]);
    check::<BlockQ3K, Q3KDot>(blocks::view_q3k, &[108]);
}

#[test]
fn q4_k_both_orders() {
    check::<BlockQ4K, Q4KDot>(blocks::view_q4k, &[0, 2]);
    check::<BlockQ4K, Q4KInterleaved>(blocks::view_q4k, &[0, 2]);
}

#[test]
fn q5_k_q6_k() {
    check::<BlockQ5K, Q5KDot>(blocks::view_q5k, &[0, 2]);
    check::<BlockQ6K, Q6KDot>(blocks::view_q6k, &[208]);
}

#[test]
fn activation_quantization_error_is_bounded() {
    // Against the unquantized activations the error is the activation rounding: at most
    // half a quantization step per element, weighted by |w|.
    let w = weights::<BlockQ4K>(4, false, &[], 99);
    let mut wf = vec![0f32; 1024];
    BlockQ4K::to_float(&w, &mut wf);
    let x = activations(1024, 98);
    let mut q = zeroed::<Q8K>(4);
    Q4KDot::quantize(&x, &mut q);
    let got = Q4KDot::dot(blocks::view_q4k(&w), &q) as f64;
    let want: f64 = wf.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
    let bound: f64 = (0..1024)
        .map(|i| wf[i].abs() as f64 * q[i / 256].d.abs() as f64 * 0.5)
        .sum();
    assert!(
        (got - want).abs() <= bound * 1.01,
        "{got} vs {want} (bound {bound})"
    );
}

#[test]
#[should_panic(expected = "block counts differ")]
fn mismatched_lengths_are_rejected() {
    let w = weights::<BlockQ8_0>(2, false, &[], 1);
    let x = zeroed::<Q8_0>(3);
    Q8_0Dot::dot(blocks::view_q8_0(&w), &x);
}

/// A `rows × 512` matrix of `dtype` built from candle blocks, and the blocks.
fn matrix<C: GgmlType>(rows: usize) -> (crate::ops::quant::QMatrix, Vec<C>) {
    let w = weights::<C>(rows * 512 / C::BLCK_SIZE, false, &[], 21);
    // SAFETY: plain-data blocks viewed as their bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts(w.as_ptr() as *const u8, std::mem::size_of_val(&w[..]))
    };
    let m = crate::ops::quant::QMatrix::from_ggml(C::DTYPE, rows, 512, bytes).unwrap();
    (m, w)
}

/// `QMatrix::matmul` of one activation row equals kernel `K` on every weight row.
fn routed_to<C: GgmlType, K: Kernel>(rows: usize, view: fn(&[C]) -> &[K::Weight]) -> bool {
    let (m, w) = matrix::<C>(rows);
    let x = activations(512, 22);
    let mut y = vec![0f32; rows];
    m.matmul(&x, 1, &mut y);
    let mut xq = zeroed::<K::Act>(512 / K::BLOCK);
    K::quantize(&x, &mut xq);
    let kb = 512 / C::BLCK_SIZE;
    (0..rows).all(|r| K::dot(view(&w[r * kb..(r + 1) * kb]), &xq).to_bits() == y[r].to_bits())
}

#[test]
fn matrices_llama_cpp_repacks_use_the_gemv_order() {
    // llama.cpp's choice follows the host, not TESSERA_CPU_FEATURES (see llama_cpp_repacks).
    let avx2 = crate::ops::cpu_features::host().level >= crate::ops::cpu_features::Level::Avx2;
    // Q4_K: vec_dot for 12 rows, the interleaved gemv's order for 16 (on AVX2 hosts).
    assert!(routed_to::<BlockQ4K, Q4KDot>(12, blocks::view_q4k));
    assert_eq!(
        routed_to::<BlockQ4K, Q4KInterleaved>(16, blocks::view_q4k),
        avx2
    );
    assert_eq!(routed_to::<BlockQ4K, Q4KDot>(16, blocks::view_q4k), !avx2);
    assert!(routed_to::<BlockQ4_0, Q4_0Dot>(12, blocks::view_q4_0));
    assert_eq!(
        routed_to::<BlockQ4_0, Q4_0Interleaved>(16, blocks::view_q4_0),
        avx2
    );
    // Types llama.cpp never repacks on x86.
    assert!(routed_to::<BlockQ6K, Q6KDot>(16, blocks::view_q6k));
    assert!(routed_to::<BlockQ8_0, Q8_0Dot>(16, blocks::view_q8_0));
}

#[test]
fn fusing_never_changes_a_parts_dot_order() {
    use crate::ops::quant::QMatrix;
    let (a, _) = matrix::<BlockQ4K>(4);
    let (b, _) = matrix::<BlockQ4K>(12);
    // 4 + 12 rows would be repacked as a whole but not as parts: no fusion.
    let repacks = crate::ops::qdot::llama_cpp_repacks(GgmlDType::Q4K, 16);
    assert_eq!(QMatrix::concat_rows(&[&a, &b]).is_none(), repacks);
    let (c, _) = matrix::<BlockQ4K>(8);
    assert!(QMatrix::concat_rows(&[&c, &c]).is_some());
    let (d, _) = matrix::<BlockQ6K>(4);
    assert!(QMatrix::concat_rows(&[&d, &d, &d, &d]).is_some());
}

/// ns per row dot of 4096 elements, candle's `vec_dot` vs ours (`dot` and `dot4`).
/// Run: `cargo test --release --lib qdot::tests::bench -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_row_dots() {
    bench::<BlockQ4_0, Q4_0Dot>("q4_0 vec_dot", blocks::view_q4_0);
    bench::<BlockQ4_0, Q4_0Interleaved>("q4_0 gemv order", blocks::view_q4_0);
    bench::<BlockQ4_1, Q4_1Dot>("q4_1", blocks::view_q4_1);
    bench::<BlockQ5_0, Q5_0Dot>("q5_0", blocks::view_q5_0);
    bench::<BlockQ5_1, Q5_1Dot>("q5_1", blocks::view_q5_1);
    bench::<BlockQ8_0, Q8_0Dot>("q8_0", blocks::view_q8_0);
    bench::<BlockQ2K, Q2KDot>("q2_K vec_dot", blocks::view_q2k);
    bench::<BlockQ2K, Q2KInterleaved>("q2_K gemv order", blocks::view_q2k);
    bench::<BlockQ3K, Q3KDot>("q3_K", blocks::view_q3k);
    bench::<BlockQ4K, Q4KDot>("q4_K vec_dot", blocks::view_q4k);
    bench::<BlockQ4K, Q4KInterleaved>("q4_K gemv order", blocks::view_q4k);
    bench::<BlockQ5K, Q5KDot>("q5_K", blocks::view_q5k);
    bench::<BlockQ6K, Q6KDot>("q6_K", blocks::view_q6k);
}

fn bench<C: GgmlType, K: Kernel>(name: &str, view: fn(&[C]) -> &[K::Weight]) {
    use std::hint::black_box;
    use std::time::Instant;
    const K_COLS: usize = 4096;
    const ROWS: usize = 512;
    let kb = K_COLS / C::BLCK_SIZE;
    let w = weights::<C>(ROWS * kb, false, &[], 5);
    let x = activations(4 * K_COLS, 6);
    let mut cq = vec![C::VecDotType::zeros(); 4 * K_COLS / C::VecDotType::BLCK_SIZE];
    C::VecDotType::from_float(&x, &mut cq);
    let mut ours = zeroed::<K::Act>(4 * K_COLS / K::BLOCK);
    K::quantize(&x, &mut ours);
    let ckb = K_COLS / C::VecDotType::BLCK_SIZE;
    let time = |f: &mut dyn FnMut() -> f32| {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            black_box(f());
            best = best.min(t.elapsed().as_nanos() as f64);
        }
        best / (ROWS * 4) as f64
    };
    let candle = time(&mut || {
        let mut s = 0.0;
        for r in 0..ROWS {
            for a in 0..4 {
                s += C::vec_dot(
                    K_COLS,
                    &w[r * kb..(r + 1) * kb],
                    &cq[a * ckb..(a + 1) * ckb],
                );
            }
        }
        s
    });
    let wv = view(&w);
    let row = |a: usize| &ours[a * kb..(a + 1) * kb];
    let dot = time(&mut || {
        let mut s = 0.0;
        for r in 0..ROWS {
            for a in 0..4 {
                s += K::dot(&wv[r * kb..(r + 1) * kb], row(a));
            }
        }
        s
    });
    let dot4 = time(&mut || {
        let mut s = 0.0;
        for r in 0..ROWS {
            s += K::dot4(&wv[r * kb..(r + 1) * kb], [row(0), row(1), row(2), row(3)])[0];
        }
        s
    });
    println!("{name:>16}: candle {candle:7.1} ns, ours dot {dot:7.1} ns, dot4 {dot4:7.1} ns per 4096-row dot");
}
