//! Where each weight of the llama-style layout (dense or mixture of experts) lives in a
//! file: GGUF names (`blk.N.attn_q.weight`) or Hugging Face names
//! (`model.layers.N.self_attn.q_proj.weight`). One table, so the shared construction
//! path (`layers`, `decoder`, `moe`, `Transformer::from_weights`) never spells a file
//! format's names itself.

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
    /// `[n_expert, hidden]` MoE router.
    Router,
    /// `[n_expert, ffn, hidden]` / `[n_expert, hidden, ffn]` stacked experts (llama.cpp's
    /// layout). transformers keeps one tensor per expert (`mlp.experts.E.gate_proj`);
    /// Hugging Face folders with experts are refused by `hf::config`, so their names in
    /// this table are the stacked tensors' module paths and no checkpoint holds them.
    GateExps,
    UpExps,
    DownExps,
    /// `[hidden]` gate of the shared expert (Qwen2-MoE).
    SharedRouter,
    /// The shared expert's SwiGLU MLP (Qwen2-MoE).
    SharedGate,
    SharedUp,
    SharedDown,
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
                    Router => "ffn_gate_inp.weight",
                    GateExps => "ffn_gate_exps.weight",
                    UpExps => "ffn_up_exps.weight",
                    DownExps => "ffn_down_exps.weight",
                    SharedRouter => "ffn_gate_inp_shexp.weight",
                    SharedGate => "ffn_gate_shexp.weight",
                    SharedUp => "ffn_up_shexp.weight",
                    SharedDown => "ffn_down_shexp.weight",
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
                    Router => "mlp.gate.weight",
                    GateExps => "mlp.experts.gate_proj.weight",
                    UpExps => "mlp.experts.up_proj.weight",
                    DownExps => "mlp.experts.down_proj.weight",
                    SharedRouter => "mlp.shared_expert_gate.weight",
                    SharedGate => "mlp.shared_expert.gate_proj.weight",
                    SharedUp => "mlp.shared_expert.up_proj.weight",
                    SharedDown => "mlp.shared_expert.down_proj.weight",
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
                LayerTensor::Router,
                LayerTensor::GateExps,
                LayerTensor::UpExps,
                LayerTensor::DownExps,
                LayerTensor::SharedRouter,
                LayerTensor::SharedGate,
                LayerTensor::SharedUp,
                LayerTensor::SharedDown,
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
        assert_eq!(
            Naming::Gguf.layer(1, LayerTensor::SharedRouter),
            "blk.1.ffn_gate_inp_shexp.weight"
        );
    }
}
