//! llama.cpp's converter permutes the Q and K rows of llama-layout checkpoints from
//! Hugging Face's half-split RoPE order to adjacent pairs (`LlamaModel.permute`); the
//! folder loader, InternLM2's `wqkv` split and PEFT LoRA adapters apply the same
//! reorder here.

/// Reorders the `heads * head_dim` rows of `bytes` (equal-sized rows) from half-split to
/// adjacent RoPE pairs, per head: new row `2i` = old `i`, new row `2i+1` = old
/// `i + head_dim/2`. `head_dim` is even (checked by `ModelConfig::validate`).
pub fn rope_pairs_adjacent(bytes: &[u8], heads: usize, head_dim: usize) -> Vec<u8> {
    let rows = heads * head_dim;
    let row_bytes = bytes.len() / rows;
    let half = head_dim / 2;
    let mut out = Vec::with_capacity(bytes.len());
    for head in 0..heads {
        for i in 0..half {
            for old in [head * head_dim + i, head * head_dim + half + i] {
                out.extend_from_slice(&bytes[old * row_bytes..(old + 1) * row_bytes]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_matches_llama_cpp_converter() {
        // Python: w.reshape(heads, 2, d // 2, cols).swapaxes(1, 2).reshape(w.shape)
        let (heads, d) = (2, 4);
        let rows: Vec<u8> = (0..(heads * d) as u8).flat_map(|r| [r, r + 100]).collect();
        let out = rope_pairs_adjacent(&rows, heads, d);
        let order: Vec<u8> = out.chunks(2).map(|row| row[0]).collect();
        assert_eq!(order, [0, 2, 1, 3, 4, 6, 5, 7]);
        assert!(out.chunks(2).all(|row| row[1] == row[0] + 100));
    }
}
