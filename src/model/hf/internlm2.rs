//! InternLM2 checkpoints under the loader's HF llama names: where each tensor the
//! loader asks for lives in an InternLM2 checkpoint, and the split of the fused
//! `attention.wqkv` into Q / K / V exactly as llama.cpp's converter does it
//! (`InternLM2Model.modify_tensors`):
//!
//! `wqkv` `[n_kv * (q_per_kv + 2) * head_dim, hidden]` is viewed as
//! `[n_kv groups, q_per_kv + 2, head_dim, hidden]`; per group the first `q_per_kv`
//! blocks of `head_dim` rows are Q heads, then one K head, then one V head. Q (all groups'
//! Q blocks in order) and K are then permuted like llama's (`rope_pairs_adjacent`, with
//! `n_heads` and `n_kv_heads` heads), V is left as is.

use crate::model::config::ModelConfig;
use crate::model::tensor_names::{GlobalTensor, LayerTensor, Naming};
use crate::model::weights::WeightError;

use super::rope_permute::rope_pairs_adjacent;

/// Which slice of a fused `wqkv` a tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkvPart {
    Q,
    K,
    V,
}

/// Where a tensor the loader asks for (by HF llama name) comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The checkpoint's tensor of this name, as stored.
    Renamed(String),
    /// A part of the checkpoint's fused `wqkv` of this name.
    Fused { wqkv: String, part: QkvPart },
}

/// (HF llama name, its source) for every tensor an InternLM2 checkpoint provides.
pub fn sources(cfg: &ModelConfig) -> Vec<(String, Source)> {
    let hf = Naming::HuggingFace;
    let renamed = |name: &str| Source::Renamed(name.to_owned());
    let mut out = vec![
        (
            hf.global(GlobalTensor::Embed).to_owned(),
            renamed("model.tok_embeddings.weight"),
        ),
        (
            hf.global(GlobalTensor::OutNorm).to_owned(),
            renamed("model.norm.weight"),
        ),
        (
            hf.global(GlobalTensor::LmHead).to_owned(),
            renamed("output.weight"),
        ),
    ];
    for i in 0..cfg.n_layers {
        let own = |suffix: &str| format!("model.layers.{i}.{suffix}");
        let wqkv = own("attention.wqkv.weight");
        let fused = |part| Source::Fused {
            wqkv: wqkv.clone(),
            part,
        };
        for (tensor, source) in [
            (
                LayerTensor::AttnNorm,
                renamed(&own("attention_norm.weight")),
            ),
            (LayerTensor::Q, fused(QkvPart::Q)),
            (LayerTensor::K, fused(QkvPart::K)),
            (LayerTensor::V, fused(QkvPart::V)),
            (LayerTensor::Out, renamed(&own("attention.wo.weight"))),
            (LayerTensor::FfnNorm, renamed(&own("ffn_norm.weight"))),
            (LayerTensor::Gate, renamed(&own("feed_forward.w1.weight"))),
            (LayerTensor::Up, renamed(&own("feed_forward.w3.weight"))),
            (LayerTensor::Down, renamed(&own("feed_forward.w2.weight"))),
        ] {
            out.push((hf.layer(i, tensor), source));
        }
    }
    out
}

/// The `part` of the fused `wqkv` (`shape` `[rows, hidden]`, rows of equal byte size in
/// `bytes`) as (shape, bytes); a `wqkv` of the wrong shape is a `WeightError::Shape`.
pub fn split_wqkv(
    name: &str,
    shape: &[usize],
    bytes: &[u8],
    cfg: &ModelConfig,
    part: QkvPart,
) -> Result<(Vec<usize>, Vec<u8>), WeightError> {
    let (hd, n_kv) = (cfg.head_dim, cfg.n_kv_heads);
    let q_per_kv = cfg.n_heads / n_kv;
    let rows = n_kv * (q_per_kv + 2) * hd;
    let expected = vec![rows, cfg.hidden];
    if shape != expected.as_slice() || !bytes.len().is_multiple_of(rows) {
        return Err(WeightError::Shape {
            name: name.to_owned(),
            expected,
            got: shape.to_vec(),
        });
    }
    let row_bytes = bytes.len() / rows;
    let (first, count) = match part {
        QkvPart::Q => (0, q_per_kv),
        QkvPart::K => (q_per_kv, 1),
        QkvPart::V => (q_per_kv + 1, 1),
    };
    let block = hd * row_bytes;
    let mut out = Vec::with_capacity(n_kv * count * block);
    for group in 0..n_kv {
        let start = (group * (q_per_kv + 2) + first) * block;
        out.extend_from_slice(&bytes[start..start + count * block]);
    }
    let heads = n_kv * count;
    let out = match part {
        QkvPart::V => out,
        QkvPart::Q | QkvPart::K => rope_pairs_adjacent(&out, heads, hd),
    };
    Ok((vec![heads * hd, cfg.hidden], out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Arch;
    use crate::ops::rope::RopeStyle;

    fn cfg(n_heads: usize, n_kv_heads: usize, head_dim: usize) -> ModelConfig {
        ModelConfig {
            arch: Arch::InternLm2,
            hidden: 1,
            n_layers: 1,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn: 1,
            vocab: 1,
            rope_base: 1e4,
            rope_dims: head_dim,
            rope_style: RopeStyle::Interleaved,
            rms_eps: 1e-6,
            context_length: 16,
            moe: None,
        }
    }

    /// The converter on rows 0..: `qkv.reshape(groups, q_per_kv + 2, hd, n)`, Q = the
    /// first q_per_kv blocks of each group, then llama's permute per head.
    #[test]
    fn split_matches_the_converter_row_order() {
        // 4 heads, 2 kv heads, head_dim 4: groups of [q q k v], 16 rows each.
        let c = cfg(4, 2, 4);
        let rows: Vec<u8> = (0..32).collect();
        let shape = [32, 1];
        let (q_shape, q) = split_wqkv("w", &shape, &rows, &c, QkvPart::Q).unwrap();
        assert_eq!(q_shape, [16, 1]);
        // Q heads = rows 0-3, 4-7 (group 0), 16-19, 20-23 (group 1); permute: 0 2 1 3.
        assert_eq!(q, [0, 2, 1, 3, 4, 6, 5, 7, 16, 18, 17, 19, 20, 22, 21, 23]);
        let (_, k) = split_wqkv("w", &shape, &rows, &c, QkvPart::K).unwrap();
        assert_eq!(k, [8, 10, 9, 11, 24, 26, 25, 27]);
        let (_, v) = split_wqkv("w", &shape, &rows, &c, QkvPart::V).unwrap();
        assert_eq!(v, [12, 13, 14, 15, 28, 29, 30, 31]);
    }

    #[test]
    fn wrong_shape_names_the_tensor_and_both_shapes() {
        let c = cfg(4, 2, 4);
        let err = split_wqkv("blk.wqkv", &[30, 1], &[0; 30], &c, QkvPart::V).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("blk.wqkv") && text.contains("[32, 1]") && text.contains("[30, 1]"),
            "{text}"
        );
    }
}
