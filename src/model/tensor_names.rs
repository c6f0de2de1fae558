//! Where each weight of the llama-style dense layout lives in a file: GGUF names
//! (`blk.N.attn_q.weight`) or Hugging Face names (`model.layers.N.self_attn.q_proj.weight`).
//! One table, so the shared construction path (`WeightLoader::layer`,
//! `Transformer::from_weights`) never spells a file format's names itself.

/// A naming scheme for the tensors of a model file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// llama.cpp's GGUF names.
    Gguf,
    /// transformers' `LlamaForCausalLM` / `Qwen2ForCausalLM` state-dict names.
    HuggingFace,
}

/// Tensors outside the decoder layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalTensor {
    /// `[vocab, hidden]` token embedding.
    Embed,
    /// `[hidden]` final RMSNorm weight.
    OutNorm,
    /// `[vocab, hidden]` LM head (absent when tied to the embedding).
    LmHead,
}

/// Tensors of one decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerTensor {
    AttnNorm,
    Q,
    K,
    V,
    QBias,
    KBias,
    VBias,
    /// Attention output projection.
    Out,
    FfnNorm,
    Gate,
    Up,
    Down,
}

impl Naming {
    pub fn global(self, tensor: GlobalTensor) -> &'static str {
        match (self, tensor) {
            (Naming::Gguf, GlobalTensor::Embed) => "token_embd.weight",
            (Naming::Gguf, GlobalTensor::OutNorm) => "output_norm.weight",
            (Naming::Gguf, GlobalTensor::LmHead) => "output.weight",
            (Naming::HuggingFace, GlobalTensor::Embed) => "model.embed_tokens.weight",
            (Naming::HuggingFace, GlobalTensor::OutNorm) => "model.norm.weight",
            (Naming::HuggingFace, GlobalTensor::LmHead) => "lm_head.weight",
        }
    }

    /// The full name of `tensor` in decoder layer `layer`.
    pub fn layer(self, layer: usize, tensor: LayerTensor) -> String {
        use LayerTensor::*;
        match self {
            Naming::Gguf => {
                let suffix = match tensor {
                    AttnNorm => "attn_norm.weight",
                    Q => "attn_q.weight",
                    K => "attn_k.weight",
                    V => "attn_v.weight",
                    QBias => "attn_q.bias",
                    KBias => "attn_k.bias",
                    VBias => "attn_v.bias",
                    Out => "attn_output.weight",
                    FfnNorm => "ffn_norm.weight",
                    Gate => "ffn_gate.weight",
                    Up => "ffn_up.weight",
                    Down => "ffn_down.weight",
                };
                format!("blk.{layer}.{suffix}")
            }
            Naming::HuggingFace => {
                let suffix = match tensor {
                    AttnNorm => "input_layernorm.weight",
                    Q => "self_attn.q_proj.weight",
                    K => "self_attn.k_proj.weight",
                    V => "self_attn.v_proj.weight",
                    QBias => "self_attn.q_proj.bias",
                    KBias => "self_attn.k_proj.bias",
                    VBias => "self_attn.v_proj.bias",
                    Out => "self_attn.o_proj.weight",
                    FfnNorm => "post_attention_layernorm.weight",
                    Gate => "mlp.gate_proj.weight",
                    Up => "mlp.up_proj.weight",
                    Down => "mlp.down_proj.weight",
                };
                format!("model.layers.{layer}.{suffix}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_schemes_name_every_tensor_distinctly() {
        for naming in [Naming::Gguf, Naming::HuggingFace] {
            let all = [
                LayerTensor::AttnNorm,
                LayerTensor::Q,
                LayerTensor::K,
                LayerTensor::V,
                LayerTensor::QBias,
                LayerTensor::KBias,
                LayerTensor::VBias,
                LayerTensor::Out,
                LayerTensor::FfnNorm,
                LayerTensor::Gate,
                LayerTensor::Up,
                LayerTensor::Down,
            ];
            let mut names: Vec<String> = all.iter().map(|&t| naming.layer(3, t)).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), all.len(), "{naming:?}");
        }
        assert_eq!(
            Naming::HuggingFace.layer(2, LayerTensor::Q),
            "model.layers.2.self_attn.q_proj.weight"
        );
        assert_eq!(
            Naming::Gguf.layer(0, LayerTensor::Down),
            "blk.0.ffn_down.weight"
        );
    }
}
